"""SQLite metadata of an index version: one row per indexed vector, keyed by its FAISS id.

Schema (written by `MetadataStore.create`)::

    entries(key INTEGER PRIMARY KEY,      -- the FAISS id of the vector
            item_id TEXT, modality TEXT,  -- the corpus item and which of its sides was embedded ('image' | 'text')
            source_path TEXT,             -- the item's image file (also on text rows: the paired image)
            text TEXT, labels TEXT,       -- labels as a JSON list
            extra TEXT,                   -- the item's extra fields as a JSON object
            UNIQUE(item_id, modality))
    entry_labels(modality, label, key)    -- one row per (vector, label): the label filter's lookup table
    tombstones(key, modality)             -- vectors deleted from the metadata that the FAISS index could not remove
                                          -- (HNSW has no removal); searches exclude them
    info(name, value)                     -- next_key: the next free FAISS id

Keys are unique across both modalities of a version, so a key alone names a vector.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from index.errors import IndexCorruptError, IndexStoreError

SCHEMA = """
CREATE TABLE entries (
    key INTEGER PRIMARY KEY,
    item_id TEXT NOT NULL,
    modality TEXT NOT NULL CHECK (modality IN ('image', 'text')),
    source_path TEXT,
    text TEXT,
    labels TEXT NOT NULL,
    extra TEXT NOT NULL,
    UNIQUE (item_id, modality)
);
CREATE TABLE entry_labels (
    modality TEXT NOT NULL,
    label TEXT NOT NULL,
    key INTEGER NOT NULL,
    PRIMARY KEY (modality, label, key)
) WITHOUT ROWID;
CREATE TABLE tombstones (key INTEGER PRIMARY KEY, modality TEXT NOT NULL);
CREATE TABLE info (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Stay well below SQLite's host-parameter limit (32766 since 3.32, 999 before).
_PARAMS_PER_QUERY = 900
# What json.dumps(..., ensure_ascii=False[, sort_keys=True]) returns, without building an encoder on every call (a
# million rows cost seconds of that alone).
_encode_labels = json.JSONEncoder(ensure_ascii=False).encode
_encode_extra = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode


@dataclass(frozen=True)
class EntryRecord:
    """Metadata of one indexed vector."""

    key: int
    item_id: str
    modality: str
    source_path: str | None
    text: str | None
    labels: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)


def item_rows(items: Sequence[Any], keys: Sequence[int], modality: str) -> tuple[list[tuple], list[tuple[str, str, int]]]:
    """The `entries` rows (key, item_id, modality, source_path, text, labels JSON, extra JSON) and `entry_labels` rows
    of corpus items (model.corpus.Item) embedded in `modality` under `keys`, as the database stores them.

    The same as EntryRecords through `insert`, without building them: a build writes a million of these.
    """
    keys = keys.tolist() if hasattr(keys, "tolist") else [int(k) for k in keys]
    label_texts: dict[tuple[str, ...], str] = {}
    rows, label_rows = [], []
    for key, item in zip(keys, items):
        label_set = tuple(item.labels)
        labels = label_texts.get(label_set)
        if labels is None:
            labels = label_texts[label_set] = _encode_labels(list(label_set))
        rows.append(
            (key, item.id, modality, item.image_path, item.text, labels, _encode_extra(item.extra) if item.extra else "{}")
        )
        label_rows.extend([(modality, label, key) for label in label_set])
    return rows, label_rows


