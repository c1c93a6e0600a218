"""`i2m2-med inspect PATH`: what the project sees in a study or a folder of studies.

For each study found (:func:`i2m2_med.io.discover.discover`): format, number of slices, the
shape of one slice (k-space (640, W) / (C, 640, W), or image (H, W)), modalities present and
missing, acquisition tags, the tabular feature vector (:mod:`i2m2_med.data.tabular`, with the
study's row of a clinical CSV), labels from a fastMRI+ CSV, the reader's notes; then the files
that could not be read, with their reasons. For a cohort folder the labels and the clinical CSV
are found as ``train`` and ``diagnose`` find them (``annotations/knee.csv``, ``tabular.csv``)
unless others are named; a tag the clinical row provides is not listed as missing.

The middle slice of every study is read as a check (a corrupt chunk or NaN/Inf there makes the
study a problem); the other slices are not loaded.

Privacy, by the rules of ``diagnose``: study and patient ids are shown hashed
(:func:`i2m2_med.privacy.hash_id`: 16 hex digits of their sha256, keyed by ``I2M2_ID_SALT`` when
it is set) unless ``--keep-ids``; every path is shown relative to the inspected path and scrubbed
by :func:`i2m2_med.privacy.scrub` with what any study found reveals (patient ids, the parts of a
DICOM patient's name, read only for that, NIfTI names) and calendar dates.

``--json`` prints the same content as one JSON object::

    {"path": str, "studies": [ {study...} ], "problems": [{"path", "reason"}],
     "skipped": [{"path", "reason"}], "summary": {"studies", "problems", "skipped"},
     "annotations": str | null, "clinical": str | null}

Exit codes: 0 every study file was read; 1 the path does not exist or nothing readable was
found; 2 some files failed (the others are reported).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from i2m2_med.atomic import json_safe
from i2m2_med.data.layout import CLINICAL_CSV, annotation_paths
from i2m2_med.data.layout import clinical_row as clinical_row_of
from i2m2_med.data.tabular import merged_tags, read_clinical_csv, tabular_features
from i2m2_med.errors import AnnotationError, I2M2Error
from i2m2_med.heads import HEADS
from i2m2_med.io.discover import discover
from i2m2_med.io.series import classify_series
from i2m2_med.io.study import Study
from i2m2_med.privacy import hash_id, merge_secrets, scrub, study_secrets

#: Tags the tabular modality draws on; the ones a study lacks are listed as missing.
TABULAR_TAGS: tuple[str, ...] = (
    "age_years", "sex", "weight_kg", "bmi", "field_strength_t", "tr_ms", "te_ms", "fat_sat",
)
_ACQUISITION_TAGS: tuple[str, ...] = (
    "acquisition", "protocol", "fat_sat", "field_strength_t", "tr_ms", "te_ms", "ti_ms", "flip_angle_deg",
    "vendor", "model",
)


def _read_clinical(path: Path) -> dict[str, dict[str, Any]]:
    """The clinical table (:func:`i2m2_med.data.tabular.read_clinical_csv`); one without rows is
    refused, as a table that would match no study."""
    table = read_clinical_csv(path)
    if not table:
        raise AnnotationError(path, "clinical CSV has no rows")
    return table


def _read_annotations(path: Path) -> Any:
    from i2m2_med.io.annotations import read_fastmri_plus

    csv, listing = annotation_paths(path.parent, path)
    return read_fastmri_plus(csv, listing)


def _labels(study: Study, table: Any) -> dict[str, Any]:
    from i2m2_med.io.annotations import annotated_files, slice_labels

    if study.study_id not in annotated_files(table):
        return {"known": False, "reason": "not among the annotated volumes"}
    try:
        per_slice = slice_labels(table, study.study_id, study.n_slices)
    except AnnotationError as exc:
        return {"known": False, "reason": exc.reason}
    return {
        "known": True,
        "volume": {h: bool(per_slice[:, j].any()) for j, h in enumerate(HEADS)},
        "positive_slices": {h: [int(i) for i in np.flatnonzero(per_slice[:, j])] for j, h in enumerate(HEADS)},
    }


def _slice_shape(study: Study, sample: dict[str, np.ndarray]) -> dict[str, Any]:
    if study.domain == "kspace":
        return {"kspace_shape": list(sample["kspace"].shape)}
    first = sample.get("magnitude", sample.get("phase"))
    return {"image_shape": list(first.shape)}


def _tabular(study: Study, clinical_row: Mapping[str, Any] | None) -> dict[str, Any]:
    vector, names = tabular_features(study.tags, clinical_row)
    vector = np.asarray(vector, dtype=np.float64).ravel()
    return {"available": True, "names": list(names), "values": [float(v) for v in vector]}


def summarise(study: Study, *, annotations: Any | None = None, clinical: dict[str, dict[str, Any]] | None = None,
              keep_ids: bool = True, source: str | None = None, clean: Any = str) -> dict[str, Any]:
    """One study as a JSON-ready dict (see the module docstring). Reads the middle slice;
    raises :class:`I2M2Error` when that fails. The clinical row is found as ``diagnose`` and
    training find it (:func:`i2m2_med.data.layout.clinical_row`)."""
    middle = study.n_slices // 2
    sample = study.read_slice(middle)
    tags = study.tags
    clinical_row = None if clinical is None else clinical_row_of(clinical, study)
    provided = merged_tags(tags, clinical_row)
    missing_tags = [k for k in TABULAR_TAGS if k not in provided]
    entry: dict[str, Any] = {
        "study_id": study.study_id if keep_ids else hash_id(study.study_id),
        "source": str(study.source) if source is None else source,
        "format": study.format,
        "domain": study.domain,
        "slices": study.n_slices,
        **_slice_shape(study, sample),
        "checked_slice": middle,
        "modalities": list(study.modalities),
        "missing": {"modalities": study.missing_modalities, "tags": missing_tags},
        "patient": None if study.patient_id is None else (str(study.patient_id) if keep_ids else hash_id(study.patient_id)),
        "acquisition": {k: tags[k] for k in _ACQUISITION_TAGS if k in tags},
        "tags": {k: clean(v) if isinstance(v, str) else v for k, v in tags.items()},
        "tabular": _tabular(study, clinical_row),
        "labels": None if annotations is None else _labels(study, annotations),
        "notes": [clean(n) for n in study.notes],
        "series": classify_series(tags).to_dict(),
    }
    if study.domain == "kspace":
        entry["n_coils"] = int(tags.get("n_coils", 1))
    if clinical is not None:
        entry["clinical_row"] = clinical_row is not None
        if clinical_row is None:
            entry["missing"]["clinical"] = True
    return json_safe(entry)


def _shown(path: Path | str, root: Path, secrets: Any) -> str:
    """A path as inspect shows it: relative to the inspected path (its name for the path itself),
    scrubbed."""
    p = Path(path)
    base = root if root.is_dir() else root.parent
    try:
        rel = p.resolve().relative_to(base.resolve()).as_posix()
    except (ValueError, OSError):
        rel = p.name
    return scrub(rel if rel not in ("", ".") else p.name, secrets)


def inspect_path(path: str | Path, annotations: str | Path | None = None,
                 clinical: str | Path | None = None, keep_ids: bool = False) -> dict[str, Any]:
    """Discover and summarise everything under ``path``; the JSON document of the module docstring.

    Raises :class:`I2M2Error` when ``path`` does not exist or an annotation / clinical file
    cannot be read.
    """
    path = Path(path)
    if annotations is None and path.is_dir():  # a cohort folder's own labels, as train and diagnose read them
        annotations = annotation_paths(path, None)[0]
    if clinical is None and path.is_dir() and (path / CLINICAL_CSV).is_file():
        clinical = path / CLINICAL_CSV
    table = None if annotations is None else _read_annotations(Path(annotations))
    clinical_rows = None if clinical is None else _read_clinical(Path(clinical))
    found = discover(path)
    secrets = merge_secrets(study_secrets(s, keep_ids) for s in found.studies)

    def clean(text: Any) -> str:
        return scrub(str(text).replace(str(path.resolve()), ".").replace(str(path), "."), secrets)

    studies, problems = [], [(_shown(p, path, secrets), clean(r)) for p, r in found.problems]
    for study in found.studies:
        try:
            studies.append(summarise(study, annotations=table, clinical=clinical_rows, keep_ids=keep_ids,
                                     source=_shown(study.source, path, secrets), clean=clean))
        except I2M2Error as exc:
            problems.append((_shown(exc.where or study.source, path, secrets), clean(exc.reason)))
    problems.sort()
    return {
        "path": scrub(path.resolve().name or str(path), secrets),
        "studies": studies,
        "problems": [{"path": p, "reason": r} for p, r in problems],
        "skipped": [{"path": _shown(p, path, secrets), "reason": clean(r)} for p, r in found.skipped],
        "summary": {"studies": len(studies), "problems": len(problems), "skipped": len(found.skipped)},
        "annotations": None if annotations is None else _shown(annotations, path, secrets),
        "clinical": None if clinical is None else _shown(clinical, path, secrets),
    }


def exit_code(report: dict[str, Any]) -> int:
    """0 all read; 1 nothing readable; 2 some files failed."""
    if not report["studies"]:
        return 1
    return 2 if report["problems"] else 0


# ---- rendering ------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value) if all(isinstance(v, int) for v in value) else ", ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)


def _labels_text(labels: dict[str, Any] | None) -> str:
    if labels is None:
        return "no annotations given"
    if not labels["known"]:
        return f"unknown ({labels['reason']})"
    parts = []
    for h in HEADS:
        positives = labels["positive_slices"][h]
        parts.append(f"{h}: {'positive' if labels['volume'][h] else 'negative'}"
                     + (f" (slices {', '.join(str(i) for i in positives)})" if positives else ""))
    return "; ".join(parts)


def _tabular_text(tab: dict[str, Any]) -> str:
    return ", ".join(f"{n}={v:.4g}" for n, v in zip(tab["names"], tab["values"]))


def render(report: dict[str, Any], console: Any) -> None:
    """Rich tables of the report: an overview, a detail table per study, problems, skipped."""
    from rich.table import Table

    overview = Table(title=f"{report['summary']['studies']} studies in {report['path']}", show_lines=False)
    for col in ("study", "format", "slices", "shape", "series", "modalities", "missing", "labels"):
        overview.add_column(col, overflow="fold")
    for s in report["studies"]:
        shape = s.get("kspace_shape") or s.get("image_shape")
        missing = s["missing"]["modalities"]
        series = s.get("series") or {}
        overview.add_row(
            s["study_id"], s["format"], str(s["slices"]),
            ("k-space " if s["domain"] == "kspace" else "image ") + _fmt(shape),
            series.get("label", "-") + ("" if series.get("is_model_series", True) else " (not read by the model)"),
            ", ".join(s["modalities"]), ", ".join(missing) or "-",
            "-" if s["labels"] is None else ("known" if s["labels"]["known"] else "unknown"),
        )
    console.print(overview)
    for s in report["studies"]:
        detail = Table(title=f"{s['study_id']}", show_header=False, show_lines=False)
        detail.add_column("field", style="bold", no_wrap=True)
        detail.add_column("value", overflow="fold")
        detail.add_row("source", s["source"])
        detail.add_row("format / domain", f"{s['format']} / {s['domain']}")
        series = s.get("series") or {}
        if series:
            detail.add_row("series", series["label"] + (f" -- {series['reason']}" if series.get("reason") else
                                                        " -- the series the model reads"))
        detail.add_row("slices", f"{s['slices']} (slice {s['checked_slice']} read as a check)")
        if "kspace_shape" in s:
            detail.add_row("k-space shape", f"{_fmt(s['kspace_shape'])} per slice, {s['n_coils']} coil(s)")
        else:
            detail.add_row("image shape", _fmt(s["image_shape"]))
        detail.add_row("modalities", ", ".join(s["modalities"]))
        detail.add_row("missing modalities", ", ".join(s["missing"]["modalities"]) or "none")
        detail.add_row("missing tags", ", ".join(s["missing"]["tags"]) or "none")
        if "clinical_row" in s:
            detail.add_row("clinical row", "found" if s["clinical_row"] else "missing")
        detail.add_row("patient (hashed)", s["patient"] or "unknown")
        detail.add_row("acquisition", _fmt(s["acquisition"]) or "unknown")
        detail.add_row("tags", _fmt(s["tags"]) or "none")
        detail.add_row("tabular", _tabular_text(s["tabular"]))
        detail.add_row("labels", _labels_text(s["labels"]))
        for i, note in enumerate(s["notes"]):
            detail.add_row("notes" if i == 0 else "", note)
        console.print(detail)
    if report["problems"]:
        problems = Table(title=f"{len(report['problems'])} file(s) could not be read", style="red")
        problems.add_column("path", overflow="fold")
        problems.add_column("reason", overflow="fold")
        for p in report["problems"]:
            problems.add_row(p["path"], p["reason"])
        console.print(problems)
    if report["skipped"]:
        skipped = Table(title=f"{len(report['skipped'])} file(s) skipped (not studies)")
        skipped.add_column("path", overflow="fold")
        skipped.add_column("reason", overflow="fold")
        for p in report["skipped"]:
            skipped.add_row(p["path"], p["reason"])
        console.print(skipped)
    if not report["studies"]:
        console.print(f"no readable study found in {report['path']}")


def run(path: str | Path, as_json: bool = False, annotations: str | Path | None = None,
        clinical: str | Path | None = None, keep_ids: bool = False) -> int:
    """Print the summary of ``path`` (rich tables, or JSON with ``as_json``) and return the exit
    code: 0 all read, 1 path missing or nothing readable, 2 some files failed.

    A missing ``path`` or an unreadable annotation / clinical file raises :class:`I2M2Error`
    (the command line prints it as one line and exits 1).
    """
    report = inspect_path(path, annotations=annotations, clinical=clinical, keep_ids=keep_ids)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        from rich.console import Console

        console = Console(width=None if sys.stdout.isatty() else 200, soft_wrap=False)
        render(report, console)
    return exit_code(report)
