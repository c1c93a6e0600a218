"""The statistics of the ablation report, built on :mod:`i2m2_med.metrics` and
:mod:`i2m2_med.evidence`: per-variant tables, seed summaries, paired comparisons against the
reference variant, ROC curves, per-expert evidence, robustness summaries, and the paired
bootstrap of a difference in mean AUROC over several heads (the regime-study margins).

Every function returns JSON-ready values: a statistic the data cannot define is None with a
``reason`` next to it, never NaN.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from i2m2_med.ablation.predict import Predictions
from i2m2_med.data.cohort import in_view_rows
from i2m2_med.errors import UndefinedMetricError, UsageError
from i2m2_med.evidence import (
    agreement_matrix,
    contributions,
    driving_expert,
    driving_frequency,
)
from i2m2_med.heads import HEADS, PATHOLOGY_HEADS
from i2m2_med.metrics.aggregation import study_level
from i2m2_med.metrics.paired import compare_auroc, percentile_p_value
from i2m2_med.metrics.ranking import auroc, auroc_result, roc_curve_points
from i2m2_med.metrics.tables import in_view_metrics, metrics_table, summarise_seeds
from i2m2_med.metrics.thresholds import choose_thresholds

LEVELS: tuple[str, ...] = ("slice", "study")
PATHOLOGY_IDX: list[int] = [HEADS.index(h) for h in PATHOLOGY_HEADS]


def _labels(pred: Predictions) -> np.ndarray:
    y = np.asarray(pred.labels, dtype=np.float64)
    if y.size and not np.isfinite(y).all():
        raise UsageError("labels", "some test slices have unknown labels; the ablation needs labelled slices")
    return y > 0.5


def study_arrays(pred: Predictions, rule: str, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(study ids (M,), y (M, 4) bool, p (M, 4))`` aggregated from the slices of ``pred``."""
    if pred.n == 0:
        return np.zeros(0, dtype=object), np.zeros((0, len(HEADS)), bool), np.zeros((0, len(HEADS)))
    st = study_level(pred.study_id.astype(str), pred.p, _labels(pred), rule=rule, k=k)
    return st.study_ids, st.y, st.p


