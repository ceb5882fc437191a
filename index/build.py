"""The indexing job: embed a prepared corpus with a trained model (optionally in shards) and publish an index version.

    build_index(model_dir, corpus_dir, root)          embed everything, build, publish, switch CURRENT
    embed_shard(model_dir, corpus_dir, root, (i, n))  embed shard i of n only (one per machine or process)
    merge_shards(model_dir, corpus_dir, root)         build one version from the n complete shards
    publish_version(root, source, ...)                the vector-level part: FAISS + metadata + manifest + publish

Embedding streams through the encoder in batches (bounded memory); every batch is stored as it finishes, so a rerun
after a crash resumes where the last one stopped. Items whose image cannot be read are reported and skipped.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from tqdm import tqdm

from index import faiss_index as fi
from index.errors import ShardError
from index.metadata import EntryRecord, MetadataStore, item_rows
from index.records import RECORDS_FILE, RECORDS_INDEX_FILE, RecordsWriter
from index.shards import (
    Chunk,
    EmbeddingSource,
    ShardSet,
    chunk_path,
    corpus_signature,
    read_chunk,
    shard_dir_name,
    shard_range,
    write_chunk,
    write_shard_manifest,
)
from index.store import METADATA_FILE, MODALITIES, StagedVersion, cleanup_staging, index_file_name, library_versions, utc_now_iso
from model.corpus import Corpus, Item, load_corpus
from model.feature_cache import CachedFeatures, image_file_key

log = logging.getLogger(__name__)

SHARDS_DIR = "shards"
Checkpoint = Callable[[str], None]


class Encoder(Protocol):
    """What the indexing job needs of model.encoder.CrossModalEncoder.

    To take features from a feature cache an encoder also needs `image_feature_fingerprint` (None: it cannot) and
    `encode_image_features(features)`; encoders without them always run their backbone."""

    content_hash: str
    dim: int
    label_names: list[str]
    can_encode_images: bool
    can_encode_texts: bool

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """(n, dim) float32, L2-normalised."""

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, L2-normalised."""


@dataclass(frozen=True)
class IndexConfig:
    """Which FAISS index to build and how it searches (see faiss_index.choose_index_spec)."""

    index_type: str = "flat"  # flat | hnsw | ivfpq | auto
    factory: str | None = None  # a FAISS factory string overrides index_type, e.g. "HNSW64" or "IVF4096,PQ64"
    memory_budget_bytes: int | None = None  # for index_type=auto; default half the physical memory
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    nlist: int | None = None
    pq_m: int | None = None
    nprobe: int | None = None
    exact_max_vectors: int = fi.DEFAULT_EXACT_MAX_VECTORS
    add_batch_size: int = 65536
    seed: int = 0
    use_gpu: bool | None = None  # None: use a GPU when FAISS has GPU support and sees one

    def spec_for(self, n: int, dim: int) -> fi.IndexSpec:
        """The index spec for `n` vectors of `dim` dimensions."""
        return fi.choose_index_spec(
            n,
            dim,
            kind=self.index_type,
            factory=self.factory,
            memory_budget_bytes=self.memory_budget_bytes,
            hnsw_m=self.hnsw_m,
            ef_construction=self.ef_construction,
            ef_search=self.ef_search,
            nlist=self.nlist,
            pq_m=self.pq_m,
            nprobe=self.nprobe,
            exact_max_vectors=self.exact_max_vectors,
        )


@dataclass(frozen=True)
class BuildConfig:
    """How the corpus is embedded, plus the index configuration."""

    index: IndexConfig = field(default_factory=IndexConfig)
    batch_size: int = 64
    modalities: tuple[str, ...] = MODALITIES
    splits: tuple[str, ...] | None = None  # index only these corpus splits; None: every item
    decode_workers: int = 2
    device: str | None = None
    show_progress: bool = True
    keep_shards: bool = False  # keep the per-batch embeddings after a successful publish
    # A feature cache written by `training prepare` (PREPARED/feature_cache): images whose bytes and backbone it holds
    # reuse their cached backbone features instead of running the backbone again.
    feature_cache: str | None = None
    # Caption vectors of the texts for the caption match of text queries (index/captions.py): the weight a text search
    # gives them by default; 0 publishes none.
    caption_weight: float = 0.0
    # Test/debug hook: sleep this long at every step (batch, file write, rename) so a build can be killed mid-way.
    pause_per_step_s: float = 0.0

    def checkpoint(self) -> Checkpoint:
        """The per-step hook for this configuration."""
        pause = self.pause_per_step_s
        if pause <= 0:
            return lambda stage: None

        def pause_at(stage: str) -> None:
            # Announced on stderr so that a crash test can kill the process at a chosen step.
            print(f"checkpoint {stage}", file=sys.stderr, flush=True)
            time.sleep(pause)

        return pause_at


