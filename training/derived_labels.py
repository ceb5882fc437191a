"""Labels derived from the texts of a corpus without labels, so that DSCMR's J1 / J2 / J3 apply: clusters of the text side,
or keyword tags.

`prepare --derive-labels clusters [--clusters K]` runs k-means (scikit-learn, seeded) over the prepared text features --
MiniLM sentence vectors, or the mean word vector of each text for the sentence CNN -- unit-normalised. Without K, k comes
from a small grid: for each k the clusters are fitted on the train split and the validation texts are assigned to them;
the k with the best validation silhouette wins. Every item is then labelled with its nearest cluster (one label each),
and each cluster is named by its top terms: the words most over-represented in its train texts against the whole train
split. The method, k, seed, grid scores, names and terms are stored with the prepared data (prepared.json).

`prepare --derive-labels keywords [--keywords N] [--keyword-min-df D] [--keyword-max-df F] [--keyword-words W]` tags
each item with the keywords its text holds (multi-label): the content words -- and, with W = 2, two-word phrases of
adjacent content words -- of the train texts, tokenized by the project's tokenizer (which segments scripts written
without spaces), whose document frequency in the train split is at least D texts and at most a share F of them; the N
most frequent of those are the labels, each named by the keyword itself. An item whose text holds none of them gets
an empty label row: training counts J1 and J2 over the labelled items only (model/losses.py, partial labels).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import regex

from model.text_tokenize import _KANA, _NO_SPACE_SCRIPTS, TokenizerConfig, tokenize
from training.datasets.checks import CorpusInputError

DERIVE_METHODS = ("none", "clusters", "keywords")
CLUSTER_GRID = (4, 8, 16, 32, 64)
TERMS_PER_NAME = 3


@dataclass(frozen=True)
class KeywordConfig:
    """Which keywords become labels: how many, their train document-frequency bounds and their length in words."""

    count: int = 64  # the vocabulary size: the N most frequent keywords within the bounds
    min_df: int = 2  # in at least this many train texts (a keyword of one text relates no pair)
    max_df: float = 0.5  # in at most this share of the train texts (words every text has tell nothing apart)
    max_words: int = 1  # 1: words; 2: words and two-word phrases of adjacent content words

    def validate(self) -> None:
        """Raise CorpusInputError for settings that cannot select a keyword."""
        if self.count < 1:
            raise CorpusInputError(f"--keywords must be at least 1, got {self.count}")
        if self.min_df < 1:
            raise CorpusInputError(f"--keyword-min-df must be at least 1 text, got {self.min_df}")
        if not 0.0 < self.max_df <= 1.0:
            raise CorpusInputError(f"--keyword-max-df is a share of the train texts in (0, 1], got {self.max_df}")
        if self.max_words not in (1, 2):
            raise CorpusInputError(f"--keyword-words must be 1 or 2, got {self.max_words}")


@dataclass(frozen=True)
class DerivedLabels:
    """Labels made from the texts: which method, k, seed, how k was chosen, each label's name and top terms."""

    method: str
    k: int
    seed: int
    features: str
    names: list[str]
    top_terms: list[list[str]]
    assignment: np.ndarray = field(repr=False)  # label index of each item, in the order of the features
    chosen: str = "given"  # "given" (k set by the user), "val silhouette" or "train silhouette"
    grid: dict[str, float | None] = field(default_factory=dict)  # k -> silhouette (None: not measurable)
    sizes: list[int] = field(default_factory=list)  # train items per label
    # keywords: the multi-label 0/1 matrix (rows may be all zero), the settings and the items left without a label
    matrix: np.ndarray | None = field(default=None, repr=False)
    params: dict[str, Any] = field(default_factory=dict)
    without_label: dict[str, int] = field(default_factory=dict)

    @property
    def multilabel(self) -> bool:
        """Whether an item can carry several labels (keywords) rather than exactly one (clusters)."""
        return self.matrix is not None

    def one_hot(self) -> np.ndarray:
        """(n_items, k) 0/1 label matrix: one 1 per row for clusters, the keyword tags (any number) for keywords."""
        if self.matrix is not None:
            return self.matrix.astype(np.float32)
        out = np.zeros((len(self.assignment), self.k), dtype=np.float32)
        out[np.arange(len(self.assignment)), self.assignment] = 1.0
        return out

    def item_labels(self) -> list[tuple[str, ...]]:
        """Each item's label names, in the order of the features (empty for an item without a keyword)."""
        rows = self.one_hot()
        return [tuple(self.names[j] for j in np.flatnonzero(row)) for row in rows]

    def to_dict(self) -> dict[str, Any]:
        """What prepared.json stores (without the per-item labels, which are labels.npy)."""
        return {k: v for k, v in asdict(self).items() if k not in ("assignment", "matrix")}


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def mean_word_vectors(token_ids: np.ndarray, embeddings: np.ndarray, skip_ids: Sequence[int]) -> np.ndarray:
    """The mean word vector of each text (token ids in `skip_ids`, padding and unknown words, left out)."""
    keep = ~np.isin(token_ids, list(skip_ids))
    sums = np.zeros((len(token_ids), embeddings.shape[1]), dtype=np.float64)
    for column in range(token_ids.shape[1]):
        rows = keep[:, column]
        sums[rows] += embeddings[token_ids[rows, column]]
    return sums / np.maximum(keep.sum(1, keepdims=True), 1)


