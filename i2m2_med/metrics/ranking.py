"""AUROC as the Mann-Whitney statistic with midranks (ties count one half; exactly the area under
the trapezoidal ROC curve of ``sklearn.metrics.roc_auc_score``), ROC curve points, and the input
checks every statistic shares.

Conventions of :mod:`i2m2_med.metrics`: ``y`` is a binary label vector ``(N,)`` (bool, or numbers
that are exactly 0 or 1); ``s`` / ``p`` is a finite score vector ``(N,)``. A statistic the data
cannot define raises :class:`~i2m2_med.errors.UndefinedMetricError` with a one-line reason; the
``*_result`` helpers turn it into a :class:`MetricValue` whose ``value`` is None. No function
returns NaN. Nothing here needs torch.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

from i2m2_med.errors import UndefinedMetricError, UsageError


class MetricValue(NamedTuple):
    """A statistic that may be undefined: ``value`` is a float, or None with ``reason`` saying why."""

    value: float | None
    reason: str | None = None

    @property
    def defined(self) -> bool:
        return self.value is not None

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "reason": self.reason}


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
    ranks = midranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` (N,) with ties given the mean of their ranks (float64), as
    ``scipy.stats.rankdata(x, method="average")``; plain numpy, so that the metrics (and the config,
    which reads the aggregation rule names) import without scipy.stats."""
    x = np.asarray(x).reshape(-1)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    bounds = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1], True])
    starts, ends = bounds[:-1], bounds[1:]
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


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
