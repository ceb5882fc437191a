"""`--text tfidf` (issue 19, item 1): TF-IDF over character / word n-grams -> SVD, fitted on the training texts, saved
with the model and applied identically at query time; generated texts in Latin, CJK (no spaces), Arabic and mixed
scripts; a query of unseen n-grams is a clear "no known words", never NaN."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from model.config import from_dict, to_dict
from model.sentence_cnn import TextEncoderConfig
from model.text_tokenize import jieba_available
from model.tfidf import TfidfConfig, TfidfTextModel, analyze

CLASSES = 4


def _words(alphabet: str, rng: np.random.Generator, count: int, length: tuple[int, int]) -> list[str]:
    return ["".join(rng.choice(list(alphabet), rng.integers(*length))) for _ in range(count)]


def script_texts(script: str, n: int = 80, seed: int = 0) -> tuple[list[str], list[int]]:
    """n texts in CLASSES classes: each mixes its class's topic words with words common to all classes."""
    rng = np.random.default_rng(seed)
    alphabets = {
        "latin": "abcdefghijklmnopqrstuvwxyz",
        "cjk": "".join(chr(c) for c in range(0x4E00, 0x4E00 + 400)),
        "arabic": "".join(chr(c) for c in range(0x0621, 0x064B)),
    }
    lengths = {"latin": (3, 9), "cjk": (1, 3), "arabic": (3, 7)}
    if script == "mixed":
        parts = [script_texts(s, n, seed) for s in ("latin", "cjk", "arabic")]
        return [" ".join(p[0][i] for p in parts) for i in range(n)], parts[0][1]
    topics = [_words(alphabets[script], rng, 15, lengths[script]) for _ in range(CLASSES)]
    common = _words(alphabets[script], rng, 60, lengths[script])
    joiner = "" if script == "cjk" else " "  # Chinese is written without spaces
    texts, labels = [], []
    for i in range(n):
        c = i % CLASSES
        words = [
            topics[c][rng.integers(15)] if rng.random() < 0.4 else common[rng.integers(60)] for _ in range(rng.integers(6, 14))
        ]
        texts.append(joiner.join(words) + ("。" if script == "cjk" else "."))
        labels.append(c)
    return texts, labels


def _class_separation(vectors: np.ndarray, labels: list[int]) -> tuple[float, float]:
    sims = vectors @ vectors.T
    same = np.equal.outer(labels, labels) & ~np.eye(len(labels), dtype=bool)
    other = ~np.equal.outer(labels, labels)
    return float(sims[same].mean()), float(sims[other].mean())


@pytest.mark.parametrize("script", ["latin", "cjk", "arabic", "mixed"])
@pytest.mark.parametrize("analyzer", ["char", "word", "char+word"])
def test_fitted_on_training_texts_it_separates_classes_in_every_script(script, analyzer):
    texts, labels = script_texts(script)
    train, test = texts[:60], texts[60:]
    model = TfidfTextModel.fit(train, TfidfConfig(analyzer=analyzer, char_ngrams=(1, 2), dim=24, min_df=1), seed=0)
    assert model.dim == 24 and all(f.startswith(("c:", "w:")) for f in model.features)
    vectors = model.transform(test)
    assert vectors.shape == (20, 24) and vectors.dtype == np.float32 and np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    same, other = _class_separation(vectors, labels[60:])
    assert same > other + 0.1, (same, other)  # unseen texts of one class lie together


