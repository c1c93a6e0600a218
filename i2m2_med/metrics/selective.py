"""Selective prediction: how much a study's experts disagree, and what setting the most
disagreeing studies aside for human review does to the study-level AUROC.

The one home of the rule; ``i2m2-med diagnose`` (the ``disagreement`` and ``review`` columns)
and the ablation report (the coverage curve) both call it. Pure numpy.

**Experts' study-level probabilities.** Each expert of the product (every term but the class
prior, which sees no input) has its own p(y=1) per slice, ``exp(log p_e(1))``. Per study and head
these slice probabilities are aggregated with the model's slice -> study rule
(:func:`i2m2_med.metrics.aggregation.aggregate_study`, the rule ``diagnose`` applies to the
product), so each expert answers the same question the product answers. The study-level
calibration map is not applied: it is fitted to the product, not to an expert.

**Disagreement of a head** = the standard deviation (population, ``ddof=0``) of the experts'
study-level **log-odds** ``logit(p_e)`` (probabilities clipped to ``[1e-6, 1 - 1e-6]``).
Why the log-odds and not the spread ``max - min`` of the probabilities: the product adds the
experts' log-odds, so their spread on that scale is how far apart their shares of the evidence
are; on the probability scale two confident experts at 0.999 and 0.9 (log-odds 6.9 against 2.2)
look as close as 0.5 and 0.6, and the spread saturates at 1. The standard deviation rather than
the range uses every expert, not only the two extremes, and is defined from two experts on.

**A study's disagreement** = the mean over the pathology heads ACL, MTEAR and CART
(:data:`~i2m2_med.heads.PATHOLOGY_HEADS`; "other abnormality" is left out as in every mean AUROC
of the project) of the per-head disagreement.

**One expert** (a single-expert variant, or a study where every other expert was dropped for a
missing modality): the disagreement is **undefined** -- NaN in arrays, None in outputs -- not 0,
since 0 would claim that experts agreed when there is nobody to disagree with. Such a study is
never flagged for review (``diagnose``) and a variant with one expert has no coverage curve.

**Coverage curve** (:func:`coverage_curve`): studies sorted by disagreement, least first (ties
in the order given); at coverage ``c`` the ``round(c * M)`` least disagreeing of the M studies are
kept (at least one) and the rest are set aside for human review; the study-level AUROC of each
pathology head on the kept studies and their mean over the heads where it is defined (a head
without positives or negatives among the kept studies is left out, with the reason).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from i2m2_med.errors import UsageError
from i2m2_med.heads import HEADS, PATHOLOGY_HEADS
from i2m2_med.metrics.aggregation import DEFAULT_AGGREGATION, DEFAULT_TOP_K, aggregate_study
from i2m2_med.metrics.ranking import auroc_result

NON_EXPERT_TERMS: frozenset[str] = frozenset({"prior"})
"""Terms of the product that are not experts (they see no input) and take no part."""

DEFAULT_COVERAGES: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
"""The coverage grid of the report: every study, then 10 % fewer at each step down to half."""

MEASURE = "standard deviation of the experts' study-level log-odds, mean over ACL/MTEAR/CART"
"""One line naming the measure, written beside every value."""

_EPS = 1e-6


def expert_names(terms: Sequence[str]) -> list[str]:
    """The experts among the terms of a product (every term but the prior)."""
    return [t for t in terms if t not in NON_EXPERT_TERMS]


def study_expert_p(slice_p: np.ndarray, rule: str = DEFAULT_AGGREGATION, k: int = DEFAULT_TOP_K) -> np.ndarray:
    """One expert's study-level probabilities ``(H,)`` from its slice probabilities ``(S, H)``, by
    the model's aggregation rule."""
    return np.asarray(aggregate_study(slice_p, rule, k) if rule == "mean_top_k" else aggregate_study(slice_p, rule), dtype=np.float64)


def head_disagreement(expert_p: Any) -> np.ndarray:
    """Per-head disagreement from the experts' study-level probabilities ``(E, ..., H)`` ->
    ``(..., H)``: the population sd over the E experts of their log-odds. NaN where fewer than two
    experts have a finite probability (an expert that did not run is NaN)."""
    arr = np.asarray(expert_p, dtype=np.float64)
    if arr.ndim < 1:
        raise UsageError("expert_p", f"expected (E, ..., H) experts' probabilities, got shape {arr.shape}")
    finite = np.isfinite(arr)
    if (arr[finite] < 0).any() or (arr[finite] > 1).any():
        raise UsageError("expert_p", "experts' probabilities must lie in [0, 1]")
    p = np.clip(np.where(finite, arr, 0.5), _EPS, 1.0 - _EPS)
    lo = np.log(p) - np.log1p(-p)
    n = finite.sum(axis=0)
    safe = np.maximum(n, 1)
    mean = np.where(finite, lo, 0.0).sum(axis=0) / safe
    var = np.where(finite, (lo - mean) ** 2, 0.0).sum(axis=0) / safe
    return np.where(n >= 2, np.sqrt(var), np.nan)


def overall(per_head: Any, heads: Sequence[str] = HEADS, over: Sequence[str] = PATHOLOGY_HEADS) -> np.ndarray:
    """A study's disagreement: the mean of ``per_head`` ``(..., H)`` (heads in ``heads`` order)
    over the pathology heads ``over``; NaN where it is undefined."""
    arr = np.asarray(per_head, dtype=np.float64)
    idx = [list(heads).index(h) for h in over]
    return arr[..., idx].mean(axis=-1)


