"""Shard files and merge at the vector level: n shards merge into the same index as one build; bad sets are refused."""

from __future__ import annotations

import pytest

from index.build import BuildConfig, IndexConfig, merge_shards, publish_version
from index.errors import ShardError
from index.search import SearchIndex
from index.shards import ArraySource, corpus_signature, parse_shard, shard_range
from tests.test_index_fixtures import (
    DIM,
    clustered_items,
    corpus_for,
    single_thread_faiss,  # noqa: F401
    vector_model_dir,
    write_vector_shards,
)

CONFIG = BuildConfig(show_progress=False, keep_shards=True)


@pytest.fixture()
def setup(tmp_path):
    vectors, items, data = clustered_items(1000)
    corpus_dir = corpus_for(items, tmp_path / "corpus")
    model_dir, model_hash = vector_model_dir(tmp_path / "model")
    return tmp_path, vectors, items, data, corpus_dir, model_dir, model_hash


def test_parse_and_split():
    assert parse_shard("2/8") == (2, 8)
    for bad in ("8/8", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    ranges = [shard_range(10, (i, 3)) for i in range(3)]
    assert ranges == [(0, 3), (3, 6), (6, 10)]


def test_merge_of_shards_equals_one_build(setup):
    tmp, vectors, items, data, corpus_dir, model_dir, model_hash = setup
    shards = write_vector_shards(tmp / "shards", vectors, items, 3, model_hash, corpus_signature(corpus_dir), batch=64)
    merged = merge_shards(model_dir, corpus_dir, tmp / "merged", CONFIG, shard_dirs=shards)
    single = publish_version(tmp / "single", ArraySource({"image": (vectors, items)}, DIM), model_hash, IndexConfig())
    queries = data.queries(10)[0]
    a, b = SearchIndex.load(merged), SearchIndex.load(single)
    assert a.search_vectors(queries, k=10, labels=["label02"]) == b.search_vectors(queries, k=10, labels=["label02"])
    assert a.manifest["shards"] == 3 and a.manifest["corpus"]["signature"] == corpus_signature(corpus_dir)
    assert a.model_hash == model_hash


def test_merge_finds_shards_under_the_root(setup):
    tmp, vectors, items, _, corpus_dir, model_dir, model_hash = setup
    from index.build import shards_root

    folder = shards_root(tmp / "index", model_hash, corpus_signature(corpus_dir))
    shards = write_vector_shards(folder, vectors, items, 2, model_hash, corpus_signature(corpus_dir))
    version = merge_shards(model_dir, corpus_dir, tmp / "index", BuildConfig(show_progress=False))
    assert SearchIndex.load(version).count("image") == 1000
    assert not any(d.exists() for d in shards)  # merged shards are cleaned up unless kept


def test_incomplete_or_foreign_shards_are_refused(setup):
    tmp, vectors, items, _, corpus_dir, model_dir, model_hash = setup
    sig = corpus_signature(corpus_dir)
    shards = write_vector_shards(tmp / "s", vectors, items, 3, model_hash, sig)
    with pytest.raises(ShardError, match=r"missing \[1\]"):
        merge_shards(model_dir, corpus_dir, tmp / "i", CONFIG, shard_dirs=[shards[0], shards[2]])
    with pytest.raises(ShardError, match=r"duplicated \[0\]"):
        merge_shards(model_dir, corpus_dir, tmp / "i", CONFIG, shard_dirs=[shards[0], shards[0], shards[1], shards[2]])
    other = write_vector_shards(tmp / "o", vectors, items, 3, "f" * 64, sig)
    with pytest.raises(ShardError, match="re-embed it with this model"):
        merge_shards(model_dir, corpus_dir, tmp / "i", CONFIG, shard_dirs=other)
    stale = write_vector_shards(tmp / "c", vectors, items, 3, model_hash, "0" * 64)
    with pytest.raises(ShardError, match="another version of the corpus"):
        merge_shards(model_dir, corpus_dir, tmp / "i", CONFIG, shard_dirs=stale)
    (shards[1] / "shard.json").unlink()
    with pytest.raises(ShardError, match="did not finish"):
        merge_shards(model_dir, corpus_dir, tmp / "i", CONFIG, shard_dirs=shards)
    with pytest.raises(ShardError, match="no shards under"):
        merge_shards(model_dir, corpus_dir, tmp / "empty", CONFIG)


def test_damaged_chunk_is_refused(setup):
    tmp, vectors, items, _, corpus_dir, model_dir, model_hash = setup
    shards = write_vector_shards(tmp / "s", vectors, items, 2, model_hash, corpus_signature(corpus_dir))
    chunk = sorted((shards[1] / "chunks").iterdir())[0]
    data = bytearray(chunk.read_bytes())
    data[-50] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="sha256"):
        merge_shards(model_dir, corpus_dir, tmp / "i", CONFIG, shard_dirs=shards)
    assert not (tmp / "i" / "CURRENT").exists()
