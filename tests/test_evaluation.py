"""Evaluation statistics against sklearn, hand computations and a direct O(n^2) DeLong."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score, roc_curve

from i2m2_med.errors import UndefinedMetricError, UsageError
from i2m2_med.heads import HEADS
from i2m2_med.metrics import (
    aggregation,
    bootstrap,
    calibration,
    paired,
    ranking,
    tables,
    thresholds,
)

# ------------------------------------------------------------------------------------------------
# AUROC
# ------------------------------------------------------------------------------------------------


@st.composite
def labelled_scores(draw, min_size=2, max_size=60):
    """Binary labels with both classes and scores drawn from a small grid (many ties) or floats."""
    n = draw(st.integers(min_size, max_size))
    y = draw(st.lists(st.booleans(), min_size=n, max_size=n).filter(lambda v: any(v) and not all(v)))
    if draw(st.booleans()):
        s = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    else:
        s = draw(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=n, max_size=n))
    return np.array(y), np.array(s, dtype=np.float64)


@settings(max_examples=100, deadline=None)
@given(labelled_scores())
def test_auroc_equals_sklearn(data):
    y, s = data
    assert ranking.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    # flipping the score mirrors the AUROC; label dtype does not matter
    assert ranking.auroc(y.astype(float), -s) == pytest.approx(1.0 - roc_auc_score(y, s), abs=1e-12)


def test_auroc_hand_computed():
    # 4 pos/neg pairs: (0.35 vs 0.1) 1, (0.35 vs 0.4) 0, (0.8 vs 0.1) 1, (0.8 vs 0.4) 1 -> 3/4
    assert ranking.auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    # a tie counts one half: (0.5 vs 0.5) 1/2, (0.5 vs 0.2) 1, (0.7 vs 0.5) 1, (0.7 vs 0.2) 1 -> 3.5/4
    assert ranking.auroc([1, 0, 1, 0], [0.5, 0.5, 0.7, 0.2]) == 0.875
    assert ranking.auroc([True, False], [0.0, 0.0]) == 0.5


def test_auroc_undefined_with_one_class_is_clear():
    with pytest.raises(UndefinedMetricError, match="no positives"):
        ranking.auroc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(UndefinedMetricError, match="no negatives"):
        ranking.auroc([1, 1], [0.1, 0.2])
    with pytest.raises(UndefinedMetricError, match="empty"):
        ranking.auroc([], [])
    result = ranking.auroc_result([0, 0, 0], [0.1, 0.2, 0.3], split="test", unit="studies")
    assert not result.defined and result.value is None
    assert result.reason == "no positives in test split (0 of 3 studies); AUROC needs both classes"
    assert ranking.auroc_result([0, 1], [0.1, 0.2]) == ranking.MetricValue(1.0, None)


def test_bad_inputs_are_usage_errors():
    with pytest.raises(UsageError, match="0 or 1"):
        ranking.auroc([0, 0.5, 1], [0.1, 0.2, 0.3])
    with pytest.raises(UsageError, match="non-finite"):
        ranking.auroc([0, 1, 1], [0.1, float("nan"), 0.3])
    with pytest.raises(UsageError, match="shape"):
        ranking.auroc([0, 1, 1], [0.1, 0.3])


def test_roc_curve_points_match_sklearn():
    rng = np.random.default_rng(3)
    y = rng.random(300) < 0.4
    s = np.round(rng.normal(size=300) + y, 1)  # rounded: many ties
    full = ranking.roc_curve_points(y, s, drop_intermediate=False)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(full["fpr"], fpr)
    np.testing.assert_allclose(full["tpr"], tpr)
    assert full["thresholds"][0] == np.inf
    slim = ranking.roc_curve_points(y, s)
    assert slim["fpr"].size < full["fpr"].size
    # dropping collinear points keeps the curve, so the area is unchanged
    assert np.trapezoid(slim["tpr"], slim["fpr"]) == pytest.approx(ranking.auroc(y, s), abs=1e-12)
    assert (slim["fpr"][0], slim["tpr"][0], slim["fpr"][-1], slim["tpr"][-1]) == (0, 0, 1, 1)


# ------------------------------------------------------------------------------------------------
# DeLong
# ------------------------------------------------------------------------------------------------


def delong_direct(y, s_a, s_b):
    """DeLong (1988) straight from its definition: Mann-Whitney kernel over all pairs, O(m n)."""
    y = np.asarray(y, bool)
    comps = []
    for s in (np.asarray(s_a, float), np.asarray(s_b, float)):
        x, z = s[y], s[~y]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        comps.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))
    m, n = int(y.sum()), int((~y).sum())
    s10 = np.cov(np.stack([comps[0][1], comps[1][1]]))
    s01 = np.cov(np.stack([comps[0][2], comps[1][2]]))
    cov = s10 / m + s01 / n
    se = math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    return comps[0][0], comps[1][0], cov, se


def test_delong_worked_example():
    # positives first, then negatives
    y = [1, 1, 1, 0, 0, 0]
    s_a = [0.9, 0.6, 0.4, 0.5, 0.3, 0.6]
    s_b = [0.8, 0.7, 0.2, 0.1, 0.75, 0.3]
    # By hand. A: V10 = (1, 5/6, 1/3), V01 = (2/3, 1, 1/2), AUC 13/18.
    #          B: V10 = (1, 2/3, 1/3), V01 = (1, 1/3, 2/3), AUC 12/18.
    # S10 = [[13, 12], [12, 12]] / 108, S01 = [[7, -6], [-6, 12]] / 108  (ddof = 1)
    # S = S10/3 + S01/3 -> var A 5/81, var B 2/27, cov 1/54; var(diff) = 8/81.
    auc, cov = paired.delong_covariance(y, np.stack([s_a, s_b]))
    np.testing.assert_allclose(auc, [13 / 18, 12 / 18], atol=1e-15)
    np.testing.assert_allclose(cov, [[5 / 81, 1 / 54], [1 / 54, 2 / 27]], atol=1e-15)
    res = paired.delong_test(y, s_a, s_b)
    auc_a, auc_b, diff, se, z, p = res  # unpacks as the documented 6-tuple
    assert diff == pytest.approx(1 / 18, abs=1e-15)
    assert se == pytest.approx(math.sqrt(8) / 9, abs=1e-15)
    assert z == pytest.approx(1 / (4 * math.sqrt(2)), abs=1e-12)  # 0.17678
    assert p == pytest.approx(math.erfc(z / math.sqrt(2)), abs=1e-12)
    assert p == pytest.approx(0.85968, abs=1e-5)
    low, high = res.diff_ci()
    assert low == pytest.approx(1 / 18 - 1.959964 * math.sqrt(8) / 9, abs=1e-6)
    assert high == pytest.approx(1 / 18 + 1.959964 * math.sqrt(8) / 9, abs=1e-6)


@settings(max_examples=100, deadline=None)
@given(labelled_scores(min_size=4), st.integers(0, 2**32 - 1))
def test_fast_delong_equals_direct(data, seed):
    y, s_a = data
    if y.sum() < 2 or (~y).sum() < 2:
        return
    rng = np.random.default_rng(seed)
    s_b = np.round(s_a + rng.normal(size=y.size), 0)  # correlated with A, with ties
    auc_a, auc_b, cov, se = delong_direct(y, s_a, s_b)
    res = paired.delong_test(y, s_a, s_b)
    assert (res.auc_a, res.auc_b) == (pytest.approx(auc_a, abs=1e-12), pytest.approx(auc_b, abs=1e-12))
    assert res.se == pytest.approx(se, abs=1e-12)
    _, fast_cov = paired.delong_covariance(y, np.stack([s_a, s_b]))
    np.testing.assert_allclose(fast_cov, cov, atol=1e-12)


def test_delong_identical_scores_and_null_calibration():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.5
    s = rng.normal(size=200) + y
    res = paired.delong_test(y, s, s)
    assert (res.diff, res.se, res.z, res.p) == (0.0, 0.0, 0.0, 1.0)
    # under the null (two equally good, independent-noise predictors) p is roughly uniform
    ps = []
    for _ in range(300):
        y = rng.random(80) < 0.5
        base = y.astype(float)
        ps.append(paired.delong_test(y, base + rng.normal(size=80), base + rng.normal(size=80)).p)
    assert 0.02 <= np.mean(np.array(ps) < 0.05) <= 0.09
    with pytest.raises(UndefinedMetricError, match="at least 2 positives"):
        paired.delong_test([1, 0, 0], [0.3, 0.2, 0.1], [0.1, 0.2, 0.3])


def test_delong_zero_se_with_difference_is_reported_not_nan():
    y = [1, 1, 0, 0]
    res = paired.delong_test(y, [0.9, 0.8, 0.1, 0.2], [0.5, 0.5, 0.5, 0.5])
    assert res.diff == 0.5 and res.se == 0.0 and res.z == math.inf and res.p == 0.0
    out = res.to_dict()
    assert out["z"] is None and "zero standard error" in out["note"]
    json.dumps(out, allow_nan=False)


# ------------------------------------------------------------------------------------------------
# Bootstrap
# ------------------------------------------------------------------------------------------------


def test_weighted_replicate_equals_auroc_of_materialised_resample():
    rng = np.random.default_rng(5)
    y = rng.random(60) < 0.4
    s = np.round(rng.normal(size=60), 1)
    w = rng.integers(0, 4, size=(5, 60)).astype(float)
    auc, valid = bootstrap._weighted_auc(y, s, w[:, y], w[:, ~y])
    assert valid.all()
    for b in range(5):
        idx = np.repeat(np.arange(60), w[b].astype(int))
        assert auc[b] == pytest.approx(roc_auc_score(y[idx], s[idx]), abs=1e-12)


def test_in_view_metrics_score_each_head_on_its_own_slices():
    rng = np.random.default_rng(3)
    n = 240
    y = np.zeros((n, 4))
    view = rng.random((n, 4)) < 0.5
    y[view] = rng.random(int(view.sum())) < 0.3
    p = np.clip(0.3 * y + 0.7 * rng.random((n, 4)), 0, 1)
    p[~view] = 0.0  # out of view: confidently negative, as a position-aware model would be
    groups = np.repeat(np.arange(24), 10)
    out = tables.in_view_metrics(y, p, view, groups, n_boot=200)
    for h, head in enumerate(HEADS):
        row = out["per_head"][head]
        m = view[:, h]
        assert row["n"] == int(m.sum()) and row["n_pos"] == int(y[m, h].sum())
        assert row["auroc"] == pytest.approx(roc_auc_score(y[m, h], p[m, h]))
        assert row["ci"][0] <= row["auroc"] <= row["ci"][1]
        # the whole-slice AUROC is higher: out-of-view slices are easy negatives
        assert roc_auc_score(y[:, h], p[:, h]) > row["auroc"]
    mean = np.mean([out["per_head"][h]["auroc"] for h in ("acl", "mtear", "cart")])
    assert out["mean_pathologies"]["auroc"] == pytest.approx(mean)
    assert out["mean_pathologies"]["ci"][0] < mean < out["mean_pathologies"]["ci"][1]
    with pytest.raises(UsageError, match="in_view"):
        tables.in_view_metrics(y, p, view[:, :3])


def test_masked_mean_bootstrap_equals_unmasked_on_the_subset():
    """With one shared mask, the masked mean-AUROC bootstrap is the plain one on the kept rows
    (same replicate draws when every row is kept)."""
    rng = np.random.default_rng(4)
    y = (rng.random((80, 2)) < 0.4).astype(float)
    s = y + rng.normal(size=(80, 2))
    full = bootstrap.bootstrap_mean_auroc_ci(y, s, n_boot=300, seed=1)
    masked = bootstrap.bootstrap_mean_auroc_ci(y, s, n_boot=300, seed=1, mask=np.ones((80, 2), bool))
    assert (full.low, full.high, full.estimate) == (masked.low, masked.high, masked.estimate)
    keep = np.zeros((80, 2), bool)
    keep[:50] = True
    est = bootstrap.bootstrap_mean_auroc_ci(y, s, n_boot=300, seed=1, mask=keep).estimate
    assert est == pytest.approx(np.mean([roc_auc_score(y[:50, h], s[:50, h]) for h in range(2)]))


def test_bootstrap_ci_contains_estimate_and_narrows_with_n():
    rng = np.random.default_rng(11)
    widths = {}
    for n in (200, 5000):
        y = rng.random(n) < 0.3
        s = rng.normal(size=n) + 1.0 * y
        ci = bootstrap.bootstrap_auroc_ci(y, s, n_boot=500, seed=1)
        assert ci.low < ci.estimate < ci.high
        assert ci.n_valid == 500 and ci.method == "stratified rows"
        widths[n] = ci.high - ci.low
    # width ~ 1/sqrt(n): 25 times the data, about a fifth of the width
    assert widths[5000] < widths[200] / 3
    # reproducible from the seed, and a different seed gives a different interval
    y = rng.random(300) < 0.5
    s = rng.normal(size=300) + y
    assert bootstrap.bootstrap_auroc_ci(y, s, seed=7) == bootstrap.bootstrap_auroc_ci(y, s, seed=7)
    assert bootstrap.bootstrap_auroc_ci(y, s, seed=7) != bootstrap.bootstrap_auroc_ci(y, s, seed=8)


def clustered_data(rng, n_clusters=40, per_cluster=20):
    """Slices of a study share its label and a study-level score offset (strong clustering)."""
    label = rng.random(n_clusters) < 0.5
    offset = rng.normal(scale=1.0, size=n_clusters) + 0.8 * label
    groups = np.repeat(np.arange(n_clusters), per_cluster)
    y = label[groups]
    s = offset[groups] + rng.normal(scale=0.3, size=groups.size)
    return y, s, groups


def test_grouped_bootstrap_is_wider_on_clustered_data():
    rng = np.random.default_rng(2)
    y, s, groups = clustered_data(rng)
    rows = bootstrap.bootstrap_auroc_ci(y, s, n_boot=500, seed=0)
    clusters = bootstrap.bootstrap_auroc_ci(y, s, n_boot=500, seed=0, groups=groups)
    assert clusters.method == "stratified clusters"
    assert clusters.estimate == rows.estimate
    assert clusters.high - clusters.low > 2.0 * (rows.high - rows.low)


def test_bootstrap_coverage_iid_and_clustered():
    from scipy.stats import norm

    rng = np.random.default_rng(4)
    # independent rows, scores N(0,1) vs N(1,1): true AUROC = Phi(1 / sqrt(2)); nominal 95%
    true_iid = norm.cdf(1 / math.sqrt(2))
    hits = 0
    for t in range(150):
        y = rng.random(100) < 0.3
        ci = bootstrap.bootstrap_auroc_ci(y, rng.normal(size=100) + y, n_boot=300, seed=t)
        hits += ci.low <= true_iid <= ci.high
    assert 0.88 <= hits / 150 <= 0.99
    # clustered slices: only resampling whole studies keeps the coverage near nominal
    big_y, big_s, _ = clustered_data(rng, n_clusters=20000, per_cluster=5)
    true_auc = roc_auc_score(big_y, big_s)
    hits_rows = hits_clusters = 0
    trials = 120
    for t in range(trials):
        y, s, groups = clustered_data(rng)
        r = bootstrap.bootstrap_auroc_ci(y, s, n_boot=300, seed=t)
        c = bootstrap.bootstrap_auroc_ci(y, s, n_boot=300, seed=t, groups=groups)
        hits_rows += r.low <= true_auc <= r.high
        hits_clusters += c.low <= true_auc <= c.high
    assert hits_clusters / trials >= 0.87
    assert hits_rows / trials <= 0.6


def test_bootstrap_undefined_and_bad_arguments():
    with pytest.raises(UndefinedMetricError, match="no positives"):
        bootstrap.bootstrap_auroc_ci([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(UsageError, match="n_boot"):
        bootstrap.bootstrap_auroc_ci([0, 1], [0.1, 0.2], n_boot=0)
    with pytest.raises(UsageError, match="alpha"):
        bootstrap.bootstrap_auroc_ci([0, 1], [0.1, 0.2], alpha=1.5)
    with pytest.raises(UsageError, match="groups"):
        bootstrap.bootstrap_auroc_ci([0, 1], [0.1, 0.2], groups=[1, 2, 3])


def test_paired_bootstrap_agrees_with_delong_and_handles_clusters():
    rng = np.random.default_rng(9)
    y = rng.random(400) < 0.4
    s_a = rng.normal(size=400) + 1.2 * y
    s_b = s_a + rng.normal(scale=1.0, size=400)
    dl = paired.delong_test(y, s_a, s_b)
    pb = paired.paired_bootstrap_test(y, s_a, s_b, n_boot=2000, seed=0)
    assert pb.diff == pytest.approx(dl.diff, abs=1e-12)
    assert pb.se == pytest.approx(dl.se, rel=0.15)
    assert pb.ci_low < pb.diff < pb.ci_high
    assert pb.p < 0.05 and dl.p < 0.05
    same = paired.paired_bootstrap_test(y, s_a, s_a, n_boot=200, seed=0)
    assert (same.diff, same.se, same.p) == (0.0, 0.0, 1.0)

    y, s, groups = clustered_data(rng)
    s_other = s + rng.normal(scale=0.3, size=s.size)
    rows = paired.paired_bootstrap_test(y, s, s_other, n_boot=500, seed=0)
    clusters = paired.paired_bootstrap_test(y, s, s_other, groups=groups, n_boot=500, seed=0)
    assert clusters.method == "stratified clusters"
    assert clusters.se > rows.se
    out = paired.compare_auroc(y, s, s_other, groups=groups, n_boot=200)
    assert out["method"] == "paired bootstrap (stratified clusters)"
    json.dumps(out, allow_nan=False)
    assert paired.compare_auroc([0, 0, 0], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1]) == {
        "value": None,
        "reason": "no positives (0 of 3 cases); DeLong test needs both classes",
    }


def test_bootstrap_p_value_agrees_with_the_percentile_interval():
    """Skewed replicates (as a small test split gives): the interval excludes 0 while the old
    centred p-value was 0.14; the p-value read from the same replicates agrees with the interval."""
    rng = np.random.default_rng(5)
    d = 0.1 + rng.gamma(1.0, 0.15, size=2000)  # diff 0.2, long right tail, every replicate > 0
    low, high = np.quantile(d, [0.025, 0.975])
    centred = (1 + (np.abs(d - 0.2) >= 0.2).sum()) / (d.size + 1)
    assert low > 0 and centred > 0.05  # the contradiction the report used to print
    assert paired.percentile_p_value(d) == pytest.approx(1 / 2000)  # no replicate beyond 0: the resolution
    # an interval that contains 0 gives p > 0.05; all replicates at 0 give 1
    wide = rng.normal(0.02, 0.05, size=2000)
    assert np.quantile(wide, 0.025) < 0 < np.quantile(wide, 0.975) and paired.percentile_p_value(wide) > 0.05
    assert paired.percentile_p_value(np.zeros(50)) == 1.0
    # every paired test of the package: interval excludes 0 exactly when p < 0.05, on 30 random sets
    for seed in range(30):
        r = np.random.default_rng(seed)
        y = r.random(120) < 0.4
        s_a = r.normal(size=120) + y * r.uniform(0.0, 1.5)
        s_b = s_a + r.normal(scale=r.uniform(0.2, 1.5), size=120)
        res = paired.paired_bootstrap_test(y, s_a, s_b, n_boot=400, seed=seed)
        assert (res.ci_low > 0 or res.ci_high < 0) == (res.p < 0.05), (seed, res)


# ------------------------------------------------------------------------------------------------
# Calibration
# ------------------------------------------------------------------------------------------------


def test_ece_hand_example_and_reliability_curve():
    p = [0.05, 0.15, 0.15, 0.95]
    y = [0, 1, 0, 1]
    # bins: [0.05] gap 0.05; [0.15, 0.15] mean 0.15, 1/2 positive, gap 0.35; [0.95] gap 0.05
    assert calibration.expected_calibration_error(y, p) == pytest.approx(0.25 * 0.05 + 0.5 * 0.35 + 0.25 * 0.05)
    curve = calibration.reliability_curve(y, p)
    np.testing.assert_allclose(curve["bin_centers"], [0.05, 0.15, 0.95])
    np.testing.assert_allclose(curve["mean_pred"], [0.05, 0.15, 0.95])
    np.testing.assert_allclose(curve["frac_pos"], [0.0, 0.5, 1.0])
    assert curve["counts"].tolist() == [1, 2, 1]
    assert curve["bin_edges"].size == 11
    quant = calibration.reliability_curve(y, p, n_bins=2, strategy="quantile")
    assert quant["counts"].sum() == 4


def test_ece_calibrated_near_zero_miscalibrated_large():
    rng = np.random.default_rng(0)
    p_true = rng.random(100_000)
    y = rng.random(100_000) < p_true
    assert calibration.expected_calibration_error(y, p_true) < 0.01
    logit = np.log(p_true) - np.log1p(-p_true)
    overconfident = 1.0 / (1.0 + np.exp(-3.0 * logit))
    assert calibration.expected_calibration_error(y, overconfident) > 0.1
    shifted = np.clip(p_true + 0.2, 0, 1)
    assert calibration.expected_calibration_error(y, shifted) > 0.15
    # one class is fine for calibration; an empty split is not
    assert calibration.expected_calibration_error([0, 0], [0.0, 0.0]) == 0.0
    with pytest.raises(UndefinedMetricError, match="empty"):
        calibration.expected_calibration_error([], [])
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        calibration.expected_calibration_error([0, 1], [0.2, 1.2])


# ------------------------------------------------------------------------------------------------
# Operating points
# ------------------------------------------------------------------------------------------------


def test_operating_points_hand_example():
    y = [0, 0, 1, 1, 0, 1]
    p = [0.1, 0.2, 0.3, 0.4, 0.5, 0.9]
    # thresholds high -> low: 0.9 (tpr 1/3, fpr 0), 0.5 (1/3, 1/3), 0.4 (2/3, 1/3),
    # 0.3 (1, 1/3), 0.2 (1, 2/3), 0.1 (1, 1). Youden J is largest (2/3) at 0.3.
    assert thresholds.operating_point(y, p) == 0.3
    assert thresholds.operating_point(y, p, "sensitivity@0.9") == 0.3
    assert thresholds.operating_point(y, p, "sensitivity@0.6") == 0.4
    assert thresholds.operating_point(y, p, "specificity@0.9") == 0.9
    assert thresholds.operating_point(y, p, "specificity@0.6") == 0.3
    ss = thresholds.sens_spec(y, p, 0.3)
    assert (ss.sensitivity.successes, ss.sensitivity.total) == (3, 3)
    assert (ss.specificity.successes, ss.specificity.total) == (2, 3)
    assert ss.specificity.value == pytest.approx(2 / 3)
    with pytest.raises(UsageError, match="rule"):
        thresholds.operating_point(y, p, "f1")
    with pytest.raises(UndefinedMetricError, match="validation"):
        thresholds.operating_point([0, 0], [0.1, 0.2])


def test_wilson_interval_known_values():
    # published Wilson 95% intervals (Newcombe 1998): 8/10 -> 0.4902-0.9433, 0/10 -> 0-0.2775
    w = thresholds.wilson_interval(8, 10)
    assert (w.low, w.high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    w = thresholds.wilson_interval(0, 10)
    assert (w.value, w.low, w.high) == (0.0, 0.0, pytest.approx(0.2775, abs=1e-4))
    assert not thresholds.wilson_interval(0, 0).defined
    # no positives: sensitivity undefined, specificity still reported
    ss = thresholds.sens_spec([0, 0, 0], [0.1, 0.6, 0.7], 0.5)
    assert ss.sensitivity.value is None and ss.specificity.value == pytest.approx(1 / 3)


def test_choose_thresholds_per_head():
    rng = np.random.default_rng(1)
    y = rng.random((100, 4)) < 0.5
    y[:, 2] = False
    p = np.clip(0.3 * y + 0.7 * rng.random((100, 4)), 0, 1)
    thr = thresholds.choose_thresholds(y, p)
    assert list(thr) == list(HEADS) and thr["cart"] is None
    assert thr["acl"] == thresholds.operating_point(y[:, 0], p[:, 0])


# ------------------------------------------------------------------------------------------------
# Slice -> study aggregation
# ------------------------------------------------------------------------------------------------

P_SLICES = np.array(
    [
        [0.1, 0.9, 0.2, 0.5],
        [0.8, 0.1, 0.2, 0.5],
        [0.3, 0.2, 0.2, 0.5],
        [0.2, 0.1, 0.2, 0.5],
    ]
)


def test_aggregation_rules_hand_examples():
    np.testing.assert_allclose(aggregation.aggregate_study(P_SLICES, "max"), [0.8, 0.9, 0.2, 0.5])
    np.testing.assert_allclose(aggregation.aggregate_study(P_SLICES, "mean"), [0.35, 0.325, 0.2, 0.5])
    np.testing.assert_allclose(aggregation.aggregate_study(P_SLICES), [1.3 / 3, 1.2 / 3, 0.2, 0.5])  # top-3 default
    np.testing.assert_allclose(aggregation.aggregate_study(P_SLICES, "mean_top_k", k=2), [0.55, 0.55, 0.2, 0.5])
    np.testing.assert_allclose(
        aggregation.aggregate_study(P_SLICES, "noisy_or"), [1 - 0.9 * 0.2 * 0.7 * 0.8, 1 - 0.1 * 0.9 * 0.8 * 0.9, 1 - 0.8**4, 1 - 0.5**4]
    )
    assert aggregation.top_slice(P_SLICES).tolist() == [1, 0, 0, 0]
    # fewer slices than k: the mean of all of them
    np.testing.assert_allclose(aggregation.aggregate_study(P_SLICES[:2], k=3), [0.45, 0.5, 0.2, 0.5])
    assert aggregation.aggregate_study([[1.0], [1.0]], "noisy_or")[0] == 1.0
    with pytest.raises(UsageError, match="unknown aggregation rule"):
        aggregation.aggregate_study(P_SLICES, "median")
    with pytest.raises(UsageError, match="S >= 1"):
        aggregation.aggregate_study(np.zeros((0, 4)))


def test_default_rule_resists_a_single_noisy_slice():
    noisy = np.full((30, 1), 0.05)
    noisy[12] = 0.95  # one spurious slice
    lesion = np.full((30, 1), 0.05)
    lesion[10:15] = 0.8  # a lesion over five slices
    assert aggregation.aggregate_study(noisy, "max")[0] > aggregation.aggregate_study(lesion, "max")[0]
    assert aggregation.aggregate_study(noisy)[0] == pytest.approx(0.35)
    assert aggregation.aggregate_study(lesion)[0] == pytest.approx(0.8)


def test_study_level_arrays_and_frame():
    ids = np.array(["b", "b", "a", "a", "a"])
    p = np.array([[0.2, 0.1], [0.6, 0.3], [0.1, 0.9], [0.4, 0.8], [0.3, 0.7]])
    y = np.array([[0, 0], [1, 0], [0, 1], [0, 1], [0, 0]])
    res = aggregation.study_level(ids, p, y, slices=[10, 11, 20, 21, 22], rule="max")
    assert res.study_ids.tolist() == ["b", "a"]  # order of first appearance
    np.testing.assert_allclose(res.p, [[0.6, 0.3], [0.4, 0.9]])
    assert res.y.tolist() == [[True, False], [False, True]]
    assert res.top_slice.tolist() == [[11, 11], [21, 20]]
    assert res.n_slices.tolist() == [2, 3]

    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(
        {"study_id": ids, "slice": [10, 11, 20, 21, 22], **{f"p_{h}": p[:, i % 2] for i, h in enumerate(HEADS)},
         **{f"y_{h}": y[:, i % 2] for i, h in enumerate(HEADS)}}
    )
    out = aggregation.study_level_frame(frame)
    assert out["study_id"].tolist() == ["b", "a"]
    np.testing.assert_allclose(out["p_acl"], [0.4, (0.1 + 0.4 + 0.3) / 3])
    assert out["y_mtear"].tolist() == [False, True]
    assert out["top_slice_acl"].tolist() == [11, 21]
    with pytest.raises(UsageError, match="missing columns"):
        aggregation.study_level_frame(frame.drop(columns=["p_cart"]))


# ------------------------------------------------------------------------------------------------
# Summaries and the metrics table
# ------------------------------------------------------------------------------------------------


def test_summarise_seeds():
    mean, sd = tables.summarise_seeds([0.8, 0.9, 0.7])
    assert mean == pytest.approx(0.8) and sd == pytest.approx(0.1)
    assert tables.summarise_seeds([0.8, None]) == (0.8, None)
    assert tables.summarise_seeds([]) == (None, None)


def make_cohort(rng, n_studies=30, slices=8):
    ids = np.repeat([f"study{i:02d}" for i in range(n_studies)], slices)
    y = np.zeros((ids.size, 4), dtype=bool)
    for i in range(n_studies):
        for h in range(4):
            if rng.random() < 0.4:
                start = rng.integers(0, slices - 3)
                y[i * slices + start : i * slices + start + 3, h] = True
    p = np.clip(0.15 + 0.5 * y + 0.3 * rng.random(y.shape), 0, 1)
    return ids, y, p


def test_metrics_table_numbers_and_json():
    rng = np.random.default_rng(0)
    ids, y, p = make_cohort(rng)
    chosen = {"slice": thresholds.choose_thresholds(y, p)}
    table = tables.metrics_table(y, p, ids, thresholds=chosen, n_boot=200)
    json.dumps(table, allow_nan=False)
    assert table["heads"] == list(HEADS) and table["aggregation"] == {"rule": "mean_top_k", "k": 3}
    for h, head in enumerate(HEADS):
        row = table["slice"]["per_head"][head]
        assert row["auroc"] == pytest.approx(roc_auc_score(y[:, h], p[:, h]))
        assert row["ci"][0] <= row["auroc"] <= row["ci"][1]
        assert "stratified clusters" in row["ci_method"]
        assert row["sens_spec"]["sensitivity"]["total"] == int(y[:, h].sum())
    studies = aggregation.study_level(ids, p, y)
    for h, head in enumerate(HEADS):
        assert table["study"]["per_head"][head]["auroc"] == pytest.approx(roc_auc_score(studies.y[:, h], studies.p[:, h]))
        assert table["study"]["per_head"][head]["n"] == 30
    slice_aurocs = [table["slice"]["per_head"][h]["auroc"] for h in HEADS]
    assert table["slice"]["mean_all"]["auroc"] == pytest.approx(np.mean(slice_aurocs))
    assert table["slice"]["mean_pathologies"]["auroc"] == pytest.approx(np.mean(slice_aurocs[:3]))
    assert table["slice"]["mean_pathologies"]["heads"] == ["acl", "mtear", "cart"]
    lo, hi = table["study"]["mean_all"]["ci"]
    assert lo <= table["study"]["mean_all"]["auroc"] <= hi


def test_metrics_table_reports_undefined_heads_and_empty_split():
    rng = np.random.default_rng(1)
    ids, y, p = make_cohort(rng)
    y[:, 1] = False  # no meniscus tears in the test split
    table = tables.metrics_table(y, p, ids, n_boot=100)
    json.dumps(table, allow_nan=False)
    row = table["study"]["per_head"]["mtear"]
    assert row["auroc"] is None and row["ci"] is None
    assert row["reason"] == "no positives in test split (0 of 30 studies); AUROC needs both classes"
    assert table["slice"]["per_head"]["mtear"]["reason"].startswith("no positives in test split (0 of 240 slices)")
    mean3 = table["study"]["mean_pathologies"]
    assert mean3["heads"] == ["acl", "cart"] and "mtear" in mean3["undefined_heads"]
    assert mean3["auroc"] == pytest.approx(
        np.mean([table["study"]["per_head"][h]["auroc"] for h in ("acl", "cart")])
    )

    empty = tables.metrics_table(np.zeros((0, 4)), np.zeros((0, 4)), np.array([]), n_boot=10)
    json.dumps(empty, allow_nan=False)
    assert empty["study"]["mean_all"]["auroc"] is None
    assert empty["study"]["mean_all"]["reason"] == "AUROC undefined for every head: empty test split: no studies to compute AUROC"
    no_ids = tables.metrics_table(y, p, n_boot=10)
    assert no_ids["study"] is None and "study ids" in no_ids["study_reason"]


# ---- clustering by subject ------------------------------------------------------------------


def test_two_studies_of_one_subject_are_always_resampled_together():
    from i2m2_med.metrics.bootstrap import _Resampler

    # 6 subjects, each with a PD and a PD-FS study of 3 slices: 36 slice rows
    subjects = np.repeat([f"s{i}" for i in range(6)], 6)
    studies = np.repeat([f"s{i}-{a}" for i in range(6) for a in ("pd", "pdfs")], 3)
    y = np.zeros(36, dtype=bool)
    y[[0, 7, 13, 20, 30]] = True
    w = _Resampler(36, y, subjects, stratified=True).weights(np.random.default_rng(0), 500)
    for s in np.unique(subjects):
        rows = np.flatnonzero(subjects == s)
        assert (w[:, rows] == w[:, rows[:1]]).all()  # every row of the subject: the same multiplicity
    # by study, the two studies of a subject are drawn apart in some replicate
    w_study = _Resampler(36, y, studies, stratified=True).weights(np.random.default_rng(0), 500)
    assert (w_study[:, 0] != w_study[:, 3]).any()


def test_metrics_table_clusters_both_levels_by_subject():
    rng = np.random.default_rng(1)
    ids, y, _ = make_cohort(rng, n_studies=12)
    p = np.clip(0.3 + 0.2 * y + 0.5 * rng.random(y.shape), 0, 1)  # overlapping classes
    subjects = np.array([f"subj{int(s[-2:]) // 2}" for s in ids])  # studies 2i and 2i+1: one knee
    table = tables.metrics_table(y, p, ids, subject_ids=subjects, n_boot=200)
    assert table["clusters"] == "subjects"
    by_study = tables.metrics_table(y, p, ids, n_boot=200)
    assert by_study["clusters"] == "studies"
    # the point estimates do not depend on the clusters; the intervals do
    for level in ("slice", "study"):
        for head in HEADS:
            a, b = table[level]["per_head"][head], by_study[level]["per_head"][head]
            assert a["auroc"] == b["auroc"]
    assert any(
        table[level]["per_head"][h]["ci"] != by_study[level]["per_head"][h]["ci"]
        for level in ("slice", "study") for h in HEADS if table[level]["per_head"][h]["ci"]
    )
    with pytest.raises(UsageError):
        tables.metrics_table(y, p, ids, subject_ids=subjects[:-1], n_boot=50)


def test_midranks_are_scipys_average_ranks():
    from scipy.stats import rankdata

    from i2m2_med.metrics.ranking import midranks

    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 500):
        ties = rng.integers(0, 5, n).astype(np.float64)
        np.testing.assert_array_equal(midranks(ties), rankdata(ties, method="average"))
        distinct = rng.random(n)
        np.testing.assert_array_equal(midranks(distinct), rankdata(distinct, method="average"))
