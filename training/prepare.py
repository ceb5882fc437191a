"""Prepared data: a corpus turned into cached backbone features, token ids (or sentence vectors), labels and splits.

`prepare_corpus` extracts every image's backbone feature once per (image bytes, backbone weights, preprocessing):
features go to a content-addressed cache of chunk files, one per batch, written atomically, so an interrupted run
resumes where it stopped and a changed image or backbone recomputes only what changed. The cache is then assembled,
in corpus order and in bounded memory, into `image_features.npy`. Under torchrun (or with `shard=(i, n)`) each rank
extracts every n-th missing image; rank 0 assembles once all ranks are done, and the result equals a one-process run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from model.artefact import sha256_file
from model.config import from_dict
from model.corpus import SPLITS, Corpus, Item, load_corpus, save_corpus
from model.feature_cache import CACHE_DIR, FeatureCache, backbone_fingerprint, image_file_key
from model.image_io import ImageDecodeError, load_image
from model.sentence_cnn import TextEncoderConfig
from model.text_tokenize import OOV_ID, PAD_ID
from training.datasets.checks import CorpusInputError, check_trainable
from training.derived_labels import KeywordConfig
from training.features import FeatureSplits, SplitArrays

log = logging.getLogger(__name__)

PREPARED_FILE = "prepared.json"
FEATURES_FILE = "image_features.npy"
TEXT_FILE = "text_input.npy"
TEXT_VIEWS_FILE = "text_views.npy"
EMBEDDINGS_FILE = "word_embeddings.npy"
VOCAB_FILE = "vocab.json"
PREPARED_FORMAT = 1
# A copy of the corpus labelled with the derived labels (prepare --derive-labels), inside the prepared folder.
DERIVED_CORPUS_DIR = "corpus-derived"


@dataclass(frozen=True)
class PrepareConfig:
    """How to turn a corpus into training inputs: the image backbone and the text encoder."""

    backbone: str = "efficientnet-lite0"
    weights_path: str | None = None
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    batch_size: int = 32
    decode_workers: int = 2
    device: str = "auto"
    seed: int = 0
    progress: bool = True
    # Training views per text (1: the whole text only; N > 1 adds N - 1 random subsets of its segments, see
    # training/text_views.py); stored as text_views.npy, used by training only.
    text_views: int = 1
    # Labels derived from the texts (training/derived_labels.py): "none", "clusters" (k-means over the text features;
    # `clusters` = k, or None to choose k on validation from a small grid) or "keywords" (keyword tags as multi-labels,
    # chosen by `keywords`). They replace the corpus's labels for training.
    derive_labels: str = "none"
    clusters: int | None = None
    # MiniLM reads English word pieces: above this share of unknown pieces ([UNK]) in the corpus's texts, prepare warns
    # and suggests a text option that reads the corpus's language (the Chinese emoji demo measures about 0.6). The same
    # bound applies to the multilingual USE's unknown pieces (<unk>: a language outside its 16).
    minilm_unknown_warning: float = 0.05
    keywords: KeywordConfig = field(default_factory=KeywordConfig)


class PreparedDataError(ValueError):
    """Prepared data that is missing, incomplete or does not match its corpus; the message says what to do."""


def _device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


def _rank_and_world(shard: tuple[int, int] | None) -> tuple[int, int]:
    if shard is not None:
        return shard
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def image_keys(items: list[Item], workers: int) -> list[str | None]:
    """sha256 of each item's image file (None where it cannot be read): the feature cache's keys."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(image_file_key, [it.image_path for it in items]))


