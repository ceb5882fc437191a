"""Embeddings on disk between the embedding pass and the index build: one shard directory per `--shard i/n`.

A shard directory holds one file per embedded batch and, once every batch is done, `shard.json`::

    <shard_dir>/chunks/<modality>-<batch:06d>.npz   vectors (float32, normalised), item_ids, tried_ids, skipped (JSON)
    <shard_dir>/shard.json                         model hash, corpus signature, shard i/n, counts, chunk sha256s

Chunk files are written atomically, so an interrupted embedding pass resumes at the first missing batch; `shard.json`
is written last and marks the shard complete. Shards of one build, possibly embedded on different machines, are merged
into one index version by `index.build.merge_shards`.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import numpy as np

from index.errors import ShardError
from index.store import atomic_write_text, fsync_path, sha256_file
from model.corpus import CORPUS_FILE, ITEMS_FILE, Corpus, Item

SHARD_FILE = "shard.json"
CHUNKS_DIR = "chunks"
SHARD_FORMAT_VERSION = 1


def corpus_signature(corpus_dir: str | Path) -> str:
    """sha256 over the prepared corpus's files: identifies exactly which items (and texts/labels) were embedded."""
    corpus_dir = Path(corpus_dir)
    digest = hashlib.sha256()
    for name in (CORPUS_FILE, ITEMS_FILE):
        path = corpus_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {corpus_dir} is not a prepared corpus")
        digest.update(name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def parse_shard(spec: str) -> tuple[int, int]:
    """Parse 'i/n' (0-based shard i of n) into (i, n)."""
    try:
        i_text, n_text = spec.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise ValueError(f"shard must look like 'i/n' (e.g. 0/4 for the first of four), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {spec!r}: need n >= 1 and 0 <= i < n")
    return i, n


def shard_range(n_items: int, shard: tuple[int, int]) -> tuple[int, int]:
    """The contiguous [start, stop) item positions that shard (i, n) embeds."""
    i, n = shard
    return i * n_items // n, (i + 1) * n_items // n


def shard_dir_name(shard: tuple[int, int]) -> str:
    """Directory name of shard (i, n) inside a build's shard folder."""
    return f"shard-{shard[0]:04d}-of-{shard[1]:04d}"


@dataclass(frozen=True)
class Chunk:
    """One embedded batch: the vectors of the items that could be embedded, and what was skipped and why."""

    modality: str
    batch: int
    vectors: np.ndarray
    item_ids: list[str]
    tried_ids: list[str]
    skipped: list[dict[str, str]]
    features_reused: int = 0  # images whose backbone features came from a feature cache (not stored)


def chunk_path(shard_dir: Path, modality: str, batch: int) -> Path:
    """Where batch `batch` of `modality` is stored."""
    return shard_dir / CHUNKS_DIR / f"{modality}-{batch:06d}.npz"


def write_chunk(shard_dir: Path, chunk: Chunk) -> Path:
    """Store a chunk atomically (temp file, fsync, rename)."""
    path = chunk_path(shard_dir, chunk.modality, chunk.batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    with tmp.open("wb") as fh:
        np.savez(
            fh,
            vectors=np.asarray(chunk.vectors, dtype=np.float32).reshape(len(chunk.item_ids), -1),
            item_ids=np.array(chunk.item_ids, dtype=str),
            tried_ids=np.array(chunk.tried_ids, dtype=str),
            skipped=np.array(json.dumps(chunk.skipped)),
        )
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def read_chunk(path: Path, modality: str, batch: int) -> Chunk:
    """Load a chunk file; raises ShardError when it is damaged."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return Chunk(
                modality,
                batch,
                data["vectors"].astype(np.float32, copy=False),
                data["item_ids"].tolist(),
                data["tried_ids"].tolist(),
                json.loads(str(data["skipped"])),
            )
    except (OSError, ValueError, KeyError) as exc:
        raise ShardError(f"{path} cannot be read ({exc}); delete it and rerun the embedding of this shard") from exc


def write_shard_manifest(shard_dir: Path, fields: dict[str, Any]) -> dict[str, Any]:
    """Mark a shard complete: record its chunks with sha256 and `fields` in shard.json."""
    chunks = sorted((shard_dir / CHUNKS_DIR).glob("*.npz")) if (shard_dir / CHUNKS_DIR).is_dir() else []
    for path in chunks:
        fsync_path(path)
    manifest = {"format_version": SHARD_FORMAT_VERSION, **fields, "chunks": {p.name: sha256_file(p) for p in chunks}}
    atomic_write_text(shard_dir / SHARD_FILE, json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def read_shard_manifest(shard_dir: Path) -> dict[str, Any]:
    """Read a complete shard's shard.json (ShardError when the shard is unfinished or damaged)."""
    path = shard_dir / SHARD_FILE
    if not path.is_file():
        raise ShardError(f"{shard_dir} has no {SHARD_FILE}: that shard's embedding did not finish; rerun it with --shard")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ShardError(f"{path} is not valid JSON ({exc}); rerun that shard's embedding") from exc
    if manifest.get("format_version") != SHARD_FORMAT_VERSION:
        raise ShardError(f"{path} has shard format {manifest.get('format_version')!r}; this code reads {SHARD_FORMAT_VERSION}")
    return manifest


class EmbeddingSource(Protocol):
    """Where an index build reads its vectors from, one modality at a time, in bounded batches."""

    dim: int

    def modalities(self) -> list[str]:
        """Modalities that have vectors."""

    def count(self, modality: str) -> int:
        """How many vectors `modality` has."""

    def batches(self, modality: str) -> Iterator[tuple[np.ndarray, list[Item]]]:
        """(vectors, items) batches of `modality`, in a fixed order."""

    def sample(self, modality: str, n: int, seed: int) -> np.ndarray:
        """Up to `n` of the modality's vectors chosen at random (for training IVF/PQ)."""


class ArraySource:
    """An EmbeddingSource over in-memory arrays: {modality: (vectors, items)}."""

    def __init__(self, data: dict[str, tuple[np.ndarray, Sequence[Item]]], dim: int, batch_size: int = 65536) -> None:
        self.dim = dim
        self.batch_size = batch_size
        self.data = {}
        for modality, (vectors, items) in data.items():
            vectors = np.asarray(vectors, dtype=np.float32)
            if vectors.ndim != 2 or vectors.shape[1] != dim or len(vectors) != len(items):
                raise ValueError(f"{modality}: need ({len(items)}, {dim}) vectors for {len(items)} items, got {vectors.shape}")
            self.data[modality] = (vectors, list(items))

    def modalities(self) -> list[str]:
        """Modalities that have vectors."""
        return [m for m, (v, _) in self.data.items() if len(v)]

    def count(self, modality: str) -> int:
        """How many vectors `modality` has."""
        return len(self.data[modality][0]) if modality in self.data else 0

    def batches(self, modality: str) -> Iterator[tuple[np.ndarray, list[Item]]]:
        """(vectors, items) batches of `modality`."""
        vectors, items = self.data[modality]
        for start in range(0, len(vectors), self.batch_size):
            yield vectors[start : start + self.batch_size], items[start : start + self.batch_size]

    def sample(self, modality: str, n: int, seed: int) -> np.ndarray:
        """Up to `n` random vectors of `modality`."""
        vectors = self.data[modality][0]
        if n >= len(vectors):
            return vectors
        rows = np.sort(np.random.default_rng(seed).choice(len(vectors), size=n, replace=False))
        return vectors[rows]


class ShardSet:
    """An EmbeddingSource over the complete shards of one build, checked to belong together and to cover the corpus."""

    def __init__(self, shard_dirs: Sequence[str | Path], corpus: Corpus, model_hash: str, corpus_sig: str) -> None:
        if not shard_dirs:
            raise ShardError("no shard directories given; embed the shards first with `python -m index build --shard i/n`")
        self.corpus = corpus
        self.shards: list[tuple[Path, dict[str, Any]]] = []
        for d in shard_dirs:
            d = Path(d)
            manifest = read_shard_manifest(d)
            if manifest["model_hash"] != model_hash:
                raise ShardError(
                    f"{d} was embedded by model {manifest['model_hash'][:12]}, not {model_hash[:12]}; re-embed it with this model"
                )
            if manifest["corpus_signature"] != corpus_sig:
                raise ShardError(f"{d} was embedded from another version of the corpus; re-embed it from this corpus")
            self.shards.append((d, manifest))
        counts = {m["shard_count"] for _, m in self.shards}
        if len(counts) != 1:
            raise ShardError(
                f"shards come from splits into different numbers of parts {sorted(counts)}; use the shards of one split"
            )
        n = counts.pop()
        have = sorted(m["shard_index"] for _, m in self.shards)
        if have != list(range(n)):
            missing = sorted(set(range(n)) - set(have))
            dupes = sorted({i for i in have if have.count(i) > 1})
            raise ShardError(f"a merge needs each of the {n} shards exactly once; missing {missing}, duplicated {dupes}")
        self.shards.sort(key=lambda s: s[1]["shard_index"])
        self.dim = int(self.shards[0][1]["dim"])
        for d, manifest in self.shards:
            for name in manifest["chunks"]:
                if not (d / CHUNKS_DIR / name).is_file():
                    raise ShardError(f"{d / CHUNKS_DIR / name} is listed in {d / SHARD_FILE} but missing; re-embed that shard")

    def modalities(self) -> list[str]:
        """Modalities that have vectors."""
        return [m for m in ("image", "text") if self.count(m)]

    def count(self, modality: str) -> int:
        """How many vectors `modality` has over all shards."""
        return sum(int(m["counts"].get(modality, 0)) for _, m in self.shards)

    def skipped(self) -> list[dict[str, str]]:
        """Every item that could not be embedded, with modality and reason."""
        return [s for _, m in self.shards for s in m["skipped"]]

    def _chunk_paths(self, modality: str) -> Iterator[tuple[Path, int, str]]:
        for d, manifest in self.shards:
            for name in sorted(manifest["chunks"]):
                if name.startswith(modality + "-"):
                    yield d / CHUNKS_DIR / name, int(name[len(modality) + 1 : -4]), manifest["chunks"][name]

    def batches(self, modality: str) -> Iterator[tuple[np.ndarray, list[Item]]]:
        """(vectors, items) per stored chunk, shard by shard; each chunk is checked against its sha256."""
        for path, batch, digest in self._chunk_paths(modality):
            if sha256_file(path) != digest:
                raise ShardError(f"{path} does not match its sha256 in {path.parent.parent / SHARD_FILE}; re-embed that shard")
            chunk = read_chunk(path, modality, batch)
            yield chunk.vectors, [self.corpus.items[self.corpus.position(i)] for i in chunk.item_ids]

    def sample(self, modality: str, n: int, seed: int) -> np.ndarray:
        """Up to `n` random vectors, drawn chunk by chunk in proportion to chunk size (bounded memory)."""
        total = self.count(modality)
        if total == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        rng = np.random.default_rng(seed)
        keep = np.zeros(total, dtype=bool)
        keep[rng.choice(total, size=min(n, total), replace=False)] = True
        parts, offset = [], 0
        for path, batch, _ in self._chunk_paths(modality):
            chunk = read_chunk(path, modality, batch)
            rows = keep[offset : offset + len(chunk.item_ids)]
            parts.append(chunk.vectors[rows])
            offset += len(chunk.item_ids)
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)
