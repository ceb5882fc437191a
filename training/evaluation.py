"""Retrieval metrics: mAP over all returned results with cosine similarity, precision@k and the PR curve.

Queries are processed in chunks of rows, so memory stays bounded whatever the number of queries: by default a chunk
holds as many queries as fit `DEFAULT_WORKSPACE_BYTES` of working memory against the whole retrieval set (a
unit-normalised float64 copy of the retrieval set comes on top). Ranking sorts one int64 key per (query, item) -- the
similarity rounded to TIE_DECIMALS in the high bits, the item's position in the low bits -- which is a plain integer
sort (several times faster than a stable argsort of floats) and yields exactly the stable descending order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# Working memory a chunk of queries may use against the whole retrieval set; the chunk's row count follows from it.
DEFAULT_WORKSPACE_BYTES = 256 * 2**20
# Peak bytes per (query, retrieval item) cell within a chunk: float64 similarities and their int64 sort keys alive
# together (16), or later the float32 label products with the relevance in both orders (6) next to the keys (8), or
# the positions and precisions of the relevant cells (up to 32 when every item is relevant).
_BYTES_PER_CELL = 32
# Similarities equal to this many decimals count as ties, so that rounding noise of different but equally
# similar vectors cannot reorder them; ties keep the retrieval set's order.
TIE_DECIMALS = 10
_TIE_SCALE = 10.0**TIE_DECIMALS
# Rounded similarities times -1e10 lie within +-1e10 (cosines are in [-1, 1]); adding 2^35 makes them non-negative and
# below 2^36, which leaves 27 low bits of the 63 for the item position.
_KEY_OFFSET = 1 << 35
_MAX_POSITION_BITS = 63 - 36


def _unit_rows(x, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (n, dim); got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(
            f"{what} contain NaN or infinite values (rows {np.where(~np.isfinite(x).all(axis=1))[0][:5].tolist()}); "
            "the model output is broken"
        )
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _label_matrix(labels, n: int, what: str) -> np.ndarray:
    y = np.asarray(labels, dtype=np.float32)
    if y.ndim != 2 or len(y) != n:
        raise ValueError(f"{what} must be a (n, n_classes) 0/1 matrix with one row per vector ({n}); got shape {y.shape}")
    return y


def chunk_rows(n_queries: int, n_retrieval: int, chunk: int | None = None, bytes_per_cell: int = _BYTES_PER_CELL) -> int:
    """Queries ranked at a time: `chunk`, or by default as many as fit DEFAULT_WORKSPACE_BYTES against n_retrieval items."""
    if chunk is None:
        chunk = DEFAULT_WORKSPACE_BYTES // max(1, n_retrieval * bytes_per_cell)
    return int(max(1, min(chunk, n_queries)))


def _rank_order(q_unit: np.ndarray, r_unit: np.ndarray) -> np.ndarray:
    """(chunk, n_retrieval) item positions of each query's ranking: descending cosine rounded to TIE_DECIMALS, ties in
    retrieval-set order (exactly a stable argsort of -np.round(sims, TIE_DECIMALS))."""
    n = len(r_unit)
    bits = max(1, (n - 1).bit_length())
    sims = q_unit @ r_unit.T
    if bits > _MAX_POSITION_BITS:  # over 134M items: no room for the position in the key
        return np.argsort(-np.round(sims, TIE_DECIMALS), axis=1, kind="stable")
    # np.round(x, d) is rint(x * 10**d) / 10**d, so equal rounded values are equal integers here and order is kept
    sims *= -_TIE_SCALE
    np.rint(sims, out=sims)
    keys = sims.astype(np.int64)
    del sims
    keys += _KEY_OFFSET
    keys <<= bits
    keys |= np.arange(n, dtype=np.int64)
    keys.sort(axis=1)
    keys &= (1 << bits) - 1
    return keys


def _ranked_relevance_unit(q_unit, r_unit, q_labels, r_labels_t) -> np.ndarray:
    """Relevance (bool) of the retrieval set for a chunk of unit queries, in rank order."""
    order = _rank_order(q_unit, r_unit)
    relevant = (q_labels @ r_labels_t) > 0
    return np.take_along_axis(relevant, order, axis=1)


def _chunks(queries, retrieval, query_labels, retrieval_labels, chunk: int | None, bytes_per_cell: int = _BYTES_PER_CELL):
    """Yield (start, stop, relevance in rank order) for the query chunks; inputs are checked and normalised once."""
    r_unit = _unit_rows(retrieval, "retrieval vectors")
    queries = np.asarray(queries)
    if queries.ndim != 2 or queries.shape[1] != r_unit.shape[1]:
        raise ValueError(
            f"query vectors must be a 2-D array of {r_unit.shape[1]}-d rows like the retrieval vectors; got shape {queries.shape}"
        )
    ql = _label_matrix(query_labels, len(queries), "query labels")
    rl = _label_matrix(retrieval_labels, len(r_unit), "retrieval labels")
    if ql.shape[1] != rl.shape[1]:
        raise ValueError(f"query labels have {ql.shape[1]} classes but retrieval labels have {rl.shape[1]}")
    rl_t = np.ascontiguousarray(rl.T)
    rows = chunk_rows(len(queries), len(r_unit), chunk, bytes_per_cell)
    for start in range(0, len(queries), rows):
        stop = min(len(queries), start + rows)
        # queries are normalised chunk by chunk: a float64 copy of all of them would be as big as the retrieval set's
        q_unit = _unit_rows(queries[start:stop], f"query vectors (rows {start}-{stop - 1})")
        yield start, stop, _ranked_relevance_unit(q_unit, r_unit, ql[start:stop], rl_t)


def _chunk_average_precisions(rel: np.ndarray) -> np.ndarray:
    """AP of each row of a ranked relevance matrix (0 for a row with no relevant item)."""
    counts = rel.sum(axis=1)
    rows, cols = np.nonzero(rel)  # row-major: each row's relevant ranks in increasing order
    del rel
    # the j-th relevant item of a row (1-based) at rank r contributes precision j / r
    hits = np.arange(1, len(rows) + 1, dtype=np.float64)
    hits -= np.repeat(np.cumsum(counts) - counts, counts)
    hits /= cols + 1.0
    precision_sum = np.bincount(rows, weights=hits, minlength=len(counts))
    return np.divide(precision_sum, counts, out=np.zeros(len(counts)), where=counts > 0)


def average_precisions(queries, retrieval, query_labels, retrieval_labels, chunk: int | None = None) -> np.ndarray:
    """AP of every query over the whole ranked retrieval set; memory is O(chunk x n_retrieval).

    `chunk` is the number of queries ranked at a time; None sizes it to DEFAULT_WORKSPACE_BYTES.
    """
    out = np.empty(len(queries), dtype=np.float64)
    for start, stop, rel in _chunks(queries, retrieval, query_labels, retrieval_labels, chunk):
        out[start:stop] = _chunk_average_precisions(rel)
    return out


def mean_average_precision(queries, retrieval, query_labels, retrieval_labels, chunk: int | None = None) -> float:
    """mAP over all returned results (cosine similarity, relevance = at least one shared label)."""
    return float(average_precisions(queries, retrieval, query_labels, retrieval_labels, chunk).mean())


def precision_at_k(
    queries, retrieval, query_labels, retrieval_labels, ks=(1, 5, 10, 50), chunk: int | None = None
) -> dict[int, float]:
    """Mean precision of the top k results for each k."""
    sums = {k: 0.0 for k in ks}
    for _, _, rel in _chunks(queries, retrieval, query_labels, retrieval_labels, chunk):
        for k in ks:
            sums[k] += rel[:, :k].mean(axis=1).sum()
    return {k: sums[k] / len(queries) for k in ks}


def precision_recall_curve(
    queries, retrieval, query_labels, retrieval_labels, points: int = 11, chunk: int | None = None
) -> list[dict[str, float]]:
    """Interpolated precision at `points` evenly spaced recall levels, averaged over queries with any relevant item."""
    levels = np.linspace(0.0, 1.0, points)
    total = np.zeros(points)
    counted = 0
    # cumulative hits, precision, recall and their reversed running maximum: about 64 bytes per cell
    for _, _, rel in _chunks(queries, retrieval, query_labels, retrieval_labels, chunk, bytes_per_cell=64):
        hits = np.cumsum(rel, axis=1)
        n_rel = hits[:, -1:]
        keep = n_rel[:, 0] > 0
        if not keep.any():
            continue
        precision = hits[keep] / np.arange(1, rel.shape[1] + 1)
        recall = hits[keep] / n_rel[keep]
        # Interpolated precision: best precision at any recall >= the level.
        best_after = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        for j, level in enumerate(levels):
            idx = np.argmax(recall >= level - 1e-12, axis=1)
            total[j] += best_after[np.arange(len(idx)), idx].sum()
        counted += int(keep.sum())
    return [{"recall": float(r), "precision": float(p / max(counted, 1))} for r, p in zip(levels, total)]


@dataclass(frozen=True)
class CrossModalScores:
    """Image->Text and Text->Image mAP and their average."""

    i2t: float
    t2i: float

    @property
    def avg(self) -> float:
        return (self.i2t + self.t2i) / 2.0


def cross_modal_map(image_vecs, text_vecs, labels, chunk: int | None = None) -> CrossModalScores:
    """Both retrieval directions over a paired set (queries of one modality rank all items of the other)."""
    return CrossModalScores(
        i2t=mean_average_precision(image_vecs, text_vecs, labels, labels, chunk),
        t2i=mean_average_precision(text_vecs, image_vecs, labels, labels, chunk),
    )


def cross_modal_map_torch(image_vecs: torch.Tensor, text_vecs: torch.Tensor, labels: torch.Tensor) -> CrossModalScores:
    """Same as `cross_modal_map` on tensors already on the training device (used for per-epoch validation).

    Ranking uses a stable sort so ties are broken by item order exactly as in the NumPy version.
    """
    u = torch.nn.functional.normalize(image_vecs.double(), dim=1)
    v = torch.nn.functional.normalize(text_vecs.double(), dim=1)
    y = labels.double()
    relevant = (y @ y.T) > 0
    ranks = torch.arange(1, len(u) + 1, dtype=torch.float64, device=u.device)

    def m_ap(sims: torch.Tensor) -> float:
        order = torch.sort(-sims, dim=1, stable=True).indices
        rel = torch.gather(relevant, 1, order).double()
        hits = rel.cumsum(1)
        n_rel = hits[:, -1]
        ap = (rel * hits / ranks).sum(1) / n_rel.clamp_min(1)
        return float(torch.where(n_rel > 0, ap, torch.zeros_like(ap)).mean())

    sims = torch.round(u @ v.T, decimals=TIE_DECIMALS)
    return CrossModalScores(i2t=m_ap(sims), t2i=m_ap(sims.T))


# ------------------------------------------------------------------------------------------ instance recall (R@K)
RECALL_KS = (1, 5, 10)


def instance_groups(keys) -> np.ndarray:
    """Integer group id per item: items with equal keys (their text, or their text input rows) are one instance.

    Where several items share one text (imagenet-sample: every photo of a synset has the synset's gloss), they are one
    instance: any of them is a hit for a query of the other modality.
    """
    if isinstance(keys, np.ndarray) and keys.ndim >= 1 and keys.dtype != object:
        rows = np.ascontiguousarray(keys).reshape(len(keys), -1)
        if not len(rows):
            return np.zeros(0, dtype=np.int64)
        return np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)
    ids: dict = {}
    return np.asarray([ids.setdefault(key, len(ids)) for key in keys], dtype=np.int64)


def first_hit_ranks(queries, retrieval, query_groups, retrieval_groups, chunk: int | None = None) -> np.ndarray:
    """1-based rank of each query's best-ranked hit (a retrieval item of the query's group) over the whole ranked set.

    Similarities are rounded to TIE_DECIMALS as in mAP; a non-hit tied with the best hit counts as ranked before it
    (a collapsed model cannot look good through ties). A query whose group is absent from the retrieval set gets
    rank n_retrieval + 1 (never found).
    """
    r_unit = _unit_rows(retrieval, "retrieval vectors")
    queries = np.asarray(queries)
    qg, rg = np.asarray(query_groups).reshape(-1), np.asarray(retrieval_groups).reshape(-1)
    if len(qg) != len(queries) or len(rg) != len(r_unit):
        raise ValueError(
            f"need one group per vector: {len(qg)} query groups for {len(queries)} queries, "
            f"{len(rg)} retrieval groups for {len(r_unit)} items"
        )
    ranks = np.empty(len(queries), dtype=np.int64)
    rows = chunk_rows(len(queries), len(r_unit), chunk, bytes_per_cell=17)
    for start in range(0, len(queries), rows):
        stop = min(len(queries), start + rows)
        sims = np.round(_unit_rows(queries[start:stop], "query vectors") @ r_unit.T, TIE_DECIMALS)
        hit = qg[start:stop, None] == rg[None, :]
        best = np.where(hit, sims, -np.inf).max(axis=1)
        ahead = ((sims >= best[:, None]) & ~hit).sum(axis=1)
        ranks[start:stop] = np.where(np.isfinite(best), ahead + 1, len(r_unit) + 1)
    return ranks


@dataclass(frozen=True)
class RecallScores:
    """One direction's instance recall: share of queries whose own pair is in the top 1 / 5 / 10, median rank, MRR."""

    r1: float
    r5: float
    r10: float
    median_rank: float
    mrr: float

    @classmethod
    def from_ranks(cls, ranks: np.ndarray) -> "RecallScores":
        """Summarise first-hit ranks."""
        ranks = np.asarray(ranks, dtype=np.float64)
        if not len(ranks):
            return cls(float("nan"), float("nan"), float("nan"), float("nan"), float("nan"))
        return cls(
            r1=float((ranks <= 1).mean()),
            r5=float((ranks <= 5).mean()),
            r10=float((ranks <= 10).mean()),
            median_rank=float(np.median(ranks)),
            mrr=float((1.0 / ranks).mean()),
        )

    def as_dict(self) -> dict[str, float]:
        """JSON-ready fields."""
        return {"r1": self.r1, "r5": self.r5, "r10": self.r10, "median_rank": self.median_rank, "mrr": self.mrr}


