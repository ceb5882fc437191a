"""Result records: a read-optimised copy of the metadata that search results are built from.

SQLite is the metadata's source of truth (label filter, updates, counts), but fetching ten random rows through the
sqlite3 module and decoding their JSON columns costs ~150 us, more than an HNSW query itself. So every published
version also carries, derived from its SQLite file::

    records.jsonl     one JSON array per live entry, ascending key: [item_id, modality, source_path, text, labels, extra]
    records.idx.npy   int64 byte offset of each key's line in records.jsonl (-1: no live entry), length = next key

Both are memory-mapped at load; fetching the hits of a query is a few slices and a single `json.loads`.
"""
from __future__ import annotations

import json
import mmap
from pathlib import Path
from typing import Any

import numpy as np

from index.errors import IndexCorruptError
from index.metadata import MetadataStore

RECORDS_FILE = "records.jsonl"
RECORDS_INDEX_FILE = "records.idx.npy"


def export_records(metadata: MetadataStore, directory: Path) -> int:
    """Write records.jsonl and records.idx.npy for every live entry of `metadata` into `directory`; return the count."""
    next_key = metadata.next_key()
    offsets = np.full(next_key, -1, dtype=np.int64)
    dumps = json.dumps
    count = 0
    with (directory / RECORDS_FILE).open("wb") as out:
        position = 0
        rows = metadata.iter_rows()
        for key, item_id, modality, source_path, text, labels, extra in rows:
            # labels and extra are stored as JSON already: splice them in without decoding
            line = f"[{dumps(item_id, ensure_ascii=False)},{dumps(modality)},{dumps(source_path, ensure_ascii=False)}," \
                   f"{dumps(text, ensure_ascii=False)},{labels},{extra}]\n".encode("utf-8")
            out.write(line)
            offsets[key] = position
            position += len(line)
            count += 1
    np.save(directory / RECORDS_INDEX_FILE, offsets)
    return count


class RecordReader:
    """Memory-mapped access to a version's result records by key."""

    def __init__(self, directory: Path) -> None:
        blob_path, index_path = directory / RECORDS_FILE, directory / RECORDS_INDEX_FILE
        for path in (blob_path, index_path):
            if not path.is_file():
                raise IndexCorruptError(f"{path} is missing; the index version is incomplete: rebuild it")
        try:
            # a plain ndarray view of the mapped file: indexing a np.memmap subclass costs microseconds per call
            self.offsets = np.asarray(np.load(index_path, mmap_mode="r", allow_pickle=False))
        except ValueError as exc:
            raise IndexCorruptError(f"{index_path} cannot be read ({exc}); rebuild the index version") from exc
        if self.offsets.dtype != np.int64 or self.offsets.ndim != 1:
            raise IndexCorruptError(f"{index_path} holds {self.offsets.dtype} {self.offsets.shape}, not int64 offsets; rebuild the index version")
        self._file = blob_path.open("rb")
        size = blob_path.stat().st_size
        self._blob = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self.path = blob_path

    def live_count(self) -> int:
        """Number of keys that have a record."""
        return int((np.asarray(self.offsets) >= 0).sum())

    def fetch(self, keys: np.ndarray) -> list[list[Any]]:
        """Records [item_id, modality, source_path, text, labels, extra] of `keys` (int64 array), in order."""
        if not len(keys):
            return []
        try:
            starts = self.offsets[keys]  # callers pass non-negative keys; a key past the end raises here
        except IndexError as exc:
            raise IndexCorruptError(f"{self.path}: key {int(keys.max())} is past the last record; index and metadata are out of step") from exc
        if (starts < 0).any():
            raise IndexCorruptError(f"{self.path}: FAISS returned keys {keys[starts < 0][:5].tolist()}, which have no record; "
                                    "rebuild the index version")
        blob, find = self._blob, self._blob.find
        return json.loads(b"[" + b",".join([blob[start:find(b"\n", start)] for start in starts.tolist()]) + b"]")

    def close(self) -> None:
        """Unmap the file."""
        if isinstance(self._blob, mmap.mmap):
            self._blob.close()
        self._file.close()
