"""Result records: read back exactly (non-ASCII text, where byte and character lengths differ), identical hits from the
in-memory table and from the memory map (checked against the SQLite metadata), and damage detected."""

import gc
import json
import re
import weakref

import numpy as np
import pytest

from index.errors import IndexCorruptError
from index.metadata import EntryRecord, MetadataStore
from index.records import RECORDS_FILE, RECORDS_INDEX_FILE, RecordReader, export_records
from index.search import SearchIndex
from index.store import MANIFEST_FILE, METADATA_FILE, resolve_version, write_manifest
from tests.test_index_fixtures import clustered_items, publish_clustered, single_thread_faiss  # noqa: F401


def test_non_ascii_records_round_trip(tmp_path):
    store = MetadataStore.create(tmp_path / "metadata.sqlite")
    rows = [
        EntryRecord(0, "u1f600", "image", "/c/😀.png", None, ("Smileys & Emotion",), {"emoji": "😀"}),
        EntryRecord(1, "café", "text", None, "grinning face — 笑顔", ("Smileys & Emotion",), {"emoji": "😀"}),
        EntryRecord(2, "plain", "text", None, "plain ascii", ("Objects",), {}),
    ]
    store.insert(rows)
    assert export_records(store, tmp_path) == 3
    reader = RecordReader(tmp_path)
    got = reader.fetch(np.array([1, 0, 2]))
    assert got[0] == ["café", "text", None, "grinning face — 笑顔", ["Smileys & Emotion"], {"emoji": "😀"}]
    assert got[1][0] == "u1f600" and got[1][2] == "/c/😀.png" and got[2][3] == "plain ascii"
    reader.close()
    table = RecordReader(tmp_path, in_memory=True)
    assert table.rows[1] == ("café", "text", ("Smileys & Emotion",), "grinning face — 笑顔", None)
    assert table.rows[0][4] == "/c/😀.png" and table.extras[0] == table.extras[1] == {"emoji": "😀"} and table.extras[2] == {}
    table.close()
    store.close()


# ---------------------------------------------------------------------------------------------- in memory and mapped


@pytest.fixture()
def version(tmp_path):
    """A small published version with image and text vectors (keys 0..299 images, 300..599 texts)."""
    return publish_clustered(tmp_path / "root", n=300, kind="flat")[0]


def entry_lines(version):
    """(header line or b'', entry lines) of a version's records.jsonl."""
    lines = (version / RECORDS_FILE).read_bytes().splitlines(keepends=True)
    return (lines[0], lines[1:]) if lines[0].startswith(b"{") else (b"", lines)


def rewrite_records(version, header: bytes, lines: list[bytes], keys: list[int]) -> None:
    """Write records.jsonl from `lines` (for `keys`) and the matching records.idx.npy, as export_records does."""
    offsets = np.full(int(np.load(version / RECORDS_INDEX_FILE).shape[0]), -1, dtype=np.int64)
    position = len(header)
    for key, line in zip(keys, lines):
        offsets[key] = position
        position += len(line)
    (version / RECORDS_FILE).write_bytes(header + b"".join(lines))
    np.save(version / RECORDS_INDEX_FILE, offsets)
    restamp(version)


def restamp(version) -> None:
    """Rewrite the manifest for the files as they are now, so that the damage is not caught by size or sha256 checks."""
    manifest = json.loads((version / MANIFEST_FILE).read_text())
    write_manifest(version, {k: v for k, v in manifest.items() if k not in ("format_version", "files", "checksum")})


def reference_hits(version, rows):
    """The slow, obvious reference: each hit's fields fetched from the SQLite metadata, the source of truth."""
    store = MetadataStore(version / METADATA_FILE)
    records = store.fetch([h.key for row in rows for h in row])
    store.close()
    return [
        [
            (
                records[h.key].item_id,
                h.score,
                records[h.key].modality,
                records[h.key].labels,
                records[h.key].text,
                records[h.key].source_path,
                records[h.key].extra,
                h.key,
            )
            for h in row
        ]
        for row in rows
    ]


def search_all_ways(index, queries):
    """Hits of `queries` through every path that builds results: targets, label filter, k past the collection."""
    return [
        index.search_vectors(queries, k=10, target="image"),
        index.search_vectors(queries, k=7, target="both"),
        index.search_vectors(queries[:3], k=5, target="text", labels=["label02", "label05"]),
        index.search_vectors(queries[:2], k=1000, target="both"),
    ]


