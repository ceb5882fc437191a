"""Vectorised retrieval metrics against slow, obvious loop references (ties included)."""

import numpy as np
import pytest
import torch

from training.evaluation import (
    TIE_DECIMALS,
    CrossModalRecall,
    CrossModalScores,
    RecallScores,
    average_precisions,
    cross_modal_map,
    cross_modal_map_torch,
    cross_modal_recall,
    first_hit_ranks,
    instance_groups,
    mean_average_precision,
    precision_at_k,
    precision_recall_curve,
    selection_score,
)


def slow_ranking(q, r):
    sims = []
    for j in range(len(r)):
        denom = max(np.linalg.norm(q) * np.linalg.norm(r[j]), 1e-300)
        sims.append(round(float(np.dot(q, r[j]) / denom), TIE_DECIMALS))
    # Ties keep the retrieval set's order (a stable sort on descending similarity).
    return sorted(range(len(r)), key=lambda j: -sims[j])


def slow_map(queries, retrieval, ql, rl):
    aps = []
    for i in range(len(queries)):
        order = slow_ranking(queries[i], retrieval)
        hits, precisions = 0, []
        for rank, j in enumerate(order, 1):
            if any(ql[i][c] and rl[j][c] for c in range(len(ql[i]))):
                hits += 1
                precisions.append(hits / rank)
        aps.append(sum(precisions) / hits if hits else 0.0)
    return sum(aps) / len(aps)


def _data(rng, n, d, c, multilabel, tie_levels=None):
    x = rng.normal(size=(n, d))
    if tie_levels:  # quantise so that many similarities tie exactly
        x = np.round(x * tie_levels) / tie_levels
        x[rng.random(n) < 0.2] = x[0]
    y = np.zeros((n, c))
    y[np.arange(n), rng.integers(0, c, n)] = 1
    if multilabel:
        y = np.maximum(y, rng.random((n, c)) < 0.2)
    return x, y


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("ties", [None, 1])
def test_map_equals_slow_loop(multilabel, ties):
    rng = np.random.default_rng(11)
    q, ql = _data(rng, 40, 6, 5, multilabel, ties)
    r, rl = _data(rng, 55, 6, 5, multilabel, ties)
    assert mean_average_precision(q, r, ql, rl, chunk=7) == pytest.approx(slow_map(q, r, ql, rl), abs=1e-9)


def test_query_without_relevant_items_scores_zero():
    q = np.array([[1.0, 0.0]])
    r = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert average_precisions(q, r, np.array([[0, 1, 0]]), np.array([[1, 0, 0], [1, 0, 0]]))[0] == 0.0


def test_torch_version_equals_numpy_version():
    rng = np.random.default_rng(5)
    u, y = _data(rng, 80, 8, 4, True, tie_levels=1)
    v, _ = _data(rng, 80, 8, 4, False)
    ref = cross_modal_map(u, v, y)
    got = cross_modal_map_torch(torch.tensor(u), torch.tensor(v), torch.tensor(y))
    assert got.i2t == pytest.approx(ref.i2t, abs=1e-9)
    assert got.t2i == pytest.approx(ref.t2i, abs=1e-9)
    assert got.avg == pytest.approx((ref.i2t + ref.t2i) / 2, abs=1e-12)


def test_chunking_does_not_change_the_result():
    rng = np.random.default_rng(2)
    q, ql = _data(rng, 300, 16, 10, False)
    r, rl = _data(rng, 400, 16, 10, False)
    full = average_precisions(q, r, ql, rl, chunk=10_000)
    np.testing.assert_allclose(average_precisions(q, r, ql, rl, chunk=13), full, atol=1e-12)


