"""Search library on real FAISS indexes of generated vectors, checked against exact brute force."""

from __future__ import annotations

import numpy as np
import pytest

from index.errors import IndexModelMismatchError, IndexStoreError
from index.search import SearchIndex
from tests.test_index_fixtures import DIM, brute_force, publish_clustered, single_thread_faiss, text_side  # noqa: F401


@pytest.fixture(scope="module")
def flat_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("flat")
    version, vectors, items, data = publish_clustered(root, n=3000, kind="flat")
    return root, vectors, items, data


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def test_flat_search_equals_brute_force(flat_root):
    root, vectors, items, data = flat_root
    index = SearchIndex.load(root)
    queries, _ = data.queries(20)
    keys = np.arange(len(items))
    rows = index.search_vectors(queries, k=10, target="image")
    ref_scores, ref_keys = brute_force(queries, vectors, keys, 10)
    for row, s, kk in zip(rows, ref_scores, ref_keys):
        assert [h.id for h in row] == [items[k].id for k in kk]
        np.testing.assert_allclose([h.score for h in row], s, atol=1e-5)
        assert all(h.modality == "image" for h in row)
    # text vectors were stored after the images, so their keys start at n
    rows = index.search_vectors(queries, k=5, target="text")
    _, ref_keys = brute_force(queries, text_side(vectors), keys, 5)
    assert [[h.id for h in r] for r in rows] == [[items[k].id for k in kk] for kk in ref_keys]
    assert rows[0][0].key >= len(items)


def test_hits_carry_metadata(flat_root):
    root, vectors, items, _ = flat_root
    hit = SearchIndex.load(root).search_vectors(vectors[7], k=1)[0][0]
    assert (hit.id, hit.labels, hit.text, hit.extra) == (items[7].id, items[7].labels, items[7].text, items[7].extra)
    assert hit.score == pytest.approx(1.0, abs=1e-5)


def test_batch_equals_single_queries(flat_root):
    root, _, _, data = flat_root
    index = SearchIndex.load(root)
    queries, _ = data.queries(8, stream=1)
    batch = index.search_vectors(queries, k=7, target="both", labels=["label03", "label05"])
    single = [index.search_vectors(q[None, :], k=7, target="both", labels=["label03", "label05"])[0] for q in queries]
    # same hits; scores equal up to float32 rounding (BLAS sums a batch in another order than a single row)
    assert [[h.key for h in r] for r in batch] == [[h.key for h in r] for r in single]
    np.testing.assert_allclose([[h.score for h in r] for r in batch], [[h.score for h in r] for r in single], atol=1e-6)


def test_both_merges_modalities_by_score(flat_root):
    root, vectors, items, data = flat_root
    index = SearchIndex.load(root)
    queries, _ = data.queries(5, stream=2)
    both = index.search_vectors(queries, k=10, target="both")
    all_vectors = np.concatenate([vectors, text_side(vectors)])
    ref_scores, ref_keys = brute_force(queries, all_vectors, np.arange(2 * len(items)), 10)
    for row, s, kk in zip(both, ref_scores, ref_keys):
        np.testing.assert_allclose([h.score for h in row], s, atol=1e-5)
        assert [h.key for h in row] == kk.tolist()
        assert [h.modality for h in row] == ["image" if k < len(items) else "text" for k in kk]


