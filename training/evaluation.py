"""Retrieval metrics: mAP over all returned results with cosine similarity, precision@k and the PR curve.

Queries are processed in chunks of rows, so memory stays bounded whatever the number of queries: by default a chunk
holds as many queries as fit `DEFAULT_WORKSPACE_BYTES` of working memory against the whole retrieval set (a
unit-normalised float64 copy of the retrieval set comes on top). Ranking sorts one int64 key per (query, item) -- the
similarity rounded to TIE_DECIMALS in the high bits, the item's position in the low bits -- which is a plain integer
sort (several times faster than a stable argsort of floats) and yields exactly the stable descending order.
"""
from __future__ import annotations

from dataclasses import dataclass

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
_TIE_SCALE = 10.0 ** TIE_DECIMALS
# Rounded similarities times -1e10 lie within +-1e10 (cosines are in [-1, 1]); adding 2^35 makes them non-negative and
# below 2^36, which leaves 27 low bits of the 63 for the item position.
_KEY_OFFSET = 1 << 35
_MAX_POSITION_BITS = 63 - 36


def _unit_rows(x, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (n, dim); got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or infinite values (rows {np.where(~np.isfinite(x).all(axis=1))[0][:5].tolist()}); "
                         "the model output is broken")
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
        raise ValueError(f"query vectors must be a 2-D array of {r_unit.shape[1]}-d rows like the retrieval vectors; got shape {queries.shape}")
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


def precision_at_k(queries, retrieval, query_labels, retrieval_labels, ks=(1, 5, 10, 50), chunk: int | None = None) -> dict[int, float]:
    """Mean precision of the top k results for each k."""
    sums = {k: 0.0 for k in ks}
    for _, _, rel in _chunks(queries, retrieval, query_labels, retrieval_labels, chunk):
        for k in ks:
            sums[k] += rel[:, :k].mean(axis=1).sum()
    return {k: sums[k] / len(queries) for k in ks}


def precision_recall_curve(queries, retrieval, query_labels, retrieval_labels, points: int = 11, chunk: int | None = None) -> list[dict[str, float]]:
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
