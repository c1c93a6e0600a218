"""fastMRI knee h5 files: the writer and the lazy reader.

Layout (as in the fastMRI knee release):

* ``kspace``: (S, 640, W) complex64 singlecoil, or (S, C, 640, W) complex64 multicoil;
* ``reconstruction_esc`` (singlecoil) or ``reconstruction_rss`` (multicoil): (S, 320, 320)
  float32;
* ``ismrmrd_header``: a scalar bytes dataset holding the ISMRMRD XML header;
* attrs ``acquisition`` ("CORPD_FBK" / "CORPDFS_FBK"), ``max`` and ``norm`` of the
  reconstruction, ``patient_id`` (a hashed id; absent in some files).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from i2m2_med.atomic import atomic_path
from i2m2_med.errors import StudyReadError
from i2m2_med.io.ismrmrd import parse_header
from i2m2_med.io.limits import check_regular_file, read_limits
from i2m2_med.io.study import Study


def write_fastmri_h5(
    path: str | os.PathLike,
    kspace: np.ndarray,
    header: bytes,
    *,
    reconstruction: np.ndarray | None = None,
    attrs: dict[str, Any] | None = None,
) -> None:
    """Write one volume in the fastMRI layout, atomically.

    ``kspace`` (S, 640, W) or (S, C, 640, W) complex, stored as complex64; ``reconstruction``
    (S, 320, 320), stored as ``reconstruction_esc`` (singlecoil) or ``reconstruction_rss``
    (multicoil) in float32; ``attrs`` such as acquisition / max / norm / patient_id.
    Slices are chunked one per chunk so that readers can read them with partial reads.
    """
    kspace = np.asarray(kspace)
    if kspace.ndim not in (3, 4):
        raise ValueError(f"kspace must be (S, 640, W) or (S, C, 640, W), got {kspace.shape}")
    multicoil = kspace.ndim == 4
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset(
                "kspace", data=kspace.astype(np.complex64, copy=False), chunks=(1, *kspace.shape[1:])
            )
            if reconstruction is not None:
                key = "reconstruction_rss" if multicoil else "reconstruction_esc"
                rec = np.asarray(reconstruction, dtype=np.float32)
                f.create_dataset(key, data=rec, chunks=(1, *rec.shape[1:]))
            f.create_dataset("ismrmrd_header", data=np.bytes_(header))
            for key, value in (attrs or {}).items():
                if value is not None:
                    f.attrs[key] = value


# ---- reader ---------------------------------------------------------------------------------

#: Readout length of fastMRI knee k-space (2x oversampled 320).
FASTMRI_READOUT = 640
#: The image crop the transforms apply by default (rows, columns).
DEFAULT_CROP = (320, 320)
_RECON_KEYS = ("reconstruction_esc", "reconstruction_rss")
_FAT_SAT_ACQUISITIONS = {"CORPDFS_FBK": True, "CORPD_FBK": False}


def _attr_value(value: Any) -> Any:
    """h5py attribute -> plain Python (bytes / numpy scalars decoded)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, np.generic):
        return value.item()
    return value


