"""Calibration, measured and fitted: reliability curves and the expected calibration error, and
the refit of the product's prior.

The prior's refit, so that the product's probabilities mean what they say.

Why: training weights each head's NLL by inverse class frequency (``training.class_weighting``),
so that a rare finding is not drowned by the normal slices. The price is that the product learns
the probabilities of a *balanced* cohort: with a weighted loss the optimum is
``p_w(y | x) ∝ p(y | x) / pi_y`` (``pi_y`` the training frequency of class ``y``), and a head whose
findings lie on 5% of the slices reports p = 0.5 where the chance is nearer 0.05. A radiologist
reading p(y=1) in the app or in ``predictions.csv`` should be able to take it at its word.

What: the I2M2 combination has a place for exactly this, the prior term ``log p(y)`` of the
product. After training, with every expert frozen, one offset ``b_h`` per head is fitted by
maximum likelihood on the validation split's slices: the combined log-odds ``L`` become
``L + b_h`` (intercept-only recalibration, "calibration in the large"). The offset is the prior
term's log-odds: :meth:`I2M2Model.set_prior_offset` adds it to the ``"prior"`` term, so the
combined output, the evidence decomposition, diagnose, the app and the reports read the same
numbers, and the checkpoint carries it as a weight.

What it does not change: a constant per head leaves every slice-level ranking, hence the
slice-level and in-view AUROC, exactly as they were (the study-level score, the mean of the three
highest slice probabilities, can move slightly). It does not correct the slope (over- or
under-confidence), and it calibrates slices, not studies: the study-level score is a ranking
score (the mean of the top three slice probabilities), not the probability that the study holds
a finding, and a calibrated slice probability makes it lower. The expected calibration error
before and after, on validation (where the offset was fitted) and on test (where it was not), is
in ``metrics.json`` under ``calibration``.

A head whose validation slices hold one class only has no maximum-likelihood offset; it keeps 0
and the report says why.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from i2m2_med.errors import UndefinedMetricError, UsageError
from i2m2_med.heads import HEADS
from i2m2_med.metrics.ranking import _binary, _probabilities


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


#: Largest |offset| in log-odds (a prevalence ratio of about 1 : 3e6): beyond it the fit is refused.
MAX_OFFSET = 15.0
#: Newton iterations of the one-dimensional fit (it converges in a handful).
MAX_ITER = 100


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def offset_nll(log_odds: Any, labels: Any, offset: float) -> float:
    """Mean binary NLL (nats) of ``labels`` (N,) in {0, 1} under ``sigmoid(log_odds + offset)``."""
    z = np.asarray(log_odds, dtype=np.float64) + float(offset)
    y = np.asarray(labels, dtype=np.float64)
    return float(-(y * _log_sigmoid(z) + (1.0 - y) * _log_sigmoid(-z)).mean())


def fit_offset(log_odds: Any, labels: Any) -> tuple[float, str | None]:
    """The maximum-likelihood offset ``b`` of one head: ``argmin_b NLL(y | sigmoid(L + b))``.

    Args:
        log_odds: (N,) combined log-odds of the slices.
        labels: (N,) in {0, 1}; non-finite entries (unlabelled slices) are left out with their
            log-odds.

    Returns ``(b, None)``, or ``(0.0, reason)`` when the head cannot be fitted (no labelled slice,
    one class only, or an offset beyond :data:`MAX_OFFSET`). The NLL is convex in ``b``; damped
    Newton steps from 0 (gradient ``sum(sigmoid(L + b) - y)``, curvature
    ``sum(sigmoid(L + b) (1 - sigmoid(L + b)))``).
    """
    z = np.asarray(log_odds, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    keep = np.isfinite(y) & np.isfinite(z)
    z, y = z[keep], (y[keep] > 0.5).astype(np.float64)
    if y.size == 0:
        return 0.0, "no labelled slice"
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        return 0.0, f"one class only ({n_pos} of {y.size} slices positive)"
    b = 0.0
    for _ in range(MAX_ITER):
        x = z + b
        grad = float((np.exp(_log_sigmoid(x)) - y).sum())
        hess = float(np.exp(_log_sigmoid(x) + _log_sigmoid(-x)).sum())  # p (1 - p) without cancellation
        step = grad / hess if hess > 0.0 else float(np.sign(grad)) * np.inf  # saturated: the largest step
        step = float(np.clip(step, -2.0, 2.0))
        b -= step
        if abs(step) < 1e-10 or abs(b) > 2 * MAX_OFFSET:
            break
    if not np.isfinite(b) or abs(b) > MAX_OFFSET:
        return 0.0, f"offset {b:.1f} beyond +-{MAX_OFFSET:g} log-odds"
    return float(b), None


def fit_prior_offset(log_odds: Any, labels: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-head offsets ``(4,)`` float32 for combined log-odds ``(N, 4)`` and labels ``(N, 4)``
    (see :func:`fit_offset`), and a JSON-ready report: per head the offset, the reason when it
    was not fitted, the slices and positives used, and the validation NLL before and after."""
    z = np.asarray(log_odds, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if z.ndim != 2 or z.shape != y.shape or z.shape[1] != len(HEADS):
        raise ValueError(f"log-odds and labels must both be (N, {len(HEADS)}), got {z.shape} and {y.shape}")
    offsets = np.zeros(len(HEADS), dtype=np.float64)
    heads: dict[str, Any] = {}
    for h, head in enumerate(HEADS):
        b, reason = fit_offset(z[:, h], y[:, h])
        offsets[h] = b
        keep = np.isfinite(y[:, h]) & np.isfinite(z[:, h])
        yh = (y[keep, h] > 0.5).astype(np.float64)
        heads[head] = {
            "offset": b,
            "fitted": reason is None,
            "reason": reason,
            "slices": int(keep.sum()),
            "positives": int(yh.sum()),
            "nll_before": offset_nll(z[keep, h], yh, 0.0) if keep.any() else None,
            "nll_after": offset_nll(z[keep, h], yh, b) if keep.any() else None,
        }
    return offsets.astype(np.float32), {"per_head": heads}


def calibration_errors(log_odds: Any, labels: Any, offsets: Any, n_bins: int = 10) -> dict[str, Any]:
    """Slice-level expected calibration error per head, before and after the offset: ``log_odds``
    ``(N, 4)`` are a model's combined log-odds *with* ``offsets`` ``(4,)`` in its prior term (the
    output before the fit is ``log_odds - offsets``, exactly); ``labels`` ``(N, 4)``. Returns
    ``{head: {"before", "after", "mean_p_before", "mean_p_after", "prevalence"}}`` (None where a
    head has no labelled slice)."""
    
    z = np.asarray(log_odds, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    b = np.asarray(offsets, dtype=np.float64).reshape(-1)
    out: dict[str, Any] = {}
    for h, head in enumerate(HEADS):
        keep = np.isfinite(y[:, h]) & np.isfinite(z[:, h])
        if not keep.any():
            out[head] = None
            continue
        yh = (y[keep, h] > 0.5).astype(np.int64)
        after = np.exp(_log_sigmoid(z[keep, h]))
        before = np.exp(_log_sigmoid(z[keep, h] - b[h]))
        out[head] = {
            "before": expected_calibration_error(yh, before, n_bins=n_bins),
            "after": expected_calibration_error(yh, after, n_bins=n_bins),
            "mean_p_before": float(before.mean()),
            "mean_p_after": float(after.mean()),
            "prevalence": float(yh.mean()),
        }
    return out


__all__ = ["MAX_OFFSET", "calibration_errors", "fit_offset", "fit_prior_offset", "offset_nll"]


# ---- study level ----------------------------------------------------------------------------

STUDY_RIDGE = 1.0
"""Strength of the pull of the study-level map towards the identity (slope 1, intercept 0), in
units of one study's log-likelihood: with a few dozen validation studies a plain two-parameter
fit is free to overshoot, and a head whose validation studies hold one class has no fit at all."""
_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, _EPS, 1.0 - _EPS)
    return np.log(q) - np.log1p(-q)


def fit_study_map(scores: Any, labels: Any, ridge: float = STUDY_RIDGE) -> tuple[float, float, str | None]:
    """The study-level calibration map of one head: ``p = sigmoid(a * logit(s) + b)`` of a
    study score ``s`` in [0, 1] (the aggregated slice probabilities, e.g. the mean of the three
    highest), fitted by penalised maximum likelihood on validation studies (Platt scaling):
    ``NLL(a, b) + ridge / 2 * ((a - 1)^2 + b^2)``.

    Returns ``(a, b, None)``, or ``(1.0, 0.0, reason)`` (the identity) when the head cannot be
    fitted (no study, or one class only). Convex; Newton steps from the identity.
    """
    x = _logit(np.asarray(scores, dtype=np.float64).reshape(-1))
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], (y[keep] > 0.5).astype(np.float64)
    n_pos = int(y.sum())
    if y.size == 0:
        return 1.0, 0.0, "no validation study"
    if n_pos in (0, y.size):
        return 1.0, 0.0, f"one class only ({n_pos} of {y.size} validation studies positive)"
    theta = np.array([1.0, 0.0])
    prior = np.array([1.0, 0.0])
    design = np.stack([x, np.ones_like(x)], axis=1)
    for _ in range(MAX_ITER):
        z = design @ theta
        p = np.exp(_log_sigmoid(z))
        grad = design.T @ (p - y) + ridge * (theta - prior)
        w = np.exp(_log_sigmoid(z) + _log_sigmoid(-z))
        hess = design.T @ (design * w[:, None]) + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta = theta - np.clip(step, -2.0, 2.0)
        if np.abs(step).max() < 1e-10:
            break
    return float(theta[0]), float(theta[1]), None


