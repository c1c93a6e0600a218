"""Class balance of training: loss weights and sampler weights from the slice labels.
"""

from __future__ import annotations

import numpy as np
import torch

from i2m2_med.heads import HEADS


def class_weights(labels: np.ndarray) -> torch.Tensor:
    """Per-head class weights ``[4, 2]`` float32 from (N, 4) training labels: inverse class
    frequency, ``w[h, c] = N / (2 * n[h, c])``, so each class contributes equally to a head's
    weighted NLL; a class with no training sample gets weight 1 (it never occurs in the loss)."""
    y = np.asarray(labels) > 0.5
    n = max(int(y.shape[0]), 1)
    pos = y.sum(axis=0).astype(np.float64)
    neg = y.shape[0] - pos
    counts = np.stack([neg, pos], axis=1)
    w = np.where(counts > 0, n / (2.0 * np.maximum(counts, 1.0)), 1.0)
    return torch.tensor(w, dtype=torch.float32)


def sampler_weights(labels: np.ndarray) -> torch.Tensor:
    """Per-sample weights ``[N]`` for a ``WeightedRandomSampler``: the mean over heads of the
    sample's class weight (:func:`class_weights`), so slices with rare findings are drawn more
    often; the weights sum to N."""
    y = (np.asarray(labels) > 0.5).astype(np.int64)
    if y.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64)
    w = class_weights(y).numpy().astype(np.float64)
    per = w[np.arange(y.shape[1])[None, :], y].mean(axis=1)
    per = per * (y.shape[0] / per.sum())
    return torch.tensor(per, dtype=torch.float64)


def positive_fraction(labels: np.ndarray) -> np.ndarray:
    """(4,) fraction of positive slices per head (NaN-free; 0 for an empty set)."""
    y = np.asarray(labels) > 0.5
    return y.mean(axis=0) if y.shape[0] else np.zeros(len(HEADS))
