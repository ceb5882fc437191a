"""The search library the service and the tests use: load an index version, query it by text, image or vector.

    idx = SearchIndex.load("indexes/", encoder=encoder)          # CURRENT version; refuses another model's index
    hits = idx.search_text("a small orange fish", k=10)          # text -> images
    hits = idx.search_image(pil_image, k=10, target="text")      # image -> texts
    rows = idx.search_vectors(q, k=10, target="both", labels=["fish", "bird"])   # batch of vectors, label filter

Scores are cosine similarities (inner products of L2-normalised vectors). A label filter keeps the items that carry at
least one of the given labels and still returns k hits whenever k such items exist: small allowed sets are searched
exactly over their own vectors; larger ones go through FAISS with an id selector, widening efSearch / nprobe and
finally falling back to an exact scan when the approximate search comes back short.
"""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, NamedTuple, Sequence

import faiss
import numpy as np

from index import faiss_index as fi
from index.errors import IndexCorruptError, IndexModelMismatchError, IndexStoreError
from index.metadata import MetadataStore
from index.records import RecordReader
from index.store import METADATA_FILE, MODALITIES, load_manifest, resolve_version
from model.calibration import ScoreCalibration

log = logging.getLogger(__name__)
_swig_ptr = faiss.swig_ptr

Target = Literal["image", "text", "both"]
# Allowed sets up to this size are searched exactly over their reconstructed vectors (cheaper than a filtered scan,
# and never short); larger sets go through FAISS with an id selector.
DEFAULT_EXACT_SUBSET_MAX = 20_000
_EXACT_CHUNK = 16_384
_WIDEN_STEPS = (4, 16)
# Candidates a caption-matched search takes from each of its two rankings before mixing their scores.
DEFAULT_FUSION_POOL = 100


class SearchHit(NamedTuple):
    """One result: the corpus item, which of its sides matched (modality), and the cosine score.

    A NamedTuple rather than a dataclass: results are built per hit on the hot path, and tuples build fastest.
    `extra` is read-only: with the records in memory (the default, see SearchIndex.load) it is the index's own dict,
    shared by every result of the item; copy it (`dict(hit.extra)`) to change it.
    """

    id: str
    score: float
    modality: str
    labels: tuple[str, ...]
    text: str | None
    image_path: str | None
    extra: dict[str, Any]
    key: int  # the vector's FAISS id within this index version


class _ModalityIndex:
    """One modality's FAISS index with its tombstone selector and optional GPU copy."""

    def __init__(self, modality: str, index: faiss.Index, tombstones: np.ndarray, use_gpu: bool | None) -> None:
        self.modality = modality
        self.index = index
        self.tombstones = tombstones
        self.live = int(index.ntotal) - len(tombstones)
        self.exclude = _KeySelector(tombstones, negate=True) if len(tombstones) else None
        want_gpu = fi.gpu_available() if use_gpu is None else use_gpu
        self.gpu = fi.GpuSearcher.try_create(index) if want_gpu else None


class _KeySelector:
    """A FAISS id selector over a set of keys (a bitmap; optionally negated), holding the arrays FAISS points into."""

    def __init__(self, keys: np.ndarray, negate: bool = False) -> None:
        size = int(keys.max()) + 1 if len(keys) else 1
        bits = np.zeros(size, dtype=bool)
        bits[keys] = True
        self.bitmap = np.packbits(bits, bitorder="little")
        self.inner = faiss.IDSelectorBitmap(self.bitmap)
        self.selector = faiss.IDSelectorNot(self.inner) if negate else self.inner


