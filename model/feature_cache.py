"""The content-addressed cache of backbone image features: `training prepare` writes it, the indexing job reads it.

A feature is keyed by the sha256 of the image file and kept under a fingerprint of everything else it depends on
(backbone, weights, layer, preprocessing): CACHE_ROOT/<fingerprint>/chunk-*.npz, one chunk per extracted batch,
each written atomically. A changed image or backbone therefore never reuses a stale feature.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from model.artefact import sha256_file

log = logging.getLogger(__name__)

CACHE_DIR = "feature_cache"


def backbone_fingerprint(backbone) -> str:
    """Identifies what a cached feature depends on besides the image: the backbone, its weights and its preprocessing."""
    pre = dataclasses.asdict(backbone.preprocess) if dataclasses.is_dataclass(backbone.preprocess) else repr(backbone.preprocess)
    blob = json.dumps(
        {"name": backbone.name, "weights": backbone.weights_sha256, "layer": backbone.feature_layer, "preprocess": pre},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def image_file_key(path: str | Path | None) -> str | None:
    """The cache key of an image file (its sha256), or None when it cannot be read."""
    if not path:
        return None
    try:
        return sha256_file(Path(path))
    except OSError:
        return None


def _atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class FeatureCache:
    """Backbone features of one fingerprint, keyed by image sha256, stored as chunk files (key list + float32 rows)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def load_index(self) -> dict[str, tuple[Path, int]]:
        """image sha256 -> (chunk file, row) for everything cached; damaged chunks are ignored (and recomputed)."""
        found: dict[str, tuple[Path, int]] = {}
        for path in sorted(self.directory.glob("chunk-*.npz")):
            try:
                with np.load(path) as data:
                    keys = [str(k) for k in data["keys"]]
            except (OSError, ValueError, KeyError, EOFError) as exc:
                log.warning("ignoring damaged feature-cache file %s (%s); its images are recomputed", path, exc)
                continue
            for row, key in enumerate(keys):
                found.setdefault(key, (path, row))
        return found

    def write_chunk(self, name: str, keys: list[str], features: np.ndarray) -> Path:
        """Store one batch of features under a unique chunk name."""
        path = self.directory / f"chunk-{name}.npz"
        _atomic_save_npz(path, keys=np.asarray(keys), features=np.asarray(features, dtype=np.float32))
        return path


class CachedFeatures:
    """Read-only lookup of the cached features of one backbone fingerprint under a cache root (nothing is written).

    Chunk files hold prepare's batches in sha256 order, not in corpus order, so recently read chunks are kept (up to
    `memory_budget_bytes`) rather than read again for every batch that needs one of their rows."""

    def __init__(self, cache_root: str | Path, fingerprint: str, memory_budget_bytes: int = 256 * 2**20) -> None:
        self.directory = Path(cache_root) / fingerprint
        self._where = FeatureCache(self.directory).load_index() if self.directory.is_dir() else {}
        self._budget = memory_budget_bytes
        self._loaded: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._loaded_bytes = 0

    def __len__(self) -> int:
        return len(self._where)

    def _features_of(self, chunk: Path) -> np.ndarray | None:
        if chunk in self._loaded:
            self._loaded.move_to_end(chunk)
            return self._loaded[chunk]
        try:
            with np.load(chunk) as data:
                feats = np.asarray(data["features"], dtype=np.float32)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            # Damaged or deleted since the index was read: its images are computed by the backbone instead.
            log.warning("cannot read feature-cache file %s (%s); its images go through the backbone", chunk, exc)
            self._where = {key: where for key, where in self._where.items() if where[0] != chunk}
            return None
        self._loaded[chunk] = feats
        self._loaded_bytes += feats.nbytes
        while self._loaded_bytes > self._budget and len(self._loaded) > 1:
            self._loaded_bytes -= self._loaded.popitem(last=False)[1].nbytes
        return feats

    def read(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached feature of each of `keys` that the cache holds and can read (keys it lacks are left out)."""
        rows_of: dict[Path, list[tuple[str, int]]] = {}
        for key in dict.fromkeys(keys):
            if key in self._where:
                chunk, row = self._where[key]
                rows_of.setdefault(chunk, []).append((key, row))
        found: dict[str, np.ndarray] = {}
        for chunk, pairs in rows_of.items():
            feats = self._features_of(chunk)
            if feats is not None:
                found.update((key, feats[row]) for key, row in pairs)
        return found
