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
from typing import Any, Literal

from model.corpus import CORPUS_FILE, load_corpus, save_corpus
from model.sentence_cnn import TextEncoderConfig
from model.tfidf import TfidfConfig
from training.datasets.emoji_demo import EmojiLabels
from training.prepare import PREPARED_FILE, PrepareConfig, load_prepared, prepare_corpus, prepared_feature_cache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """Size and training settings of the demo build (the defaults are the setting chosen on the demo's validation split)."""

    limit: int | None = None
    image_size: int = 96
    epochs: int | None = None
    early_stopping: int = 15
    seed: int = 0
    index_type: str = "flat"
    progress: bool = True
    # The texts' CLDR locale (training.datasets.emoji_demo): "en", "zh", "ja", "ar", "de", ...
    locale: str = "en"
    # "auto": MiniLM for English; for the multilingual USE's other languages (MiniLM reads English word pieces) char+word
    # tf-idf beside the USE; tf-idf character n-grams for any other language, or without the `multilingual` extra.
    text: Literal["auto", "minilm", "muse", "tfidf+muse", "glove", "tfidf"] = "auto"
    # "none" builds the demo as a corpus without labels: k-means clusters of the texts (`clusters`) train J1/J2/J3.
    labels: EmojiLabels = "group"
    clusters: int = 32
    # None: DEMO_INSTANCE_WEIGHT, or DEMO_UNLABELLED_INSTANCE_WEIGHT when labels is "none"
    instance_weight: float | None = None
    instance_temperature: float = 0.05
    select_on: Literal["map", "r10", "mean"] = "mean"
    refit: bool = True  # serve a refit on every item (see training.pipeline.refit_and_save)
    text_views: int = 1  # training views per text (training/text_views.py)
    # Weight of the caption match in text searches (index/captions.py): None = DEMO_CAPTION_WEIGHT for English texts
    # and 0 (no caption vectors) for other locales, whose texts MiniLM mostly reads as unknown word pieces.
    caption_weight: float | None = None


DEMO_EPOCHS = 60
# Chosen on validation queries written apart from the benchmark's (bench/data/demo_queries_validation.json) by
# `python bench/demo_queries.py --choose-weight`: the smallest weight whose validation MRR is within 0.01 of the best.
DEMO_CAPTION_WEIGHT = 0.8
# Which model under models/ the demo serves (a build stopped after training resumes with it instead of training again).
DEMO_MODEL_POINTER = "DEMO_MODEL"
# GloVe 6B gives words the corpus never saw a sensible vector; min_count 1 keeps rare emoji names. The 100,000 most frequent
# GloVe words get vocabulary entries too, so that a query word no emoji name uses is still understood.
# The demo's text setting and loss weights were chosen on the full demo's validation split (val avg mAP: corpus vocabulary with
# the released weights 0.670, with lambda 1 / eta 0.01 0.688; this text setting with the released weights 0.728, with
# lambda 1 / eta 0.01 0.729). It is the setting imagenet-sample's validation chose for GloVe, too.
DEMO_TEXT = TextEncoderConfig(
    kind="sentence_cnn",
    word_vectors="glove-6b-50d",
    embed_dim=50,
    min_count=1,
    max_len=48,
    pretrained_vocab=100_000,
    word_dropout=0.3,
    mean_vector=True,
)
DEMO_TEXT_MINILM = TextEncoderConfig(kind="minilm")
DEMO_TEXT_MUSE = TextEncoderConfig(kind="muse")
# Character 1-3-grams need no segmenter and no pretrained vocabulary, so they read every CLDR language alike.
DEMO_TEXT_TFIDF = TextEncoderConfig(kind="tfidf", tfidf=TfidfConfig(analyzer="char", char_ngrams=(1, 3), min_df=2, dim=256))
# The corpus's character and word n-grams beside the multilingual USE's sentence vector.
DEMO_TEXT_TFIDF_MUSE = TextEncoderConfig(
    kind="tfidf+muse", tfidf=TfidfConfig(analyzer="char+word", char_ngrams=(1, 3), word_ngrams=(1, 2), min_df=2, dim=256)
)
DEMO_LOSS_WEIGHTS = {"lambda_j2": 1.0, "eta_j3": 0.01}
DEMO_INSTANCE_WEIGHT = 0.5
# Without labels: k-means clusters of the MiniLM texts with k 32 and instance weight 0.3, the emoji demo's setting chosen
# without labels (by validation R@10) on docs/results-unlabelled.md (`python bench/unlabelled.py`).
DEMO_UNLABELLED_INSTANCE_WEIGHT = 0.3


def demo_instance_weight(cfg: DemoConfig) -> float:
    """The instance term's weight the demo trains with: `cfg.instance_weight`, else the default for its labels."""
    if cfg.instance_weight is not None:
        return cfg.instance_weight
    return DEMO_UNLABELLED_INSTANCE_WEIGHT if cfg.labels == "none" else DEMO_INSTANCE_WEIGHT


