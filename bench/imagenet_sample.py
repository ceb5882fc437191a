"""imagenet-sample-wordnet benchmark: DSCMR (sentence CNN per word-vector source, MiniLM) against the authors' loop,
semantic matching and CCA, the ablations of the best DSCMR configuration, and the speed of feature extraction.

Every model / hyper-parameter is selected on the validation split; the test split is evaluated once per run.
Main rows are averaged over stratified 80/10/10 folds (fold k = split seed k; fold 0 = the dataset's seed-0 split).
Each finished run is stored under WORK/runs/ and reused on a rerun, so an interrupted benchmark resumes: its file is
keyed by a readable name plus a hash of everything that produced it (the full training configuration, the prepared
data's content hash, the fold, and the code of model/, training/ and this script), so a changed setting or trainer
never reuses an old result.
Settings are chosen on fold 0's validation split and reused on every fold. About one in ten of another fold's test
items is a fold-0 validation item, so those folds' test figures are not fully independent of the choices: every row
therefore also reports its mean over the test items that took no part in any choice (each fold's test split minus
fold 0's validation items; fold 0's own test split is disjoint from them), next to the plain mean and split seed 0.
Instance recall (R@K of each query's own pair) is reported beside mAP; in imagenet-sample all photos of a synset share
the synset's gloss, so a query's hits are every item with the same text (an image's hit is any text equal to its own,
a text's hit any image whose text it is).

    python bench/imagenet_sample.py                        # 5 folds, default epochs
    python bench/imagenet_sample.py --folds 1 --epochs 20  # fewer folds / epochs
    python bench/imagenet_sample.py --quick                # smoke run, results under bench/out/ unless --out is given

Writes OUT/results/imagenet-sample.json ({method: {i2t, t2i, avg, std_avg, ...}, "_speed": ..., "_meta": ...}) and
OUT/results-imagenet-sample.md (OUT = docs/ by default).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.machine import code_fingerprint, data_fingerprint, describe, detect_machine  # noqa: E402
from model.config import loss_for_ablation  # noqa: E402
from model.corpus import SPLITS, Corpus, save_corpus  # noqa: E402
from model.sentence_cnn import TextEncoderConfig  # noqa: E402
from model.text import text_encoder_config_to_dict  # noqa: E402
from model.tfidf import TfidfConfig  # noqa: E402
from training.baselines import run_cca, run_semantic_matching  # noqa: E402
from training.config import DSCMRConfig, preset, with_dims  # noqa: E402
from training.datasets import load_dataset, stratified_split  # noqa: E402
from training.features import FeatureSplits, SplitArrays  # noqa: E402
from training.prepare import CACHE_DIR, PrepareConfig, load_prepared, prepare_corpus  # noqa: E402
from training.train import evaluate_split, save_trained_model, train_dscmr  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "imagenet-sample-wordnet"
DEFAULT_WORK = REPO / "bench" / "out" / "imagenet-sample"
BACKBONE = "efficientnet-lite0"

# The sentence-CNN settings tried for each word-vector source. Each source's candidates all run on fold 0 and the
# one with the best fold-0 VALIDATION mAP runs on every fold (the test split never takes part in the choice).
_GLOVE = dict(kind="sentence_cnn", word_vectors="glove-6b-50d", embed_dim=50)
_WORD2VEC = dict(kind="sentence_cnn", word_vectors="word2vec", embed_dim=300)
CNN_CANDIDATES: dict[str, dict[str, TextEncoderConfig]] = {
    "word2vec": {
        "word2vec": TextEncoderConfig(**_WORD2VEC),
        "word2vec-wd3": TextEncoderConfig(**_WORD2VEC, word_dropout=0.3),
    },
    "glove": {
        "glove": TextEncoderConfig(**_GLOVE),
        "glove-pv-static": TextEncoderConfig(**_GLOVE, pretrained_vocab=100_000, freeze_embeddings=True),
        "glove-pv-static-wd3": TextEncoderConfig(**_GLOVE, pretrained_vocab=100_000, freeze_embeddings=True, word_dropout=0.3),
        "glove-pv-static-wd5": TextEncoderConfig(**_GLOVE, pretrained_vocab=100_000, freeze_embeddings=True, word_dropout=0.5),
        "glove-pv-static-wd3-mean": TextEncoderConfig(
            **_GLOVE, pretrained_vocab=100_000, freeze_embeddings=True, word_dropout=0.3, mean_vector=True
        ),
        "glove-pv-wd3-mean": TextEncoderConfig(**_GLOVE, pretrained_vocab=100_000, word_dropout=0.3, mean_vector=True),
        "glove-pv-static-wd3-mean-m200": TextEncoderConfig(
            **_GLOVE, pretrained_vocab=100_000, freeze_embeddings=True, word_dropout=0.3, mean_vector=True, maps=200
        ),
    },
}
CNN_TEXTS = {key: cfg for candidates in CNN_CANDIDATES.values() for key, cfg in candidates.items()}
# The language-agnostic text option (`--text tfidf`): TF-IDF over the glosses' words and word bigrams, reduced by SVD,
# fitted on each fold's training texts (the English glosses have spaces, so words rather than the demo's characters).
TFIDF_TEXT = TextEncoderConfig(kind="tfidf", tfidf=TfidfConfig(analyzer="word", word_ngrams=(1, 2), min_df=2, dim=256))
DSCMR_ROWS = {
    "DSCMR, sentence CNN on word2vec (corpus-trained, 300-d)": "word2vec",
    "DSCMR, sentence CNN on GloVe 6B 50-d": "glove",
    "DSCMR, MiniLM sentence vectors": "minilm",
    "DSCMR, TF-IDF words + bigrams (SVD 256-d)": "tfidf",
}
EARLY_STOPPING = 15  # DSCMR rows stop after this many epochs without a better validation mAP
# DSCMR's loss weights (J = J1 + lambda * J2 + eta * J3) tried for each DSCMR row once its text setting is chosen (with the
# released weights); the pair with the best fold-0 VALIDATION mAP runs on every fold. The paper leaves both as
# hyper-parameters (its Eq. 5) without values; the first pair is the released code's.
RELEASED_LOSS_WEIGHTS = (1e-3, 1e-1)
LOSS_WEIGHTS: tuple[tuple[float, float], ...] = (
    RELEASED_LOSS_WEIGHTS,
    (1e-3, 1e-2),
    (1e-3, 0.0),
    (1e-1, 1e-1),
    (1e-1, 1e-2),
    (1e-1, 0.0),
    (1.0, 1e-1),
    (1.0, 1e-2),
    (1.0, 0.0),
)
# The instance term (beyond the paper) tried on each DSCMR row once its text and loss weights are chosen: the row "+ instance
# term" keeps the weight with the best fold-0 validation R@10 among those whose validation mAP stays within
# INSTANCE_MAP_SLACK of the row without the term.
INSTANCE_WEIGHTS = (0.1, 0.3, 1.0)
INSTANCE_TEMPERATURE = 0.1
INSTANCE_MAP_SLACK = 0.01
INSTANCE_SUFFIX = " + instance term"
AUTHORS_ROW = "authors' loop (paper preset, mean GloVe-50 text)"
SM_ROW = "semantic matching (mean GloVe-50 text)"
CCA_ROW = "CCA (mean GloVe-50 text)"
SM_MINILM_ROW = "semantic matching (MiniLM text)"
SM_TFIDF_ROW = "semantic matching (TF-IDF text, words + bigrams)"
# Not a method: semantic matching whose text side is the true label, i.e. a perfect text encoder. It bounds semantic
# matching on these image features (not DSCMR, whose image head is non-linear) and shows how much the image side costs.
CEILING_ROW = "semantic matching with a perfect text side (true labels as the text)"


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def fold_corpus(corpus: Corpus, fold: int) -> Corpus:
    """The corpus with the stratified 80/10/10 split of seed `fold` (fold 0 = the loader's own split)."""
    splits = stratified_split(corpus.items, corpus.label_names, (0.8, 0.1, 0.1), seed=fold)
    return Corpus(
        items=corpus.items, label_names=corpus.label_names, splits=splits, multilabel=corpus.multilabel, name=corpus.name
    )


def _link_shared_cache(prepared_dir: Path, shared_cache: Path) -> None:
    """Point a prepared folder's feature cache at the shared one, so every text setting reuses one extraction."""
    prepared_dir.mkdir(parents=True, exist_ok=True)
    link = prepared_dir / CACHE_DIR
    if link.is_symlink() or link.exists():
        return
    shared_cache.mkdir(parents=True, exist_ok=True)
    link.symlink_to(shared_cache.resolve(), target_is_directory=True)


def prepare_fold(corpus: Corpus, fold: int, text_key: str, work: Path) -> Path:
    """Prepared data of one fold and text setting (features from the shared cache; vocabulary and word vectors from
    this fold's training texts only, so no test text leaks into them)."""
    out = work / "folds" / str(fold) / text_key
    if (out / "prepared.json").is_file():
        wanted = CNN_TEXTS.get(text_key) or (TFIDF_TEXT if text_key == "tfidf" else None)
        if wanted is not None and load_prepared(out).text_config != wanted:
            raise SystemExit(
                f"{out} was prepared with another text setting than {text_key!r} has now: delete it (and the "
                f"runs/{text_key}-* results) so that they are made again"
            )
        return out
    corpus_dir = work / "folds" / str(fold) / "corpus"
    if not (corpus_dir / "corpus.json").is_file():
        save_corpus(fold_corpus(corpus, fold), corpus_dir)
    _link_shared_cache(out, work / CACHE_DIR)
    text = CNN_TEXTS.get(text_key) or (TFIDF_TEXT if text_key == "tfidf" else TextEncoderConfig(kind="minilm"))
    prepare_corpus(corpus_dir, out, PrepareConfig(backbone=BACKBONE, text=text, seed=fold, progress=False))
    return out


def resplit(data: FeatureSplits, corpus: Corpus, fold: int) -> FeatureSplits:
    """The same arrays regrouped into fold `fold`'s split, by item id (for inputs that do not depend on the split)."""
    rows: dict[str, tuple[SplitArrays, int]] = {}
    for name in SPLITS:
        part = data.split(name)
        for i, item_id in enumerate(part.ids):
            rows[item_id] = (part, i)
    splits = fold_corpus(corpus, fold).splits
    parts = {}
    for name in SPLITS:
        ids = [i for i in splits[name] if i in rows]
        pick = lambda attr: np.stack([getattr(rows[i][0], attr)[rows[i][1]] for i in ids])  # noqa: E731
        parts[name] = SplitArrays(pick("image"), pick("text"), pick("labels"), ids)
    return FeatureSplits(**parts, label_names=data.label_names, name=data.name, text_is_tokens=data.text_is_tokens)


def with_text(data: FeatureSplits, text_of: Callable[[str], np.ndarray]) -> FeatureSplits:
    """`data` with every split's text replaced by text_of(split name)."""
    parts = {s: SplitArrays(data.split(s).image, text_of(s), data.split(s).labels, data.split(s).ids) for s in SPLITS}
    return FeatureSplits(**parts, label_names=data.label_names, name=data.name, text_is_tokens=False)


def tfidf_text(data: FeatureSplits, corpus: Corpus) -> FeatureSplits:
    """`data` with each text as its TF-IDF vector of words and word bigrams (vocabulary and weights from train only)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from model.text import tokenize

    text_of = {it.id: it.text for it in corpus.items}
    vectorizer = TfidfVectorizer(tokenizer=tokenize, lowercase=False, token_pattern=None, ngram_range=(1, 2), sublinear_tf=True)
    vectorizer.fit([text_of[i] for i in data.train.ids])
    return with_text(data, lambda s: vectorizer.transform([text_of[i] for i in data.split(s).ids]).toarray().astype(np.float32))


def linear_probe_accuracy(data: FeatureSplits, modality: str, cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)) -> float:
    """Test accuracy of a logistic-regression classifier of one modality's features (C chosen on validation)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if any((data.split(s).labels.sum(1) != 1).any() for s in SPLITS):
        raise ValueError("linear_probe_accuracy scores single-label data; these labels have items with 0 or several classes")

    x = {s: getattr(data.split(s), modality) for s in SPLITS}
    y = {s: data.split(s).labels.argmax(1) for s in SPLITS}
    fitted = [
        make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=0)).fit(x["train"], y["train"])
        for c in cs
    ]
    best = max(fitted, key=lambda m: m.score(x["val"], y["val"]))
    return float(best.score(x["test"], y["test"]))


