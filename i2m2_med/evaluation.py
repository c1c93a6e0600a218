"""Evaluation statistics: AUROC with confidence intervals, paired tests, calibration, operating
points and slice -> study aggregation.

Conventions shared by every function here:

* ``y`` is a binary label vector ``(N,)`` (bool, or integers / floats that are exactly 0 or 1);
  ``s`` / ``p`` is a finite score vector ``(N,)`` (for calibration, a probability in [0, 1]).
  Multi-head arrays are ``(N, H)`` with the heads in :data:`i2m2_med.heads.HEADS` order.
* A positive prediction is ``score >= threshold``.
* A statistic that the data cannot define (a class absent, an empty split, too few cases) raises
  :class:`~i2m2_med.errors.UndefinedMetricError` with a one-line reason; the ``*_result`` /
  table helpers turn that into a :class:`MetricValue` whose ``value`` is None and whose
  ``reason`` says why. No function returns NaN.
* Every random choice takes ``seed`` (an int or a ``numpy.random.Generator``).
* Nothing here needs torch; inputs may be anything ``numpy.asarray`` accepts.

AUROC is computed as the Mann-Whitney statistic with midranks (ties count one half), which is
exactly the area under the trapezoidal ROC curve (``sklearn.metrics.roc_auc_score``).
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
from scipy import stats

from i2m2_med.errors import UndefinedMetricError, UsageError
from i2m2_med.heads import HEADS

PATHOLOGY_HEADS: tuple[str, ...] = ("acl", "mtear", "cart")
"""The three specific pathologies; their mean AUROC is reported beside the mean over all four."""

AGGREGATION_RULES: tuple[str, ...] = ("mean_top_k", "max", "mean", "noisy_or")
DEFAULT_AGGREGATION = "mean_top_k"
DEFAULT_TOP_K = 3
"""Default slice -> study rule: the mean of the ``k = 3`` highest slice probabilities per head.

