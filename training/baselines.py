"""Classic baselines in the same harness as DSCMR: regularised CCA and semantic matching, tuned on validation."""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.linalg import eigh, svd

from training.evaluation import CrossModalRecall, CrossModalScores, cross_modal_map, cross_modal_recall, instance_groups
from training.features import FeatureSplits


@dataclass
class BaselineResult:
    """Test scores of a baseline with the hyper-parameters picked on validation."""

    name: str
    val: CrossModalScores
    test: CrossModalScores
    params: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    val_recall: CrossModalRecall | None = None
    test_recall: CrossModalRecall | None = None


def _recall(vectors: tuple[np.ndarray, np.ndarray], split) -> CrossModalRecall:
    """Instance recall of a split's projected (image, text) vectors."""
    return cross_modal_recall(vectors[0], vectors[1], instance_groups(split.text))


def _inv_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = eigh(c)
    return (v / np.sqrt(np.maximum(w, 1e-12))) @ v.T


@dataclass
class RegularisedCCA:
    """CCA with ridge terms on both covariance matrices (ridge = 0 gives classic CCA)."""

    n_components: int
    ridge: float = 0.0

    def fit(self, x: np.ndarray, y: np.ndarray) -> "RegularisedCCA":
        """Fit projections on paired rows of x and y."""
        self.mx, self.my = x.mean(0), y.mean(0)
        xc, yc = x - self.mx, y - self.my
        n = len(x)
        # Ridge scaled by each side's mean variance so one value suits features of any scale.
        cxx = xc.T @ xc / n
        cyy = yc.T @ yc / n
        cxx += (self.ridge * np.trace(cxx) / len(cxx) + 1e-9) * np.eye(len(cxx))
        cyy += (self.ridge * np.trace(cyy) / len(cyy) + 1e-9) * np.eye(len(cyy))
        wx, wy = _inv_sqrt(cxx), _inv_sqrt(cyy)
        u, s, vt = svd(wx @ (xc.T @ yc / n) @ wy)
        k = min(self.n_components, len(s))
        self.a, self.b, self.corr = wx @ u[:, :k], wy @ vt.T[:, :k], s[:k]
        return self

    def truncated(self, k: int) -> "RegularisedCCA":
        """The same fit keeping only its first `k` canonical pairs (CCA's pairs are nested: no refit needed)."""
        out = dataclasses.replace(self, n_components=min(k, len(self.corr)))
        out.mx, out.my = self.mx, self.my
        out.a, out.b, out.corr = self.a[:, :k], self.b[:, :k], self.corr[:k]
        return out

    def transform(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project both modalities into the canonical space."""
        return (x - self.mx) @ self.a, (y - self.my) @ self.b


def run_cca(data: FeatureSplits, ridges=(0.0,), components=None) -> BaselineResult:
    """CCA; with several ridges / component counts, the pair with the best validation mAP is used on test."""
    t0 = time.perf_counter()
    max_k = min(data.train.image.shape[1], data.train.text.shape[1])
    components = components or sorted({k for k in (2, 4, 6, 8, 10, 16, 32, 64, 128) if k <= max_k} | {max_k})
    best = None
    # One fit per ridge at the largest size; each smaller size is its first k pairs (the same projections a fit of
    # that size gives, at a fraction of the cost with wide image features).
    fits = {
        ridge: RegularisedCCA(max(components), ridge).fit(data.train.image.astype(np.float64), data.train.text.astype(np.float64))
        for ridge in ridges
    }
    for ridge, k in itertools.product(ridges, components):
        cca = fits[ridge].truncated(k)
        val = cross_modal_map(*cca.transform(data.val.image, data.val.text), data.val.labels)
        if best is None or val.avg > best[0].avg:
            best = (val, cca, {"ridge": ridge, "n_components": k})
    val, cca, params = best
    test_vectors = cca.transform(data.test.image, data.test.text)
    test = cross_modal_map(*test_vectors, data.test.labels)
    name = "CCA" if tuple(ridges) == (0.0,) else "regularised CCA"
    return BaselineResult(
        name,
        val,
        test,
        params,
        time.perf_counter() - t0,
        val_recall=_recall(cca.transform(data.val.image, data.val.text), data.val),
        test_recall=_recall(test_vectors, data.test),
    )


def _posteriors(model, x: np.ndarray, multilabel: bool) -> np.ndarray:
    if multilabel:
        return np.column_stack([est.predict_proba(x)[:, 1] for est in model.estimators_])
    return model.predict_proba(x)


def run_semantic_matching(data: FeatureSplits, cs=(0.01, 0.1, 1.0, 10.0, 100.0), seed: int = 0) -> BaselineResult:
    """Semantic matching (Rasiwasia et al. 2010): per-modality logistic regression, class posteriors as the common space."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    multilabel = bool((data.train.labels.sum(1) > 1).any())
    y_train = data.train.labels if multilabel else data.train.labels.argmax(1)

    def fit(x: np.ndarray, c: float):
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        model = make_pipeline(StandardScaler(), OneVsRestClassifier(clf) if multilabel else clf)
        return model.fit(x, y_train)

    def space(model, x):
        return _posteriors(model[-1], model[:-1].transform(x), multilabel)

    # Each modality's classifier depends on its own C only: fit each once, then try every pairing.
    img_models = {c: fit(data.train.image, c) for c in cs}
    txt_models = {c: fit(data.train.text, c) for c in cs}
    img_val = {c: space(m, data.val.image) for c, m in img_models.items()}
    txt_val = {c: space(m, data.val.text) for c, m in txt_models.items()}
    best = None
    for c_img, c_txt in itertools.product(cs, cs):
        val = cross_modal_map(img_val[c_img], txt_val[c_txt], data.val.labels)
        if best is None or val.avg > best[0].avg:
            best = (val, {"C_image": c_img, "C_text": c_txt})
    val, params = best
    mi, mt = img_models[params["C_image"]], txt_models[params["C_text"]]
    test_vectors = space(mi, data.test.image), space(mt, data.test.text)
    test = cross_modal_map(*test_vectors, data.test.labels)
    return BaselineResult(
        "semantic matching",
        val,
        test,
        params,
        time.perf_counter() - t0,
        val_recall=_recall((img_val[params["C_image"]], txt_val[params["C_text"]]), data.val),
        test_recall=_recall(test_vectors, data.test),
    )
