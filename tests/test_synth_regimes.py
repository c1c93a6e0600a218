"""The regimes put the evidence where they say: probes on magnitude, phase and both (slow).

The probe (:mod:`i2m2_med.synth.probe`) renders 36 fresh subjects under each regime, resizes
to 64 x 64 as the compact models see them, measures the magnitude and phase cue strength at the
lesion sites and fits cross-fitted logistic regressions on magnitude only, phase only and both.
Numbers are the mean over the four heads (per-head values with 18 test subjects are noisy).
Everything is seeded: the numbers are fixed for a given generator; the bounds leave room for
the sampling error of 36 subjects (on 120 subjects: inter 0.52 / 0.55 / 0.96, intra 0.76 /
0.75 / 0.84, mixed 0.61 / 0.65 / 0.89 for magnitude / phase / joint; on these 36: inter
0.46 / 0.47 / 0.93, intra 0.70 / 0.78 / 0.80, mixed 0.63 / 0.65 / 0.88).
"""

from __future__ import annotations

import numpy as np
import pytest

from i2m2_med.heads import HEADS
from i2m2_med.synth.probe import probe_auroc, render_probe_sets
from i2m2_med.synth.regimes import episode_auroc, regime_params


@pytest.fixture(scope="module")
def probes():
    sets = render_probe_sets(("inter", "intra", "mixed"), n_subjects=36, seed=2024, n_slices=24, size=64)
    return probe_auroc(sets, size=64)


@pytest.mark.slow
def test_inter_single_modalities_near_chance_joint_learnable(probes):
    m = probes["inter"]["mean"]
    assert m["magnitude"] <= 0.62 and m["phase"] <= 0.62
    assert m["joint"] >= 0.70
    assert m["joint"] - max(m["magnitude"], m["phase"]) >= 0.12


@pytest.mark.slow
def test_intra_each_modality_informative(probes):
    m = probes["intra"]["mean"]
    assert m["magnitude"] >= 0.62 and m["phase"] >= 0.62
    assert m["joint"] >= max(m["magnitude"], m["phase"]) - 0.03
    assert m["joint"] < 0.97  # not at the ceiling: mimics and unexpressed findings remain


@pytest.mark.slow
def test_mixed_lies_between(probes):
    m, inter = probes["mixed"]["mean"], probes["inter"]["mean"]
    for which in ("magnitude", "phase"):
        assert 0.55 <= m[which] <= 0.75
    assert m["joint"] >= max(m["magnitude"], m["phase"]) + 0.10
    assert m["joint"] < inter["joint"] + 0.02  # half the episodes carry the weaker intra evidence


@pytest.mark.slow
def test_probe_sees_the_heads_it_should(probes):
    """Per head, the joint input beats chance everywhere it has positives."""
    for regime in ("inter", "intra", "mixed"):
        for head, row in probes[regime].items():
            if head != "mean" and row["joint"] is not None:
                assert row["joint"] > 0.55, (regime, head, row)


def test_episode_design_numbers():
    assert episode_auroc(regime_params("inter")) == {"magnitude": 0.5, "phase": 0.5, "joint": 1.0}
    intra = episode_auroc(regime_params("intra"))
    assert intra["magnitude"] == pytest.approx(0.775) and intra["phase"] == pytest.approx(0.775)
    assert intra["joint"] == pytest.approx(0.8713, abs=1e-3)
    mixed = episode_auroc(regime_params("mixed"))
    assert mixed["magnitude"] == pytest.approx(0.6375) and mixed["joint"] > 0.95


def test_evidence_states_and_log_ratios():
    from i2m2_med.synth.regimes import Expression, evidence_log_ratio, evidence_state

    assert evidence_state(Expression("intra", 0, None, None)) == "none"
    assert evidence_state(Expression("intra", 1, 1, None)) == "mag"
    assert evidence_state(Expression("intra", 1, None, 1)) == "phase"
    assert evidence_state(Expression("inter", 0, 0, 0)) == "together"
    assert evidence_state(Expression("inter", 0, 0, 1)) == "apart"
    intra = regime_params("intra")
    # p(mag only | finding) = 0.75 * 0.25, p(mag only | mimic) = 0.2 * 0.8
    assert evidence_log_ratio(intra, "mag") == pytest.approx(np.log(0.75 * 0.25 / (0.2 * 0.8)))
    assert evidence_log_ratio(intra, "together") == pytest.approx(np.log(0.75**2 / 0.2**2))
    assert evidence_log_ratio(intra, "apart") == 0.0  # neither can show it in intra
    inter = regime_params("inter")
    assert evidence_log_ratio(inter, "together") == np.inf and evidence_log_ratio(inter, "apart") == -np.inf
    mixed = regime_params("mixed")
    assert evidence_log_ratio(mixed, "together") > evidence_log_ratio(mixed, "mag") > evidence_log_ratio(mixed, "none")


def test_evidence_scores_cover_episode_slices():
    from i2m2_med.synth.cohort import evidence_scores

    eps = [
        {"head": "mtear", "evidence": "together", "first_slice": 2, "last_slice": 3},
        {"head": "mtear", "evidence": "none", "first_slice": 3, "last_slice": 5},
        {"head": "acl", "evidence": "apart", "first_slice": 0, "last_slice": 0},
    ]
    s = evidence_scores(eps, 8, regime_params("intra"))
    m = HEADS.index("mtear")
    none, both = np.log(0.25**2 / 0.8**2), np.log(0.75**2 / 0.2**2)
    np.testing.assert_allclose(s[:, m], [-np.inf, -np.inf, both, both, none, none, -np.inf, -np.inf])
    assert s[0, HEADS.index("acl")] == 0.0 and np.isneginf(s[1:, HEADS.index("acl")]).all()
    assert np.isneginf(s[:, HEADS.index("cart")]).all()


def test_inter_marginals_match_by_construction():
    """In inter, each cue's site is uniform whether or not the episode is a finding."""
    from i2m2_med.synth.regimes import express

    rng = np.random.default_rng(0)
    params = regime_params("inter")
    for groups in ((0, 1), (0, 1, 0, 1)):
        for finding in (True, False):
            draws = [express(rng, params, finding, groups) for _ in range(8000)]
            mag = np.bincount([d.mag_site for d in draws], minlength=len(groups)) / len(draws)
            ph = np.bincount([d.phase_site for d in draws], minlength=len(groups)) / len(draws)
            np.testing.assert_allclose(mag, 1 / len(groups), atol=0.02)
            np.testing.assert_allclose(ph, 1 / len(groups), atol=0.02)
            together = np.mean([d.mag_site == d.phase_site for d in draws])
            assert together == (1.0 if finding else 0.0)
