"""Tokenizer and vocabulary behaviour on real multilingual strings."""

from __future__ import annotations

import json

import pytest
import torch

from model.text import (
    OOV_ID,
    PAD_ID,
    TokenizerConfig,
    Vocabulary,
    jieba_available,
    tokenize,
)

BIGRAM = TokenizerConfig(cjk="bigram")


def test_english_punctuation_and_case():
    assert tokenize("Hello, World! Don\u2019t stop: state-of-the-art.") == [
        "hello",
        ",",
        "world",
        "!",
        "don't",
        "stop",
        ":",
        "state-of-the-art",
        ".",
    ]
    assert tokenize("'Quoted' (paren) dogs'") == ["'", "quoted", "'", "(", "paren", ")", "dogs", "'"]
    assert tokenize("Hello, World!", TokenizerConfig(punctuation="drop")) == ["hello", "world"]


def test_nfkc_and_casefold():
    # Full-width letters/digits, a ligature and German sharp s all normalise to plain lower-case text.
    assert tokenize("ＡＢＣ１２３ Straße ﬁne ÉCOLE") == ["abc123", "strasse", "fine", "école"]


def test_numbers_kept_or_placeholder():
    text = "Pi is 3.14, not 1,000 or 42; mp3 at 12:30"
    assert tokenize(text) == ["pi", "is", "3.14", ",", "not", "1,000", "or", "42", ";", "mp3", "at", "12:30"]
    assert tokenize(text, TokenizerConfig(numbers="placeholder", punctuation="drop")) == [
        "pi",
        "is",
        "<num>",
        "not",
        "<num>",
        "or",
        "<num>",
        "mp3",
        "at",
        "<num>",
    ]


def test_chinese_bigrams_and_unigrams():
    assert tokenize("北京天安门", BIGRAM) == ["北", "北京", "京", "京天", "天", "天安", "安", "安门", "门"]
    assert tokenize("我", BIGRAM) == ["我"]


def test_chinese_with_jieba():
    # jieba is the `cjk` extra, which `make install` installs: without it this is a broken install, not a skip.
    assert jieba_available(), "jieba is not installed: pip install -e '.[cjk]' (make install does)"
    assert tokenize("我爱北京天安门", TokenizerConfig(cjk="jieba")) == ["我", "爱", "北京", "天安门"]
    assert TokenizerConfig().resolved().cjk == "jieba"


def test_japanese_uses_bigrams_even_with_jieba():
    tokens = tokenize("東京は日本の首都です。", TokenizerConfig(cjk="jieba"))
    assert tokens[:4] == ["東", "東京", "京", "京は"]
    assert "首都" in tokens and tokens[-1] == "。"
    # Half-width katakana is normalised to full width by NFKC.
    assert tokenize("ｶﾀｶﾅ") == ["カ", "カタ", "タ", "タカ", "カ", "カナ", "ナ"]


def test_thai_units_keep_their_marks():
    tokens = tokenize("ง่าย")
    assert tokens == ["ง่", "ง่า", "า", "าย", "ย"]  # the tone mark stays on its consonant


def test_spaced_scripts_stay_words():
    assert tokenize("नमस्ते दुनिया") == ["नमस्ते", "दुनिया"]
    assert tokenize("مرحبا بالعالم") == ["مرحبا", "بالعالم"]
    assert tokenize("한국어 문장입니다") == ["한국어", "문장입니다"]
    assert tokenize("می\u200cخواهم") == ["میخواهم"]  # ZWNJ joins the word, then is dropped


def test_emoji_control_and_empty():
    assert tokenize("👍🏽 great 👨\u200d👩\u200d👧 😀😀 🇫🇷") == ["👍🏽", "great", "👨\u200d👩\u200d👧", "😀", "😀", "🇫🇷"]
    assert tokenize("") == []
    assert tokenize(" \t\n\u3000 ") == []
    assert tokenize("\x00\x07ab\ufeffc\x1bd") == ["abc", "d"]
    assert tokenize("x\u200by") == ["x", "y"]  # zero-width space separates words
    assert tokenize("\u200d\u200c\ufe0f") == []
    with pytest.raises(TypeError):
        tokenize(None)  # type: ignore[arg-type]


def test_tokenizer_config_rejects_unknown_options():
    with pytest.raises(ValueError, match="numbers"):
        TokenizerConfig(numbers="drop")  # type: ignore[arg-type]


TEXTS = ["the cat sat on the mat", "the dog sat", "a cat and a dog", "the end"]


def test_vocab_order_pad_oov_and_limits():
    vocab = Vocabulary.build(TEXTS, tokenizer=BIGRAM)
    # Count descending, then token: the(4), a(2) cat(2) dog(2) sat(2), then the singletons alphabetically.
    assert vocab.tokens[:7] == ["<pad>", "<unk>", "the", "a", "cat", "dog", "sat"]
    assert vocab.tokens[7:] == ["and", "end", "mat", "on"]
    assert vocab.counts[2] == 4
    small = Vocabulary.build(TEXTS, min_count=2, max_size=3, tokenizer=BIGRAM)
    assert small.tokens == ["<pad>", "<unk>", "the", "a", "cat"]
    assert small.counts[1] == 16 - 8  # every dropped occurrence is counted as OOV
    assert small.id_of("dog") == OOV_ID and small.id_of("the") == 2


def test_encode_pads_right_truncates_and_has_min_len():
    vocab = Vocabulary.build(TEXTS, tokenizer=BIGRAM)
    ids = vocab.encode(["the cat", "zebra the cat sat on the mat", ""], max_len=6)
    assert ids.dtype == torch.long and ids.shape == (3, 6)
    the, cat, sat, on = (vocab.id_of(w) for w in ("the", "cat", "sat", "on"))
    assert ids[0].tolist() == [the, cat, PAD_ID, PAD_ID, PAD_ID, PAD_ID]
    assert ids[1].tolist() == [OOV_ID, the, cat, sat, on, the]  # truncated to max_len, unknown word -> OOV
    assert ids[2].tolist() == [PAD_ID] * 6
    assert vocab.encode(["the"], max_len=100).shape == (1, 5)  # never shorter than the widest kernel
    with pytest.raises(TypeError, match="list"):
        vocab.encode("the cat", max_len=5)  # type: ignore[arg-type]


def test_vocab_json_round_trip(tmp_path):
    vocab = Vocabulary.build(TEXTS + ["北京 😀 3.14"], min_count=1, tokenizer=TokenizerConfig(cjk="bigram"))
    path = vocab.save(tmp_path / "vocab.json")
    again = Vocabulary.load(path)
    assert again.tokens == vocab.tokens and again.counts == vocab.counts and again.tokenizer == vocab.tokenizer
    assert torch.equal(again.encode(TEXTS, 10), vocab.encode(TEXTS, 10))
    assert json.loads(path.read_text(encoding="utf-8"))["tokens"][:2] == ["<pad>", "<unk>"]

    bad = vocab.to_dict() | {"format_version": 99}
    with pytest.raises(ValueError, match="format_version"):
        Vocabulary.from_dict(bad)
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary.from_dict(vocab.to_dict() | {"tokens": ["<pad>", "<unk>", "a", "a"], "counts": [0, 0, 1, 1]})
    (tmp_path / "cut.json").write_text(path.read_text(encoding="utf-8")[:20], encoding="utf-8")
    with pytest.raises(ValueError, match="truncated"):
        Vocabulary.load(tmp_path / "cut.json")
