"""Combination of multicoil images per pixel.

* magnitude: root-sum-of-squares ``sqrt(sum_c |x_c|^2)`` (as fastMRI's ``reconstruction_rss``);
* phase: the phase of the sensitivity-weighted coil combination
  ``z = sum_c x_c * conj(l_c) * l_0 / |l_0|`` where ``l_c`` is a low-resolution image of coil
  ``c`` (the central 24 x 24 k-space samples, Hann-windowed) -- the coil sensitivities up to a
  common smooth factor (Roemer / Walsh-style combination) -- referenced to the low-resolution
  phase of the first coil, so that the smooth object phase seen by that coil is kept rather
  than removed. For one coil ``z = x * |l|``: exactly the singlecoil phase.
"""

from __future__ import annotations

import numpy as np

from i2m2_med.transforms.fft import _centred_crop_image, _crop_start, _pool

#: Half-size of the central k-space block used for the low-resolution coil images.
LOWRES_HALF_WIDTH = 12


def _lowres_matrices(n: int, out: int, half: int) -> np.ndarray:
    """(out, 2*half) complex64: row ``j`` maps the central k-space samples ``c-half..c+half-1``
    of a length-``n`` axis to image position ``j`` of the centred crop (0 where zero-filled)."""
    c = n // 2
    m = np.arange(out) + _crop_start(n, out) - c
    p = np.arange(-half, half)
    mat = np.exp(2j * np.pi * np.outer(m, p) / n) / np.sqrt(n)
    mat[(m + c < 0) | (m + c >= n)] = 0.0
    return mat.astype(np.complex64)


def _lowres_images(vol: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """Low-resolution coil images (S, C, h, w) complex64 from the central k-space samples,
    Hann-windowed, with exactly the centring and crop of the full images."""
    rows, cols = vol.shape[-2:]
    hr = min(LOWRES_HALF_WIDTH, rows // 2)
    hc = min(LOWRES_HALF_WIDTH, cols // 2)
    cr, cc = rows // 2, cols // 2
    block = vol[..., cr - hr:cr + hr, cc - hc:cc + hc]
    win = np.outer(np.hanning(2 * hr + 2)[1:-1], np.hanning(2 * hc + 2)[1:-1]).astype(np.float32)
    block = block * win
    er = _lowres_matrices(rows, crop[0], hr)
    ec = _lowres_matrices(cols, crop[1], hc)
    return np.einsum("jp,scpq,kq->scjk", er, block, ec, optimize=True).astype(np.complex64)


def _multicoil(vol: np.ndarray, crop: tuple[int, int], workers: int) -> tuple[np.ndarray, np.ndarray]:
    """(S, C, R, W) complex64 -> RSS magnitude, combined phase (S, h, w) float32."""
    n = vol.shape[0]
    mag = np.empty((n, *crop), dtype=np.float32)
    phase = np.empty((n, *crop), dtype=np.float32)

    def one(i: int, threads: int) -> None:
        x = _centred_crop_image(vol[i], crop, threads)           # (C, h, w)
        low = _lowres_images(vol[i:i + 1], crop)[0]              # (C, h, w)
        mag[i] = np.sqrt(np.sum(x.real**2 + x.imag**2, axis=0))
        ref = low[0]
        ref_abs = np.abs(ref)
        ref_unit = np.where(ref_abs > 0, ref / np.where(ref_abs > 0, ref_abs, 1), 1).astype(np.complex64)
        z = np.sum(x * np.conj(low), axis=0) * ref_unit
        phase[i] = np.angle(z)

    if n == 1 or workers == 1:
        for i in range(n):
            one(i, workers)
    else:
        list(_pool(workers).map(lambda i: one(i, 1), range(n)))
    return mag, phase