def mean_glove_text(data: FeatureSplits, corpus: Corpus) -> FeatureSplits:
    """`data` with each text replaced by the mean GloVe-50 vector of its tokens (zeros when none is known)."""
    from model.text import load_glove_6b_50d, tokenize

    glove = load_glove_6b_50d()
    text_of = {it.id: it.text for it in corpus.items}

    def vector(text: str) -> np.ndarray:
        known = [t for t in tokenize(text) if t in glove.key_to_index]
        return np.mean([glove[t] for t in known], axis=0) if known else np.zeros(50, np.float32)

    return with_text(data, lambda s: np.stack([vector(text_of[i]) for i in data.split(s).ids]).astype(np.float32))


# ----------------------------------------------------------------------------------------------------------------
# Methods
# ----------------------------------------------------------------------------------------------------------------


def loss_weights_suffix(weights: tuple[float, float]) -> str:
    """The run-key part naming non-released loss weights ("" for the released ones, so older runs stay valid)."""
    return "" if weights == RELEASED_LOSS_WEIGHTS else f"-lam{weights[0]:g}-eta{weights[1]:g}"


def dscmr_config(base: str, epochs: int, overrides: dict[str, dict[str, Any]] | None = None) -> DSCMRConfig:
    """A preset with epochs set and optional {network|loss|train: {field: value}} overrides."""
    cfg = preset(base, epochs=epochs, progress=False)
    for section, values in (overrides or {}).items():
        cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)})
    return cfg


