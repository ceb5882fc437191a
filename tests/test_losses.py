"""The DSCMR objective against a direct, slow NumPy transcription of the method's formulas."""

import math

import numpy as np
import pytest
import torch

from model.config import ABLATIONS, LossConfig, NetworkConfig, loss_for_ablation
from model.losses import dscmr_loss, instance_term, j1_label_space, j2_common_space, j3_modality_invariance, ridge_classifier
from model.network import DSCMRNet


def _np_cos(a, b):
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))


def ref_j1(pu, pv, y, form):
    if form == "released":
        return np.mean([np.linalg.norm(pu[i] - y[i]) for i in range(len(y))]) + np.mean(
            [np.linalg.norm(pv[i] - y[i]) for i in range(len(y))]
        )
    return np.sqrt(((pu - y) ** 2).sum()) / len(y) + np.sqrt(((pv - y) ** 2).sum()) / len(y)


def ref_j2(u, v, y):
    n = len(y)
    total = 0.0
    for a, b in ((u, v), (u, u), (v, v)):
        acc = 0.0
        for i in range(n):
            for j in range(n):
                x = _np_cos(a[i], b[j]) / 2
                s = 1.0 if (y[i] @ y[j]) > 0 else 0.0
                acc += math.log(1 + math.exp(x)) - s * x
        total += acc / (n * n)
    return total


def ref_j3(u, v, form):
    if form == "released":
        return np.mean([np.linalg.norm(u[i] - v[i]) for i in range(len(u))])
    return np.sqrt(((u - v) ** 2).sum()) / len(u)


def _batch(rng, n, d, c, multilabel):
    y = np.zeros((n, c))
    y[np.arange(n), rng.integers(0, c, n)] = 1
    if multilabel:
        y = np.maximum(y, rng.random((n, c)) < 0.25)
    return (
        rng.normal(size=(n, d)),
        rng.normal(size=(n, d)),
        rng.normal(size=(n, c)),
        rng.normal(size=(n, c)),
        y.astype(np.float64),
    )


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("form", ["released", "paper"])
def test_each_term_matches_numpy_transcription(multilabel, form):
    rng = np.random.default_rng(7 + multilabel)
    u, v, pu, pv, y = _batch(rng, 24, 16, 5, multilabel)
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    assert float(j1_label_space(t(pu), t(pv), t(y), form)) == pytest.approx(ref_j1(pu, pv, y, form), abs=1e-5)
    assert float(j2_common_space(t(u), t(v), t(y))) == pytest.approx(ref_j2(u, v, y), abs=1e-5)
    assert float(j3_modality_invariance(t(u), t(v), form)) == pytest.approx(ref_j3(u, v, form), abs=1e-5)
    cfg = LossConfig(norm_form=form)
    terms = dscmr_loss(t(u), t(v), t(pu), t(pv), t(y), cfg)
    expected = ref_j1(pu, pv, y, form) + cfg.lambda_j2 * ref_j2(u, v, y) + cfg.eta_j3 * ref_j3(u, v, form)
    assert float(terms.total) == pytest.approx(expected, abs=1e-5)


def test_float32_matches_reference_too():
    rng = np.random.default_rng(3)
    u, v, pu, pv, y = _batch(rng, 100, 64, 10, True)
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    assert float(j2_common_space(t(u), t(v), t(y))) == pytest.approx(ref_j2(u, v, y), abs=1e-5)


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_ablations_switch_terms_off(ablation):
    rng = np.random.default_rng(1)
    u, v, pu, pv, y = (torch.tensor(a, dtype=torch.float64) for a in _batch(rng, 10, 8, 3, False))
    cfg = loss_for_ablation(LossConfig(), ablation)
    terms = dscmr_loss(u, v, pu, pv, y, cfg)
    expected = (
        (float(j1_label_space(pu, pv, y)) if cfg.use_j1 else 0.0)
        + (cfg.lambda_j2 * float(j2_common_space(u, v, y)) if cfg.use_j2 else 0.0)
        + (cfg.eta_j3 * float(j3_modality_invariance(u, v)) if cfg.use_j3 else 0.0)
    )
    assert float(terms.total) == pytest.approx(expected, abs=1e-12)
    assert {"full": 3, "no_j1": 2, "no_j2": 2, "no_j3": 2, "j1_only": 1}[ablation] == sum([cfg.use_j1, cfg.use_j2, cfg.use_j3])


