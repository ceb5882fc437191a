"""Scores on one scale across modalities: a logistic calibration of cosine scores per search direction.

A text query's nearest texts score far higher than its nearest images (same-modality vectors sit closer together), so
raw cosines cannot rank a mixed image + text answer. For each direction (query modality -> result modality) training
fits p(relevant | cosine) = sigmoid(slope * cosine + intercept) on the validation split, "relevant" meaning that the two
items share a label; the fitted pairs are saved with the model's metrics. A mixed answer is ranked by that probability,
which leaves the order within each modality unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

MODALITIES = ("image", "text")
CALIBRATION_KEY = "calibration"


def direction(query_modality: str, result_modality: str) -> str:
    """The name of a search direction, e.g. 'text->image'."""
    return f"{query_modality}->{result_modality}"


@dataclass(frozen=True)
class ScoreCalibration:
    """Per direction, (slope, intercept) of the logistic map from cosine score to the probability of relevance."""

    params: dict[str, tuple[float, float]]
    relevant_means: str = "the two items share a label"
    fitted_on: str = "val"

    def relevance(self, query_modality: str, result_modality: str, scores) -> np.ndarray:
        """Calibrated probability of relevance for cosine `scores` of one direction (-inf scores give 0)."""
        slope, intercept = self.params[direction(query_modality, result_modality)]
        with np.errstate(over="ignore", invalid="ignore"):  # 0 * inf (slope 0, a -inf score) is NaN, mapped to 0
            z = slope * np.asarray(scores, dtype=np.float64) + intercept
            p = 1.0 / (1.0 + np.exp(-z))
        return np.nan_to_num(p, nan=0.0)

    def relevance_values(self, query_modality: str, result_modality: str, scores: Sequence[float]) -> list[float]:
        """`relevance` for a short list of scores as Python floats (a search answer's k hits: numpy's per-call cost is
        most of the time at that size); the same values to within rounding (tests/test_calibration.py)."""
        slope, intercept = self.params[direction(query_modality, result_modality)]
        return [_logistic(slope * float(score) + intercept) for score in scores]

    def covers(self, query_modality: str, result_modalities) -> bool:
        """True when every direction from `query_modality` to `result_modalities` is calibrated."""
        return all(direction(query_modality, m) in self.params for m in result_modalities)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored under metrics['calibration'])."""
        return {
            "params": {k: [float(a), float(b)] for k, (a, b) in self.params.items()},
            "relevant_means": self.relevant_means,
            "fitted_on": self.fitted_on,
            "form": "p = 1 / (1 + exp(-(slope * cosine + intercept)))",
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "ScoreCalibration | None":
        """Inverse of `to_dict`; None for a model saved without a calibration."""
        if not data or not data.get("params"):
            return None
        params = {str(k): (float(v[0]), float(v[1])) for k, v in data["params"].items()}
        return cls(
            params=params, relevant_means=data.get("relevant_means", cls.relevant_means), fitted_on=data.get("fitted_on", "val")
        )


def _logistic(z: float) -> float:
    """1 / (1 + exp(-z)) without overflow (0 for NaN, as relevance's nan_to_num)."""
    if z != z:
        return 0.0
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)
