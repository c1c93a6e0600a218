"""fastMRI-style Cartesian undersampling: column masks and their application to k-space.
"""

from __future__ import annotations

import numpy as np
import torch

from i2m2_med.errors import TransformError
from i2m2_med.transforms.fft import ArrayLike

MASK_TYPES: tuple[str, ...] = ("random", "equispaced")


def sample_mask(
    width: int,
    mask_type: str = "random",
    acceleration: int = 4,
    center_fraction: float = 0.08,
    seed: int | None = None,
    readout: int = 640,
) -> np.ndarray:
    """A fastMRI column mask: (width,) bool, True for the sampled k-space columns.

    ``mask_type``: "random" (``fastmri.data.subsample.RandomMaskFunc``: the central
    ``round(width * center_fraction)`` columns plus others drawn independently so that the
    expected total is ``width / acceleration``) or "equispaced"
    (``EquispacedMaskFractionFunc``: the centre plus every ``acceleration``-th column, spacing
    adjusted so the total fraction is ``1 / acceleration``, random offset). ``seed`` makes the
    mask deterministic (same seed, same mask).
    """
    from fastmri.data.subsample import EquispacedMaskFractionFunc, RandomMaskFunc

    if mask_type not in MASK_TYPES:
        raise TransformError(None, f"mask type {mask_type!r} unknown; use one of {', '.join(MASK_TYPES)}")
    if int(acceleration) < 1:
        raise TransformError(None, f"acceleration must be >= 1, got {acceleration}")
    if not 0.0 < float(center_fraction) <= 1.0:
        raise TransformError(None, f"center_fraction must be in (0, 1], got {center_fraction}")
    cls = RandomMaskFunc if mask_type == "random" else EquispacedMaskFractionFunc
    func = cls(center_fractions=[float(center_fraction)], accelerations=[int(acceleration)])
    mask, _ = func((readout, int(width), 2), seed=None if seed is None else int(seed) % (2**32))
    return mask.numpy().reshape(-1).astype(bool)


def apply_column_mask(kspace: ArrayLike, mask: np.ndarray) -> ArrayLike:
    """k-space (..., R, W) with the columns where ``mask`` (W,) is False set to 0 (new array)."""
    mask = np.asarray(mask, dtype=bool)
    if kspace.shape[-1] != mask.shape[0]:
        raise TransformError(None, f"mask of {mask.shape[0]} columns for k-space of width {kspace.shape[-1]}")
    if isinstance(kspace, torch.Tensor):
        return kspace * torch.as_tensor(mask, device=kspace.device).to(kspace.dtype)
    return kspace * mask.astype(np.float32)
