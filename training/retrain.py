"""The retraining job: train a candidate on the current data, compare it with the serving model, promote only if no worse.

Both models are scored by the same code on the same validation and test items of the freshly prepared data: images
through each model's own image path (cached backbone features when the backbone matches the prepared one, pixels
otherwise) and texts through each model's own text encoder from the raw text. The decision uses VALIDATION mAP only;
test mAP is reported beside it. A promoted candidate gets a new index version, published atomically; the service
follows the index's CURRENT pointer, so it switches without a restart. Old model and index versions beyond `keep`
are pruned, never the serving ones; `rollback` points CURRENT back at the previous index version (and its model).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.corpus import load_corpus
from model.encoder import CrossModalEncoder, load_encoder
from training.demo import artefact_paths, train_into_models
from training.evaluation import cross_modal_map
from training.prepare import PREPARED_FILE, PrepareConfig, PreparedData, load_prepared, prepare_corpus, prepared_feature_cache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainConfig:
    """Promotion rule and training settings of a retraining run."""

    tolerance: float = 0.005  # the candidate may trail the serving model by at most this much validation avg mAP
    keep: int = 3  # model and index versions kept (the serving ones are never removed)
    preset: str = "wiki-tuned"
    epochs: int = 60
    early_stopping: int | None = 15
    seed: int = 0
    progress: bool = True
    reprepare: bool = True  # re-run prepare on the corpus first (incremental: only new or changed images are extracted)


class RetrainError(ValueError):
    """A retraining run that cannot start; the message says what is missing."""


def current_model_dir(index_root: Path) -> tuple[str, Path]:
    """(index version, model directory) the index's CURRENT pointer serves."""
    from index.store import load_manifest, read_current, resolve_version

    version = read_current(index_root)
    if version is None:
        raise RetrainError(f"{index_root} has no published index version; build one first (python -m training demo, or python -m index build)")
    manifest = load_manifest(resolve_version(index_root), verify_files=False)
    return version, Path(manifest["model"]["path"])


def score_model(encoder: CrossModalEncoder, prepared: PreparedData, split: str, texts: dict[str, str]) -> dict[str, float]:
    """mAP both ways of a saved model on one split of prepared data, from cached features or pixels, and raw texts."""
    ids = prepared.manifest["splits"][split]
    row = {item_id: i for i, item_id in enumerate(prepared.manifest["ids"])}
    rows = np.asarray([row[i] for i in ids], dtype=np.int64)
    labels = np.load(prepared.directory / "labels.npy")[rows]
    same_backbone = {k: encoder.feature_spec.get("image", {}).get(k) for k in ("name", "weights_sha256")} == \
        {k: prepared.manifest["image"][k] for k in ("name", "weights_sha256")} and not encoder.feature_spec["image"].get("finetuned")
    if same_backbone:
        features = np.load(prepared.directory / "image_features.npy", mmap_mode="r")
        image_vectors = encoder.encode_image_features(np.ascontiguousarray(features[rows]))
    else:
        from model.image_io import load_image

        corpus = load_corpus(prepared.manifest["corpus_dir"])
        image_vectors = encoder.encode_images([load_image(corpus.items[corpus.position(i)].image_path) for i in ids])
    text_vectors = encoder.encode_texts([texts[i] for i in ids])
    result = cross_modal_map(image_vectors, text_vectors, labels)
    return {"i2t": result.i2t, "t2i": result.t2i, "avg": result.avg, "n": len(ids)}


