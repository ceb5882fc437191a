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

In memory (`RecordReader(..., in_memory=True)`, what `SearchIndex.load` chooses while the records fit
`records_memory_budget`): every entry is also decoded once at load into a tuple of a search hit's static fields
(item_id, modality, labels, text, image_path) and its extra dict, in two lists indexed by key, so building a hit is two
list indexes and one tuple. Search results are built right after a FAISS search has flushed the CPU caches, where
slicing the map and a JSON decode cost 60-100 us for one query (10-15 % of an HNSW search) and the table 20-30 us.
Measured on the benchmark's records (65-byte lines, 200,000 entries): 447 bytes per entry and 1.0-2.0 s of load time
(10-28 s at 1M entries on a loaded 2-core machine; the JSON decode of the whole file, then the columns); an item
indexed on both sides shares its objects between its two entries (560 bytes per item, 280 per entry). Loading the
table also checks every entry, so damage that the map would only meet when a search returns the damaged key is
reported at load.
"""

from __future__ import annotations

import itertools
import json
import mmap
import os
import shutil
from json.encoder import encode_basestring
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
_EXPORT_BATCH = 65536  # entries encoded and written at a time by export_records
# What the in-memory table costs, as an upper estimate from the file before decoding it: per entry its tuple, two list
# slots and the headers of its strings and extra dict, plus twice the entry's JSON for their contents. Measured on the
# benchmark's records (65-byte lines): 447 bytes per entry against 530 estimated (docs/index-benchmark.md).
_MEMORY_PER_ENTRY = 400
_MEMORY_PER_JSON_BYTE = 2


def default_records_memory_budget() -> int:
    """Bytes the in-memory records table may take by default: an eighth of the machine's (or container's) memory."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:  # a container's cgroup-v2 limit, when it has one, is what this process can really use
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total // 8


def export_records(metadata: MetadataStore, directory: Path) -> int:
    """Write records.jsonl (format 2) and records.idx.npy for every live entry of `metadata` into `directory`; return the count."""
    label_texts = metadata.distinct_label_lists()  # labels are stored as JSON text: index the texts, decode each once
    with RecordsWriter(directory, label_texts) as writer:
        rows = iter(metadata.iter_rows())
        while batch := list(itertools.islice(rows, _EXPORT_BATCH)):
            writer.add(batch)
        return writer.finish(metadata.next_key())


