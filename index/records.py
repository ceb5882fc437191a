"""Result records: a read-optimised copy of the metadata that search results are built from.

SQLite is the metadata's source of truth (label filter, updates, counts), but fetching ten random rows through the
sqlite3 module and decoding their JSON columns costs ~150 us, more than an HNSW query itself. So every published
version also carries, derived from its SQLite file::

    records.jsonl     a header line, then one JSON array per live entry in ascending key order
    records.idx.npy   int64 byte offset of each key's line in records.jsonl (-1: no live entry), length = next key

Format 2 (written now): the header is {"records_format": 2, "modalities": [...], "label_sets": [[...], ...]} and each
entry is [item_id, modality index, source_path, text, label-set index, extra]. The modality names and label sets are
decoded once at load and shared by every result (they are immutable str / tuple objects), so building a search hit
allocates only what differs from item to item: search results are built right after a FAISS search has flushed the
CPU caches, where every allocation is a cache miss. Format 1 (versions published before it) has no header and
entries [item_id, modality, source_path, text, labels, extra]; it is still read.

Both files are memory-mapped at load, and the [start, end) byte span of every key's line is derived once (a line ends
where the next live one starts; 16 bytes per key in memory); fetching the hits of a query is then one slice per hit
and a single JSON decode.
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
RECORDS_FORMAT = 2
RECORD_MODALITIES = ("image", "text")
_decode_json = json.JSONDecoder().raw_decode


def export_records(metadata: MetadataStore, directory: Path) -> int:
    """Write records.jsonl (format 2) and records.idx.npy for every live entry of `metadata` into `directory`; return the count."""
    next_key = metadata.next_key()
    offsets = np.full(next_key, -1, dtype=np.int64)
    dumps = json.dumps
    label_texts = metadata.distinct_label_lists()  # labels are stored as JSON text: index the texts, decode each once
    label_index = {text: i for i, text in enumerate(label_texts)}
    modality_index = {name: i for i, name in enumerate(RECORD_MODALITIES)}
    header = {"records_format": RECORDS_FORMAT, "modalities": list(RECORD_MODALITIES),
              "label_sets": [json.loads(text) for text in label_texts]}
    count = 0
    with (directory / RECORDS_FILE).open("wb") as out:
        head = (dumps(header, ensure_ascii=False) + "\n").encode("utf-8")
        out.write(head)
        position = len(head)
        for key, item_id, modality, source_path, text, labels, extra in metadata.iter_rows():
            # extra is stored as JSON already: splice it in without decoding
            line = f"[{dumps(item_id, ensure_ascii=False)},{modality_index[modality]},{dumps(source_path, ensure_ascii=False)}," \
                   f"{dumps(text, ensure_ascii=False)},{label_index[labels]},{extra}]\n".encode("utf-8")
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
        first = self._read_header()
        self._spans = self._line_spans(size, first)
        self._span_view = memoryview(self._spans.reshape(-1))  # [start, end, start, end, ...] by key, as Python ints

    def _read_header(self) -> int:
        """Set format, modality_names and label_sets from the header line (format 2) or to format 1; return where entries start."""
        self.format, self.modality_names, self.label_sets = 1, RECORD_MODALITIES, []
        if self._blob[:1] != b"{":
            return 0
        end = self._blob.find(b"\n") + 1
        try:
            header = json.loads(self._blob[:end] if end else self._blob[:])
            self.format = int(header["records_format"])
            self.modality_names = tuple(str(m) for m in header["modalities"])
            self.label_sets = [tuple(str(label) for label in labels) for labels in header["label_sets"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexCorruptError(f"{self.path} has an unreadable header ({exc!r}); rebuild the index version") from exc
        if self.format != RECORDS_FORMAT:
            raise IndexCorruptError(f"{self.path} is in records format {self.format}; this version of the library reads formats 1 "
                                    f"and {RECORDS_FORMAT}: upgrade it or rebuild the index version")
        return end

    def _line_spans(self, size: int, first: int) -> np.ndarray:
        """(next key, 2) int64 [start, end) of each key's line without its newline; [-1, -1] for keys with no record."""
        live = np.flatnonzero(self.offsets >= 0)
        starts = self.offsets[live]
        # export_records writes the lines in ascending key order; anything else means the files do not belong together
        if len(starts) and (starts[0] != first or (np.diff(starts) <= 0).any() or starts[-1] >= size):
            raise IndexCorruptError(f"{self.path.with_name(RECORDS_INDEX_FILE)} does not match {self.path} (offsets out of order or past "
                                    "the end); rebuild the index version")
        spans = np.full((len(self.offsets), 2), -1, dtype=np.int64)
        spans[live, 0] = starts
        spans[live, 1] = np.append(starts[1:], size) - 1
        return spans

    def live_count(self) -> int:
        """Number of keys that have a record."""
        return int((np.asarray(self.offsets) >= 0).sum())

    def fetch(self, keys: np.ndarray) -> list[list[Any]]:
        """Records [item_id, modality, source_path, text, labels, extra] of `keys` (int64 array), in order."""
        entries = self.fetch_entries(np.asarray(keys, dtype=np.int64).tolist())
        if self.format == 1:
            return entries
        modalities, label_sets = self.modality_names, self.label_sets
        try:
            return [[e[0], modalities[e[1]], e[2], e[3], list(label_sets[e[4]]), e[5]] for e in entries]
        except (IndexError, TypeError) as exc:
            raise self.corrupt_entries(exc) from exc

    def fetch_entries(self, keys: list[int]) -> list[list[Any]]:
        """The entries of a list of non-negative int keys as stored (format 1 or 2, see the module doc): the search hot path.

        It runs right after a FAISS search has flushed the CPU caches, where every numpy call costs several
        microseconds of cold code: the spans are read through a memoryview (plain ints) and the entries are decoded
        by one `raw_decode` (json.loads adds encoding detection and whitespace handling).
        """
        if not keys:
            return []
        spans, blob = self._span_view, self._blob
        try:
            text = b"[" + b",".join([blob[spans[2 * key]:spans[2 * key + 1]] for key in keys]) + b"]"
        except IndexError as exc:
            raise IndexCorruptError(f"{self.path}: key {max(keys)} is past the last record; index and metadata are out of step") from exc
        # A key without a record has the empty span [-1, -1): its empty element makes the JSON invalid (or, alone,
        # an empty list), so the hot path needs no separate check.
        try:
            decoded = text.decode("utf-8")
            entries, end = _decode_json(decoded)
        except ValueError:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
            decoded, entries, end = "", None, -1
        # raw_decode's `end` counts characters, so compare with the decoded text, not the (longer, non-ASCII) bytes.
        if entries is None or len(entries) != len(keys) or end != len(decoded):
            self._raise_unreadable(np.array(keys, dtype=np.int64))
        return entries

    def corrupt_entries(self, exc: Exception) -> IndexCorruptError:
        """The error for entries whose fields do not fit the format (e.g. a label-set index past the header's table)."""
        return IndexCorruptError(f"{self.path} holds entries that do not fit records format {self.format} ({exc!r}); rebuild the index version")

    def _raise_unreadable(self, keys: np.ndarray) -> None:
        missing = keys[self._spans[keys][:, 0] < 0]
        if len(missing):
            raise IndexCorruptError(f"{self.path}: FAISS returned keys {missing[:5].tolist()}, which have no record; rebuild the index version")
        raise IndexCorruptError(f"{self.path}: the records of keys {keys[:5].tolist()}... are not valid JSON; rebuild the index version")

    def close(self) -> None:
        """Unmap the file."""
        self._span_view.release()
        if isinstance(self._blob, mmap.mmap):
            self._blob.close()
        self._file.close()
