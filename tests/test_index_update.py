"""Add and delete by id without a rebuild: FAISS index and SQLite metadata stay in step, for flat, HNSW and IVF-PQ."""

from __future__ import annotations

import numpy as np
import pytest

from index import faiss_index as fi
from index.errors import IndexModelMismatchError, IndexStoreError
from index.metadata import MetadataStore
from index.search import SearchIndex
from index.store import METADATA_FILE, list_versions, load_manifest, read_current
from index.update import add_embedded, delete_items
from model.corpus import Item
from tests.test_index_fixtures import DIM, brute_force, publish_clustered, single_thread_faiss, text_side  # noqa: F401

KINDS = {"flat": {"kind": "flat"}, "hnsw": {"kind": "hnsw"}, "ivfpq": {"factory": "IVF32,PQ16x4", "nprobe": 32}}


def assert_consistent(root) -> SearchIndex:
    """Every live metadata row has its vector in FAISS, FAISS holds nothing else but tombstones, counts agree."""
    index = SearchIndex.load(root)
    meta = MetadataStore(index.path / METADATA_FILE)
    manifest = load_manifest(index.path)
    for modality in index.modalities:
        faiss_index = index.faiss_index(modality)
        live, tombs = meta.all_keys(modality), meta.tombstones(modality)
        assert faiss_index.ntotal == len(live) + len(tombs)
        assert not set(live.tolist()) & set(tombs.tolist())
        assert manifest["counts"][modality] == len(live) == index.count(modality)
        # the result records (derived from SQLite) hold exactly the live rows, with the same content
        rows = meta.fetch(live.tolist())
        for key, record in zip(live.tolist(), index.records.fetch(live)):
            row = rows[key]
            assert record == [row.item_id, row.modality, row.source_path, row.text, list(row.labels), row.extra]
        if len(live):
            assert fi.reconstruct_keys(faiss_index, live).shape == (len(live), DIM)  # every live key is in FAISS
        # an unfiltered search over everything returns only live keys
        _, keys = index.search_keys(np.eye(DIM, dtype=np.float32)[:4], k=min(50, len(live) or 1), target=modality)
        assert set(keys[keys >= 0].tolist()) <= set(live.tolist())
    return index


@pytest.mark.parametrize("kind", list(KINDS))
def test_delete_then_add(tmp_path, kind):
    version0, vectors, items, data = publish_clustered(tmp_path, n=3000, **KINDS[kind])
    doomed = [items[i].id for i in range(0, 3000, 7)]
    delete_items(tmp_path, doomed)
    index = assert_consistent(tmp_path)
    assert index.count("image") == index.count("text") == 3000 - len(doomed)
    # deleted items are found by no search: not by their own vector, not through a label filter
    rows = index.search_vectors(vectors[0:3000:7][:50], k=10, target="both")
    assert not {h.id for r in rows for h in r} & set(doomed)
    rows = index.search_vectors(vectors[0:3000:7][:50], k=10, labels=[items[0].labels[0]])
    assert not {h.id for r in rows for h in r} & set(doomed)
    if kind == "hnsw":  # HNSW cannot remove: the vectors stay as tombstones that searches skip
        assert load_manifest(index.path)["modalities"]["image"]["tombstones"] == len(doomed)

    # new items: found first by their own vectors (they are copies of existing directions with a twist)
    new_vectors = vectors[1:6] + 0.05
    new_items = [Item(f"new{i}", f"/new/{i}.jpg", f"new item {i}", ("label00",), {"batch": 2}) for i in range(5)]
    add_embedded(tmp_path, {"image": (new_vectors, new_items), "text": (text_side(new_vectors), new_items)}, "m" * 64)
    index = assert_consistent(tmp_path)
    assert index.count("image") == 3000 - len(doomed) + 5
    rows = index.search_vectors(new_vectors, k=1, target="image")
    if kind != "ivfpq":  # PQ codes are approximate: the top hit of a near-duplicate may be its neighbour
        assert [r[0].id for r in rows] == [it.id for it in new_items]
    assert {h.id for h in index.search_vectors(new_vectors, k=10, labels=["label00"])[0]} >= {"new0"}
    hit = next(h for h in index.search_vectors(new_vectors[:1], k=5)[0] if h.id == "new0")
    assert (hit.labels, hit.text, hit.image_path, hit.extra) == (("label00",), "new item 0", "/new/0.jpg", {"batch": 2})

    # the original version was never touched
    original = SearchIndex.load(version0)
    assert original.count("image") == 3000
    assert len(list_versions(tmp_path)) == 3


