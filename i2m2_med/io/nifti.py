"""NIfTI volumes (nibabel) as image-domain studies: a magnitude volume, optionally a phase one.

Conventions:

* The volume is 3-D (X, Y, Z) and slices run along the **last axis**: slice ``k`` is
  ``data[:, :, k]``, returned as stored (axis 0 as rows, axis 1 as columns; no reorientation to
  radiological display). A 2-D image is one slice; a 4-D volume is accepted only when its 4th
  axis has length 1.
* ``scl_slope`` / ``scl_inter`` are applied by nibabel. Values are read slice by slice through
  nibabel's array proxy (the volume is never loaded whole).
* Phase: when ``phase_path`` is not given, a sibling named ``<stem>_phase.nii.gz`` (or
  ``.nii``) is used if it exists. Phase must have the magnitude's shape. Its unit is decided
  once from the middle slice: values within [-pi, pi] are radians; otherwise, when within
  [-4096, 4096], they are Siemens-style scaled phase (as dcm2niix writes it: -4096..4094 is
  -pi..pi) and mapped by ``v * pi / 4096``; anything else is an error. The choice is noted.
* NIfTI carries no patient or sequence tags; ``tags`` holds the voxel size and image shape.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from i2m2_med.errors import StudyReadError
from i2m2_med.io.limits import check_regular_file, read_limits
from i2m2_med.io.study import Study

NIFTI_SUFFIXES = (".nii.gz", ".nii")
PHASE_SUFFIX = "_phase"


def nifti_stem(path: str | os.PathLike) -> str:
    """File name without ``.nii`` / ``.nii.gz``."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def is_nifti_path(path: str | os.PathLike) -> bool:
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def is_phase_path(path: str | os.PathLike) -> bool:
    """True for ``<stem>_phase.nii[.gz]``."""
    return is_nifti_path(path) and nifti_stem(path).lower().endswith(PHASE_SUFFIX)


def phase_sibling(path: str | os.PathLike) -> Path | None:
    """The existing ``<stem>_phase.nii.gz`` / ``.nii`` beside a magnitude file, if any."""
    path = Path(path)
    stem = nifti_stem(path)
    for suffix in NIFTI_SUFFIXES:
        candidate = path.with_name(stem + PHASE_SUFFIX + suffix)
        if candidate.is_file():
            return candidate
    return None


