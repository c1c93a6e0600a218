"""Reading the output folder of ``i2m2-med diagnose`` (``predictions.csv`` + ``studies/*.json``)
and turning one of its rows into a study reference for the viewer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from i2m2_med.heads import HEADS
from viewer.paths import PathRefused, resolve_under
from viewer.sources import StudyRef, file_token, find_cohort

PREDICTIONS = "predictions.csv"
STUDIES = "studies"
LEADING = ("study_id", "source", "format", "status", "error", "n_slices", *(f"p_{h}" for h in HEADS))
MAX_RUNS = 200
MAX_DIRS = 20000


class NotARun(Exception):
    """The folder is not a ``diagnose`` output folder; ``str(exc)`` is one line for the user."""


def is_diagnose_output(folder: Path) -> bool:
    """True when ``folder`` looks like an output folder of ``diagnose``: a ``studies/`` folder and
    a ``predictions.csv`` whose header has the diagnose columns (a training run's per-slice
    ``predictions.csv`` has others). Reads the header line only."""
    folder = Path(folder)
    if not (folder / STUDIES).is_dir():
        return False
    try:
        with open(folder / PREDICTIONS, encoding="utf-8", errors="replace") as fh:
            header = fh.readline(1 << 16).strip().split(",")
    except OSError:
        return False
    return all(c in header for c in LEADING)


def find_runs(roots: Sequence[Path], depth: int = 4) -> list[Path]:
    """Output folders of ``diagnose`` under the roots (at most ``depth`` levels down); folders with
    another ``predictions.csv`` (a training run's) are left out (:func:`is_diagnose_output`)."""
    found: list[Path] = []
    seen = 0
    for root in roots:
        root = Path(root)
        base_depth = len(root.parts)
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            seen += 1
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != STUDIES)
            if len(here.parts) - base_depth >= depth:
                dirnames[:] = []
            if PREDICTIONS in filenames and is_diagnose_output(here):
                found.append(here)
            if len(found) >= MAX_RUNS or seen >= MAX_DIRS:
                return found
    return found


def read_predictions(folder: Path) -> pd.DataFrame:
    """``predictions.csv`` of a run folder with its leading columns checked and typed."""
    csv = Path(folder) / PREDICTIONS
    if not csv.is_file():
        raise NotARun(f"{Path(folder).name}: no {PREDICTIONS} here - not an output folder of i2m2-med diagnose")
    try:
        df = pd.read_csv(csv, dtype={"study_id": str, "source": str, "format": str, "status": str, "error": str},
                         keep_default_na=False, na_values={c: [""] for c in LEADING if c.startswith("p_")})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise NotARun(f"{PREDICTIONS}: not a readable table ({' '.join(str(exc).split())[:160]})") from None
    missing = [c for c in LEADING if c not in df.columns]
    if missing:
        raise NotARun(f"{PREDICTIONS}: missing column(s) {', '.join(missing)} - not written by i2m2-med diagnose")
    for c in df.columns:
        if c.startswith(("p_", "contrib_")) or c == "n_slices":
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def record_path(folder: Path, study_id: str) -> Path:
    """``studies/<study_id>.json`` of a run, checked to stay inside the run folder."""
    folder = Path(folder).resolve()
    path = (folder / STUDIES / f"{study_id}.json").resolve()
    if folder / STUDIES not in path.parents or not path.is_file():
        raise NotARun(f"no result file for study {study_id} in this run")
    return path


def study_ref(folder: Path, row: pd.Series, roots: Sequence[Path], input_dir: str = "") -> tuple[StudyRef, str | None]:
    """The reference the viewer opens for one row: the study's files when ``input_dir`` (the run's
    INPUT_DIR, inside an allowed root) is given and holds the row's source, else its JSON record
    (evidence without images). Returns ``(ref, note)``; the note says why images are missing."""
    sid = str(row["study_id"])
    record = record_path(folder, sid)
    label = f"{Path(folder).name} / {sid}"
    fallback = StudyRef("record", str(record), sid, label, record=str(record), token=file_token(record))
    if not input_dir.strip():
        return fallback, None
    try:
        base = resolve_under(roots, input_dir)
        source = resolve_under(roots, str(row.get("source") or ""), root=base if base.is_dir() else base.parent)
    except PathRefused as exc:
        return fallback, str(exc)
    from i2m2_med.io.discover import discover
    from i2m2_med.privacy import hash_id

    target = source if source.is_file() and str(row.get("format")) != "dicom" else (source if source.is_dir() else source.parent)
    try:
        found = discover(target).studies
    except Exception as exc:  # a study that no longer reads: show the record instead
        return fallback, f"the source cannot be read ({exc})"
    for study in found:
        if study.study_id == sid or hash_id(study.study_id) == sid.split("-", 1)[0] or len(found) == 1:
            cohort = find_cohort(Path(study.source), stop=base if base.is_dir() else base.parent)
            ref = StudyRef("root", str(target), study.study_id, label, cohort=str(cohort) if cohort else None,
                           record=str(record), token=file_token(target))
            return ref, None
    return fallback, "the study was not found in its source under the input folder"