class RecordsWriter:
    """Writes a version's records.jsonl (format 2) and records.idx.npy from metadata rows given in ascending key order.

    A build hands it each batch of rows as it inserts them into SQLite (`index.metadata.item_rows`), so the records
    need no second pass over the database. The entries go to a hidden temporary file first, because the header line,
    which lists every label set, can only be written once all rows are known; `finish` writes the header, appends the
    entries (a kernel-side copy) and the offsets, and removes the temporary file.
    """

    def __init__(self, directory: Path, label_texts: list[str] | None = None) -> None:
        """`label_texts`: the label sets' JSON texts in the order of the header (default: in order of appearance)."""
        self.directory = Path(directory)
        self._body_path = self.directory / f".{RECORDS_FILE}.entries.tmp"
        self._body = self._body_path.open("wb")
        self._label_index = {text: i for i, text in enumerate(label_texts or [])}
        self._modality_index = {name: i for i, name in enumerate(RECORD_MODALITIES)}
        self._keys: list[np.ndarray] = []
        self._starts: list[np.ndarray] = []
        self._position = 0
        self._last_key = -1

    def add(self, rows: list[tuple]) -> None:
        """Append rows (key, item_id, modality, source_path, text, labels JSON, extra JSON), keys ascending."""
        if not rows:
            return
        labels = self._label_index
        for text in dict.fromkeys(row[5] for row in rows):  # new label sets numbered in order of appearance
            if text not in labels:
                labels[text] = len(labels)
        modalities = self._modality_index
        string = encode_basestring  # json.dumps(s, ensure_ascii=False) of a str, without building an encoder per call
        # extra is stored as JSON already: spliced in without decoding
        lines = [
            f"[{string(item_id)},{modalities[modality]},{'null' if source_path is None else string(source_path)},"
            f"{'null' if text is None else string(text)},{labels[label_text]},{extra}]\n".encode("utf-8")
            for _, item_id, modality, source_path, text, label_text, extra in rows
        ]
        keys = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
        if keys[0] <= self._last_key or (len(keys) > 1 and (np.diff(keys) <= 0).any()):
            raise ValueError(f"records must be added in ascending key order (key {int(keys.min())} after {self._last_key})")
        lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
        ends = np.cumsum(lengths) + self._position
        self._keys.append(keys)
        self._starts.append(ends - lengths)
        self._body.write(b"".join(lines))
        self._position = int(ends[-1])
        self._last_key = int(keys[-1])

    def finish(self, next_key: int) -> int:
        """Write records.jsonl and records.idx.npy (offsets for keys 0..next_key-1); return the number of entries."""
        if next_key <= self._last_key:
            raise ValueError(f"next_key {next_key} is not past the last record's key {self._last_key}")
        self._body.close()
        header = {
            "records_format": RECORDS_FORMAT,
            "modalities": list(RECORD_MODALITIES),
            "label_sets": [json.loads(text) for text in self._label_index],
        }
        head = (json.dumps(header, ensure_ascii=False) + "\n").encode("utf-8")
        with (self.directory / RECORDS_FILE).open("wb") as out, self._body_path.open("rb") as body:
            out.write(head)
            out.flush()
            _append(out, body, self._position)
        offsets = np.full(next_key, -1, dtype=np.int64)
        keys = np.concatenate(self._keys) if self._keys else np.zeros(0, dtype=np.int64)
        if len(keys):
            offsets[keys] = np.concatenate(self._starts) + len(head)
        np.save(self.directory / RECORDS_INDEX_FILE, offsets)
        self._body_path.unlink()
        return len(keys)

    def __enter__(self) -> "RecordsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._body.close()
        self._body_path.unlink(missing_ok=True)


def _append(out, source, size: int) -> None:
    """Copy `size` bytes of the open file `source` to the end of the open file `out` (in the kernel where it can)."""
    copy_range = getattr(os, "copy_file_range", None)
    copied = 0
    if copy_range is not None:
        try:
            while copied < size:
                n = copy_range(source.fileno(), out.fileno(), size - copied)
                if n == 0:
                    break
                copied += n
        except OSError:  # not supported between these files here: copy through user space instead
            pass
    if copied < size:
        source.seek(copied)
        out.seek(0, os.SEEK_END)
        shutil.copyfileobj(source, out, 1 << 20)


