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
from pathlib import Path
from typing import Sequence

import numpy as np

from model.artefact import sha256_file

log = logging.getLogger(__name__)

CACHE_DIR = "feature_cache"


def backbone_fingerprint(backbone) -> str:
    """Identifies what a cached feature depends on besides the image: the backbone, its weights and its preprocessing."""
    pre = dataclasses.asdict(backbone.preprocess) if dataclasses.is_dataclass(backbone.preprocess) else repr(backbone.preprocess)
    blob = json.dumps({"name": backbone.name, "weights": backbone.weights_sha256, "layer": backbone.feature_layer,
                       "preprocess": pre}, sort_keys=True, default=str)
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
    """Read-only lookup of the cached features of one backbone fingerprint under a cache root (nothing is written)."""

    def __init__(self, cache_root: str | Path, fingerprint: str) -> None:
        self.directory = Path(cache_root) / fingerprint
        self._where = FeatureCache(self.directory).load_index() if self.directory.is_dir() else {}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Features of `keys` (all cached), one row each in order; each chunk file is read once per call."""
        rows_of: dict[Path, list[tuple[int, int]]] = {}
        for dest, key in enumerate(keys):
            chunk, row = self._where[key]
            rows_of.setdefault(chunk, []).append((dest, row))
        out: np.ndarray | None = None
        for chunk, pairs in rows_of.items():
            with np.load(chunk) as data:
                feats = data["features"]
            if out is None:
                out = np.empty((len(keys), feats.shape[1]), np.float32)
            dest, rows = zip(*pairs)
            out[list(dest)] = feats[list(rows)]
        return out if out is not None else np.zeros((0, 0), np.float32)