@dataclass(frozen=True)
class CrossModalRecall:
    """Instance recall both ways over a paired set (image -> its text, text -> its image)."""

    i2t: RecallScores
    t2i: RecallScores

    def average(self, field: str) -> float:
        """Mean of one field over the two directions."""
        return (getattr(self.i2t, field) + getattr(self.t2i, field)) / 2.0

    @property
    def r10(self) -> float:
        """R@10 averaged over both directions."""
        return self.average("r10")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields: both directions and their averages."""
        return {
            "i2t": self.i2t.as_dict(),
            "t2i": self.t2i.as_dict(),
            "avg": {f: self.average(f) for f in ("r1", "r5", "r10", "median_rank", "mrr")},
        }


def cross_modal_recall(image_vecs, text_vecs, groups, chunk: int | None = None) -> CrossModalRecall:
    """Instance recall both ways over a paired set; `groups[i]` is pair i's instance (see `instance_groups`)."""
    groups = np.asarray(groups).reshape(-1)
    return CrossModalRecall(
        i2t=RecallScores.from_ranks(first_hit_ranks(image_vecs, text_vecs, groups, groups, chunk)),
        t2i=RecallScores.from_ranks(first_hit_ranks(text_vecs, image_vecs, groups, groups, chunk)),
    )


SELECTION_CRITERIA = ("map", "r10", "mean")


def selection_score(scores: CrossModalScores, recall: CrossModalRecall | None, criterion: str) -> float:
    """The number model selection maximises: average mAP ('map'), average R@10 ('r10') or the mean of the two ('mean')."""
    if criterion == "map":
        return scores.avg
    if criterion not in SELECTION_CRITERIA:
        raise ValueError(f"selection criterion must be one of {SELECTION_CRITERIA}, got {criterion!r}")
    if recall is None:
        raise ValueError(f"selection criterion {criterion!r} needs instance recall")
    return recall.r10 if criterion == "r10" else (scores.avg + recall.r10) / 2.0