class FastMRISliceReader:
    """Reads the slices of a fastMRI h5 file on demand: one slice (``reader(i)``) or a block of
    consecutive slices (:meth:`read_block`).

    Direct reads. When the ``kspace`` dataset is stored as plain little-endian complex64 bytes
    -- contiguous, or chunked one slice per chunk (fastMRI's layout and the writer's), with no
    compression or other filter and no external storage -- the byte offset of every slice is
    taken from the HDF5 layout once, checked against h5py's own reads of the first and last
    lines of the first and last slices, and slices are then read with ``os.preadv`` straight
    into the output array. That is one system call and one copy per slice (per block when
    contiguous), without h5py's per-call overhead and without holding the interpreter lock, so
    read-ahead threads overlap with the transforms. Any other layout (compressed, big-endian, complex128, ...) is read with h5py
    partial reads (``ds[i]``), with the same numbers.

    The file handles are opened on first use and cached per process: pickling drops them
    (``__getstate__``) and a change of process id (a forked DataLoader worker) reopens them, so
    a :class:`~i2m2_med.io.study.Study` holding this reader can travel to worker processes.

    Calling the reader with a slice index returns ``{"kspace": (640, W) complex64}`` or
    ``{"kspace": (C, 640, W) complex64}``; NaN/Inf k-space raises :class:`StudyReadError`.
    """

    def __init__(self, path: str | os.PathLike, recon_key: str | None = None):
        self.path = str(path)
        self.recon_key = recon_key
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._fd: int | None = None
        self._layout: _DirectLayout | None = None

    # -- handle management -------------------------------------------------------------------
    def _handle(self) -> h5py.File:
        pid = os.getpid()
        if self._file is None or self._pid != pid or not self._file.id.valid:
            if self._pid != pid:
                self._close_fd()  # a descriptor inherited over fork: closed in this process only
            self._fd = None
            self._layout = None
            try:
                # No chunk cache: a slice is read once, and a fastMRI chunk (a whole slice) is
                # larger than the default 1 MiB cache anyway. Without it HDF5 reads what is
                # selected straight into the output instead of the whole chunk first
                # (BENCHMARKS.md, transforms section).
                self._file = h5py.File(self.path, "r", rdcc_nbytes=0)
            except OSError as exc:
                raise StudyReadError(self.path, f"cannot open HDF5 file ({_h5_reason(exc)})") from None
            self._pid = pid
            self._layout = _direct_layout(self._file)
            if self._layout is not None:
                try:
                    self._fd = os.open(self.path, os.O_RDONLY)
                except OSError:
                    self._layout = None
                else:
                    if not self._layout.verified(self._fd, self._file["kspace"]):
                        self._close_fd()
                        self._layout = None
        return self._file

    def _close_fd(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = None

    @property
    def slice_shape(self) -> tuple[int, ...]:
        """Shape of one k-space slice: (640, W) or (C, 640, W)."""
        return tuple(int(n) for n in self._handle()["kspace"].shape[1:])

    @property
    def direct(self) -> bool:
        """True when k-space slices are read with direct reads (see the class docstring)."""
        self._handle()
        return self._layout is not None and self._fd is not None

    def close(self) -> None:
        """Close the cached handles (they are reopened on the next read)."""
        if self._pid == os.getpid():
            self._close_fd()
            if self._file is not None:
                try:
                    self._file.close()
                except Exception:  # already closed or invalid: nothing to release
                    pass
        self._file = None
        self._pid = None
        self._fd = None
        self._layout = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_file=None, _pid=None, _fd=None, _layout=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass

    # -- reads -------------------------------------------------------------------------------
    def _read(self, key: str, index: int) -> np.ndarray:
        try:
            return self._handle()[key][index]
        except StudyReadError:
            raise
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            raise StudyReadError(self.path, f"slice {index}: cannot read {key} ({_h5_reason(exc)})") from None

    def read_block(
        self, start: int, stop: int, out: np.ndarray | None = None, *, check_finite: bool = True
    ) -> np.ndarray:
        """K-space slices ``start..stop-1`` as one (n, [C,] 640, W) complex64 array (``out``
        when given: a C-contiguous complex64 array of that shape, reused by callers that read
        block after block). NaN/Inf values raise :class:`StudyReadError` naming the slice;
        ``check_finite=False`` skips that pass over the data, for callers that check what they
        compute from it (a NaN/Inf anywhere in a slice reaches every pixel of its image)."""
        ds = self._handle()["kspace"]
        n_slices = int(ds.shape[0])
        if not 0 <= start < stop <= n_slices:
            raise IndexError(f"{self.path}: slices {start}..{stop - 1} out of range 0..{n_slices - 1}")
        shape = (stop - start, *(int(n) for n in ds.shape[1:]))
        if out is None:
            out = np.empty(shape, np.complex64)
        elif out.shape != shape or out.dtype != np.complex64 or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous complex64 {shape}, got {out.dtype} {out.shape}")
        span = f"slice {start}" if stop - start == 1 else f"slices {start}..{stop - 1}"
        if self.direct:
            try:
                self._layout.read(self._fd, start, stop, out)
            except OSError as exc:
                raise StudyReadError(self.path, f"{span}: cannot read kspace ({exc})") from None
        else:
            try:
                ds.read_direct(out, np.s_[start:stop])
            except (OSError, ValueError, RuntimeError, TypeError) as exc:
                raise StudyReadError(self.path, f"{span}: cannot read kspace ({_h5_reason(exc)})") from None
        if check_finite:
            _check_finite(self.path, out, start)
        return out

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        return {"kspace": self.read_block(index, index + 1)[0]}

    def reconstruction(self, index: int) -> np.ndarray | None:
        """The stored reconstruction of slice ``index``: (320, 320) float32, or None if absent."""
        if self.recon_key is None:
            return None
        return np.asarray(self._read(self.recon_key, index), dtype=np.float32)


def _check_finite(path: str, block: np.ndarray, start: int) -> None:
    """Raise :class:`StudyReadError` naming the first slice of ``block`` (slices ``start..``)
    with NaN/Inf values. One vectorised pass: the float32 sum of each slice (NaN/Inf make it
    non-finite; numpy's own reduction, not BLAS, whose spinning threads would slow down the
    transforms running beside it); the exact count only when it is not finite (the sum of huge
    finite values can overflow: then nothing is raised)."""
    with np.errstate(all="ignore"):
        sums = np.add.reduce(block.reshape(block.shape[0], -1).view(np.float32), axis=1)
    for i in np.flatnonzero(~np.isfinite(sums)):
        bad = int((~np.isfinite(block[i])).sum())
        if bad:
            raise StudyReadError(path, f"slice {start + int(i)}: k-space contains {bad} NaN/Inf values")


class _DirectLayout:
    """Byte offsets of the k-space slices in the file (see :class:`FastMRISliceReader`)."""

    def __init__(self, offsets: np.ndarray, slice_bytes: int, contiguous: bool):
        self.offsets = offsets
        self.slice_bytes = slice_bytes
        self.contiguous = contiguous

    def read(self, fd: int, start: int, stop: int, out: np.ndarray) -> None:
        view = memoryview(out.reshape(-1).view(np.uint8))
        if self.contiguous:
            spans = [(0, int(self.offsets[start]), (stop - start) * self.slice_bytes)]
        else:
            spans = [((i - start) * self.slice_bytes, int(self.offsets[i]), self.slice_bytes) for i in range(start, stop)]
        for pos, offset, length in spans:
            done = 0
            while done < length:
                got = os.preadv(fd, [view[pos + done:pos + length]], offset + done)
                if got <= 0:
                    raise OSError("unexpected end of file (truncated?)")
                done += got

    def verified(self, fd: int, ds: h5py.Dataset) -> bool:
        """True when direct reads of the first and the last line (along the last axis) of the
        first and the last slice give exactly h5py's bytes. A wrong base offset, userblock or
        slice stride shows in these lines; four small reads cost far less than a whole slice."""
        try:
            n = int(ds.shape[0])
            line = int(ds.shape[-1])
            for i in sorted({0, n - 1}):
                for at in (0, -1):
                    want = np.asarray(ds[(i,) + (at,) * (ds.ndim - 2) + (slice(None),)], np.complex64)
                    offset = int(self.offsets[i]) + (0 if at == 0 else self.slice_bytes - 8 * line)
                    if os.pread(fd, 8 * line, offset) != want.tobytes():
                        return False
            return True
        except (OSError, ValueError, RuntimeError):
            return False


def _direct_layout(f: h5py.File) -> _DirectLayout | None:
    """The direct-read layout of ``f["kspace"]``, or None when the bytes on disk are not plain
    complex64 slices at known offsets (then reads go through h5py)."""
    if not hasattr(os, "preadv"):
        return None
    try:
        ds = f["kspace"]
        if not isinstance(ds, h5py.Dataset) or ds.dtype != np.dtype("<c8") or ds.ndim not in (3, 4):
            return None
        plist = ds.id.get_create_plist()
        if plist.get_nfilters() != 0 or plist.get_external_count() != 0:
            return None
        n = int(ds.shape[0])
        slice_bytes = int(np.prod(ds.shape[1:])) * 8
        layout = plist.get_layout()
        if layout == h5py.h5d.CONTIGUOUS:
            offset = ds.id.get_offset()
            if offset is None:
                return None
            # H5Dget_offset is the absolute file offset (a userblock is included)
            return _DirectLayout(int(offset) + np.arange(n, dtype=np.int64) * slice_bytes, slice_bytes, True)
        if layout == h5py.h5d.CHUNKED and tuple(ds.chunks) == (1, *ds.shape[1:]):
            if ds.id.get_num_chunks() != n:
                return None
            offsets = np.full(n, -1, dtype=np.int64)
            for j in range(n):
                info = ds.id.get_chunk_info(j)
                if info.filter_mask != 0 or info.size != slice_bytes or info.byte_offset is None:
                    return None
                offsets[int(info.chunk_offset[0])] = int(info.byte_offset)  # absolute (userblock included)
            if (offsets < 0).any():
                return None
            return _DirectLayout(offsets, slice_bytes, False)
    except (AttributeError, OSError, RuntimeError, ValueError, TypeError, KeyError):
        return None
    return None


def _h5_reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if "truncated" in text:
        return "the file is truncated"
    if "file signature not found" in text or "not an HDF5 file" in text.lower():
        return "not an HDF5 file"
    return text or type(exc).__name__


def _inside_dataset(f: h5py.File, name: str, where: str) -> h5py.Dataset:
    """``f[name]`` when it is a dataset stored inside this file; refuses an external link, a
    virtual dataset (whose data may come from other files) and external raw storage (bytes read
    from another file, e.g. /etc/passwd), before any of their data is read."""
    link = f.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        raise StudyReadError(where, f"'{name}' is a link to another file: refused (only data inside the file is read)")
    obj = f[name]
    if not isinstance(obj, h5py.Dataset):
        raise StudyReadError(where, f"'{name}' is not a dataset")
    if obj.is_virtual:
        raise StudyReadError(where, f"'{name}' is a virtual dataset (its data may live in other files): refused")
    if obj.external:
        raise StudyReadError(where, f"'{name}' is stored in external files: refused (only data inside the file is read)")
    return obj


def read_fastmri_h5(path: str | os.PathLike, study_id: str | None = None) -> Study:
    """Open a fastMRI knee h5 file as a k-space :class:`Study` (nothing but metadata is loaded).

    Validated now (each failure is a :class:`StudyReadError` naming the file and the reason):
    the path is a regular file; it is HDF5 and not truncated; ``kspace`` (and a stored
    reconstruction) is a dataset inside the file (no external link, virtual dataset or external
    storage); its declared shape is within :mod:`i2m2_med.io.limits`; ``kspace`` exists, is complex, of rank 3 (singlecoil
    (S, 640, W)) or 4 (multicoil (S, C, 640, W)) with at least one slice; the
    ``ismrmrd_header`` (optional; its absence is noted) parses. NaN/Inf values are detected
    when a slice is read.

    ``study_id`` defaults to the file stem (``file1000001``), the key of fastMRI+ labels.
    Tags: the header's (see :func:`i2m2_med.io.ismrmrd.parse_header`) plus ``acquisition``,
    ``fat_sat`` (CORPDFS_FBK -> True, CORPD_FBK -> False), ``kspace_shape`` (of one slice),
    ``n_coils``, ``max`` and ``norm``; attr ``patient_id`` goes to ``Study.patient_id`` only.
    Every width W is kept; ``notes`` say what the default 320x320 crop will do with it and
    which columns are zero padding according to the header.
    """
    path = Path(path)
    where = str(path)
    check_regular_file(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise StudyReadError(where, f"cannot open as HDF5 ({_h5_reason(exc)})") from None
    except Exception as exc:  # whatever HDF5 raises, it is this file's fault: one line, typed
        raise StudyReadError(where, f"cannot open as HDF5 ({_h5_reason(exc)})") from None
    notes: list[str] = []
    try:
        if f.get("kspace", getlink=True) is None:
            keys = ", ".join(sorted(f.keys())) or "none"
            raise StudyReadError(where, f"no 'kspace' dataset (keys: {keys})")
        ds = _inside_dataset(f, "kspace", where)
        if ds.dtype.kind != "c":
            raise StudyReadError(where, f"kspace dtype {ds.dtype} is not complex")
        shape = tuple(int(n) for n in ds.shape)
        if len(shape) not in (3, 4):
            raise StudyReadError(
                where, f"kspace has rank {len(shape)} {shape}; expected (S, 640, W) or (S, C, 640, W)"
            )
        if min(shape) < 1:
            raise StudyReadError(where, f"kspace is empty {shape}")
        n_slices = shape[0]
        multicoil = len(shape) == 4
        readout, width = shape[-2], shape[-1]
        read_limits().check(where, slices=n_slices, coils=shape[1] if multicoil else 1, matrix=(readout, width),
                            item_bytes=max(8, int(ds.dtype.itemsize)))

        tags: dict[str, Any] = {}
        if "ismrmrd_header" in f:
            try:
                raw = f["ismrmrd_header"][()]
                if isinstance(raw, np.ndarray):
                    raw = raw.tobytes() if raw.dtype.kind in "SV" else bytes(raw)
                tags.update(parse_header(raw))
            except ValueError as exc:
                raise StudyReadError(where, str(exc)) from None
            except Exception as exc:  # HDF5 or XML failures of any type: this file's fault
                raise StudyReadError(where, f"cannot read ismrmrd_header ({_h5_reason(exc)})") from None
        else:
            notes.append("no ismrmrd_header: sequence, scanner and padding tags missing")

        attrs = {k: _attr_value(v) for k, v in f.attrs.items()}
        acquisition = attrs.get("acquisition")
        if acquisition:
            tags["acquisition"] = str(acquisition)
            if str(acquisition) in _FAT_SAT_ACQUISITIONS:
                tags["fat_sat"] = _FAT_SAT_ACQUISITIONS[str(acquisition)]
        for key in ("max", "norm"):
            if key in attrs:
                try:
                    tags[key] = float(attrs[key])
                except (TypeError, ValueError):
                    pass
        patient_id = attrs.get("patient_id")
        patient_id = str(patient_id) if patient_id not in (None, "") else None
        tags["kspace_shape"] = list(shape[1:])
        tags["n_coils"] = shape[1] if multicoil else 1

        recon_key = next((k for k in _RECON_KEYS if f.get(k, getlink=True) is not None), None)
        if recon_key is not None:
            rshape = tuple(_inside_dataset(f, recon_key, where).shape)
            if len(rshape) != 3 or rshape[0] != n_slices:
                notes.append(f"{recon_key} shape {rshape} does not match {n_slices} slices: ignored")
                recon_key = None
    except StudyReadError:
        f.close()
        raise
    except Exception as exc:  # whatever h5py raises on a damaged file becomes this file's one line
        f.close()
        raise StudyReadError(where, f"corrupt HDF5 file ({_h5_reason(exc)})") from None
    f.close()

    notes.extend(_width_notes(readout, width, tags))
    reader = FastMRISliceReader(path, recon_key=recon_key)
    return Study(
        study_id=study_id or path.stem,
        source=path,
        format="fastmri_h5",
        domain="kspace",
        n_slices=n_slices,
        modalities=("magnitude", "phase"),
        slice_reader=reader,
        tags=tags,
        patient_id=patient_id,
        notes=notes,
    )


def _width_notes(readout: int, width: int, tags: dict[str, Any]) -> list[str]:
    """What the default crop will do with a (readout, width) slice, and the header's padding."""
    notes: list[str] = []
    crop_rows, crop_cols = DEFAULT_CROP
    if readout != FASTMRI_READOUT:
        action = "centre-cropped" if readout > crop_rows else "zero-filled" if readout < crop_rows else "kept whole"
        notes.append(
            f"readout of {readout} samples (fastMRI knee has {FASTMRI_READOUT}): "
            f"image rows {action} to the {crop_rows} crop"
        )
    if width > crop_cols:
        notes.append(f"W={width} wider than the {crop_cols} crop: centre-cropped")
    elif width < crop_cols:
        notes.append(f"W={width} narrower than the {crop_cols} crop: zero-filled")
    else:
        notes.append(f"W={width} equals the {crop_cols} crop: kept whole")
    enc = tags.get("encoded_matrix")
    if enc and int(enc[1]) != width:
        notes.append(f"header encoded matrix y={enc[1]} differs from k-space width W={width}")
    left, right = tags.get("padding_left"), tags.get("padding_right")
    if left is not None and right is not None:
        lo, hi = max(int(left), 0), min(int(right), width)
        parts = []
        if lo > 0:
            parts.append(f"{lo} on the left (0..{lo - 1})")
        if hi < width:
            parts.append(f"{width - hi} on the right ({hi}..{width - 1})")
        if parts:
            notes.append("zero-padded k-space columns per header: " + " and ".join(parts))
        else:
            notes.append("no zero-padded k-space columns per header")
    return notes


def read_reconstruction(study: Study, index: int) -> np.ndarray | None:
    """The stored ``reconstruction_esc`` / ``reconstruction_rss`` slice of a fastMRI study.

    Returns (320, 320) float32 (the fastMRI reference magnitude), or None when the file has no
    reconstruction or ``study`` is not a fastMRI h5 study.
    """
    reader = study.slice_reader
    if not isinstance(reader, FastMRISliceReader):
        return None
    if not 0 <= index < study.n_slices:
        raise IndexError(f"{study.source}: slice {index} out of range 0..{study.n_slices - 1}")
    return reader.reconstruction(index)
