"""Word vectors: word2vec reproducibility, file formats, bundled GloVe, and the embedding-matrix fill order."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gensim.models import KeyedVectors, Word2Vec

from model.text import (
    PAD_ID,
    TokenizerConfig,
    Vocabulary,
    WordVectorsError,
    build_embedding_matrix,
    detect_vector_format,
    load_glove_6b_50d,
    load_keyed_vectors,
    train_word2vec,
)

REPO = Path(__file__).resolve().parents[1]
CORPUS = [
    f"the {a} {b} near the {c} river".split()
    for a in ("red", "blue", "green")
    for b in ("cat", "dog", "bird")
    for c in ("old", "new", "wide")
] * 5


def test_word2vec_same_seed_same_vectors():
    first = train_word2vec(CORPUS, dim=16, seed=7, epochs=3)
    second = train_word2vec(CORPUS, dim=16, seed=7, epochs=3)
    other = train_word2vec(CORPUS, dim=16, seed=8, epochs=3)
    assert first.index_to_key == second.index_to_key
    np.testing.assert_array_equal(first.vectors, second.vectors)
    assert not np.allclose(first.vectors, other.vectors)
    assert first.vector_size == 16 and "river" in first.key_to_index


def test_word2vec_reproducible_across_processes_with_different_hash_seeds():
    # gensim once seeded vectors with Python's salted str hash; a process with another hash seed must agree.
    script = (
        "import numpy as np; from model.word_vectors import train_word2vec; "
        "kv = train_word2vec([['a','b','c','d']] * 20, dim=8, seed=1, epochs=2); "
        "print(kv.vectors.astype(np.float64).sum().hex())"
    )
    here = train_word2vec([["a", "b", "c", "d"]] * 20, dim=8, seed=1, epochs=2)
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == here.vectors.astype(np.float64).sum().hex()


def test_word2vec_rejects_empty_corpus():
    with pytest.raises(ValueError, match="no tokens"):
        train_word2vec([[], []], dim=8)


@pytest.fixture
def tiny_kv() -> KeyedVectors:
    kv = KeyedVectors(4)
    rng = np.random.default_rng(0)
    kv.add_vectors(["king", "queen", "paris", "école", "北京"], rng.normal(size=(5, 4)).astype(np.float32))
    return kv


@pytest.mark.parametrize(
    "name,writer,expected",
    [
        ("vecs.bin", lambda kv, p: kv.save_word2vec_format(str(p), binary=True), "word2vec-binary"),
        ("vecs.dat", lambda kv, p: kv.save_word2vec_format(str(p), binary=True), "word2vec-binary"),
        ("vecs.txt", lambda kv, p: kv.save_word2vec_format(str(p), binary=False), "word2vec-text"),
        ("vecs.vectors", lambda kv, p: kv.save_word2vec_format(str(p), binary=False), "word2vec-text"),
        ("glove.txt", lambda kv, p: kv.save_word2vec_format(str(p), binary=False, write_header=False), "glove-text"),
        ("vecs.kv", lambda kv, p: kv.save(str(p)), "gensim"),
        ("vecs.pickle", lambda kv, p: kv.save(str(p)), "gensim"),
    ],
)
def test_load_keyed_vectors_formats(tmp_path, tiny_kv, name, writer, expected):
    path = tmp_path / name
    writer(tiny_kv, path)
    assert detect_vector_format(path) == expected
    loaded = load_keyed_vectors(path)
    assert loaded.index_to_key == tiny_kv.index_to_key
    text_rounding = 1e-5 if expected in ("word2vec-text", "glove-text") else 0
    np.testing.assert_allclose(loaded.vectors, tiny_kv.vectors, atol=text_rounding)
    limited = load_keyed_vectors(path, limit=2)
    assert limited.index_to_key == ["king", "queen"]


def test_load_whole_word2vec_model_saved_natively(tmp_path):
    model = Word2Vec(CORPUS, vector_size=8, min_count=1, seed=0, workers=1, epochs=1)
    model.save(str(tmp_path / "w2v.model"))
    loaded = load_keyed_vectors(tmp_path / "w2v.model")
    np.testing.assert_array_equal(loaded["cat"], model.wv["cat"])


def test_load_keyed_vectors_clear_errors(tmp_path):
    with pytest.raises(WordVectorsError, match="does not exist"):
        load_keyed_vectors(tmp_path / "missing.bin")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(WordVectorsError):
        load_keyed_vectors(garbage)
    prose = tmp_path / "notes.txt"
    prose.write_text("these are some notes\nnot vectors at all\n", encoding="utf-8")
    with pytest.raises(WordVectorsError, match="not a recognised word-vector file"):
        load_keyed_vectors(prose)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(WordVectorsError, match="empty"):
        load_keyed_vectors(empty)
    truncated = tmp_path / "cut.bin"
    kv = KeyedVectors(8)
    kv.add_vectors([f"w{i}" for i in range(50)], np.ones((50, 8), dtype=np.float32))
    kv.save_word2vec_format(str(truncated), binary=True)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(WordVectorsError, match="cannot read"):
        load_keyed_vectors(truncated)
    bad_pickle = tmp_path / "broken.kv"
    bad_pickle.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(WordVectorsError, match="cannot read"):
        load_keyed_vectors(bad_pickle)


@pytest.fixture(scope="module")
def glove() -> KeyedVectors:
    return load_glove_6b_50d()


def test_glove_6b_50d_loads_with_sensible_neighbours(glove):
    assert len(glove) == 400_000 and glove.vector_size == 50
    assert glove.index_to_key[:3] == ["the", ",", "."]
    np.testing.assert_allclose(glove["the"][:3], [0.418, 0.24968, -0.41242], rtol=1e-6)  # Stanford's file
    king = [w for w, _ in glove.most_similar("king", topn=10)]
    assert "queen" in king and "prince" in king
    france = [w for w, _ in glove.most_similar("france", topn=10)]
    assert {"paris", "belgium", "spain"} <= set(france)
    assert glove.similarity("cat", "dog") > glove.similarity("cat", "economy")
    assert len(load_glove_6b_50d(limit=1000)) == 1000


def _kv(words: list[str], vectors) -> KeyedVectors:
    kv = KeyedVectors(np.asarray(vectors).shape[1])
    kv.add_vectors(words, np.asarray(vectors, dtype=np.float32))
    return kv


def test_embedding_matrix_fill_order():
    vocab = Vocabulary.build(
        ["alpha alpha beta beta gamma gamma delta delta Paris Paris 1990 1990"], tokenizer=TokenizerConfig(cjk="bigram")
    )
    primary = _kv(["alpha", "beta", "Paris", "####"], np.arange(12).reshape(4, 3) + 1.0)
    fallback = _kv(["alpha", "gamma"], [[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
    matrix, coverage = build_embedding_matrix(vocab, primary, fallback, dim=3, seed=0, align_fallback=False)
    row = {tok: matrix[vocab.id_of(tok)] for tok in ("alpha", "beta", "gamma", "delta", "paris", "1990")}
    np.testing.assert_array_equal(row["alpha"], primary["alpha"])  # primary wins over fallback
    np.testing.assert_array_equal(row["beta"], primary["beta"])
    np.testing.assert_array_equal(row["paris"], primary["Paris"])  # case variant of the casefolded token
    np.testing.assert_array_equal(row["1990"], primary["####"])  # GoogleNews-style digit masking
    np.testing.assert_array_equal(row["gamma"], fallback["gamma"])  # fallback only where primary lacks it
    assert np.all(row["delta"] != 0) and np.all(np.abs(row["delta"]) < 12)  # random, small
    np.testing.assert_array_equal(matrix[PAD_ID], 0)
    assert (coverage.from_primary, coverage.from_fallback, coverage.random) == (4, 1, 1)
    assert coverage.random_examples == ["delta"]
    again, _ = build_embedding_matrix(vocab, primary, fallback, dim=3, seed=0, align_fallback=False)
    np.testing.assert_array_equal(matrix, again)


def test_embedding_coverage_counts_appended_pretrained_words_apart():
    vocab = Vocabulary.build(["alpha alpha beta beta"], tokenizer=TokenizerConfig(cjk="bigram"))
    wider = vocab.with_extra_tokens(["paris", "zulu"])  # "zulu" has no vector: its row stays random
    primary = _kv(["alpha", "Paris"], [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    _, plain = build_embedding_matrix(vocab, primary, None, dim=3, seed=0)
    matrix, coverage = build_embedding_matrix(wider, primary, None, dim=3, seed=0, pretrained_only_from=len(vocab))
    np.testing.assert_array_equal(matrix[wider.id_of("paris")], primary["Paris"])
    assert (coverage.from_primary, coverage.random, coverage.pretrained_extra, coverage.random_extra) == (1, 1, 2, 1)
    assert coverage.pretrained_fraction == plain.pretrained_fraction == 0.5
    for bad in (1, len(wider) + 1):
        with pytest.raises(ValueError, match="pretrained_only_from"):
            build_embedding_matrix(wider, primary, None, dim=3, pretrained_only_from=bad)


def test_embedding_matrix_dimension_checks():
    vocab = Vocabulary.build(["a b c"], tokenizer=TokenizerConfig(cjk="bigram"))
    primary, fallback = _kv(["a"], [[1.0, 2.0]]), _kv(["b"], [[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="embed_dim to 2"):
        build_embedding_matrix(vocab, primary, None, dim=3)
    with pytest.raises(ValueError, match="same size|dim equal"):
        build_embedding_matrix(vocab, primary, fallback, align_fallback=False)
    with pytest.raises(ValueError, match="at least 10"):
        build_embedding_matrix(vocab, primary, fallback)  # too few shared words to learn a map
    matrix, coverage = build_embedding_matrix(vocab, None, None, dim=6, seed=1)
    assert matrix.shape == (5, 6) and coverage.random == 3 and np.all(np.abs(matrix[1:]) <= 0.25)


def test_fallback_is_mapped_into_the_primary_space():
    # A 12-d "corpus" space that is a hidden linear image of the 5-d primary space: the fitted map must
    # recover the primary vectors of words the primary does not have.
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(60)]
    truth = rng.normal(size=(60, 5))
    hidden_map = rng.normal(size=(5, 12))
    primary = _kv(words[:50], truth[:50])
    fallback = _kv(words, truth @ hidden_map + 0.001 * rng.normal(size=(60, 12)))
    vocab = Vocabulary.build([" ".join(words)], tokenizer=TokenizerConfig(cjk="bigram"))
    matrix, coverage = build_embedding_matrix(vocab, primary, fallback, seed=0)
    assert matrix.shape == (62, 5)
    assert (coverage.from_primary, coverage.from_fallback, coverage.alignment_anchors) == (50, 10, 50)
    assert coverage.alignment_r2 > 0.99
    for w in words[50:]:
        cos = (
            matrix[vocab.id_of(w)]
            @ truth[int(w[1:])]
            / (np.linalg.norm(matrix[vocab.id_of(w)]) * np.linalg.norm(truth[int(w[1:])]))
        )
        assert cos > 0.98, w


def test_a_weak_corpus_mapping_is_a_warning_only_when_many_words_depend_on_it(caplog):
    import logging

    from model.word_vectors import EmbeddingCoverage, _report_poor_alignment

    few = EmbeddingCoverage(
        vocab_size=1000,
        dim=50,
        from_primary=980,
        from_fallback=10,
        random=8,
        pretrained_extra=0,
        random_extra=0,
        alignment_anchors=2400,
        alignment_r2=0.02,
        random_examples=[],
    )
    with caplog.at_level(logging.INFO, logger="model.word_vectors"):
        _report_poor_alignment(few)
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "10 of the 998 training words (1.0%)" in caplog.text and "nothing to do" in caplog.text
    caplog.clear()
    many = EmbeddingCoverage(
        vocab_size=1000,
        dim=50,
        from_primary=700,
        from_fallback=290,
        random=8,
        pretrained_extra=0,
        random_extra=0,
        alignment_anchors=700,
        alignment_r2=0.05,
        random_examples=[],
    )
    with caplog.at_level(logging.INFO, logger="model.word_vectors"):
        _report_poor_alignment(many)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "--word-vectors FILE" in caplog.text and "29.1%" in caplog.text
