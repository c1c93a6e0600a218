"""Slice -> study aggregation: the only home of the rule names.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

from i2m2_med.errors import ConfigError, UsageError
from i2m2_med.heads import HEADS
from i2m2_med.metrics.ranking import _binary

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


CONFIG_RULES: dict[str, tuple[str, int]] = {
    "top3_mean": ("mean_top_k", DEFAULT_TOP_K),
    "max": ("max", DEFAULT_TOP_K),
    "mean": ("mean", DEFAULT_TOP_K),
}
"""The names a config's ``training.aggregation`` takes -> ``(rule, k)`` of :func:`aggregate_study`:
the largest slice score, the mean over slices, or the mean of the three largest (all slices when a
study has fewer than three)."""


def aggregation_rule(name: str) -> tuple[str, int]:
    """``(rule, k)`` of :func:`aggregate_study` for a config's rule name (``top3_mean`` ->
    ``("mean_top_k", 3)``); raises ConfigError for a name no config may hold."""
    if name not in CONFIG_RULES:
        raise ConfigError("training.aggregation", f"unknown rule {name!r}; expected one of {', '.join(CONFIG_RULES)}")
    return CONFIG_RULES[name]


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
