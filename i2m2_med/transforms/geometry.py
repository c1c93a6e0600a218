"""Image-domain geometry of the modality planes: centre crop / zero pad and resizing.
"""

from __future__ import annotations

import numpy as np
import torch

from i2m2_med.errors import TransformError
from i2m2_med.transforms.fft import ArrayLike, _crop_start, _like, _to_numpy


def _as_plane(x: ArrayLike, name: str, where: str | None) -> np.ndarray:
    """(H, W) or (1, H, W) real image -> (H, W) float32 numpy; TransformError otherwise."""
    a = _to_numpy(x)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise TransformError(where, f"{name} of shape {tuple(a.shape)}; expected (H, W) or (1, H, W)")
    if a.dtype.kind == "c":
        raise TransformError(where, f"{name} is complex; expected a real image")
    if a.dtype.kind not in "fiub":
        raise TransformError(where, f"{name} dtype {a.dtype} is not numeric")
    a = a.astype(np.float32, copy=False)
    if a.size == 0:
        raise TransformError(where, f"{name} is empty")
    if not np.isfinite(a.sum(dtype=np.float64)):
        raise TransformError(where, f"{name} contains NaN/Inf values")
    return a


def centre_crop_or_pad(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) -> ``size`` by centre crop / zero pad, with the k-space path's convention: a crop
    starts at ``(n - m) // 2`` (fastMRI's centre crop), a pad puts ``(m - n) // 2`` zeros before
    (MONAI's symmetric pad)."""
    out = np.zeros(size, dtype=image.dtype)
    src = []
    dst = []
    for n, m in zip(image.shape, size):
        off = _crop_start(n, m)
        j0, j1 = max(0, -off), min(m, n - off)
        dst.append(slice(j0, j1))
        src.append(slice(j0 + off, j1 + off))
    out[tuple(dst)] = image[tuple(src)]
    return out


def _resize_planes(planes: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """(P, H, W) float32 -> (P, h, w) with torch interpolate ("area" or antialiased "bilinear")."""
    t = torch.from_numpy(np.ascontiguousarray(planes))[None]
    if mode == "area":
        r = torch.nn.functional.interpolate(t, size=size, mode="area")
    elif mode == "bilinear":
        r = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
    else:
        raise TransformError(None, f"resize mode {mode!r} unknown; use area or bilinear")
    return r[0].numpy()


def resize_modalities(
    magnitude: ArrayLike | None, phase: ArrayLike | None, size: tuple[int, int], mode: str = "area"
) -> tuple[ArrayLike | None, ArrayLike | None]:
    """Resize a magnitude and/or phase slice (H, W) or [1, H, W] to ``size`` (h, w).

    Magnitude is resampled as an intensity. Phase is resampled through the complex image
    ``m * exp(i * phase)`` (real and imaginary parts resampled, then ``angle``), so that wrapped
    values near +-pi average correctly, weighted by the magnitude when there is one (unit
    magnitude otherwise). Output has the input's layout and library; phase stays in radians.
    """
    mag = None if magnitude is None else _as_plane(magnitude, "magnitude", None)
    ph = None if phase is None else _as_plane(phase, "phase", None)
    out_m = out_p = None
    if mag is not None:
        out_m = _resize_planes(mag[None], size, mode)[0]
    if ph is not None:
        w = mag if mag is not None else np.ones_like(ph)
        planes = np.stack([w * np.cos(ph), w * np.sin(ph)])
        re, im = _resize_planes(planes, size, mode)
        out_p = np.arctan2(im, re).astype(np.float32)

    def back(new: np.ndarray | None, ref: ArrayLike | None) -> ArrayLike | None:
        if new is None:
            return None
        if getattr(ref, "ndim", 2) == 3:
            new = new[None]
        return _like(new, ref)

    return back(out_m, magnitude), back(out_p, phase)


def fit_image(image: np.ndarray, size: tuple[int, int], mode: str = "area") -> np.ndarray:
    """Resize (H, W) so it fits in ``size`` keeping its aspect ratio, then centre pad."""
    scale = min(size[0] / image.shape[0], size[1] / image.shape[1])
    new = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
    return centre_crop_or_pad(_resize_planes(image[None], new, mode)[0], size)