@pytest.mark.parametrize("labels", [["label00"], ["label02", "label07"]])
def test_label_filter_flat_is_exact_on_both_paths(flat_root, labels):
    root, vectors, items, data = flat_root
    allowed = np.array([i for i, it in enumerate(items) if set(it.labels) & set(labels)])
    queries, _ = data.queries(6, stream=3)
    _, ref_keys = brute_force(queries, vectors[allowed], allowed, 10)
    # exact-subset path (small allowed set) and FAISS-selector path (threshold below the set size) agree with brute force
    for threshold in (10**6, 10):
        index = SearchIndex.load(root, exact_subset_max=threshold)
        rows = index.search_vectors(queries, k=10, labels=labels)
        assert [[h.id for h in r] for r in rows] == [[items[k].id for k in kk] for kk in ref_keys]
        assert all(set(h.labels) & set(labels) for r in rows for h in r)


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_label_filter_returns_k_on_approximate_indexes(tmp_path, kind):
    root = tmp_path / kind
    options = {"factory": "IVF64,PQ16x4"} if kind == "ivfpq" else {}
    _, vectors, items, data = publish_clustered(root, n=8000, kind=kind, with_text=False, **options)
    queries, _ = data.queries(20, stream=4)
    for threshold in (10**6, 50):  # exact-subset and selector (+ widening / fallback) paths
        index = SearchIndex.load(root, exact_subset_max=threshold)
        # a label held by ~10% of the items, and a tiny ad-hoc set that an unfiltered approximate search would miss
        for labels in (["label04"], ["label09"]):
            n_allowed = sum(1 for it in items if labels[0] in it.labels)
            rows = index.search_vectors(queries, k=25, labels=labels)
            assert all(len(r) == min(25, n_allowed) for r in rows)
            assert all(labels[0] in h.labels for r in rows for h in r)
            assert all(len({h.id for h in r}) == len(r) for r in rows)


def test_label_filter_with_fewer_matches_than_k(tmp_path):
    from index.build import IndexConfig, publish_version
    from index.shards import ArraySource
    from tests.test_index_fixtures import clustered_items

    vectors, items, _ = clustered_items(500)
    items = [it if i % 100 else type(it)(it.id, it.image_path, it.text, ("rare",), it.extra) for i, it in enumerate(items)]
    publish_version(tmp_path, ArraySource({"image": (vectors, items)}, DIM), "h" * 64, IndexConfig(index_type="hnsw"))
    rows = SearchIndex.load(tmp_path, exact_subset_max=2).search_vectors(vectors[:3], k=10, labels=["rare"])
    assert [len(r) for r in rows] == [5, 5, 5]
    assert {h.id for h in rows[0]} == {items[i].id for i in range(0, 500, 100)}


def test_approximate_indexes_recall(tmp_path):
    results = {}
    for kind in ("hnsw", "ivfpq"):
        root = tmp_path / kind
        options = {"factory": "IVF64,PQ16x4", "nprobe": 16} if kind == "ivfpq" else {}
        _, vectors, items, data = publish_clustered(root, n=8000, kind=kind, with_text=False, **options)
        queries, _ = data.queries(50, stream=5)
        _, truth = brute_force(queries, vectors, np.arange(len(items)), 10)
        _, found = SearchIndex.load(root).search_keys(queries, k=10)
        results[kind] = recall_at(found, truth)
    assert results["hnsw"] >= 0.9, results
    assert results["ivfpq"] >= 0.5, results


def test_k_larger_than_collection(tmp_path):
    publish_clustered(tmp_path, n=30, kind="flat")
    rows = SearchIndex.load(tmp_path).search_vectors(np.ones((2, DIM), np.float32), k=100, target="both")
    assert [len(r) for r in rows] == [60, 60]
    assert all(a.score >= b.score for r in rows for a, b in zip(r, r[1:]))


def test_bad_queries_are_refused(flat_root):
    root = flat_root[0]
    index = SearchIndex.load(root)
    with pytest.raises(ValueError, match="unknown labels"):
        index.search_vectors(np.ones(DIM, np.float32), labels=["no-such-label"])
    with pytest.raises(ValueError, match="shape"):
        index.search_vectors(np.ones((1, DIM + 1), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        index.search_vectors(np.full((1, DIM), np.nan, np.float32))
    with pytest.raises(ValueError, match="target"):
        index.search_vectors(np.ones(DIM, np.float32), target="video")
    with pytest.raises(IndexStoreError, match="no encoder"):
        index.search_text("a fish")


class _OtherModel:
    """Attributes of an encoder that did not build the index."""

    def __init__(self, content_hash: str, dim: int) -> None:
        self.content_hash, self.dim = content_hash, dim


def test_model_mismatch_is_refused(flat_root):
    root = flat_root[0]
    built = SearchIndex.load(root).model_hash
    with pytest.raises(IndexModelMismatchError, match="built by model"):
        SearchIndex.load(root, expected_model_hash="0" * 64)
    with pytest.raises(IndexModelMismatchError, match="32-d"):
        SearchIndex.load(root, expected_dim=1024)
    with pytest.raises(IndexModelMismatchError, match="Rebuild the index"):
        SearchIndex.load(root, encoder=_OtherModel("1" * 64, DIM))
    with pytest.raises(IndexModelMismatchError):
        SearchIndex.load(root, encoder=_OtherModel(built, DIM + 1))
    assert SearchIndex.load(root, expected_model_hash=built, expected_dim=DIM).model_hash == built


def test_concurrent_searches_agree(flat_root):
    from concurrent.futures import ThreadPoolExecutor

    root, _, _, data = flat_root
    index = SearchIndex.load(root)
    queries, _ = data.queries(16, stream=6)
    expected = [index.search_vectors(q, k=5, labels=["label01"]) for q in queries]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda q: index.search_vectors(q, k=5, labels=["label01"]), queries))
    assert got == expected


