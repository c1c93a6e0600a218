"""Writers of the cohort's files: fastMRI h5 volumes and the tables beside them.

Layout of OUT_DIR (all files written atomically)::

    h5/<study_id>.h5               fastMRI knee layout (see i2m2_med.io.fastmri_h5)
    annotations/knee.csv           fastMRI+ format, flipped-y convention, exact label strings
    annotations/knee_file_list.csv every generated volume (reviewed: a volume without rows is normal)
    tabular.csv                    study_id + clinical columns (i2m2_med.synth.subject.TABULAR_COLUMNS)
    splits.csv                     study_id, subject_id, split (train / val / test, by subject)
    slice_labels.csv               study_id, slice, <head>_true and <head> (as annotated) per head
    episodes.csv                   per episode: class, head, finding or mimic, cues shown, slices
    manifest.json                  seed, regime, label noise, counts, prevalences, ceilings, version
    dicom/<study_id>/{magnitude,phase}/*.dcm   with dicom=True
    nifti/<study_id>.nii.gz, <study_id>_phase.nii.gz                     with nifti=True
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from i2m2_med.atomic import write_json, write_text
from i2m2_med.heads import HEADS
from i2m2_med.io.annotations import write_fastmri_plus
from i2m2_med.io.fastmri_h5 import write_fastmri_h5
from i2m2_med.synth.volume import Acquisition

H5_DIR = "h5"
ANNOTATIONS_DIR = "annotations"


def h5_path(out_dir: Path, study_id: str) -> Path:
    return out_dir / H5_DIR / f"{study_id}.h5"


def write_h5(out_dir: Path, acq: Acquisition) -> Path:
    """Write one acquisition as ``h5/<study_id>.h5`` with attrs acquisition, max, norm, patient_id."""
    path = h5_path(out_dir, acq.study_id)
    rec = acq.reconstruction
    attrs = {
        "acquisition": acq.protocol.acquisition,
        "max": float(rec.max()),
        "norm": float(np.linalg.norm(rec.astype(np.float64))),
        "patient_id": acq.subject.subject_id,
    }
    write_fastmri_h5(path, acq.kspace, acq.header, reconstruction=rec, attrs=attrs)
    return path


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow(row)
    return buf.getvalue()


def write_annotations(out_dir: Path, rows: list[Mapping[str, Any]], files: Sequence[str]) -> tuple[Path, Path]:
    """``annotations/knee.csv`` and ``knee_file_list.csv`` from rows in the **image** convention
    (file, slice, x, y, width, height, label; y = top row in the stored reconstruction).

    Uses :func:`i2m2_med.io.annotations.write_fastmri_plus`, which converts to the flipped
    convention of the release (``y_csv = 320 - y - height``)."""

    csv_path = out_dir / ANNOTATIONS_DIR / "knee.csv"
    list_path = out_dir / ANNOTATIONS_DIR / "knee_file_list.csv"
    write_fastmri_plus(rows, csv_path, list_path, files=list(files))
    return csv_path, list_path


def write_table(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    write_text(path, _csv_text(header, rows))
    return path


def write_manifest(out_dir: Path, manifest: Mapping[str, Any]) -> Path:
    path = out_dir / "manifest.json"
    write_json(path, dict(manifest))
    return path


def slice_label_rows(study_id: str, true: np.ndarray, noisy: np.ndarray) -> list[list[Any]]:
    """Rows of slice_labels.csv for one study: study_id, slice, then per head true and noisy (0/1)."""
    rows = []
    for k in range(true.shape[0]):
        row: list[Any] = [study_id, k]
        for h in range(len(HEADS)):
            row += [int(true[k, h]), int(noisy[k, h])]
        rows.append(row)
    return rows


SLICE_LABEL_HEADER: tuple[str, ...] = ("study_id", "slice", *[c for h in HEADS for c in (f"{h}_true", h)])


def ensure_out_dir(out_dir: str | os.PathLike) -> Path:
    p = Path(out_dir)
    p.mkdir(parents=True, exist_ok=True)
    return p