# ------------------------------------------------------------------------------------------------- vector level
def publish_version(
    root: str | Path,
    source: EmbeddingSource,
    model_hash: str,
    config: IndexConfig = IndexConfig(),
    fields: dict[str, Any] | None = None,
    checkpoint: Checkpoint | None = None,
    show_progress: bool = False,
    make_current: bool = True,
    timings: dict[str, float] | None = None,
    caption_weight: float = 0.0,
    caption_encoder: Any = None,
) -> Path:
    """Build one FAISS index per modality of `source` plus the metadata, publish them as a new version; return its path.

    `timings`, when given, receives the seconds of each step (see PUBLISH_STEPS). With `caption_weight` > 0 the version
    also gets caption vectors of its texts (index/captions.py; `caption_encoder`, MiniLM by default) before it is published.
    """
    root = Path(root)
    checkpoint = checkpoint or (lambda stage: None)
    if not source.modalities():
        raise ValueError(
            "nothing to index: no item has an image or a text that could be embedded (see the skipped items in the log)"
        )
    cleanup_staging(root)
    started = time.perf_counter()
    steps = dict.fromkeys(PUBLISH_STEPS, 0.0)
    modalities_info: dict[str, Any] = {}
    with StagedVersion(root) as stage, RecordsWriter(stage.path) as records:
        metadata = MetadataStore.create(stage.path / METADATA_FILE)
        next_key = 0
        for modality in source.modalities():
            n = source.count(modality)
            spec = config.spec_for(n, source.dim)
            index, info_timings = build_faiss_index(
                source, modality, spec, config, metadata, next_key, checkpoint, show_progress, records
            )
            if index.ntotal != n:
                raise ValueError(
                    f"the {modality} source announced {n} vectors but delivered {index.ntotal}; the embeddings are inconsistent"
                )
            next_key += n
            for step in ("source_s", "train_s", "normalise_s", "add_s", "metadata_insert_s", "records_s"):
                steps[step] += info_timings[step]
            path = stage.path / index_file_name(modality)
            t0 = time.perf_counter()
            fi.write_index(index, path)
            info_timings["write_s"] = round(time.perf_counter() - t0, 3)
            steps["index_write_s"] += info_timings["write_s"]
            stage.seal(path.name)  # hashed and fsynced in the background while the next steps run
            checkpoint(f"index:{modality}:written")
            modalities_info[modality] = {
                "count": int(index.ntotal),
                "file": path.name,
                "spec": spec.to_dict(),
                "tombstones": 0,
                "timings": {k: round(v, 3) for k, v in info_timings.items()},
            }
            del index
        caption_fields: dict[str, Any] = {}
        if caption_weight > 0:
            from index.captions import CAPTION_KEYS_FILE, CAPTIONS_FILE, build_captions

            if caption_encoder is None:
                from model.caption import MiniLMCaptionEncoder

                caption_encoder = MiniLMCaptionEncoder()
            staged = {"modalities": modalities_info}
            build_captions(stage.path, staged, metadata, caption_encoder, caption_weight, show_progress)
            caption_fields["captions"] = staged["captions"]
            for name in (CAPTIONS_FILE, CAPTION_KEYS_FILE):
                stage.seal(name)
        t0 = time.perf_counter()
        records.finish(metadata.next_key())
        metadata.close()
        for name in (METADATA_FILE, RECORDS_FILE, RECORDS_INDEX_FILE):
            stage.seal(name)
        steps["records_s"] += time.perf_counter() - t0
        manifest_fields = {
            "created_at": utc_now_iso(),
            "parent_version": None,
            "model": {"content_hash": model_hash, "dim": int(source.dim)},
            "metric": "inner_product",
            "normalised": True,
            "modalities": modalities_info,
            "counts": {m: info["count"] for m, info in modalities_info.items()},
            "libraries": library_versions(),
            "build_seconds": round(time.perf_counter() - started, 3),
            **caption_fields,
            **(fields or {}),
        }
        version = stage.publish(manifest_fields, make_current=make_current, checkpoint=checkpoint)
        steps.update(stage.timings)
    steps["total_s"] = time.perf_counter() - started
    if timings is not None:
        timings.update(steps)
    return version