def level_arrays(pred: Predictions, level: str, rule: str, k: int,
                 subjects: Mapping[str, str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(y (N, 4) bool, p (N, 4), groups (N,) or None)`` of one level. With ``subjects`` (study
    id -> subject) the groups are the subjects at both levels, so every bootstrap resamples whole
    knees (the PD and PD-FS studies of a subject share its findings); without, slices are grouped
    by study and studies are independent."""
    if level == "slice":
        ids = pred.study_id.astype(str)
        groups = ids if subjects is None else np.asarray([subjects.get(s, s) for s in ids.tolist()])
        return _labels(pred), pred.p, groups
    study_ids, y, p = study_arrays(pred, rule, k)
    groups = None if subjects is None else np.asarray([subjects.get(str(s), str(s)) for s in study_ids.tolist()])
    return y, p, groups


def unit_of(subjects: Mapping[str, str] | None) -> str:
    """What a bootstrap resamples: ``"subjects"`` with a subject map, else ``"studies"``."""
    return "studies" if subjects is None else "subjects"


# ---- per-variant tables -------------------------------------------------------------------------

MIN_UNITS_PER_CLASS = 2
"""A bootstrap interval or test needs at least this many independent units (studies) on each
side: studies with a positive and studies without (slice level, whole studies resampled), or
positive and negative studies (study level). With fewer, every replicate repeats the same unit
and the interval collapses to a point that would look falsely precise."""


def too_few_units(y: np.ndarray, groups: Any = None, unit: str = "studies") -> str | None:
    """The reason a bootstrap on labels ``y`` (N,) (clustered by ``groups`` (N,)) is not
    trustworthy, or None when each class has at least :data:`MIN_UNITS_PER_CLASS` units."""
    y = np.asarray(y, dtype=bool)
    if groups is None:
        pos, neg = int(y.sum()), int((~y).sum())
        what = (f"{pos} positive and {neg} negative {unit}")
    else:
        g = np.asarray(groups).astype(str)
        ids = np.unique(g)
        with_pos = {str(x) for x in np.unique(g[y])}
        pos, neg = len(with_pos), len(ids) - len(with_pos)
        what = f"{pos} {unit} with a positive and {neg} without"
    if pos < MIN_UNITS_PER_CLASS or neg < MIN_UNITS_PER_CLASS:
        return f"too few {unit} for a bootstrap: {what} (needs {MIN_UNITS_PER_CLASS} of each)"
    return None


def thresholds_from_validation(val: Predictions | None, rule: str, agg_rule: str, k: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-level, per-head operating points chosen on validation, and the reasons for the heads
    where none could be chosen: ``({"slice": {head: thr | None}, "study": ...}, {level: {head: reason}})``."""
    thresholds: dict[str, Any] = {}
    reasons: dict[str, dict[str, str]] = {}
    for level in LEVELS:
        reasons[level] = {}
        if val is None or not val.ok or val.n == 0:
            why = "no validation predictions" if val is None or val.ok else val.reason
            thresholds[level] = {h: None for h in HEADS}
            reasons[level] = {h: f"no operating point: {why}" for h in HEADS}
            continue
        y, p, _ = level_arrays(val, level, agg_rule, k)
        thr = choose_thresholds(y, p, rule=rule)
        thresholds[level] = thr
        for h, head in enumerate(HEADS):
            if thr[head] is None:
                n_pos = int(y[:, h].sum())
                what = "no positives" if n_pos == 0 else "no negatives"
                unit = "slices" if level == "slice" else ("study" if y.shape[0] == 1 else "studies")
                reasons[level][head] = f"no operating point: {what} in the validation split ({y.shape[0]} {unit})"
    return thresholds, reasons


def variant_table(
    test: Predictions,
    val: Predictions | None,
    *,
    agg_rule: str,
    k: int,
    operating_rule: str = "youden",
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    n_bins: int = 10,
    subjects: Mapping[str, str] | None = None,
    in_view: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """:func:`i2m2_med.metrics.tables.metrics_table` of the test predictions with operating points
    chosen on validation (``operating_rule``); heads without one carry ``threshold_reason``. With
    ``subjects`` every interval resamples whole subjects; with ``in_view`` (the cohort's episode
    table) the level ``"in_view"`` is added: each head on the slices where its anatomy is in view,
    findings against their mimics (:func:`i2m2_med.metrics.tables.in_view_metrics`)."""
    if not test.ok:
        return {"value": None, "reason": test.reason}
    thresholds, reasons = thresholds_from_validation(val, operating_rule, agg_rule, k)
    ids = test.study_id.astype(str)
    table = metrics_table(
        _labels(test), test.p, ids, rule=agg_rule, k=k, thresholds=thresholds,
        split="test", n_boot=n_boot, alpha=alpha, seed=seed, n_bins=n_bins,
        subject_ids=None if subjects is None else np.asarray([subjects.get(s, s) for s in ids.tolist()]),
    )
    if in_view is not None and test.n and all(sid in in_view for sid in ids.tolist()):
        clusters = ids if subjects is None else np.asarray([subjects.get(s, s) for s in ids.tolist()])
        try:
            view = in_view_rows(in_view, ids, test.slice)
            table["in_view"] = in_view_metrics(_labels(test), test.p, view, clusters, split="test", n_boot=n_boot,
                                               alpha=alpha, seed=seed)
        except (KeyError, IndexError):
            table["in_view"] = None
    unit = unit_of(subjects)
    for level in LEVELS:
        block = table.get(level)
        if not block:
            continue
        y, _, groups = level_arrays(test, level, agg_rule, k, subjects)
        if level == "study" and subjects is None:
            groups = None
        few_any = []
        for h, (head, row) in enumerate(block["per_head"].items()):
            if "threshold" not in row:
                row["threshold_reason"] = reasons[level].get(head) or "no operating point chosen"
            few = too_few_units(y[:, h], groups, unit)
            if row.get("auroc") is not None and few:
                row["ci"], row["ci_reason"] = None, few
                row.pop("ci_method", None)
            if head in block.get("mean_pathologies", {}).get("heads", []) and few:
                few_any.append(f"{head}: {few}")
        summary = block.get("mean_pathologies") or {}
        if summary.get("auroc") is not None and few_any:
            summary["ci"], summary["ci_reason"] = None, "; ".join(few_any)
            summary.pop("ci_method", None)
        all_few = [f"{HEADS[h]}: {r}" for h in range(len(HEADS)) if HEADS[h] in (block.get("mean_all") or {}).get("heads", [])
                   for r in [too_few_units(y[:, h], groups, unit)] if r]
        if (block.get("mean_all") or {}).get("auroc") is not None and all_few:
            block["mean_all"]["ci"], block["mean_all"]["ci_reason"] = None, "; ".join(all_few)
            block["mean_all"].pop("ci_method", None)
        block["operating_rule"] = operating_rule
    return table


def point_aurocs(pred: Predictions, agg_rule: str, k: int) -> dict[str, Any]:
    """AUROC per head and their means (ACL/MTEAR/CART; all heads) at slice and study level,
    without intervals: ``{level: {"per_head": {head: {"value", "reason"}}, "mean_pathologies",
    "mean_all"}}`` (means over the heads where the AUROC is defined; None with a reason if none)."""
    if not pred.ok:
        return {level: {"per_head": {h: {"value": None, "reason": pred.reason} for h in HEADS},
                        "mean_pathologies": {"value": None, "reason": pred.reason},
                        "mean_all": {"value": None, "reason": pred.reason}} for level in LEVELS}
    out: dict[str, Any] = {}
    for level in LEVELS:
        y, p, _ = level_arrays(pred, level, agg_rule, k)
        unit = "slices" if level == "slice" else "studies"
        per = {head: auroc_result(y[:, h], p[:, h], split="test", unit=unit).to_dict() for h, head in enumerate(HEADS)}
        block: dict[str, Any] = {"per_head": per}
        for key, names in (("mean_pathologies", PATHOLOGY_HEADS), ("mean_all", HEADS)):
            vals = [per[h]["value"] for h in names if per[h]["value"] is not None]
            if vals:
                block[key] = {"value": float(np.mean(vals)), "reason": None, "heads": [h for h in names if per[h]["value"] is not None]}
            else:
                block[key] = {"value": None, "reason": "; ".join(sorted({per[h]["reason"] for h in names}))}
        out[level] = block
    return out


def seed_summary(per_seed: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and sd (ddof=1) over seeds of every value of :func:`point_aurocs`:
    ``{level: {head | "mean_pathologies" | "mean_all": {"mean", "sd", "n", "values"}}}``."""
    out: dict[str, Any] = {}
    for level in LEVELS:
        block: dict[str, Any] = {}
        for key in (*HEADS, "mean_pathologies", "mean_all"):
            values = []
            reasons = set()
            for one in per_seed:
                cell = one[level]["per_head"][key] if key in HEADS else one[level][key]
                values.append(cell["value"])
                if cell["value"] is None and cell.get("reason"):
                    reasons.add(cell["reason"])
            s = summarise_seeds(values)
            entry: dict[str, Any] = {"mean": s.mean, "sd": s.sd, "n": sum(v is not None for v in values), "values": values}
            if s.mean is None:
                entry["reason"] = "; ".join(sorted(reasons)) or "no seed trained"
            elif s.sd is None:
                entry["sd_reason"] = "one seed: no spread across seeds"
            block[key] = entry
        out[level] = block
    return out


# ---- paired comparisons -------------------------------------------------------------------------


def compare_to_reference(
    ref: Predictions,
    other: Predictions,
    *,
    agg_rule: str,
    k: int,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    subjects: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Paired comparison of the reference (a) against another variant (b) on the same test
    cases, per level and head: with ``subjects`` (study id -> subject) a paired bootstrap that
    resamples whole subjects at both levels (the studies of one knee are not independent);
    without, DeLong's test at study level and a bootstrap of whole studies at slice level.
    ``diff = AUROC(reference) - AUROC(other)``. Plus the difference of the mean AUROC over
    ACL/MTEAR/CART with the same paired cluster bootstrap (:func:`paired_mean_auroc_difference`)."""
    if not ref.ok or not other.ok:
        why = ref.reason if not ref.ok else other.reason
        return {"value": None, "reason": why}
    if ref.n != other.n or not np.array_equal(ref.study_id.astype(str), other.study_id.astype(str)) or not np.array_equal(ref.slice, other.slice):
        return {"value": None, "reason": "the two variants were evaluated on different slices"}
    out: dict[str, Any] = {}
    for level in LEVELS:
        ya, pa, groups = level_arrays(ref, level, agg_rule, k, subjects)
        _, pb, _ = level_arrays(other, level, agg_rule, k, subjects)
        per = {}
        unit = "slices" if level == "slice" else "studies"
        for h, head in enumerate(HEADS):
            res = compare_auroc(ya[:, h], pa[:, h], pb[:, h], groups=groups, n_boot=n_boot, alpha=alpha, seed=seed + h)
            if res.get("value", 0) is None and res.get("reason"):
                res["reason"] = res["reason"].replace(" cases", f" {unit}")
            elif groups is not None:
                few = too_few_units(ya[:, h], groups, unit_of(subjects))
                if few:
                    res = {"value": None, "reason": few}
            per[head] = res
        mean = paired_mean_auroc_difference(ya[:, PATHOLOGY_IDX], pa[:, PATHOLOGY_IDX], pb[:, PATHOLOGY_IDX], groups=groups,
                                            n_boot=n_boot, alpha=alpha, seed=seed + 101, names=PATHOLOGY_HEADS)
        if groups is None:
            method = "DeLong (paired)"
        else:
            method = f"paired bootstrap resampling whole {unit_of(subjects) if subjects is not None else 'studies'}"
        out[level] = {"per_head": per, "mean_pathologies": mean, "method": method}
    return out


def paired_mean_auroc_difference(
    y: np.ndarray,
    s_a: np.ndarray,
    s_b: np.ndarray,
    groups: Any = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    names: Sequence[str] | None = None,
    mask: np.ndarray | None = None,
) -> dict[str, Any]:
    """Paired bootstrap of ``mean_h AUROC(s_a[:, h]) - mean_h AUROC(s_b[:, h])`` over the heads of
    ``y``, ``s_a``, ``s_b`` (all (N, H)); with ``mask`` ((N, H) bool) head ``h`` is scored on the
    rows where ``mask[:, h]`` only (the in-view AUROC: each head where its anatomy is in view).

    Rows (or whole clusters, with ``groups`` (N,)) are drawn with replacement, the same draw for
    both score sets and every head; replicates where some head lacks a class are discarded
    (counted in ``n_valid``). The mean uses the heads whose AUROC is defined on the full data
    and that have at least :data:`MIN_UNITS_PER_CLASS` units of each class; the others are in
    ``excluded_heads`` (name -> reason). Returns ``{"diff", "ci", "p", "se", "auc_a", "auc_b",
    "n_boot", "n_valid", "method", "heads", "excluded_heads"}``; ``p`` is the two-sided
    bootstrap p-value of no difference read from the same replicates as the interval
    (:func:`~i2m2_med.metrics.paired.percentile_p_value`); or ``{"value": None, "reason"}`` when
    no head qualifies.
    """
    y = np.asarray(y, dtype=bool)
    s_a = np.asarray(s_a, dtype=np.float64)
    s_b = np.asarray(s_b, dtype=np.float64)
    if y.ndim != 2 or s_a.shape != y.shape or s_b.shape != y.shape:
        raise UsageError("paired_mean_auroc_difference", f"y, s_a and s_b must all be (N, H); got {y.shape}, {s_a.shape}, {s_b.shape}")
    n, n_heads = y.shape
    keep = np.ones_like(y, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if keep.shape != y.shape:
        raise UsageError("paired_mean_auroc_difference", f"mask must be (N, H) like y, got {keep.shape}")
    names = list(names) if names is not None else (list(HEADS) if n_heads == len(HEADS) else [str(h) for h in range(n_heads)])
    heads = [h for h in range(n_heads) if 0 < int(y[keep[:, h], h].sum()) < int(keep[:, h].sum())]
    if not heads:
        if n == 0:
            return {"value": None, "reason": "empty test split: no cases to compare"}
        return {"value": None, "reason": "AUROC undefined for every head (a class is absent in the test split)"}
    g_all = None if groups is None else np.asarray(groups)
    excluded = {names[h]: r for h in heads
                for r in [too_few_units(y[keep[:, h], h], None if g_all is None else g_all[keep[:, h]])] if r}
    heads = [h for h in heads if names[h] not in excluded]
    if not heads:
        return {"value": None, "reason": "; ".join(f"{k}: {v}" for k, v in excluded.items())}

    def mean_auc(rows: np.ndarray, scores: np.ndarray) -> float:
        return float(np.mean([auroc(y[rows, h][keep[rows, h]], scores[rows, h][keep[rows, h]]) for h in heads]))

    every = np.arange(n)
    auc_a = mean_auc(every, s_a)
    auc_b = mean_auc(every, s_b)
    diff = auc_a - auc_b
    rng = np.random.default_rng(int(seed))
    if groups is None:
        units = [np.array([i]) for i in range(n)]
    else:
        g = np.asarray(groups).astype(str)
        _, codes = np.unique(g, return_inverse=True)
        units = [np.flatnonzero(codes == c) for c in range(int(codes.max()) + 1)]
    n_units = len(units)
    reps: list[float] = []
    for _ in range(int(n_boot)):
        pick = rng.integers(0, n_units, size=n_units)
        idx = np.concatenate([units[i] for i in pick])
        yb, kb = y[idx], keep[idx]
        ok = all(0 < int(yb[kb[:, h], h].sum()) < int(kb[:, h].sum()) for h in heads)
        if not ok:
            continue
        reps.append(mean_auc(idx, s_a) - mean_auc(idx, s_b))
    if not reps:
        return {"value": None, "reason": "no bootstrap replicate contained both classes for every head"}
    d = np.asarray(reps)
    low, high = np.quantile(d, [alpha / 2.0, 1.0 - alpha / 2.0])
    p = percentile_p_value(d)
    return {
        "diff": float(diff), "ci": [float(low), float(high)], "p": p, "se": float(d.std(ddof=1)) if d.size > 1 else 0.0,
        "auc_a": auc_a, "auc_b": auc_b, "n_boot": int(n_boot), "n_valid": int(d.size), "alpha": alpha,
        "method": "paired bootstrap, " + ("rows" if groups is None else "whole clusters (the groups given)"),
        "heads": [names[h] for h in heads],
        "excluded_heads": excluded,
    }


# ---- curves -----------------------------------------------------------------------------------


def roc_curves(pred: Predictions, agg_rule: str, k: int, max_points: int = 400) -> dict[str, Any]:
    """ROC curve points per level and head: ``{level: {head: {"fpr", "tpr", "auroc"} | {"value": None, "reason"}}}``.
    Long slice-level curves are thinned to about ``max_points`` points (the area is reported
    from the full curve)."""
    out: dict[str, Any] = {}
    for level in LEVELS:
        block: dict[str, Any] = {}
        if not pred.ok:
            out[level] = {h: {"value": None, "reason": pred.reason} for h in HEADS}
            continue
        y, p, _ = level_arrays(pred, level, agg_rule, k)
        for h, head in enumerate(HEADS):
            try:
                pts = roc_curve_points(y[:, h], p[:, h])
            except UndefinedMetricError as err:
                block[head] = {"value": None, "reason": err.reason}
                continue
            fpr, tpr = pts["fpr"], pts["tpr"]
            if fpr.size > max_points:
                keep = np.unique(np.r_[0, np.linspace(0, fpr.size - 1, max_points).round().astype(int), fpr.size - 1])
                fpr, tpr = fpr[keep], tpr[keep]
            block[head] = {"fpr": [round(float(v), 5) for v in fpr], "tpr": [round(float(v), 5) for v in tpr],
                           "auroc": auroc(y[:, h], p[:, h])}
        out[level] = block
    return out


# ---- evidence ---------------------------------------------------------------------------------


def evidence_summary(per_seed: Sequence[Predictions], threshold: float = 0.5) -> dict[str, Any]:
    """How the experts of the reference model decide, on the clean test slices, averaged over seeds.

    ``driving``: head -> expert -> mean (over seeds) fraction of slices whose combined decision
    (``p >= threshold``) that expert drives (largest contribution in the decision's direction,
    :func:`i2m2_med.evidence.driving_expert`); ``driving_positive``: the same over the slices
    the product calls positive; ``agreement``: head -> E x E fraction of slices where two
    experts' own decisions agree (:func:`i2m2_med.evidence.agreement_matrix`), averaged over
    seeds; ``mean_abs_contribution``: head -> expert -> mean |log-odds contribution| (nats).
    """
    usable = [p for p in per_seed if p.ok and p.n > 0]
    if not usable:
        reasons = sorted({p.reason for p in per_seed if p.reason}) or ["empty test split: no slices to explain"]
        return {"value": None, "reason": "; ".join(reasons)}
    drives, drives_pos, agreements, magnitudes = [], [], [], []
    experts: tuple[str, ...] = ()
    n_pos_decisions = {h: 0 for h in HEADS}
    for pred in usable:
        out = pred.output()
        d = driving_expert(out, threshold=threshold)
        experts = d.experts
        drives.append(driving_frequency(d))
        pos: dict[str, dict[str, float | None]] = {}
        for h, head in enumerate(HEADS):
            rows = d.decision[:, h]
            n_pos_decisions[head] += int(rows.sum())
            if rows.any():
                col = d.index[rows, h]
                pos[head] = {name: float(np.mean(col == e)) for e, name in enumerate(d.experts)}
                pos[head]["none"] = float(np.mean(col == -1))
            else:
                pos[head] = {name: None for name in (*d.experts, "none")}
        drives_pos.append(pos)
        agreements.append(agreement_matrix(out).to_dict())
        contrib = contributions(out)
        magnitudes.append({head: {name: float(np.mean(np.abs(c[pred.mask[name], h]))) if pred.mask[name].any() else None
                                  for name, c in contrib.items()} for h, head in enumerate(HEADS)})

    def mean_of(dicts: Sequence[Mapping[str, Mapping[str, float | None]]]) -> dict[str, dict[str, float | None]]:
        res: dict[str, dict[str, float | None]] = {}
        for head in HEADS:
            res[head] = {}
            for name in dicts[0][head]:
                vals = [dct[head][name] for dct in dicts if dct[head].get(name) is not None]
                res[head][name] = float(np.mean(vals)) if vals else None
        return res

    agree_names = agreements[0]["experts"]
    agree: dict[str, Any] = {}
    for head in HEADS:
        mats = [np.array([[np.nan if v is None else v for v in row] for row in a["per_head"][head]], dtype=float) for a in agreements]
        with np.errstate(invalid="ignore"):
            stack = np.stack(mats)
            valid = np.isfinite(stack).sum(axis=0)
            total = np.where(np.isfinite(stack), stack, 0.0).sum(axis=0)
        agree[head] = [[(float(total[i, j] / valid[i, j]) if valid[i, j] else None) for j in range(len(agree_names))]
                       for i in range(len(agree_names))]
    no_positive = {h: "the product calls no test slice positive" for h in HEADS if n_pos_decisions[h] == 0}
    return {
        "experts": list(experts),
        "agreement_experts": list(agree_names),
        "seeds": len(usable),
        "slices": int(usable[0].n),
        "threshold": threshold,
        "driving": mean_of(drives),
        "driving_positive": mean_of(drives_pos),
        "driving_positive_reason": no_positive,
        "positive_decisions": n_pos_decisions,
        "agreement": agree,
        "mean_abs_contribution": mean_of(magnitudes),
    }


# ---- robustness -----------------------------------------------------------------------------


def robustness_summary(per_seed: Mapping[str, Sequence[Mapping[str, Any]]], clean: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per condition: the mean over seeds of the slice- and study-level mean AUROC over
    ACL/MTEAR/CART and per head, and its change from the clean data (same seeds).

    ``per_seed``: condition -> list of :func:`point_aurocs` results (one per seed, or
    ``{"reason": ...}`` for a seed that cannot run the condition); ``clean``: the clean results
    of the same seeds, in the same order."""
    out: dict[str, Any] = {}
    for name, results in per_seed.items():
        entry: dict[str, Any] = {}
        reasons = sorted({r["reason"] for r in results if "reason" in r and r.get("reason")})
        usable = [(r, c) for r, c in zip(results, clean) if "reason" not in r]
        if not usable:
            out[name] = {"value": None, "reason": "; ".join(reasons) or "not evaluated"}
            continue
        for level in LEVELS:
            lv: dict[str, Any] = {}
            for key in ("mean_pathologies", *HEADS):
                vals = [(r[level]["per_head"][key] if key in HEADS else r[level][key])["value"] for r, _ in usable]
                base = [(c[level]["per_head"][key] if key in HEADS else c[level][key])["value"] for _, c in usable]
                got = [v for v in vals if v is not None]
                deltas = [v - b for v, b in zip(vals, base) if v is not None and b is not None]
                cell: dict[str, Any] = {
                    "mean": float(np.mean(got)) if got else None,
                    "delta": float(np.mean(deltas)) if deltas else None,
                    "n": len(got),
                }
                if not got:
                    first = (usable[0][0][level]["per_head"][key] if key in HEADS else usable[0][0][level][key])
                    cell["reason"] = first.get("reason") or "undefined"
                lv[key] = cell
            entry[level] = lv
        entry["seeds"] = len(usable)
        if reasons:
            entry["partial_reason"] = "; ".join(reasons)
        out[name] = entry
    return out
