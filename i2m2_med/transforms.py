"""k-space / image slices -> the magnitude and phase modalities, as plain functions and MONAI
dictionary transforms.

Plain functions here: :func:`kspace_to_modalities` (the core), :func:`sample_mask` /
:func:`apply_column_mask` (fastMRI undersampling), :func:`normalize_magnitude`,
:func:`resize_modalities`, :func:`centre_crop_or_pad`, :func:`fit_image`. The MONAI dictionary
transforms over them -- ``KSpaceToModalitiesd``, ``UndersampleKSpaced``,
``NormalizeMagnituded``, ``ResizeModalitiesd``, ``ImageToModalitiesd``, ``PackModalitiesd``
-- and ``build_modality_pipeline`` are defined in :mod:`i2m2_med.dict_transforms` and available
from this module too (MONAI is imported on first use: it takes seconds to import).

The functional core is :func:`kspace_to_modalities`: centred orthonormal inverse 2-D FFT (the
numbers of ``fastmri.ifft2c``), centre crop to 320 x 320 (zero-fill where the image is
narrower), magnitude ``|x|`` and phase ``angle(x)`` in radians, float32.

How it is fast (same numbers, fewer operations than ifftshift / ifft2 / fftshift / crop):

* Centring without shifts. For a length-N axis with ``c = N // 2``, the centred inverse DFT is
  ``x[c + m] = exp(-2i*pi*c*m/N) * y[m mod N]`` with ``y = ifft(k)`` (orthonormal) and
  ``m = n - c``. The centre crop keeps ``m`` in a window of the crop's length, so the shifts
  become an index window on ``y`` (wrapping round the end) and one phase ramp per axis on the
  cropped output. For even N the ramp is the sign ``(-1)^m``: a checkerboard on the 2-D crop.
* Pruning. The 640-sample readout axis is transformed first, for every column, and only the
  320 rows the crop keeps go on to the transform along W (half the rows): about 25% fewer
  operations than the full 2-D FFT for W = 368.
* Single precision (scipy.fft / pocketfft on complex64), slices spread over a thread pool of
  one-thread FFTs (better than multi-threading each small FFT), and the arctangent of the
  phase computed with torch's vectorised float32 ``atan2`` (numpy's is scalar code here and
  would cost more than the FFT).
* In place. The readout FFT runs in place on a per-thread buffer (the read buffer of
  :func:`iter_volume_modalities`, else a copy of the slice): pocketfft's in-place transform
  along the strided readout axis saves more than the copy costs (one core, 640 x 368:
  0.61 ms in place + 0.13 ms copy against 0.77 ms out of place).

:func:`iter_volume_modalities` is the fast way through whole fastMRI volumes: each thread reads
its slice with a direct read and transforms it, and the next block of slices is queued before
one is waited for.

Multicoil k-space (C coils) is combined per pixel:

* magnitude: root-sum-of-squares ``sqrt(sum_c |x_c|^2)`` (as fastMRI's ``reconstruction_rss``);
* phase: the phase of the sensitivity-weighted coil combination
  ``z = sum_c x_c * conj(l_c) * l_0 / |l_0|`` where ``l_c`` is a low-resolution image of coil
  ``c`` (the central 24 x 24 k-space samples, Hann-windowed) -- the coil sensitivities up to a
  common smooth factor (Roemer / Walsh-style combination) -- referenced to the low-resolution
  phase of the first coil, so that the smooth object phase seen by that coil is kept rather
  than removed. For one coil ``z = x * |l|``: exactly the singlecoil phase.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Iterator

import numpy as np
import scipy.fft as sfft
import torch

from i2m2_med.errors import StudyReadError, TransformError

#: Default centre crop (rows, columns) of the image, pixels.
DEFAULT_CROP: tuple[int, int] = (320, 320)
#: Half-size of the central k-space block used for the low-resolution coil images.
LOWRES_HALF_WIDTH = 12

ArrayLike = Any  # numpy.ndarray | torch.Tensor


# ---- geometry of the centred, cropped transform ---------------------------------------------


def _crop_start(n: int, out: int) -> int:
    """Image pixel shown at output 0 when an axis of ``n`` pixels is centre-cropped or
    zero-filled to ``out``: ``(n - out) // 2`` when cropping (fastMRI's ``center_crop``) and
    ``-((out - n) // 2)`` when padding (``(out - n) // 2`` zeros before, the rest after, as
    MONAI's symmetric ``SpatialPad``: the inverse of the crop)."""
    return (n - out) // 2 if n >= out else -((out - n) // 2)


@functools.lru_cache(maxsize=64)
def _axis_plan(n: int, out: int) -> tuple[int, int, int, np.ndarray, bool]:
    """For an axis of length ``n`` cropped (or zero-filled) to ``out``:

    ``(j0, j1, m0, ramp, ramp_is_sign)`` -- output positions ``j0..j1-1`` hold the image;
    output ``j`` is ``ramp[j - j0] * y[(m0 + j - j0) mod n]`` with ``y`` the plain orthonormal
    inverse FFT; ``ramp`` is complex64 (or a float32 sign when n is even).
    """
    c = n // 2
    start = _crop_start(n, out)          # output j shows image pixel j + start
    j0 = max(0, -start)                  # first output with a pixel of the image
    j1 = min(out, n - start)             # one past the last
    m = np.arange(j0, j1) + start - c    # centred image index
    if n % 2 == 0:
        ramp = np.where(m % 2 == 0, 1.0, -1.0).astype(np.float32)
        is_sign = True
    else:
        ramp = np.exp(-2j * np.pi * c * m / n).astype(np.complex64)
        is_sign = False
    ramp.setflags(write=False)
    return j0, j1, int(m[0]) if len(m) else 0, ramp, is_sign


def _window_take(y: np.ndarray, axis: int, n: int, m0: int, length: int) -> np.ndarray:
    """``y[..., (m0 + arange(length)) mod n, ...]`` along ``axis``, as at most two slices."""
    start = m0 % n
    if start + length <= n:
        idx = slice(start, start + length)
        sl = [slice(None)] * y.ndim
        sl[axis] = idx
        return y[tuple(sl)]
    first = n - start
    a = [slice(None)] * y.ndim
    b = [slice(None)] * y.ndim
    a[axis] = slice(start, n)
    b[axis] = slice(0, length - first)
    return np.concatenate([y[tuple(a)], y[tuple(b)]], axis=axis)


def _centred_crop_image(k: np.ndarray, crop: tuple[int, int], workers: int) -> np.ndarray:
    """Centred orthonormal inverse 2-D FFT of ``k`` (..., R, W) complex64, centre-cropped or
    zero-filled to ``crop``: (..., crop_h, crop_w) complex64 with the exact centred phase."""
    rows, cols = k.shape[-2], k.shape[-1]
    r0, r1, mr, ramp_r, sign_r = _axis_plan(rows, crop[0])
    c0, c1, mc, ramp_c, sign_c = _axis_plan(cols, crop[1])
    y = sfft.ifft(k, axis=-2, norm="ortho", workers=workers)
    y = _window_take(y, -2, rows, mr, r1 - r0)
    y = sfft.ifft(y, axis=-1, norm="ortho", workers=workers, overwrite_x=True)
    y = _window_take(y, -1, cols, mc, c1 - c0)
    ramp = ramp_r[:, None] * ramp_c[None, :]
    if (r0, r1, c0, c1) == (0, crop[0], 0, crop[1]):
        out = np.multiply(y, ramp, dtype=np.complex64)
    else:
        out = np.zeros((*y.shape[:-2], crop[0], crop[1]), dtype=np.complex64)
        np.multiply(y, ramp, out=out[..., r0:r1, c0:c1])
    return out


_LOCAL = threading.local()


def _buffer(shape: tuple[int, ...], dtype: Any = np.complex64, name: str = "buf") -> np.ndarray:
    """A per-thread scratch array of ``shape`` and ``dtype`` (reused across calls)."""
    buf = getattr(_LOCAL, name, None)
    if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype:
        buf = np.empty(shape, dtype=dtype)
        setattr(_LOCAL, name, buf)
    return buf


def _wrapped_blocks(start: int, length: int, n: int) -> list[tuple[int, int, int]]:
    """The window ``(start + arange(length)) mod n`` as (dst_offset, src_from, src_to) slices."""
    start %= n
    first = min(length, n - start)
    blocks = [(0, start, start + first)]
    if first < length:
        blocks.append((first, 0, length - first))
    return blocks


def _slice_modalities(
    k: np.ndarray,
    crop: tuple[int, int],
    mag: np.ndarray,
    phase: np.ndarray,
    workers: int,
    pool: ThreadPoolExecutor | None = None,
    overwrite_k: bool = False,
) -> None:
    """One singlecoil slice (R, W) complex64 -> magnitude and phase (crop) float32, written
    into ``mag`` and ``phase``. The readout FFT runs in place, on ``k`` itself when
    ``overwrite_k`` (``k`` is scratch: a read buffer), else on a per-thread copy of it.

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
    if not overwrite_k:
        # the caller's k-space is left as it is: a per-thread copy is transformed in place
        # (copy and in-place FFT together cost less than the out-of-place FFT)
        scratch = _buffer(k.shape, np.complex64, "kscratch")
        np.copyto(scratch, k)
        k = scratch
    y = sfft.ifft(k, axis=0, norm="ortho", workers=workers, overwrite_x=True)
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


@functools.lru_cache(maxsize=32)
def _sign_plane_cached(ramp_r: bytes, ramp_c: bytes) -> np.ndarray:
    r = np.frombuffer(ramp_r, dtype=np.float32)
    c = np.frombuffer(ramp_c, dtype=np.float32)
    out = np.outer(r, c).astype(np.float32)
    out.setflags(write=False)
    return out


def _sign_plane(ramp_r: np.ndarray, ramp_c: np.ndarray) -> np.ndarray:
    """The (len(ramp_r), len(ramp_c)) float32 sign plane ``ramp_r[i] * ramp_c[j]`` (cached)."""
    return _sign_plane_cached(ramp_r.tobytes(), ramp_c.tobytes())


# ---- thread pool (recreated after a fork) ---------------------------------------------------

_POOL: dict[str, Any] = {"pid": None, "pool": None, "size": 0}
_POOL_LOCK = threading.Lock()


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _pool(size: int) -> ThreadPoolExecutor:
    with _POOL_LOCK:
        if _POOL["pid"] != os.getpid() or _POOL["size"] != size or _POOL["pool"] is None:
            _POOL.update(pid=os.getpid(), pool=ThreadPoolExecutor(size, thread_name_prefix="i2m2-fft"), size=size)
        return _POOL["pool"]


# ---- validation -----------------------------------------------------------------------------


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


def _raise_non_finite(k: np.ndarray, where: str | None, index: int | None = None,
                      nan_error: type[Exception] = TransformError) -> None:
    """Why the image of ``k`` is not finite: ``nan_error`` counting the NaN/Inf values of the
    k-space, or a :class:`TransformError` for an overflow; ``index`` names the slice."""
    at = "" if index is None else f"slice {index}: "
    bad = int((~np.isfinite(k)).sum())
    if bad:
        raise nan_error(where, f"{at}k-space contains {bad} NaN/Inf values")
    raise TransformError(where, f"{at}the image overflows float32 (k-space values too large)")


# ---- the functional core --------------------------------------------------------------------


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


#: Elements per torch call below which torch runs single-threaded (its TensorIterator grain).
_TORCH_GRAIN = 32768


def _atan2_inplace(im: np.ndarray, re: np.ndarray) -> None:
    """``re[...] = atan2(im, re)`` for (h, w) float32, with torch's vectorised float32 kernel
    called on row blocks under its parallel grain: single-threaded in the calling thread (the
    threads are ours; torch's intra-op pool stalls badly on a loaded machine)."""
    step = max(1, _TORCH_GRAIN // max(1, re.shape[-1]))
    tre, tim = torch.from_numpy(re), torch.from_numpy(im)
    for r in range(0, re.shape[0], step):
        torch.atan2(tim[r:r + step], tre[r:r + step], out=tre[r:r + step])


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


# ---- whole volumes, reading ahead ----------------------------------------------------------

#: Slices per block of :func:`iter_volume_modalities`.
VOLUME_BLOCK = 8


def iter_volume_modalities(
    study: Any,
    crop: tuple[int, int] = DEFAULT_CROP,
    *,
    block: int = VOLUME_BLOCK,
    workers: int | None = None,
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Every slice of a k-space study as magnitude and phase, block by block, the fast way
    through a whole volume: yields ``(first_slice, {"magnitude": (n, h, w), "phase": (n, h,
    w)})`` float32 for consecutive blocks of at most ``block`` slices.

    The slices of a block are spread over ``workers`` threads (default: all cores of this
    process); each thread reads its slice into its own buffer and transforms it with one-thread
    FFTs, so one thread's read runs beside the other threads' transforms and every core is busy
    with a whole slice (no thread waits for a separate reader). fastMRI h5 studies are read
    with the reader's ``read_block`` (direct reads that do not hold the interpreter lock, see
    :class:`i2m2_med.io.fastmri_h5.FastMRISliceReader`), without its separate NaN/Inf pass:
    NaN/Inf k-space reaches every pixel of the slice's image, so the image is checked instead
    and the k-space of a slice whose image is not finite is counted for the error. Other
    k-space studies are read with ``read_slice``. With more than one worker the next block is
    queued before a block is waited for, so no core idles at block ends and the next block is
    computed while the caller uses the one yielded. Memory: one k-space slice per thread and
    two blocks. Errors: :class:`~i2m2_med.errors.StudyReadError` for a slice that
    cannot be read or holds NaN/Inf values (naming the slice, as the reader does), and
    :class:`TransformError` otherwise.
    """
    where = str(getattr(study, "source", None))
    if getattr(study, "domain", None) != "kspace":
        raise TransformError(where, "not a k-space study: no k-space to transform")
    crop = _check_crop(crop, where)
    block = max(1, int(block))
    workers = cpu_count() if workers is None else max(1, int(workers))
    n = int(study.n_slices)
    reader = study.slice_reader
    read_block = getattr(reader, "read_block", None)
    shape = tuple(reader.slice_shape) if read_block is not None else None  # opens the file here

    def read(i: int) -> np.ndarray:
        if read_block is not None:
            buf = _buffer((1, *shape), np.complex64, "kslice")
            return read_block(i, i + 1, out=buf, check_finite=False)[0]
        arr, _ = _as_numpy_kspace(study.read_slice(i)["kspace"], f"{where}: slice {i}")
        return arr

    def one(i: int, mag: np.ndarray, phase: np.ndarray) -> None:
        k = read(i)
        if k.ndim == 2:
            # the thread's read buffer is scratch: its readout FFT runs in place
            _slice_modalities(k, crop, mag, phase, 1, overwrite_k=read_block is not None)
        elif k.ndim == 3:
            m, p = _multicoil(k[None], crop, 1)
            mag[...], phase[...] = m[0], p[0]
        else:
            raise TransformError(where, f"slice {i}: k-space of shape {tuple(k.shape)}; expected (640, W) or (C, 640, W)")
        if not np.isfinite(mag.sum(dtype=np.float64)):
            if read_block is not None:  # the buffer was overwritten: read the slice again
                k = read_block(i, i + 1)[0]  # NaN/Inf: the reader's StudyReadError, naming the slice
            _raise_non_finite(k, where, i, nan_error=StudyReadError)

    def new_block(b0: int) -> tuple[int, np.ndarray, np.ndarray]:
        b1 = min(n, b0 + block)
        return b1, np.empty((b1 - b0, *crop), dtype=np.float32), np.empty((b1 - b0, *crop), dtype=np.float32)

    if workers == 1:
        for b0 in range(0, n, block):
            b1, mag, phase = new_block(b0)
            for i in range(b0, b1):
                one(i, mag[i - b0], phase[i - b0])
            yield b0, {"magnitude": mag, "phase": phase}
        return

    pool = _pool(workers)

    def submit(b0: int) -> tuple[int, np.ndarray, np.ndarray, list[Future]]:
        b1, mag, phase = new_block(b0)
        return b0, mag, phase, [pool.submit(one, i, mag[i - b0], phase[i - b0]) for i in range(b0, b1)]

    starts = iter(range(0, n, block))
    queued: deque[tuple[int, np.ndarray, np.ndarray, list[Future]]] = deque()
    try:
        while True:
            while len(queued) < 2 and (b0 := next(starts, None)) is not None:
                queued.append(submit(b0))  # the block after the one waited for is queued too
            if not queued:
                return
            b0, mag, phase, futures = queued[0]
            for fut in futures:
                fut.result()  # the first failing slice, in slice order
            queued.popleft()
            yield b0, {"magnitude": mag, "phase": phase}
    finally:  # closed early or failed: nothing of this study is left running
        left = [fut for *_, futures in queued for fut in futures]
        for fut in left:
            fut.cancel()
        wait(left)


# ---- the same core in torch, for tensors on an accelerator ----------------------------------


def _torch_axis(n: int, out: int, device: torch.device) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """``(j0, j1, index, ramp)`` of :func:`_axis_plan` as torch tensors on ``device``."""
    j0, j1, m0, ramp, _ = _axis_plan(n, out)
    index = torch.remainder(torch.arange(j1 - j0, device=device) + m0, n)
    return j0, j1, index, torch.as_tensor(ramp.astype(np.complex64), device=device)


def _torch_images(k: torch.Tensor, crop: tuple[int, int]) -> torch.Tensor:
    """Centred, cropped complex images (..., h, w) complex64 of k-space (..., R, W), in torch."""
    rows, cols = k.shape[-2:]
    r0, r1, ri, rr = _torch_axis(rows, crop[0], k.device)
    c0, c1, ci, rc = _torch_axis(cols, crop[1], k.device)
    y = torch.fft.ifft(k, dim=-2, norm="ortho").index_select(-2, ri)
    y = torch.fft.ifft(y, dim=-1, norm="ortho").index_select(-1, ci)
    y = y * (rr[:, None] * rc[None, :])
    if (r0, r1, c0, c1) == (0, crop[0], 0, crop[1]):
        return y
    out = torch.zeros((*y.shape[:-2], *crop), dtype=y.dtype, device=y.device)
    out[..., r0:r1, c0:c1] = y
    return out


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


# ---- array functions under the dictionary transforms ----------------------------------------


def _to_numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _like(x: np.ndarray, ref: ArrayLike) -> ArrayLike:
    """``x`` as the library of ``ref`` (numpy, or a torch tensor on ref's device)."""
    if isinstance(ref, torch.Tensor):
        return torch.from_numpy(np.ascontiguousarray(x)).to(ref.device)
    return x


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


# ---- the MONAI dictionary transforms, imported on first use ---------------------------------

_DICT_TRANSFORMS = (
    "ImageToModalitiesd",
    "KSpaceToModalitiesd",
    "ModalityCompose",
    "NormalizeMagnituded",
    "PackModalitiesd",
    "ResizeModalitiesd",
    "UndersampleKSpaced",
    "build_modality_pipeline",
)


def __getattr__(name: str) -> Any:
    if name in _DICT_TRANSFORMS:
        from i2m2_med import dict_transforms

        return getattr(dict_transforms, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_DICT_TRANSFORMS))
