"""The centred, cropped, orthonormal inverse 2-D FFT of a k-space slice (the numbers of
``fastmri.ifft2c`` followed by a centre crop), with fewer operations than
ifftshift / ifft2 / fftshift / crop.

* Centring without shifts. For a length-N axis with ``c = N // 2``, the centred inverse DFT is
  ``x[c + m] = exp(-2i*pi*c*m/N) * y[m mod N]`` with ``y = ifft(k)`` (orthonormal) and
  ``m = n - c``. The centre crop keeps ``m`` in a window of the crop's length, so the shifts
  become an index window on ``y`` (wrapping round the end) and one phase ramp per axis on the
  cropped output. For even N the ramp is the sign ``(-1)^m``: a checkerboard on the 2-D crop.
* Pruning. The readout axis is transformed first, for every column, and only the rows the crop
  keeps go on to the transform along W.
* Single precision (scipy.fft / pocketfft on complex64), slices spread over a thread pool of
  one-thread FFTs, and the readout FFT in place on a per-thread buffer (the caller's array is
  never written). BENCHMARKS.md has the measurements behind each choice.
"""

from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.fft as sfft
import torch

#: Default centre crop (rows, columns) of the image, pixels.
DEFAULT_CROP: tuple[int, int] = (320, 320)
ArrayLike = Any  # numpy.ndarray | torch.Tensor


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


def _to_numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _like(x: np.ndarray, ref: ArrayLike) -> ArrayLike:
    """``x`` as the library of ``ref`` (numpy, or a torch tensor on ref's device)."""
    if isinstance(ref, torch.Tensor):
        return torch.from_numpy(np.ascontiguousarray(x)).to(ref.device)
    return x