def test_its_tfidf_rows_equal_scikit_learns_and_the_svd_is_fitted_on_the_training_texts_only():
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts, _ = script_texts("mixed")
    cfg = TfidfConfig(analyzer="char+word", char_ngrams=(1, 3), word_ngrams=(1, 2), min_df=2, max_df=0.9, dim=16)
    model = TfidfTextModel.fit(texts[:60], cfg)
    reference = TfidfVectorizer(
        analyzer=lambda t: analyze(t, model.cfg), sublinear_tf=True, min_df=2, max_df=0.9, max_features=cfg.max_features
    ).fit(texts[:60])
    assert model.features == list(reference.get_feature_names_out())
    # Applied, the model splits Chinese compounds it lacks into words it knows (item 8); the weights are scikit-learn's.
    reference.analyzer = lambda t: analyze(t, model.cfg, model.knows_word)
    np.testing.assert_allclose(model.tfidf(texts).toarray(), reference.transform(texts).toarray(), rtol=1e-9, atol=1e-12)
    # n-grams that only the held-out texts use are not in the vocabulary
    held_out_only = {f for t in texts[60:] for f in analyze(t, model.cfg)} - {
        f for t in texts[:60] for f in analyze(t, model.cfg)
    }
    assert held_out_only and not held_out_only & set(model.features)
    raw = TfidfTextModel.fit(texts[:60], dataclasses.replace(cfg, sublinear_tf=False))
    assert not np.allclose(raw.tfidf(texts[:3]).toarray(), model.tfidf(texts[:3]).toarray())


def test_saved_and_loaded_it_encodes_exactly_the_same(tmp_path):
    texts, _ = script_texts("cjk")
    model = TfidfTextModel.fit(texts[:60], TfidfConfig(analyzer="char+word", dim=12))
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(model.to_dict(), ensure_ascii=False), encoding="utf-8")
    again = TfidfTextModel.from_dict(json.loads(path.read_text(encoding="utf-8")))
    np.testing.assert_array_equal(again.transform(texts), model.transform(texts))
    assert again.cfg == model.cfg and again.cfg.tokenizer.cjk in ("jieba", "bigram")  # the segmenter is stored resolved
    with pytest.raises(ValueError, match="not a tfidf"):
        TfidfTextModel.from_dict({"kind": "vocab"})


def test_word_mode_segments_chinese_with_jieba_when_installed():
    cfg = TfidfTextModel.fit(
        ["篮球比赛很精彩", "今天的篮球比赛", "足球比赛在今天"], TfidfConfig(analyzer="word", min_df=1, dim=2)
    ).cfg
    words = analyze("篮球比赛", cfg)
    if jieba_available():
        assert cfg.tokenizer.cjk == "jieba" and ("w:篮球" in words or "w:篮球比赛" in words)
    else:
        assert cfg.tokenizer.cjk == "bigram" and "w:篮球" in words
    assert "w:篮" not in words  # words, not single characters


def test_a_query_of_unseen_ngrams_is_a_zero_vector_and_no_known_words_never_nan():
    texts, _ = script_texts("latin")
    model = TfidfTextModel.fit(texts[:60], TfidfConfig(analyzer="word", dim=8, min_df=1))
    queries = ["zzzqqq xxyyzz", "", "   ", texts[0]]
    vectors = model.transform(queries)
    assert np.isfinite(vectors).all()
    assert (vectors[:3] == 0).all() and np.linalg.norm(vectors[3]) == pytest.approx(1.0)
    assert model.known_features(queries)[:3] == [0, 0, 0] and model.known_features(queries)[3] > 0
    assert model.unknown_words("zzzqqq " + texts[0].split()[0]) == ["zzzqqq"]
    chars = TfidfTextModel.fit(
        ["the red square", "a blue circle", "red and blue"], TfidfConfig(char_ngrams=(1, 3), min_df=1, dim=2)
    )
    # every letter of "zq" and "eds" occurs in training, but not the whole of either: unknown; "qu" and "cir" are known
    assert chars.unknown_words("zq qu eds cir") == ["zq", "eds"]


