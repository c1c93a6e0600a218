"""NIfTI volumes (nibabel) as image-domain studies: a magnitude volume, optionally a phase one.

Conventions:

* The volume is 3-D (X, Y, Z); a 2-D image is one slice; a 4-D volume is accepted only when its
  4th axis has length 1.
* Orientation (:mod:`i2m2_med.io.orientation`, from the affine nibabel reports: the sform, else
  the qform): a **coronal** volume is read in the training orientation -- row index towards the
  head, column index towards the patient's right, slices anterior to posterior -- whatever the
  order and direction of its stored axes (rows and columns swapped and / or reversed, slices
  read in reverse; voxels are only moved, never interpolated). Slices run along the last axis,
  or along another axis when that one runs anterior-posterior with the largest voxel size (a
  coronal acquisition stored with its slices elsewhere, as RAS-canonical tools write it).
  Anything else -- another plane, an axis 45 degrees or more from every patient axis, a header
  without sform and qform, a zero or singular affine -- is read as stored: slice ``k`` is
  ``data[:, :, k]`` with axis 0 as rows and axis 1 as columns. A note says which; the
  ``image_directions`` tag gives the anatomical directions of rows and columns when known.
* ``scl_slope`` / ``scl_inter`` are applied by nibabel. Values are read slice by slice through
  nibabel's array proxy (the volume is never loaded whole).
* Phase: when ``phase_path`` is not given, a sibling named ``<stem>_phase.nii.gz`` (or
  ``.nii``) is used if it exists. Phase must have the magnitude's shape. Its unit is decided
  once from the middle slice: values within [-pi, pi] are radians; otherwise, when within
  [-4096, 4096], they are Siemens-style scaled phase (as dcm2niix writes it: -4096..4094 is
  -pi..pi) and mapped by ``v * pi / 4096``; anything else is an error. The choice is noted.
* The phase volume is read like the magnitude: the orientation of its own affine when its header
  has one (a phase whose affine describes another plane than the magnitude's is an error), else
  the magnitude's.
* NIfTI carries no patient or sequence tags; ``tags`` holds the voxel size (row, column, slice)
  and image shape of the slices as read.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from i2m2_med.errors import StudyReadError
from i2m2_med.io.limits import check_regular_file, read_limits
from i2m2_med.io.orientation import VolumeLayout, volume_layout
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


def _affine(img: Any) -> tuple[np.ndarray | None, str]:
    """The voxel -> RAS+ affine nibabel uses (sform, else qform), None when the header sets
    neither (nibabel would make one up from the voxel sizes), with the reason."""
    header = img.header
    try:
        if hasattr(header, "get_sform"):
            if not header.get_sform(coded=True)[1] and not header.get_qform(coded=True)[1]:
                return None, "the header sets neither sform nor qform"
        affine = img.affine
    except Exception as exc:  # a damaged quaternion or matrix
        return None, f"unreadable affine ({type(exc).__name__})"
    return (None, "no affine") if affine is None else (np.asarray(affine, dtype=float), "")


def _layout(img: Any, shape: tuple[int, int, int]) -> VolumeLayout:
    affine, why = _affine(img)
    layout = volume_layout(affine, why)
    if layout.slice_axis != 2 and (len(img.shape) == 2 or shape[2] == 1):  # one 2-D image: never resliced
        layout = volume_layout(None, "a single 2-D image")
    return layout


def _slice_shape(layout: VolumeLayout, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(slices, rows, columns) of the volume read with ``layout``."""
    a, b = layout.in_plane_axes
    return (shape[layout.slice_axis], *layout.rule.in_plane.shape(shape[a], shape[b]))


