"""A language-agnostic text feature: TF-IDF over word and/or character n-grams, reduced by truncated SVD (LSA).

Fitted on the training texts only (scikit-learn's TfidfVectorizer and TruncatedSVD), then applied by `TfidfTextModel`
itself -- at preparation and at query time alike, so the service encodes a query exactly as training encoded the
corpus. Character n-grams need no segmenter, so scripts written without spaces (Chinese, Japanese, Thai) work as they
are; word n-grams come from the project's tokenizer (`model.text_tokenize.tokenize`), which segments Chinese with jieba
when it is installed (character bigrams otherwise). A text none of whose n-grams was seen in training gets the zero
vector, and `known_features` says so (the service answers "no_known_words").

The fitted model is a JSON-ready dict (n-grams, idf weights, SVD components as base64 float32) that a model directory
stores as its vocab.json.
"""

from __future__ import annotations

import base64
import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from model.text_tokenize import TokenizerConfig, _clean, tokenize

TfidfAnalyzer = Literal["char", "word", "char+word"]
TFIDF_FORMAT = 1


@dataclass(frozen=True)
class TfidfConfig:
    """How to build the TF-IDF -> SVD text feature.

    analyzer: "char" (character n-grams of the normalised text, spaces included, so n-grams that span a word boundary
    see it), "word" (word n-grams of the project tokenizer's tokens) or "char+word" (both, one vocabulary).
    char_ngrams / word_ngrams: inclusive (min, max) n-gram lengths. sublinear_tf: 1 + log(tf) instead of tf.
    min_df: keep n-grams in at least this many training texts; max_df: and in at most this fraction of them.
    max_features: keep the most frequent n-grams (None: all). dim: SVD size (at most the training texts - 1 and the
    n-grams - 1; the prepared data records the size used).
    """

    analyzer: TfidfAnalyzer = "char"
    char_ngrams: tuple[int, int] = (1, 3)
    word_ngrams: tuple[int, int] = (1, 2)
    sublinear_tf: bool = True
    min_df: int = 2
    max_df: float = 1.0
    max_features: int | None = 20_000
    dim: int = 256
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)

    def __post_init__(self) -> None:
        if self.analyzer not in ("char", "word", "char+word"):
            raise ValueError(f"tfidf analyzer must be 'char', 'word' or 'char+word', got {self.analyzer!r}")
        for name in ("char_ngrams", "word_ngrams"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(f"tfidf {name} must be (min, max) with 1 <= min <= max, got {(low, high)}")
        if self.min_df < 1 or not 0.0 < self.max_df <= 1.0:
            raise ValueError(f"tfidf min_df must be >= 1 and max_df in (0, 1], got {self.min_df} and {self.max_df}")
        if self.dim < 1 or (self.max_features is not None and self.max_features < 2):
            raise ValueError(f"tfidf dim must be >= 1 and max_features >= 2 (or None), got {self.dim} and {self.max_features}")


def analyze(text: str, cfg: TfidfConfig, known: Callable[[str], bool] | None = None) -> list[str]:
    """The n-grams of `text` under `cfg` (character n-grams prefixed 'c:', word n-grams 'w:', so they never collide);
    with `known`, Chinese compounds it rejects are split into known words first (`text_tokenize.split_compound`)."""
    features: list[str] = []
    if cfg.analyzer in ("char", "char+word"):
        clean = " ".join(_clean(text).split())
        low, high = cfg.char_ngrams
        for n in range(low, high + 1):
            features += ["c:" + clean[i : i + n] for i in range(len(clean) - n + 1) if not clean[i : i + n].isspace()]
    if cfg.analyzer in ("word", "char+word"):
        tokens = [t for t in tokenize(text, cfg.tokenizer, known) if any(ch.isalnum() for ch in t)]
        low, high = cfg.word_ngrams
        for n in range(low, high + 1):
            features += ["w:" + " ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return features


class TfidfTextModel:
    """A fitted TF-IDF -> SVD text feature: `transform(texts)` gives L2-normalised float32 vectors (zero for a text
    without a known n-gram)."""

    def __init__(self, cfg: TfidfConfig, features: list[str], idf: np.ndarray, components: np.ndarray) -> None:
        if components.shape[1] != len(features) or len(idf) != len(features):
            raise ValueError(f"tfidf model: {len(features)} n-grams, {len(idf)} idf weights, components {components.shape}")
        self.cfg = cfg
        self.features = list(features)
        self.index = {f: i for i, f in enumerate(self.features)}
        self.idf = np.asarray(idf, dtype=np.float64)
        self.components = np.asarray(components, dtype=np.float32)

    @property
    def dim(self) -> int:
        """Size of the vectors `transform` gives."""
        return int(self.components.shape[0])

    @classmethod
    def fit(cls, texts: Sequence[str], cfg: TfidfConfig, seed: int = 0) -> TfidfTextModel:
        """Fit the vocabulary, idf weights and SVD on `texts` (the training texts only)."""
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = list(texts)
        if len(texts) < 3:
            raise ValueError(f"tfidf needs at least 3 training texts, got {len(texts)}")
        cfg = dataclasses.replace(cfg, tokenizer=cfg.tokenizer.resolved())
        min_df = min(cfg.min_df, len(texts))
        vectorizer = TfidfVectorizer(
            analyzer=lambda t: analyze(t, cfg),
            sublinear_tf=cfg.sublinear_tf,
            min_df=min_df,
            max_df=cfg.max_df,
            max_features=cfg.max_features,
            dtype=np.float64,
        )
        try:
            matrix = vectorizer.fit_transform(texts)
        except ValueError as exc:  # every n-gram pruned by the document-frequency bounds
            raise ValueError(f"tfidf kept no n-gram of the training texts ({exc}); lower min_df or raise max_df") from exc
        features = list(vectorizer.get_feature_names_out())
        dim = min(cfg.dim, matrix.shape[0] - 1, matrix.shape[1] - 1)
        if dim < 1:
            raise ValueError(f"tfidf kept {matrix.shape[1]} n-gram(s) of {matrix.shape[0]} texts: too few for an SVD")
        svd = TruncatedSVD(n_components=dim, random_state=seed, algorithm="randomized", n_iter=7).fit(matrix)
        return cls(cfg, features, vectorizer.idf_, svd.components_)

    def tfidf(self, texts: Sequence[str]):
        """The L2-normalised TF-IDF rows of `texts` (scipy CSR, n x n-grams), as scikit-learn computes them."""
        from scipy.sparse import csr_matrix

        rows, cols, values = [], [], []
        for r, text in enumerate(texts):
            counts = Counter(self.index[f] for f in analyze(text, self.cfg, self.knows_word) if f in self.index)
            if not counts:
                continue
            cs = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
            tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
            weights = (1.0 + np.log(tf) if self.cfg.sublinear_tf else tf) * self.idf[cs]
            weights /= math.sqrt(float((weights**2).sum()))
            rows += [r] * len(cs)
            cols += cs.tolist()
            values += weights.tolist()
        return csr_matrix((values, (rows, cols)), shape=(len(texts), len(self.features)), dtype=np.float64)

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised SVD vectors of `texts`, float32 n x dim; the zero vector where no n-gram is known."""
        if isinstance(texts, str):
            raise TypeError("transform expects a list of texts; wrap a single text in a list")
        reduced = np.asarray(self.tfidf(list(texts)) @ self.components.T.astype(np.float64))
        norms = np.linalg.norm(reduced, axis=1, keepdims=True)
        return (reduced / np.where(norms > 0, norms, 1.0)).astype(np.float32)

    def known_features(self, texts: Sequence[str]) -> list[int]:
        """How many of each text's n-grams the model knows (0: the text reaches the model as nothing)."""
        return [sum(1 for f in analyze(t, self.cfg, self.knows_word) if f in self.index) for t in texts]

    def unknown_words(self, text: str) -> list[str]:
        """The words of `text` (project tokenizer, alphanumeric tokens) the model does not know: neither the word itself
        (word n-grams) nor any of its longest character n-grams (the word's length, capped at the largest n); single
        characters alone do not make a word known. A Chinese compound the model lacks as a word is split into the words
        it knows first, so only the uncovered characters are listed."""
        return list(
            dict.fromkeys(
                t
                for t in tokenize(text, self.cfg.tokenizer, self.knows_word)
                if any(ch.isalnum() for ch in t) and not self._word_known(t)
            )
        )

    def knows_word(self, word: str) -> bool:
        """Whether `word` is one of the model's word unigrams (what a compound may be split into)."""
        return "w:" + word in self.index

    def _word_known(self, token: str) -> bool:
        if self.cfg.analyzer in ("word", "char+word") and "w:" + token in self.index:
            return True
        if self.cfg.analyzer in ("char", "char+word"):
            n = min(self.cfg.char_ngrams[1], len(token))
            return any("c:" + token[i : i + n] in self.index for i in range(len(token) - n + 1))
        return False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored as a model directory's vocab.json)."""
        return {
            "kind": "tfidf",
            "format": TFIDF_FORMAT,
            "config": dataclasses.asdict(self.cfg),
            "features": self.features,
            "idf": self.idf.tolist(),
            "components_shape": list(self.components.shape),
            "components_float32_b64": base64.b64encode(np.ascontiguousarray(self.components, "<f4").tobytes()).decode(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TfidfTextModel:
        """Inverse of `to_dict`."""
        from model.config import from_dict

        if data.get("kind") != "tfidf" or data.get("format") != TFIDF_FORMAT:
            raise ValueError(
                f"not a tfidf text model of format {TFIDF_FORMAT} (kind {data.get('kind')!r}, format {data.get('format')!r})"
            )
        components = np.frombuffer(base64.b64decode(data["components_float32_b64"]), dtype="<f4")
        return cls(
            from_dict(TfidfConfig, data["config"]),
            data["features"],
            np.asarray(data["idf"]),
            components.reshape(data["components_shape"]).astype(np.float32),
        )