class RecordReader:
    """A version's result records by key: memory-mapped, and optionally decoded into an in-memory table."""

    def __init__(self, directory: Path, in_memory: bool | None = False, memory_budget: int | None = None) -> None:
        """Map a version's records; `in_memory` also decodes them into `rows` (None: when `estimated_memory()` fits
        `memory_budget`, default `default_records_memory_budget()`)."""
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
            raise IndexCorruptError(
                f"{index_path} holds {self.offsets.dtype} {self.offsets.shape}, not int64 offsets; rebuild the index version"
            )
        self._file = blob_path.open("rb")
        size = blob_path.stat().st_size
        self._blob = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self.path = blob_path
        first = self._read_header()
        self._spans = self._line_spans(size, first)
        self._span_view = memoryview(self._spans.reshape(-1))  # [start, end, start, end, ...] by key, as Python ints
        if in_memory is None:
            budget = default_records_memory_budget() if memory_budget is None else memory_budget
            in_memory = self.estimated_memory() <= budget
        # The in-memory table, by key (None for a key without a record, and one None past the last key): `rows` holds
        # (item_id, modality, labels, text, image_path), the static fields of the key's search hits, and `extras` its
        # extra fields. Kept apart because a tuple holding a dict stays tracked by Python's garbage collector, and a
        # full collection would then walk every row (~0.4 us each: 0.7 s at 2M rows); tuples of strings are untracked.
        # Both None when the records are read from the map.
        self.rows: list[tuple[Any, ...] | None] | None = None
        self.extras: list[dict[str, Any] | None] | None = None
        if in_memory:
            try:
                self.rows, self.extras = self._decode_rows(first, size)
            except BaseException:
                self.close()
                raise

    def estimated_memory(self) -> int:
        """Upper estimate of the bytes the in-memory table of these records takes (see _MEMORY_PER_ENTRY)."""
        return _MEMORY_PER_ENTRY * self.live_count() + _MEMORY_PER_JSON_BYTE * len(self._blob)

    def _decode_rows(self, first: int, size: int) -> tuple[list[tuple[Any, ...] | None], list[dict[str, Any] | None]]:
        """(rows, extras) by key (see __init__), from one decode of the whole file, each entry checked against the format."""
        data = self.path.read_bytes()  # a plain read: the table replaces the map, whose pages need not stay resident
        if len(data) != size:
            raise IndexCorruptError(
                f"{self.path} changed while it was being loaded; published versions never change: check the store"
            )
        live = np.flatnonzero(self.offsets >= 0)
        # each line must start where records.idx.npy says it does (the map path finds a mismatch when it slices)
        line_starts = np.flatnonzero(np.frombuffer(data, dtype=np.uint8)[first:] == ord("\n")) + (first + 1)
        if len(live) and (
            len(line_starts) != len(live) or line_starts[-1] != size or (self.offsets[live[1:]] != line_starts[:-1]).any()
        ):
            raise IndexCorruptError(
                f"{self.path.with_name(RECORDS_INDEX_FILE)} does not match {self.path} (the lines do not start "
                "at the recorded offsets); rebuild the index version"
            )
        body = data[first : size - 1].replace(b"\n", b",") if len(live) else b""
        del data
        try:
            entries = json.loads(b"[" + body + b"]")
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
            raise IndexCorruptError(
                f"{self.path} holds records that are not valid JSON ({exc}); rebuild the index version"
            ) from exc
        del body
        if len(entries) != len(live):  # a line holding more than one value
            raise IndexCorruptError(f"{self.path} holds {len(entries)} records for {len(live)} keys; rebuild the index version")
        modalities, label_sets = self.modality_names, self.label_sets
        try:
            # column by column, so that the loops run in C: 200,000 entries take ~0.3 s on top of the JSON decode
            if any(type(entry) is not list or len(entry) != 6 for entry in entries):
                raise ValueError("an entry is not a list of 6 fields")
            ids, modality_values, paths, texts, label_values, extras = (
                (list(column) for column in zip(*entries)) if entries else ([], [], [], [], [], [])
            )
            del entries
            if self.format == 1:
                modality_names = [modalities[modalities.index(m)] for m in modality_values]  # ValueError when unknown
                shared_labels: dict[tuple[str, ...], tuple[str, ...]] = {}
                labels = [shared_labels.setdefault(t, t) for t in map(tuple, label_values)]
            else:
                # negative or boolean indexes would pass Python's indexing and silently pick the wrong name
                if any(type(v) is not int or v < 0 for column in (modality_values, label_values) for v in column):
                    raise ValueError("a modality or label-set index is not a non-negative integer")
                modality_names = [modalities[m] for m in modality_values]
                labels = [label_sets[i] for i in label_values]
            bad = next((extra for extra in extras if type(extra) is not dict), None)
            if bad is not None:
                raise TypeError(f"extra fields {bad!r} are not a JSON object")
            if len(set(ids)) != len(ids):
                self._share_item_fields(ids, paths, texts, extras)
        except (IndexError, TypeError, ValueError) as exc:
            raise self.corrupt_entries(exc) from exc
        # one None past the last key, so that FAISS's -1 (no result) finds None too
        if not len(live) or live[-1] == len(live) - 1:  # keys 0..n-1 (nothing deleted): the columns are the table
            rows = list(zip(ids, modality_names, labels, texts, paths))
            rows.extend([None] * (len(self.offsets) + 1 - len(rows)))
            extras.extend([None] * (len(self.offsets) + 1 - len(extras)))
            return rows, extras
        rows: list[tuple[Any, ...] | None] = [None] * (len(self.offsets) + 1)
        by_key: list[dict[str, Any] | None] = [None] * (len(self.offsets) + 1)
        for key, row, extra in zip(live.tolist(), zip(ids, modality_names, labels, texts, paths), extras):
            rows[key] = row
            by_key[key] = extra
        return rows, by_key

    @staticmethod
    def _share_item_fields(ids: list[Any], paths: list[Any], texts: list[Any], extras: list[Any]) -> None:
        """Make the entries of one item (its image and its text side) share their id, path, text and extra objects.

        They carry the same values, so the second one reuses the first one's objects: that halves the table for a
        corpus indexed on both sides.
        """
        first_of: dict[Any, int] = {}
        for i, item_id in enumerate(ids):
            first = first_of.setdefault(item_id, i)
            if first != i and texts[first] == texts[i] and paths[first] == paths[i] and extras[first] == extras[i]:
                ids[i], paths[i], texts[i], extras[i] = ids[first], paths[first], texts[first], extras[first]

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
            raise IndexCorruptError(
                f"{self.path} is in records format {self.format}; this version of the library reads formats 1 "
                f"and {RECORDS_FORMAT}: upgrade it or rebuild the index version"
            )
        return end

    def _line_spans(self, size: int, first: int) -> np.ndarray:
        """(next key, 2) int64 [start, end) of each key's line without its newline; [-1, -1] for keys with no record."""
        live = np.flatnonzero(self.offsets >= 0)
        starts = self.offsets[live]
        # export_records writes the lines in ascending key order, each ending with a newline; anything else means the
        # files do not belong together (or records.jsonl was truncated)
        if len(starts) and (
            starts[0] != first or (np.diff(starts) <= 0).any() or starts[-1] >= size or self._blob[size - 1 : size] != b"\n"
        ):
            raise IndexCorruptError(
                f"{self.path.with_name(RECORDS_INDEX_FILE)} does not match {self.path} (offsets out of order or past "
                "the end); rebuild the index version"
            )
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
            text = b"[" + b",".join([blob[spans[2 * key] : spans[2 * key + 1]] for key in keys]) + b"]"
        except IndexError as exc:
            raise IndexCorruptError(
                f"{self.path}: key {max(keys)} is past the last record; index and metadata are out of step"
            ) from exc
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
        return IndexCorruptError(
            f"{self.path} holds entries that do not fit records format {self.format} ({exc!r}); rebuild the index version"
        )

    def _raise_unreadable(self, keys: np.ndarray) -> None:
        if (self._spans[keys][:, 0] < 0).any():
            raise self.missing_keys_error(keys.tolist())
        raise IndexCorruptError(
            f"{self.path}: the records of keys {keys[:5].tolist()}... are not valid JSON; rebuild the index version"
        )

    def missing_keys_error(self, keys: list[int]) -> IndexCorruptError:
        """The error for a search that returned keys with no record (or past the last one)."""
        if max(keys) >= len(self.offsets):
            return IndexCorruptError(f"{self.path}: key {max(keys)} is past the last record; index and metadata are out of step")
        missing = [key for key in keys if key < 0 or self.offsets[key] < 0]
        return IndexCorruptError(
            f"{self.path}: FAISS returned keys {missing[:5]}, which have no record; rebuild the index version"
        )

    def close(self) -> None:
        """Unmap the file (and drop the in-memory table)."""
        self.rows = self.extras = None
        self._span_view.release()
        if isinstance(self._blob, mmap.mmap):
            self._blob.close()
        self._file.close()
