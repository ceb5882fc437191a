"""The retraining job: train a candidate on the current data, compare it with the serving model, promote only if no worse.

The candidate is trained with the serving model's own recipe (its saved configuration and text setting) unless told
otherwise, so that retraining on unchanged data reproduces what is served. Both models are scored by the same code on
the same validation and test items of the freshly prepared data: images through each model's own image path (cached
backbone features when the backbone matches the prepared one, pixels otherwise) and texts through each model's own text
encoder from the raw text. A refit on every item is judged by its held-out twin (the same recipe trained on the train
split), since the refit has seen the validation items. The decision uses the VALIDATION selection score of the recipe's
criterion (average mAP, average R@10 of the own pair, or their mean) against the serving model and the lineage's best
model (LINEAGE.json), so that promotions inside the tolerance cannot drift down one after another; test figures are
reported beside it. A promoted candidate gets a new index version, published atomically; the service follows the index's
CURRENT pointer, so it switches without a restart. Old model and index versions beyond `keep` are pruned, never the
serving ones, the lineage's best or their twins; `rollback` points CURRENT back at the previous index version (and its model).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from model.artefact import CONFIG_FILE, METRICS_FILE
from model.config import from_dict
from model.corpus import load_corpus
from model.encoder import CrossModalEncoder, load_encoder
from training.demo import artefact_paths, train_into_models
from training.derived_labels import KeywordConfig
from training.evaluation import cross_modal_map, cross_modal_recall, instance_groups, selection_score
from training.prepare import PREPARED_FILE, PrepareConfig, PreparedData, load_prepared, prepare_corpus, prepared_feature_cache
from training.train import UNDEFINED_MAP, finite_or_none

log = logging.getLogger(__name__)


SERVING = "serving"  # a RetrainConfig value meaning "as the serving model was trained"
LINEAGE_FILE = "LINEAGE.json"


@dataclass(frozen=True)
class RetrainConfig:
    """Promotion rule and training settings of a retraining run.

    Training settings left at SERVING come from the serving model's own saved configuration (loss weights, instance
    term, selection criterion, schedule; its text setting re-prepares the data), so that a retrain on unchanged data
    trains the same recipe; set them to train something else.
    """

    tolerance: float = 0.005  # the candidate may trail the serving model (and the lineage's best) by at most this much
    keep: int = 3  # model and index versions kept (the serving ones and the lineage's best are never removed)
    preset: str | None = None  # a named preset instead of the serving model's configuration
    epochs: int | None | str = SERVING
    early_stopping: int | None | str = SERVING
    seed: int | None | str = SERVING
    refit: bool | str = SERVING  # serve a refit on every item (judged by its held-out twin)
    loss_overrides: tuple[tuple[str, Any], ...] = ()  # e.g. (("instance_weight", 0.5),)
    progress: bool = True
    reprepare: bool = True  # re-run prepare on the corpus first (incremental: only new or changed images are extracted)


class RetrainError(ValueError):
    """A retraining run that cannot start; the message says what is missing."""


def current_model_dir(index_root: Path) -> tuple[str, Path]:
    """(index version, model directory) the index's CURRENT pointer serves."""
    from index.store import load_manifest, read_current, resolve_version

    version = read_current(index_root)
    if version is None:
        raise RetrainError(
            f"{index_root} has no published index version; build one first (python -m training demo, or python -m index build)"
        )
    manifest = load_manifest(resolve_version(index_root), verify_files=False)
    return version, Path(manifest["model"]["path"])


def heldout_twin(model_dir: Path) -> Path:
    """The model a refit is judged by (its held-out twin, trained on the train split), or `model_dir` itself."""
    metrics = json.loads((Path(model_dir) / METRICS_FILE).read_text())
    twin_hash = (metrics.get("refit") or {}).get("heldout_model")
    if not twin_hash:
        return Path(model_dir)
    twin = Path(model_dir).parent / twin_hash[:12]
    if not (twin / "manifest.json").is_file():
        raise RetrainError(
            f"{model_dir} is a refit judged by its held-out twin {twin_hash[:12]}, which is missing from "
            f"{twin.parent}; restore it, or retrain with --preset to start a new lineage"
        )
    return twin


