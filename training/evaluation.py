"""Retrieval metrics: mAP over all returned results with cosine similarity, precision@k and the PR curve."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_CHUNK = 1024
# Similarities equal to this many decimals count as ties, so that rounding noise of different but equally
# similar vectors cannot reorder them; ties keep the retrieval set's order.
TIE_DECIMALS = 10


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _ranked_relevance(queries, retrieval, query_labels, retrieval_labels, start: int, stop: int) -> np.ndarray:
    """Relevance (0/1) of the retrieval set for queries[start:stop], in rank order (ties keep retrieval order)."""
    sims = np.round(_normalise(queries[start:stop]) @ _normalise(retrieval).T, TIE_DECIMALS)
    order = np.argsort(-sims, axis=1, kind="stable")
    relevant = (np.asarray(query_labels[start:stop], dtype=np.float64) @ np.asarray(retrieval_labels, dtype=np.float64).T) > 0
    return np.take_along_axis(relevant, order, axis=1)


def average_precisions(queries, retrieval, query_labels, retrieval_labels, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """AP of every query over the whole ranked retrieval set; memory is O(chunk x n_retrieval)."""
    n = len(queries)
    out = np.empty(n, dtype=np.float64)
    ranks = np.arange(1, len(retrieval) + 1, dtype=np.float64)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        rel = _ranked_relevance(queries, retrieval, query_labels, retrieval_labels, start, stop)
        hits = np.cumsum(rel, axis=1)
        n_relevant = hits[:, -1]
        precision_sum = (rel * (hits / ranks)).sum(axis=1)
        out[start:stop] = np.divide(precision_sum, n_relevant, out=np.zeros_like(precision_sum), where=n_relevant > 0)
    return out


def mean_average_precision(queries, retrieval, query_labels, retrieval_labels, chunk: int = DEFAULT_CHUNK) -> float:
    """mAP over all returned results (cosine similarity, relevance = at least one shared label)."""
    return float(average_precisions(queries, retrieval, query_labels, retrieval_labels, chunk).mean())


def precision_at_k(queries, retrieval, query_labels, retrieval_labels, ks=(1, 5, 10, 50), chunk: int = DEFAULT_CHUNK) -> dict[int, float]:
    """Mean precision of the top k results for each k."""
    sums = {k: 0.0 for k in ks}
    for start in range(0, len(queries), chunk):
        stop = min(len(queries), start + chunk)
        rel = _ranked_relevance(queries, retrieval, query_labels, retrieval_labels, start, stop)
        for k in ks:
            sums[k] += rel[:, :k].mean(axis=1).sum()
    return {k: sums[k] / len(queries) for k in ks}


def precision_recall_curve(queries, retrieval, query_labels, retrieval_labels, points: int = 11, chunk: int = DEFAULT_CHUNK) -> list[dict[str, float]]:
    """Interpolated precision at `points` evenly spaced recall levels, averaged over queries with any relevant item."""
    levels = np.linspace(0.0, 1.0, points)
    total = np.zeros(points)
    counted = 0
    for start in range(0, len(queries), chunk):
        stop = min(len(queries), start + chunk)
        rel = _ranked_relevance(queries, retrieval, query_labels, retrieval_labels, start, stop)
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


def cross_modal_map(image_vecs, text_vecs, labels, chunk: int = DEFAULT_CHUNK) -> CrossModalScores:
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