# The steps of publish_version, in order, as reported in its `timings` (plus total_s). source_s is the time spent waiting
# for the source's batches (embedding files read, or vectors generated); train_s, normalise_s and add_s build the FAISS
# index; the rest writes and publishes the version, metadata_insert_s and most of records_s during the fill. The
# background hash_s and fsync_s overlap the steps after each file is written; seal_wait_s is what publishing still
# waited for them.
PUBLISH_STEPS = (
    "source_s",
    "train_s",
    "normalise_s",
    "add_s",
    "metadata_insert_s",
    "index_write_s",
    "records_s",
    "seal_wait_s",
    "hash_s",
    "fsync_s",
    "manifest_s",
    "rename_s",
    "pointer_s",
)


def build_faiss_index(
    source: EmbeddingSource,
    modality: str,
    spec: fi.IndexSpec,
    config: IndexConfig,
    metadata: MetadataStore | None,
    first_key: int,
    checkpoint: Checkpoint | None = None,
    show_progress: bool = False,
    records: RecordsWriter | None = None,
):
    """Train (when needed) and fill the index of one modality, streaming `source`; return (index, timings).

    Keys are first_key, first_key + 1, ... in source order; when `metadata` is given, each batch's rows go in with them
    (and to `records`, when given).
    """
    checkpoint = checkpoint or (lambda stage: None)
    index = fi.create_index(spec, source.dim)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    wanted = fi.training_sample_size(index)
    if wanted:
        sample = fi.normalise_rows(source.sample(modality, wanted, config.seed), f"{modality} training vectors")
        fi.train_index(index, sample, use_gpu=config.use_gpu)
        del sample
        checkpoint(f"index:{modality}:trained")
    timings["train_s"] = round(time.perf_counter() - t0, 3)
    key = first_key
    bar = tqdm(total=source.count(modality), desc=f"index {modality}", unit="vec", disable=not show_progress)
    add_s = insert_s = source_s = normalise_s = records_s = 0.0
    t0 = waited = time.perf_counter()
    for vectors, items in source.batches(modality):
        ta = time.perf_counter()
        source_s += ta - waited
        vectors = fi.normalise_rows(vectors, f"{modality} embeddings")
        keys = np.arange(key, key + len(vectors), dtype=np.int64)
        tb = time.perf_counter()
        normalise_s += tb - ta
        fi.add_with_keys(index, vectors, keys)
        add_s += time.perf_counter() - tb
        if metadata is not None:
            ta = time.perf_counter()
            rows, label_rows = item_rows(items, keys, modality)
            metadata.insert_rows(rows, label_rows)
            tb = time.perf_counter()
            insert_s += tb - ta
            if records is not None:
                records.add(rows)
                records_s += time.perf_counter() - tb
        key += len(vectors)
        bar.update(len(vectors))
        checkpoint(f"index:{modality}:batch")
        waited = time.perf_counter()
    bar.close()
    timings["add_s"] = round(add_s, 3)
    timings["metadata_insert_s"] = round(insert_s, 3)
    timings["records_s"] = round(records_s, 3)
    timings["source_s"] = round(source_s, 3)
    timings["normalise_s"] = round(normalise_s, 3)
    timings["fill_s"] = round(time.perf_counter() - t0, 3)
    return index, timings


def entry_records(items: Sequence[Item], keys: np.ndarray, modality: str) -> list[EntryRecord]:
    """Metadata rows for `items` embedded in `modality` under `keys`."""
    return [
        EntryRecord(int(k), it.id, modality, it.image_path, it.text, tuple(it.labels), dict(it.extra))
        for it, k in zip(items, keys)
    ]