def serving_recipe(serving_model: Path, prepared: PreparedData, cfg: RetrainConfig) -> tuple[Any, bool]:
    """(DSCMRConfig for the candidate, whether to refit): the serving model's own recipe unless `cfg` says otherwise."""
    from model.config import from_dict
    from training.config import DSCMRConfig, preset, with_dims

    recipe_dir = heldout_twin(serving_model)
    if cfg.preset is not None:
        base = preset(cfg.preset)
    else:
        base = from_dict(DSCMRConfig, json.loads((recipe_dir / CONFIG_FILE).read_text()))
    overrides = {"progress": cfg.progress}
    for name, value in (("epochs", cfg.epochs), ("early_stopping_patience", cfg.early_stopping), ("seed", cfg.seed)):
        if value != SERVING:
            overrides[name] = value
    base = dataclasses.replace(
        base, train=dataclasses.replace(base.train, **overrides), loss=dataclasses.replace(base.loss, **dict(cfg.loss_overrides))
    )
    dims = prepared.manifest["image"]["dim"], prepared.text_config.output_dim or prepared.manifest["text"]["dim"]
    refit = (recipe_dir != Path(serving_model)) if cfg.refit == SERVING else bool(cfg.refit)
    return with_dims(base, dims[0], dims[1], len(prepared.manifest["label_names"])), refit


def serving_text_config(serving_model: Path, prepared: PreparedData):
    """The text setting to prepare with: the serving model's (so the candidate reads text as it does), else the prepared one's."""
    from model.config import from_dict
    from model.sentence_cnn import TextEncoderConfig

    spec = json.loads((Path(serving_model) / "feature_spec.json").read_text()).get("text", {})
    if spec.get("kind") == "sentence_cnn":
        return from_dict(TextEncoderConfig, spec["config"])
    if spec.get("kind") in ("minilm", "muse"):
        return TextEncoderConfig(kind=spec["kind"])
    if spec.get("kind") in ("tfidf", "tfidf+muse"):
        from model.tfidf import TfidfConfig

        return TextEncoderConfig(kind=spec["kind"], tfidf=from_dict(TfidfConfig, spec["config"]))
    return prepared.text_config


def score_model(
    encoder: CrossModalEncoder, prepared: PreparedData, split: str, texts: dict[str, str], criterion: str = "map"
) -> dict[str, Any]:
    """mAP and instance recall both ways of a saved model on one split of prepared data (cached features or pixels, raw
    texts), with the selection score by `criterion`."""
    ids = prepared.manifest["splits"][split]
    row = {item_id: i for i, item_id in enumerate(prepared.manifest["ids"])}
    rows = np.asarray([row[i] for i in ids], dtype=np.int64)
    labels = np.load(prepared.directory / "labels.npy")[rows]
    same_backbone = {k: encoder.feature_spec.get("image", {}).get(k) for k in ("name", "weights_sha256")} == {
        k: prepared.manifest["image"][k] for k in ("name", "weights_sha256")
    } and not encoder.feature_spec["image"].get("finetuned")
    if same_backbone:
        features = np.load(prepared.directory / "image_features.npy", mmap_mode="r")
        image_vectors = encoder.encode_image_features(np.ascontiguousarray(features[rows]))
    else:
        from model.image_io import load_image

        corpus = load_corpus(prepared.manifest["corpus_dir"])
        image_vectors = encoder.encode_images([load_image(corpus.items[corpus.position(i)].image_path) for i in ids])
    split_texts = [texts[i] for i in ids]
    text_vectors = encoder.encode_texts(split_texts)
    # mAP over the items that have a label (undefined, None, for a corpus without labels: its criterion is R@10)
    known = labels.sum(1) > 0 if labels.shape[1] else np.zeros(len(ids), dtype=bool)
    result = cross_modal_map(image_vectors[known], text_vectors[known], labels[known]) if known.any() else UNDEFINED_MAP
    recall = cross_modal_recall(image_vectors, text_vectors, instance_groups(split_texts))
    return {
        "i2t": finite_or_none(result.i2t),
        "t2i": finite_or_none(result.t2i),
        "avg": finite_or_none(result.avg),
        "recall": recall.as_dict(),
        "n": len(ids),
        "criterion": criterion,
        "score": selection_score(result, recall, criterion),
    }


def promotion_decision(candidate: float, serving: float | None, lineage_best: float | None, tolerance: float) -> tuple[bool, str]:
    """Promote when the candidate trails neither the serving model nor the lineage's best by more than `tolerance`.

    Comparing with the best as well as the serving model stops a chain of promotions, each inside the tolerance, from
    drifting down step by step."""
    if serving is None:
        return True, "the serving model's classes differ from the data's"
    if candidate < serving - tolerance:
        return False, f"{candidate:.4f} trails the serving model's {serving:.4f} by more than {tolerance}"
    if lineage_best is not None and candidate < lineage_best - tolerance:
        return (
            False,
            f"{candidate:.4f} is within {tolerance} of the serving model's {serving:.4f} but trails the lineage's best "
            f"{lineage_best:.4f} by more than {tolerance}",
        )
    best = f", lineage best {lineage_best:.4f}" if lineage_best is not None else ""
    return True, f"{candidate:.4f} vs serving {serving:.4f}{best} (tolerance {tolerance})"


