"""CCA's sizes are chosen from one fit per ridge (bench/languages.py runs it on 1280-d image features): the first k
canonical pairs of a large fit are what a fit of size k gives."""

from __future__ import annotations

import numpy as np

from training.baselines import RegularisedCCA


def test_a_truncated_fit_projects_as_a_fit_of_that_size():
    rng = np.random.default_rng(0)
    shared = rng.standard_normal((200, 6))
    x = shared @ rng.standard_normal((6, 40)) + 0.5 * rng.standard_normal((200, 40))
    y = shared @ rng.standard_normal((6, 12)) + 0.5 * rng.standard_normal((200, 12))
    for ridge in (0.0, 0.1):
        large = RegularisedCCA(12, ridge).fit(x, y)
        for k in (2, 5, 12):
            small = RegularisedCCA(k, ridge).fit(x, y)
            cut = large.truncated(k)
            assert cut.n_components == k and large.n_components == 12
            for got, want in zip(cut.transform(x[:20], y[:20]), small.transform(x[:20], y[:20])):
                np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)