# ------------------------------------------------------------------------------------------------ embedding pass
def load_model_encoder(model_dir: str | Path, device: str | None = None) -> Encoder:
    """The model's encoder (model.encoder.load_encoder)."""
    from model.encoder import load_encoder

    return load_encoder(model_dir, device=device)


def items_to_index(corpus: Corpus, splits: tuple[str, ...] | None) -> list[Item]:
    """The corpus items a build indexes: all of them, or those of the given splits (corpus order)."""
    if splits is None:
        return list(corpus.items)
    missing = [s for s in splits if s not in corpus.splits]
    if missing:
        raise ValueError(f"corpus {corpus.name!r} has no split {missing}; it has {sorted(corpus.splits)}")
    wanted = {i for s in splits for i in corpus.splits[s]}
    return [it for it in corpus.items if it.id in wanted]


def eligible(items: Sequence[Item], modality: str) -> list[Item]:
    """Items that have something to embed in `modality` (an image path / a non-empty text)."""
    if modality == "image":
        return [it for it in items if it.image_path]
    return [it for it in items if it.text and it.text.strip()]


def embed_batch(
    encoder: Encoder, items: Sequence[Item], modality: str, batch: int, decode_workers: int, cached: CachedFeatures | None = None
) -> Chunk:
    """Embed one batch; items whose image cannot be decoded are skipped and reported in the chunk.

    With `cached`, images whose file is in that feature cache take their cached backbone features (the backbone
    is not run for them); the rest are decoded and encoded as usual."""
    if modality == "text":
        vectors = encoder.encode_texts([it.text for it in items])
        return Chunk(modality, batch, np.asarray(vectors, dtype=np.float32), [it.id for it in items], [it.id for it in items], [])
    from model.image_io import ImageDecodeError, load_image

    keys = [image_file_key(it.image_path) for it in items] if cached is not None else [None] * len(items)
    found = cached.read([key for key in keys if key is not None]) if cached is not None else {}
    hits = [i for i, key in enumerate(keys) if key in found]
    hit_set = set(hits)
    draft_size = getattr(encoder, "image_decode_size", None)  # decode as prepare did, so cached and fresh features agree
    to_decode = [i for i in range(len(items)) if i not in hit_set]

    def decode(i: int):
        try:
            return load_image(items[i].image_path, draft_size=draft_size), None
        except (ImageDecodeError, OSError) as exc:  # unreadable, truncated, missing: report and skip the item
            return None, f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=max(1, decode_workers)) as pool:
        decoded = dict(zip(to_decode, pool.map(decode, to_decode)))
    good = [i for i in to_decode if decoded[i][0] is not None]
    skipped = [
        {"id": items[i].id, "modality": "image", "path": str(items[i].image_path), "reason": decoded[i][1]}
        for i in to_decode
        if decoded[i][0] is None
    ]
    for s in skipped:
        log.warning("skipping item %s: cannot decode image %s (%s)", s["id"], s["path"], s["reason"])
    vector_of: dict[int, np.ndarray] = {}
    if hits:
        vector_of.update(zip(hits, encoder.encode_image_features(np.stack([found[keys[i]] for i in hits]))))
    if good:
        vector_of.update(zip(good, encoder.encode_images([decoded[i][0] for i in good])))
    order = sorted(vector_of)
    vectors = np.stack([vector_of[i] for i in order]).astype(np.float32) if order else np.zeros((0, encoder.dim), np.float32)
    return Chunk(
        modality, batch, vectors, [items[i].id for i in order], [it.id for it in items], skipped, features_reused=len(hits)
    )


def image_feature_source(encoder: Encoder, cache_root: str | Path | None) -> CachedFeatures | None:
    """The cached backbone features the encoder can use from `cache_root` (None without a root or a usable match)."""
    if cache_root is None:
        return None
    if not Path(cache_root).is_dir():
        raise FileNotFoundError(
            f"feature cache {cache_root} does not exist; pass the feature_cache folder inside a prepared-data "
            "folder (written by `python -m training prepare`), or leave the option out"
        )
    fingerprint = getattr(encoder, "image_feature_fingerprint", None)
    if fingerprint is None:
        log.warning(
            "the model's image features cannot come from a feature cache (no backbone, or a fine-tuned one); "
            "every image goes through the model's backbone"
        )
        return None
    cached = CachedFeatures(cache_root, fingerprint)
    if not len(cached):
        log.warning(
            "the feature cache %s holds no features of this model's backbone (fingerprint %s); every image goes "
            "through the backbone",
            cache_root,
            fingerprint,
        )
        return None
    return cached