def read_lineage(models_dir: Path) -> dict[str, Any]:
    """The lineage record (its best validated model so far), or an empty one."""
    path = models_dir / LINEAGE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def retrain(root: str | Path, cfg: RetrainConfig = RetrainConfig()) -> dict[str, Any]:
    """Run one retraining cycle under an artefact root; returns the report (also written to root/reports/)."""
    from index.build import BuildConfig, build_index

    paths = artefact_paths(root)
    started = time.perf_counter()
    serving_version, serving_model = current_model_dir(paths["index"])
    if not serving_model.is_dir():
        raise RetrainError(f"the serving index {serving_version} names model {serving_model}, which does not exist")
    if not (paths["prepared"] / PREPARED_FILE).is_file():
        raise RetrainError(
            f"{paths['prepared']} holds no prepared data; run `python -m training prepare --corpus {paths['corpus']} --out {paths['prepared']}`"
        )
    if cfg.reprepare:
        before = load_prepared(paths["prepared"])
        prepare_corpus(
            paths["corpus"],
            paths["prepared"],
            PrepareConfig(
                backbone=before.manifest["config"]["backbone"],
                text=serving_text_config(serving_model, before),
                batch_size=before.manifest["config"]["batch_size"],
                seed=before.manifest["config"]["seed"],
                text_views=before.manifest["config"].get("text_views", 1),
                progress=cfg.progress,
                # derived labels are derived again, with the k chosen the first time
                derive_labels=before.manifest["config"].get("derive_labels", "none"),
                clusters=(before.manifest.get("derived_labels") or {}).get("k")
                if before.manifest["config"].get("derive_labels") == "clusters"
                else None,
                # keyword labels are selected again with the same settings (the new texts may change which words)
                keywords=from_dict(KeywordConfig, before.manifest["config"].get("keywords") or {}),
            ),
        )
    prepared = load_prepared(paths["prepared"])
    train_cfg, refit = serving_recipe(serving_model, prepared, cfg)
    criterion = train_cfg.train.select_on
    # microseconds: two retrains started within one second (a script, a test) must not share a run directory or report
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    run_dir = paths["runs"] / f"retrain-{stamp}"
    trained = train_into_models(paths["prepared"], paths["models"], train_cfg, run_dir=run_dir, refit=refit)
    candidate_dir = Path(trained["model_dir"])

    corpus = load_corpus(paths["corpus"])
    texts = {it.id: it.text for it in corpus.items}
    lineage = read_lineage(paths["models"])
    lineage_dir = paths["models"] / lineage["best"]["model"] if lineage.get("best") else None
    if lineage_dir is not None and not (lineage_dir / "manifest.json").is_file():
        log.warning("the lineage's best model %s is gone; comparing with the serving model only", lineage_dir.name)
        lineage_dir = None
    judged = {"serving": serving_model, "candidate": candidate_dir}
    if lineage_dir is not None and lineage_dir.resolve() != serving_model.resolve():
        judged["lineage_best"] = lineage_dir
    scores: dict[str, Any] = {}
    for name, model_dir in judged.items():
        judge = heldout_twin(model_dir)
        encoder = load_encoder(judge)
        if list(encoder.label_names) != list(prepared.manifest["label_names"]):
            scores[name] = None  # another class list: not comparable
            continue
        scores[name] = {split: score_model(encoder, prepared, split, texts, criterion) for split in ("val", "test")}
        scores[name]["judged_by"] = judge.name
    serving_val = scores["serving"]["val"]["score"] if scores["serving"] else None
    lineage_val = scores["lineage_best"]["val"]["score"] if scores.get("lineage_best") else None
    candidate_val = scores["candidate"]["val"]["score"]
    same_model = candidate_dir.resolve() == serving_model.resolve()
    promote, reason = promotion_decision(candidate_val, serving_val, lineage_val, cfg.tolerance)
    if same_model:
        promote, reason = False, "the candidate is the serving model (same content hash)"
    reason = f"validation {criterion} score: {reason}"
    report: dict[str, Any] = {
        "decision": "promoted" if promote else "rejected",
        "reason": reason,
        "criterion": criterion,
        "serving_before": {"index_version": serving_version, "model_dir": str(serving_model)},
        "candidate": {
            "model_dir": str(candidate_dir),
            "content_hash": trained["content_hash"],
            "best_epoch": trained.get("best_epoch"),
            "train_wall_s": trained.get("wall_s"),
            "refit": refit,
            "heldout_twin": (trained.get("heldout") or {}).get("model_dir"),
        },
        "training_config": dataclasses.asdict(train_cfg),
        "lineage_best_before": str(lineage_dir) if lineage_dir is not None else None,
        "scores": scores,
        "config": dataclasses.asdict(cfg),
        "selected_on": "val",
    }
    if promote:
        # derived labels reach the service (label chips, filters) through the prepared data's relabelled corpus
        derived = prepared.manifest.get("derived_labels")
        version = build_index(
            candidate_dir,
            paths["prepared"] / derived["corpus"] if derived else paths["corpus"],
            paths["index"],
            BuildConfig(
                show_progress=cfg.progress,
                feature_cache=prepared_feature_cache(paths["prepared"]),
                caption_weight=serving_caption_weight(paths["index"]),
            ),
        )
        report["serving_after"] = {"index_version": Path(version).name, "model_dir": str(candidate_dir)}
    else:
        report["serving_after"] = report["serving_before"]
        if not same_model:
            # only what this run wrote: an identical model that was already there may serve an older index version
            made = [trained] + ([trained["heldout"]] if trained.get("heldout") else [])
            for made_report in made:
                model_dir = Path(made_report["model_dir"])
                if not made_report.get("already_there") and model_dir.resolve() not in (
                    serving_model.resolve(),
                    (lineage_dir or serving_model).resolve(),
                ):
                    shutil.rmtree(model_dir, ignore_errors=True)
            report["candidate"]["removed"] = not trained.get("already_there")
    report["lineage_best_after"] = _update_lineage(paths["models"], lineage, scores, judged, promote, criterion)
    report["pruned"] = prune(paths, cfg.keep)
    report["wall_s"] = round(time.perf_counter() - started, 2)
    reports = Path(root) / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    out = reports / f"retrain-{stamp}-{report['decision']}.json"
    out.write_text(json.dumps(report, indent=2))
    report["report_path"] = str(out)
    return report