def test_flat_results_after_updates_equal_brute_force(tmp_path):
    _, vectors, items, data = publish_clustered(tmp_path, n=1000, kind="flat", with_text=False)
    delete_items(tmp_path, [it.id for it in items[:500]])
    extra = data.queries(100, stream=9)[0]
    extra_items = [Item(f"x{i}", None, f"x {i}", ("label01",), {}) for i in range(100)]
    add_embedded(tmp_path, {"image": (extra, extra_items)}, "m" * 64)
    index = assert_consistent(tmp_path)
    pool = np.concatenate([vectors[500:], extra])
    pool_ids = [it.id for it in items[500:]] + [it.id for it in extra_items]
    queries = data.queries(10, stream=10)[0]
    _, ref = brute_force(queries, pool, np.arange(len(pool)), 10)
    got = index.search_vectors(queries, k=10)
    assert [[h.id for h in r] for r in got] == [[pool_ids[k] for k in kk] for kk in ref]


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_replace_updates_vector_and_metadata(tmp_path, kind):
    _, vectors, items, _ = publish_clustered(tmp_path, n=500, kind=kind, with_text=False)
    with pytest.raises(IndexStoreError, match="already indexed"):
        add_embedded(tmp_path, {"image": (vectors[:1], items[:1])}, "m" * 64)
    moved = Item(items[0].id, "/moved.jpg", "moved", ("label09",), {})
    target = vectors[250:251]
    add_embedded(tmp_path, {"image": (target, [moved])}, "m" * 64, replace=True)
    index = assert_consistent(tmp_path)
    assert index.count("image") == 500
    hits = index.search_vectors(target, k=2)[0]
    assert {h.id for h in hits} == {items[0].id, items[250].id}
    assert next(h for h in hits if h.id == items[0].id).text == "moved"


def test_failed_update_changes_nothing(tmp_path):
    _, vectors, items, _ = publish_clustered(tmp_path, n=200)
    before, versions = read_current(tmp_path), list_versions(tmp_path)
    with pytest.raises(IndexStoreError, match="not in index version"):
        delete_items(tmp_path, [items[0].id, "no-such-id"])
    with pytest.raises(IndexModelMismatchError, match="built by model"):
        add_embedded(tmp_path, {"image": (vectors[:1], [Item("n", None, "n", ("label00",), {})])}, "other" * 8)
    with pytest.raises(IndexModelMismatchError, match="dimension"):
        add_embedded(tmp_path, {"image": (np.ones((1, DIM + 2), np.float32), [Item("n", None, "n", ("label00",), {})])}, "m" * 64)
    assert read_current(tmp_path) == before and list_versions(tmp_path) == versions
    assert SearchIndex.load(tmp_path).count("image") == 200
    delete_items(tmp_path, [items[0].id, "no-such-id"], missing_ok=True)
    assert SearchIndex.load(tmp_path).count("image") == 199


def test_delete_one_modality_only(tmp_path):
    _, _, items, _ = publish_clustered(tmp_path, n=100)
    delete_items(tmp_path, [items[3].id], modalities=("text",))
    index = assert_consistent(tmp_path)
    assert (index.count("image"), index.count("text")) == (100, 99)


def test_add_creates_a_missing_modality(tmp_path):
    _, vectors, items, _ = publish_clustered(tmp_path, n=100, with_text=False)
    add_embedded(tmp_path, {"text": (text_side(vectors[:10]), items[:10])}, "m" * 64)
    index = assert_consistent(tmp_path)
    assert index.count("text") == 10
    assert index.search_vectors(text_side(vectors[:1]), k=1, target="text")[0][0].id == items[0].id