class NiftiSliceReader:
    """Reads slice ``k`` of the magnitude and, if any, phase volume, oriented by each volume's
    :class:`~i2m2_med.io.orientation.VolumeLayout` (None: the last axis, as stored).

    Picklable: holds paths, and reopens the (lazy) nibabel images in each process.
    """

    def __init__(self, magnitude: str, phase: str | None, phase_scale: float | None,
                 layout: VolumeLayout | None = None, phase_layout: VolumeLayout | None = None):
        self.magnitude = magnitude
        self.phase = phase
        self.phase_scale = phase_scale  # radians per stored unit; None: already radians
        self.layouts = {magnitude: layout}
        if phase is not None:
            self.layouts[phase] = phase_layout if phase_layout is not None else layout
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
            layout = self.layouts.get(path)
            axis = 2 if layout is None else layout.slice_axis
            stored = index
            if layout is not None and layout.rule.reverse_slices:
                stored = int(img.shape[axis]) - 1 - index
            if len(img.shape) == 2:
                arr = np.asarray(proxy)
            else:
                key: list[Any] = [slice(None)] * len(img.shape)
                key[axis] = stored
                if len(img.shape) == 4:
                    key[3] = 0
                arr = np.asarray(proxy[tuple(key)])
        except Exception as exc:
            raise StudyReadError(path, f"slice {index}: cannot read ({type(exc).__name__}: {exc})") from None
        if layout is not None:
            arr = layout.rule.in_plane.apply(arr)
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

    ``path``: ``.nii`` / ``.nii.gz``, 3-D; a coronal volume is read in the training orientation
    from its affine, anything else as stored with slices along the last axis (see the module).
    ``phase_path``: optional phase volume of the same shape; when None, a sibling
    ``<stem>_phase.nii[.gz]`` is paired automatically. ``study_id`` defaults to the stem.
    Raises :class:`StudyReadError` (file and reason) for unreadable files, wrong rank or
    mismatched phase shape or orientation. Slices read as ``{"magnitude": (H, W) float32}`` plus
    ``"phase"`` (H, W) float32 radians when paired.
    """
    path = Path(path)
    img, shape = _load(path)
    layout = _layout(img, shape)
    n_slices, rows, cols = _slice_shape(layout, shape)
    if layout.slice_axis != 2:
        a, b = layout.in_plane_axes
        read_limits().check(str(path), slices=n_slices, matrix=(shape[a], shape[b]),
                            item_bytes=max(4, np.dtype(img.get_data_dtype()).itemsize))
    notes = [(layout.why_axis or "slices along the last axis of the volume")
             + (", read in reverse order (anterior to posterior)" if layout.rule.reverse_slices else ""),
             layout.rule.note]
    phase_layout = None
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
        phase_layout = _layout(pimg, pshape)
        if phase_layout.rule.plane == "unknown":
            phase_layout = layout
            notes.append("phase volume without usable orientation: read like the magnitude")
        elif phase_layout.rule.canonical != layout.rule.canonical or _slice_shape(phase_layout, pshape) != (n_slices, rows, cols):
            raise StudyReadError(phase_path, f"phase volume's affine describes other slices than the magnitude's "
                                             f"({phase_layout.rule.note}; magnitude: {layout.rule.note})")
        elif phase_layout != layout:
            notes.append(f"phase volume stored in another orientation: {phase_layout.rule.note}")
        probe = NiftiSliceReader(str(phase_path), None, None, phase_layout)._slice(str(phase_path), n_slices // 2)
        phase_scale, how = _phase_scale(phase_path, probe)
        notes.append(("phase paired automatically from " if auto else "phase from ") + phase_path.name)
        notes.append(how)
    else:
        notes.append("no phase volume: phase modality missing")
    tags: dict[str, Any] = {"image_shape": [rows, cols]}
    if layout.rule.directions is not None:
        tags["image_directions"] = list(layout.rule.directions)
    try:
        zooms = [float(z) for z in img.header.get_zooms()[:3]]
        a, b = layout.in_plane_axes if len(zooms) == 3 else (0, 1)
        pixel = [zooms[a], zooms[b]][:: -1 if layout.rule.in_plane.transpose else 1]
        zooms = [*pixel, zooms[layout.slice_axis]] if len(zooms) == 3 else pixel  # as read: (row, column, slice)
        if all(z > 0 for z in zooms):
            tags["voxel_size_mm"] = zooms
    except Exception:  # header without usable zooms: leave the tag out
        pass
    reader = NiftiSliceReader(str(path), None if phase_path is None else str(phase_path), phase_scale, layout,
                              phase_layout)
    return Study(
        study_id=study_id or nifti_stem(path),
        source=path,
        format="nifti",
        domain="image",
        n_slices=n_slices,
        modalities=("magnitude", "phase") if phase_path is not None else ("magnitude",),
        slice_reader=reader,
        tags=tags,
        notes=notes,
    )
