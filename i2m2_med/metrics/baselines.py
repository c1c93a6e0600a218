"""The position-only baseline: what the slice's place in the volume alone predicts.

A knee finding lies where its anatomy is: an ACL tear on the central slices, a meniscal tear
nearer the edges. A model can reach a high slice-level AUROC by learning only *which slice this
is*, without reading any lesion. The baseline makes that visible: per head, the positive rate of
the training slices in each of ``n_bins`` bins of relative slice position ``(k + 0.5) / S``
(slice ``k`` of a study of ``S`` slices), used as the score of every slice in that bin.

It is fitted on the training split only and scored on the split being evaluated, exactly like a
model. Beside a model's slice AUROC it tells how much of the number is anatomy; on the in-view
slices (findings against their mimics, :func:`i2m2_med.metrics.tables.in_view_metrics`) it is
near chance by construction, and a model that reads the lesion must beat it there.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from i2m2_med.errors import UsageError
from i2m2_med.heads import HEADS

POSITION_BINS = 10
"""Bins of relative slice position (the same number the synthetic manifest's
``slice_position_auroc`` uses)."""


def relative_position(slices: Any, n_slices: Any) -> np.ndarray:
    """``(k + 0.5) / S`` (N,) float64 in (0, 1) for slice numbers ``k`` (N,) of studies of ``S``
    (N,) slices."""
    k = np.asarray(slices, dtype=np.float64).reshape(-1)
    s = np.asarray(n_slices, dtype=np.float64).reshape(-1)
    if k.shape != s.shape:
        raise UsageError("slices", f"slices {k.shape} and n_slices {s.shape} must have the same shape")
    if k.size and ((s < 1).any() or (k < 0).any() or (k >= s).any()):
        raise UsageError("slices", "every slice number must lie in 0..n_slices-1")
    return (k + 0.5) / np.where(s > 0, s, 1.0)


def _bins(position: np.ndarray, n_bins: int) -> np.ndarray:
    return np.clip((np.asarray(position, dtype=np.float64) * n_bins).astype(np.int64), 0, n_bins - 1)


def fit_position_prior(position: Any, labels: Any, n_bins: int = POSITION_BINS) -> np.ndarray:
    """Per bin and head, the positive rate of the training slices: (n_bins, H) float64.

    ``position`` (N,) relative positions (:func:`relative_position`), ``labels`` (N, H) binary.
    A bin without training slices takes the head's overall rate."""
    if int(n_bins) < 1:
        raise UsageError("n_bins", f"must be >= 1, got {n_bins}")
    pos = np.asarray(position, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.shape[0] != pos.size or pos.size == 0:
        raise UsageError("labels", f"need one label row per position (got {y.shape[0]} rows for {pos.size} positions, >= 1)")
    b = _bins(pos, n_bins)
    counts = np.bincount(b, minlength=n_bins).astype(np.float64)
    overall = y.mean(axis=0)
    rate = np.empty((n_bins, y.shape[1]), dtype=np.float64)
    for h in range(y.shape[1]):
        sums = np.bincount(b, weights=y[:, h], minlength=n_bins)
        rate[:, h] = np.where(counts > 0, sums / np.where(counts > 0, counts, 1.0), overall[h])
    return rate


def position_scores(prior: Any, position: Any) -> np.ndarray:
    """The baseline's score (N, H) of slices at ``position`` (N,) from a fitted ``prior``
    (n_bins, H)."""
    table = np.asarray(prior, dtype=np.float64)
    if table.ndim != 2 or table.shape[0] < 1:
        raise UsageError("prior", f"must be (n_bins, H), got {table.shape}")
    return table[_bins(np.asarray(position, dtype=np.float64).reshape(-1), table.shape[0])]


def position_baseline(
    train_position: Any,
    train_labels: Any,
    position: Any,
    heads: Sequence[str] = HEADS,
    n_bins: int = POSITION_BINS,
) -> np.ndarray:
    """Fit on the training slices and score the evaluated ones: (N, H) scores in [0, 1]."""
    prior = fit_position_prior(train_position, train_labels, n_bins)
    if prior.shape[1] != len(heads):
        raise UsageError("train_labels", f"have {prior.shape[1]} columns for {len(heads)} heads")
    return position_scores(prior, position)