def _update_lineage(
    models_dir: Path, lineage: dict[str, Any], scores: dict[str, Any], judged: dict[str, Path], promoted: bool, criterion: str
) -> str:
    """Record the lineage's best validated model after this run (the best of its previous best, the serving model and a
    promoted candidate, as scored on this run's validation split); returns its directory name."""
    contenders = ["lineage_best", "serving"] + (["candidate"] if promoted else [])
    ranked = [(scores[name]["val"]["score"], name) for name in contenders if scores.get(name)]
    if not ranked:
        best_name = "candidate" if promoted else "serving"
        best_score = None
    else:
        best_score, best_name = max(ranked)
    best_dir = judged[best_name]
    record = {
        "best": {
            "model": best_dir.name,
            "criterion": criterion,
            "val_score": best_score,
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "history": (lineage.get("history") or [])[-50:]
        + [{"best": best_dir.name, "val_score": best_score, "promoted": promoted}],
    }
    tmp = models_dir / (LINEAGE_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(models_dir / LINEAGE_FILE)
    return best_dir.name


def prune(paths: dict[str, Path], keep: int) -> dict[str, list[str]]:
    """Keep the `keep` newest index versions and the models they serve (plus the newest `keep` models, the lineage's best
    and the held-out twins of all these); delete the rest."""
    from index.store import list_versions, load_manifest, prune_versions

    removed_versions = prune_versions(paths["index"], keep)
    in_use = set()
    for name in list_versions(paths["index"]):
        manifest = load_manifest(paths["index"] / "versions" / name, verify_files=False)
        in_use.add(Path(manifest["model"]["path"]).resolve())
    models = (
        sorted((p for p in paths["models"].iterdir() if (p / "manifest.json").is_file()), key=lambda p: p.stat().st_mtime)
        if paths["models"].is_dir()
        else []
    )
    recent = set(p.resolve() for p in models[-keep:])
    lineage = read_lineage(paths["models"]) if paths["models"].is_dir() else {}
    protected = in_use | recent | ({(paths["models"] / lineage["best"]["model"]).resolve()} if lineage.get("best") else set())
    # a refit is judged by its held-out twin: the twin stays as long as the refit does
    protected |= {twin.resolve() for p in protected if (twin := _twin_if_any(p)) is not None}
    removed_models = []
    for p in models:
        if p.resolve() not in protected:
            shutil.rmtree(p)
            removed_models.append(p.name)
    return {"index_versions": removed_versions, "models": removed_models}


def _twin_if_any(model_dir: Path) -> Path | None:
    """The held-out twin of a refit model directory, or None (not a refit, or unreadable)."""
    try:
        twin = heldout_twin(model_dir)
    except (RetrainError, OSError, ValueError):
        return None
    return twin if twin != Path(model_dir) else None


def serving_caption_weight(index_root: Path) -> float:
    """The caption weight of the serving index version (0 without caption vectors): a promoted model's version keeps it."""
    from index.store import load_manifest, resolve_version

    return float((load_manifest(resolve_version(index_root), verify_files=False).get("captions") or {}).get("weight", 0.0))


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
                raise RetrainError(
                    f"no index version older than {current} under {index_root}; nothing to roll back to ({versions})"
                )
            to_version = older[-1]
        set_current(index_root, to_version)
    _, model_dir = current_model_dir(index_root)
    return {"from": str(current), "to": to_version, "model_dir": str(model_dir)}