def test_unknown_ablation_is_refused():
    with pytest.raises(ValueError, match="unknown ablation"):
        loss_for_ablation(LossConfig(), "no_j4")


@pytest.mark.parametrize("case", ["identical", "zero", "orthogonal", "huge"])
@pytest.mark.parametrize("form", ["released", "paper"])
def test_gradients_stay_finite_on_extreme_inputs(case, form):
    n, d, c = 6, 8, 3
    if case == "identical":
        u = torch.ones(n, d)
        v = torch.ones(n, d)
    elif case == "zero":
        u, v = torch.zeros(n, d), torch.zeros(n, d)
    elif case == "orthogonal":
        u = torch.eye(d)[:n]
        v = torch.eye(d)[[(i + 1) % d for i in range(n)]]
    else:
        u, v = torch.full((n, d), 1e18), torch.full((n, d), -1e18)
    u = u.clone().requires_grad_(True)
    v = v.clone().requires_grad_(True)
    y = torch.eye(c)[torch.arange(n) % c]
    pu, pv = (y.clone() if case == "identical" else torch.zeros(n, c)).requires_grad_(True), y.clone().requires_grad_(True)
    terms = dscmr_loss(u, v, pu, pv, y, LossConfig(norm_form=form))
    terms.total.backward()
    assert torch.isfinite(terms.total)
    for g in (u.grad, v.grad, pu.grad, pv.grad):
        assert torch.isfinite(g).all()


def test_j2_is_softplus_stable_where_naive_form_overflows():
    # cos/2 is bounded, so the logistic term itself never overflows; this checks the exact value at the extremes.
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    expected = 3 * (math.log(1 + math.exp(0.5)) - 0.5)
    assert float(j2_common_space(u, u, y)) == pytest.approx(expected, abs=1e-6)


def test_loss_falls_on_small_separable_problem():
    torch.manual_seed(0)
    n, c = 60, 3
    y = torch.eye(c)[torch.arange(n) % c]
    img = y @ torch.randn(c, 12) + 0.1 * torch.randn(n, 12)
    txt = y @ torch.randn(c, 7) + 0.1 * torch.randn(n, 7)
    net = DSCMRNet(NetworkConfig(image_input_dim=12, text_input_dim=7, hidden_dim=32, common_dim=16, num_classes=c))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(150):
        u, v, pu, pv = net(img, txt)
        terms = dscmr_loss(u, v, pu, pv, y, LossConfig())
        opt.zero_grad()
        terms.total.backward()
        opt.step()
        losses.append(float(terms.total.detach()))
    assert losses[-1] < 0.3 * losses[0]
    u, v, pu, pv = net(img, txt)
    assert (pu.argmax(1) == y.argmax(1)).float().mean() == 1.0


def test_ridge_classifier_solves_the_joint_ridge_problem():
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=(20, 30)), rng.normal(size=(20, 30))
    y = np.eye(4)[rng.integers(0, 4, 20)]
    ridge = 0.5
    z, yy = np.vstack([u, v]), np.vstack([y, y])
    expected = np.linalg.solve(z.T @ z + ridge * np.eye(30), z.T @ yy)  # d x c, primal form
    got = ridge_classifier(torch.tensor(u), torch.tensor(v), torch.tensor(y), ridge).numpy()
    np.testing.assert_allclose(got.T, expected, atol=1e-8)


# ------------------------------------------------------------------------------------------------- instance term
def ref_instance_infonce(u, v, ids, temperature):
    """Symmetric InfoNCE with every pair of the same instance a positive, by loops."""
    n = len(u)

    def direction(a, b):
        total = 0.0
        for i in range(n):
            logits = [_np_cos(a[i], b[j]) / temperature for j in range(n)]
            top = max(logits)
            denominator = sum(math.exp(x - top) for x in logits)
            numerator = sum(math.exp(logits[j] - top) for j in range(n) if ids[i] == ids[j])
            total += -math.log(numerator / denominator)
        return total / n

    return (direction(u, v) + direction(v, u)) / 2


