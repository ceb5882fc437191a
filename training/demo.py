"""The built-in demo: emoji rendered from Debian's Noto Color Emoji font -> prepared data -> DSCMR model -> FAISS index.

Every stage writes under one artefact root (see docs/artefacts in the README) and is skipped when its output is
already there, so `build_demo` is safe to run at every container start.
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

from model.corpus import CORPUS_FILE, load_corpus, save_corpus
from model.sentence_cnn import TextEncoderConfig
from training.prepare import PREPARED_FILE, PrepareConfig, load_prepared, prepare_corpus, prepared_feature_cache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """Size and training settings of the demo build."""

    limit: int | None = None
    image_size: int = 96
    epochs: int | None = None
    early_stopping: int = 15
    seed: int = 0
    index_type: str = "flat"
    progress: bool = True


DEMO_EPOCHS = 60
# GloVe 6B gives words the corpus never saw a sensible vector; min_count 1 keeps rare emoji names. The 100,000 most frequent
# GloVe words get vocabulary entries too, so that a query word no emoji name uses is still understood.
# The demo's text setting and loss weights were chosen on the full demo's validation split (val avg mAP: corpus vocabulary with
# the released weights 0.670, with lambda 1 / eta 0.01 0.688; this text setting with the released weights 0.728, with
# lambda 1 / eta 0.01 0.729). It is the setting imagenet-sample's validation chose for GloVe, too.
DEMO_TEXT = TextEncoderConfig(kind="sentence_cnn", word_vectors="glove-6b-50d", embed_dim=50, min_count=1, max_len=48,
                              pretrained_vocab=100_000, word_dropout=0.3, mean_vector=True)
DEMO_LOSS_WEIGHTS = {"lambda_j2": 1.0, "eta_j3": 0.01}


def artefact_paths(root: str | Path) -> dict[str, Path]:
    """Where each stage of the pipeline writes under an artefact root."""
    root = Path(root)
    return {"corpus": root / "corpus", "prepared": root / "prepared", "models": root / "models", "index": root / "index",
            "runs": root / "runs"}


def demo_train_config(prepared, cfg: DemoConfig):
    """The DSCMR configuration the demo trains with: the validation-tuned schedule, sized to the prepared data."""
    from training.config import preset, with_dims

    data_dims = prepared.manifest["image"]["dim"], prepared.text_config.output_dim or prepared.manifest["text"]["dim"]
    base = preset("wiki-tuned", progress=cfg.progress, epochs=cfg.epochs or DEMO_EPOCHS, seed=cfg.seed,
                  early_stopping_patience=cfg.early_stopping)
    base = dataclasses.replace(base, loss=dataclasses.replace(base.loss, **DEMO_LOSS_WEIGHTS))
    return with_dims(base, data_dims[0], data_dims[1], len(prepared.manifest["label_names"]))


def train_into_models(prepared_dir: Path, models_dir: Path, train_cfg, run_dir: Path | None = None) -> dict[str, Any]:
    """Train on prepared data and publish the model as models/<hash prefix>; returns the training report."""
    from training.pipeline import train_and_save

    prepared = load_prepared(prepared_dir)
    data = prepared.feature_splits()
    data.validate()
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = models_dir / f".training-{int(time.time() * 1000)}"
    report = train_and_save(data, train_cfg, staging, run_dir=run_dir, prepared=prepared)
    final = models_dir / report["content_hash"][:12]
    if final.exists():
        shutil.rmtree(staging)
    else:
        staging.rename(final)
    report["model_dir"] = str(final)
    return report


def build_demo(root: str | Path, cfg: DemoConfig = DemoConfig()) -> dict[str, Any]:
    """Build (or finish building) the emoji demo under `root`; returns what each stage did and how long it took."""
    from index.build import BuildConfig, IndexConfig, build_index
    from index.store import read_current
    from training.datasets.emoji_demo import build_emoji_corpus

    paths = artefact_paths(root)
    timings: dict[str, Any] = {}
    if read_current(paths["index"]) is not None:
        return {"root": str(root), "status": "already built", "index_version": read_current(paths["index"])}

    started = time.perf_counter()
    if not (paths["corpus"] / CORPUS_FILE).is_file():
        corpus, report = build_emoji_corpus(paths["corpus"], limit=cfg.limit, image_size=cfg.image_size, seed=cfg.seed)
        save_corpus(corpus, paths["corpus"])
        (paths["corpus"] / "load_report.json").write_text(json.dumps(report.as_dict(), ensure_ascii=False, indent=1))
        log.info("%s", report)
    timings["corpus_s"] = round(time.perf_counter() - started, 2)

    t = time.perf_counter()
    if not (paths["prepared"] / PREPARED_FILE).is_file():
        prepare_corpus(paths["corpus"], paths["prepared"], PrepareConfig(text=DEMO_TEXT, seed=cfg.seed, progress=cfg.progress))
    timings["prepare_s"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    prepared = load_prepared(paths["prepared"])
    existing = sorted(p for p in paths["models"].glob("*") if (p / "manifest.json").is_file()) if paths["models"].is_dir() else []
    if existing:
        model_dir, train_report = existing[-1], {"model_dir": str(existing[-1]), "status": "reused"}
    else:
        train_report = train_into_models(paths["prepared"], paths["models"], demo_train_config(prepared, cfg),
                                         run_dir=paths["runs"] / "demo")
        model_dir = Path(train_report["model_dir"])
    timings["train_s"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    version = build_index(model_dir, paths["corpus"], paths["index"],
                          BuildConfig(index=IndexConfig(index_type=cfg.index_type), show_progress=cfg.progress,
                                      feature_cache=prepared_feature_cache(paths["prepared"])))
    timings["index_s"] = round(time.perf_counter() - t, 2)
    timings["total_s"] = round(time.perf_counter() - started, 2)
    corpus = load_corpus(paths["corpus"])
    return {"root": str(root), "status": "built", "items": len(corpus), "classes": len(corpus.label_names),
            "model_dir": str(model_dir), "index_version": str(Path(version).name), "train": train_report,
            "timings": timings}