def _load(path: Path) -> Any:
    import nibabel as nib

    check_regular_file(path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, gzip errors...
        raise StudyReadError(path, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    elif len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3:
        raise StudyReadError(path, f"volume has shape {tuple(img.shape)}; expected 3-D (X, Y, slices)")
    if min(shape) < 1:
        raise StudyReadError(path, f"volume is empty {tuple(img.shape)}")
    dtype = np.dtype(img.get_data_dtype())
    read_limits().check(str(path), slices=shape[2], matrix=(shape[0], shape[1]), item_bytes=max(4, dtype.itemsize))
    if dtype.kind == "c":
        raise StudyReadError(path, f"complex NIfTI ({dtype}) is not supported: store magnitude and phase volumes")
    if dtype.names:
        raise StudyReadError(path, f"NIfTI with structured dtype {dtype} (RGB?) is not an MR magnitude image")
    return img, shape


class NiftiSliceReader:
    """Reads slice ``k`` (last axis) of the magnitude and, if any, phase volume.

    Picklable: holds paths, and reopens the (lazy) nibabel images in each process.
    """

    def __init__(self, magnitude: str, phase: str | None, phase_scale: float | None):
        self.magnitude = magnitude
        self.phase = phase
        self.phase_scale = phase_scale  # radians per stored unit; None: already radians
        self._images: dict[str, Any] = {}
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_images"] = {}
        state["_pid"] = None
        return state

    def _slice(self, path: str, index: int) -> np.ndarray:
        import nibabel as nib

        if self._pid != os.getpid():
            self._images = {}
            self._pid = os.getpid()
        img = self._images.get(path)
        try:
            if img is None:
                img = self._images[path] = nib.load(path)
            proxy = img.dataobj
            if len(img.shape) == 2:
                arr = np.asarray(proxy)
            elif len(img.shape) == 4:
                arr = np.asarray(proxy[:, :, index, 0])
            else:
                arr = np.asarray(proxy[:, :, index])
        except Exception as exc:
            raise StudyReadError(path, f"slice {index}: cannot read ({type(exc).__name__}: {exc})") from None
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise StudyReadError(path, f"slice {index}: contains NaN/Inf")
        return arr

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        out = {"magnitude": self._slice(self.magnitude, index)}
        if self.phase is not None:
            phase = self._slice(self.phase, index)
            if self.phase_scale is not None:
                phase = phase * np.float32(self.phase_scale)
            out["phase"] = np.clip(phase, -np.pi, np.pi).astype(np.float32)
        return out


def _phase_scale(path: Path, middle: np.ndarray) -> tuple[float | None, str]:
    peak = float(np.abs(middle).max()) if middle.size else 0.0
    if peak <= math.pi + 1e-3:
        return None, "phase volume in radians"
    if peak <= 4096.0:
        return math.pi / 4096.0, "phase volume in Siemens units (-4096..4094): mapped by v * pi / 4096 to radians"
    raise StudyReadError(path, f"phase values up to {peak:g} are neither radians nor Siemens units (|v| <= 4096)")


def read_nifti(path: str | os.PathLike, phase_path: str | os.PathLike | None = None,
               study_id: str | None = None) -> Study:
    """Open a NIfTI magnitude volume (and its phase volume) as an image-domain :class:`Study`.

    ``path``: ``.nii`` / ``.nii.gz``, 3-D (X, Y, S), slices along the last axis.
    ``phase_path``: optional phase volume of the same shape; when None, a sibling
    ``<stem>_phase.nii[.gz]`` is paired automatically. ``study_id`` defaults to the stem.
    Raises :class:`StudyReadError` (file and reason) for unreadable files, wrong rank or
    mismatched phase shape. Slices read as ``{"magnitude": (X, Y) float32}`` plus ``"phase"``
    (X, Y) float32 radians when paired.
    """
    path = Path(path)
    img, shape = _load(path)
    notes = ["slices along the last axis of the volume (no reorientation)"]
    auto = False
    if phase_path is None:
        phase_path = phase_sibling(path)
        auto = phase_path is not None
    phase_scale = None
    if phase_path is not None:
        phase_path = Path(phase_path)
        pimg, pshape = _load(phase_path)
        if pshape != shape:
            raise StudyReadError(phase_path, f"phase volume shape {pshape} differs from magnitude {shape} ({path.name})")
        probe = NiftiSliceReader(str(phase_path), None, None)._slice(str(phase_path), shape[2] // 2)
        phase_scale, how = _phase_scale(phase_path, probe)
        notes.append(("phase paired automatically from " if auto else "phase from ") + phase_path.name)
        notes.append(how)
    else:
        notes.append("no phase volume: phase modality missing")
    tags: dict[str, Any] = {"image_shape": [shape[0], shape[1]]}
    try:
        zooms = [float(z) for z in img.header.get_zooms()[:3]]
        if all(z > 0 for z in zooms):
            tags["voxel_size_mm"] = zooms
    except Exception:  # header without usable zooms: leave the tag out
        pass
    reader = NiftiSliceReader(str(path), None if phase_path is None else str(phase_path), phase_scale)
    return Study(
        study_id=study_id or nifti_stem(path),
        source=path,
        format="nifti",
        domain="image",
        n_slices=shape[2],
        modalities=("magnitude", "phase") if phase_path is not None else ("magnitude",),
        slice_reader=reader,
        tags=tags,
        notes=notes,
    )