def without_ids(data: FeatureSplits, exclude: set[str]) -> FeatureSplits:
    """`data` with the test split cut down to the items whose ids are not in `exclude`."""
    test = data.test
    keep = np.asarray([i for i, item_id in enumerate(test.ids) if item_id not in exclude], dtype=np.int64)
    cut = SplitArrays(test.image[keep], test.text[keep], test.labels[keep], [test.ids[i] for i in keep])
    return FeatureSplits(data.train, data.val, cut, data.label_names, name=data.name, text_is_tokens=data.text_is_tokens)


def _figures(scores, recall) -> dict[str, Any]:
    return {"i2t": scores.i2t, "t2i": scores.t2i, "avg": scores.avg, "recall": recall.as_dict()}


def run_dscmr(
    data: FeatureSplits,
    cfg: DSCMRConfig,
    text_encoder=None,
    text_dim: int | None = None,
    run_dir: Path | None = None,
    model_out: Path | None = None,
    prepared=None,
    clean_exclude: set[str] = frozenset(),
) -> dict[str, Any]:
    """Train (validation-selected), then evaluate once on test (and on its items outside `clean_exclude`); with
    `model_out`, save the model directory too."""
    cfg = with_dims(cfg, data.train.image.shape[1], text_dim or data.train.text.shape[1], len(data.label_names))
    result = train_dscmr(data, cfg, text_encoder=text_encoder, run_dir=run_dir)
    test, test_recall = evaluate_split(result.model, data, "test")
    val, val_recall = evaluate_split(result.model, data, "val")
    clean = evaluate_split(result.model, without_ids(data, clean_exclude), "test")
    if model_out is not None and prepared is not None:
        save_trained_model(
            result,
            model_out,
            data.label_names,
            prepared.feature_spec(),
            vocab=prepared.vocab_dict(),
            metrics={"test": {"i2t": test.i2t, "t2i": test.t2i, "avg": test.avg, "selected_on": "val"}},
        )
    return {
        **_figures(test, test_recall),
        "val_avg": val.avg,
        "val_recall": val_recall.as_dict(),
        "clean": _figures(*clean),
        "best_epoch": result.best_epoch,
        "epochs": result.epochs_run,
        "wall_s": round(result.wall_s, 1),
        "torch_threads": torch.get_num_threads(),
        "model": result.model,
    }


CODE = code_fingerprint("model", "training", "bench/imagenet_sample.py")


def run_name(key: str, what: dict[str, Any] | None) -> str:
    """KEY-HASH: a readable run name plus a hash of what produced the run (`what` and the code)."""
    import hashlib

    return f"{key}-{hashlib.sha256(json.dumps([key, what, CODE], sort_keys=True, default=str).encode()).hexdigest()[:12]}"