@pytest.mark.parametrize("records_format", [2, 1, "deleted"])
def test_in_memory_and_mapped_records_give_identical_hits(version, records_format):
    if records_format == "deleted":  # a later version: keys of deleted items have no record (the table has gaps)
        from index.update import delete_items

        delete_items(version.parents[1], [f"vec{i}" for i in range(0, 300, 7)])
        version = resolve_version(version.parents[1])
    elif records_format == 1:  # a version published before records format 2: no header, fields stored decoded
        store = MetadataStore(version / METADATA_FILE)
        rows = list(store.iter_rows())
        store.close()
        lines = [
            (
                json.dumps([item_id, modality, path, text, json.loads(labels), json.loads(extra)], ensure_ascii=False) + "\n"
            ).encode()
            for _, item_id, modality, path, text, labels, extra in rows
        ]
        rewrite_records(version, b"", lines, [row[0] for row in rows])
    _, _, data = clustered_items(300)
    queries, _ = data.queries(12, stream=7)
    in_memory = SearchIndex.load(version, verify=False, records_in_memory=True)
    mapped = SearchIndex.load(version, verify=False, records_in_memory=False)
    assert in_memory.records.rows is not None and mapped.records.rows is None
    assert in_memory.records.format == mapped.records.format == (2 if records_format == "deleted" else records_format)
    got_memory, got_mapped = search_all_ways(in_memory, queries), search_all_ways(mapped, queries)
    assert got_memory == got_mapped
    for rows in got_memory:
        assert [[tuple(h) for h in row] for row in rows] == reference_hits(version, rows)
        assert all(type(h.labels) is tuple and type(h.extra) is dict for row in rows for h in row)
    live = 600 - 2 * len(range(0, 300, 7)) if records_format == "deleted" else 600
    assert sum(len(row) for rows in got_memory for row in rows) == 12 * 10 + 12 * 7 + 3 * 5 + 2 * live
    # the image and the text entry of an item share their field objects in memory
    rows = in_memory.records.rows
    assert (
        rows[1][0] is rows[301][0] and rows[1][3] is rows[301][3] and in_memory.records.extras[1] is in_memory.records.extras[301]
    )
    assert search_all_ways(in_memory, queries) == got_memory  # and again, from the same table
    in_memory.close()
    mapped.close()


def test_automatic_choice_follows_the_memory_budget(version):
    reader = RecordReader(version, in_memory=None)  # default budget: an eighth of the memory, ample for 600 entries
    assert reader.rows is not None and len(reader.rows) == 601 and reader.rows[-1] is None
    needed = reader.estimated_memory()
    assert 600 * 400 < needed < 600 * 400 + 3 * (version / RECORDS_FILE).stat().st_size
    reader.close()
    assert RecordReader(version, in_memory=None, memory_budget=needed).rows is not None
    assert RecordReader(version, in_memory=None, memory_budget=needed - 1).rows is None
    for budget in (0, None):
        index = SearchIndex.load(version, records_memory_budget=budget)
        assert (index.records.rows is None) == (budget == 0)
        index.close()


@pytest.mark.parametrize("in_memory", [True, False])
def test_a_dropped_index_is_freed_without_the_garbage_collector(version, in_memory):
    # the service drops the old index on a hot reload: its FAISS index and records must go at once, not at the next
    # full collection (no reference cycle through the instance)
    index = SearchIndex.load(version, records_in_memory=in_memory)
    assert hit_of_key(index, 3).key == 3
    dropped = weakref.ref(index)
    gc.disable()
    try:
        del index
        assert dropped() is None
    finally:
        gc.enable()


def test_a_closed_index_no_longer_answers_from_its_table(version):
    index = SearchIndex.load(version, records_in_memory=True)
    index.close()
    with pytest.raises(ValueError):  # the released record map
        hit_of_key(index, 3)


def damage_entry(version, key: int, change) -> None:
    """Replace the records line of `key` by change(line), rewriting the offsets so that they still match the lines."""
    header, lines = entry_lines(version)
    lines[key] = change(lines[key])
    rewrite_records(version, header, lines, list(range(len(lines))))


