"""Operating points chosen on validation, sensitivity / specificity with Wilson intervals.

A positive prediction is ``score >= threshold``.
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple, Sequence

import numpy as np
from scipy import stats

from i2m2_med.errors import UndefinedMetricError, UsageError
from i2m2_med.heads import HEADS
from i2m2_med.metrics.ranking import (
    _binary,
    _check_alpha,
    _require_both_classes,
    _roc_counts,
    _scores,
    _two_d,
)


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
