"""The orientation the models read, and how a stored DICOM or NIfTI slice is brought to it.

The **training orientation** is that of the fastMRI knee reconstructions (as the synthetic
generator writes them in every format): coronal slices with

* increasing **row** index towards the patient's **superior** (head) side -- row 0 is the
  inferior edge (+z in DICOM's LPS patient coordinates);
* increasing **column** index towards the patient's **right** (-x in LPS);
* slices ordered **anterior to posterior** (+y in LPS).

In DICOM terms that is ``ImageOrientationPatient`` = [-1, 0, 0, 0, 0, 1] with the slices sorted
along +y; in NIfTI (RAS+) terms the voxel axes (row, column, slice) point to S, R and P.

The rule (:func:`reorientation`): each stored axis -- rows, columns, slices -- is matched to the
patient axis it runs closest to. When the slice axis runs along anterior-posterior (a
**coronal** series, the model's plane) and each of the three axes lies within 45 degrees of a
different patient axis, the slices are brought to the training orientation: rows and columns
swapped when the rows run left-right, then rows and/or columns reversed, and the slice order
reversed when the stored slices run posterior to anterior. Every other case is left exactly as
stored, with a note saying why: another plane (sagittal, axial: the model does not read them,
and the labels of the viewer still come from the geometry), an axis 45 degrees or more from
every patient axis, or no usable geometry (DICOM without ``ImageOrientationPatient``, a NIfTI
whose affine is zero, singular or not set). The transform is a pure permutation of pixels:
values are never interpolated, so a series stored flipped or transposed reads back exactly.

The anatomical letters are those of the patient's directions: L / R (left, right), A / P
(anterior, posterior), S / I (superior, inferior). :attr:`Reorientation.directions` gives, for
the slices as read, the direction in which the row index and the column index increase
(``("S", "R")`` in the training orientation); the viewer labels the image edges from it.

The readers (:mod:`i2m2_med.io.dicom`, :mod:`i2m2_med.io.nifti`) call this module; nothing else
holds an orientation rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

CANONICAL_IOP: tuple[float, ...] = (-1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
"""``ImageOrientationPatient`` of a slice in the training orientation."""
CANONICAL_DIRECTIONS: tuple[str, str] = ("S", "R")
"""Where the row index and the column index increase in the training orientation."""
MAX_OBLIQUE_DEG = 45.0
"""An axis this far (or further) from every patient axis has no anatomical direction."""

_COS_LIMIT = math.cos(math.radians(MAX_OBLIQUE_DEG)) + 1e-9
_PLANES = ("sagittal", "coronal", "axial")  # by the patient axis the slices are stacked along
_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))  # LPS axis -> (positive, negative) direction
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
_TRAINING = "rows inferior to superior, columns towards the patient's right, slices anterior to posterior"


def opposite(letter: str) -> str:
    """The opposite anatomical direction: ``"S"`` -> ``"I"``."""
    return _OPPOSITE[letter]


@dataclass(frozen=True)
class InPlane:
    """A flip / transpose of a 2-D slice: rows and columns swapped first (``transpose``), then
    the row order reversed (``flip_rows``) and the column order reversed (``flip_cols``)."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    @property
    def identity(self) -> bool:
        return not (self.transpose or self.flip_rows or self.flip_cols)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The slice ``image`` (H, W) transformed, as a new contiguous array."""
        out = image.T if self.transpose else image
        if self.flip_rows:
            out = out[::-1]
        if self.flip_cols:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)

    def shape(self, rows: int, cols: int) -> tuple[int, int]:
        """(rows, columns) of a ``rows`` x ``cols`` slice once transformed."""
        return (cols, rows) if self.transpose else (rows, cols)

    def describe(self) -> str:
        parts = [text for done, text in ((self.transpose, "rows and columns swapped"),
                                         (self.flip_rows, "rows reversed"), (self.flip_cols, "columns reversed")) if done]
        return ", ".join(parts) or "pixels as stored"


AS_STORED = InPlane()


@dataclass(frozen=True)
class Reorientation:
    """What the rule decided for one stored series.

    ``in_plane``: the transform of every slice; ``reverse_slices``: read the stored slices in
    reverse order; ``canonical``: the slices as read are in the training orientation;
    ``plane``: sagittal / coronal / axial / unknown; ``directions``: where the row and the
    column index of the slices as read increase (anatomical letters), None when unknown;
    ``note``: one line for the study's notes (about the images; the reader says how it orders
    the slices)."""

    in_plane: InPlane
    reverse_slices: bool
    canonical: bool
    plane: str
    directions: tuple[str, str] | None
    note: str


def _unit(v: Sequence[float]) -> np.ndarray | None:
    a = np.asarray(v, dtype=float)
    if a.shape != (3,) or not np.isfinite(a).all():
        return None
    n = float(np.linalg.norm(a))
    return a / n if n > 1e-6 else None


def _axis(v: np.ndarray) -> tuple[int, bool]:
    """(patient axis the unit vector runs closest to, whether within 45 degrees of it)."""
    i = int(np.argmax(np.abs(v)))
    return i, bool(abs(v[i]) > _COS_LIMIT)


def letter(v: Sequence[float]) -> str | None:
    """The anatomical direction (L R A P S I) of an LPS vector, None beyond 45 degrees of every
    patient axis (or for a zero / non-finite vector)."""
    u = _unit(v)
    if u is None:
        return None
    i, near = _axis(u)
    if not near:
        return None
    return _LETTERS[i][0] if u[i] > 0 else _LETTERS[i][1]


def _unknown(why: str) -> Reorientation:
    return Reorientation(AS_STORED, False, False, "unknown", None, f"orientation unknown ({why}): images left as stored")


def reorientation(row_dir: Sequence[float], col_dir: Sequence[float], slice_dir: Sequence[float]) -> Reorientation:
    """The rule for a stored series, from the LPS directions in which its row index, column index
    and slice index increase (any lengths; the three must be independent)."""
    units = [_unit(v) for v in (row_dir, col_dir, slice_dir)]
    if any(u is None for u in units):
        return _unknown("a zero or non-finite direction")
    row, col, sl = units  # type: ignore[misc]
    if abs(float(np.linalg.det(np.stack([row, col, sl])))) < 1e-3:
        return _unknown("the row, column and slice directions are not independent")
    axes = [_axis(u) for u in (row, col, sl)]
    plane = _PLANES[axes[2][0]]
    straight = all(near for _, near in axes) and len({i for i, _ in axes}) == 3
    directions = (letter(row), letter(col)) if straight else None
    if plane != "coronal":
        return Reorientation(AS_STORED, False, False, plane, directions,
                             f"{plane} slices (the model reads coronal ones): images left as stored")
    if not straight:
        return Reorientation(AS_STORED, False, False, plane, None,
                             f"coronal slices oblique by {MAX_OBLIQUE_DEG:g} degrees or more: images left as stored")
    transpose = axes[0][0] == 0  # rows run left-right: swap rows and columns
    new_row, new_col = (col, row) if transpose else (row, col)
    in_plane = InPlane(transpose, bool(new_row[2] < 0), bool(new_col[0] > 0))
    reverse = bool(sl[1] < 0)
    if in_plane.identity:
        note = f"coronal images stored in the training orientation ({_TRAINING})"
    else:
        note = f"coronal images brought to the training orientation ({_TRAINING}): {in_plane.describe()}"
    return Reorientation(in_plane, reverse, True, plane, CANONICAL_DIRECTIONS, note)


def dicom_reorientation(iop: Sequence[float] | None) -> Reorientation:
    """The rule for a DICOM series from its ``ImageOrientationPatient`` (row cosine: the direction
    of increasing column index; column cosine: of increasing row index). The slice direction is
    their cross product, the normal the reader sorts ``ImagePositionPatient`` along;
    ``reverse_slices`` says that the canonical order is the reverse of that sort."""
    if iop is None or len(iop) != 6:
        return _unknown("no ImageOrientationPatient")
    o = np.asarray(iop, dtype=float)
    if not np.isfinite(o).all():
        return _unknown("ImageOrientationPatient is not finite")
    r, c = _unit(o[:3]), _unit(o[3:])
    if r is None or c is None or abs(float(np.dot(r, c))) > 0.05:
        return _unknown("ImageOrientationPatient cosines are zero or not perpendicular")
    return reorientation(c, r, np.cross(r, c))


def slice_direction(iop: Sequence[float]) -> np.ndarray | None:
    """The LPS direction DICOM slices are ordered along: the normal (row x column cosine), turned
    to anterior -> posterior when the rule reorients the series. None without a usable normal."""
    o = np.asarray(iop, dtype=float)
    if o.shape != (6,) or not np.isfinite(o).all():
        return None
    normal = np.cross(o[:3], o[3:])
    if not np.linalg.norm(normal) > 0:
        return None
    return -normal if dicom_reorientation(iop).reverse_slices else normal


@dataclass(frozen=True)
class VolumeLayout:
    """How the slices of a 3-D volume (NIfTI) are read: ``slice_axis`` (0, 1 or 2) and the two
    remaining voxel axes ``in_plane_axes`` (rows, columns of a stored slice, in axis order),
    ``rule`` the :class:`Reorientation` of those slices, and ``why_axis`` when the slice axis is
    not the last one."""

    slice_axis: int
    in_plane_axes: tuple[int, int]
    rule: Reorientation
    why_axis: str | None = None


def _layout(axis: int, rule: Reorientation, why: str | None = None) -> VolumeLayout:
    rest = tuple(a for a in range(3) if a != axis)
    return VolumeLayout(axis, (rest[0], rest[1]), rule, why)


def volume_layout(affine: np.ndarray | None, why_unknown: str = "no affine") -> VolumeLayout:
    """The slice layout of a 3-D volume from its voxel -> RAS+ mm ``affine`` (4, 4).

    Slices run along the last voxel axis, unless another axis runs anterior-posterior (within 45
    degrees) and has the largest voxel size of the three: that is a coronal acquisition stored
    with its slices elsewhere (as RAS-canonical tools write it), read along that axis. With no
    affine, or one that is zero, singular or not finite, slices run along the last axis as
    stored."""
    if affine is None:
        return _layout(2, _unknown(why_unknown))
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        return _layout(2, _unknown("the affine is not a finite 4 x 4 matrix"))
    m = a[:3, :3]
    sizes = np.linalg.norm(m, axis=0)
    if sizes.min() <= 1e-6 or abs(float(np.linalg.det(m))) <= 1e-6 * float(np.prod(sizes)):
        return _layout(2, _unknown("the affine is zero or singular"))
    lps = m * np.array([[-1.0], [-1.0], [1.0]])  # RAS -> LPS: x and y change sign
    dirs = [lps[:, k] for k in range(3)]
    axis, why = 2, None
    ap = [k for k in range(3) if _axis(dirs[k] / sizes[k]) == (1, True)]
    if ap and ap[0] != 2:
        k = ap[0]
        others = [sizes[j] for j in range(3) if j != k]
        if sizes[k] > 1.01 * max(others):
            axis = k
            why = (f"slices read along voxel axis {k} (anterior-posterior, the largest voxel size "
                   f"{sizes[k]:.3g} mm): a coronal volume stored with its slices on another axis")
    rows, cols = (j for j in range(3) if j != axis)
    return _layout(axis, reorientation(dirs[rows], dirs[cols], dirs[axis]), why)
