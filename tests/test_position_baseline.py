"""The position-only baseline on hand-made examples."""

from __future__ import annotations

import numpy as np
import pytest

from i2m2_med.errors import UsageError
from i2m2_med.metrics.baselines import (
    fit_position_prior,
    position_baseline,
    position_scores,
    relative_position,
)
from i2m2_med.metrics.ranking import auroc


def test_relative_position_is_the_slice_centre():
    np.testing.assert_allclose(relative_position([0, 1, 3], [4, 4, 4]), [0.125, 0.375, 0.875])
    with pytest.raises(UsageError):
        relative_position([4], [4])


def test_rates_per_bin_by_hand():
    # two bins; training slices at positions 0.1, 0.2 (bin 0) and 0.6, 0.7, 0.9 (bin 1)
    pos = [0.1, 0.2, 0.6, 0.7, 0.9]
    y = np.array([[0, 1], [0, 1], [1, 0], [1, 1], [0, 0]])
    prior = fit_position_prior(pos, y, n_bins=2)
    np.testing.assert_allclose(prior, [[0.0, 1.0], [2 / 3, 1 / 3]])
    np.testing.assert_allclose(position_scores(prior, [0.05, 0.95]), [[0.0, 1.0], [2 / 3, 1 / 3]])


def test_empty_bin_takes_the_overall_rate():
    prior = fit_position_prior([0.05, 0.15], [[1], [0]], n_bins=4)
    np.testing.assert_allclose(prior[:, 0], [0.5, 0.5, 0.5, 0.5])
    prior = fit_position_prior([0.05, 0.3], [[1], [0]], n_bins=4)
    np.testing.assert_allclose(prior[:, 0], [1.0, 0.0, 0.5, 0.5])


def test_baseline_ranks_by_anatomy_and_knows_nothing_else():
    # findings only on the central slices of 20-slice studies: position alone ranks them well
    rng = np.random.default_rng(0)
    k = np.tile(np.arange(20), 30)
    pos = relative_position(k, np.full(k.size, 20))
    central = (pos > 0.4) & (pos < 0.6)
    y = (central & (rng.random(k.size) < 0.5)).astype(int)[:, None]
    score = position_baseline(pos[:300], y[:300], pos[300:], heads=("acl",))
    assert auroc(y[300:, 0], score[:, 0]) > 0.85
    # restricted to the central slices (finding against mimic in the same place), it is at chance
    m = central[300:]
    assert abs(auroc(y[300:, 0][m], score[m, 0]) - 0.5) < 0.1
    one_bin = (pos[300:] > 0.4) & (pos[300:] < 0.5)
    assert auroc(y[300:, 0][one_bin], score[one_bin, 0]) == pytest.approx(0.5)
