"""Chinese compounds the vocabulary lacks (issue 19, item 8): jieba keeps '篮球比赛' (basketball match) whole, so before
the split the query reached the model as one unknown token; now it reaches it as its known parts, and only what no known
part covers is listed as unknown."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from model.encoder import load_encoder
from model.sentence_cnn import TextEncoderConfig
from model.text import build_sentence_cnn
from model.text_tokenize import TokenizerConfig, Vocabulary, split_compound, tokenize
from model.tfidf import TfidfConfig, TfidfTextModel
from training.config import preset, with_dims
from training.features import FeatureSplits, SplitArrays
from training.train import features_spec, save_trained_model, train_dscmr

JIEBA = TokenizerConfig(cjk="jieba")
# Two topics of words joined by spaces, so jieba sees each word alone: 篮球 and 比赛 are in the vocabulary, the compound
# 篮球比赛 (one jieba word) never is.
TOPICS = (
    ("篮球", "比赛", "运动员", "球场", "教练", "冠军", "队伍", "体育"),
    ("苹果", "香蕉", "水果", "早餐", "厨房", "面包", "牛奶", "蔬菜"),
)
TEXT = TextEncoderConfig(kind="sentence_cnn", embed_dim=32, maps=16, min_count=1, max_len=24, word2vec_epochs=2)


def chinese_corpus(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, labels, 16-d image features): item i in topic i % 2, texts of 3-6 of its topic's words."""
    rng = np.random.default_rng(seed)
    prototypes = rng.standard_normal((len(TOPICS), 16))
    texts, labels, images = [], [], []
    for i in range(n):
        c = i % len(TOPICS)
        texts.append(" ".join(rng.choice(TOPICS[c], size=int(rng.integers(3, 7)))))
        labels.append(c)
        images.append(prototypes[c] + 0.3 * rng.standard_normal(16))
    return texts, np.asarray(labels), np.asarray(images, dtype=np.float32)


def test_jieba_keeps_the_compound_whole_and_the_vocabulary_splits_it():
    texts, _, _ = chinese_corpus(40)
    assert tokenize("篮球比赛", JIEBA) == ["篮球比赛"]  # the defect: one word, which this vocabulary lacks
    vocab = Vocabulary.build(texts, tokenizer=JIEBA)
    assert "篮球比赛" not in vocab and "篮球" in vocab and "比赛" in vocab
    assert vocab.tokenize("篮球比赛") == ["篮球", "比赛"]
    assert vocab.ids("篮球比赛") == [vocab.id_of("篮球"), vocab.id_of("比赛")]
    assert vocab.tokenize("我看篮球比赛") == ["我", "看", "篮球", "比赛"]


def test_split_compound_leaves_only_uncovered_characters_unknown():
    known = {"篮球", "比赛", "篮", "球"}.__contains__
    assert split_compound("篮球比赛", known) == ["篮球", "比赛"]
    assert split_compound("滑雪比赛", known) == ["滑雪", "比赛"]  # 滑雪 stays one unknown token
    assert split_compound("滑雪", known) == ["滑雪"]
    assert split_compound("篮球", known) == ["篮球"]  # a known word is never split
    assert split_compound("篮滑球", known) == ["篮", "滑", "球"]


@pytest.fixture(scope="module")
def chinese_model(tmp_path_factory):
    """A sentence-CNN DSCMR model trained (2 epochs) on the Chinese corpus, saved and loaded as the service does."""
    tmp = tmp_path_factory.mktemp("compounds")
    texts, labels, images = chinese_corpus(120)
    y = np.eye(len(TOPICS), dtype=np.float32)[labels]
    rows = np.arange(len(texts))
    parts = {"train": rows[:80], "val": rows[80:100], "test": rows[100:]}
    torch.manual_seed(0)
    bundle = build_sentence_cnn(dataclasses.replace(TEXT, tokenizer=JIEBA), [texts[i] for i in parts["train"]], seed=0)
    assert bundle.vocab.tokenizer.cjk == "jieba"
    ids = bundle.vocab.encode(texts, max_len=TEXT.max_len).numpy().astype(np.int64)
    data = FeatureSplits(
        **{k: SplitArrays(images[r], ids[r], y[r], [str(i) for i in r]) for k, r in parts.items()},
        label_names=["sport", "food"],
        name="chinese",
        text_is_tokens=True,
    )
    cfg = with_dims(preset("wiki-tuned", epochs=2, progress=False, device="cpu", batch_size=40), 16, bundle.encoder.output_dim, 2)
    result = train_dscmr(data, cfg, run_dir=tmp / "run", text_encoder=bundle.encoder)
    spec = {"image": features_spec(16, 1)["image"], "text": {"kind": "sentence_cnn", "config": dataclasses.asdict(TEXT)}}
    save_trained_model(result, tmp / "model", data.label_names, spec, vocab=bundle.vocab.to_dict())
    return load_encoder(tmp / "model", device="cpu")


def test_a_trained_model_sees_the_compound_as_its_known_parts(chinese_model):
    encoder = chinese_model
    assert encoder.unknown_words("篮球比赛") == []
    assert encoder.unknown_words("滑雪比赛") == ["滑雪"]  # really unknown: no known word covers 滑 or 雪
    vectors, problems = encoder.encode_text_queries(["篮球比赛", "篮球 比赛", "滑雪"])
    assert problems == [None, None, "no_known_words"]
    np.testing.assert_allclose(vectors[0], vectors[1], rtol=1e-5, atol=1e-6)


def test_tfidf_word_ngrams_split_the_compound_too():
    texts, _, _ = chinese_corpus(60)
    model = TfidfTextModel.fit(texts, TfidfConfig(analyzer="word", word_ngrams=(1, 1), dim=8, tokenizer=JIEBA))
    assert "w:篮球比赛" not in model.index
    assert model.unknown_words("篮球比赛") == [] and model.unknown_words("滑雪比赛") == ["滑雪"]
    compound, spaced = model.transform(["篮球比赛", "篮球 比赛"])
    assert np.linalg.norm(compound) > 0
    np.testing.assert_allclose(compound, spaced, rtol=1e-5, atol=1e-6)