def test_both_merges_by_calibrated_relevance_when_the_query_modality_is_known(flat_root):
    """A calibration that rates image scores far below text scores lets the texts in; each modality keeps its order."""
    from model.calibration import ScoreCalibration

    root, vectors, items, data = flat_root
    index = SearchIndex.load(root)
    queries, _ = data.queries(5, stream=3)
    raw = index.search_vectors(queries, k=20, target="both")
    calibration = ScoreCalibration({"text->image": (10.0, -8.0), "text->text": (10.0, 0.0)})
    merged = index.search_vectors(queries, k=20, target="both", query_modality="text", calibration=calibration)
    images = index.search_vectors(queries, k=20, target="image")
    texts = index.search_vectors(queries, k=20, target="text")
    for row_raw, row, img, txt in zip(raw, merged, images, texts):
        rel = [calibration.relevance("text", h.modality, [h.score])[0] for h in row]
        assert rel == sorted(rel, reverse=True)  # ordered by calibrated relevance
        assert [h.key for h in row if h.modality == "image"] == [h.key for h in img][: sum(h.modality == "image" for h in row)]
        assert [h.key for h in row if h.modality == "text"] == [h.key for h in txt][: sum(h.modality == "text" for h in row)]
        assert sum(h.modality == "text" for h in row) > sum(h.modality == "text" for h in row_raw)
    # no query modality (or no calibration): the raw-score merge as before
    assert [[h.key for h in r] for r in index.search_vectors(queries, k=20, target="both", calibration=calibration)] == [
        [h.key for h in r] for r in raw
    ]


def _mapped_bytes(path) -> int:
    """Bytes of `path` this process maps (from /proc/self/maps; 0 when not mapped)."""
    total = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5] == str(path):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                total += end - start
    return total


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_mmap_vectors_gives_the_same_hits_as_a_loaded_copy(tmp_path, kind):
    """SearchIndex.load(mmap_vectors=True) maps the stored vectors from the index file (shared between processes)
    and answers exactly as the copy in memory: same keys and same scores, filtered or not, every target."""
    version, vectors, items, data = publish_clustered(tmp_path, n=3000, kind=kind)
    copied = SearchIndex.load(tmp_path)
    mapped = SearchIndex.load(tmp_path, mmap_vectors=True)
    image_file = mapped.path / mapped.manifest["modalities"]["image"]["file"]
    # the vectors are mapped, not read: at least the image vectors' bytes of the file are in this process's maps
    assert _mapped_bytes(image_file.resolve()) >= vectors.nbytes
    queries, _ = data.queries(12, stream=2)
    for target, labels in [
        ("image", None),
        ("text", None),
        ("both", None),
        ("image", ["label02"]),
        ("both", ["label04", "label07"]),
    ]:
        expected = copied.search_keys(queries, 10, target, labels)
        got = mapped.search_keys(queries, 10, target, labels)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[0], expected[0])
    single = [mapped.search_vectors(q, k=5, target="text")[0] for q in queries]
    assert single == [copied.search_vectors(q, k=5, target="text")[0] for q in queries]
