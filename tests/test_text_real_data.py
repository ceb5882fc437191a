"""The text pipeline on WordNet glosses: those of the generated imagenet-sample folder (every clone) and the real ones of
the ImageNet sample in ../shared/data (where it is present)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model.text import (
    TextEncoderConfig,
    TokenizerConfig,
    build_sentence_cnn,
    load_glove_6b_50d,
)
from tests.fixtures_data import IMAGENET_SAMPLE, SYNSETS, needs_real_imagenet

# (number of texts, least vocabulary size) of each source
EXPECTED = {"generated": (48, 350), "real": (1000, 3000)}


@pytest.fixture(scope="module", params=["generated", pytest.param("real", marks=needs_real_imagenet)])
def wordnet_texts(request) -> tuple[str, list[str]]:
    """(source, texts): synset words + gloss, as the imagenet-sample loader builds them."""
    if request.param == "generated":
        return "generated", [", ".join(s.words) + ": " + s.gloss for synsets in SYNSETS.values() for s in synsets]
    items = json.loads((IMAGENET_SAMPLE / "metadata.json").read_text(encoding="utf-8"))["items"]
    return "real", [", ".join(it["synset_words"]) + ": " + it["gloss"] for it in items]


def test_wordnet_glosses_through_glove_sentence_cnn(wordnet_texts):
    source, wordnet_texts = wordnet_texts
    n_texts, least_vocab = EXPECTED[source]
    assert len(wordnet_texts) == n_texts
    cfg = TextEncoderConfig(
        embed_dim=50,
        maps=20,
        min_count=1,
        max_len=48,
        word_vectors="glove-6b-50d",
        word2vec_epochs=1,
        tokenizer=TokenizerConfig(cjk="bigram"),
    )
    bundle = build_sentence_cnn(cfg, wordnet_texts, seed=0, primary=load_glove_6b_50d())
    cov = bundle.coverage
    # WordNet glosses are plain English: GloVe 6B should know nearly all of their words.
    assert len(bundle.vocab) > least_vocab
    assert cov.pretrained_fraction > 0.9, cov.to_dict()
    assert cov.from_primary + cov.from_fallback + cov.random + cov.special + cov.pretrained_extra == len(bundle.vocab)
    ids = bundle.vocab.encode(wordnet_texts, cfg.max_len)
    assert ids.shape[0] == n_texts and ids.shape[1] <= 48
    assert (ids == 1).float().mean() == 0  # every training word is in the vocabulary (min_count=1)
    bundle.encoder.eval()
    with torch.no_grad():
        features = bundle.encoder(ids)
    assert features.shape == (n_texts, 60) and torch.isfinite(features).all()
    # Words GloVe lacks (Latin genus names, rare compounds) come from the corpus word2vec, none stay random.
    assert cov.from_fallback > 0 and cov.random == 0 and np.isfinite(cov.alignment_r2)
    assert "goldfish" in bundle.vocab.tokenize(wordnet_texts[1])