def study_disagreement(terms: Mapping[str, np.ndarray], rule: str = DEFAULT_AGGREGATION,
                       k: int = DEFAULT_TOP_K) -> dict[str, Any]:
    """One study's disagreement from its product's terms: term -> slice log-probabilities
    ``(S, H, 2)`` (heads in :data:`HEADS` order; what ``diagnose`` writes per slice).

    Returns ``{"value": float | None, "per_head": {head: float | None}, "experts": [...],
    "measure": ..., "reason": str | None}``; ``value`` is None with the reason when fewer than
    two experts ran."""
    experts = expert_names(list(terms))
    out: dict[str, Any] = {"value": None, "per_head": {h: None for h in HEADS}, "experts": experts, "measure": MEASURE, "reason": None}
    if len(experts) < 2:
        out["reason"] = f"undefined: {len(experts)} expert ran ({', '.join(experts) or 'none'}); disagreement needs two"
        return out
    p = np.stack([study_expert_p(np.exp(np.asarray(terms[e], dtype=np.float64)[..., 1]), rule, k) for e in experts])
    per = head_disagreement(p)
    out["per_head"] = {h: float(per[j]) for j, h in enumerate(HEADS)}
    out["value"] = float(overall(per))
    return out


def slices_to_studies(study_ids: Any, expert_p: Mapping[str, np.ndarray], rule: str = DEFAULT_AGGREGATION,
                      k: int = DEFAULT_TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """Per-study disagreement of many studies from slice rows (the ablation's predictions).

    ``study_ids`` (N,); ``expert_p`` expert -> (N, H) its slice p(y=1), NaN where it did not run.
    Returns ``(study ids (M,) in order of first appearance, per-head disagreement (M, H))``; an
    expert that did not run on every slice of a study is left out for that study."""
    ids = np.asarray(study_ids).astype(str)
    _, first, codes = np.unique(ids, return_index=True, return_inverse=True)
    codes = codes.ravel()
    order = np.argsort(first, kind="stable")
    n_heads = next(iter(expert_p.values())).shape[1] if expert_p else len(HEADS)
    out = np.full((order.size, n_heads), np.nan)
    for new, code in enumerate(order):
        rows = np.flatnonzero(codes == code)
        ps = []
        for arr in expert_p.values():
            sl = np.asarray(arr, dtype=np.float64)[rows]
            if np.isfinite(sl).all():
                ps.append(study_expert_p(sl, rule, k))
        if len(ps) >= 2:
            out[new] = head_disagreement(np.stack(ps))
    return ids[first[order]], out


def _n_kept(coverage: float, m: int) -> int:
    return max(1, min(m, int(np.floor(coverage * m + 0.5))))


def coverage_curve(y: Any, p: Any, disagreement: Any, coverages: Sequence[float] = DEFAULT_COVERAGES,
                   heads: Sequence[str] = HEADS, over: Sequence[str] = PATHOLOGY_HEADS,
                   split: str = "test") -> dict[str, Any]:
    """Study-level AUROC against coverage when the most disagreeing studies are set aside.

    Args:
        y: (M, H) study labels (bool or 0/1); p: (M, H) the product's study scores;
        disagreement: (M,) each study's disagreement (finite: a variant with one expert has none);
        coverages: fractions of the studies kept, each in (0, 1];
        heads: the names of the H columns; over: the heads whose AUROCs are averaged;
        split: named in the reasons.

    Returns ``{"studies": M, "measure": ..., "points": [{"coverage", "kept", "set_aside",
    "max_disagreement", "mean_auroc", "heads", "per_head": {head: {"value", "reason"}},
    "reason"}]}``, one point per coverage in the order given; ``mean_auroc`` is None with the
    reason when no head of ``over`` has both classes among the kept studies.
    """
    y_arr = np.asarray(y)
    p_arr = np.asarray(p, dtype=np.float64)
    d = np.asarray(disagreement, dtype=np.float64)
    if p_arr.ndim != 2 or y_arr.shape != p_arr.shape or d.shape != (p_arr.shape[0],) or p_arr.shape[1] != len(heads):
        raise UsageError("coverage_curve", f"expected y and p (M, {len(heads)}) and disagreement (M,); got {y_arr.shape}, {p_arr.shape}, {d.shape}")
    if not np.isfinite(d).all():
        raise UsageError("disagreement", "undefined for some studies (fewer than two experts): no coverage curve")
    for c in coverages:
        if not 0.0 < float(c) <= 1.0:
            raise UsageError("coverages", f"each coverage must lie in (0, 1], got {c!r}")
    m = d.shape[0]
    order = np.argsort(d, kind="stable")
    points = []
    for c in coverages:
        n = _n_kept(float(c), m) if m else 0
        keep = order[:n]
        per: dict[str, dict[str, Any]] = {}
        for h in over:
            j = list(heads).index(h)
            per[h] = auroc_result(y_arr[keep, j], p_arr[keep, j], split=split, unit="studies").to_dict()
        defined = [h for h in over if per[h]["value"] is not None]
        point: dict[str, Any] = {
            "coverage": float(c), "kept": int(n), "set_aside": int(m - n),
            "max_disagreement": float(d[keep].max()) if n else None,
            "per_head": per, "heads": defined,
            "mean_auroc": float(np.mean([per[h]["value"] for h in defined])) if defined else None,
            "reason": None if defined else "; ".join(sorted({str(per[h]["reason"]) for h in over})),
        }
        points.append(point)
    return {"studies": int(m), "measure": MEASURE, "split": split, "points": points}
