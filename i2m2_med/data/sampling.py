"""What training draws: class balance (loss weights, sampler weights from the slice labels) and
the hard-case rule that spends the draws on the slices where findings meet their mimics.
"""

from __future__ import annotations

import numpy as np
import torch

from i2m2_med.errors import UsageError
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


HARD_SHARE = 0.5
"""Share of the draws that go to the hard slices under :func:`hard_case_weights`."""


def hard_case_weights(hard: np.ndarray, share: float = HARD_SHARE) -> torch.Tensor:
    """Per-sample weights ``[N]`` (summing to N) for a ``WeightedRandomSampler`` that gives the
    ``hard`` slices (N,) bool ``share`` of the draws, spread evenly over them, and the other slices
    the rest, spread evenly over those.

    The rule: on a synthetic cohort a slice is hard when it lies inside an episode of any head
    (``episodes.csv``: a finding or a mimic of it, i.e. :attr:`Cohort.in_view` of any head). The
    quiet slices outside every episode are easy negatives that the slice position alone explains
    (most of a volume), so drawn uniformly they teach the model anatomy; drawn at half the mass,
    the findings and their look-alikes are seen about as often as everything else together.
    Without hard slices (a real cohort has no episodes) or without easy ones the draw is uniform.
    """
    mask = np.asarray(hard, dtype=bool).reshape(-1)
    n = mask.size
    if not 0.0 < float(share) < 1.0:
        raise UsageError("share", f"must lie strictly between 0 and 1, got {share}")
    n_hard = int(mask.sum())
    if n == 0:
        return torch.zeros(0, dtype=torch.float64)
    if n_hard in (0, n):
        return torch.ones(n, dtype=torch.float64)
    w = np.where(mask, float(share) / n_hard, (1.0 - float(share)) / (n - n_hard)) * n
    return torch.tensor(w, dtype=torch.float64)


def positive_fraction(labels: np.ndarray) -> np.ndarray:
    """(4,) fraction of positive slices per head (NaN-free; 0 for an empty set)."""
    y = np.asarray(labels) > 0.5
    return y.mean(axis=0) if y.shape[0] else np.zeros(len(HEADS))
