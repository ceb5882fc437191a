"""Fit the per-direction score calibration (model/calibration.py) on a validation split."""

from __future__ import annotations

import numpy as np

from model.calibration import ScoreCalibration, direction

# Pairs used per direction at most: enough for two logistic parameters, bounded for large validation splits.
MAX_PAIRS = 2_000_000


def _pairs(
    queries: np.ndarray, items: np.ndarray, q_labels: np.ndarray, r_labels: np.ndarray, same_set: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(cosine, relevant) for query x item pairs, a query never paired with itself; rows subsampled to MAX_PAIRS."""
    rows = np.arange(len(queries))
    if len(queries) * len(items) > MAX_PAIRS:
        rows = np.sort(rng.choice(len(queries), size=max(1, MAX_PAIRS // len(items)), replace=False))
    q = queries[rows] / np.maximum(np.linalg.norm(queries[rows], axis=1, keepdims=True), 1e-12)
    r = items / np.maximum(np.linalg.norm(items, axis=1, keepdims=True), 1e-12)
    sims = q @ r.T
    relevant = (q_labels[rows] @ r_labels.T) > 0
    keep = np.ones_like(relevant, dtype=bool)
    if same_set:
        keep[np.arange(len(rows)), rows] = False
    return sims[keep].astype(np.float64), relevant[keep]


PAIR_RELEVANCE = "the result is the query's own pair (or shares its text)"


def _pair_pairs(
    queries: np.ndarray, items: np.ndarray, groups: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(cosine, same instance) for cross-modal query x item pairs of a paired set; rows subsampled to MAX_PAIRS."""
    rows = np.arange(len(queries))
    if len(queries) * len(items) > MAX_PAIRS:
        rows = np.sort(rng.choice(len(queries), size=max(1, MAX_PAIRS // len(items)), replace=False))
    q = queries[rows] / np.maximum(np.linalg.norm(queries[rows], axis=1, keepdims=True), 1e-12)
    r = items / np.maximum(np.linalg.norm(items, axis=1, keepdims=True), 1e-12)
    return (q @ r.T).ravel().astype(np.float64), (groups[rows, None] == groups[None, :]).ravel()


def fit_pair_calibration(
    image_vecs: np.ndarray, text_vecs: np.ndarray, groups: np.ndarray, seed: int = 0
) -> ScoreCalibration | None:
    """Calibration for data without labels: p(the result is the query's own pair | cosine), image->text and text->image.

    `groups[i]` is pair i's instance (training.evaluation.instance_groups: pairs sharing a text are one). Without labels
    nothing says when two images (or two texts) are relevant to each other, so the same-modality directions stay
    uncalibrated (a mixed answer is then ranked by raw scores). None when a direction has nothing to separate.
    """
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    groups = np.asarray(groups).reshape(-1)
    vecs = {"image": np.asarray(image_vecs, dtype=np.float64), "text": np.asarray(text_vecs, dtype=np.float64)}
    params = {}
    for query_modality, result_modality in (("image", "text"), ("text", "image")):
        sims, same = _pair_pairs(vecs[query_modality], vecs[result_modality], groups, rng)
        if same.all() or not same.any():
            return None
        fit = LogisticRegression(C=1e4, max_iter=1000).fit(sims[:, None], same)
        params[direction(query_modality, result_modality)] = (float(fit.coef_[0, 0]), float(fit.intercept_[0]))
    return ScoreCalibration(params=params, relevant_means=PAIR_RELEVANCE)


def fit_score_calibration(
    image_vecs: np.ndarray, text_vecs: np.ndarray, labels: np.ndarray, seed: int = 0
) -> ScoreCalibration | None:
    """Logistic p(relevant | cosine) per direction over a paired validation set; None when a direction has a single class."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, dtype=np.float32)
    vecs = {"image": np.asarray(image_vecs, dtype=np.float64), "text": np.asarray(text_vecs, dtype=np.float64)}
    params = {}
    for query_modality in ("image", "text"):
        for result_modality in ("image", "text"):
            sims, relevant = _pairs(
                vecs[query_modality], vecs[result_modality], labels, labels, query_modality == result_modality, rng
            )
            if relevant.all() or not relevant.any():
                return None  # nothing to separate (one class, or no relevant pair): no calibration
            fit = LogisticRegression(C=1e4, max_iter=1000).fit(sims[:, None], relevant)
            params[direction(query_modality, result_modality)] = (float(fit.coef_[0, 0]), float(fit.intercept_[0]))
    return ScoreCalibration(params=params)