def test_precision_at_k_and_pr_curve_match_loops():
    rng = np.random.default_rng(9)
    q, ql = _data(rng, 20, 5, 3, False)
    r, rl = _data(rng, 30, 5, 3, False)
    p = precision_at_k(q, r, ql, rl, ks=(1, 5, 30))
    for k in (1, 5, 30):
        ref = np.mean([np.mean([(ql[i] @ rl[j]) > 0 for j in slow_ranking(q[i], r)[:k]]) for i in range(len(q))])
        assert p[k] == pytest.approx(ref, abs=1e-12)
    curve = precision_recall_curve(q, r, ql, rl, points=11)
    assert curve[0]["recall"] == 0.0 and curve[-1]["recall"] == 1.0
    precisions = [pt["precision"] for pt in curve]
    assert all(a >= b - 1e-12 for a, b in zip(precisions, precisions[1:]))  # interpolated precision never rises
    # At recall 1 every query's precision is (#relevant / rank of the last relevant item).
    ref_last = []
    for i in range(len(q)):
        order = slow_ranking(q[i], r)
        rel = [(ql[i] @ rl[j]) > 0 for j in order]
        if any(rel):
            last = max(k for k, x in enumerate(rel, 1) if x)
            ref_last.append(sum(rel) / last)
    assert curve[-1]["precision"] == pytest.approx(np.mean(ref_last), abs=1e-12)


# ----------------------------------------------------------------------------------------------- instance recall
def slow_first_hit_rank(q, r, q_group, r_groups):
    """Rank of the best-ranked hit when, among equal similarities, every non-hit comes first (pessimistic ties)."""
    sims = [round(float(np.dot(q, x) / max(np.linalg.norm(q) * np.linalg.norm(x), 1e-300)), TIE_DECIMALS) for x in r]
    order = sorted(range(len(r)), key=lambda j: (-sims[j], r_groups[j] == q_group))
    for rank, j in enumerate(order, 1):
        if r_groups[j] == q_group:
            return rank
    return len(r) + 1


@pytest.mark.parametrize("ties", [None, 1])
@pytest.mark.parametrize("shared", [False, True])
def test_first_hit_ranks_equal_slow_loop(ties, shared):
    rng = np.random.default_rng(11)
    x, _ = _data(rng, 50, 6, 3, False, ties)
    y, _ = _data(rng, 50, 6, 3, False, ties)
    groups = rng.integers(0, 20, 50) if shared else np.arange(50)
    expected = [slow_first_hit_rank(x[i], y, groups[i], groups) for i in range(50)]
    assert first_hit_ranks(x, y, groups, groups).tolist() == expected
    assert first_hit_ranks(x, y, groups, groups, chunk=7).tolist() == expected


def test_recall_summary_and_collapsed_vectors():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 5))
    perfect = cross_modal_recall(x, x + 1e-3 * rng.normal(size=x.shape), np.arange(30))
    assert (perfect.i2t.r1, perfect.t2i.r10, perfect.i2t.median_rank, perfect.t2i.mrr) == (1.0, 1.0, 1.0, 1.0)
    # a model that maps everything to one point ties everything: the own pair is ranked behind all the others
    collapsed = cross_modal_recall(np.ones((30, 5)), np.ones((30, 5)), np.arange(30))
    assert collapsed.i2t.r1 == 0.0 and collapsed.i2t.median_rank == 30.0
    summary = RecallScores.from_ranks(np.array([1, 2, 6, 11]))
    assert (summary.r1, summary.r5, summary.r10, summary.median_rank) == (0.25, 0.5, 0.75, 4.0)
    assert summary.mrr == pytest.approx((1 + 1 / 2 + 1 / 6 + 1 / 11) / 4)


def test_instance_groups_from_texts_and_rows():
    assert instance_groups(["a dog", "a cat", "a dog"]).tolist() == [0, 1, 0]
    rows = np.array([[1, 2, 0], [3, 4, 0], [1, 2, 0]])
    g = instance_groups(rows)
    assert g[0] == g[2] != g[1]


def test_selection_score_criteria():
    scores = CrossModalScores(0.6, 0.4)
    recall = CrossModalRecall(RecallScores(0.1, 0.5, 0.8, 3.0, 0.3), RecallScores(0.2, 0.4, 0.6, 4.0, 0.3))
    assert selection_score(scores, recall, "map") == pytest.approx(0.5)
    assert selection_score(scores, recall, "r10") == pytest.approx(0.7)
    assert selection_score(scores, recall, "mean") == pytest.approx(0.6)
    with pytest.raises(ValueError, match="criterion"):
        selection_score(scores, recall, "r5")