def embed_items_to_shard(
    encoder: Encoder,
    items: Sequence[Item],
    shard_dir: Path,
    config: BuildConfig,
    shard: tuple[int, int],
    fields: dict[str, Any],
    checkpoint: Checkpoint,
) -> dict[str, Any]:
    """Embed `items` batch by batch into `shard_dir` (resuming stored batches) and mark the shard complete."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    counts, skipped, reused = {}, [], 0
    cached = image_feature_source(encoder, config.feature_cache) if "image" in config.modalities else None
    for modality in config.modalities:
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; expected a subset of {MODALITIES}")
        can = encoder.can_encode_images if modality == "image" else encoder.can_encode_texts
        todo = eligible(items, modality)
        if not todo:
            continue
        if not can:
            log.warning("the model cannot encode %ss (no backbone for raw inputs); the %s index is left out", modality, modality)
            continue
        n_batches = -(-len(todo) // config.batch_size)
        done = 0
        bar = tqdm(
            total=n_batches, desc=f"embed {modality} shard {shard[0]}/{shard[1]}", unit="batch", disable=not config.show_progress
        )
        for b in range(n_batches):
            batch_items = todo[b * config.batch_size : (b + 1) * config.batch_size]
            path = chunk_path(shard_dir, modality, b)
            chunk = _stored_chunk(path, modality, b, [it.id for it in batch_items])
            if chunk is None:
                chunk = embed_batch(encoder, batch_items, modality, b, config.decode_workers, cached)
                reused += chunk.features_reused
                if len(chunk.item_ids) and (chunk.vectors.ndim != 2 or chunk.vectors.shape != (len(chunk.item_ids), encoder.dim)):
                    raise ValueError(
                        f"the encoder returned {chunk.vectors.shape} for {len(chunk.item_ids)} {modality}s; expected (n, {encoder.dim})"
                    )
                if len(chunk.item_ids):
                    chunk = dataclasses.replace(chunk, vectors=fi.normalise_rows(chunk.vectors, f"{modality} embeddings"))
                write_chunk(shard_dir, chunk)
            else:
                done += 1
            counts[modality] = counts.get(modality, 0) + len(chunk.item_ids)
            skipped.extend(chunk.skipped)
            bar.update(1)
            checkpoint(f"embed:{modality}:{b}")
        bar.close()
        if done:
            log.info("resumed %s: %d of %d batches were already embedded", modality, done, n_batches)
    if cached is not None:
        log.info("%d images took their backbone features from the feature cache %s", reused, cached.directory)
    return write_shard_manifest(
        shard_dir,
        {
            **fields,
            "shard_index": shard[0],
            "shard_count": shard[1],
            "dim": int(encoder.dim),
            "counts": counts,
            "skipped": skipped,
            "batch_size": config.batch_size,
            "image_features_reused": reused,
            "modalities": list(config.modalities),
            "finished_at": utc_now_iso(),
        },
    )


def _stored_chunk(path: Path, modality: str, batch: int, expected_ids: list[str]) -> Chunk | None:
    """A previously stored chunk for exactly these items, or None when it must be (re)computed."""
    if not path.is_file():
        return None
    try:
        chunk = read_chunk(path, modality, batch)
    except Exception as exc:  # a damaged leftover is recomputed rather than trusted
        log.warning("recomputing %s: %s", path, exc)
        return None
    return chunk if chunk.tried_ids == expected_ids else None


def shards_root(out_root: str | Path, model_hash: str, corpus_sig: str) -> Path:
    """Where the shards of one (model, corpus) build live: out_root/shards/<model hash>-<corpus signature>."""
    return Path(out_root) / SHARDS_DIR / f"{model_hash[:16]}-{corpus_sig[:16]}"


def embed_shard(
    model_dir: str | Path,
    corpus_dir: str | Path,
    out_root: str | Path,
    shard: tuple[int, int],
    config: BuildConfig = BuildConfig(),
    encoder: Encoder | None = None,
    shard_dir: str | Path | None = None,
) -> Path:
    """Embed shard (i, n) of the corpus (a contiguous block of items) into a shard directory; return that directory."""
    encoder = encoder or load_model_encoder(model_dir, config.device)
    if not (encoder.can_encode_images or encoder.can_encode_texts):
        raise ValueError(
            f"the model in {model_dir} was trained on precomputed features and carries no image backbone or text "
            "encoder, so it cannot embed a corpus of raw images and texts; train it from a prepared corpus instead"
        )
    corpus = load_corpus(corpus_dir)
    sig = corpus_signature(corpus_dir)
    items = items_to_index(corpus, config.splits)
    start, stop = shard_range(len(items), shard)
    target = Path(shard_dir) if shard_dir else shards_root(out_root, encoder.content_hash, sig) / shard_dir_name(shard)
    fields = {
        "model_hash": encoder.content_hash,
        "corpus_signature": sig,
        "corpus_dir": str(Path(corpus_dir).resolve()),
        "item_range": [start, stop],
        "splits": list(config.splits) if config.splits else None,
    }
    embed_items_to_shard(encoder, items[start:stop], target, config, shard, fields, config.checkpoint())
    return target


def merge_shards(
    model_dir: str | Path,
    corpus_dir: str | Path,
    out_root: str | Path,
    config: BuildConfig = BuildConfig(),
    shard_dirs: Sequence[str | Path] | None = None,
    model_hash: str | None = None,
    label_names: Sequence[str] | None = None,
) -> Path:
    """Build and publish one index version from the complete shards of a build (found under out_root when not given)."""
    if model_hash is None:
        from model.artefact import read_model_hash

        model_hash = read_model_hash(model_dir)
    corpus = load_corpus(corpus_dir)
    sig = corpus_signature(corpus_dir)
    if shard_dirs is None:
        folder = shards_root(out_root, model_hash, sig)
        shard_dirs = sorted(p for p in folder.glob("shard-*") if p.is_dir()) if folder.is_dir() else []
        if not shard_dirs:
            raise ShardError(f"no shards under {folder}; embed them first with `python -m index build --shard i/n`")
    source = ShardSet(shard_dirs, corpus, model_hash, sig)
    skipped = source.skipped()
    fields = {
        "corpus": {
            "name": corpus.name,
            "path": str(Path(corpus_dir).resolve()),
            "signature": sig,
            "n_items": len(corpus),
            "label_names": list(corpus.label_names),
            "splits": list(config.splits) if config.splits else None,
        },
        "model": {
            "content_hash": model_hash,
            "dim": int(source.dim),
            "path": str(Path(model_dir).resolve()),
            "label_names": list(label_names) if label_names is not None else None,
        },
        "skipped": {"count": len(skipped), "items": skipped[:1000]},
        "shards": len(source.shards),
        "embedding": {
            "batch_size": config.batch_size,
            "modalities": list(config.modalities),
            "image_features_reused": sum(int(m.get("image_features_reused", 0)) for _, m in source.shards),
        },
    }
    version = publish_version(
        out_root,
        source,
        model_hash,
        config.index,
        fields,
        config.checkpoint(),
        config.show_progress,
        caption_weight=config.caption_weight,
    )
    if not config.keep_shards:
        for d in shard_dirs:
            shutil.rmtree(d, ignore_errors=True)
    return version


def build_index(
    model_dir: str | Path,
    corpus_dir: str | Path,
    out_root: str | Path,
    config: BuildConfig = BuildConfig(),
    encoder: Encoder | None = None,
) -> Path:
    """Embed the whole corpus with the model and publish it as a new index version (CURRENT switches to it)."""
    encoder = encoder or load_model_encoder(model_dir, config.device)
    shard_dir = embed_shard(model_dir, corpus_dir, out_root, (0, 1), config, encoder=encoder)
    return merge_shards(
        model_dir,
        corpus_dir,
        out_root,
        config,
        shard_dirs=[shard_dir],
        model_hash=encoder.content_hash,
        label_names=encoder.label_names,
    )