def _silhouette(features: np.ndarray, assignment: np.ndarray) -> float | None:
    from sklearn.metrics import silhouette_score

    present = len(set(assignment.tolist()))
    if present < 2 or present > len(features) - 1:
        return None
    return float(silhouette_score(features, assignment))


def derive_cluster_labels(
    features: np.ndarray,
    texts: Sequence[str],
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    k: int | None = None,
    seed: int = 0,
    grid: Sequence[int] = CLUSTER_GRID,
    feature_kind: str = "text features",
) -> DerivedLabels:
    """k-means labels of the texts (see the module docstring); CorpusInputError when the train split is too small."""
    from sklearn.cluster import KMeans

    x = unit_rows(features)
    train, val = x[train_rows], x[val_rows]
    n_train = len(train_rows)
    if k is not None:
        if k < 2:
            raise CorpusInputError(f"--clusters must be at least 2, got {k}")
        if n_train < k:
            raise CorpusInputError(
                f"{k} clusters need at least {k} training items; the train split has {n_train}: "
                "set a smaller --clusters or bring more items"
            )
        candidates = [k]
    else:
        candidates = [c for c in grid if c <= n_train]
        if not candidates:
            raise CorpusInputError(
                f"the train split has {n_train} item(s), fewer than the smallest k of the grid ({min(grid)}): "
                "bring more items or set --clusters"
            )

    def fit(c: int) -> KMeans:
        return KMeans(n_clusters=c, random_state=seed, n_init=4).fit(train)

    fits = {c: fit(c) for c in candidates}
    chosen, scores = "given", {}
    if k is None:
        scores = {c: _silhouette(val, fits[c].predict(val)) for c in candidates}
        chosen = "val silhouette"
        if all(s is None for s in scores.values()):
            scores = {c: _silhouette(train, fits[c].labels_) for c in candidates}
            chosen = "train silhouette"
        measured = {c: s for c, s in scores.items() if s is not None}
        k = max(measured, key=lambda c: (measured[c], -c)) if measured else candidates[0]
    model = fits[k]
    # the train items keep the label k-means gave them (every cluster has train items); the others get the nearest
    assignment = model.predict(x).astype(np.int64)
    assignment[train_rows] = model.labels_
    terms = top_terms([texts[i] for i in train_rows], model.labels_, k)
    return DerivedLabels(
        method="clusters",
        k=int(k),
        seed=int(seed),
        features=feature_kind,
        names=label_names_from_terms(terms),
        top_terms=terms,
        assignment=assignment,
        chosen=chosen,
        grid={str(c): (None if s is None else round(s, 4)) for c, s in scores.items()},
        sizes=np.bincount(model.labels_, minlength=k).tolist(),
    )


def top_terms(texts: Sequence[str], assignment: np.ndarray, k: int, count: int = TERMS_PER_NAME) -> list[list[str]]:
    """For each label, the `count` words most over-represented in its texts: the share of its texts holding the word
    minus the share of all texts holding it, when positive (stop words, numbers and one-character Latin words left out). The tokenizer
    is the project's (model/text_tokenize.py), which segments scripts written without spaces."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    from model.text_tokenize import TokenizerConfig, tokenize

    config = TokenizerConfig(numbers="placeholder", punctuation="drop")

    def usable(token: str) -> bool:
        return token not in ENGLISH_STOP_WORDS and not token.startswith("<") and (len(token) > 1 or not token.isascii())

    docs = [{t for t in tokenize(text, config) if usable(t)} for text in texts]
    overall = Counter(t for d in docs for t in d)
    n = max(1, len(docs))
    out = []
    for label in range(k):
        members = [d for d, a in zip(docs, assignment) if a == label]
        inside = Counter(t for d in members for t in d)
        size = max(1, len(members))
        lift = {t: inside[t] / size - overall[t] / n for t in inside}
        # words every label uses as much (lift 0) name nothing; the most frequent break ties, then the alphabet
        ranked = sorted((t for t in inside if lift[t] > 1e-12), key=lambda t: (-lift[t], -inside[t], t))
        out.append(ranked[:count])
    return out


def label_names_from_terms(terms: list[list[str]]) -> list[str]:
    """One unique name per label: its top terms joined by ' / ' ('cluster N' where a label has none); repeats get '#N'."""
    names, seen = [], Counter()
    for i, words in enumerate(terms):
        base = " / ".join(words) if words else f"cluster {i + 1}"
        seen[base] += 1
        names.append(base if seen[base] == 1 else f"{base} #{seen[base]}")
    return names


_NO_SPACE = regex.compile(rf"[{_NO_SPACE_SCRIPTS}]")
_HIRAGANA_ONLY = regex.compile(r"[\p{Hiragana}\u30fc]+")
# Chinese function words that jieba returns as words: they tag nearly every caption, so they would relate every pair.
CHINESE_STOP_WORDS = frozenset(
    "的 了 在 是 和 与 及 或 着 过 把 被 从 向 对 于 为 以 之 其 而 等 也 都 很 就 有 这 那 个 一 一个 一只 一些 上 下 中 里 "
    "地 得 又 并 还 但 让 给 它 他 她 我 你 们".split()
)


def _content_tokens(text: str) -> list[str | None]:
    """The text's tokens by the project's tokenizer, with None where a token is no content word (stop words, numbers,
    punctuation, one-character Latin words), so that phrases are only made of adjacent content words."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    config = TokenizerConfig(numbers="placeholder", punctuation="drop")

    def usable(token: str) -> bool:
        if token in ENGLISH_STOP_WORDS or token in CHINESE_STOP_WORDS or token.startswith("<"):
            return False
        # hiragana alone is Japanese particles and endings; content words are written in kanji or katakana
        return (len(token) > 1 or not token.isascii()) and not _HIRAGANA_ONLY.fullmatch(token)

    return [t if usable(t) else None for t in tokenize(text, config)]