A knee lesion spans several slices (fastMRI+ knee annotations: median slice extent 4-7 for
meniscus tears, cartilage defects and ACL sprains), so a true finding keeps the top-3 mean high,
while one spuriously confident slice is averaged with two lower ones and cannot carry the study on
its own, as it would under ``max``. ``mean`` over all slices dilutes a focal lesion among the
30-40 slices of a volume, and ``noisy_or`` (``1 - prod(1 - p)``) saturates towards 1 as the number
of slices grows, so scores of studies with different slice counts are not comparable.
"""

_BOOT_CHUNK_ELEMENTS = 4_000_000  # replicate-by-row weight matrices are built in chunks of this size


# ------------------------------------------------------------------------------------------------
# Result types
# ------------------------------------------------------------------------------------------------


class MetricValue(NamedTuple):
    """A statistic that may be undefined: ``value`` is a float, or None with ``reason`` saying why."""

    value: float | None
    reason: str | None = None

    @property
    def defined(self) -> bool:
        return self.value is not None

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "reason": self.reason}


class BootstrapCI(NamedTuple):
    """A point estimate with a percentile bootstrap interval.

    ``n_valid`` counts the replicates in which the statistic was defined (both classes drawn);
    the interval uses those only. ``method`` says what was resampled.
    """

    estimate: float
    low: float
    high: float
    alpha: float
    n_boot: int
    n_valid: int
    method: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self._asdict())


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
    percentile interval; ``p`` the two-sided p-value of ``diff = 0`` from the centred bootstrap
    distribution, ``(1 + #{|d* - diff| >= |diff|}) / (n_valid + 1)``.
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


class Proportion(NamedTuple):
    """``successes / total`` with a Wilson score interval; value/low/high are None when total is 0."""

    value: float | None
    low: float | None
    high: float | None
    successes: int
    total: int

    @property
    def defined(self) -> bool:
        return self.value is not None

    def to_dict(self) -> dict[str, Any]:
        return dict(self._asdict())


class SensSpec(NamedTuple):
    """Sensitivity and specificity at a threshold, each with its Wilson interval."""

    sensitivity: Proportion
    specificity: Proportion

    def to_dict(self) -> dict[str, Any]:
        return {"sensitivity": self.sensitivity.to_dict(), "specificity": self.specificity.to_dict()}


class SeedSummary(NamedTuple):
    """Mean and sample standard deviation (ddof=1) across seeds; None where undefined."""

    mean: float | None
    sd: float | None


class StudyLevel(NamedTuple):
    """Per-study scores and labels built from per-slice ones.

    ``study_ids`` (M,) in order of first appearance; ``p`` (M, H) float64 aggregated scores;
    ``y`` (M, H) bool, a study is positive for a head when any of its slices is (None when no
    slice labels were given); ``top_slice`` (M, H) int64, the slice (its number when ``slices``
    was given, else its position within the study) with the highest probability per head;
    ``n_slices`` (M,) int64.
    """

    study_ids: np.ndarray
    p: np.ndarray
    y: np.ndarray | None
    top_slice: np.ndarray
    n_slices: np.ndarray


# ------------------------------------------------------------------------------------------------
# Input checks
# ------------------------------------------------------------------------------------------------


def _binary(y: Any, name: str = "y") -> np.ndarray:
    """``y`` as a bool vector (N,); UsageError unless 1-D with values in {0, 1}."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise UsageError(name, f"labels must be a 1-D array (N,), got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if arr.size and not (np.issubdtype(arr.dtype, np.number)):
        raise UsageError(name, f"labels must be bool or numeric 0/1, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    bad = ~((arr == 0) | (arr == 1))
    if bad.any():
        raise UsageError(
            name, f"labels must be 0 or 1; found {int(bad.sum())} other values (e.g. {arr[bad][0]!r})"
        )
    return arr == 1


def _scores(s: Any, n: int, name: str = "score") -> np.ndarray:
    """``s`` as a finite float64 vector of length ``n``."""
    arr = np.asarray(s, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise UsageError(name, f"scores must have shape ({n},) to match the labels, got {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise UsageError(name, f"scores contain {int(bad.sum())} non-finite values (NaN or inf)")
    return arr


def _probabilities(p: Any, n: int, name: str = "p") -> np.ndarray:
    arr = _scores(p, n, name)
    if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
        raise UsageError(name, f"probabilities must lie in [0, 1], got range [{arr.min():.4g}, {arr.max():.4g}]")
    return arr


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise UsageError("seed", f"seed must be an int or a numpy Generator, got {seed!r}")
    return np.random.default_rng(int(seed))


def _check_alpha(alpha: float) -> float:
    if not 0.0 < float(alpha) < 1.0:
        raise UsageError("alpha", f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    return float(alpha)


def _class_reason(n_pos: int, n_neg: int, what: str = "AUROC", split: str | None = None, unit: str = "cases") -> str:
    where = f" in {split} split" if split else ""
    total = n_pos + n_neg
    if total == 0:
        return f"empty{' ' + split if split else ''} split: no {unit} to compute {what}"
    if n_pos == 0:
        return f"no positives{where} (0 of {total} {unit}); {what} needs both classes"
    return f"no negatives{where} (all {total} {unit} positive); {what} needs both classes"


def _require_both_classes(y: np.ndarray, what: str, split: str | None = None) -> tuple[int, int]:
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise UndefinedMetricError(what.lower().replace(" ", "_"), _class_reason(n_pos, n_neg, what, split))
    return n_pos, n_neg


# ------------------------------------------------------------------------------------------------
# AUROC and ROC curve
# ------------------------------------------------------------------------------------------------


def auroc(y_true: Any, score: Any) -> float:
    """Area under the ROC curve of ``score`` (N,) for binary labels ``y_true`` (N,).

    The Mann-Whitney statistic with midranks: the probability that a random positive scores
    above a random negative, ties counting one half; equal to ``sklearn.metrics.roc_auc_score``.

    Raises:
        UndefinedMetricError: a class is absent (no positives or no negatives), or N is 0.
        UsageError: shapes differ, labels are not 0/1, scores are not finite.
    """
    y = _binary(y_true)
    s = _scores(score, y.size)
    n_pos, n_neg = _require_both_classes(y, "AUROC")
    ranks = stats.rankdata(s, method="average")
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auroc_result(y_true: Any, score: Any, split: str | None = None, unit: str = "cases") -> MetricValue:
    """:func:`auroc` as a :class:`MetricValue`: an undefined AUROC gives ``value=None`` and a
    reason such as ``"no positives in test split (0 of 120 studies); AUROC needs both classes"``
    (``split`` and ``unit`` only word the reason)."""
    y = _binary(y_true)
    s = _scores(score, y.size)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return MetricValue(None, _class_reason(n_pos, n_neg, "AUROC", split, unit))
    return MetricValue(auroc(y, s))


def _roc_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative true/false positive counts at each distinct threshold, highest first.

    Returns ``(tps, fps, thresholds)`` each (T,), for the rule ``score >= threshold``.
    """
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    tps = np.cumsum(y_sorted)[last_of_run].astype(np.int64)
    fps = (last_of_run + 1) - tps
    return tps, fps, s_sorted[last_of_run]


def roc_curve_points(y_true: Any, score: Any, drop_intermediate: bool = True) -> dict[str, np.ndarray]:
    """ROC curve for plotting: ``{"fpr", "tpr", "thresholds"}``, each (T+1,) float64.

    The curve starts at (0, 0) with threshold ``+inf`` and ends at (1, 1); point i is the rule
    ``score >= thresholds[i]``. With ``drop_intermediate`` the points that lie on a straight
    segment between their neighbours are dropped (the curve and its area are unchanged), which
    keeps plots of slice-level data small.

    Raises UndefinedMetricError when a class is absent.
    """
    y = _binary(y_true)
    s = _scores(score, y.size)
    n_pos, n_neg = _require_both_classes(y, "ROC curve")
    tps, fps, thr = _roc_counts(y, s)
    tps = np.r_[0, tps]
    fps = np.r_[0, fps]
    thr = np.r_[np.inf, thr]
    if drop_intermediate and tps.size > 2:
        d_fps = np.diff(fps)
        d_tps = np.diff(tps)
        # a middle point is redundant when the segments before and after it are collinear
        collinear = d_fps[:-1] * d_tps[1:] == d_tps[:-1] * d_fps[1:]
        keep = np.r_[True, ~collinear, True]
        tps, fps, thr = tps[keep], fps[keep], thr[keep]
    return {"fpr": fps / n_neg, "tpr": tps / n_pos, "thresholds": thr.astype(np.float64)}


# ------------------------------------------------------------------------------------------------
# Bootstrap
# ------------------------------------------------------------------------------------------------


def _weighted_auc(y: np.ndarray, s: np.ndarray, w_pos: np.ndarray, w_neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC of B weighted copies of the same data, in O(B * N) after one sort.

    ``w_pos`` (B, m) and ``w_neg`` (B, n) are the multiplicities of the positives and negatives
    (in the order of ``s[y]`` and ``s[~y]``) in each replicate. Returns ``(auc (B,), valid (B,))``;
    ``auc`` is 0 where ``valid`` is False (a class has total weight 0).
    """
    pos = s[y]
    neg = s[~y]
    order = np.argsort(neg, kind="mergesort")
    neg_sorted = neg[order]
    lo = np.searchsorted(neg_sorted, pos, side="left")
    hi = np.searchsorted(neg_sorted, pos, side="right")
    cum = np.zeros((w_neg.shape[0], neg.size + 1), dtype=np.float64)
    np.cumsum(w_neg[:, order], axis=1, out=cum[:, 1:])
    below = cum[:, lo]
    ties = cum[:, hi] - below
    numerator = (w_pos * (below + 0.5 * ties)).sum(axis=1)
    denominator = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    valid = denominator > 0
    auc = np.zeros_like(numerator)
    auc[valid] = numerator[valid] / denominator[valid]
    return auc, valid


def _resample_counts(rng: np.random.Generator, n_items: int, n_rep: int) -> np.ndarray:
    """(n_rep, n_items) multiplicities of drawing ``n_items`` items with replacement, per replicate."""
    if n_items == 0:
        return np.zeros((n_rep, 0), dtype=np.float64)
    draws = rng.integers(0, n_items, size=(n_rep, n_items))
    draws += (np.arange(n_rep) * n_items)[:, None]
    return np.bincount(draws.ravel(), minlength=n_rep * n_items).reshape(n_rep, n_items).astype(np.float64)


class _Resampler:
    """Draws bootstrap row weights (B, N) for N rows, optionally by cluster and within strata.

    Rows: with ``y`` given and ``stratified``, positives and negatives are each resampled to their
    own count. Clusters (``groups`` (N,)): clusters are drawn with replacement and every row of a
    drawn cluster enters with the cluster's multiplicity; when stratified, clusters that hold a
    positive row and clusters that hold none are resampled separately.
    """

    def __init__(self, n: int, y: np.ndarray | None = None, groups: Any = None, stratified: bool = False):
        self.stratified = bool(stratified) and y is not None
        if groups is None:
            self.codes = None
            self.n_units = n
            unit_positive = y
        else:
            g = np.asarray(groups)
            if g.ndim != 1 or g.shape[0] != n:
                raise UsageError("groups", f"groups must have shape ({n},) like the labels, got {g.shape}")
            self.codes = np.unique(g, return_inverse=True)[1].ravel()
            self.n_units = int(self.codes.max()) + 1 if n else 0
            unit_positive = None
            if y is not None:
                unit_positive = np.zeros(self.n_units, dtype=bool)
                np.logical_or.at(unit_positive, self.codes, y)
        if self.stratified:
            self.strata = [np.flatnonzero(unit_positive), np.flatnonzero(~unit_positive)]
        else:
            self.strata = [np.arange(self.n_units)]
        unit = "clusters" if groups is not None else "rows"
        self.method = f"{'stratified ' if self.stratified else ''}{unit}"

    def weights(self, rng: np.random.Generator, n_rep: int) -> np.ndarray:
        """(n_rep, N) float64 multiplicity of every row in each replicate."""
        unit_w = np.zeros((n_rep, self.n_units), dtype=np.float64)
        for members in self.strata:
            unit_w[:, members] = _resample_counts(rng, members.size, n_rep)
        return unit_w if self.codes is None else unit_w[:, self.codes]


def _chunks(n_boot: int, n_rows: int) -> Iterable[int]:
    size = max(1, _BOOT_CHUNK_ELEMENTS // max(n_rows, 1))
    done = 0
    while done < n_boot:
        step = min(size, n_boot - done)
        yield step
        done += step


def _check_n_boot(n_boot: int) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise UsageError("n_boot", f"n_boot must be a positive integer, got {n_boot!r}")
    return int(n_boot)


def bootstrap_auroc_ci(
    y: Any,
    s: Any,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int | np.random.Generator = 0,
    stratified: bool = True,
    groups: Any = None,
) -> BootstrapCI:
    """Percentile bootstrap ``1 - alpha`` interval of the AUROC of ``s`` (N,) for labels ``y`` (N,).

    Args:
        stratified: resample positives and negatives separately (each to its own count), so every
            replicate has both classes and the prevalence is fixed. With ``groups``, clusters with
            at least one positive row and clusters with none are resampled separately.
        groups: optional cluster ids (N,) (e.g. study or subject ids of slice-level rows). Whole
            clusters are resampled, so correlated slices of one knee do not pass for independent
            evidence and the interval stays honest.

    Replicates in which a class is absent (possible only for clustered data) are discarded and
    counted in ``n_valid``.

    Raises:
        UndefinedMetricError: a class is absent, or no replicate defines the AUROC.
    """
    y_b = _binary(y)
    s_f = _scores(s, y_b.size)
    alpha = _check_alpha(alpha)
    n_boot = _check_n_boot(n_boot)
    estimate = auroc(y_b, s_f)
    reps = _replicate(y_b, [s_f], n_boot, seed, stratified, groups)
    values = reps.values[:, 0]
    if values.size == 0:
        raise UndefinedMetricError("bootstrap", "no bootstrap replicate contained both classes")
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return BootstrapCI(estimate, float(low), float(high), alpha, n_boot, int(values.size), reps.method)


class _Replicates(NamedTuple):
    values: np.ndarray  # (n_valid, K) AUROC of each score vector in each valid replicate
    method: str


def _replicate(
    y: np.ndarray,
    score_list: Sequence[np.ndarray],
    n_boot: int,
    seed: int | np.random.Generator,
    stratified: bool,
    groups: Any,
) -> _Replicates:
    """AUROC of several score vectors over the same bootstrap replicates (paired)."""
    rng = _rng(seed)
    sampler = _Resampler(y.size, y, groups, stratified)
    out = []
    for n_rep in _chunks(n_boot, y.size):
        w = sampler.weights(rng, n_rep)
        w_pos, w_neg = w[:, y], w[:, ~y]
        per_score = []
        valid = np.ones(n_rep, dtype=bool)
        for s in score_list:
            auc, ok = _weighted_auc(y, s, w_pos, w_neg)
            per_score.append(auc)
            valid &= ok
        out.append(np.stack(per_score, axis=1)[valid])
    return _Replicates(np.concatenate(out, axis=0), sampler.method)


def bootstrap_mean_auroc_ci(
    y: Any,
    s: Any,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int | np.random.Generator = 0,
    groups: Any = None,
    mask: Any = None,
) -> BootstrapCI:
    """Percentile interval of the mean AUROC over H heads, ``y`` and ``s`` both (N, H).

    All heads share each replicate (rows, or whole clusters with ``groups`` (N,)), so the
    interval reflects their correlation. Resampling is not stratified (strata differ by head);
    replicates where some head lacks a class are discarded and counted in ``n_valid``.
    ``mask`` (N, H) bool, optional: head h is scored on the rows where ``mask[:, h]`` holds
    (e.g. the slices where that head's anatomy is in view); rows are still drawn jointly.

    Raises UndefinedMetricError when some head has a single class in the data.
    """
    y_arr = np.asarray(y)
    s_arr = np.asarray(s, dtype=np.float64)
    if y_arr.ndim != 2 or s_arr.shape != y_arr.shape:
        raise UsageError("bootstrap_mean_auroc_ci", f"y and s must both be (N, H); got {y_arr.shape} and {s_arr.shape}")
    m_arr = np.ones(y_arr.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if m_arr.shape != y_arr.shape:
        raise UsageError("bootstrap_mean_auroc_ci", f"mask must be (N, H) like y; got {m_arr.shape}")
    alpha = _check_alpha(alpha)
    n_boot = _check_n_boot(n_boot)
    ys = [_binary(y_arr[:, h], f"y[:, {h}]") for h in range(y_arr.shape[1])]
    ss = [_scores(s_arr[:, h], y_arr.shape[0], f"s[:, {h}]") for h in range(y_arr.shape[1])]
    ms = [m_arr[:, h] for h in range(y_arr.shape[1])]
    estimate = float(np.mean([auroc(yh[mh], sh[mh]) for yh, sh, mh in zip(ys, ss, ms)]))
    rng = _rng(seed)
    sampler = _Resampler(y_arr.shape[0], None, groups, stratified=False)
    chunks = []
    for n_rep in _chunks(n_boot, y_arr.shape[0] * y_arr.shape[1]):
        w = sampler.weights(rng, n_rep)
        total = np.zeros(n_rep)
        valid = np.ones(n_rep, dtype=bool)
        for yh, sh, mh in zip(ys, ss, ms):
            wm = w * mh
            auc, ok = _weighted_auc(yh, sh, wm[:, yh], wm[:, ~yh])
            total += auc
            valid &= ok
        chunks.append(total[valid] / len(ys))
    values = np.concatenate(chunks)
    if values.size == 0:
        raise UndefinedMetricError("bootstrap", "no bootstrap replicate contained both classes for every head")
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return BootstrapCI(estimate, float(low), float(high), alpha, n_boot, int(values.size), sampler.method)


# ------------------------------------------------------------------------------------------------
# Paired comparisons
# ------------------------------------------------------------------------------------------------


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
    # centred null distribution; tolerance so that exact ties (e.g. diff 0) count as extreme
    extreme = np.abs(d - diff) >= abs(diff) - 1e-12
    p = float((1 + extreme.sum()) / (d.size + 1))
    return PairedBootstrapResult(
        auc_a, auc_b, float(diff), se, float(low), float(high), min(p, 1.0), n_boot, int(d.size), reps.method
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


# ------------------------------------------------------------------------------------------------
# Calibration
# ------------------------------------------------------------------------------------------------


def _bin_index(p: np.ndarray, n_bins: int, strategy: str) -> tuple[np.ndarray, np.ndarray]:
    """Bin of each probability and the bin edges (n_bins + 1,)."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise UsageError("n_bins", f"n_bins must be a positive integer, got {n_bins!r}")
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        edges = np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1)) if p.size else np.linspace(0.0, 1.0, n_bins + 1)
        edges[0], edges[-1] = 0.0, 1.0
    else:
        raise UsageError("strategy", f"unknown binning strategy {strategy!r}; use 'uniform' or 'quantile'")
    # right-closed except the first bin: (e_i, e_{i+1}], p == 0 goes to bin 0
    idx = np.clip(np.searchsorted(edges, p, side="left") - 1, 0, n_bins - 1)
    return idx, edges


def reliability_curve(y: Any, p: Any, n_bins: int = 10, strategy: str = "uniform") -> dict[str, np.ndarray]:
    """Reliability diagram data for probabilities ``p`` (N,) of labels ``y`` (N,).

    Bins are equal-width on [0, 1] (``strategy="uniform"``) or equal-count (``"quantile"``).
    Returns only the non-empty bins: ``bin_centers`` (midpoint of the bin's edges), ``mean_pred``
    (mean probability in the bin), ``frac_pos`` (observed fraction of positives), ``counts``
    (int64), plus ``bin_edges`` (n_bins + 1,) of all bins; float arrays are float64.
    A perfectly calibrated predictor has ``frac_pos == mean_pred`` up to sampling noise.
    """
    y_b = _binary(y)
    pr = _probabilities(p, y_b.size)
    idx, edges = _bin_index(pr, n_bins, strategy)
    counts = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=pr, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y_b.astype(np.float64), minlength=n_bins)
    keep = counts > 0
    return {
        "bin_centers": ((edges[:-1] + edges[1:]) / 2.0)[keep],
        "mean_pred": sum_p[keep] / counts[keep],
        "frac_pos": sum_y[keep] / counts[keep],
        "counts": counts[keep].astype(np.int64),
        "bin_edges": edges,
    }


def expected_calibration_error(y: Any, p: Any, n_bins: int = 10, strategy: str = "uniform") -> float:
    """Expected calibration error: ``sum_b (n_b / N) * |mean_pred_b - frac_pos_b|`` over the bins
    of :func:`reliability_curve` (probabilities ``p`` (N,) of the positive class).

    Raises UndefinedMetricError when N is 0 (one class is fine: calibration is still defined).
    """
    curve = reliability_curve(y, p, n_bins=n_bins, strategy=strategy)
    total = int(curve["counts"].sum())
    if total == 0:
        raise UndefinedMetricError("ece", "empty split: no cases to compute the calibration error")
    gaps = np.abs(curve["mean_pred"] - curve["frac_pos"])
    return float((curve["counts"] * gaps).sum() / total)


# ------------------------------------------------------------------------------------------------
# Operating points
# ------------------------------------------------------------------------------------------------

_TARGET_RULE = re.compile(r"^(sensitivity|specificity)@(0?\.\d+|1(\.0*)?)$")


def operating_point(y_val: Any, p_val: Any, rule: str = "youden") -> float:
    """Threshold chosen on validation data (``y_val``, ``p_val`` (N,)); predict positive when
    ``p >= threshold``. The threshold is one of the validation scores.

    Rules:
        ``"youden"``: maximise sensitivity + specificity - 1 (ties: the highest threshold).
        ``"sensitivity@X"``: the highest threshold whose sensitivity is at least X, i.e. the
            best specificity at that sensitivity (e.g. ``"sensitivity@0.9"``, a rule-out test).
        ``"specificity@X"``: the lowest threshold whose specificity is at least X.

    Raises UndefinedMetricError when a class is absent from the validation data.
    """
    y = _binary(y_val)
    s = _scores(p_val, y.size)
    n_pos, n_neg = _require_both_classes(y, "operating point", "validation")
    tps, fps, thr = _roc_counts(y, s)
    tpr = tps / n_pos
    spec = 1.0 - fps / n_neg
    if rule == "youden":
        return float(thr[int(np.argmax(tpr + spec - 1.0))])
    match = _TARGET_RULE.match(str(rule))
    if not match:
        raise UsageError(
            "rule", f"unknown operating-point rule {rule!r}; use 'youden', 'sensitivity@X' or 'specificity@X'"
        )
    target = float(match.group(2))
    if match.group(1) == "sensitivity":
        # tpr grows as the threshold falls, and reaches 1 at the lowest score
        return float(thr[int(np.argmax(tpr >= target - 1e-12))])
    ok = np.flatnonzero(spec >= target - 1e-12)
    if ok.size == 0:  # only "everything negative" reaches the specificity: above every score
        return float(np.nextafter(thr[0], np.inf))
    return float(thr[ok[-1]])


def wilson_interval(successes: int, total: int, alpha: float = 0.05) -> Proportion:
    """Proportion ``successes / total`` with its Wilson score ``1 - alpha`` interval."""
    alpha = _check_alpha(alpha)
    if total < 0 or successes < 0 or successes > total:
        raise UsageError("wilson_interval", f"need 0 <= successes <= total, got {successes} of {total}")
    if total == 0:
        return Proportion(None, None, None, 0, 0)
    z = float(stats.norm.ppf(1.0 - alpha / 2.0))
    phat = successes / total
    denom = 1.0 + z * z / total
    centre = (phat + z * z / (2.0 * total)) / denom
    half = z / denom * math.sqrt(phat * (1.0 - phat) / total + z * z / (4.0 * total * total))
    return Proportion(phat, max(0.0, centre - half), min(1.0, centre + half), int(successes), int(total))


def sens_spec(y: Any, p: Any, threshold: float, alpha: float = 0.05) -> SensSpec:
    """Sensitivity and specificity of ``p >= threshold`` for labels ``y`` (N,), with Wilson
    intervals. A class absent gives that proportion ``value=None`` (total 0) rather than an error."""
    y_b = _binary(y)
    s = _scores(p, y_b.size)
    if not math.isfinite(float(threshold)):
        raise UsageError("threshold", f"threshold must be finite, got {threshold!r}")
    pred = s >= float(threshold)
    tp = int((pred & y_b).sum())
    tn = int((~pred & ~y_b).sum())
    return SensSpec(wilson_interval(tp, int(y_b.sum()), alpha), wilson_interval(tn, int((~y_b).sum()), alpha))


def choose_thresholds(
    y_val: Any, p_val: Any, rule: str = "youden", heads: Sequence[str] = HEADS
) -> dict[str, float | None]:
    """Per-head :func:`operating_point` for ``y_val``, ``p_val`` (N, H); None for a head whose
    validation data lacks a class."""
    y_arr, p_arr = _two_d(y_val, p_val, heads)
    out: dict[str, float | None] = {}
    for h, name in enumerate(heads):
        try:
            out[name] = operating_point(y_arr[:, h], p_arr[:, h], rule)
        except UndefinedMetricError:
            out[name] = None
    return out


# ------------------------------------------------------------------------------------------------
# Slice -> study aggregation
# ------------------------------------------------------------------------------------------------


def _slice_matrix(p_slices: Any) -> np.ndarray:
    arr = np.asarray(p_slices, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise UsageError("p_slices", f"slice probabilities must be (S, H) with S >= 1, got {np.shape(p_slices)}")
    if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
        raise UsageError("p_slices", "slice probabilities must be finite and lie in [0, 1]")
    return arr


def aggregate_study(p_slices: Any, rule: str = DEFAULT_AGGREGATION, k: int = DEFAULT_TOP_K) -> np.ndarray:
    """One study's score per head from its slices' probabilities ``p_slices`` (S, H) -> (H,) float64.

    Rules:
        ``"mean_top_k"`` (default, k=3): mean of the k highest slice probabilities per head (all
            slices when S < k). Why it is the default: see :data:`DEFAULT_TOP_K`.
        ``"max"``: the highest slice probability.
        ``"mean"``: the mean over all slices.
        ``"noisy_or"``: ``1 - prod_s (1 - p_s)``, the study probability if slices were independent.
    """
    arr = _slice_matrix(p_slices)
    if rule == "max":
        return arr.max(axis=0)
    if rule == "mean":
        return arr.mean(axis=0)
    if rule == "noisy_or":
        with np.errstate(divide="ignore"):
            return -np.expm1(np.log1p(-arr).sum(axis=0))
    if rule == "mean_top_k":
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise UsageError("k", f"k must be a positive integer, got {k!r}")
        top = -np.sort(-arr, axis=0)[: min(int(k), arr.shape[0])]
        return top.mean(axis=0)
    raise UsageError("rule", f"unknown aggregation rule {rule!r}; use one of {', '.join(AGGREGATION_RULES)}")


def top_slice(p_slices: Any) -> np.ndarray:
    """Index (H,) int64 of the slice with the highest probability per head in ``p_slices`` (S, H);
    the first such slice on ties."""
    return np.argmax(_slice_matrix(p_slices), axis=0).astype(np.int64)


def study_level(
    study_ids: Any,
    p: Any,
    y: Any = None,
    slices: Any = None,
    rule: str = DEFAULT_AGGREGATION,
    k: int = DEFAULT_TOP_K,
) -> StudyLevel:
    """Per-study scores and labels from per-slice predictions.

    Args:
        study_ids: (N,) the study of each slice row (any hashable dtype numpy can sort).
        p: (N, H) slice probabilities.
        y: optional (N, H) slice labels; a study is positive for a head if any slice is.
        slices: optional (N,) slice numbers, reported in ``top_slice`` instead of positions.
        rule, k: see :func:`aggregate_study`.

    Returns a :class:`StudyLevel` with studies in order of first appearance.
    """
    ids = np.asarray(study_ids)
    p_arr = np.asarray(p, dtype=np.float64)
    if p_arr.ndim == 1:
        p_arr = p_arr[:, None]
    if ids.ndim != 1 or p_arr.ndim != 2 or p_arr.shape[0] != ids.shape[0]:
        raise UsageError("study_level", f"study_ids must be (N,) and p (N, H); got {ids.shape} and {np.shape(p)}")
    y_arr = None
    if y is not None:
        y_raw = np.asarray(y)
        if y_raw.ndim == 1:
            y_raw = y_raw[:, None]
        if y_raw.shape != p_arr.shape:
            raise UsageError("study_level", f"y must have the shape of p {p_arr.shape}, got {y_raw.shape}")
        y_arr = np.stack([_binary(y_raw[:, h], f"y[:, {h}]") for h in range(y_raw.shape[1])], axis=1)
    slice_no = None
    if slices is not None:
        slice_no = np.asarray(slices, dtype=np.int64)
        if slice_no.shape != ids.shape:
            raise UsageError("slices", f"slices must be (N,) like study_ids, got {slice_no.shape}")
    n_heads = p_arr.shape[1]
    if ids.size == 0:
        return StudyLevel(
            ids[:0], np.zeros((0, n_heads)), None if y_arr is None else np.zeros((0, n_heads), bool),
            np.zeros((0, n_heads), np.int64), np.zeros(0, np.int64),
        )
    uniq, first, codes = np.unique(ids, return_index=True, return_inverse=True)
    codes = codes.ravel()
    order = np.argsort(first, kind="stable")  # studies in order of first appearance
    rows_sorted = np.argsort(codes, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(codes, minlength=uniq.size))]
    m = uniq.size
    out_p = np.empty((m, n_heads))
    out_top = np.empty((m, n_heads), dtype=np.int64)
    out_y = None if y_arr is None else np.empty((m, n_heads), dtype=bool)
    n_slices = np.empty(m, dtype=np.int64)
    for new, code in enumerate(order):
        rows = rows_sorted[bounds[code] : bounds[code + 1]]
        out_p[new] = aggregate_study(p_arr[rows], rule=rule, k=k)
        pos = top_slice(p_arr[rows])
        out_top[new] = pos if slice_no is None else slice_no[rows][pos]
        if out_y is not None:
            out_y[new] = y_arr[rows].any(axis=0)
        n_slices[new] = rows.size
    return StudyLevel(uniq[order], out_p, out_y, out_top, n_slices)


def study_level_frame(
    frame: Any, heads: Sequence[str] = HEADS, rule: str = DEFAULT_AGGREGATION, k: int = DEFAULT_TOP_K
) -> Any:
    """:func:`study_level` on a pandas DataFrame of slice rows.

    Input columns: ``study_id``; ``p_<head>`` for every head; optional ``y_<head>`` (all heads or
    none) and ``slice``. Output: one row per study (order of first appearance) with ``study_id``,
    ``n_slices``, ``p_<head>``, ``y_<head>`` (bool, when given) and ``top_slice_<head>``.
    """
    import pandas as pd

    missing = [c for c in ["study_id", *(f"p_{h}" for h in heads)] if c not in frame.columns]
    if missing:
        raise UsageError("study_level_frame", f"missing columns: {', '.join(missing)}")
    y_cols = [f"y_{h}" for h in heads]
    has_y = [c in frame.columns for c in y_cols]
    if any(has_y) and not all(has_y):
        raise UsageError("study_level_frame", "give y_<head> columns for every head or for none")
    result = study_level(
        frame["study_id"].to_numpy(),
        frame[[f"p_{h}" for h in heads]].to_numpy(dtype=np.float64),
        frame[y_cols].to_numpy() if all(has_y) else None,
        frame["slice"].to_numpy() if "slice" in frame.columns else None,
        rule=rule,
        k=k,
    )
    data: dict[str, Any] = {"study_id": result.study_ids, "n_slices": result.n_slices}
    for h, name in enumerate(heads):
        data[f"p_{name}"] = result.p[:, h]
        if result.y is not None:
            data[f"y_{name}"] = result.y[:, h]
        data[f"top_slice_{name}"] = result.top_slice[:, h]
    return pd.DataFrame(data)


# ------------------------------------------------------------------------------------------------
# Summaries and tables
# ------------------------------------------------------------------------------------------------


def summarise_seeds(values: Iterable[float | None]) -> SeedSummary:
    """Mean and sample sd (ddof=1) of a statistic over seeds; None entries (undefined runs) are
    skipped. ``mean`` is None with no defined value, ``sd`` None with fewer than two."""
    vals = np.asarray([float(v) for v in values if v is not None], dtype=np.float64)
    if vals.size and not np.isfinite(vals).all():
        raise UsageError("summarise_seeds", "values must be finite (use None for an undefined run)")
    mean = float(vals.mean()) if vals.size else None
    sd = float(vals.std(ddof=1)) if vals.size >= 2 else None
    return SeedSummary(mean, sd)


def _two_d(y: Any, p: Any, heads: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y)
    p_arr = np.asarray(p, dtype=np.float64)
    if y_arr.size == 0 and y_arr.ndim < 2:
        y_arr = y_arr.reshape(0, len(heads))
    if p_arr.size == 0 and p_arr.ndim < 2:
        p_arr = p_arr.reshape(0, len(heads))
    if y_arr.ndim != 2 or y_arr.shape != p_arr.shape or y_arr.shape[1] != len(heads):
        raise UsageError("metrics", f"y and p must both be (N, {len(heads)}); got {y_arr.shape} and {p_arr.shape}")
    return y_arr, p_arr


def _mean_over(per_head: Mapping[str, dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    used = [h for h in names if h in per_head and per_head[h]["auroc"] is not None]
    missing = {h: per_head[h]["reason"] for h in names if h in per_head and per_head[h]["auroc"] is None}
    value = float(np.mean([per_head[h]["auroc"] for h in used])) if used else None
    out: dict[str, Any] = {"auroc": value, "heads": used, "undefined_heads": missing}
    if not used:
        reasons = sorted(set(missing.values()))
        detail = reasons[0] if len(reasons) == 1 else "; ".join(f"{h}: {r}" for h, r in missing.items())
        out["reason"] = f"AUROC undefined for every head: {detail}"
    return out


def level_metrics(
    y: Any,
    p: Any,
    groups: Any = None,
    *,
    heads: Sequence[str] = HEADS,
    thresholds: Mapping[str, float | None] | None = None,
    split: str = "test",
    unit: str = "cases",
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    n_bins: int = 10,
) -> dict[str, Any]:
    """JSON-ready metrics of one level (slice or study) for ``y``, ``p`` (N, H).

    Per head: ``n``, ``n_pos``, ``prevalence``, ``auroc`` and its bootstrap ``ci`` ([low, high];
    stratified, by cluster when ``groups`` (N,) is given), ``ece``, ``reliability`` (lists) and,
    for heads with a threshold in ``thresholds``, ``threshold`` and ``sens_spec`` (Wilson).
    Undefined values are None with a ``reason`` (e.g. "no positives in test split (0 of 40)").
    Then ``mean_pathologies`` (ACL, MTEAR, CART) and ``mean_all`` (every head): the mean AUROC
    over the heads where it is defined (listed in ``heads``; the others in ``undefined_heads``
    with their reasons) and a CI from resampling those heads jointly.
    """
    y_arr, p_arr = _two_d(y, p, heads)
    n = int(y_arr.shape[0])
    per_head: dict[str, dict[str, Any]] = {}
    for h, name in enumerate(heads):
        yh = _binary(y_arr[:, h], f"y[:, {name}]")
        ph = _probabilities(p_arr[:, h], n, f"p[:, {name}]")
        n_pos = int(yh.sum())
        row: dict[str, Any] = {
            "n": n,
            "n_pos": n_pos,
            "prevalence": (n_pos / n) if n else None,
            "auroc": None,
            "ci": None,
            "reason": None,
        }
        value = auroc_result(yh, ph, split=split, unit=unit)
        if value.defined:
            row["auroc"] = value.value
            try:
                ci = bootstrap_auroc_ci(yh, ph, n_boot=n_boot, alpha=alpha, seed=seed + h, groups=groups)
                row["ci"] = [ci.low, ci.high]
                row["ci_method"] = f"percentile bootstrap, {ci.n_valid}/{ci.n_boot} replicates, {ci.method}"
            except UndefinedMetricError as err:
                row["ci_reason"] = err.reason
        else:
            row["reason"] = value.reason
        if n:
            row["ece"] = expected_calibration_error(yh, ph, n_bins=n_bins)
            curve = reliability_curve(yh, ph, n_bins=n_bins)
            row["reliability"] = {key: curve[key].tolist() for key in ("bin_centers", "mean_pred", "frac_pos", "counts")}
        else:
            row["ece"] = None
            row["reliability"] = None
        if thresholds is not None and thresholds.get(name) is not None:
            row["threshold"] = float(thresholds[name])
            row["sens_spec"] = sens_spec(yh, ph, float(thresholds[name]), alpha=alpha).to_dict()
        per_head[name] = row

    out: dict[str, Any] = {"n": n, "unit": unit, "alpha": alpha, "per_head": per_head}
    out.update(_mean_summaries(per_head, heads, y_arr, p_arr, groups, None, n_boot, alpha, seed))
    return out


def _mean_summaries(
    per_head: Mapping[str, dict[str, Any]],
    heads: Sequence[str],
    y_arr: np.ndarray,
    p_arr: np.ndarray,
    groups: Any,
    mask: np.ndarray | None,
    n_boot: int,
    alpha: float,
    seed: int,
) -> dict[str, Any]:
    """``mean_pathologies`` (ACL, MTEAR, CART) and ``mean_all`` (every head): the mean AUROC over
    the heads where it is defined, with a CI from resampling those heads jointly (each head on
    the rows of its ``mask`` column, when given)."""
    out: dict[str, Any] = {}
    for key, names in (("mean_pathologies", [h for h in PATHOLOGY_HEADS if h in heads]), ("mean_all", list(heads))):
        summary = _mean_over(per_head, names)
        summary["ci"] = None
        if summary["auroc"] is not None:
            cols = [list(heads).index(h) for h in summary["heads"]]
            try:
                ci = bootstrap_mean_auroc_ci(
                    y_arr[:, cols].astype(np.float64), p_arr[:, cols], n_boot=n_boot, alpha=alpha, seed=seed + 101,
                    groups=groups, mask=None if mask is None else mask[:, cols],
                )
                summary["ci"] = [ci.low, ci.high]
                summary["ci_method"] = f"percentile bootstrap, {ci.n_valid}/{ci.n_boot} replicates, {ci.method}"
            except UndefinedMetricError as err:
                summary["ci_reason"] = err.reason
        out[key] = summary
    return out


def in_view_metrics(
    y: Any,
    p: Any,
    in_view: Any,
    groups: Any = None,
    *,
    heads: Sequence[str] = HEADS,
    split: str = "test",
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Slice-level AUROC of each head on the slices where its anatomy is in view (``in_view``
    (N, H) bool): a finding against the mimics and quiet slices of the same anatomy, which the
    slice position alone cannot separate. Same layout as :func:`level_metrics` (``per_head``
    with ``n``, ``n_pos``, ``auroc``, ``ci``; ``mean_pathologies`` and ``mean_all``), CIs by
    resampling whole studies when ``groups`` (N,) is given."""
    y_arr, p_arr = _two_d(y, p, heads)
    view = np.asarray(in_view, dtype=bool)
    if view.shape != y_arr.shape:
        raise UsageError("in_view", f"must be (N, H) like the labels, got {view.shape}")
    g = None if groups is None else np.asarray(groups)
    per_head: dict[str, dict[str, Any]] = {}
    for h, name in enumerate(heads):
        m = view[:, h]
        yh = _binary(y_arr[m, h], f"y[:, {name}]")
        ph = _probabilities(p_arr[m, h], int(m.sum()), f"p[:, {name}]")
        row: dict[str, Any] = {"n": int(m.sum()), "n_pos": int(yh.sum()), "auroc": None, "ci": None, "reason": None}
        value = auroc_result(yh, ph, split=split, unit="slices in view")
        if value.defined:
            row["auroc"] = value.value
            try:
                ci = bootstrap_auroc_ci(yh, ph, n_boot=n_boot, alpha=alpha, seed=seed + h, groups=None if g is None else g[m])
                row["ci"] = [ci.low, ci.high]
            except UndefinedMetricError as err:
                row["ci_reason"] = err.reason
        else:
            row["reason"] = value.reason
        per_head[name] = row
    out: dict[str, Any] = {"n": int(y_arr.shape[0]), "unit": "slices in view", "alpha": alpha, "per_head": per_head}
    out.update(_mean_summaries(per_head, heads, y_arr, p_arr, g, view, n_boot, alpha, seed))
    return out


def metrics_table(
    y: Any,
    p: Any,
    study_ids: Any = None,
    *,
    heads: Sequence[str] = HEADS,
    rule: str = DEFAULT_AGGREGATION,
    k: int = DEFAULT_TOP_K,
    thresholds: Mapping[str, Mapping[str, float | None]] | None = None,
    split: str = "test",
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    n_bins: int = 10,
) -> dict[str, Any]:
    """Slice- and study-level metrics of slice predictions ``p`` (N, H) for slice labels ``y`` (N, H).

    ``study_ids`` (N,) groups slices into studies: slice-level CIs then resample whole studies,
    and the study level aggregates with ``rule``/``k`` (:func:`aggregate_study`; a study is
    positive when any of its slices is). Without ``study_ids`` the study level is None with a
    reason. ``thresholds`` maps ``"slice"``/``"study"`` to per-head thresholds chosen on
    validation (:func:`choose_thresholds`).

    Returns a JSON-serialisable dict (no NaN, no inf)::

        {"heads": [...], "split": "test",
         "slice": level_metrics(...), "study": level_metrics(...) | None,
         "study_reason": str | None, "aggregation": {"rule": ..., "k": ...}}
    """
    thresholds = thresholds or {}
    y_arr, p_arr = _two_d(y, p, heads)
    common = dict(heads=heads, split=split, n_boot=n_boot, alpha=alpha, seed=seed, n_bins=n_bins)
    table: dict[str, Any] = {
        "heads": list(heads),
        "split": split,
        "aggregation": {"rule": rule, "k": k if rule == "mean_top_k" else None},
    }
    groups = None if study_ids is None else np.asarray(study_ids)
    table["slice"] = level_metrics(y_arr, p_arr, groups, thresholds=thresholds.get("slice"), unit="slices", **common)
    if groups is None:
        table["study"] = None
        table["study_reason"] = "no study ids given: study-level metrics need the study of each slice"
    else:
        studies = study_level(groups, p_arr, y_arr, rule=rule, k=k)
        table["study"] = level_metrics(
            studies.y if studies.y is not None else np.zeros((0, len(heads))),
            studies.p,
            thresholds=thresholds.get("study"),
            unit="studies",
            **common,
        )
        table["study_reason"] = None
    return table
