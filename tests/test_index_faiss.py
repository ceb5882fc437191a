"""Index construction: the automatic choice, factory strings, removal support, GPU/CPU agreement."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from index import faiss_index as fi
from index.search import SearchIndex
from tests.test_index_fixtures import brute_force, clustered_items, publish_clustered, single_thread_faiss  # noqa: F401

GiB = 2**30


def test_auto_choice_follows_size_and_budget():
    assert fi.choose_index_spec(10_000, 1024, "auto", memory_budget_bytes=8 * GiB).kind == "flat"
    # a million 1024-d vectors: 4 GiB as flat; past the exact-search size, HNSW when its graph fits too
    assert fi.choose_index_spec(10**6, 1024, "auto", memory_budget_bytes=8 * GiB).factory == "HNSW32"
    spec = fi.choose_index_spec(10**6, 1024, "auto", memory_budget_bytes=1 * GiB)
    assert spec.kind == "ivfpq" and spec.factory == "IVF1024,PQ128" and spec.nprobe == 32
    tight = fi.choose_index_spec(10**6, 1024, "auto", memory_budget_bytes=100 * 2**20)
    m = int(tight.factory.split("PQ")[1])
    assert m < 128 and 1024 % m == 0
    assert fi.estimate_index_bytes("ivfpq", 10**6, 1024, nlist=1024, pq_m=m) <= 100 * 2**20
    with pytest.raises(ValueError, match="memory budget"):
        fi.choose_index_spec(10**6, 1024, "auto", memory_budget_bytes=2**20)
    # past the exact-search size but too few vectors to train PQ: flat when HNSW's graph does not fit but the vectors do
    flat_bytes = fi.estimate_index_bytes("flat", 5000, 1024)
    assert fi.choose_index_spec(5000, 1024, "auto", memory_budget_bytes=flat_bytes, exact_max_vectors=1000).kind == "flat"
    assert fi.choose_index_spec(5000, 1024, "auto", memory_budget_bytes=GiB, exact_max_vectors=1000).kind == "hnsw"


def test_named_kinds_and_factory_strings():
    assert fi.choose_index_spec(100, 64, "flat").factory == "Flat"
    assert fi.choose_index_spec(100, 64, "hnsw", hnsw_m=16).factory == "HNSW16"
    assert fi.choose_index_spec(100_000, 64, "ivfpq").factory == "IVF256,PQ8"
    spec = fi.choose_index_spec(100, 64, factory="IVF16,PQ8x4")
    assert (spec.kind, spec.factory, spec.nprobe) == ("ivfpq", "IVF16,PQ8x4", 8)
    assert fi.choose_index_spec(100, 64, factory="IDMap2,HNSW8").factory == "HNSW8"
    assert fi.choose_index_spec(100, 64, factory="OPQ8,IVF16,PQ8").kind == "custom"
    with pytest.raises(ValueError, match="unknown index type"):
        fi.choose_index_spec(100, 64, "annoy")
    with pytest.raises(ValueError, match="factory string"):
        fi.create_index(fi.IndexSpec("custom", "NoSuchIndex12"), 64)


@pytest.mark.parametrize(
    "factory,removable",
    [
        ("Flat", True),
        ("HNSW8", False),
        ("IVF16,PQ8x4", True),
        ("IVF16,Flat", True),
        ("PCA16,IVF16,Flat", True),
        ("IVF16,PQ8x4,RFlat", False),
    ],
)
def test_every_index_takes_our_keys_and_reconstructs(factory, removable):
    vectors, _, _ = clustered_items(2000)
    index = fi.create_index(fi.choose_index_spec(2000, 32, factory=factory), 32)
    fi.train_index(index, vectors, use_gpu=False)
    keys = np.arange(10_000, 12_000, dtype=np.int64)  # not 0..n-1: ids are ours
    fi.add_with_keys(index, vectors, keys)
    _, found = index.search(vectors[:20], 1)
    assert np.isin(found, keys).all()
    assert np.mean(found[:, 0] == keys[:20]) >= (
        0.5 if ("PQ" in factory or "PCA" in factory) else 0.9
    )  # lossy codes may swap neighbours
    assert fi.reconstruct_keys(index, keys[:3]).shape == (3, 32)
    assert fi.supports_removal(index) is removable
    if removable:
        assert fi.remove_keys(index, keys[:100]) == 100 and index.ntotal == 1900
        _, found = index.search(vectors[:100], 5)
        assert not set(found.ravel().tolist()) & set(keys[:100].tolist())


def test_flat_equals_brute_force():
    vectors, _, data = clustered_items(3000)
    index = fi.create_index(fi.IndexSpec("flat", "Flat"), 32)
    fi.add_with_keys(index, vectors, np.arange(3000))
    queries = fi.normalise_rows(data.queries(30)[0])
    scores, keys = index.search(queries, 10)
    ref_scores, ref_keys = brute_force(queries, vectors, np.arange(3000), 10)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert (keys == ref_keys).mean() > 0.99  # float32 vs float64 may swap exact ties


@pytest.mark.skipif(not fi.gpu_available(), reason="needs FAISS with GPU support and a GPU (this machine: faiss-cpu, no GPU)")
def test_gpu_search_matches_cpu():
    vectors, _, data = clustered_items(5000)
    for factory in ("Flat", "IVF64,Flat"):
        index = fi.create_index(fi.choose_index_spec(5000, 32, factory=factory, nprobe=64), 32)
        fi.train_index(index, vectors)
        fi.add_with_keys(index, vectors, np.arange(5000))
        queries = fi.normalise_rows(data.queries(50)[0])
        cpu_scores, cpu_keys = index.search(queries, 10)
        gpu = fi.GpuSearcher.try_create(index)
        assert gpu is not None
        gpu_scores, gpu_keys = gpu.search(queries, 10)
        np.testing.assert_allclose(gpu_scores, cpu_scores, atol=1e-4)
        assert (gpu_keys == cpu_keys).mean() > 0.99


# The GPU fallbacks below run on every host: FAISS's GPU entry points are replaced by stand-ins that report a device
# or fail the way a GPU build does on a device it cannot use; test_gpu_search_matches_cpu above covers a real GPU.
class _StandInGpuResources:
    """Counts constructions: a GPU copy that is never attempted constructs none."""

    made = 0

    def __init__(self) -> None:
        type(self).made += 1


def _no_gpu(monkeypatch) -> None:
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)


def _broken_gpu(monkeypatch) -> None:
    """A GPU build that sees a device but cannot put anything on it (driver mismatch, out of memory)."""

    def refuse(*args, **kwargs):
        raise RuntimeError("simulated: CUDA error: out of memory")

    _StandInGpuResources.made = 0
    monkeypatch.setattr(faiss, "StandardGpuResources", _StandInGpuResources, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", refuse, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", refuse)


def test_gpu_available_needs_gpu_support_and_a_device(monkeypatch):
    monkeypatch.setattr(faiss, "StandardGpuResources", _StandInGpuResources, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    assert not fi.gpu_available()  # a GPU build on a host without a device
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2)
    assert fi.gpu_available()
    monkeypatch.delattr(faiss, "StandardGpuResources")
    assert not fi.gpu_available()  # faiss-cpu, whatever the device count says


def _ivf_trained(use_gpu: bool | None, vectors: np.ndarray) -> faiss.Index:
    index = fi.create_index(fi.choose_index_spec(len(vectors), 32, factory="IVF16,Flat", nprobe=4), 32)
    fi.train_index(index, vectors, use_gpu=use_gpu)
    fi.add_with_keys(index, vectors, np.arange(len(vectors)))
    return index


def test_asking_for_a_gpu_on_a_host_without_one_trains_and_searches_on_the_cpu(monkeypatch, tmp_path, caplog):
    _no_gpu(monkeypatch)
    vectors, _, data = clustered_items(1000)
    queries = fi.normalise_rows(data.queries(20)[0])
    with caplog.at_level("WARNING", logger="index.faiss_index"):
        asked = _ivf_trained(True, vectors)
    assert "training on the CPU" in caplog.text
    cpu = _ivf_trained(False, vectors)  # the same seeded k-means, so the same lists and the same answers
    for a, b in zip(asked.search(queries, 10), cpu.search(queries, 10)):
        np.testing.assert_array_equal(a, b)
    assert fi.GpuSearcher.try_create(asked) is None
    version, vectors, items, data = publish_clustered(tmp_path, n=500, kind="flat")
    index = SearchIndex.load(tmp_path, use_gpu=True)
    queries = data.queries(5)[0]
    _, ref_keys = brute_force(queries, vectors, np.arange(len(items)), 5)
    assert [[h.id for h in row] for row in index.search_vectors(queries, k=5, target="image")] == [
        [items[k].id for k in keys] for keys in ref_keys
    ]


def test_a_gpu_that_refuses_the_index_leaves_search_and_training_on_the_cpu(monkeypatch, tmp_path, caplog):
    _broken_gpu(monkeypatch)
    flat = fi.create_index(fi.IndexSpec("flat", "Flat"), 8)
    with caplog.at_level("WARNING", logger="index.faiss_index"):
        assert fi.GpuSearcher.try_create(flat) is None
    assert "cannot copy the index to the GPU (simulated: CUDA error: out of memory)" in caplog.text
    assert _StandInGpuResources.made == 1
    hnsw = fi.create_index(fi.IndexSpec("hnsw", "HNSW8", ef_construction=40, ef_search=16), 8)
    assert fi.GpuSearcher.try_create(hnsw) is None and _StandInGpuResources.made == 1  # not even attempted: no GPU HNSW
    caplog.clear()
    vectors, _, data = clustered_items(1000)
    with caplog.at_level("WARNING", logger="index.faiss_index"):
        index = _ivf_trained(None, vectors)  # None: use the GPU FAISS reports
    assert "GPU clustering unavailable (simulated: CUDA error: out of memory); training on the CPU" in caplog.text
    assert index.is_trained and fi.ivf_of(index).clustering_index is None and index.ntotal == 1000
    version, vectors, items, data = publish_clustered(tmp_path, n=500, kind="flat")
    loaded = SearchIndex.load(tmp_path)
    queries = data.queries(5)[0]
    _, ref_keys = brute_force(queries, vectors, np.arange(len(items)), 5)
    assert [[h.id for h in row] for row in loaded.search_vectors(queries, k=5, target="image")] == [
        [items[k].id for k in keys] for keys in ref_keys
    ]


def test_normalise_rows_refuses_broken_vectors():
    with pytest.raises(ValueError, match="NaN"):
        fi.normalise_rows(np.array([[1.0, np.inf]]))
    with pytest.raises(ValueError, match="all-zero"):
        fi.normalise_rows(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="2-D"):
        fi.normalise_rows(np.ones(3))
    x = fi.normalise_rows(np.array([[3.0, 4.0]]))
    assert x.dtype == np.float32 and np.allclose(x, [[0.6, 0.8]])


def test_search_index_picks_the_gpu_when_faiss_has_one(tmp_path):
    """SearchIndex.load's default (use_gpu=None) searches flat indexes on a GPU copy exactly when FAISS has GPU support
    and sees a GPU (`pip install .[gpu]` on a CUDA host), and on the CPU otherwise; use_gpu=False always stays there."""
    from index.search import SearchIndex
    from tests.test_index_fixtures import publish_clustered

    _, _, _, data = publish_clustered(tmp_path, n=3000)
    queries = data.queries(20)[0]
    default = SearchIndex.load(tmp_path)
    on_cpu = SearchIndex.load(tmp_path, use_gpu=False)
    assert all((mi.gpu is not None) == fi.gpu_available() for mi in default._indexes.values())
    assert all(mi.gpu is None for mi in on_cpu._indexes.values())
    got, expected = default.search_vectors(queries, k=10), on_cpu.search_vectors(queries, k=10)
    assert sum(g.key == e.key for gr, er in zip(got, expected) for g, e in zip(gr, er)) >= 0.99 * 200
    default.close()
    on_cpu.close()
