"""The layout of a cohort folder, and the lookup of a study's clinical row.

::

    DIR/                     studies: fastMRI h5, DICOM series, NIfTI (found by ``discover``)
    DIR/annotations/knee.csv fastMRI+ labels (+ knee_file_list.csv beside it: reviewed volumes)
    DIR/tabular.csv          clinical table joined by study id (optional)
    DIR/splits.csv           subject-level train / val / test split (optional)
    DIR/manifest.json        what the synthetic generator wrote (optional; learnable ceilings)
    DIR/episodes.csv         the synthetic generator's episodes (optional; where each head's
                             anatomy is in view, for the in-view AUROC)
    DIR/.i2m2_cache/         the model-resolution images of the studies (:mod:`.cache`); a dot
                             folder, so discovery never walks it

Training, ``diagnose``, ``inspect`` and the app all read these names from here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from i2m2_med.data.splits import study_key
from i2m2_med.errors import AnnotationError
from i2m2_med.io.study import Study

ANNOTATIONS_CSV = Path("annotations") / "knee.csv"
FILE_LIST_NAME = "knee_file_list.csv"
CLINICAL_CSV = "tabular.csv"
SPLITS_CSV = "splits.csv"
MANIFEST_JSON = "manifest.json"
EPISODES_CSV = "episodes.csv"
TENSOR_CACHE_DIR = ".i2m2_cache"


def annotation_paths(root: Path, labels: str | os.PathLike | None) -> tuple[Path | None, Path | None]:
    """The fastMRI+ annotation CSV (``labels`` when given, else ``root/annotations/knee.csv`` when
    it exists) and the reviewed-file list beside it (None when absent)."""
    if labels is not None:
        csv = Path(labels)
        if not csv.is_file():
            raise AnnotationError(csv, "no such annotation file")
    else:
        csv = root / ANNOTATIONS_CSV
        if not csv.is_file():
            return None, None
    listing = csv.with_name(FILE_LIST_NAME)
    return csv, (listing if listing.is_file() else None)


def clinical_row(table: Mapping[str, Mapping[str, Any]] | None, study: Study) -> Mapping[str, Any] | None:
    """The clinical row of a study (:func:`i2m2_med.data.tabular.read_clinical_csv` table), looked up
    by study id, then by the name of its file, then by patient id; None when absent."""
    if not table:
        return None
    for key in (study.study_id, study_key(study.source), study.patient_id):
        if key is not None and key in table:
            return table[key]
    return None
