"""Magnitude intensity normalisation.
"""

from __future__ import annotations

import numpy as np

from i2m2_med.errors import TransformError
from i2m2_med.transforms.fft import ArrayLike, _like, _to_numpy


def _percentile(x: np.ndarray, q: float) -> float:
    flat = x.reshape(-1)
    k = int(round(q / 100.0 * (flat.size - 1)))
    return float(np.partition(flat, k)[k])


def normalize_magnitude(magnitude: ArrayLike, mode: str = "percentile", percentile: float = 99.0, eps: float = 1e-12) -> ArrayLike:
    """Intensity normalisation of one magnitude slice (H, W) or [1, H, W] float32.

    ``mode``: "percentile" (default) divides by the slice's ``percentile``-th percentile (the
    nearest-rank value) -- robust to a few bright pixels, so bright tissue lands near 1 whatever
    the scanner scale; "max" divides by the maximum; "zscore" subtracts the mean and divides by
    the standard deviation; "none" leaves it. An all-zero slice stays zero (the scale is
    floored at ``eps``).
    """
    m = _to_numpy(magnitude).astype(np.float32, copy=False)
    if mode == "none":
        return magnitude
    if mode == "percentile":
        out = m / np.float32(max(_percentile(m, percentile), eps))
    elif mode == "max":
        out = m / np.float32(max(float(m.max()), eps))
    elif mode == "zscore":
        out = (m - np.float32(m.mean())) / np.float32(max(float(m.std()), eps))
    else:
        raise TransformError(None, f"normalisation mode {mode!r} unknown; use percentile, max, zscore or none")
    return _like(out.astype(np.float32, copy=False), magnitude)
