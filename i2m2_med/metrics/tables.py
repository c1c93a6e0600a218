"""Metric tables of a run: slice- and study-level AUROC with CIs per head, per expert and
combined, the in-view AUROC, and summaries over seeds.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from i2m2_med.errors import UndefinedMetricError, UsageError
from i2m2_med.heads import HEADS, PATHOLOGY_HEADS
from i2m2_med.metrics.aggregation import DEFAULT_AGGREGATION, DEFAULT_TOP_K, study_level
from i2m2_med.metrics.bootstrap import bootstrap_auroc_ci, bootstrap_mean_auroc_ci
from i2m2_med.metrics.calibration import (
    apply_study_map,
    expected_calibration_error,
    reliability_curve,
)
from i2m2_med.metrics.ranking import _binary, _probabilities, _two_d, auroc_result
from i2m2_med.metrics.thresholds import sens_spec


class SeedSummary(NamedTuple):
    """Mean and sample standard deviation (ddof=1) across seeds; None where undefined."""

    mean: float | None
    sd: float | None


def summarise_seeds(values: Iterable[float | None]) -> SeedSummary:
    """Mean and sample sd (ddof=1) of a statistic over seeds; None entries (undefined runs) are
    skipped. ``mean`` is None with no defined value, ``sd`` None with fewer than two."""
    vals = np.asarray([float(v) for v in values if v is not None], dtype=np.float64)
    if vals.size and not np.isfinite(vals).all():
        raise UsageError("summarise_seeds", "values must be finite (use None for an undefined run)")
    mean = float(vals.mean()) if vals.size else None
    sd = float(vals.std(ddof=1)) if vals.size >= 2 else None
    return SeedSummary(mean, sd)


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
    subject_ids: Any = None,
    study_calibration: Any = None,
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

    ``study_ids`` (N,) groups slices into studies: the study level aggregates with ``rule``/``k``
    (:func:`aggregate_study`; a study is positive when any of its slices is). Without
    ``study_ids`` the study level is None with a reason. The bootstrap CIs of both levels resample
    whole subjects when ``subject_ids`` (N,) is given (the PD and PD-FS studies of one knee are not
    independent), else whole studies; ``clusters`` in the result says which.
    ``study_calibration`` ((H, 2) slope and intercept per head,
    :func:`~i2m2_med.metrics.calibration.fit_study_calibration`) maps the aggregated study scores
    to calibrated probabilities before the study level is measured: its AUROC is unchanged (the
    map is monotone), its calibration error and thresholds are those of the calibrated p. ``thresholds`` maps ``"slice"``/``"study"`` to per-head thresholds chosen on
    validation (:func:`choose_thresholds`).

    Returns a JSON-serialisable dict (no NaN, no inf)::

        {"heads": [...], "split": "test",
         "slice": level_metrics(...), "study": level_metrics(...) | None,
         "study_reason": str | None, "aggregation": {"rule": ..., "k": ...},
         "clusters": "subjects" | "studies" | "slices"}
    """
    thresholds = thresholds or {}
    y_arr, p_arr = _two_d(y, p, heads)
    common = dict(heads=heads, split=split, n_boot=n_boot, alpha=alpha, seed=seed, n_bins=n_bins)
    table: dict[str, Any] = {
        "heads": list(heads),
        "split": split,
        "aggregation": {"rule": rule, "k": k if rule == "mean_top_k" else None},
    }
    ids = None if study_ids is None else np.asarray(study_ids)
    subjects = None if subject_ids is None else np.asarray(subject_ids)
    if subjects is not None and subjects.shape != (y_arr.shape[0],):
        raise UsageError("subject_ids", f"must be (N,) like the labels, got {subjects.shape}")
    groups = subjects if subjects is not None else ids
    table["clusters"] = "subjects" if subjects is not None else ("studies" if ids is not None else "slices")
    table["slice"] = level_metrics(y_arr, p_arr, groups, thresholds=thresholds.get("slice"), unit="slices", **common)
    if ids is None:
        table["study"] = None
        table["study_reason"] = "no study ids given: study-level metrics need the study of each slice"
    else:
        studies = study_level(ids, p_arr, y_arr, rule=rule, k=k)
        study_p = studies.p
        if study_calibration is not None:
            params = np.asarray(study_calibration, dtype=np.float64)
            study_p = apply_study_map(study_p, params[:, 0], params[:, 1])
        study_groups = None
        if subjects is not None:
            subject_of = dict(zip(ids.tolist(), subjects.tolist()))
            study_groups = np.asarray([subject_of[s] for s in studies.study_ids.tolist()])
        table["study"] = level_metrics(
            studies.y if studies.y is not None else np.zeros((0, len(heads))),
            study_p,
            study_groups,
            thresholds=thresholds.get("study"),
            unit="studies",
            **common,
        )
        table["study_reason"] = None
        table["study_calibrated"] = study_calibration is not None
    return table
