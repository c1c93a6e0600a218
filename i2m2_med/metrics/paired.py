"""Paired comparisons of two scores on the same cases: DeLong's test and the paired bootstrap.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from scipy import stats

from i2m2_med.errors import UndefinedMetricError, UsageError
from i2m2_med.metrics.bootstrap import _check_n_boot, _replicate
from i2m2_med.metrics.ranking import (
    _binary,
    _check_alpha,
    _require_both_classes,
    _scores,
    auroc,
)


class DeLongResult(NamedTuple):
    """Paired DeLong test of two correlated AUROCs on the same cases.

    ``diff = auc_a - auc_b``; ``se`` its standard error; ``z = diff / se``; ``p`` two-sided.
    When ``se`` is 0 (both score vectors order the cases identically up to a constant shift of
    their placements), ``z`` is 0 and ``p`` 1 if ``diff`` is 0, else ``z`` is +-inf and ``p`` 0.
    """

    auc_a: float
    auc_b: float
    diff: float
    se: float
    z: float
    p: float

    def diff_ci(self, alpha: float = 0.05) -> tuple[float, float]:
        """Normal-approximation ``1 - alpha`` interval of ``diff``."""
        q = float(stats.norm.ppf(1.0 - alpha / 2.0))
        return (self.diff - q * self.se, self.diff + q * self.se)

    def to_dict(self, alpha: float = 0.05) -> dict[str, Any]:
        low, high = self.diff_ci(alpha)
        out: dict[str, Any] = {
            "method": "DeLong (paired)",
            "auc_a": self.auc_a,
            "auc_b": self.auc_b,
            "diff": self.diff,
            "se": self.se,
            "z": self.z if math.isfinite(self.z) else None,
            "p": self.p,
            "diff_ci": [low, high],
            "alpha": alpha,
        }
        if not math.isfinite(self.z):
            out["note"] = "zero standard error with a non-zero difference: z is infinite"
        return out


class PairedBootstrapResult(NamedTuple):
    """Paired bootstrap comparison of two AUROCs (same resamples for both score vectors).

    ``se`` is the standard deviation of the replicated differences; ``ci_low``/``ci_high`` their
    percentile interval; ``p`` the two-sided p-value of ``diff = 0`` read from the same
    replicates (:func:`percentile_p_value`), so that the interval and the test agree.
    """

    auc_a: float
    auc_b: float
    diff: float
    se: float
    ci_low: float
    ci_high: float
    p: float
    n_boot: int
    n_valid: int
    method: str

    def to_dict(self) -> dict[str, Any]:
        out = dict(self._asdict())
        out["method"] = f"paired bootstrap ({self.method})"
        out["diff_ci"] = [self.ci_low, self.ci_high]
        return out


def _delong_components(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fast DeLong structural components (Sun & Xu 2014) for K score vectors at once.

    ``scores`` (K, N). Returns ``(auc (K,), v10 (K, m), v01 (K, n))`` where ``v10[k, i]`` is the
    placement of positive i among the negatives (fraction below, ties one half) and ``v01[k, j]``
    the fraction of positives above negative j, both from midranks:
    ``v10 = (Tz - Tx) / n`` and ``v01 = 1 - (Tz - Ty) / m`` with Tz the midranks in the pooled
    sample, Tx / Ty the midranks within the positives / negatives.
    """
    pos = scores[:, y]
    neg = scores[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    tx = stats.rankdata(pos, method="average", axis=1)
    ty = stats.rankdata(neg, method="average", axis=1)
    tz = stats.rankdata(np.concatenate([pos, neg], axis=1), method="average", axis=1)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    auc = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    return auc, v10, v01


def delong_covariance(y: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs (K,) and their DeLong covariance matrix (K, K) for score vectors ``scores`` (K, N).

    ``S = S10 / m + S01 / n`` with S10, S01 the sample covariances (ddof=1) of the structural
    components over the m positives and the n negatives.

    Raises UndefinedMetricError with fewer than 2 positives or 2 negatives.
    """
    y_b = _binary(y)
    sc = np.asarray(scores, dtype=np.float64)
    if sc.ndim == 1:
        sc = sc[None, :]
    if sc.ndim != 2 or sc.shape[1] != y_b.size:
        raise UsageError("scores", f"scores must be (K, {y_b.size}), got {np.shape(scores)}")
    for k in range(sc.shape[0]):
        _scores(sc[k], y_b.size, f"scores[{k}]")
    n_pos, n_neg = _require_both_classes(y_b, "DeLong test")
    if n_pos < 2 or n_neg < 2:
        raise UndefinedMetricError(
            "delong_test", f"DeLong variance needs at least 2 positives and 2 negatives, got {n_pos} and {n_neg}"
        )
    auc, v10, v01 = _delong_components(y_b, sc)
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return auc, s10 / n_pos + s01 / n_neg


def delong_test(y: Any, s_a: Any, s_b: Any) -> DeLongResult:
    """Paired DeLong test of ``AUROC(s_a) = AUROC(s_b)`` on the same cases.

    ``y``, ``s_a``, ``s_b`` are (N,). Var(diff) = S_aa + S_bb - 2 S_ab from
    :func:`delong_covariance`; ``z = diff / se`` and ``p = 2 * (1 - Phi(|z|))``. Cases must be
    independent (use :func:`paired_bootstrap_test` with ``groups`` for slices of the same study).

    Returns ``DeLongResult(auc_a, auc_b, diff, se, z, p)`` (a NamedTuple; unpacks as a 6-tuple).
    """
    y_b = _binary(y)
    sa = _scores(s_a, y_b.size, "s_a")
    sb = _scores(s_b, y_b.size, "s_b")
    auc, cov = delong_covariance(y_b, np.stack([sa, sb]))
    diff = float(auc[0] - auc[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    if se > 1e-15:
        z = diff / se
        p = float(2.0 * stats.norm.sf(abs(z)))
    elif abs(diff) <= 1e-15:
        z, p = 0.0, 1.0
    else:
        z, p = math.copysign(math.inf, diff), 0.0
    return DeLongResult(float(auc[0]), float(auc[1]), diff, se, float(z), p)


def percentile_p_value(d: Any) -> float:
    """Two-sided bootstrap p-value of "no difference" from replicated differences ``d`` (R,),
    the one that agrees with their percentile interval: twice the smaller share of replicates on
    either side of 0 (a replicate at 0 counts on both sides), ``min(1, 2 min(#{d* <= 0},
    #{d* >= 0}) / R)``, and ``1 / R`` (the resolution of R replicates) when no replicate lies
    beyond 0. The (1 - alpha) percentile interval excludes 0 when fewer than alpha / 2 of the
    replicates lie beyond 0, which is when this p is below alpha (up to the interval's
    interpolation between two neighbouring replicates). A centred-distribution p-value can
    disagree with the percentile interval when the replicates are skewed (an interval excluding
    0 beside p > 0.05)."""
    d = np.asarray(d, dtype=np.float64).reshape(-1)
    if d.size == 0:
        raise UndefinedMetricError("bootstrap", "no replicates")
    side = min(int((d <= 0.0).sum()), int((d >= 0.0).sum()))
    return float(min(1.0, max(2.0 * side, 1.0) / d.size))


def paired_bootstrap_test(
    y: Any,
    s_a: Any,
    s_b: Any,
    groups: Any = None,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int | np.random.Generator = 0,
    stratified: bool = True,
) -> PairedBootstrapResult:
    """Paired bootstrap comparison of ``AUROC(s_a)`` and ``AUROC(s_b)`` (all inputs (N,)).

    Both score vectors are evaluated on the same resamples; with ``groups`` (N,) whole clusters
    (studies, subjects) are resampled, which is the valid test for slice-level predictions where
    DeLong's independence assumption fails. See :class:`PairedBootstrapResult` for the p-value.
    """
    y_b = _binary(y)
    sa = _scores(s_a, y_b.size, "s_a")
    sb = _scores(s_b, y_b.size, "s_b")
    alpha = _check_alpha(alpha)
    n_boot = _check_n_boot(n_boot)
    auc_a, auc_b = auroc(y_b, sa), auroc(y_b, sb)
    diff = auc_a - auc_b
    reps = _replicate(y_b, [sa, sb], n_boot, seed, stratified, groups)
    if reps.values.shape[0] == 0:
        raise UndefinedMetricError("bootstrap", "no bootstrap replicate contained both classes")
    d = reps.values[:, 0] - reps.values[:, 1]
    low, high = np.quantile(d, [alpha / 2.0, 1.0 - alpha / 2.0])
    se = float(d.std(ddof=1)) if d.size > 1 else 0.0
    return PairedBootstrapResult(
        auc_a, auc_b, float(diff), se, float(low), float(high), percentile_p_value(d), n_boot, int(d.size), reps.method
    )


def compare_auroc(
    y: Any,
    s_a: Any,
    s_b: Any,
    groups: Any = None,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int | np.random.Generator = 0,
) -> dict[str, Any]:
    """JSON-ready comparison of two score vectors (N,): DeLong when cases are independent
    (``groups`` None), a cluster paired bootstrap otherwise. Never raises for undefined data:
    returns ``{"value": None, "reason": ...}`` instead (e.g. no positives in the split)."""
    try:
        if groups is None:
            return delong_test(y, s_a, s_b).to_dict(alpha)
        return paired_bootstrap_test(y, s_a, s_b, groups=groups, n_boot=n_boot, alpha=alpha, seed=seed).to_dict()
    except UndefinedMetricError as err:
        return {"value": None, "reason": err.reason}