class SearchIndex:
    """A loaded, read-only index version: FAISS indexes per modality, metadata, manifest and (optionally) the encoder."""

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        indexes: dict[str, _ModalityIndex],
        metadata: MetadataStore,
        records: RecordReader,
        exact_subset_max: int = DEFAULT_EXACT_SUBSET_MAX,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self._indexes = indexes
        self.metadata = metadata
        self.records = records
        # Neither builder refers to `self`: a bound method kept on the instance would make a reference cycle, and a
        # dropped index (the old one after a hot reload, with its FAISS index and records table) would then wait for
        # a full garbage collection instead of being freed at once.
        general = functools.partial(_hits_from_records, records)
        self._build_hits = general if records.rows is None else _hit_builder(records.rows, records.extras, general)
        self.exact_subset_max = exact_subset_max
        self.encoder = None
        self._captions: _ModalityIndex | None = None
        # key -> key of the same item's other side (-1: none), for the caption match; built with the caption index
        self._pair_of: dict[str, np.ndarray] = {}
        self._selectors: dict[tuple[str, frozenset[str]], tuple[np.ndarray, _KeySelector | None]] = {}
        self._selectors_lock = threading.Lock()
        self.dim = int(manifest["model"]["dim"])
        # the modalities each valid `target` searches, looked up once per search (_targets says why others are refused)
        self._target_modalities = {
            target: tuple(self._targets(target))
            for target in ("image", "text", "both")
            if (target == "both" and indexes) or target in indexes
        }
        corpus_labels = (manifest.get("corpus") or {}).get("label_names") or []
        self.label_names = sorted(set(corpus_labels) | {lab for m in indexes for lab in metadata.label_counts(m)})

    # ------------------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        root_or_version: str | Path,
        expected_model_hash: str | None = None,
        expected_dim: int | None = None,
        encoder: Any = None,
        verify: bool = True,
        use_gpu: bool | None = None,
        exact_subset_max: int = DEFAULT_EXACT_SUBSET_MAX,
        records_in_memory: bool | None = None,
        records_memory_budget: int | None = None,
        mmap_vectors: bool = False,
    ) -> "SearchIndex":
        """Load the CURRENT version of an index root (or a version directory), checking integrity and the model.

        `verify` checks every file's sha256 against the manifest (size is always checked). An `encoder` (or
        `expected_model_hash` / `expected_dim`) that differs from the model the index was built with is refused.
        `records_in_memory`: build hits from metadata decoded into memory at load (True), from the memory-mapped
        records (False), or (None) in memory while the records' estimated size fits `records_memory_budget` bytes
        (default: an eighth of the machine's memory; see index.records). Both give identical results; in memory,
        building one query's hits costs ~25 us instead of 60-100 us (docs/index-benchmark.md), at ~450 bytes per
        entry (~90 MB for 200,000; 448 MB for 1M) and more load time: 1-2 s for 200,000 entries, 10-28 s for 1M on
        this loaded 2-core machine.
        `mmap_vectors`: map the stored vectors from the index files instead of reading a private copy (fi.read_index):
        worker processes serving the same version then share one copy in the page cache, and each worker's own memory
        holds only the metadata. The results are identical; the index is read-only either way.
        """
        version = resolve_version(root_or_version)
        manifest = load_manifest(version, verify_files=verify)
        _check_model(manifest, version, expected_model_hash, expected_dim)
        metadata = MetadataStore(version / METADATA_FILE)
        indexes = {}
        for modality, info in manifest.get("modalities", {}).items():
            if modality not in MODALITIES:
                raise IndexCorruptError(f"{version}/manifest.json lists unknown modality {modality!r}")
            index = fi.read_index(version / info["file"], mmap=mmap_vectors)
            spec = fi.IndexSpec.from_dict(info["spec"])
            fi.apply_search_defaults(index, spec)
            if index.d != manifest["model"]["dim"]:
                raise IndexCorruptError(
                    f"{version / info['file']} holds {index.d}-d vectors but the manifest says {manifest['model']['dim']}"
                )
            tombstones = metadata.tombstones(modality)
            live = metadata.count(modality)
            if index.ntotal != live + len(tombstones) or live != info["count"] - info.get("tombstones", 0):
                raise IndexCorruptError(
                    f"{version}: the {modality} index holds {index.ntotal} vectors but the metadata has {live} entries and "
                    f"{len(tombstones)} tombstones (manifest: {info['count']}); index and metadata are out of step: rebuild the version"
                )
            indexes[modality] = _ModalityIndex(modality, index, tombstones, use_gpu)
        records = RecordReader(version, in_memory=records_in_memory, memory_budget=records_memory_budget)
        if records.live_count() != metadata.count():
            raise IndexCorruptError(
                f"{version}: {records.live_count()} result records but {metadata.count()} metadata entries; "
                "the version is inconsistent: rebuild it"
            )
        search_index = cls(version, manifest, indexes, metadata, records, exact_subset_max)
        captions = manifest.get("captions")
        if captions is not None and "text" in indexes:
            search_index._attach_captions(
                fi.read_index(version / captions["file"], mmap=mmap_vectors), indexes["text"].tombstones, use_gpu
            )
        if encoder is not None:
            search_index.attach_encoder(encoder)
        return search_index

    def attach_encoder(self, encoder: Any) -> None:
        """Use `encoder` for text/image queries; refused when it is not the model that built this index."""
        _check_model(self.manifest, self.path, encoder.content_hash, encoder.dim)
        self.encoder = encoder

    def close(self) -> None:
        """Release the records (map and in-memory table) and this thread's metadata connection."""
        self.records.close()
        self._build_hits = functools.partial(_hits_from_records, self.records)  # drops the table the closure held
        self.metadata.close()

    def _attach_captions(self, index: faiss.Index, text_tombstones: np.ndarray, use_gpu: bool | None) -> None:
        info = self.manifest["captions"]
        if index.d != int(info["dim"]):
            raise IndexCorruptError(f"{self.path / info['file']} holds {index.d}-d vectors but the manifest says {info['dim']}")
        self._captions = _ModalityIndex("text", index, text_tombstones, use_gpu)
        size = self.metadata.next_key()
        keys_of = {m: self.metadata.keys_by_item(m) for m in MODALITIES if m in self._indexes}
        for modality, other in (("image", "text"), ("text", "image")):
            pair = np.full(size, -1, dtype=np.int64)
            if modality in keys_of and other in keys_of:
                theirs = keys_of[other]
                for item_id, key in keys_of[modality].items():
                    pair[key] = theirs.get(item_id, -1)
            pair.setflags(write=False)
            self._pair_of[modality] = pair

    # ---------------------------------------------------------------------------------------------------- properties
    @property
    def has_captions(self) -> bool:
        """True when this version carries caption vectors (index/captions.py) for the caption match of text queries."""
        return self._captions is not None

    @property
    def caption_weight(self) -> float:
        """The weight of the caption match that this version was published with (0 without caption vectors)."""
        return float(self.manifest["captions"]["weight"]) if self._captions is not None else 0.0

    @property
    def version(self) -> str:
        """The version name (directory name under versions/)."""
        return self.manifest["version"]

    @property
    def model_hash(self) -> str:
        """Content hash of the model that built this index."""
        return self.manifest["model"]["content_hash"]

    @property
    def modalities(self) -> list[str]:
        """Modalities that have an index in this version."""
        return list(self._indexes)

    def count(self, modality: str) -> int:
        """Live (searchable) vectors of `modality`."""
        return self._indexes[modality].live if modality in self._indexes else 0

    def faiss_index(self, modality: str) -> faiss.Index:
        """The underlying FAISS index of `modality` (for benchmarks and diagnostics)."""
        return self._indexes[modality].index

    # ---------------------------------------------------------------------------------------------------- searching
    def search_text(
        self, text: str, k: int = 10, target: Target = "image", labels: Iterable[str] | None = None
    ) -> list[SearchHit]:
        """Top-k hits for one text query (encoded by the index's model)."""
        return self.search_texts([text], k, target, labels)[0]

    def search_texts(
        self, texts: Sequence[str], k: int = 10, target: Target = "image", labels: Iterable[str] | None = None
    ) -> list[list[SearchHit]]:
        """Top-k hits for each of a batch of text queries."""
        encoder = self._require_encoder("texts")
        if isinstance(texts, str):
            raise TypeError("search_texts takes a list of texts; use search_text for one")
        return self.search_vectors(encoder.encode_texts(list(texts)), k, target, labels, query_modality="text")

    def search_image(
        self, image: Any, k: int = 10, target: Target = "text", labels: Iterable[str] | None = None
    ) -> list[SearchHit]:
        """Top-k hits for one image query (a PIL image, encoded by the index's model)."""
        return self.search_images([image], k, target, labels)[0]

    def search_images(
        self, images: Sequence[Any], k: int = 10, target: Target = "text", labels: Iterable[str] | None = None
    ) -> list[list[SearchHit]]:
        """Top-k hits for each of a batch of image queries."""
        encoder = self._require_encoder("images")
        return self.search_vectors(encoder.encode_images(list(images)), k, target, labels, query_modality="image")

    def search_vectors(
        self,
        queries: np.ndarray,
        k: int = 10,
        target: Target = "image",
        labels: Iterable[str] | None = None,
        query_modality: str | None = None,
        calibration: ScoreCalibration | None = None,
    ) -> list[list[SearchHit]]:
        """Top-k hits for each row of `queries` (n, dim) among the `target` vectors, optionally filtered by labels.

        With target 'both', a `query_modality` ('image' or 'text') and a score calibration (`calibration`, else the
        attached encoder's), images and texts are merged by calibrated relevance (model/calibration.py) instead of raw
        cosine, which favours the query's own modality; each modality keeps its own order either way.
        """
        scores, keys = self.search_keys(queries, k, target, labels, query_modality, calibration)
        return self._build_hits(scores, keys)

    def search_keys(
        self,
        queries: np.ndarray,
        k: int = 10,
        target: Target = "image",
        labels: Iterable[str] | None = None,
        query_modality: str | None = None,
        calibration: ScoreCalibration | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like search_vectors but returns the raw (scores, keys) arrays, (n, k) each, -1 keys past the end."""
        # A single query's checks run right after the previous FAISS search flushed the caches, where each numpy call
        # costs several microseconds: plain attribute reads and dict lookups here, numpy only where it must be.
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        q = queries if type(queries) is np.ndarray else np.asarray(queries)
        shape = q.shape
        if len(shape) == 1:
            q = q[None, :]
            shape = q.shape
        if len(shape) != 2 or shape[1] != self.dim:
            raise ValueError(f"queries must have shape (n, {self.dim}) for this index; got {np.shape(queries)}")
        q = _normalise_queries(q)
        wanted = self._target_modalities.get(target) if type(target) is str else None
        if wanted is None:
            wanted = self._targets(target)  # raises: an unknown target, or one this version has no index for
        label_set = None if labels is None else self._label_set(labels)
        if len(wanted) == 1:
            return self._search_modality(self._indexes[wanted[0]], q, k, label_set)
        results = [self._search_modality(self._indexes[m], q, k, label_set) for m in wanted]
        scores = np.concatenate([r[0] for r in results], axis=1)
        keys = np.concatenate([r[1] for r in results], axis=1)
        scores = np.where(keys < 0, -np.inf, scores)
        if calibration is None:
            calibration = getattr(self.encoder, "calibration", None)
        if query_modality is not None and calibration is not None and calibration.covers(query_modality, wanted):
            relevance = np.concatenate([calibration.relevance(query_modality, m, r[0]) for m, r in zip(wanted, results)], axis=1)
            merge_on = np.where(keys < 0, -np.inf, relevance)
        else:
            merge_on = scores
        # the merge key first, raw score and key break its ties
        order = (
            np.lexsort((keys, -scores, -merge_on), axis=1)[:, :k] if scores.shape[1] else np.zeros((len(q), 0), dtype=np.int64)
        )
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(keys, order, axis=1)

    def search_fused(
        self,
        queries: np.ndarray,
        caption_queries: np.ndarray,
        k: int = 10,
        target: Target = "image",
        labels: Iterable[str] | None = None,
        weight: float | None = None,
        pool: int = DEFAULT_FUSION_POOL,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Text queries ranked by cross-modal score mixed with caption match; (scores, keys) like search_keys.

        score = (1 - weight) * cosine(query, item in the common space) + weight * cosine(query, item's own text under the
        caption encoder), where an image's own text is the text entry of the same item id. Candidates are the `pool`
        best of each score (label filter applied to both); both scores are then computed exactly for each candidate.
        An item without a text of its own gets the lowest caption score among its query's candidates, so that it is
        neither lifted nor dropped for lacking one. `weight` defaults to the version's own (manifest captions.weight);
        0 gives exactly the cross-modal ranking. Target 'both' is not mixed (its modalities are merged by calibrated
        relevance instead; see search_keys).
        """
        if self._captions is None:
            raise IndexStoreError(
                f"index version {self.version} has no caption vectors; add them with `python -m index captions`"
            )
        weight = self.caption_weight if weight is None else float(weight)
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"the caption weight must be between 0 and 1, got {weight}")
        if target not in ("image", "text"):
            raise ValueError(f"the caption match ranks one modality: target must be 'image' or 'text', got {target!r}")
        if weight == 0.0:
            return self.search_keys(queries, k, target, labels)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        qc = np.atleast_2d(np.asarray(caption_queries, dtype=np.float32))
        if q.ndim != 2 or q.shape[1] != self.dim or qc.shape != (len(q), self._captions.index.d):
            raise ValueError(
                f"need (n, {self.dim}) query vectors and (n, {self._captions.index.d}) caption vectors; got {q.shape} and {qc.shape}"
            )
        q, qc = _normalise_queries(q), _normalise_queries(qc)
        self._targets(target)
        label_set = None if labels is None else self._label_set(labels)
        mi = self._indexes[target]
        depth = max(k, pool)
        _, cross_keys = self._search_modality(mi, q, min(depth, max(mi.live, 1)), label_set)
        _, caption_keys = self._search_modality(self._captions, qc, min(depth, max(self._captions.live, 1)), label_set)
        to_text = self._pair_of["image"] if target == "image" else None
        from_text = self._pair_of["text"] if target == "image" else None
        out_scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        out_keys = np.full((len(q), k), -1, dtype=np.int64)
        for row in range(len(q)):
            found = caption_keys[row][caption_keys[row] >= 0]
            candidates = np.union1d(cross_keys[row][cross_keys[row] >= 0], found if from_text is None else from_text[found])
            candidates = candidates[candidates >= 0]
            if not len(candidates):
                continue
            cross = fi.reconstruct_keys(mi.index, candidates) @ q[row]
            text_keys = candidates if to_text is None else to_text[candidates]
            has_text = text_keys >= 0
            caption = np.zeros(len(candidates), dtype=np.float32)
            if has_text.any():
                caption[has_text] = fi.reconstruct_keys(self._captions.index, text_keys[has_text]) @ qc[row]
                caption[~has_text] = caption[has_text].min()
            fused = ((1.0 - weight) * cross + weight * caption).astype(np.float32)
            order = np.lexsort((candidates, -fused))[:k]
            out_scores[row, : len(order)] = fused[order]
            out_keys[row, : len(order)] = candidates[order]
        return out_scores, out_keys

    def search_vectors_fused(
        self,
        queries: np.ndarray,
        caption_queries: np.ndarray,
        k: int = 10,
        target: Target = "image",
        labels: Iterable[str] | None = None,
        weight: float | None = None,
    ) -> list[list[SearchHit]]:
        """search_fused's results as hits (the score is the mixed one)."""
        return self._build_hits(*self.search_fused(queries, caption_queries, k, target, labels, weight))

    # ------------------------------------------------------------------------------------------------------ internals
    def _require_encoder(self, what: str) -> Any:
        if self.encoder is None:
            raise IndexStoreError(
                f"no encoder attached: load the index with encoder=... (the model {self.model_hash[:12]}) to search by {what}"
            )
        can = self.encoder.can_encode_texts if what == "texts" else self.encoder.can_encode_images
        if not can:
            raise IndexStoreError(
                f"the attached model cannot encode raw {what} (it was trained on precomputed features); search by vector instead"
            )
        return self.encoder

    def _targets(self, target: str) -> list[str]:
        if target == "both":
            wanted = [m for m in MODALITIES if m in self._indexes]
        elif target in MODALITIES:
            wanted = [target]
        else:
            raise ValueError(f"target must be 'image', 'text' or 'both', got {target!r}")
        missing = [m for m in wanted if m not in self._indexes]
        if missing or not wanted:
            raise IndexStoreError(f"index version {self.version} has no {missing or target} index (it has {self.modalities})")
        return wanted

    def _label_set(self, labels: Iterable[str] | None) -> frozenset[str] | None:
        if labels is None:
            return None
        if isinstance(labels, str):
            labels = [labels]
        label_set = frozenset(labels)
        unknown = sorted(label_set - set(self.label_names))
        if unknown:
            raise ValueError(f"unknown labels {unknown}; this index knows {self.label_names}")
        return label_set

    def _allowed(self, modality: str, labels: frozenset[str]) -> tuple[np.ndarray, _KeySelector | None]:
        cache_key = (modality, labels)
        with self._selectors_lock:
            hit = self._selectors.get(cache_key)
        if hit is not None:
            return hit
        keys = self.metadata.keys_with_labels(modality, labels)
        entry = (keys, _KeySelector(keys) if len(keys) > self.exact_subset_max else None)
        with self._selectors_lock:
            if len(self._selectors) >= 128:
                self._selectors.pop(next(iter(self._selectors)))
            self._selectors[cache_key] = entry
        return entry

    def _search_modality(self, mi: _ModalityIndex, q: np.ndarray, k: int, labels: frozenset[str] | None):
        if labels is None and mi.exclude is None:
            if mi.gpu is not None:
                return mi.gpu.search(q, k)
            # FAISS's own search_c, what its Python `search` wrapper calls after checks that `q` has passed already
            # (float32, C-contiguous, (n, index.d), k >= 1): a few microseconds less cold code per query.
            n = len(q)
            scores, keys = np.empty((n, k), dtype=np.float32), np.empty((n, k), dtype=np.int64)
            mi.index.search_c(n, _swig_ptr(q), k, _swig_ptr(scores), _swig_ptr(keys))
            return scores, keys
        if labels is None:
            allowed, selector, n_allowed = None, mi.exclude, mi.live
        else:
            allowed, key_selector = self._allowed(mi.modality, labels)
            n_allowed = len(allowed)
            if key_selector is None:
                return self._exact_over(mi, q, allowed, k)
            selector = key_selector
        want = min(k, n_allowed)
        scores, keys = mi.index.search(q, k, params=fi.search_parameters(mi.index, selector.selector))
        for widen in _WIDEN_STEPS:
            short = np.where((keys >= 0).sum(axis=1) < want)[0]
            if not len(short):
                return scores, keys
            params = fi.search_parameters(mi.index, selector.selector, widen=widen)
            scores[short], keys[short] = mi.index.search(q[short], k, params=params)
        short = np.where((keys >= 0).sum(axis=1) < want)[0]
        if len(short):
            log.info(
                "%d filtered %s queries came back short after widening; scanning the allowed set exactly", len(short), mi.modality
            )
            pool = allowed if allowed is not None else self.metadata.all_keys(mi.modality)
            scores[short], keys[short] = self._exact_over(mi, q[short], pool, k)
        return scores, keys

    @staticmethod
    def _exact_over(mi: _ModalityIndex, q: np.ndarray, pool: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the (stored, possibly decoded) vectors of the keys in `pool`, in bounded chunks."""
        best_scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        best_keys = np.full((len(q), k), -1, dtype=np.int64)
        for start in range(0, len(pool), _EXACT_CHUNK):
            chunk = pool[start : start + _EXACT_CHUNK]
            scores = q @ fi.reconstruct_keys(mi.index, chunk).T
            all_scores = np.concatenate([best_scores, scores], axis=1)
            all_keys = np.concatenate([best_keys, np.broadcast_to(chunk, scores.shape)], axis=1)
            order = np.lexsort((all_keys, -all_scores), axis=1)[:, :k]
            best_scores = np.take_along_axis(all_scores, order, axis=1)
            best_keys = np.take_along_axis(all_keys, order, axis=1)
        best_keys[~np.isfinite(best_scores)] = -1
        return best_scores, best_keys

    def _hits(self, scores: np.ndarray, keys: np.ndarray) -> list[list[SearchHit]]:
        """Typed results for (n, k) scores and keys; a row ends at its first -1 key (fewer than k results)."""
        return self._build_hits(scores, keys)


def _hits_from_records(records: RecordReader, scores: np.ndarray, keys: np.ndarray) -> list[list[SearchHit]]:
    """SearchIndex._hits for any results: rows cut at their first -1 key; from the memory map without the in-memory table."""
    # the map: one slice per hit and one JSON decode for all hits of the call
    key_rows, score_rows = keys.tolist(), scores.tolist()
    if key_rows and min(map(min, key_rows)) < 0:
        ends = [next((j for j, key in enumerate(row) if key < 0), len(row)) for row in key_rows]
        key_rows = [row[:end] for row, end in zip(key_rows, ends)]
        score_rows = [row[:end] for row, end in zip(score_rows, ends)]
    rows, extras = records.rows, records.extras
    new = tuple.__new__
    if rows is not None:
        try:
            return [
                [
                    new(SearchHit, (r[0], score, r[1], r[2], r[3], r[4], extras[key], key))
                    for score, key in zip(row_scores, row_keys)
                    for r in (rows[key],)
                ]
                for row_scores, row_keys in zip(score_rows, key_rows)
            ]
        except (IndexError, TypeError) as exc:  # a key past the table, or None: a key without a record
            raise records.missing_keys_error([key for row in key_rows for key in row]) from exc
    entries = iter(records.fetch_entries([key for row in key_rows for key in row]))
    # `entries` is zipped last so that a row's zip stops before taking the next row's first entry
    try:
        if records.format == 1:  # versions published before records format 2
            return [
                [
                    new(SearchHit, (e[0], score, e[1], tuple(e[4]), e[3], e[2], e[5], key))
                    for score, key, e in zip(row_scores, row_keys, entries)
                ]
                for row_scores, row_keys in zip(score_rows, key_rows)
            ]
        # format 2: the modality names and label sets are shared objects, decoded once at load
        modalities, label_sets = records.modality_names, records.label_sets
        return [
            [
                new(SearchHit, (e[0], score, modalities[e[1]], label_sets[e[4]], e[3], e[2], e[5], key))
                for score, key, e in zip(row_scores, row_keys, entries)
            ]
            for row_scores, row_keys in zip(score_rows, key_rows)
        ]
    except (IndexError, TypeError) as exc:
        raise records.corrupt_entries(exc) from exc


def _hit_builder(
    rows: list[tuple[Any, ...] | None],
    extras: list[dict[str, Any] | None],
    general: Callable[[np.ndarray, np.ndarray], list[list[SearchHit]]],
) -> Callable[[np.ndarray, np.ndarray], list[list[SearchHit]]]:
    """SearchIndex._hits over an in-memory records table: a closure, so that it finds the table in its own cells."""
    # This runs right after a FAISS search has flushed the CPU caches, where the code that runs is as cold as the data:
    # each line of it and each object or attribute looked up costs a cache miss, and that, not the work, is the
    # library's cost over raw FAISS (~4x the same work with warm caches). So: no attribute or global lookups (a method
    # reading self._rows etc. cost ~10 us more per query), two tolist() calls, then plain lists, and each hit built by
    # tuple.__new__ (what SearchHit(...) does, minus a Python-level call) from the row of its key, one query in one
    # flat comprehension. A hit's extra dict is the table's own (see SearchHit): a copy per hit would cost ~9 us a query.
    new, hit, count = tuple.__new__, SearchHit, len

    def build(scores: np.ndarray, keys: np.ndarray) -> list[list[SearchHit]]:
        key_rows, score_rows = keys.tolist(), scores.tolist()
        try:
            if count(key_rows) == 1:
                return [
                    [
                        new(hit, (r[0], score, r[1], r[2], r[3], r[4], extras[key], key))
                        for score, key in zip(score_rows[0], key_rows[0])
                        for r in (rows[key],)
                    ]
                ]
            return [
                [
                    new(hit, (r[0], score, r[1], r[2], r[3], r[4], extras[key], key))
                    for score, key in zip(row_scores, row_keys)
                    for r in (rows[key],)
                ]
                for row_scores, row_keys in zip(score_rows, key_rows)
            ]
        except (IndexError, TypeError):
            # a -1 key (fewer than k results) met the table's None sentinel: the general path cuts the rows there
            return general(scores, keys)

    return build


def _normalise_queries(queries: np.ndarray) -> np.ndarray:
    """fi.normalise_rows for the search hot path: the same result and errors, with one check instead of two.

    A normalised row has squared norm 1; a zero row stays 0 and a NaN or infinite value makes the row NaN, so one
    squared norm per row finds every bad row (fi.normalise_rows then says which rows and why). Both the normalising and
    the check are FAISS's own vector functions, called directly: right after a FAISS search has flushed the caches,
    numpy's dot product costs ~25 us there (4 % of an HNSW search) and FAISS's squared norm ~8 us.
    """
    x = np.array(queries, dtype=np.float32, copy=True, order="C")
    n, d = x.shape
    pointer = _swig_ptr(x)
    faiss.fvec_renorm_L2(d, n, pointer)  # what faiss.normalize_L2 does, minus a Python-level call
    if n == 1:
        ok = faiss.fvec_norm_L2sqr(pointer, d) > 0.5
    else:
        norms = np.empty(n, dtype=np.float32)
        faiss.fvec_norms_L2sqr(_swig_ptr(norms), pointer, d, n)
        ok = bool((norms > 0.5).all())
    # rows too tiny for their squared norm to be a normal float stay unnormalised (as fi.normalise_rows leaves them)
    return x if ok else fi.normalise_rows(queries, "query vectors")


def _check_model(manifest: dict[str, Any], version: Path, model_hash: str | None, dim: int | None) -> None:
    built = manifest["model"]
    if model_hash is not None and model_hash != built["content_hash"]:
        raise IndexModelMismatchError(
            f"index version {version.name} was built by model {built['content_hash'][:16]} but the model in use is "
            f"{model_hash[:16]}: its vectors are not comparable. Rebuild the index with this model "
            f"(`python -m index build --model MODEL_DIR ...`) or serve the model that built it."
        )
    if dim is not None and int(dim) != int(built["dim"]):
        raise IndexModelMismatchError(
            f"index version {version.name} holds {built['dim']}-d vectors but the model in use produces {dim}-d vectors; "
            "rebuild the index with this model or serve the model that built it."
        )