def hit_of_key(index, key: int):
    """Search for the stored vector of `key`: its own hit comes first."""
    return index.search_vectors(index.faiss_index("image").reconstruct(key), k=1)[0][0]


@pytest.mark.parametrize(
    "change, problem, map_notices",
    [
        (lambda line: line.replace(b'"vec', b'"vec\xff', 1), "not valid JSON", True),  # not UTF-8
        (lambda line: line.replace(b"[", b"{", 1), "not valid JSON", True),  # not JSON
        (lambda line: line[:-1] + b"[1]\n", "2 records for 1|valid JSON", True),  # two values on a line
        (lambda line: line.replace(b",null,", b",null,0,", 1), "do not fit", True),  # a field too many
        (lambda line: re.sub(rb",\d+,\{", b",29,{", line, count=1), "do not fit", True),  # label set past the header
        (lambda line: re.sub(rb",\d+,\{", b",-1,{", line, count=1), "non-negative integer", False),  # negative label-set index
        (lambda line: line.replace(b'{"cluster": 32}', b'["cluster", 32]'), "not a JSON object", False),  # extra not an object
    ],
)
def test_damaged_entries_are_detected_at_load_in_memory_and_at_search_when_mapped(version, change, problem, map_notices):
    damage_entry(version, 5, change)
    with pytest.raises(IndexCorruptError, match=problem):
        SearchIndex.load(version, verify=False, records_in_memory=True)
    # the map reads an entry only when a search returns its key; undamaged keys still answer
    mapped = SearchIndex.load(version, verify=False, records_in_memory=False)
    assert hit_of_key(mapped, 40).id == "vec40"
    if map_notices:
        with pytest.raises(IndexCorruptError):
            hit_of_key(mapped, 5)
    mapped.close()


@pytest.mark.parametrize("in_memory", [True, False])
def test_records_that_do_not_match_their_offsets_are_refused_at_load(version, in_memory):
    records = version / RECORDS_FILE
    data = records.read_bytes()
    records.write_bytes(data[:-40])  # truncated
    restamp(version)
    with pytest.raises(IndexCorruptError, match="does not match"):
        SearchIndex.load(version, verify=False, records_in_memory=in_memory)
    records.write_bytes(data)
    offsets = np.load(version / RECORDS_INDEX_FILE)
    offsets[offsets >= 0] = offsets[offsets >= 0][::-1]  # the lines of other keys
    np.save(version / RECORDS_INDEX_FILE, offsets)
    restamp(version)
    with pytest.raises(IndexCorruptError, match="does not match"):
        SearchIndex.load(version, verify=False, records_in_memory=in_memory)


def test_a_line_moved_inside_the_file_is_refused_at_load_in_memory(version):
    header, lines = entry_lines(version)
    lines[10] = lines[10].replace(b"[", b"[ ", 1)  # still valid JSON, but every later line starts one byte later
    (version / RECORDS_FILE).write_bytes(header + b"".join(lines))
    restamp(version)
    with pytest.raises(IndexCorruptError, match="do not start at the recorded offsets"):
        SearchIndex.load(version, verify=False, records_in_memory=True)
    mapped = SearchIndex.load(version, verify=False, records_in_memory=False)
    with pytest.raises(IndexCorruptError, match="valid JSON"):
        hit_of_key(mapped, 11)
    mapped.close()


@pytest.mark.parametrize("in_memory", [True, False])
def test_keys_without_a_record_are_reported_at_search(version, in_memory):
    index = SearchIndex.load(version, records_in_memory=in_memory)
    header, lines = entry_lines(version)
    keys = list(range(len(lines)))
    del lines[3], keys[3]  # key 3's record is gone while FAISS still holds its vector
    rewrite_records(version, header, lines, keys)
    with pytest.raises(IndexCorruptError, match="result records but"):  # the load compares counts with the metadata
        SearchIndex.load(version, verify=False)
    index.records.close()
    # as if the counts had agreed
    index = SearchIndex(index.path, index.manifest, index._indexes, index.metadata, RecordReader(version, in_memory=in_memory))
    assert hit_of_key(index, 4).id == "vec4"
    with pytest.raises(IndexCorruptError, match=r"keys \[3\], which have no record"):
        hit_of_key(index, 3)
    with pytest.raises(IndexCorruptError, match="past the last record"):
        index._hits(np.ones((1, 1), np.float32), np.array([[600]]))