class MetadataStore:
    """Read (and, when opened writable, update) the metadata database of one index version."""

    def __init__(self, path: str | Path, writable: bool = False) -> None:
        self.path = Path(path)
        self.writable = writable
        if not self.path.is_file():
            raise IndexCorruptError(f"metadata database {self.path} is missing; the index version is incomplete: rebuild it")
        self._local = threading.local()
        self._label_cache: dict[tuple[str, frozenset[str]], np.ndarray] = {}
        self._label_cache_lock = threading.Lock()
        try:
            self._conn.execute("SELECT value FROM info WHERE name = 'next_key'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise IndexCorruptError(
                f"{self.path} is not a readable index metadata database ({exc}); rebuild the index version"
            ) from exc

    @classmethod
    def create(cls, path: str | Path) -> "MetadataStore":
        """Create an empty metadata database at `path` and open it writable."""
        path = Path(path)
        if path.exists():
            raise IndexStoreError(f"{path} already exists; a new version gets a fresh metadata database")
        conn = sqlite3.connect(path)
        conn.executescript(SCHEMA)
        conn.execute("INSERT INTO info (name, value) VALUES ('next_key', '0')")
        conn.commit()
        conn.close()
        return cls(path, writable=True)

    @property
    def _conn(self) -> sqlite3.Connection:
        # One connection per thread: the service searches from a thread pool.
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.writable:
                # A writable database is always a staged copy (index.store.StagedVersion): it becomes durable when
                # publish fsyncs it, and a crash before that discards the whole staging directory. So commits skip
                # their own fsyncs and keep the rollback journal in memory (a failed insert still rolls back).
                conn = sqlite3.connect(self.path)
                conn.execute("PRAGMA synchronous = OFF")
                conn.execute("PRAGMA journal_mode = MEMORY")
            else:
                # Published versions never change, so readers skip locking altogether.
                conn = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close this thread's connection (other threads' connections close when they are garbage-collected)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ------------------------------------------------------------------------------------------------------- writes
    def insert(self, records: Iterable[EntryRecord]) -> int:
        """Insert records (their keys must be new); return how many were inserted. Commits."""
        rows, label_rows = [], []
        label_texts: dict[tuple[str, ...], str] = {}  # few distinct label sets: encode each once
        for r in records:
            key = int(r.key)
            label_set = tuple(r.labels)  # the same object when it is a tuple already
            labels = label_texts.get(label_set)
            if labels is None:
                labels = label_texts[label_set] = _encode_labels(list(label_set))
            rows.append((key, r.item_id, r.modality, r.source_path, r.text, labels, _encode_extra(r.extra) if r.extra else "{}"))
            label_rows.extend([(r.modality, lab, key) for lab in label_set])
        return self.insert_rows(rows, label_rows)

    def insert_rows(self, rows: Sequence[tuple], label_rows: Sequence[tuple[str, str, int]]) -> int:
        """Insert rows as `item_rows` makes them (their keys must be new); return how many were inserted. Commits."""
        self._require_writable()
        conn = self._conn
        try:
            conn.executemany(
                "INSERT INTO entries (key, item_id, modality, source_path, text, labels, extra) VALUES (?,?,?,?,?,?,?)", rows
            )
        except sqlite3.IntegrityError as exc:
            conn.rollback()
            raise IndexStoreError(
                f"cannot add entries to {self.path}: {exc} (an item id is already indexed for that modality, or a key is reused)"
            ) from exc
        conn.executemany("INSERT OR IGNORE INTO entry_labels (modality, label, key) VALUES (?,?,?)", label_rows)
        top = max((row[0] for row in rows), default=-1)
        if top >= self.next_key():
            conn.execute("UPDATE info SET value = ? WHERE name = 'next_key'", (str(top + 1),))
        conn.commit()
        return len(rows)

    def delete_items(self, item_ids: Sequence[str], modality: str) -> dict[str, int]:
        """Delete the `modality` rows of `item_ids`; return {item_id: key} of the rows removed (absent ids are skipped)."""
        self._require_writable()
        found = self.keys_for_items(item_ids, modality)
        conn = self._conn
        keys = [(k,) for k in found.values()]
        conn.executemany("DELETE FROM entries WHERE key = ?", keys)
        conn.executemany("DELETE FROM entry_labels WHERE modality = ? AND key = ?", [(modality, k) for (k,) in keys])
        conn.commit()
        return found

    def add_tombstones(self, keys: Iterable[int], modality: str) -> None:
        """Record keys whose vectors stay in the FAISS index but must never be returned."""
        self._require_writable()
        self._conn.executemany(
            "INSERT OR IGNORE INTO tombstones (key, modality) VALUES (?, ?)", [(int(k), modality) for k in keys]
        )
        self._conn.commit()

    def clear_tombstones(self, modality: str) -> None:
        """Forget a modality's tombstones (after its index was rebuilt without them)."""
        self._require_writable()
        self._conn.execute("DELETE FROM tombstones WHERE modality = ?", (modality,))
        self._conn.commit()

    def _require_writable(self) -> None:
        if not self.writable:
            raise IndexStoreError(
                f"{self.path} is opened read-only: published versions never change; updates write a new version"
            )

    # -------------------------------------------------------------------------------------------------------- reads
    def next_key(self) -> int:
        """The next unused FAISS id."""
        return int(self._conn.execute("SELECT value FROM info WHERE name = 'next_key'").fetchone()[0])

    def count(self, modality: str | None = None) -> int:
        """Number of entries (of one modality, or of all)."""
        if modality is None:
            return int(self._conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
        return int(self._conn.execute("SELECT COUNT(*) FROM entries WHERE modality = ?", (modality,)).fetchone()[0])

    def fetch(self, keys: Iterable[int]) -> dict[int, EntryRecord]:
        """Records of the given keys (keys with no row are left out)."""
        unique = list(dict.fromkeys(int(k) for k in keys))
        out: dict[int, EntryRecord] = {}
        conn = self._conn
        for start in range(0, len(unique), _PARAMS_PER_QUERY):
            chunk = unique[start : start + _PARAMS_PER_QUERY]
            marks = ",".join("?" * len(chunk))
            for key, item_id, modality, source_path, text, labels, extra in conn.execute(
                f"SELECT key, item_id, modality, source_path, text, labels, extra FROM entries WHERE key IN ({marks})", chunk
            ):
                out[key] = EntryRecord(key, item_id, modality, source_path, text, tuple(json.loads(labels)), json.loads(extra))
        return out

    def keys_for_items(self, item_ids: Sequence[str], modality: str) -> dict[str, int]:
        """{item_id: key} for those of `item_ids` indexed in `modality`."""
        out: dict[str, int] = {}
        ids = list(dict.fromkeys(item_ids))
        for start in range(0, len(ids), _PARAMS_PER_QUERY):
            chunk = ids[start : start + _PARAMS_PER_QUERY]
            marks = ",".join("?" * len(chunk))
            for item_id, key in self._conn.execute(
                f"SELECT item_id, key FROM entries WHERE modality = ? AND item_id IN ({marks})", [modality, *chunk]
            ):
                out[item_id] = key
        return out

    def keys_by_item(self, modality: str) -> dict[str, int]:
        """{item_id: key} of every live entry of `modality`."""
        return dict(self._conn.execute("SELECT item_id, key FROM entries WHERE modality = ?", (modality,)))

    def keys_with_labels(self, modality: str, labels: Iterable[str]) -> np.ndarray:
        """Sorted int64 keys of the `modality` entries carrying at least one of `labels` (cached per label set)."""
        cache_key = (modality, frozenset(labels))
        with self._label_cache_lock:
            hit = self._label_cache.get(cache_key)
        if hit is not None:
            return hit
        wanted = sorted(cache_key[1])
        marks = ",".join("?" * len(wanted))
        rows = self._conn.execute(
            f"SELECT DISTINCT key FROM entry_labels WHERE modality = ? AND label IN ({marks}) ORDER BY key", [modality, *wanted]
        ).fetchall()
        keys = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        keys.setflags(write=False)
        with self._label_cache_lock:
            if len(self._label_cache) >= 256:
                self._label_cache.pop(next(iter(self._label_cache)))
            self._label_cache[cache_key] = keys
        return keys

    def distinct_label_lists(self) -> list[str]:
        """Every distinct labels value of the entries, as stored (JSON text), sorted."""
        return [row[0] for row in self._conn.execute("SELECT DISTINCT labels FROM entries ORDER BY labels")]

    def label_counts(self, modality: str) -> dict[str, int]:
        """How many entries of `modality` carry each label."""
        rows = self._conn.execute("SELECT label, COUNT(*) FROM entry_labels WHERE modality = ? GROUP BY label", (modality,))
        return {label: int(n) for label, n in rows}

    def tombstones(self, modality: str) -> np.ndarray:
        """Sorted int64 keys of the deleted-but-still-indexed vectors of `modality`."""
        rows = self._conn.execute("SELECT key FROM tombstones WHERE modality = ? ORDER BY key", (modality,)).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def iter_rows(self) -> Iterable[tuple[int, str, str, str | None, str | None, str, str]]:
        """Every entry as (key, item_id, modality, source_path, text, labels JSON, extra JSON), ascending key."""
        return self._conn.execute("SELECT key, item_id, modality, source_path, text, labels, extra FROM entries ORDER BY key")

    def all_keys(self, modality: str) -> np.ndarray:
        """Sorted int64 keys of every live entry of `modality`."""
        rows = self._conn.execute("SELECT key FROM entries WHERE modality = ? ORDER BY key", (modality,)).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