def apply_study_map(scores: Any, slope: Any, intercept: Any) -> np.ndarray:
    """Calibrated study probabilities ``sigmoid(slope * logit(s) + intercept)`` of scores ``s``
    (M,) or (M, H), with one slope and intercept per column."""
    s = np.asarray(scores, dtype=np.float64)
    return np.exp(_log_sigmoid(np.asarray(slope, dtype=np.float64) * _logit(s) + np.asarray(intercept, dtype=np.float64)))


def fit_study_calibration(scores: Any, labels: Any, ridge: float = STUDY_RIDGE) -> tuple[np.ndarray, dict[str, Any]]:
    """Per head, the study-level map (:func:`fit_study_map`) of validation study scores (M, 4)
    and labels (M, 4): ``(4, 2)`` float64 ``[slope, intercept]`` rows and a JSON-ready report
    (per head the map, the reason when it was not fitted, the studies and positives, and the
    validation ECE before and after)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if s.ndim != 2 or s.shape != y.shape or s.shape[1] != len(HEADS):
        raise UsageError("study scores", f"scores and labels must both be (M, {len(HEADS)}), got {s.shape} and {y.shape}")
    params = np.tile([1.0, 0.0], (len(HEADS), 1))
    heads: dict[str, Any] = {}
    for h, head in enumerate(HEADS):
        a, b, reason = fit_study_map(s[:, h], y[:, h], ridge)
        params[h] = (a, b)
        row: dict[str, Any] = {"slope": a, "intercept": b, "fitted": reason is None, "reason": reason,
                               "studies": int(s.shape[0]), "positives": int((y[:, h] > 0.5).sum())}
        if reason is None:
            row["ece_before"] = expected_calibration_error(y[:, h] > 0.5, s[:, h])
            row["ece_after"] = expected_calibration_error(y[:, h] > 0.5, apply_study_map(s[:, h], a, b))
        heads[head] = row
    return params, {"rule": "sigmoid(slope * logit(study score) + intercept), penalised ML on validation studies",
                    "ridge": ridge, "per_head": heads}