def cached_run(work: Path, key: str, fn: Callable[[], dict[str, Any]], what: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run `fn` once; its JSON-able result is kept under WORK/runs/KEY-HASH.json (see run_name) and reused by later runs of
    the same thing; nothing is reused when the code cannot be fingerprinted."""
    path = work / "runs" / f"{run_name(key, what)}.json"
    if CODE is not None and path.is_file():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    row = fn()
    row.pop("model", None)
    row.setdefault("wall_s", round(time.perf_counter() - t0, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row))
    print(
        f"  {key}: val {row.get('val_avg', float('nan')):.4f}  test avg {row['avg']:.4f} ({row['i2t']:.4f} / {row['t2i']:.4f})  {row['wall_s']} s",
        flush=True,
    )
    return row


def cached_probe(work: Path, fold: int, probes: dict[str, tuple[FeatureSplits, str]]) -> dict[str, float]:
    """Linear-probe test accuracy of each (data, modality) on one fold, kept under WORK/runs/ like the runs: keyed by the
    probes' names, a hash of the data each one reads and the code (run_name), so a changed feature is probed again."""
    what = {name: [modality, data_fingerprint(data)] for name, (data, modality) in sorted(probes.items())}
    path = work / "runs" / f"{run_name(f'probes-f{fold}', what)}.json"
    if CODE is not None and path.is_file():
        return json.loads(path.read_text())
    done = {name: linear_probe_accuracy(data, modality) for name, (data, modality) in probes.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(done))
    return done


def baseline_row(run: Callable[[FeatureSplits], Any], data: FeatureSplits, clean_exclude: set[str]) -> dict[str, Any]:
    """A baseline (CCA, semantic matching) as a result row: test, and test without `clean_exclude` (same choices, made
    on validation)."""
    result, clean = run(data), run(without_ids(data, clean_exclude))
    return {
        **_figures(result.test, result.test_recall),
        "val_avg": result.val.avg,
        "val_recall": result.val_recall.as_dict(),
        "clean": _figures(clean.test, clean.test_recall),
        "params": result.params,
        "wall_s": round(result.wall_s, 1),
    }


def summarise(rows: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    """Mean and (sample) standard deviation over folds."""

    def mean(k):
        return float(np.mean([r[k] for r in rows]))

    def std(k):
        return float(statistics.stdev([r[k] for r in rows])) if len(rows) > 1 else None

    def recall_mean(where: Callable[[dict[str, Any]], dict[str, Any] | None]) -> dict[str, float] | None:
        parts = [where(r) for r in rows]
        if any(p is None for p in parts):
            return None
        return {k: float(np.mean([p["avg"][k] for p in parts])) for k in ("r1", "r5", "r10", "median_rank", "mrr")}

    clean = [r["clean"] for r in rows] if all("clean" in r for r in rows) else None
    return {
        "i2t": mean("i2t"),
        "t2i": mean("t2i"),
        "avg": mean("avg"),
        "std_i2t": std("i2t"),
        "std_t2i": std("t2i"),
        "std_avg": std("avg"),
        "val_avg": mean("val_avg") if all("val_avg" in r for r in rows) else None,
        "recall": recall_mean(lambda r: r.get("recall")),
        "val_recall": recall_mean(lambda r: r.get("val_recall")),
        "clean_avg": float(np.mean([c["avg"] for c in clean])) if clean else None,
        "clean_recall": recall_mean(lambda r: (r.get("clean") or {}).get("recall")),
        "n_folds": len(rows),
        "selected_on": "val",
        "folds": rows,
        **extra,
    }


# ----------------------------------------------------------------------------------------------------------------
# Speed
# ----------------------------------------------------------------------------------------------------------------


def load_average() -> float | None:
    """1-minute load average (the machine is shared: speeds are only comparable at similar load)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError):
        return None


def backbone_images_per_s(name: str, image_paths: list[Path], batch_size: int) -> dict[str, Any]:
    """Network throughput (preprocessed batch -> features) of one backbone on this machine's CPU threads."""
    from model.image_backbones import IMAGENET_MEAN, IMAGENET_STD, VGG19, ImageBackbone, ImagePreprocess, build_image_backbone
    from model.image_io import load_image

    if name == "vgg19":
        # No VGG19 weights can be downloaded here; speed does not depend on the weight values, so random ones are used.
        torch.manual_seed(0)
        backbone = ImageBackbone(
            name="vgg19",
            network=VGG19(),
            output_dim=4096,
            preprocess=ImagePreprocess(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, resample="bilinear"),
            feature_layer="fc7",
            weights_file="(random)",
            weights_sha256="random",
            channels_last_on=frozenset({"cuda"}),
        )
    else:
        backbone = build_image_backbone(name)
    images = [load_image(p, draft_size=backbone.preprocess.resize) for p in image_paths]
    batch = backbone.preprocess.to_tensor_batch(images[:batch_size])
    backbone.extract(batch[:2])  # warm-up (first-call allocations)
    t0 = time.perf_counter()
    backbone.extract(batch)
    seconds = time.perf_counter() - t0
    return {
        "images_per_s": round(len(batch) / seconds, 2),
        "batch": len(batch),
        "crop": backbone.preprocess.crop,
        "output_dim": backbone.output_dim,
        "weights": "random (speed only)" if name == "vgg19" else "ImageNet (shipped)",
        "load_avg_1min": load_average(),
    }


def measure_speed(data_root: Path, work: Path, vgg_images: int, lite_images: int) -> dict[str, Any]:
    """Cold end-to-end prepare of the dataset with Lite0 (its cache then serves every other run) and backbone images/s."""
    speed_dir = work / "speed-prepare"
    shutil.rmtree(speed_dir, ignore_errors=True)
    load_before = load_average()
    t0 = time.perf_counter()
    corpus, report = load_dataset("imagenet-sample", data_root)
    save_corpus(corpus, speed_dir / "corpus")
    summary = prepare_corpus(
        speed_dir / "corpus", speed_dir / "prepared", PrepareConfig(backbone=BACKBONE, text=CNN_TEXTS["word2vec"], progress=True)
    )
    wall = time.perf_counter() - t0
    # Hand the freshly extracted features to the shared cache.
    shared = work / CACHE_DIR
    shared.mkdir(parents=True, exist_ok=True)
    for fp_dir in (speed_dir / "prepared" / CACHE_DIR).iterdir():
        if not (shared / fp_dir.name).exists():
            shutil.move(str(fp_dir), shared / fp_dir.name)
    images = sorted((data_root / "images").iterdir())
    backbones = {
        "efficientnet-lite0": backbone_images_per_s("efficientnet-lite0", images[:lite_images], lite_images),
        "efficientnet-lite2": backbone_images_per_s("efficientnet-lite2", images[:lite_images], lite_images),
        "vgg19": backbone_images_per_s("vgg19", images[:vgg_images], vgg_images),
    }
    return {
        "prepare_end_to_end_s": round(wall, 1),
        "prepare_target_s": 180,
        "prepare_items": summary["items"],
        "prepare_extract_s": summary["extract_s"],
        "prepare_images_per_s_incl_decode": summary["images_per_s"],
        "load_avg_1min_before_after": [load_before, load_average()],
        "torch_threads": torch.get_num_threads(),
        "backbones": backbones,
    }


# ----------------------------------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the JSON and Markdown results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--work", type=Path, help=f"prepared data and finished runs (default {DEFAULT_WORK})")
    ap.add_argument(
        "--out", type=Path, help="where results/imagenet-sample.json and results-imagenet-sample.md go (default docs/)"
    )
    ap.add_argument("--folds", type=int, default=5, help="stratified folds (split seeds 0..N-1) for the main rows")
    ap.add_argument("--ablation-folds", type=int, help="folds for the ablations (default: --folds)")
    ap.add_argument("--epochs", type=int, default=60, help="epochs of the DSCMR rows (lr 1e-3, cosine; best epoch chosen on val)")
    ap.add_argument("--authors-epochs", type=int, default=500, help="epochs of the authors' loop (the released code runs 500)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 fold, few epochs, small speed samples")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--redo-speed", action="store_true", help="measure speed again even if WORK/speed.json exists")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--texts", default="word2vec,glove,minilm,tfidf", help="DSCMR text settings to run (comma-separated)")
    ap.add_argument("--skip-authors", action="store_true", help="leave out the authors' loop (500 slow epochs per fold)")
    ap.add_argument("--note", default="", help="a remark printed under the results table (e.g. why a reduced protocol ran)")
    args = ap.parse_args(argv)
    if args.quick:
        args.folds, args.epochs, args.authors_epochs = 1, min(args.epochs, 2), min(args.authors_epochs, 2)
    ablation_folds = args.folds if args.ablation_folds is None else args.ablation_folds
    out = args.out or (REPO / "bench" / "out" / "imagenet-sample-quick" if args.quick else REPO / "docs")
    work = args.work or DEFAULT_WORK
    torch.set_num_threads(args.threads)
    machine_before = detect_machine()
    work.mkdir(parents=True, exist_ok=True)
    if not (args.data / "metadata.json").is_file():
        print(f"error: {args.data} is not imagenet-sample-wordnet (no metadata.json); pass --data", file=sys.stderr)
        return 2

    speed_path = work / "speed.json"
    speed = json.loads(speed_path.read_text()) if speed_path.is_file() else None
    if not args.skip_speed and (speed is None or args.redo_speed):
        print("measuring speed (cold prepare with Lite0, backbone images/s) ...", flush=True)
        speed = measure_speed(args.data, work, vgg_images=2 if args.quick else 8, lite_images=8 if args.quick else 32)
        speed_path.write_text(json.dumps(speed, indent=1))

    corpus, report = load_dataset("imagenet-sample", args.data)
    print(report, flush=True)
    epochs = args.epochs
    # The DSCMR rows' schedule: chosen on the Wikipedia and imagenet-sample validation splits (see the docs).
    tuned = lambda overrides=None: dscmr_config(
        "wiki-tuned", epochs, {"train": {"early_stopping_patience": EARLY_STOPPING}, **(overrides or {})}
    )  # noqa: E731
    rows: dict[str, list[dict[str, Any]]] = {}
    wanted = {t.strip() for t in args.texts.split(",") if t.strip()}
    dscmr_rows = {name: key for name, key in DSCMR_ROWS.items() if key in wanted}
    if not dscmr_rows:
        print(f"error: --texts must name some of {sorted(DSCMR_ROWS.values())}", file=sys.stderr)
        return 2
    minilm_fold0 = load_prepared(prepare_fold(corpus, 0, "minilm", work)).feature_splits()
    # Choices are made on fold 0's validation split: its items never count in the "clean" test figures of any fold.
    clean_exclude = set(fold_corpus(corpus, 0).splits["val"])

    def loss_overrides(weights: tuple[float, float], instance: float = 0.0) -> dict[str, dict[str, float]]:
        loss = {"lambda_j2": weights[0], "eta_j3": weights[1]}
        if instance:
            loss.update(instance_weight=instance, instance_temperature=INSTANCE_TEMPERATURE)
        return {"loss": loss}

    def dscmr_run(
        key: str, fold: int, weights: tuple[float, float] = RELEASED_LOSS_WEIGHTS, instance: float = 0.0
    ) -> dict[str, Any]:
        """One DSCMR run (cached) of text setting `key` (a CNN candidate or "minilm") with loss `weights` (and the instance
        term's weight) on `fold`."""
        run_key = f"{key}{loss_weights_suffix(weights)}{f'-inst{instance:g}' if instance else ''}-e{epochs}"
        prepared = load_prepared(prepare_fold(corpus, 0 if key == "minilm" else fold, key, work))
        cfg = tuned(loss_overrides(weights, instance))

        what = {"config": dataclasses.asdict(cfg), "text": key, "fold": fold, "prepared": prepared.content_hash}
        name = run_name(f"{run_key}-f{fold}", what)

        def train() -> dict[str, Any]:
            if key == "minilm":
                data, encoder, text_dim = resplit(minilm_fold0, corpus, fold), None, None
            else:
                data, encoder, text_dim = (
                    prepared.feature_splits(),
                    prepared.build_text_encoder(),
                    prepared.text_config.output_dim,
                )
            # Fold 0's models and run logs are kept: the figures are drawn from the best configuration's.
            keep = fold == 0
            row = run_dscmr(
                data,
                cfg,
                encoder,
                text_dim,
                run_dir=work / "rundirs" / name if keep else None,
                model_out=work / "models" / name if keep else None,
                prepared=prepared,
                clean_exclude=clean_exclude,
            )
            if keep:
                row.update(run_dir=str(work / "rundirs" / name), model_dir=str(work / "models" / name))
            return row

        return cached_run(work, f"{run_key}-f{fold}", train, what)

    # Each word-vector source's sentence-CNN setting: the candidate with the best fold-0 validation mAP.
    chosen: dict[str, str] = {}
    selection: dict[str, Any] = {}
    for source in (s for s in dscmr_rows.values() if s in CNN_CANDIDATES):
        print(f"choosing the {source} sentence-CNN setting on fold 0's validation split", flush=True)
        val = {key: dscmr_run(key, 0)["val_avg"] for key in CNN_CANDIDATES[source]}
        chosen[source] = max(val, key=val.get)
        selection[source] = {
            "fold0_val_avg": val,
            "chosen": chosen[source],
            "configs": {key: text_encoder_config_to_dict(CNN_TEXTS[key]) for key in val},
        }
    # Then each row's loss weights, on the same validation split.
    chosen_weights: dict[str, tuple[float, float]] = {}
    weight_selection: dict[str, Any] = {}
    for source in dscmr_rows.values():
        key = chosen.get(source, source)
        print(f"choosing the loss weights of {key} on fold 0's validation split", flush=True)
        val = {weights: dscmr_run(key, 0, weights)["val_avg"] for weights in LOSS_WEIGHTS}
        chosen_weights[source] = max(val, key=val.get)
        weight_selection[source] = {
            "text": key,
            "chosen": {"lambda_j2": chosen_weights[source][0], "eta_j3": chosen_weights[source][1]},
            "fold0_val_avg": [{"lambda_j2": w[0], "eta_j3": w[1], "val_avg": v} for w, v in val.items()],
        }
    # Then each row's instance-term weight (beyond the paper), on the same validation split.
    chosen_instance: dict[str, float] = {}
    instance_selection: dict[str, Any] = {}
    for source in dscmr_rows.values():
        key = chosen.get(source, source)
        print(f"choosing the instance-term weight of {key} on fold 0's validation split", flush=True)
        without = dscmr_run(key, 0, chosen_weights[source])
        runs = {w: dscmr_run(key, 0, chosen_weights[source], w) for w in INSTANCE_WEIGHTS}
        allowed = [w for w, r in runs.items() if r["val_avg"] >= without["val_avg"] - INSTANCE_MAP_SLACK] or [
            max(runs, key=lambda w: runs[w]["val_avg"])
        ]
        chosen_instance[source] = max(allowed, key=lambda w: runs[w]["val_recall"]["avg"]["r10"])
        instance_selection[source] = {
            "text": key,
            "chosen": chosen_instance[source],
            "without": {"val_avg": without["val_avg"], "val_r10": without["val_recall"]["avg"]["r10"]},
            "candidates": [
                {"weight": w, "val_avg": r["val_avg"], "val_r10": r["val_recall"]["avg"]["r10"]} for w, r in runs.items()
            ],
        }
    probes: list[dict[str, float]] = []
    for fold in range(args.folds):
        print(f"fold {fold} (split seed {fold})", flush=True)
        for row_name, source in dscmr_rows.items():
            rows.setdefault(row_name, []).append(dscmr_run(chosen.get(source, source), fold, chosen_weights[source]))
            rows.setdefault(row_name + INSTANCE_SUFFIX, []).append(
                dscmr_run(chosen.get(source, source), fold, chosen_weights[source], chosen_instance[source])
            )
        glove_mean = mean_glove_text(resplit(minilm_fold0, corpus, fold), corpus)
        baseline = lambda name, run, data: cached_run(
            work,
            f"{name}-f{fold}",
            lambda: baseline_row(run, data, clean_exclude),  # noqa: E731
            {"fold": fold, "method": name},
        )
        if not args.skip_authors:
            rows.setdefault(AUTHORS_ROW, []).append(
                cached_run(
                    work,
                    f"authors-e{args.authors_epochs}-f{fold}",
                    lambda: run_dscmr(glove_mean, dscmr_config("paper", args.authors_epochs), clean_exclude=clean_exclude),
                    {"config": dataclasses.asdict(dscmr_config("paper", args.authors_epochs)), "fold": fold},
                )
            )
        rows.setdefault(SM_ROW, []).append(baseline("sm-glove", run_semantic_matching, glove_mean))
        rows.setdefault(CCA_ROW, []).append(baseline("cca-glove", run_cca, glove_mean))
        minilm = resplit(minilm_fold0, corpus, fold)
        rows.setdefault(SM_MINILM_ROW, []).append(baseline("sm-minilm", run_semantic_matching, minilm))
        tfidf = tfidf_text(minilm, corpus)
        rows.setdefault(SM_TFIDF_ROW, []).append(baseline("sm-tfidf", run_semantic_matching, tfidf))
        true_labels = with_text(minilm, lambda s: minilm.split(s).labels.astype(np.float32))
        rows.setdefault(CEILING_ROW, []).append(baseline("ceiling-labels", run_semantic_matching, true_labels))
        probes.append(
            cached_probe(
                work,
                fold,
                {
                    "image (Lite0 features)": (minilm, "image"),
                    "text: MiniLM": (minilm, "text"),
                    "text: TF-IDF words + bigrams": (tfidf, "text"),
                    "text: mean GloVe-50": (glove_mean, "text"),
                },
            )
        )

    # The best DSCMR configuration is the one with the best mean VALIDATION mAP; its ablations follow.
    best_name = max(dscmr_rows, key=lambda n: rows[n][0]["val_avg"])  # fold 0's validation, like every other choice
    best_key = chosen.get(dscmr_rows[best_name], dscmr_rows[best_name])
    best_weights = chosen_weights[dscmr_rows[best_name]]
    ablations: dict[str, list[dict[str, Any]]] = {}
    for fold in range(ablation_folds):
        if best_key == "minilm":
            data, encoder_fn, text_dim = resplit(minilm_fold0, corpus, fold), (lambda: None), None
        else:
            prepared = load_prepared(prepare_fold(corpus, fold, best_key, work))
            data, encoder_fn, text_dim = prepared.feature_splits(), prepared.build_text_encoder, prepared.text_config.output_dim
        for ablation in ("no_j1", "no_j2", "no_j3", "j1_only"):
            cfg = tuned(loss_overrides(best_weights))
            cfg = dataclasses.replace(cfg, loss=loss_for_ablation(cfg.loss, ablation))
            # J1 alone does not depend on the weights: its runs are shared by every weight choice.
            suffix = "" if ablation == "j1_only" else loss_weights_suffix(best_weights)
            ablations.setdefault(f"{best_name} - ablation {ablation}", []).append(
                cached_run(
                    work,
                    f"{best_key}{suffix}-e{epochs}-{ablation}-f{fold}",
                    lambda: run_dscmr(data, cfg, encoder_fn(), text_dim, clean_exclude=clean_exclude),
                    {"config": dataclasses.asdict(cfg), "text": best_key, "fold": fold},
                )
            )

    figures = draw_figures(work, best_key, rows[best_name][0], corpus, out)
    results: dict[str, Any] = {}
    for name, fold_rows in rows.items():
        base_name = name.removesuffix(INSTANCE_SUFFIX)
        extra = {
            "kind": "dscmr"
            if base_name in DSCMR_ROWS
            else "authors_loop"
            if name == AUTHORS_ROW
            else "ceiling"
            if name == CEILING_ROW
            else "baseline"
        }
        if base_name in DSCMR_ROWS:
            source = DSCMR_ROWS[base_name]
            key = chosen.get(source, source)
            weights = chosen_weights[source]
            extra["config"] = {
                "preset": "wiki-tuned",
                "epochs": epochs,
                "early_stopping_patience": EARLY_STOPPING,
                "text": key,
                "lambda_j2": weights[0],
                "eta_j3": weights[1],
                "instance_weight": chosen_instance[source] if name != base_name else 0.0,
                **({"text_config": selection[source]["configs"][key]} if key in CNN_TEXTS else {}),
            }
        if name == AUTHORS_ROW:
            extra["config"] = {"preset": "paper", "epochs": args.authors_epochs}
        results[name] = summarise(fold_rows, extra)
    for name, fold_rows in ablations.items():
        results[name] = summarise(fold_rows, {"kind": "ablation", "of": best_name})
    results["_best_dscmr"] = best_name
    results["_linear_probe_accuracy"] = {
        name: {
            "mean": float(np.mean([p[name] for p in probes])),
            "std": float(statistics.stdev([p[name] for p in probes])) if len(probes) > 1 else None,
            "folds": [p[name] for p in probes],
        }
        for name in probes[0]
    }
    results["_text_selection"] = selection
    results["_loss_weight_selection"] = weight_selection
    results["_instance_selection"] = instance_selection
    results["_speed"] = speed
    results["_figures"] = figures
    results["_meta"] = {
        "dataset": "imagenet-sample-wordnet (1,000 photos, 22 coarse classes, single-label)",
        "split": "stratified 80/10/10 on coarse_label; fold k = split seed k",
        "folds": args.folds,
        "ablation_folds": ablation_folds,
        "backbone": BACKBONE,
        "dscmr_epochs": epochs,
        "authors_epochs": args.authors_epochs,
        "note": args.note,
        "machine_before": machine_before,
        "machine_after": detect_machine(),
        "torch_threads": torch.get_num_threads(),
        "code": CODE,
        "clean_test": "each fold's test items outside fold 0's validation split (where every choice is made)",
        "date": time.strftime("%Y-%m-%d"),
        "command": "python bench/imagenet_sample.py " + _command_args(argv or sys.argv[1:]),
    }
    (out / "results").mkdir(parents=True, exist_ok=True)
    (out / "results" / "imagenet-sample.json").write_text(json.dumps(results, indent=1))
    markdown = render_markdown(results)
    (out / "results-imagenet-sample.md").write_text(markdown)
    print(markdown)
    print(f"wrote {out / 'results' / 'imagenet-sample.json'} and {out / 'results-imagenet-sample.md'}")
    return 0


def draw_figures(work: Path, text_key: str, fold0_row: dict[str, Any], corpus: Corpus, out: Path) -> dict[str, str]:
    """Fig. 2 and Fig. 3 of the best configuration's fold-0 run, as `python -m training figures` draws them."""
    from training.figures import make_figures

    if "run_dir" not in fold0_row:
        print("the best configuration's fold-0 run kept no run log; figures skipped", flush=True)
        return {}
    run_dir, model_dir = Path(fold0_row["run_dir"]), Path(fold0_row["model_dir"])
    if not model_dir.is_dir() or not any(model_dir.iterdir()):
        print(f"no saved fold-0 model in {model_dir} (its run was cached before models were kept); figures skipped", flush=True)
        return {}
    data = load_prepared(prepare_fold(corpus, 0, text_key, work)).feature_splits()
    made = make_figures(run_dir, model_dir, data, out / "figures", prefix="imagenet-sample-")
    return {k: str(Path(v).resolve().relative_to(REPO)) if Path(v).resolve().is_relative_to(REPO) else v for k, v in made.items()}


def _command_args(argv: list[str]) -> str:
    """The command-line arguments as they ran, with the --note text left out (it is printed on its own)."""
    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--note":
            args.append("--note ...")
            skip = True
        elif not a.startswith("--note="):
            args.append(a)
    return " ".join(args)


def _pm(row: dict[str, Any], key: str) -> str:
    std = row.get(f"std_{key}")
    return f"{row[key]:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def _selection_lines(selection: dict[str, Any]) -> list[str]:
    """The sentence-CNN candidates per word-vector source with their fold-0 validation mAP."""
    if not selection:
        return []
    sizes = sorted({cfg.get("pretrained_vocab", 0) for sel in selection.values() for cfg in sel["configs"].values()} - {0})
    lines = [
        "## Sentence-CNN settings, chosen on validation",
        "",
        "Each word-vector source's candidates ran on fold 0; the best fold-0 validation mAP (bold) ran on every fold. "
        f"`pretrained_vocab`: the {' or '.join(f'{n:,}' for n in sizes) or 'N'} most frequent pretrained words get "
        "vocabulary entries besides the training words; "
        "`static`: frozen word vectors (Kim's CNN-static); `word_dropout`: tokens blanked in training; `mean`: the mean "
        "word vector appended to the pooled CNN features.",
        "",
        "| source | candidate | min count | pretrained vocab | frozen | word dropout | mean vector | maps per width | fold-0 val avg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for source, sel in selection.items():
        for key, val in sel["fold0_val_avg"].items():
            cfg = sel["configs"][key]
            mark = "**" if key == sel["chosen"] else ""
            lines.append(
                f"| {source} | {mark}{key}{mark} | {cfg['min_count']} | {cfg.get('pretrained_vocab', 0):,} | "
                f"{'yes' if cfg['freeze_embeddings'] else 'no'} | {cfg.get('word_dropout', 0.0)} | "
                f"{'yes' if cfg.get('mean_vector') else 'no'} | {cfg['maps']} | {mark}{val:.4f}{mark} |"
            )
    return lines + [""]


def _loss_weight_lines(selection: dict[str, Any]) -> list[str]:
    """Each DSCMR row's loss-weight candidates with their fold-0 validation mAP (the chosen pair in bold)."""
    if not selection:
        return []
    pairs = [(c["lambda_j2"], c["eta_j3"]) for c in next(iter(selection.values()))["fold0_val_avg"]]
    lines = [
        "## Loss weights, chosen on validation",
        "",
        "J = J1 + lambda * J2 + eta * J3. Once a row's text setting is chosen (with the released weights, lambda 1e-3 and "
        "eta 0.1), each pair below ran on fold 0 and the best fold-0 validation mAP (bold) ran on every fold. The paper "
        "leaves both weights as hyper-parameters (its Eq. 5) without giving values.",
        "",
        "| row (text setting) | " + " | ".join(f"lambda {lam:g}, eta {eta:g}" for lam, eta in pairs) + " |",
        "|---|" + "---|" * len(pairs),
    ]
    for sel in selection.values():
        best = (sel["chosen"]["lambda_j2"], sel["chosen"]["eta_j3"])
        cells = [
            f"**{c['val_avg']:.4f}**" if (c["lambda_j2"], c["eta_j3"]) == best else f"{c['val_avg']:.4f}"
            for c in sel["fold0_val_avg"]
        ]
        lines.append(f"| {sel['text']} | " + " | ".join(cells) + " |")
    return lines + [""]


def _instance_lines(results: dict[str, Any]) -> list[str]:
    """Each DSCMR row's instance-term weights with their fold-0 validation figures, and what the term cost on test."""
    selection = results.get("_instance_selection")
    if not selection:
        return []
    lines = [
        "## The instance term, chosen on validation",
        "",
        f"Beyond the paper: each image pulled towards its own text and away from the batch's other texts, and vice versa "
        f"(symmetric InfoNCE, temperature {INSTANCE_TEMPERATURE}). Once a row's text setting and loss weights are chosen, "
        f"each weight ran on fold 0; the '+ instance term' row keeps the best validation R@10 among the weights whose "
        f"validation mAP stays within {INSTANCE_MAP_SLACK} of the row without the term (bold), and runs on every fold.",
        "",
        "| row (text setting) | without: val mAP / R@10 | "
        + " | ".join(f"weight {w:g}: val mAP / R@10" for w in INSTANCE_WEIGHTS)
        + " | test mAP change (mean over folds) | test R@10 change |",
        "|---|---|" + "---|" * len(INSTANCE_WEIGHTS) + "---|---|",
    ]
    by_text = {row_source: name for name, row_source in DSCMR_ROWS.items()}
    for source, sel in selection.items():
        base = results.get(by_text[source])
        with_term = results.get(by_text[source] + INSTANCE_SUFFIX)
        cells = []
        for c in sel["candidates"]:
            cell = f"{c['val_avg']:.4f} / {c['val_r10']:.3f}"
            cells.append(f"**{cell}**" if c["weight"] == sel["chosen"] else cell)
        change = f"{with_term['avg'] - base['avg']:+.4f}" if base and with_term else "-"
        r10 = (
            f"{with_term['recall']['r10'] - base['recall']['r10']:+.3f}"
            if base and with_term and base.get("recall") and with_term.get("recall")
            else "-"
        )
        lines.append(
            f"| {sel['text']} | {sel['without']['val_avg']:.4f} / {sel['without']['val_r10']:.3f} | "
            + " | ".join(cells)
            + f" | {change} | {r10} |"
        )
    return lines + [""]


def _ceiling_lines(results: dict[str, Any]) -> list[str]:
    """How well each feature alone predicts the class, and what semantic matching reaches with a perfect text side."""
    probes, ceiling = results.get("_linear_probe_accuracy"), results.get(CEILING_ROW)
    if not probes or not ceiling:
        return []
    lines = [
        "",
        "## What each feature tells about the class",
        "",
        "Test accuracy of a logistic-regression classifier of the 22 coarse classes on each feature alone (standardised "
        "features, C chosen on validation; mean ± std over the folds). This is a diagnostic: nothing is selected on it.",
        "",
        "| feature | accuracy |",
        "|---|---|",
    ]
    lines += [
        f"| {name} | {p['mean']:.3f}" + (f" ± {p['std']:.3f}" if p["std"] is not None else "") + " |"
        for name, p in probes.items()
    ]
    lines += [
        "",
        f"**{CEILING_ROW}** reaches **{_pm(ceiling, 'avg')}** average mAP (I->T {_pm(ceiling, 'i2t')}, T->I "
        f"{_pm(ceiling, 't2i')}; {ceiling['folds'][0]['avg']:.4f} on split seed 0). It bounds semantic matching on these "
        "image features, not DSCMR, whose image head is non-linear.",
    ]
    if SM_MINILM_ROW in results and "text: MiniLM" in probes:
        lines[-1] += (
            f" With MiniLM's text side ({probes['text: MiniLM']['mean']:.3f} text accuracy) semantic matching reaches "
            f"{results[SM_MINILM_ROW]['avg']:.4f}, so a better text side can add at most about "
            f"{ceiling['avg'] - results[SM_MINILM_ROW]['avg']:.3f} there, while the other {1 - ceiling['avg']:.3f} up to a "
            "perfect 1.0 is lost on the image side."
        )
    lines[-1] += (
        " A likely reason for the weak image side: each photo is the only one of its ImageNet class, and classes "
        "such as device, container, covering or household goods are defined by use rather than by look. "
        "Image feature variants are compared in [results-imagenet-image-features.md](results-imagenet-image-features.md)."
    )
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    """The results page: table of mean ± std over folds, ablations, speed."""
    meta, speed = results["_meta"], results.get("_speed")
    machine = describe(meta["machine_before"], meta.get("machine_after")) if "machine_before" in meta else meta.get("machine")
    lines = [
        "# Results: imagenet-sample-wordnet",
        "",
        f"Produced by `{meta['command'].strip()}` on {meta['date']}.",
        "",
        f"Machine: {machine}.",
        "",
        f"Data: {meta['dataset']}; image features {meta['backbone']} (mean-pooled, 1,280-d, cached). Split: {meta['split']}; "
        f"{meta['folds']} fold(s) for the main rows, {meta['ablation_folds']} for the ablations. Every model's epoch and "
        "hyper-parameters are chosen on validation; test is evaluated once per fold. mAP over all returned results "
        "(cosine), mean ± sample standard deviation over folds. R@K (test, mean over folds, both directions averaged): "
        "the share of queries whose own pair is among the first K of the other modality's ~100 test items; all photos of "
        "a synset share its gloss, so items with the same text count as one pair (any of them is a hit). "
        "**Choices are made on fold 0's validation split and reused on the other folds**, where about one in ten test "
        "items is a fold-0 validation item: the 'clean' column is the mean over each fold's test items outside fold 0's "
        "validation split, which took no part in any choice. The last column is the single fixed split (split seed 0, "
        "fold 0) on its own, the protocol of the issue's reference figures, clean by construction.",
        "",
        "| method | I->T | T->I | average | clean average | R@1 | R@10 | medR | val avg | folds | split seed 0: average (I->T / T->I) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        if name.startswith("_") or row.get("kind") in ("ablation", "ceiling"):
            continue
        seed0 = row["folds"][0]
        recall = row.get("recall")
        r = (f"{recall['r1']:.3f} | {recall['r10']:.3f} | {recall['median_rank']:.1f}") if recall else "- | - | -"
        clean = f"{row['clean_avg']:.4f}" if row.get("clean_avg") is not None else "-"
        lines.append(
            f"| {name} | {_pm(row, 'i2t')} | {_pm(row, 't2i')} | **{_pm(row, 'avg')}** | {clean} | {r} | "
            f"{row['val_avg']:.4f} | {row['n_folds']} | {seed0['avg']:.4f} ({seed0['i2t']:.4f} / {seed0['t2i']:.4f}) |"
        )
    if meta.get("note"):
        lines += ["", f"**Note.** {meta['note']}"]
    lines += [
        "",
        f"Best DSCMR configuration on validation: **{results['_best_dscmr']}**. DSCMR rows: preset `wiki-tuned` "
        f"(Adam lr 1e-3, cosine decay, no dropout), up to {meta['dscmr_epochs']} epochs (stopped after "
        f"{EARLY_STOPPING} without a better validation mAP), best epoch on validation, loss weights per row as chosen below. "
        + (
            f"Authors' loop: preset `paper` (the released code: Adam lr 1e-4, betas (0.5, 0.999), batch 100), "
            f"{meta['authors_epochs']} epochs, on the mean GloVe-50 vector of the text."
            if AUTHORS_ROW in results
            else "The authors' loop was not run (--skip-authors)."
        ),
        "",
        *_selection_lines(results.get("_text_selection") or {}),
        *_loss_weight_lines(results.get("_loss_weight_selection") or {}),
        *_instance_lines(results),
        "## Ablations of the best configuration",
        "",
        "| variant | I->T | T->I | average | R@10 | val avg | folds |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        if not name.startswith("_") and row.get("kind") == "ablation":
            r10 = f"{row['recall']['r10']:.3f}" if row.get("recall") else "-"
            lines.append(
                f"| {name.split(' - ')[-1]} | {_pm(row, 'i2t')} | {_pm(row, 't2i')} | **{_pm(row, 'avg')}** | {r10} | "
                f"{row['val_avg']:.4f} | {row['n_folds']} |"
            )
    best_config = results[results["_best_dscmr"]].get("config", {})
    if "lambda_j2" in best_config:
        lam, eta = best_config["lambda_j2"], best_config["eta_j3"]
        lines += [
            "",
            f"The ablations keep the best configuration's loss weights (lambda {lam:g}, eta {eta:g}) for the terms they keep.",
        ]
        # A zero weight switches its term off, so two ablations then train objectives that another row already trains.
        same = {
            "J2": "no_j2 trains the same objective as the full model and no_j3 the same as j1_only",
            "J3": "no_j3 trains the same objective as the full model and no_j2 the same as j1_only",
        }
        off = [term for term, weight in (("J2", lam), ("J3", eta)) if weight == 0]
        if len(off) == 1:
            lines[-1] += f" Its weight of {off[0]} is 0, so {same[off[0]]}: their figures are equal."
        elif off:
            lines[-1] += " Both weights are 0, so the full model is j1_only, and so are no_j2 and no_j3."
    lines += _ceiling_lines(results)
    if results.get("_figures"):
        lines += ["", "## Figures", "", "Drawn by `python -m training figures` from the best configuration's fold-0 run:", ""]
        lines += [
            f"- ![{k}]({Path(v).relative_to('docs') if Path(v).is_relative_to('docs') else v})"
            for k, v in results["_figures"].items()
        ]
    if speed:
        lines += [
            "",
            "## Speed",
            "",
            f"Preparing imagenet-sample-wordnet end to end (load + corpus + Lite0 features of 1,000 photos + word2vec vocabulary), "
            f"cold cache: **{speed['prepare_end_to_end_s']} s** (target {speed['prepare_target_s']} s; extraction "
            f"{speed['prepare_extract_s']} s, {speed['prepare_images_per_s_incl_decode']} images/s including JPEG decoding); "
            f"load average before/after {speed['load_avg_1min_before_after']}, {speed['torch_threads']} torch threads.",
            "",
            "| backbone | weights | crop | dim | images/s (network, batch) | load avg |",
            "|---|---|---|---|---|---|",
        ]
        for name, b in speed["backbones"].items():
            lines.append(
                f"| {name} | {b['weights']} | {b['crop']} | {b['output_dim']} | {b['images_per_s']} ({b['batch']}) | {b['load_avg_1min']} |"
            )
        if speed.get("provenance"):
            lines += ["", f"How measured: {speed['provenance']}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