def _join(a: str, b: str) -> str:
    # words of scripts without spaces join without one (as the text writes them); others with a space
    return a + b if _NO_SPACE.search(a[-1]) and _NO_SPACE.search(b[0]) else f"{a} {b}"


def text_keywords(text: str, max_words: int = 1) -> set[str]:
    """The candidate keywords of one text: its content words and, with max_words 2, its phrases of two adjacent ones."""
    tokens = _content_tokens(text)
    out = {t for t in tokens if t is not None}
    if max_words >= 2:
        # where the tokenizer cuts a run without spaces into character bigrams (Japanese, or Chinese without jieba) the
        # bigrams already are its phrases: joining neighbours there would only glue overlapping pieces
        units = _KANA.search(text) is not None or TokenizerConfig().resolved().cjk != "jieba"

        def joinable(a: str | None, b: str | None) -> bool:
            return a is not None and b is not None and not (units and _NO_SPACE.search(a) and _NO_SPACE.search(b))

        out |= {_join(a, b) for a, b in zip(tokens, tokens[1:]) if joinable(a, b)}
    return out


def select_keywords(train_texts: Sequence[str], cfg: KeywordConfig) -> tuple[list[str], list[int]]:
    """The keywords (most frequent first, ties alphabetical) within the document-frequency bounds of the train texts,
    and their train document frequencies."""
    cfg.validate()
    df = Counter(k for text in train_texts for k in text_keywords(text, cfg.max_words))
    ceiling = cfg.max_df * len(train_texts)
    kept = sorted((k for k, n in df.items() if cfg.min_df <= n <= ceiling), key=lambda k: (-df[k], k))[: cfg.count]
    return kept, [df[k] for k in kept]


def derive_keyword_labels(
    texts: Sequence[str], train_rows: np.ndarray, cfg: KeywordConfig = KeywordConfig(), seed: int = 0
) -> DerivedLabels:
    """Keyword tags of the texts as multi-labels (see the module docstring); CorpusInputError when no word of the train
    texts lies within the document-frequency bounds."""
    train_rows = np.asarray(train_rows, dtype=np.int64)
    keywords, df = select_keywords([texts[i] for i in train_rows], cfg)
    if not keywords:
        raise CorpusInputError(
            f"no keyword of the {len(train_rows)} train texts is in at least {cfg.min_df} texts and at most "
            f"{cfg.max_df:g} of them: lower --keyword-min-df or raise --keyword-max-df"
        )
    column = {k: j for j, k in enumerate(keywords)}
    matrix = np.zeros((len(texts), len(keywords)), dtype=np.float32)
    for i, text in enumerate(texts):
        for k in text_keywords(text, cfg.max_words):
            if k in column:
                matrix[i, column[k]] = 1.0
    empty = matrix.sum(1) == 0
    return DerivedLabels(
        method="keywords",
        k=len(keywords),
        seed=int(seed),  # the selection is deterministic; the seed is recorded like the clusters' for the retrain
        features="caption words (model/text_tokenize.py)",
        names=list(keywords),
        top_terms=[[k] for k in keywords],
        assignment=np.full(len(texts), -1, dtype=np.int64),
        chosen="most frequent within the df bounds",
        sizes=df,
        matrix=matrix,
        params=asdict(cfg),
        without_label={"train": int(empty[train_rows].sum()), "all": int(empty.sum())},
    )