def demo_caption_weight(cfg: DemoConfig) -> float:
    """The caption match's weight the demo's index is published with: `cfg.caption_weight`, else the chosen one in English."""
    from training.datasets.emoji_demo import is_english

    if cfg.caption_weight is not None:
        return cfg.caption_weight
    return DEMO_CAPTION_WEIGHT if is_english(cfg.locale) else 0.0


def demo_text_option(cfg: DemoConfig) -> str:
    """The text option the demo builds with: `cfg.text`, or for "auto" MiniLM in English, tf-idf beside the multilingual
    USE in the USE's other languages, and tf-idf alone in any other language (and, with a warning, when the
    `multilingual` extra is not installed)."""
    from model.text import MUSE_LANGUAGES, multilingual_use_available
    from training.datasets.emoji_demo import is_english

    if cfg.text != "auto":
        return cfg.text
    if is_english(cfg.locale):
        return "minilm"
    if cfg.locale.replace("-", "_").split("_")[0].lower() not in MUSE_LANGUAGES:
        return "tfidf"  # the USE would read little of it; character n-grams read any script
    if multilingual_use_available():
        return "tfidf+muse"
    log.warning(
        "the multilingual USE is not installed (pip install 'dscmr-search[multilingual]'): the %s demo trains on "
        "tf-idf character n-grams alone, which finds fewer of the right items (docs/results-languages.md)",
        cfg.locale,
    )
    return "tfidf"


def demo_text_config(cfg: DemoConfig) -> TextEncoderConfig:
    """The text setting of the demo: MiniLM or multilingual USE sentence vectors, the GloVe sentence CNN or tf-idf
    character n-grams."""
    options = {
        "minilm": DEMO_TEXT_MINILM,
        "muse": DEMO_TEXT_MUSE,
        "tfidf+muse": DEMO_TEXT_TFIDF_MUSE,
        "glove": DEMO_TEXT,
        "tfidf": DEMO_TEXT_TFIDF,
    }
    return options[demo_text_option(cfg)]


def artefact_paths(root: str | Path) -> dict[str, Path]:
    """Where each stage of the pipeline writes under an artefact root."""
    root = Path(root)
    return {
        "corpus": root / "corpus",
        "prepared": root / "prepared",
        "models": root / "models",
        "index": root / "index",
        "runs": root / "runs",
    }


def demo_train_config(prepared, cfg: DemoConfig):
    """The DSCMR configuration the demo trains with: the validation-tuned schedule, sized to the prepared data."""
    from training.config import preset, with_dims

    data_dims = prepared.manifest["image"]["dim"], prepared.text_config.output_dim or prepared.manifest["text"]["dim"]
    base = preset(
        "wiki-tuned",
        progress=cfg.progress,
        epochs=cfg.epochs or DEMO_EPOCHS,
        seed=cfg.seed,
        early_stopping_patience=cfg.early_stopping,
    )
    base = dataclasses.replace(
        base,
        loss=dataclasses.replace(
            base.loss,
            instance_weight=demo_instance_weight(cfg),
            instance_temperature=cfg.instance_temperature,
            **DEMO_LOSS_WEIGHTS,
        ),
        train=dataclasses.replace(base.train, select_on=cfg.select_on),
    )
    return with_dims(base, data_dims[0], data_dims[1], len(prepared.manifest["label_names"]))