def test_config_validation_and_round_trip_inside_the_text_encoder_config():
    cfg = TextEncoderConfig(kind="tfidf", tfidf=TfidfConfig(analyzer="word", word_ngrams=(1, 3), min_df=3, max_df=0.5, dim=64))
    assert from_dict(TextEncoderConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg and cfg.output_dim is None
    old = {k: v for k, v in to_dict(TextEncoderConfig()).items() if k not in ("tfidf", "activation", "pool_norm")}
    # configs saved before these options still load, as what they were trained with (ReLU before the activation option)
    assert from_dict(TextEncoderConfig, old) == TextEncoderConfig(activation="relu")
    for bad in ({"analyzer": "bytes"}, {"char_ngrams": (3, 1)}, {"min_df": 0}, {"max_df": 0.0}, {"dim": 0}):
        with pytest.raises(ValueError, match="tfidf"):
            TfidfConfig(**bad)
    with pytest.raises(ValueError, match="no n-gram"):
        TfidfTextModel.fit(["a b", "c d", "e f"], TfidfConfig(analyzer="word", min_df=3))


def test_prepare_train_and_serve_a_tfidf_model_end_to_end(tmp_path):
    """prepare --text tfidf on a small image corpus, train, save, load: the service's encoder reads queries as training read
    the corpus, and flags a query of unseen n-grams."""
    from model.encoder import load_encoder
    from tests.test_prepare import make_corpus
    from training.__main__ import main
    from training.config import preset, with_dims
    from training.pipeline import train_and_save
    from training.prepare import PrepareConfig, load_prepared, prepare_corpus

    corpus_dir = make_corpus(tmp_path / "corpus", n_per_class=5)
    assert (
        main(
            [
                "prepare",
                "--corpus",
                str(corpus_dir),
                "--out",
                str(tmp_path / "prepared"),
                "--text",
                "tfidf",
                "--tfidf-analyzer",
                "char+word",
                "--tfidf-char-ngrams",
                "2",
                "4",
                "--tfidf-min-df",
                "1",
                "--tfidf-dim",
                "8",
                "--batch-size",
                "10",
                "--no-progress",
            ]
        )
        == 0
    )
    prepared = load_prepared(tmp_path / "prepared")
    assert (
        prepared.manifest["text"]["kind"] == "tfidf"
        and prepared.manifest["text"]["dim"] == 8
        and len(prepared.manifest["ids"]) == 20
    )
    assert prepared.text_config.tfidf == TfidfConfig(analyzer="char+word", char_ngrams=(2, 4), min_df=1, dim=8)
    # the same settings through the API give the same prepared data
    text = TextEncoderConfig(kind="tfidf", tfidf=TfidfConfig(analyzer="char+word", char_ngrams=(2, 4), min_df=1, dim=8))
    again = prepare_corpus(corpus_dir, tmp_path / "prepared", PrepareConfig(text=text, batch_size=10, progress=False))
    assert again["content_hash"] == prepared.content_hash and again["extracted"] == 0
    data = prepared.feature_splits()
    assert not data.text_is_tokens and data.train.text.shape[1] == 8
    cfg = with_dims(preset("wiki-tuned", epochs=2, progress=False, device="cpu"), data.train.image.shape[1], 8, 4)
    report = train_and_save(data, cfg, tmp_path / "model", prepared=prepared)
    encoder = load_encoder(report["model_dir"], device="cpu")
    assert encoder.can_encode_texts and encoder.feature_spec["text"]["kind"] == "tfidf"
    texts = [json.loads(line)["text"] for line in (corpus_dir / "items.jsonl").read_text().splitlines()]
    ids = [json.loads(line)["id"] for line in (corpus_dir / "items.jsonl").read_text().splitlines()]
    row = prepared.manifest["ids"].index(ids[0])
    stored = np.load(tmp_path / "prepared" / "text_input.npy")[row]
    np.testing.assert_allclose(
        encoder.encode_texts([texts[0]])[0], encoder.encode_text_features(stored[None])[0], rtol=1e-5, atol=1e-6
    )
    vectors, problems = encoder.encode_text_queries([texts[0], "ʘʘʘ ❖❖"])
    assert problems == [None, "no_known_words"] and np.isfinite(vectors).all()
    assert encoder.unknown_words("a red zqxv") == ["zqxv"]
    # the service warms the encoder up before it says ready: a tf-idf model tokenizes Chinese with jieba (unknown words,
    # word n-grams), so its dictionary is loaded then, not on the first Chinese query (checked in a fresh process)
    code = (
        "import json, sys, jieba\n"
        "from model.encoder import load_encoder\n"
        "encoder = load_encoder(sys.argv[1], device='cpu')\n"
        "before = jieba.dt.initialized\n"
        "encoder.warm_up()\n"
        "print(json.dumps([before, jieba.dt.initialized]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(report["model_dir"])], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [False, True]