def retrain(root: str | Path, cfg: RetrainConfig = RetrainConfig()) -> dict[str, Any]:
    """Run one retraining cycle under an artefact root; returns the report (also written to root/reports/)."""
    from index.build import BuildConfig, build_index
    from training.config import preset, with_dims

    paths = artefact_paths(root)
    started = time.perf_counter()
    serving_version, serving_model = current_model_dir(paths["index"])
    if not serving_model.is_dir():
        raise RetrainError(f"the serving index {serving_version} names model {serving_model}, which does not exist")
    if not (paths["prepared"] / PREPARED_FILE).is_file():
        raise RetrainError(f"{paths['prepared']} holds no prepared data; run `python -m training prepare --corpus {paths['corpus']} --out {paths['prepared']}`")
    if cfg.reprepare:
        before = load_prepared(paths["prepared"]).manifest["config"]
        from model.config import from_dict
        from model.sentence_cnn import TextEncoderConfig

        prepare_corpus(paths["corpus"], paths["prepared"],
                       PrepareConfig(backbone=before["backbone"], text=from_dict(TextEncoderConfig, before["text"]),
                                     batch_size=before["batch_size"], seed=before["seed"], progress=cfg.progress))
    prepared = load_prepared(paths["prepared"])
    dims = prepared.manifest["image"]["dim"], prepared.text_config.output_dim or prepared.manifest["text"]["dim"]
    train_cfg = with_dims(preset(cfg.preset, epochs=cfg.epochs, seed=cfg.seed, progress=cfg.progress,
                                 early_stopping_patience=cfg.early_stopping), dims[0], dims[1], len(prepared.manifest["label_names"]))
    run_dir = paths["runs"] / f"retrain-{time.strftime('%Y%m%dT%H%M%S')}"
    trained = train_into_models(paths["prepared"], paths["models"], train_cfg, run_dir=run_dir)
    candidate_dir = Path(trained["model_dir"])

    corpus = load_corpus(paths["corpus"])
    texts = {it.id: it.text for it in corpus.items}
    scores = {}
    for name, model_dir in (("serving", serving_model), ("candidate", candidate_dir)):
        encoder = load_encoder(model_dir)
        if list(encoder.label_names) != list(prepared.manifest["label_names"]):
            scores[name] = None  # another class list: not comparable, the candidate wins by definition
            continue
        scores[name] = {split: score_model(encoder, prepared, split, texts) for split in ("val", "test")}
    serving_val = scores["serving"]["val"]["avg"] if scores["serving"] else None
    candidate_val = scores["candidate"]["val"]["avg"]
    same_model = candidate_dir.resolve() == serving_model.resolve()
    promote = not same_model and (serving_val is None or candidate_val >= serving_val - cfg.tolerance)
    reason = ("the candidate is the serving model (same content hash)" if same_model else
              "the serving model's classes differ from the data's" if serving_val is None else
              f"validation avg mAP {candidate_val:.4f} vs serving {serving_val:.4f} (tolerance {cfg.tolerance})")
    report: dict[str, Any] = {"decision": "promoted" if promote else "rejected", "reason": reason,
                              "serving_before": {"index_version": serving_version, "model_dir": str(serving_model)},
                              "candidate": {"model_dir": str(candidate_dir), "content_hash": trained["content_hash"],
                                            "best_epoch": trained.get("best_epoch"), "train_wall_s": trained.get("wall_s")},
                              "scores": scores, "config": dataclasses.asdict(cfg), "selected_on": "val"}
    if promote:
        version = build_index(candidate_dir, paths["corpus"], paths["index"],
                              BuildConfig(show_progress=cfg.progress, feature_cache=prepared_feature_cache(paths["prepared"])))
        report["serving_after"] = {"index_version": Path(version).name, "model_dir": str(candidate_dir)}
    else:
        report["serving_after"] = report["serving_before"]
        if not same_model:
            shutil.rmtree(candidate_dir, ignore_errors=True)
            report["candidate"]["removed"] = True
    report["pruned"] = prune(paths, cfg.keep)
    report["wall_s"] = round(time.perf_counter() - started, 2)
    reports = Path(root) / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    out = reports / f"retrain-{time.strftime('%Y%m%dT%H%M%S')}-{report['decision']}.json"
    out.write_text(json.dumps(report, indent=2))
    report["report_path"] = str(out)
    return report


def prune(paths: dict[str, Path], keep: int) -> dict[str, list[str]]:
    """Keep the `keep` newest index versions and the models they serve (plus the newest `keep` models); delete the rest."""
    from index.store import list_versions, load_manifest, prune_versions

    removed_versions = prune_versions(paths["index"], keep)
    in_use = set()
    for name in list_versions(paths["index"]):
        manifest = load_manifest(paths["index"] / "versions" / name, verify_files=False)
        in_use.add(Path(manifest["model"]["path"]).resolve())
    models = sorted((p for p in paths["models"].iterdir() if (p / "manifest.json").is_file()), key=lambda p: p.stat().st_mtime) \
        if paths["models"].is_dir() else []
    recent = set(p.resolve() for p in models[-keep:])
    removed_models = []
    for p in models:
        if p.resolve() not in in_use and p.resolve() not in recent:
            shutil.rmtree(p)
            removed_models.append(p.name)
    return {"index_versions": removed_versions, "models": removed_models}


def rollback(root: str | Path, to_version: str | None = None) -> dict[str, str]:
    """Point the index CURRENT at `to_version` (default: the version published before the current one)."""
    from index.store import list_versions, read_current, set_current, store_lock

    index_root = artefact_paths(root)["index"]
    with store_lock(index_root):
        current = read_current(index_root)
        versions = list_versions(index_root)
        if to_version is None:
            older = [v for v in versions if current is not None and v < current]
            if not older:
                raise RetrainError(f"no index version older than {current} under {index_root}; nothing to roll back to ({versions})")
            to_version = older[-1]
        set_current(index_root, to_version)
    _, model_dir = current_model_dir(index_root)
    return {"from": str(current), "to": to_version, "model_dir": str(model_dir)}
