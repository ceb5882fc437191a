"""Shared helpers of the index tests (no tests here): small real model directories, corpora and shard files."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from index.build import IndexConfig, publish_version
from index.shards import ArraySource, Chunk, write_chunk, write_shard_manifest
from index.synthetic import ClusteredVectors
from model.artefact import ModelArtefact, save_model
from model.corpus import Corpus, Item, save_corpus

DIM = 32


@pytest.fixture(autouse=True, scope="module")
def single_thread_faiss():
    """Run FAISS on one thread in tests: on a shared 2-core machine OpenMP's spin-waiting threads make k-means 10-80x
    slower when another process holds a core, and a single thread keeps the tests short and kind to neighbours."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def vector_model_dir(path: Path, seed: int = 0) -> tuple[Path, str]:
    """A real (tiny) model directory whose content hash a vector-level build can stamp; returns (dir, hash)."""
    weights = {"w": torch.full((2,), float(seed))}
    digest = save_model(ModelArtefact(state_dict=weights, config={"seed": seed}, label_names=[], feature_spec={}), path)
    return path, digest


def clustered_items(n: int, dim: int = DIM, seed: int = 0, n_clusters: int = 40, n_labels: int = 10):
    """(vectors, items, ClusteredVectors) for n synthetic items with labels label00..label{n_labels-1}."""
    data = ClusteredVectors(n=n, dim=dim, n_clusters=n_clusters, seed=seed, n_labels=n_labels, block_size=max(n, 1))
    vectors, clusters = data.all()
    return vectors, data.items(0, clusters), data


def publish_clustered(
    root: Path,
    n: int = 2000,
    kind: str = "flat",
    model_hash: str = "m" * 64,
    seed: int = 0,
    with_text: bool = True,
    **index_options,
):
    """Publish a version with image vectors = clustered data and text vectors = a fixed rotation of them."""
    vectors, items, data = clustered_items(n, seed=seed)
    source = {"image": (vectors, items)}
    if with_text:
        source["text"] = (text_side(vectors), items)
    version = publish_version(
        root, ArraySource(source, DIM, batch_size=512), model_hash, IndexConfig(index_type=kind, seed=seed, **index_options)
    )
    return version, vectors, items, data


def text_side(vectors: np.ndarray) -> np.ndarray:
    """A deterministic orthogonal map of the image vectors (a stand-in 'other modality' with the same geometry)."""
    q, _ = np.linalg.qr(np.random.default_rng(123).standard_normal((vectors.shape[1], vectors.shape[1])))
    return (vectors @ q.astype(np.float32)).astype(np.float32)


def corpus_for(items: list[Item], directory: Path, label_names: list[str] | None = None) -> Path:
    """Save `items` as a prepared corpus."""
    names = label_names or sorted({lab for it in items for lab in it.labels})
    return save_corpus(
        Corpus(items=items, label_names=names, splits={"test": [it.id for it in items]}, name="synthetic"), directory
    )


def write_vector_shards(
    shard_root: Path, vectors: np.ndarray, items: list[Item], n_shards: int, model_hash: str, corpus_sig: str, batch: int = 100
) -> list[Path]:
    """Shard directories holding `vectors` as image embeddings, split like `--shard i/n` would split them."""
    dirs = []
    for i in range(n_shards):
        start, stop = i * len(items) // n_shards, (i + 1) * len(items) // n_shards
        d = shard_root / f"shard-{i:04d}-of-{n_shards:04d}"
        for b, s in enumerate(range(start, stop, batch)):
            e = min(stop, s + batch)
            ids = [it.id for it in items[s:e]]
            write_chunk(d, Chunk("image", b, vectors[s:e], ids, ids, []))
        write_shard_manifest(
            d,
            {
                "model_hash": model_hash,
                "corpus_signature": corpus_sig,
                "shard_index": i,
                "shard_count": n_shards,
                "dim": int(vectors.shape[1]),
                "counts": {"image": stop - start},
                "skipped": [],
            },
        )
        dirs.append(d)
    return dirs


def brute_force(queries: np.ndarray, vectors: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The slow, obvious reference: exact cosine top-k in float64 (ties by key)."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = q.astype(np.float64) @ v.astype(np.float64).T
    order = np.lexsort((np.broadcast_to(keys, scores.shape), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), keys[order]
