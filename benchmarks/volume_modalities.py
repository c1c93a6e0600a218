"""A whole-volume path through the modality transform, for the transforms section to time beside
the project's slice path, fastMRI, MONAI and the bare FFT.

The library transforms one slice at a time (:func:`i2m2_med.data.sample.image_sample`, the single
builder of training and inference, spread over threads by the inference stream): no production
path reads a study volume by volume. :func:`iter_volume_modalities` is what such a path would be
at its fastest, built from the library's per-slice functions, so that the section can say how
far the slice path is from it.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, wait
from typing import Any, Iterator

import numpy as np

from i2m2_med.errors import I2M2Error, StudyReadError, TransformError
from i2m2_med.transforms.coils import _multicoil
from i2m2_med.transforms.fft import DEFAULT_CROP, _buffer, _pool, cpu_count
from i2m2_med.transforms.modalities import (
    _as_numpy_kspace,
    _check_crop,
    _slice_modalities,
)

#: Slices per block of :func:`iter_volume_modalities`.
VOLUME_BLOCK = 8


def _non_finite_error(k: np.ndarray, where: str, index: int) -> I2M2Error:
    """Why slice ``index``'s image is not finite: NaN/Inf k-space (counted, a
    :class:`StudyReadError` as the reader raises it) or a float32 overflow."""
    bad = int((~np.isfinite(k)).sum())
    if bad:
        return StudyReadError(where, f"slice {index}: k-space contains {bad} NaN/Inf values")
    return TransformError(where, f"slice {index}: the image overflows float32 (k-space values too large)")


def iter_volume_modalities(
    study: Any,
    crop: tuple[int, int] = DEFAULT_CROP,
    *,
    block: int = VOLUME_BLOCK,
    workers: int | None = None,
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Every slice of a k-space study as magnitude and phase, block by block: yields
    ``(first_slice, {"magnitude": (n, h, w), "phase": (n, h, w)})`` float32 for consecutive
    blocks of at most ``block`` slices (the numbers of
    :func:`~i2m2_med.transforms.modalities.kspace_to_modalities`, slice by slice).

    The slices of a block are spread over ``workers`` threads (default: all cores of this
    process); each thread reads its slice into its own buffer and transforms it with one-thread
    FFTs, so one thread's read runs beside the other threads' transforms and every core is busy
    with a whole slice (no thread waits for a separate reader). fastMRI h5 studies are read
    with the reader's ``read_block`` (direct reads that do not hold the interpreter lock, see
    :class:`i2m2_med.io.fastmri_h5.FastMRISliceReader`), without its separate NaN/Inf pass:
    NaN/Inf k-space reaches every pixel of the slice's image, so the image is checked instead
    and the k-space of a slice whose image is not finite is counted for the error (as the
    reader counts it). Other
    k-space studies are read with ``read_slice``. With more than one worker the next block is
    queued before a block is waited for, so no core idles at block ends and the next block is
    computed while the caller uses the one yielded. Memory: one k-space slice per thread and
    two blocks. Errors: :class:`~i2m2_med.errors.StudyReadError` for a slice that
    cannot be read or holds NaN/Inf values (naming the slice, as the reader does), and
    :class:`~i2m2_med.errors.TransformError` otherwise.
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
            _slice_modalities(k, crop, mag, phase, 1)
        elif k.ndim == 3:
            m, p = _multicoil(k[None], crop, 1)
            mag[...], phase[...] = m[0], p[0]
        else:
            raise TransformError(where, f"slice {i}: k-space of shape {tuple(k.shape)}; expected (640, W) or (C, 640, W)")
        if not np.isfinite(mag.sum(dtype=np.float64)):
            raise _non_finite_error(k, where, i)  # k is still the slice's k-space: the transform copies it

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