def extract_missing_features(
    items: list[Item], keys: list[str | None], cache: FeatureCache, backbone, cfg: PrepareConfig, shard: tuple[int, int]
) -> dict[str, Any]:
    """Extract the features of this shard's images (keyed by `keys`) that the cache lacks; returns counts and skipped items."""
    rank, world = shard
    skipped = [
        {"id": it.id, "path": it.image_path, "reason": "image file missing or unreadable"}
        for it, k in zip(items, keys)
        if k is None
    ]
    cached = cache.load_index()
    unique: dict[str, Item] = {}
    for it, key in zip(items, keys):
        if key is not None:
            unique.setdefault(key, it)
    # Shards are fixed by the image set alone (not by what happens to be cached), so ranks never overlap.
    mine = [(k, it) for i, (k, it) in enumerate(sorted(unique.items())) if i % world == rank]
    missing = {k for k in unique if k not in cached}
    todo = [(k, it) for k, it in mine if k in missing]
    device = _device(cfg.device)
    backbone.to_device(device)
    n_batches = -(-len(todo) // cfg.batch_size)
    bar = tqdm(
        total=len(todo),
        desc=f"backbone features (rank {rank}/{world})" if world > 1 else "backbone features",
        unit="img",
        disable=not cfg.progress,
    )
    extracted = 0
    started = time.perf_counter()

    def decode(pair):
        key, item = pair
        try:
            return key, item, load_image(item.image_path, draft_size=backbone.preprocess.resize), None
        except (ImageDecodeError, OSError) as exc:
            return key, item, None, str(exc)

    with ThreadPoolExecutor(max_workers=max(1, cfg.decode_workers)) as pool:
        for b in range(n_batches):
            decoded = list(pool.map(decode, todo[b * cfg.batch_size : (b + 1) * cfg.batch_size]))
            good = [(k, img) for k, _, img, err in decoded if err is None]
            for _, item, _, err in decoded:
                if err is not None:
                    log.warning("skipping item %s: %s", item.id, err)
                    skipped.append({"id": item.id, "path": item.image_path, "reason": err})
            if good:
                feats = backbone.extract_images([img for _, img in good], batch_size=cfg.batch_size).numpy()
                cache.write_chunk(f"{good[0][0][:16]}-{len(good)}-r{rank}", [k for k, _ in good], feats)
                extracted += len(good)
            bar.update(len(decoded))
    bar.close()
    wall = time.perf_counter() - started
    return {
        "extracted": extracted,
        "cached": len(items) - len(skipped) - len(missing),
        "skipped": skipped,
        "extract_s": round(wall, 3),
        "images_per_s": round(extracted / wall, 2) if extracted and wall > 0 else None,
    }


def assemble_features(
    items: list[Item], keys: list[str | None], cache: FeatureCache, out_path: Path, dim: int
) -> tuple[list[str], list[str]]:
    """Write the cached features of `items` (in order) to out_path as one .npy, chunk by chunk; returns (kept ids, keys)."""
    index = cache.load_index()
    kept = [(it.id, k) for it, k in zip(items, keys) if k is not None and k in index]
    tmp = out_path.with_name(out_path.name + ".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(kept), dim))
    by_chunk: dict[Path, list[tuple[int, int]]] = {}
    for dest, (_, key) in enumerate(kept):
        chunk, row = index[key]
        by_chunk.setdefault(chunk, []).append((dest, row))
    for chunk, pairs in by_chunk.items():
        with np.load(chunk) as data:
            feats = data["features"]
            dest, rows = zip(*pairs)
            out[list(dest)] = feats[list(rows)]
    out.flush()
    del out
    os.replace(tmp, out_path)
    return [i for i, _ in kept], [k for _, k in kept]


def _splits_for(corpus: Corpus, seed: int) -> dict[str, list[str]]:
    if all(corpus.splits.get(s) for s in SPLITS):
        return {s: list(corpus.splits[s]) for s in SPLITS}
    from training.datasets.splits import stratified_split

    log.info("corpus %s has no complete train/val/test split; making a stratified 80/10/10 split (seed %d)", corpus.name, seed)
    return stratified_split(corpus.items, corpus.label_names, seed=seed)


def usable_items(corpus: Corpus) -> tuple[list[Item], list[dict[str, str]]]:
    """The items prepare keeps -- every item with an image and a text, labelled or not -- and why the others go.

    Items without a label train on their pair alone (J3 and the instance term, training/train.py): all of them in a corpus
    without labels; in a corpus where only some items have labels, J1 and J2 count the labelled ones.
    """
    usable, dropped = [], []
    for it in corpus.items:
        if not it.image_path or not (it.text or "").strip():
            dropped.append({"id": it.id, "reason": "no image or no text"})
        else:
            usable.append(it)
    unlabelled = sum(1 for it in usable if not it.labels)
    if corpus.label_names and unlabelled:
        log.info(
            "corpus %s: %d of %d items have no label; they train on their pairs (J3 + instance term)",
            corpus.name,
            unlabelled,
            len(usable),
        )
    return usable, dropped


def check_preparable(corpus: Corpus, cfg: PrepareConfig, source: str) -> tuple[list[Item], list[dict[str, str]]]:
    """The items prepare keeps and why the others go (`usable_items`), refusing (CorpusInputError) what cannot be
    prepared before anything is written: no text at all, one text for every item, too few items, fewer train items
    than the clusters asked for."""
    usable, dropped = usable_items(corpus)
    check_trainable(usable, source, empty_texts=sum(1 for it in corpus.items if not (it.text or "").strip()))
    _check_derive_request(corpus, usable, cfg, source)
    return usable, dropped


def _check_derive_request(corpus: Corpus, usable: list[Item], cfg: PrepareConfig, source: str) -> None:
    """Refuse, before anything is written, a label derivation that cannot run: unknown method, fewer train items than
    the clusters asked for (or than the smallest k of the grid), or no keyword within the document-frequency bounds."""
    from training.derived_labels import CLUSTER_GRID, DERIVE_METHODS, select_keywords

    if cfg.derive_labels not in DERIVE_METHODS:
        raise ValueError(f"derive_labels must be one of {DERIVE_METHODS}, got {cfg.derive_labels!r}")
    if cfg.derive_labels != "clusters" and cfg.clusters is not None:
        raise ValueError("--clusters needs --derive-labels clusters")
    if cfg.derive_labels != "keywords" and cfg.keywords != KeywordConfig():
        raise ValueError("--keywords, --keyword-min-df, --keyword-max-df and --keyword-words need --derive-labels keywords")
    if cfg.derive_labels == "none":
        return
    if corpus.label_names:
        log.warning(
            "corpus %s has labels; --derive-labels %s replaces them for training (the corpus keeps them)",
            corpus.name,
            cfg.derive_labels,
        )
    if cfg.derive_labels == "keywords":
        by_id = {it.id: it for it in usable}
        train_texts = [by_id[i].text for i in _splits_for(corpus, cfg.seed)["train"] if i in by_id]
        cfg.keywords.validate()
        if not select_keywords(train_texts, cfg.keywords)[0]:
            raise CorpusInputError(
                f"{source}: no keyword of the {len(train_texts)} train texts is in at least {cfg.keywords.min_df} texts and "
                f"at most {cfg.keywords.max_df:g} of them: lower --keyword-min-df or raise --keyword-max-df"
            )
        return
    if cfg.clusters is not None and cfg.clusters < 2:
        raise CorpusInputError(f"--clusters must be at least 2, got {cfg.clusters}")
    ids = {it.id for it in usable}
    n_train = sum(1 for i in _splits_for(corpus, cfg.seed)["train"] if i in ids)
    smallest = cfg.clusters if cfg.clusters is not None else min(CLUSTER_GRID)
    if n_train < smallest:
        what = f"{smallest} clusters" if cfg.clusters is not None else f"the smallest k of the grid ({smallest})"
        raise CorpusInputError(
            f"{source}: the train split has {n_train} item(s), fewer than {what}: bring more items or set a smaller --clusters"
        )


def _derive_labels(kept: list[Item], ids: list[str], splits: dict[str, list[str]], cfg: PrepareConfig, out_dir: Path):
    """Labels derived from the prepared text features (clusters) or the texts (keywords) of `kept` (training/derived_labels.py)."""
    from training.derived_labels import derive_cluster_labels, derive_keyword_labels, mean_word_vectors

    row = {item_id: i for i, item_id in enumerate(ids)}
    train_rows = np.asarray([row[i] for i in splits["train"]], dtype=np.int64)
    if cfg.derive_labels == "keywords":
        derived = derive_keyword_labels([it.text for it in kept], train_rows, cfg.keywords, seed=cfg.seed)
        log.info(
            "derived %d keyword labels (%d of %d items have none; J1/J2 count the tagged ones): %s",
            derived.k,
            derived.without_label["all"],
            len(kept),
            "; ".join(derived.names[:20]) + (" ..." if derived.k > 20 else ""),
        )
        return derived
    text = np.load(out_dir / TEXT_FILE)
    if cfg.text.kind == "sentence_cnn":
        features, kind = mean_word_vectors(text, np.load(out_dir / EMBEDDINGS_FILE), (PAD_ID, OOV_ID)), "mean word vectors"
    else:
        features, kind = text, f"{cfg.text.kind} sentence vectors"
    derived = derive_cluster_labels(
        features,
        [it.text for it in kept],
        train_rows,
        np.asarray([row[i] for i in splits["val"]], dtype=np.int64),
        k=cfg.clusters,
        seed=cfg.seed,
        feature_kind=kind,
    )
    log.info(
        "derived %d labels by %s (k %s, seed %d): %s",
        derived.k,
        derived.method,
        derived.chosen,
        derived.seed,
        "; ".join(derived.names),
    )
    return derived


def prepare_corpus(
    corpus_dir: str | Path, out_dir: str | Path, cfg: PrepareConfig = PrepareConfig(), shard: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Turn a corpus folder into a prepared-data folder (see the module docstring); returns a summary."""
    from model.image_backbones import build_image_backbone

    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    corpus = load_corpus(corpus_dir)
    rank, world = _rank_and_world(shard)
    usable, dropped = check_preparable(corpus, cfg, str(corpus_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    backbone = build_image_backbone(cfg.backbone, weights_path=cfg.weights_path)
    cache = FeatureCache(out_dir / CACHE_DIR / backbone_fingerprint(backbone))
    keys = image_keys(usable, cfg.decode_workers)
    extraction = extract_missing_features(usable, keys, cache, backbone, cfg, (rank, world))
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    if rank != 0:
        return {"rank": rank, "extracted": extraction["extracted"], "note": "rank 0 assembles the prepared data"}
    if world > 1 and shard is not None:
        return {
            "rank": rank,
            "extracted": extraction["extracted"],
            "note": "shard done; run prepare without --shard once all shards finished to assemble",
        }

    ids, kept_keys = assemble_features(usable, keys, cache, out_dir / FEATURES_FILE, backbone.output_dim)
    kept = [corpus.items[corpus.position(i)] for i in ids]
    splits = _splits_for(corpus, cfg.seed)
    present = set(ids)
    splits = {s: [i for i in v if i in present] for s, v in splits.items()}
    text_summary = _prepare_text(kept, splits["train"], corpus, cfg, out_dir)
    labels, label_names, multilabel = corpus.label_matrix(kept), list(corpus.label_names), bool(corpus.multilabel)
    derived = _derive_labels(kept, ids, splits, cfg, out_dir) if cfg.derive_labels != "none" else None
    if derived is not None:
        labels, label_names, multilabel = derived.one_hot(), list(derived.names), derived.multilabel
    np.save(out_dir / "labels.npy", labels)
    manifest = {
        "format": PREPARED_FORMAT,
        "corpus_dir": str(corpus_dir.resolve()),
        "corpus_name": corpus.name,
        "label_names": label_names,
        "multilabel": multilabel,
        "ids": ids,
        "image_sha256": kept_keys,
        "splits": splits,
        "image": {
            "kind": "backbone",
            "name": backbone.name,
            "weights_path": cfg.weights_path,
            "weights_sha256": backbone.weights_sha256,
            "dim": int(backbone.output_dim),
            "fingerprint": backbone_fingerprint(backbone),
        },
        "text": text_summary,
        "config": {
            "backbone": cfg.backbone,
            "batch_size": cfg.batch_size,
            "seed": cfg.seed,
            "text": dataclasses.asdict(cfg.text),
            "text_views": cfg.text_views,
            **({"derive_labels": cfg.derive_labels, "clusters": cfg.clusters} if derived is not None else {}),
            **({"keywords": dataclasses.asdict(cfg.keywords)} if cfg.derive_labels == "keywords" else {}),
        },
        "skipped": extraction["skipped"] + dropped,
        "extraction": {k: v for k, v in extraction.items() if k != "skipped"},
    }
    if derived is not None:
        manifest["derived_labels"] = {**derived.to_dict(), "corpus": DERIVED_CORPUS_DIR}
        # the kept items with their derived labels, for the index build: the service then shows the names as label chips
        # and filters by them (python -m index build --corpus PREPARED/corpus-derived)
        save_corpus(
            Corpus(
                items=[dataclasses.replace(it, labels=names) for it, names in zip(kept, derived.item_labels())],
                label_names=list(derived.names),
                splits=splits,
                name=f"{corpus.name}-derived",
                multilabel=derived.multilabel,
                language=corpus.language,
            ),
            out_dir / DERIVED_CORPUS_DIR,
        )
    manifest["content_hash"] = _content_hash(out_dir, manifest)
    _atomic_write_text(out_dir / PREPARED_FILE, json.dumps(manifest, ensure_ascii=False, indent=1))
    sizes = {s: len(v) for s, v in splits.items()}
    log.info("prepared %d items (%d skipped): %s", len(ids), len(manifest["skipped"]), sizes)
    return {
        "out_dir": str(out_dir),
        "items": len(ids),
        "skipped": len(manifest["skipped"]),
        "splits": sizes,
        "content_hash": manifest["content_hash"],
        "text": text_summary,
        **manifest["extraction"],
    }


def _content_hash(out_dir: Path, manifest: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    for name in (FEATURES_FILE, TEXT_FILE, TEXT_VIEWS_FILE, "labels.npy", VOCAB_FILE, EMBEDDINGS_FILE):
        if (out_dir / name).is_file():
            digest.update(name.encode() + sha256_file(out_dir / name).encode())
    stable = {k: manifest[k] for k in ("ids", "splits", "label_names", "image", "text")}
    # The whole preparation config except what cannot change the outputs (the extraction batch size): the text
    # encoder's settings (word dropout, mean vector, maps, ...) reach training through the prepared data without
    # always changing a stored file, and a model's recorded prepared_hash must tell them apart.
    stable["config"] = {k: v for k, v in manifest["config"].items() if k not in _UNHASHED_CONFIG}
    digest.update(json.dumps(stable, sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()


# Config fields that do not change the prepared data or the training input, so they stay out of the content hash.
_UNHASHED_CONFIG = frozenset({"batch_size"})


def _warn_muse_unknown(unknown: float, bound: float) -> None:
    log.warning(
        "the multilingual USE vocabulary lacks %.0f%% of the pieces of these texts (<unk>, above %.0f%%): they may be in a "
        "language it does not read. Prepare with --text tfidf (character n-grams, any language and script) or --text "
        "sentence_cnn (word vectors trained on this corpus)",
        100 * unknown,
        100 * bound,
    )


def _prepare_text(items: list[Item], train_ids: list[str], corpus: Corpus, cfg: PrepareConfig, out_dir: Path) -> dict[str, Any]:
    """Token ids + vocabulary + word-vector matrix (sentence CNN), frozen sentence vectors (MiniLM, multilingual USE), or TF-IDF -> SVD
    vectors with the fitted model (tfidf, fitted on the training texts only; tfidf+muse: beside USE vectors)."""
    text_cfg = cfg.text
    for stale in (VOCAB_FILE, EMBEDDINGS_FILE, TEXT_VIEWS_FILE):
        (out_dir / stale).unlink(missing_ok=True)
    if cfg.text_views < 1:
        raise ValueError(f"text_views must be >= 1, got {cfg.text_views}")
    views: list[str] = []
    if cfg.text_views > 1:
        from training.text_views import text_views

        rng = np.random.default_rng(cfg.seed)
        views = [view for it in items for view in text_views(it.text, cfg.text_views, rng)]
    if text_cfg.kind == "sentence_cnn":
        from model.text import build_sentence_cnn

        train_texts = [corpus.items[corpus.position(i)].text for i in train_ids]
        bundle = build_sentence_cnn(text_cfg, train_texts, seed=cfg.seed)
        token_ids = bundle.vocab.encode([it.text for it in items], max_len=text_cfg.max_len).numpy().astype(np.int64)
        np.save(out_dir / TEXT_FILE, token_ids)
        if views:
            view_ids = bundle.vocab.encode(views, max_len=text_cfg.max_len).numpy().astype(np.int64)
            width = max(view_ids.shape[1], token_ids.shape[1])
            view_ids = np.pad(view_ids, ((0, 0), (0, width - view_ids.shape[1])), constant_values=PAD_ID)[:, : token_ids.shape[1]]
            np.save(out_dir / TEXT_VIEWS_FILE, view_ids.reshape(len(items), cfg.text_views, -1))
        np.save(out_dir / EMBEDDINGS_FILE, bundle.encoder.embedding.weight.detach().cpu().numpy())
        _atomic_write_text(out_dir / VOCAB_FILE, json.dumps(bundle.vocab.to_dict(), ensure_ascii=False))
        real_tokens = int((token_ids > PAD_ID).sum())
        oov = float((token_ids == OOV_ID).sum() / real_tokens) if real_tokens else 0.0
        return {
            "kind": "sentence_cnn",
            "vocab_size": len(bundle.vocab),
            "max_len": int(token_ids.shape[1]),
            "coverage": bundle.coverage.to_dict(),
            "oov_token_fraction": round(oov, 4),
        }
    if text_cfg.kind in ("minilm", "muse"):
        from model.text import MiniLMSentenceEncoder, MultilingualUSEEncoder

        encoder = (
            MiniLMSentenceEncoder(device=str(_device(cfg.device))) if text_cfg.kind == "minilm" else MultilingualUSEEncoder()
        )
        vectors = encoder.encode([it.text for it in items], show_progress=cfg.progress)
        np.save(out_dir / TEXT_FILE, np.asarray(vectors, dtype=np.float32))
        if views:
            view_vectors = encoder.encode(views, show_progress=cfg.progress).astype(np.float32)
            np.save(out_dir / TEXT_VIEWS_FILE, view_vectors.reshape(len(items), cfg.text_views, -1))
        unknown = encoder.unknown_token_fraction([it.text for it in items])
        summary: dict[str, Any] = {
            "kind": text_cfg.kind,
            "dim": int(vectors.shape[1]),
            "unknown_token_fraction": round(unknown, 4),
        }
        if unknown > cfg.minilm_unknown_warning:
            if text_cfg.kind == "minilm":
                from model.text import multilingual_use_available

                summary["suggested_text"] = "muse" if multilingual_use_available() else "tfidf"
                log.warning(
                    "MiniLM's English word-piece vocabulary lacks %.0f%% of the word pieces of these texts ([UNK], above %.0f%%): "
                    "the model cannot read them and their vectors say little. Prepare with --text muse (multilingual "
                    "sentence vectors, 16 languages), --text tfidf (character n-grams, any language and script) or "
                    "--text sentence_cnn (word vectors trained on this corpus)",
                    100 * unknown,
                    100 * cfg.minilm_unknown_warning,
                )
            else:
                summary["suggested_text"] = "tfidf"
                _warn_muse_unknown(unknown, cfg.minilm_unknown_warning)
        return summary
    if text_cfg.kind in ("tfidf", "tfidf+muse"):
        from model.tfidf import TfidfTextModel

        train_texts = [corpus.items[corpus.position(i)].text for i in train_ids]
        tfidf = TfidfTextModel.fit(train_texts, text_cfg.tfidf, seed=cfg.seed)
        featurizer: Any = tfidf
        if text_cfg.kind == "tfidf+muse":
            from model.text import TfidfMuseFeatures

            featurizer = TfidfMuseFeatures(tfidf)
        texts = [it.text for it in items]
        vectors = featurizer.transform(texts)
        np.save(out_dir / TEXT_FILE, vectors)
        if views:
            np.save(out_dir / TEXT_VIEWS_FILE, featurizer.transform(views).reshape(len(items), cfg.text_views, -1))
        _atomic_write_text(out_dir / VOCAB_FILE, json.dumps(tfidf.to_dict(), ensure_ascii=False))
        empty = [it.id for it, known in zip(items, tfidf.known_features(texts)) if not known]
        if empty:
            log.warning("%d texts have no n-gram the tf-idf model kept (zero vectors), e.g. %s", len(empty), empty[:5])
        summary = {
            "kind": text_cfg.kind,
            "dim": int(vectors.shape[1]),
            "ngrams": len(tfidf.features),
            "analyzer": tfidf.cfg.analyzer,
            "texts_without_known_ngrams": len(empty),
        }
        if text_cfg.kind == "tfidf+muse":
            unknown = featurizer.muse.unknown_token_fraction(texts)
            summary["tfidf_dim"] = tfidf.dim
            summary["unknown_token_fraction"] = round(unknown, 4)
            if unknown > cfg.minilm_unknown_warning:
                summary["suggested_text"] = "tfidf"
                _warn_muse_unknown(unknown, cfg.minilm_unknown_warning)
        return summary
    raise ValueError(
        f"prepare needs a text encoder that reads raw text ('sentence_cnn', 'minilm', 'muse', 'tfidf' or 'tfidf+muse'), "
        f"got {text_cfg.kind!r}"
    )


@dataclass
class PreparedData:
    """A prepared-data folder, loaded: what `train_and_save` needs to train and to save a servable model."""

    directory: Path
    manifest: dict[str, Any]

    @property
    def content_hash(self) -> str:
        """Hash of the prepared inputs; stamped into the model's metrics."""
        return self.manifest["content_hash"]

    @property
    def text_config(self) -> TextEncoderConfig:
        """The text encoder configuration the data was prepared for."""
        return from_dict(TextEncoderConfig, self.manifest["config"]["text"])

    def feature_splits(self) -> FeatureSplits:
        """Train / val / test arrays in the saved split, ready for `train_dscmr`."""
        features = np.load(self.directory / FEATURES_FILE, mmap_mode="r")
        text = np.load(self.directory / TEXT_FILE)
        views = np.load(self.directory / TEXT_VIEWS_FILE) if (self.directory / TEXT_VIEWS_FILE).is_file() else None
        labels = np.load(self.directory / "labels.npy")
        row = {item_id: i for i, item_id in enumerate(self.manifest["ids"])}
        parts = {}
        for split in SPLITS:
            ids = self.manifest["splits"][split]
            rows = np.asarray([row[i] for i in ids], dtype=np.int64)
            parts[split] = SplitArrays(
                np.ascontiguousarray(features[rows], dtype=np.float32),
                text[rows],
                labels[rows],
                ids,
                text_views=views[rows] if views is not None else None,
            )
        return FeatureSplits(
            **parts,
            label_names=list(self.manifest["label_names"]),
            name=self.manifest["corpus_name"],
            text_is_tokens=self.manifest["text"]["kind"] == "sentence_cnn",
        )

    def build_text_encoder(self, seed: int | None = None) -> torch.nn.Module | None:
        """A fresh sentence CNN initialised with the prepared word vectors (None for sentence-vector text)."""
        if self.manifest["text"]["kind"] != "sentence_cnn":
            return None
        from model.sentence_cnn import sentence_cnn_from_config

        matrix = np.load(self.directory / EMBEDDINGS_FILE)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.manifest["config"]["seed"] if seed is None else seed)
            return sentence_cnn_from_config(self.text_config, matrix.shape[0], pretrained=matrix)

    def feature_spec(self) -> dict[str, Any]:
        """The input spec a model trained on this data saves: the backbone it reads and its text encoder."""
        image = {k: self.manifest["image"][k] for k in ("kind", "name", "weights_path", "weights_sha256", "dim")}
        text_kind = self.manifest["text"]["kind"]
        if text_kind == "sentence_cnn":
            text = {"kind": "sentence_cnn", "config": json.loads(json.dumps(self.manifest["config"]["text"]))}
        elif text_kind in ("tfidf", "tfidf+muse"):
            text = {
                "kind": text_kind,
                "dim": self.manifest["text"]["dim"],
                "config": json.loads(json.dumps(self.manifest["config"]["text"]["tfidf"])),
            }
        else:
            text = {"kind": text_kind, "dim": self.manifest["text"]["dim"]}
        return {"image": image, "text": text}

    def vocab_dict(self) -> dict[str, Any] | None:
        """The vocabulary a sentence-CNN model saves with itself, or the fitted tf-idf model (None for sentence vectors)."""
        path = self.directory / VOCAB_FILE
        return (
            json.loads(path.read_text(encoding="utf-8"))
            if self.manifest["text"]["kind"] in ("sentence_cnn", "tfidf", "tfidf+muse")
            else None
        )


def prepared_feature_cache(prepared_dir: str | Path) -> str | None:
    """The feature cache inside a prepared-data folder, for the indexing job to reuse (None when it has none)."""
    cache = Path(prepared_dir) / CACHE_DIR
    return str(cache) if cache.is_dir() else None


def load_prepared(directory: str | Path) -> PreparedData:
    """Load a prepared-data folder, refusing an incomplete or unknown-format one with a message that says what to run."""
    directory = Path(directory)
    path = directory / PREPARED_FILE
    if not path.is_file():
        raise PreparedDataError(
            f"{directory} is not prepared data (no {PREPARED_FILE}); run `python -m training prepare --corpus DIR --out {directory}`"
        )
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != PREPARED_FORMAT:
        raise PreparedDataError(
            f"{path} has format {manifest.get('format')!r}; this version reads {PREPARED_FORMAT}: prepare the corpus again"
        )
    needed = [FEATURES_FILE, TEXT_FILE, "labels.npy"] + {
        "sentence_cnn": [VOCAB_FILE, EMBEDDINGS_FILE],
        "tfidf": [VOCAB_FILE],
        "tfidf+muse": [VOCAB_FILE],
    }.get(manifest["text"]["kind"], [])
    missing = [n for n in needed if not (directory / n).is_file()]
    if missing:
        raise PreparedDataError(f"{directory} lacks {missing}; the preparation did not finish: run prepare again (it resumes)")
    return PreparedData(directory, manifest)
