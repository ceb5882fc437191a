"""Labels derived from the texts of a corpus without labels, so that DSCMR's J1 / J2 / J3 apply: clusters of the text side.

`prepare --derive-labels clusters [--clusters K]` runs k-means (scikit-learn, seeded) over the prepared text features --
MiniLM sentence vectors, or the mean word vector of each text for the sentence CNN -- unit-normalised. Without K, k comes
from a small grid: for each k the clusters are fitted on the train split and the validation texts are assigned to them;
the k with the best validation silhouette wins. Every item is then labelled with its nearest cluster (one label each),
and each cluster is named by its top terms: the words most over-represented in its train texts against the whole train
split. The method, k, seed, grid scores, names and terms are stored with the prepared data (prepared.json).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from training.datasets.checks import CorpusInputError

DERIVE_METHODS = ("none", "clusters")
CLUSTER_GRID = (4, 8, 16, 32, 64)
TERMS_PER_NAME = 3


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

    def one_hot(self) -> np.ndarray:
        """(n_items, k) 0/1 label matrix."""
        out = np.zeros((len(self.assignment), self.k), dtype=np.float32)
        out[np.arange(len(self.assignment)), self.assignment] = 1.0
        return out

    def to_dict(self) -> dict[str, Any]:
        """What prepared.json stores (without the per-item assignment, which is labels.npy)."""
        return {k: v for k, v in asdict(self).items() if k != "assignment"}


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