def ref_instance_pair_likelihood(u, v, ids, temperature):
    n = len(u)
    acc = 0.0
    for i in range(n):
        for j in range(n):
            x = _np_cos(u[i], v[j]) / (2 * temperature)
            acc += math.log(1 + math.exp(x)) - (1.0 if ids[i] == ids[j] else 0.0) * x
    return acc / (n * n)


@pytest.mark.parametrize("shared_texts", [False, True])
@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_instance_term_matches_loop_reference(shared_texts, temperature):
    rng = np.random.default_rng(3)
    u, v, pu, pv, y = _batch(rng, 20, 8, 4, False)
    ids = rng.integers(0, 7, 20) if shared_texts else np.arange(20)
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    got = instance_term(t(u), t(v), torch.tensor(ids), temperature, "infonce")
    assert float(got) == pytest.approx(ref_instance_infonce(u, v, ids, temperature), rel=1e-9)
    got = instance_term(t(u), t(v), torch.tensor(ids), temperature, "pair_likelihood")
    assert float(got) == pytest.approx(ref_instance_pair_likelihood(u, v, ids, temperature), rel=1e-9)
    # weighted into the total, on top of the paper's terms
    cfg = LossConfig(instance_weight=0.7, instance_temperature=temperature)
    terms = dscmr_loss(t(u), t(v), t(pu), t(pv), t(y), cfg, instance_ids=torch.tensor(ids))
    paper = dscmr_loss(t(u), t(v), t(pu), t(pv), t(y), LossConfig())
    assert float(terms.inst) == pytest.approx(ref_instance_infonce(u, v, ids, temperature), rel=1e-9)
    assert float(terms.total) == pytest.approx(float(paper.total) + 0.7 * float(terms.inst), rel=1e-9)
    assert float(paper.inst) == 0.0


def test_instance_term_with_columns_equals_the_whole_batch():
    """Rows of one process against the all-gathered columns: the row-weighted halves give the whole batch's value."""
    rng = np.random.default_rng(5)
    u, v = torch.tensor(rng.normal(size=(12, 6))), torch.tensor(rng.normal(size=(12, 6)))
    ids = torch.tensor(rng.integers(0, 5, 12))
    whole = instance_term(u, v, ids, 0.1)
    halves = [instance_term(u[s], v[s], ids[s], 0.1, columns=(u, v, ids)) for s in (slice(0, 5), slice(5, 12))]
    assert float(halves[0] * 5 / 12 + halves[1] * 7 / 12) == pytest.approx(float(whole), rel=1e-12)


def test_instance_term_pulls_each_image_to_its_own_text():
    """A few steps on the instance term alone make every image's nearest text its own (R@1 = 1 on the training pairs)."""
    torch.manual_seed(0)
    img, txt = torch.randn(32, 10), torch.randn(32, 10)
    net = DSCMRNet(NetworkConfig(image_input_dim=10, text_input_dim=10, hidden_dim=64, common_dim=16, num_classes=2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    cfg = LossConfig(use_j1=False, use_j2=False, use_j3=False, instance_weight=1.0, instance_temperature=0.1)
    labels = torch.zeros(32, 2)
    labels[:, 0] = 1
    for _ in range(150):
        u, v, pu, pv = net(img, txt)
        loss = dscmr_loss(u, v, pu, pv, labels, cfg).total
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        u, v, _, _ = net(img, txt)
    nearest = (torch.nn.functional.normalize(u, dim=1) @ torch.nn.functional.normalize(v, dim=1).T).argmax(1)
    assert (nearest == torch.arange(32)).all()


def test_unknown_instance_form_is_refused():
    with pytest.raises(ValueError, match="instance_form"):
        instance_term(torch.randn(4, 3), torch.randn(4, 3), torch.arange(4), 0.1, "triplet")