def _publish_model(models_dir: Path, write) -> dict[str, Any]:
    """Run `write(staging_dir) -> report` and move the result to models/<hash prefix> (kept when already there)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = models_dir / f".training-{time.time_ns()}"
    report = write(staging)
    final = models_dir / report["content_hash"][:12]
    # an identical model (same content hash) may already be there, serving an older index version: it is kept as it is
    report["already_there"] = final.exists()
    if report["already_there"]:
        shutil.rmtree(staging)
    else:
        staging.rename(final)
    report["model_dir"] = str(final)
    return report


def train_into_models(
    prepared_dir: Path, models_dir: Path, train_cfg, run_dir: Path | None = None, refit: bool = False
) -> dict[str, Any]:
    """Train on prepared data and publish the model as models/<hash prefix>; returns the training report.

    With `refit`, the model trained on the train split (selected on validation) is kept as the held-out twin and a second
    model, trained on every item for the twin's epoch count, is published and reported (`heldout` holds the twin's report).
    """
    from training.pipeline import refit_and_save, train_and_save

    prepared = load_prepared(prepared_dir)
    data = prepared.feature_splits()
    data.validate()
    heldout = _publish_model(
        models_dir, lambda staging: train_and_save(data, train_cfg, staging, run_dir=run_dir, prepared=prepared)
    )
    if not refit:
        return heldout
    refit_run = run_dir.with_name(run_dir.name + "-refit") if run_dir is not None else None
    report = _publish_model(
        models_dir,
        lambda staging: refit_and_save(data, train_cfg, staging, heldout["model_dir"], run_dir=refit_run, prepared=prepared),
    )
    report["heldout"] = heldout
    return report


def _check_root_locale(corpus_dir: Path, locale: str) -> None:
    """Refuse to go on with an artefact root whose corpus is in another locale (a build is never mixed)."""
    if not (corpus_dir / CORPUS_FILE).is_file():
        return
    built = load_corpus(corpus_dir).language or "en"  # corpora from before the locale option are English
    if built != locale:
        raise ValueError(
            f"the demo under {corpus_dir.parent} is built in locale {built!r}, not {locale!r}: build into another root, "
            "or delete this one first (Docker: `docker compose down -v` removes the artefact volume)"
        )


def _current_has_captions(index_root: Path) -> bool:
    from index.store import load_manifest, resolve_version

    return "captions" in load_manifest(resolve_version(index_root), verify_files=False)


def build_demo(root: str | Path, cfg: DemoConfig = DemoConfig()) -> dict[str, Any]:
    """Build (or finish building) the emoji demo under `root`; returns what each stage did and how long it took."""
    from index.build import BuildConfig, IndexConfig, build_index
    from index.captions import attach_captions
    from index.store import read_current
    from training.datasets.emoji_demo import EmojiSources, build_emoji_corpus, normalise_locale

    paths = artefact_paths(root)
    timings: dict[str, Any] = {}
    locale = cfg.locale if cfg.locale == "en" else normalise_locale(cfg.locale, EmojiSources())
    text_option = demo_text_option(cfg)
    _check_root_locale(paths["corpus"], locale)
    caption_weight = demo_caption_weight(cfg)
    if read_current(paths["index"]) is not None and (caption_weight == 0 or _current_has_captions(paths["index"])):
        return {"root": str(root), "status": "already built", "index_version": read_current(paths["index"]), "locale": locale}

    log.info("emoji demo in locale %s with text option %s", locale, text_option)
    started = time.perf_counter()
    if not (paths["corpus"] / CORPUS_FILE).is_file():
        corpus, report = build_emoji_corpus(
            paths["corpus"],
            limit=cfg.limit,
            image_size=cfg.image_size,
            seed=cfg.seed,
            labels=cfg.labels,
            progress=cfg.progress,
            locale=locale,
        )
        save_corpus(corpus, paths["corpus"])
        (paths["corpus"] / "load_report.json").write_text(json.dumps(report.as_dict(), ensure_ascii=False, indent=1))
        log.info("%s", report)
    timings["corpus_s"] = round(time.perf_counter() - started, 2)

    t = time.perf_counter()
    if not (paths["prepared"] / PREPARED_FILE).is_file():
        prepare_corpus(
            paths["corpus"],
            paths["prepared"],
            PrepareConfig(
                text=demo_text_config(cfg),
                seed=cfg.seed,
                progress=cfg.progress,
                text_views=cfg.text_views,
                **({"derive_labels": "clusters", "clusters": cfg.clusters} if cfg.labels == "none" else {}),
            ),
        )
    timings["prepare_s"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    prepared = load_prepared(paths["prepared"])
    served = paths["models"] / DEMO_MODEL_POINTER
    if served.is_file() and (paths["models"] / served.read_text().strip() / "manifest.json").is_file():
        model_dir = paths["models"] / served.read_text().strip()
        train_report = {"model_dir": str(model_dir), "status": "reused"}
    else:
        train_report = train_into_models(
            paths["prepared"], paths["models"], demo_train_config(prepared, cfg), run_dir=paths["runs"] / "demo", refit=cfg.refit
        )
        model_dir = Path(train_report["model_dir"])
        served.write_text(model_dir.name + "\n")
    timings["train_s"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    if read_current(paths["index"]) is None:
        derived = prepared.manifest.get("derived_labels")
        build_index(
            model_dir,
            # derived labels reach the index through the prepared corpus copy that carries them (label chips, filters)
            paths["prepared"] / derived["corpus"] if derived else paths["corpus"],
            paths["index"],
            BuildConfig(
                index=IndexConfig(index_type=cfg.index_type),
                show_progress=cfg.progress,
                feature_cache=prepared_feature_cache(paths["prepared"]),
                caption_weight=caption_weight,
            ),
        )
    elif caption_weight > 0 and not _current_has_captions(paths["index"]):
        attach_captions(paths["index"], caption_weight, show_progress=cfg.progress)  # a build stopped before its captions
    timings["index_s"] = round(time.perf_counter() - t, 2)
    version = read_current(paths["index"])
    timings["total_s"] = round(time.perf_counter() - started, 2)
    corpus = load_corpus(paths["corpus"])
    return {
        "root": str(root),
        "status": "built",
        "items": len(corpus),
        "classes": len(prepared.manifest["label_names"]),
        **({"derived_labels": prepared.manifest["derived_labels"]["method"]} if "derived_labels" in prepared.manifest else {}),
        "locale": locale,
        "text": text_option,
        "model_dir": str(model_dir),
        "index_version": version,
        "caption_weight": caption_weight,
        "train": train_report,
        "timings": timings,
    }
