"""Reading the output folder of ``i2m2-med diagnose`` (``predictions.csv`` + ``studies/*.json``)
and turning one of its rows into a study reference for the viewer."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

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


# ---- ground truth and the model's operating point ---------------------------------------------------

MODEL_JSON = "model.json"
TRUTH = "truth_"


def operating_points(folder: Path) -> tuple[dict[str, float | None], dict[str, str]]:
    """The run's study-level operating points from ``OUT_DIR/model.json`` (written by ``diagnose``):
    ``({head: threshold or None}, {head: why there is none})``. A run without the file (written by
    an older version) has none, for a reason said once per head."""
    path = Path(folder) / MODEL_JSON
    thresholds: dict[str, float | None] = {h: None for h in HEADS}
    reasons: dict[str, str] = {}
    try:
        body = json.loads(path.read_text(encoding="utf-8")) if path.is_file() and path.stat().st_size < (1 << 20) else None
    except (OSError, ValueError):
        body = None
    per_head = (body.get("operating_points") or {}).get("per_head") if isinstance(body, dict) else None
    per_head = per_head if isinstance(per_head, dict) else {}
    for h in HEADS:
        entry = per_head.get(h) if isinstance(per_head.get(h), dict) else {}
        value = entry.get("threshold")
        if isinstance(value, (int, float)) and math.isfinite(float(value)):
            thresholds[h] = float(value)
        elif entry.get("reason"):
            reasons[h] = str(entry["reason"])
        else:
            reasons[h] = ("this run has no model.json (written by an older diagnose)" if body is None
                          else "no operating point stored for this head")
    return thresholds, reasons


def ground_truth(table: pd.DataFrame, cohort: Path) -> tuple[pd.DataFrame, int]:
    """``truth_<head>`` columns (True / False, NA where the annotations do not name the study) for
    the rows of ``table``, from ``cohort/annotations/knee.csv`` (and its file list: listed volumes
    without a finding are reviewed normals). A row's id is matched as written or as its hash (ids
    are hashed by default). Returns the columns and how many rows were matched; an unreadable
    annotation file raises :class:`NotARun` with its reason."""
    from i2m2_med.data.layout import annotation_paths
    from i2m2_med.errors import AnnotationError
    from i2m2_med.io.annotations import read_fastmri_plus, volume_labels
    from i2m2_med.privacy import hash_id

    csv, listing = annotation_paths(cohort, None)
    out = pd.DataFrame({f"{TRUTH}{h}": pd.Series(pd.NA, index=table.index, dtype="boolean") for h in HEADS})
    if csv is None:
        return out, 0
    try:
        labels = volume_labels(read_fastmri_plus(csv, listing))
    except AnnotationError as exc:
        raise NotARun(f"annotations not used: {exc.one_line()}") from None
    by_id: dict[str, Any] = {}
    for name, row in labels.iterrows():
        by_id[str(name)] = row
        by_id.setdefault(hash_id(str(name)), row)
    matched = 0
    for index, sid in table["study_id"].astype(str).items():
        row = by_id.get(sid)
        if row is None:
            base, _, suffix = sid.rpartition("-")
            row = by_id.get(base) if base and suffix.isdigit() else None
        if row is None:
            continue
        matched += 1
        for h in HEADS:
            out.at[index, f"{TRUTH}{h}"] = bool(row[h])
    return out, matched


def scores_at_operating_points(table: pd.DataFrame, thresholds: dict[str, float | None],
                               reasons: dict[str, str]) -> list[dict[str, Any]]:
    """Per head, over the ``ok`` rows whose truth is known: sensitivity and specificity (Wilson
    95% CIs) of ``p_<head> >= threshold`` at the model's own operating point."""
    from i2m2_med.metrics.thresholds import sens_spec

    rows: list[dict[str, Any]] = []
    for h in HEADS:
        col = f"{TRUTH}{h}"
        known = table[(table["status"] == "ok") & table[col].notna() & table[f"p_{h}"].notna()] if col in table else table.iloc[:0]
        entry: dict[str, Any] = {"head": h, "threshold": thresholds.get(h), "n": int(len(known)),
                                 "positives": int(known[col].astype(bool).sum()) if len(known) else 0}
        if thresholds.get(h) is None:
            entry["reason"] = reasons.get(h, "no operating point")
        elif not len(known):
            entry["reason"] = "no successful study with known truth"
        else:
            at = sens_spec(known[col].astype(bool).to_numpy(), known[f"p_{h}"].to_numpy(dtype=float), float(thresholds[h]))
            entry["sensitivity"], entry["specificity"] = at.sensitivity, at.specificity
        rows.append(entry)
    return rows
