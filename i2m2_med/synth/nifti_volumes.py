"""NIfTI volumes of a synthetic acquisition: ``nifti/<study_id>.nii.gz`` (magnitude) and
``nifti/<study_id>_phase.nii.gz`` (phase, radians, float32).

Data are (320, 320, S) float32 with ``data[:, :, k]`` = slice k in the orientation of the h5
reconstruction (axis 0 = rows, row 0 inferior; axis 1 = columns), the magnitude equal to
``reconstruction_esc`` / ``_rss``. The affine (RAS+, mm) matches the DICOM geometry of
:mod:`i2m2_med.synth.dicom_series` (see :func:`affine`).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from i2m2_med.atomic import atomic_path
from i2m2_med.synth.volume import Acquisition


def affine(n_rows: int, n_slices: int, pixel_mm: float, spacing_mm: float) -> np.ndarray:
    """Voxel (i row, j column, k slice) -> RAS+ mm (4, 4) for the DICOM geometry of the series:
    LPS position of voxel (i, j, k) = (half - j ps, y0 + k sp, -half + i ps), i.e. a column step
    towards the patient's right, a row step towards the head, a slice step posterior."""
    half = (n_rows / 2.0 - 0.5) * pixel_mm
    y0 = -(n_slices - 1) / 2.0 * spacing_mm
    a = np.zeros((4, 4))
    # RAS = (-x_LPS, -y_LPS, z_LPS)
    a[0, 1] = pixel_mm          # RAS x = -(half - j ps) = -half + j ps
    a[1, 2] = -spacing_mm       # RAS y = -(y0 + k sp)
    a[2, 0] = pixel_mm          # RAS z = -half + i ps
    a[:3, 3] = (-half, -y0, -half)
    a[3, 3] = 1.0
    return a


def write_nifti(out_dir: Path, acq: Acquisition) -> tuple[Path, Path]:
    """Write magnitude and phase NIfTI volumes of ``acq``; returns their paths."""
    folder = out_dir / "nifti"
    aff = affine(acq.reconstruction.shape[1], acq.n_slices, acq.pixel_mm, acq.slice_thickness_mm)
    mag = np.ascontiguousarray(np.transpose(acq.reconstruction, (1, 2, 0))).astype(np.float32)
    ph = np.ascontiguousarray(np.transpose(np.angle(acq.image), (1, 2, 0))).astype(np.float32)
    paths = []
    for name, data in ((f"{acq.study_id}.nii.gz", mag), (f"{acq.study_id}_phase.nii.gz", ph)):
        img = nib.Nifti1Image(data, aff)
        img.header.set_xyzt_units("mm")
        img.header["descrip"] = b"i2m2-med synthetic knee" + (b" phase rad" if "phase" in name else b" magnitude")
        path = folder / name
        # gzip level 1 and mtime 0: fast, and the same seed gives the same bytes
        with atomic_path(path) as tmp:
            tmp.write_bytes(gzip.compress(img.to_bytes(), compresslevel=1, mtime=0))
        paths.append(path)
    return paths[0], paths[1]
