"""Per-direction score calibration: fitted on validation pairs, saved with the model, one scale for mixed answers."""

import numpy as np
import pytest

from model.calibration import ScoreCalibration
from training.calibration import _pairs, fit_score_calibration


def _clustered(rng, n=120, d=16, c=4, spread_text=0.3, spread_image=1.0):
    centres = rng.normal(size=(c, d))
    cls = np.arange(n) % c
    labels = np.eye(c, dtype=np.float32)[cls]
    # texts sit tight around their class centre, images loosely: same-modality text scores run higher
    return centres[cls] + spread_image * rng.normal(size=(n, d)), centres[cls] + spread_text * rng.normal(size=(n, d)), labels


def test_fitted_probabilities_match_the_observed_relevance_rate_per_direction():
    rng = np.random.default_rng(0)
    images, texts, labels = _clustered(rng)
    calibration = fit_score_calibration(images, texts, labels)
    vecs = {"image": images, "text": texts}
    for q in ("image", "text"):
        for r in ("image", "text"):
            sims, relevant = _pairs(vecs[q], vecs[r], labels, labels, q == r, np.random.default_rng(0))
            p = calibration.relevance(q, r, sims)
            assert calibration.params[f"{q}->{r}"][0] > 0  # a higher cosine means more likely relevant
            # a logistic fit with an intercept reproduces the base rate; it also separates the two groups
            assert p.mean() == pytest.approx(relevant.mean(), abs=2e-3)
            assert p[relevant].mean() > p[~relevant].mean() + 0.3
    # the same cosine means more on the loose image side than on the tight text side
    assert calibration.relevance("image", "image", [0.5])[0] > calibration.relevance("text", "text", [0.5])[0]


def test_round_trip_and_degenerate_input():
    calibration = ScoreCalibration({"text->image": (12.0, -3.0), "text->text": (20.0, -15.0)})
    again = ScoreCalibration.from_dict(calibration.to_dict())
    assert again == calibration and again.covers("text", ["image", "text"]) and not again.covers("image", ["text"])
    assert ScoreCalibration.from_dict(None) is None
    assert calibration.relevance("text", "image", [-np.inf]).tolist() == [0.0]
    rng = np.random.default_rng(1)
    one_class = np.ones((20, 1), np.float32)
    assert fit_score_calibration(rng.normal(size=(20, 4)), rng.normal(size=(20, 4)), one_class) is None


@pytest.mark.parametrize("slope, intercept", [(12.0, -3.0), (-7.5, 2.0), (0.0, 1.0), (900.0, -10.0)])
def test_python_relevance_matches_numpy_reference(slope, intercept):
    """The per-answer path (Python floats) gives the array path's values, the edges included (overflow, -inf, NaN)."""
    calibration = ScoreCalibration({"text->image": (slope, intercept)})
    scores = [-np.inf, -2.0, -1.0, -0.25, 0.0, 0.1, 0.25, 0.5, 0.999, 1.0, 3.0, np.inf, np.nan]
    reference = calibration.relevance("text", "image", scores)
    values = calibration.relevance_values("text", "image", scores)
    assert all(isinstance(v, float) for v in values)
    assert values == pytest.approx(reference.tolist(), rel=1e-12, abs=1e-300)
    assert calibration.relevance_values("text", "image", []) == []
