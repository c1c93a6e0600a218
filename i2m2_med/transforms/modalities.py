"""k-space slices and volumes -> the magnitude and phase modalities (the functional core).

:func:`kspace_to_modalities`: centred orthonormal inverse 2-D FFT (:mod:`.fft`), centre crop to
320 x 320 (zero-fill where the image is narrower), multicoil combination (:mod:`.coils`),
magnitude ``|x|`` and phase ``angle(x)`` in radians, float32. The phase's arctangent uses
torch's vectorised float32 ``atan2``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.fft as sfft
import torch

from i2m2_med.errors import TransformError
from i2m2_med.transforms.coils import (
    LOWRES_HALF_WIDTH,
    _lowres_matrices,
    _multicoil,
)
from i2m2_med.transforms.fft import (
    DEFAULT_CROP,
    ArrayLike,
    _atan2_inplace,
    _axis_plan,
    _buffer,
    _centred_crop_image,
    _pool,
    _sign_plane,
    _torch_images,
    _wrapped_blocks,
    cpu_count,
)


def _slice_modalities(
    k: np.ndarray,
    crop: tuple[int, int],
    mag: np.ndarray,
    phase: np.ndarray,
    workers: int,
    pool: ThreadPoolExecutor | None = None,
) -> None:
    """One singlecoil slice (R, W) complex64 -> magnitude and phase (crop) float32, written
    into ``mag`` and ``phase``. The readout FFT runs in place on a per-thread copy of ``k``
    (``k`` itself is left as it was).

    Even R and W (every fastMRI size): the readout axis is transformed for every column
    (``workers`` threads), then the kept rows -- one or two contiguous row blocks, the window
    wrapping round the end -- are split into tasks; each transforms its rows along W in place and
    writes magnitude and phase for them, the centring sign ``(-1)^(i+j)`` applied while the real
    and imaginary parts are copied out (the magnitude does not need it). With a ``pool`` the
    row tasks run on it. Other sizes take the general path with complex ramps.
    """
    rows, cols = k.shape
    r0, r1, mr, ramp_r, sign_r = _axis_plan(rows, crop[0])
    c0, c1, mc, ramp_c, sign_c = _axis_plan(cols, crop[1])
    if (r0, r1, c0, c1) != (0, crop[0], 0, crop[1]):
        mag.fill(0.0)
        phase.fill(0.0)
    n_rows, n_cols = r1 - r0, c1 - c0
    if not (sign_r and sign_c):
        z = _centred_crop_image(k, crop, workers)[r0:r1, c0:c1]
        np.abs(z, out=mag[r0:r1, c0:c1])
        im = np.ascontiguousarray(z.imag)
        phase[r0:r1, c0:c1] = z.real
        _atan2_inplace(im, phase[r0:r1, c0:c1])
        return
    # copy and in-place FFT together cost less than the out-of-place FFT
    scratch = _buffer(k.shape, np.complex64, "kscratch")
    np.copyto(scratch, k)
    y = sfft.ifft(scratch, axis=0, norm="ortho", workers=workers, overwrite_x=True)
    sign = _sign_plane(ramp_r, ramp_c)
    col_blocks = _wrapped_blocks(mc, n_cols, cols)
    parts = max(1, workers if pool is not None else 1)
    tasks = []
    for rdst, src0, src1 in _wrapped_blocks(mr, n_rows, rows):
        length = src1 - src0
        pieces = max(1, min(length, round(parts * length / n_rows)))
        edges = [src0 + (length * i) // pieces for i in range(pieces + 1)]
        tasks += [(rdst + a - src0, a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]

    def rows_task(task: tuple[int, int, int]) -> None:
        rdst, src0, src1 = task
        z = sfft.ifft(y[src0:src1], axis=1, norm="ortho", workers=1 if pool is not None else workers, overwrite_x=True)
        rs = slice(r0 + rdst, r0 + rdst + src1 - src0)
        im = _buffer((src1 - src0, crop[1]), np.float32, "im")
        if (c0, c1) != (0, crop[1]):
            im.fill(0.0)
        for cdst, csrc0, csrc1 in col_blocks:
            cs = slice(c0 + cdst, c0 + cdst + csrc1 - csrc0)
            zb = z[:, csrc0:csrc1]
            sb = sign[rdst:rdst + src1 - src0, cdst:cdst + csrc1 - csrc0]
            np.abs(zb, out=mag[rs, cs])
            np.multiply(zb.real, sb, out=phase[rs, cs])
            np.multiply(zb.imag, sb, out=im[:, cs])
        _atan2_inplace(im, phase[rs])

    if pool is not None and len(tasks) > 1:
        list(pool.map(rows_task, tasks))
    else:
        for task in tasks:
            rows_task(task)


def _singlecoil(vol: np.ndarray, crop: tuple[int, int], workers: int) -> tuple[np.ndarray, np.ndarray]:
    """(S, R, W) complex64 -> magnitude, phase (S, h, w) float32.

    Slices are spread over a pool of ``workers`` threads running one-thread FFTs; a single
    slice runs its readout FFT on ``workers`` threads and its row blocks on the pool.
    """
    n = vol.shape[0]
    mag = np.empty((n, *crop), dtype=np.float32)
    phase = np.empty((n, *crop), dtype=np.float32)

    if workers == 1:
        for i in range(n):
            _slice_modalities(vol[i], crop, mag[i], phase[i], 1)
    elif n == 1:
        _slice_modalities(vol[0], crop, mag[0], phase[0], workers, _pool(workers))
    else:
        pool = _pool(workers)
        list(pool.map(lambda i: _slice_modalities(vol[i], crop, mag[i], phase[i], 1), range(n)))
    return mag, phase


def _as_numpy_kspace(kspace: ArrayLike, where: str | None) -> tuple[np.ndarray, str]:
    if isinstance(kspace, torch.Tensor):
        kind = "torch"
        if not kspace.is_complex():
            raise TransformError(where, f"k-space dtype {kspace.dtype} is not complex")
        arr = kspace.detach().to("cpu", torch.complex64).resolve_conj().numpy()
    elif isinstance(kspace, np.ndarray):
        kind = "numpy"
        if kspace.dtype.kind != "c":
            raise TransformError(where, f"k-space dtype {kspace.dtype} is not complex")
        arr = kspace.astype(np.complex64, copy=False)
    else:
        raise TransformError(where, f"k-space must be a numpy array or torch tensor, got {type(kspace).__name__}")
    if arr.ndim not in (2, 3, 4):
        raise TransformError(
            where,
            f"k-space of rank {arr.ndim} {tuple(arr.shape)}; expected (640, W), (S, 640, W), "
            "(C, 640, W) with coils=True or (S, C, 640, W)",
        )
    if arr.size == 0:
        raise TransformError(where, f"k-space is empty {tuple(arr.shape)}")
    return arr, kind


def _check_crop(crop: Any, where: str | None) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in crop)
    except (TypeError, ValueError):
        raise TransformError(where, f"crop must be (rows, columns), got {crop!r}") from None
    if h < 1 or w < 1:
        raise TransformError(where, f"crop must be positive, got {crop!r}")
    return h, w


def _raise_non_finite(k: np.ndarray, where: str | None) -> None:
    """Why the image of ``k`` is not finite: NaN/Inf values in the k-space (counted), or an
    overflow."""
    bad = int((~np.isfinite(k)).sum())
    if bad:
        raise TransformError(where, f"k-space contains {bad} NaN/Inf values")
    raise TransformError(where, "the image overflows float32 (k-space values too large)")


def kspace_to_modalities(
    kspace: ArrayLike,
    crop: tuple[int, int] = DEFAULT_CROP,
    *,
    coils: bool | None = None,
    workers: int | None = None,
    where: str | None = None,
) -> dict[str, ArrayLike]:
    """Magnitude and phase of the centred, cropped image of fully sampled (or masked) k-space.

    ``kspace``: complex numpy array or torch tensor, one of
    ``(640, W)`` (one singlecoil slice), ``(S, 640, W)`` (singlecoil volume),
    ``(S, C, 640, W)`` (multicoil volume) or ``(C, 640, W)`` with ``coils=True`` (one
    multicoil slice; a rank-3 input is a singlecoil volume unless ``coils=True``). Any readout
    length and width W (odd, narrower or wider than the crop) are accepted.

    Returns ``{"magnitude": ..., "phase": ...}``, each float32 ``(S, h, w)`` or ``(h, w)`` for
    ``crop = (h, w)``, of the input's library (numpy in, numpy out; torch in, torch out on the
    input's device). Magnitude in the k-space's units (orthonormal FFT: the same numbers as
    ``complex_abs(complex_center_crop(ifft2c(k)))`` of fastMRI); phase in radians in
    ``[-pi, pi]``. Where the image is smaller than the crop it is zero-filled, ``(h - n) // 2``
    zero pixels before and the rest after (MONAI's symmetric pad; the inverse of the crop). Multicoil:
    root-sum-of-squares magnitude and the phase of the sensitivity-weighted combination (see the
    module docstring).

    ``workers``: CPU threads (default: all cores of this process). A torch tensor on an
    accelerator is transformed there with ``torch.fft`` (same formulas, same numbers to float32
    rounding). ``where`` names the source in errors. Raises :class:`TransformError` on a non-complex dtype, a wrong rank, an empty array,
    a bad crop, or NaN/Inf values.
    """
    if isinstance(kspace, torch.Tensor) and kspace.device.type != "cpu":
        return _kspace_to_modalities_torch(kspace, _check_crop(crop, where), coils=coils, where=where)
    arr, kind = _as_numpy_kspace(kspace, where)
    crop = _check_crop(crop, where)
    workers = cpu_count() if workers is None else max(1, int(workers))
    if coils and arr.ndim == 2:
        raise TransformError(where, f"coils=True needs (C, 640, W) or (S, C, 640, W), got {tuple(arr.shape)}")
    multicoil = arr.ndim == 4 or (arr.ndim == 3 and bool(coils))
    single_slice = arr.ndim == 2 or (arr.ndim == 3 and bool(coils))
    vol = arr[None] if single_slice else arr
    if multicoil:
        mag, phase = _multicoil(vol, crop, workers)
    else:
        mag, phase = _singlecoil(vol, crop, workers)
    if not np.isfinite(mag.sum(dtype=np.float64)):
        _raise_non_finite(arr, where)
    if single_slice:
        mag, phase = mag[0], phase[0]
    if kind == "torch":
        device = kspace.device
        return {"magnitude": torch.from_numpy(mag).to(device), "phase": torch.from_numpy(phase).to(device)}
    return {"magnitude": mag, "phase": phase}


def _kspace_to_modalities_torch(
    kspace: torch.Tensor, crop: tuple[int, int], *, coils: bool | None, where: str | None
) -> dict[str, torch.Tensor]:
    if not kspace.is_complex():
        raise TransformError(where, f"k-space dtype {kspace.dtype} is not complex")
    if kspace.ndim not in (2, 3, 4) or kspace.numel() == 0:
        raise TransformError(where, f"k-space of shape {tuple(kspace.shape)}; expected (640, W), (S, 640, W) or (S, C, 640, W)")
    if coils and kspace.ndim == 2:
        raise TransformError(where, f"coils=True needs (C, 640, W) or (S, C, 640, W), got {tuple(kspace.shape)}")
    k = kspace.to(torch.complex64)
    multicoil = k.ndim == 4 or (k.ndim == 3 and bool(coils))
    x = _torch_images(k, crop)
    if multicoil:
        rows, cols = k.shape[-2:]
        hr, hc = min(LOWRES_HALF_WIDTH, rows // 2), min(LOWRES_HALF_WIDTH, cols // 2)
        block = k[..., rows // 2 - hr:rows // 2 + hr, cols // 2 - hc:cols // 2 + hc]
        win = np.outer(np.hanning(2 * hr + 2)[1:-1], np.hanning(2 * hc + 2)[1:-1]).astype(np.float32)
        block = block * torch.as_tensor(win, device=k.device)
        er = torch.as_tensor(_lowres_matrices(rows, crop[0], hr), device=k.device)
        ec = torch.as_tensor(_lowres_matrices(cols, crop[1], hc), device=k.device)
        low = torch.einsum("jp,...cpq,kq->...cjk", er, block, ec)
        ref = low[..., 0, :, :]
        ref_abs = ref.abs()
        ref_unit = torch.where(ref_abs > 0, ref / torch.where(ref_abs > 0, ref_abs, torch.ones_like(ref_abs)), torch.ones_like(ref))
        z = (x * low.conj()).sum(dim=-3) * ref_unit
        mag = torch.sqrt((x.real**2 + x.imag**2).sum(dim=-3))
        phase = torch.angle(z)
    else:
        mag, phase = x.abs(), torch.angle(x)
    if not bool(torch.isfinite(mag.sum(dtype=torch.float64))):
        bad = int((~torch.isfinite(torch.view_as_real(k))).any(-1).sum())
        reason = f"k-space contains {bad} NaN/Inf values" if bad else "the image overflows float32 (k-space values too large)"
        raise TransformError(where, reason)
    return {"magnitude": mag.float().contiguous(), "phase": phase.float().contiguous()}
