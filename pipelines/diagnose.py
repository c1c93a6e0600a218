"""`i2m2-med diagnose INPUT_DIR --out OUT_DIR`: run a model over every study of a folder.

Outputs (every file written atomically: a temporary name in the same folder, then a rename)::

    OUT_DIR/predictions.csv          one row per study found (and per unreadable file)
    OUT_DIR/studies/<study_id>.json  per study: every slice's terms of the product, the study answer
    OUT_DIR/sr/<study_id>.dcm        per DICOM study: a DICOM Comprehensive SR (research use only)
    OUT_DIR/model.json               the model of the run: fingerprint, variant, version, and its
                                     study-level operating points chosen on its validation split

``predictions.csv`` starts with exactly ``study_id, source, format, status, error, n_slices,
p_acl, p_mtear, p_cart, p_abnormal``; then ``contrib_<term>_<head>`` for every term of the
model's product (its experts, and ``prior`` when it has one): the term's study-level log-odds
contribution in nats (see :mod:`i2m2_med.inference.predict`; empty when the expert was dropped); then
``top_slice_<head>``, ``missing_modalities``, ``dropped_experts``, ``patient_id``,
``model_fingerprint``, ``shift_score``, ``shift_threshold``, ``disagreement`` and ``review``.
``status`` is one of :data:`STATUSES`:

* ``ok``: the study was diagnosed; its probabilities are in the row;
* ``skipped``: a series of a knee exam the model does not read (a localiser, a derived series,
  another plane or contrast; :mod:`i2m2_med.io.series`), or not the one chosen with ``--series``,
  or a symbolic link that leaves the input folder (a linked file whose target lies outside it, or
  a linked folder: neither is read; :mod:`i2m2_med.io.discover`);
* ``out_of_scope``: not what the model was made for -- another body part by its tags
  (``BodyPartExamined``, the study or series description; decided before the model runs), or
  images unlike the training data by content (the distribution-shift score,
  :mod:`i2m2_med.inference.shift`, above its threshold: ``shift_score`` and ``shift_threshold``
  are filled). Its probabilities are not reported: the ``p_*`` and ``contrib_*`` columns stay
  empty, the JSON holds no slices and no DICOM SR is written;
* ``error``: the study could not be read or run.

``disagreement`` (ok studies): how much the experts of the product disagree about the study --
the standard deviation of the experts' own study-level log-odds (each expert's slice
probabilities aggregated by the model's rule), mean over ACL/MTEAR/CART
(:mod:`i2m2_med.metrics.selective`); empty when fewer than two experts ran. The JSON holds it
under ``disagreement`` with its value per head. ``review`` (``--review-threshold X``): ``yes``
for an ok study whose disagreement is above X (set it aside for a human reader), ``no`` for the
other ok studies; empty without the option and for rows that are not ok. The status stays ``ok``.

``error`` is the one-line reason of an error, a skip or an out-of-scope study. A model without
shift statistics never puts a study out of scope by content; each JSON's ``shift`` block then
says the score is unavailable. Skipped and out-of-scope studies are answers, not failures.

``missing_slices`` (ok studies' JSON): how many slices a DICOM series lacks, from gaps in its
slice positions where the other slices are evenly spaced (a lost or unreadable image); a note
says so too. 0 when none is missing, or when the positions cannot tell (h5, NIfTI).

The per-study JSON is the source of truth: a study is done when its JSON is written (after its
SR), and ``predictions.csv`` is rebuilt from the JSONs of the studies found -- after each study
(at most once a second), at the end, and when the run is interrupted. ``--resume`` skips the
studies whose JSON says ``ok`` for the same source with the same model fingerprint, the same
withheld modalities (``--drop``) and the same clinical table (its sha256); failed studies are
retried. An interrupted run (Ctrl-C) therefore leaves a consistent OUT_DIR that ``--resume``
completes. Only the per-study summaries (no slices) are kept in memory, so memory does not grow
with the slices of the run.

Clinical table: ``--clinical FILE`` joins a CSV by study id (age, sex, BMI, ...) to the tabular
modality; without it, ``INPUT_DIR/tabular.csv`` is used when it is there (the layout of a cohort
folder, which ``train`` and the app read the same way; stderr says so), unless ``--no-clinical``.

De-identification: no patient name reaches an output. The readers do not keep it; the SR's
patient name is empty; for DICOM studies the name is read once, only to replace its parts with
``anon`` in paths and messages (PACS exports often name folders after the patient). Unless
``--keep-ids``, study ids are the first 16 hex digits of sha256(reader's study id) -- of
HMAC-SHA256 with the secret key in ``I2M2_ID_SALT`` when it is set (:mod:`i2m2_med.privacy`) --
(de-duplicated with ``-2``, ``-3``... in discovery order), patient ids likewise, and the raw
patient id is replaced by its hash wherever it occurs in a path or message. Paths are relative to
INPUT_DIR.

Exit codes: 0 no study failed (every study ok, skipped or out of scope); 2 some studies failed
(status ``error``; their rows say why); 1 usage error (bad path or option, corrupt or mismatched
checkpoint, no study found); 130 interrupted.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import re
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from i2m2_med.data.layout import CLINICAL_CSV, clinical_row
from i2m2_med.errors import I2M2Error, UsageError
from i2m2_med.heads import HEADS
from i2m2_med.progress import Bar
from i2m2_med.io.limits import clear_memory_budget, memory_budget_mb, set_memory_budget
from i2m2_med.io.series import classify_series
from i2m2_med.privacy import hash_id, merge_secrets, scrub, study_secrets

LEADING_COLUMNS: tuple[str, ...] = (
    "study_id", "source", "format", "status", "error", "n_slices",
    *(f"p_{h}" for h in HEADS),
)
STATUSES: tuple[str, ...] = ("ok", "skipped", "out_of_scope", "error")
"""Every status of a row; all but ``error`` are answers (exit code 0)."""
ANSWERS: tuple[str, ...] = ("ok", "skipped", "out_of_scope")
PREDICTIONS_CSV = "predictions.csv"
MODEL_JSON = "model.json"
STUDIES_DIR = "studies"
SR_DIR = "sr"
_CSV_INTERVAL_S = 1.0
_H5 = (".h5", ".hdf5")
_NIFTI = (".nii", ".nii.gz")


@dataclass
class Item:
    """One row of the run: a study found, or a file that could not be read as one."""

    out_id: str
    source: str
    format: str
    study: Any = None
    problem: str | None = None
    patient_id: str | None = None
    secrets: list[tuple[str, str]] = field(default_factory=list)
    series: dict[str, Any] | None = None
    skip: str | None = None
    out_of_scope: str | None = None

    def clean(self, text: str) -> str:
        """``text`` with the patient's id replaced by its hash (wherever it occurs) and the parts
        of the patient's name by ``anon`` (as whole words: ``DOE_JANE`` -> ``anon_anon``)."""
        return scrub(text, self.secrets)


@dataclass
class Context:
    """What every study of a run needs (one per process)."""

    model: Any
    meta: Any
    info: dict[str, str]
    out_dir: Path
    input_root: Path
    keep_ids: bool
    batch_size: int
    workers: int
    drop_modalities: tuple[str, ...]
    clinical: Any
    term_names: list[str]
    debug: bool = False
    clinical_digest: str | None = None
    review_threshold: float | None = None


# ---- the plan -------------------------------------------------------------------------------


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(_H5):
        return "fastmri_h5"
    if name.endswith(_NIFTI):
        return "nifti"
    return "dicom"


def _relative(path: Path | str, root: Path) -> str:
    """``path`` relative to the input folder (POSIX separators); its name when it is the folder."""
    p = Path(path)
    base = root if root.is_dir() else root.parent
    for candidate in (base, base.resolve()):
        try:
            rel = p.relative_to(candidate) if p.is_absolute() == candidate.is_absolute() else p.resolve().relative_to(candidate)
        except ValueError:
            continue
        text = rel.as_posix()
        return p.resolve().name if text in ("", ".") else text
    return p.name


def plan(root: Path, keep_ids: bool) -> list[Item]:
    """Every study (and unreadable file) under ``root``, in source order, with its output id."""
    from i2m2_med.io.discover import discover

    found = discover(root)
    items: list[Item] = []
    for study in found.studies:
        secrets = study_secrets(study, keep_ids)
        pid = study.patient_id
        out_pid = None if not pid else (str(pid) if keep_ids else hash_id(pid))
        item = Item(
            out_id=study.study_id if keep_ids else hash_id(study.study_id),
            source=_relative(study.source, root),
            format=str(study.format),
            study=study,
            patient_id=out_pid,
            secrets=secrets,
        )
        items.append(item)
    for path, reason in found.problems:
        source = _relative(path, root)
        items.append(Item(
            out_id=source if keep_ids else hash_id(source),
            source=source,
            format=_format_of(Path(path)),
            problem=reason,
        ))
    for path, reason in found.links:
        source = _relative(path, root)
        items.append(Item(
            out_id=source if keep_ids else hash_id(source),
            source=source,
            format=_format_of(Path(path)),
            skip=reason,
        ))
    # one scrubbing rule for every row: what any study of the run revealed (its patient's id and
    # name parts) is removed from every path and message, unreadable files' included
    everyone = merge_secrets(it.secrets for it in items)
    for it in items:
        it.secrets = everyone
        it.source = it.clean(it.source)
        if it.problem is not None and keep_ids:
            it.out_id = it.source  # its reason is scrubbed when its record is written
    items.sort(key=lambda it: (it.source, it.out_id))
    seen: dict[str, int] = {}
    for it in items:
        base = it.out_id.replace("/", "_").replace("\\", "_")
        n = seen.get(base, 0) + 1
        seen[base] = n
        it.out_id = base if n == 1 else f"{base}-{n}"
    return items


# ---- records and rows -------------------------------------------------------------------------


MAX_NAME_BYTES = 200
"""Longest output file name written (file systems stop at 255 bytes): a longer study id (a long
relative path kept with --keep-ids) is cut and ends in a hash of the whole id."""


def choose_series(items: Sequence[Item], pattern: str | None = None) -> None:
    """Classify every study's series (:mod:`i2m2_med.io.series`): another body part than the knee
    is out of scope (whatever ``--series`` says), the other series the model does not read are
    skipped, each with the reason in words. ``pattern`` (``--series``) chooses by hand: a
    study is read when its SeriesInstanceUID equals it or its series description or protocol
    matches it (a case-insensitive regular expression); every other study is skipped."""
    rule = None
    if pattern:
        try:
            rule = re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise UsageError("--series", f"{pattern!r} is not a valid pattern ({exc})") from None
    for it in items:
        if it.study is None:
            continue
        tags = it.study.tags
        c = classify_series(tags)
        it.series = {"label": c.label, "is_model_series": c.is_model_series, "reason": c.reason, "body_part": c.body_part}
        if not c.in_scope:
            it.out_of_scope = it.clean(f"out of scope by its tags: {c.reason}")
            continue
        if rule is None:
            it.skip = None if c.is_model_series else it.clean(str(c.reason))
            continue
        text = " ".join(str(tags.get(k) or "") for k in ("series_description", "protocol"))
        chosen = pattern == str(tags.get("series_uid") or "") or bool(rule.search(text))
        it.skip = None if chosen else it.clean(f"{c.label}: not the series chosen with --series")


def _json_path(out_dir: Path, out_id: str) -> Path:
    name = out_id
    if len(f"{name}.json".encode("utf-8")) > MAX_NAME_BYTES:
        digest = hashlib.sha256(out_id.encode("utf-8")).hexdigest()[:16]
        name = out_id.encode("utf-8")[: MAX_NAME_BYTES - 40].decode("utf-8", errors="ignore") + "-" + digest
    return out_dir / STUDIES_DIR / f"{name}.json"


LOCK_NAME = ".i2m2-diagnose.lock"


@contextlib.contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``OUT/.i2m2-diagnose.lock`` for the run: a second run into the same folder is refused
    (one line, exit 1) instead of interleaving its files; a lock left by a process that no longer
    runs is taken over. Also the first write into the folder: a read-only or full output folder
    is reported here, before any study is read."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(out_dir, f"cannot create the output folder ({exc.strerror or exc})") from None
    lock = out_dir / LOCK_NAME
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text(encoding="utf-8").strip() or "0")
            except (OSError, ValueError):
                pid = 0
            if pid > 0 and _alive(pid):
                raise UsageError(out_dir, f"another diagnose (process {pid}) is writing into this folder; "
                                          "wait for it or choose another --out") from None
            with contextlib.suppress(OSError):
                lock.unlink()  # stale: its process is gone
            continue
        except OSError as exc:
            raise UsageError(out_dir, f"cannot write into the output folder ({exc.strerror or exc})") from None
        try:
            os.write(fd, str(os.getpid()).encode())
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                lock.unlink()
            raise UsageError(out_dir, f"cannot write into the output folder ({exc.strerror or exc})") from None
        os.close(fd)
        break
    else:
        raise UsageError(out_dir, "cannot take the output folder's lock")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _error_record(item: Item, reason: str, ctx: Context) -> dict[str, Any]:
    study = item.study
    return {
        "study_id": item.out_id,
        "source": item.source,
        "format": item.format,
        "status": "error",
        "error": item.clean(_relative_paths(reason, ctx.input_root)),
        "model": dict(ctx.info),
        "heads": list(HEADS),
        "n_slices": int(study.n_slices) if study is not None else None,
        "missing_modalities": list(study.missing_modalities) if study is not None else [],
        "patient_id": item.patient_id,
        "notes": [item.clean(n) for n in (study.notes if study is not None else [])],
        "series": item.series,
    }


def _relative_paths(text: str, root: Path) -> str:
    """``text`` on one line, with paths under the input folder made relative to it."""
    text = " ".join(str(text).split())
    base = root if root.is_dir() else root.parent
    for prefix in sorted({str(base.resolve()), str(base.absolute()), str(base)}, key=len, reverse=True):
        if prefix and prefix != ".":
            text = text.replace(prefix + os.sep, "").replace(prefix, ".")
    return text


def _reason(exc: BaseException) -> str:
    return exc.one_line() if isinstance(exc, I2M2Error) else f"{type(exc).__name__}: {exc}"


def columns(term_names: Sequence[str]) -> list[str]:
    """Every column of predictions.csv for a model with these terms."""
    cols = list(LEADING_COLUMNS)
    cols += [f"contrib_{t}_{h}" for t in term_names for h in HEADS]
    cols += [f"top_slice_{h}" for h in HEADS]
    cols += ["missing_modalities", "dropped_experts", "patient_id", "model_fingerprint", "shift_score", "shift_threshold"]
    cols += ["disagreement", "review"]
    return cols


def row_of(record: dict[str, Any], term_names: Sequence[str], review_threshold: float | None = None) -> dict[str, Any]:
    """The predictions.csv row of a per-study JSON record (ok or error); ``review_threshold``:
    ``--review-threshold`` (None: the ``review`` column stays empty)."""
    row: dict[str, Any] = {c: "" for c in columns(term_names)}
    row.update({
        "study_id": record.get("study_id", ""),
        "source": record.get("source", ""),
        "format": record.get("format", ""),
        "status": record.get("status", ""),
        "error": record.get("error") or "",
        "n_slices": "" if record.get("n_slices") is None else int(record["n_slices"]),
        "missing_modalities": ";".join(record.get("missing_modalities") or []),
        "dropped_experts": ";".join(record.get("dropped_experts") or []),
        "patient_id": record.get("patient_id") or "",
        "model_fingerprint": (record.get("model") or {}).get("fingerprint", ""),
    })
    shift = record.get("shift") or {}
    if shift.get("available"):
        row["shift_score"] = repr(float(shift["score"]))
        row["shift_threshold"] = repr(float(shift["threshold"]))
    study = record.get("study") or {}
    for h in HEADS:
        if h in (study.get("p") or {}):
            row[f"p_{h}"] = repr(float(study["p"][h]))
        if h in (study.get("top_slice") or {}):
            row[f"top_slice_{h}"] = int(study["top_slice"][h])
    for t, values in (study.get("contributions") or {}).items():
        for h, v in values.items():
            key = f"contrib_{t}_{h}"
            if key in row:
                row[key] = repr(float(v))
    if record.get("status") == "ok":
        value = (record.get("disagreement") or {}).get("value")
        if value is not None:
            row["disagreement"] = repr(float(value))
        if review_threshold is not None:
            row["review"] = "yes" if needs_review(value, review_threshold) else "no"
    return row


def needs_review(disagreement: float | None, threshold: float) -> bool:
    """True when a study's experts disagree by more than ``threshold`` (never when its
    disagreement is undefined: fewer than two experts ran)."""
    return disagreement is not None and float(disagreement) > float(threshold)


def check_review_threshold(value: float | None) -> float | None:
    """``--review-threshold`` as a float; UsageError unless finite and >= 0."""
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UsageError("--review-threshold", f"must be a number >= 0, got {value!r}") from None
    if not math.isfinite(x) or x < 0:
        raise UsageError("--review-threshold", f"must be a finite number >= 0, got {value!r}")
    return x


def write_predictions(out_dir: Path, items: Sequence[Item], records: dict[str, dict[str, Any]], term_names: Sequence[str],
                      review_threshold: float | None = None) -> Path:
    """Write predictions.csv (atomically) with the rows of ``records``, in the items' order."""
    from i2m2_med.atomic import write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(term_names), lineterminator="\n")
    writer.writeheader()
    for it in items:
        record = records.get(it.out_id)
        if record is not None:
            writer.writerow(row_of(record, term_names, review_threshold))
    path = out_dir / PREDICTIONS_CSV
    write_text(path, buf.getvalue())
    return path


def slim(record: dict[str, Any]) -> dict[str, Any]:
    """A record without its per-slice part: what the CSV needs, kept in memory for every study
    (a few hundred bytes, so memory does not grow with the slices of the run)."""
    return {k: v for k, v in record.items() if k != "slices"}


def read_record(out_dir: Path, item: Item) -> dict[str, Any] | None:
    """The JSON record of an item from an earlier run, or None (absent or unreadable)."""
    path = _json_path(out_dir, item.out_id)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def is_done(record: dict[str, Any] | None, item: Item, ctx: Context) -> bool:
    """True when ``record`` is a finished, successful result of this item by this model with the
    same settings (withheld modalities, clinical table)."""
    if not record or item.study is None:
        return False
    return (
        (record.get("status") == "ok" or (record.get("status") == "out_of_scope" and "shift" in record))
        and (record.get("model") or {}).get("fingerprint") == ctx.info["fingerprint"]
        and record.get("source") == item.source
        and record.get("study_id") == item.out_id
        and record.get("n_slices") == item.study.n_slices
        and list(record.get("excluded_modalities") or []) == [m for m in ctx.drop_modalities if m not in (record.get("missing_modalities") or [])]
        and record.get("clinical_table") == ctx.clinical_digest
    )


# ---- one study ----------------------------------------------------------------------------------


def _sr_sources(study: Any) -> tuple[list[list[Any]], list[Any]]:
    """The source images of a DICOM study (series by series) and the image of each slice."""
    from i2m2_med.io.dicom_sr import SourceImage

    reader = study.slice_reader
    series = []
    for entries in (getattr(reader, "magnitude", None), getattr(reader, "phase", None)):
        if entries:
            series.append([SourceImage(str(e[0]), None if e[1] is None else int(e[1])) for e in entries])
    if not series:
        raise UsageError(study.source, "the DICOM study does not list its source images")
    return series, series[0]


def _write_sr(ctx: Context, item: Item, record: dict[str, Any]) -> str:
    from i2m2_med.io.dicom_sr import build_diagnosis_sr, write_diagnosis_sr

    series, per_slice = _sr_sources(item.study)
    top = record["study"]["top_slice"]
    ds = build_diagnosis_sr(
        sources=series,
        top_source={h: per_slice[int(top[h])] for h in HEADS},
        probabilities=record["study"]["p"],
        top_slice=top,
        contributions=record["study"]["contributions"],
        model=ctx.info,
        study_id=item.out_id,
        patient_id=item.patient_id or "",
        missing_modalities=record.get("missing_modalities", []),
        dropped_experts=record.get("dropped_experts", []),
        keep_ids=ctx.keep_ids,
    )
    rel = f"{SR_DIR}/{item.out_id}.dcm"
    write_diagnosis_sr(ctx.out_dir / rel, ds)
    return rel


def process(item: Item, ctx: Context, on_batch: Callable[[int], None] | None = None,
            samples: Iterable[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Predict one item and write its outputs (SR first, then the JSON that marks it done).

    Returns the JSON record (``status`` ok or error). Never raises for a bad study: read,
    transform, model and report errors become an error record (KeyboardInterrupt passes).
    ``samples``: the study's slices already being read (:class:`i2m2_med.inference.streaming.ReadAhead`).
    """
    from i2m2_med.atomic import write_json
    from i2m2_med.inference.predict import predict_study
    from i2m2_med.metrics.selective import study_disagreement

    if item.problem is not None:
        record = _error_record(item, item.problem, ctx)
    elif item.out_of_scope is not None:
        record = {**_error_record(item, item.out_of_scope, ctx), "status": "out_of_scope"}
    elif item.skip is not None:
        record = {**_error_record(item, item.skip, ctx), "status": "skipped"}
    else:
        try:
            row = clinical_row(ctx.clinical, item.study)
            pred = predict_study(
                ctx.model, ctx.meta, item.study,
                clinical_row=row,
                batch_size=ctx.batch_size,
                drop_modalities=ctx.drop_modalities,
                workers=ctx.workers,
                on_batch=on_batch,
                samples=samples,
            )
            record = pred.with_identity(item.out_id, item.source, [item.clean(n) for n in pred.notes]).to_json()
            record["patient_id"] = item.patient_id
            record["clinical_table"] = ctx.clinical_digest
            record["series"] = item.series
            record["missing_slices"] = int(item.study.tags.get("missing_slices") or 0)
            rule = pred.aggregation.get("rule", "mean_top_k")
            record["disagreement"] = study_disagreement(pred.terms, rule, int(pred.aggregation.get("k", 3)))
            if pred.out_of_scope:  # answered, but its probabilities are not findings: none reported
                drop = ("slices", "study", "terms", "aggregation", "disagreement")
                record = {k: v for k, v in record.items() if k not in drop}
                record.update(status="out_of_scope", error=item.clean(str(pred.shift["reason"])))
            elif item.format == "dicom":
                record["sr"] = _write_sr(ctx, item, record)
        except Exception as exc:  # one bad study never stops the run
            if ctx.debug and not isinstance(exc, I2M2Error):
                raise
            record = _error_record(item, _reason(exc), ctx)
    try:
        write_json(_json_path(ctx.out_dir, item.out_id), record)
    except OSError as exc:  # a full disk or a refused name: this study's row says so, the run goes on
        record = _error_record(item, f"its result could not be written ({exc.strerror or exc})", ctx)
    return record


# ---- the run ------------------------------------------------------------------------------------


def _term_names(model: Any) -> list[str]:
    from i2m2_med.inference.predict import TERM_ORDER

    names = list(getattr(model, "expert_names", ()) or ())
    if getattr(model, "has_prior", getattr(model, "prior", None) is not None):
        names.append("prior")
    return sorted(names, key=lambda t: (TERM_ORDER.index(t) if t in TERM_ORDER else len(TERM_ORDER), t))


def prepare(
    input_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    model_path: str | os.PathLike | None,
    keep_ids: bool,
    workers: int,
    clinical: str | os.PathLike | None,
    batch_size: int | None,
    drop_modalities: Iterable[str],
    debug: bool = False,
    auto_clinical: bool = True,
    memory_mb: int | None = None,
    device: torch.device | None = None,
) -> tuple[Context, list[Item]]:
    """Validate the arguments, load the model and find the studies (every rank does this).

    Without ``clinical``, ``INPUT_DIR/tabular.csv`` is the clinical table when it is there (as
    ``train`` and the app do for a cohort folder), unless ``auto_clinical`` is False. The memory
    budget (``memory_mb``, :mod:`i2m2_med.io.limits`) is set once the model is loaded, before any
    study is opened; :func:`run` lifts it when the run ends.
    """
    from i2m2_med.inference.loading import load_model, model_info
    from i2m2_med.inference.predict import DROPPABLE
    from i2m2_med.inference.streaming import modality_pipeline

    root = Path(input_dir)
    out = Path(out_dir)
    if not root.exists():
        raise UsageError(root, "no such input folder")
    if out.exists() and not out.is_dir():
        raise UsageError(out, "the output path exists and is not a folder")
    if workers < 0:
        raise UsageError("--workers", f"must be >= 0, got {workers}")
    if batch_size is not None and batch_size < 1:
        raise UsageError("--batch-size", f"must be >= 1, got {batch_size}")
    drop = tuple(dict.fromkeys(drop_modalities))
    for m in drop:
        if m not in DROPPABLE:
            raise UsageError("--drop", f"unknown modality {m!r}; expected one of {', '.join(DROPPABLE)}")
    try:
        if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
            if root.is_dir():
                raise UsageError(out, "the output folder must not be inside the input folder (outputs would be read as studies)")
    except OSError:
        pass
    table = None
    digest = None
    if clinical is None and auto_clinical and root.is_dir() and (root / CLINICAL_CSV).is_file():
        clinical = root / CLINICAL_CSV
        print(f"clinical table: {clinical} (found in the input folder; --no-clinical to leave it out)", file=sys.stderr)
    if clinical is not None:
        cpath = Path(clinical)
        if not cpath.is_file():
            raise UsageError(cpath, "no such clinical table")
        from i2m2_med.data.tabular import read_clinical_csv

        table = read_clinical_csv(cpath)
        digest = "sha256:" + hashlib.sha256(cpath.read_bytes()).hexdigest()[:16]
    model, meta = load_model(model_path, map_location=device or "cpu")
    modality_pipeline(int(meta.config.image_size))  # builds the transforms now, not under the progress bar
    set_memory_budget(memory_mb, readers=max(1, int(workers)))
    items = plan(root, keep_ids)
    if not items:
        raise UsageError(root, "no study found (fastMRI .h5, DICOM series or NIfTI volumes)")
    if any(it.format == "dicom" and it.study is not None for it in items):
        import i2m2_med.io.dicom_sr  # noqa: F401  (highdicom: imported before the progress bar starts)
    ctx = Context(
        model=model,
        meta=meta,
        info=model_info(meta),
        out_dir=out,
        input_root=root,
        keep_ids=keep_ids,
        batch_size=int(batch_size or meta.config.training.batch_size),
        workers=int(workers),
        drop_modalities=drop,
        clinical=table,
        term_names=_term_names(model),
        debug=debug,
        clinical_digest=digest,
    )
    return ctx, items


def write_model_file(ctx: Context) -> Path:
    """``OUT_DIR/model.json``: which model wrote the run and the study-level operating point of
    each head it was validated at (threshold on ``p_<head>``; None with the reason where its
    validation split could not choose one, or when the checkpoint predates them). No path."""
    from i2m2_med.atomic import write_json

    points = (ctx.meta.metrics or {}).get("operating_points")
    body = {
        "schema": "i2m2-med-diagnose-model/1",
        **ctx.info,
        "operating_points": points if points is not None else {
            "per_head": {h: {"threshold": None, "reason": "the checkpoint carries no operating point (trained "
                                                        "before they were stored)"} for h in HEADS}},
    }
    path = ctx.out_dir / MODEL_JSON
    write_json(path, body)
    return path


def _summary(records: dict[str, dict[str, Any]], items: Sequence[Item], out: Path, seconds: float, slices: int) -> int:
    failed = [r for r in (records.get(it.out_id) for it in items) if r is not None and r.get("status") not in ANSWERS]
    ok = sum(1 for it in items if (records.get(it.out_id) or {}).get("status") == "ok")
    skipped = [r for r in (records.get(it.out_id) for it in items) if r is not None and r.get("status") == "skipped"]
    scope = [r for r in (records.get(it.out_id) for it in items) if r is not None and r.get("status") == "out_of_scope"]
    rate = f", {slices / seconds:.1f} slices/s" if seconds > 0 and slices else ""
    also = f", {len(skipped)} skipped (not a series the model reads, or a link leaving the folder)" if skipped else ""
    also += f", {len(scope)} out of scope (no probabilities reported)" if scope else ""
    print(f"{len(items)} studies: {ok} ok, {len(failed)} failed{also} -> {out / PREDICTIONS_CSV}{rate}", file=sys.stderr)
    for r in skipped[:10]:
        print(f"  skipped {r.get('source')}: {r.get('error')}", file=sys.stderr)
    for r in scope[:10]:
        print(f"  out of scope {r.get('source')}: {r.get('error')}", file=sys.stderr)
    for r in failed[:10]:
        error, source = str(r.get("error")), str(r.get("source"))
        print(f"  {error if error.startswith(source) else f'{source}: {error}'}", file=sys.stderr)
    if len(failed) > 10:
        print(f"  ... and {len(failed) - 10} more (see the error column)", file=sys.stderr)
    return 0 if not failed and ok + len(skipped) + len(scope) == len(items) else 2


def run(
    input_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    model: str | os.PathLike | None = None,
    keep_ids: bool = False,
    resume: bool = False,
    workers: int = 2,
    clinical: str | os.PathLike | None = None,
    batch_size: int | None = None,
    drop_modalities: Iterable[str] = (),
    devices: int | None = None,
    num_nodes: int = 1,
    strategy: str = "ddp",
    accelerator: str = "cpu",
    progress: bool = True,
    debug: bool = False,
    on_study_done: Callable[[dict[str, Any]], None] | None = None,
    auto_clinical: bool = True,
    series: str | None = None,
    review_threshold: float | None = None,
    memory_mb: int | None = None,
    device: str | None = "auto",
) -> int:
    """Diagnose every study under ``input_dir`` into ``out_dir``; returns the exit code
    (0 all ok, 2 some failed). Usage errors and an unusable checkpoint raise
    :class:`~i2m2_med.errors.I2M2Error` (the CLI prints one line and exits 1).

    ``devices`` > 1 or ``num_nodes`` > 1 runs through Lightning's predict loop with ``strategy``
    (DDP): each rank diagnoses its share of the studies and writes their files; rank 0 then
    writes predictions.csv from every rank's JSONs. ``on_study_done`` is called with each
    finished study's record (single-process runs). ``series``: see :func:`choose_series`.
    ``review_threshold``: flag the ok studies whose disagreement is above it (``review`` column).
    ``memory_mb``: the run's memory budget (:mod:`i2m2_med.io.limits`; default ``I2M2_MEMORY_MB``
    or 4096), per process. ``device``: where a single-process run puts the model
    (:func:`i2m2_med.inference.loading.resolve_device`: ``auto``, ``cpu``, ``cuda[:N]``); a GPU
    that is not there is refused, never replaced by the CPU. ``accelerator`` (``--devices``
    runs) is checked the same way.
    """
    from i2m2_med.inference.loading import device_name, resolve_device

    if devices is not None and devices < 1:
        raise UsageError("--devices", f"must be >= 1, got {devices}")
    if num_nodes < 1:
        raise UsageError("--num-nodes", f"must be >= 1, got {num_nodes}")
    threshold = check_review_threshold(review_threshold)
    memory_budget_mb(memory_mb)  # a bad value is refused before the model is loaded
    distributed = (devices or 1) > 1 or num_nodes > 1
    if str(accelerator).lower() in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--accelerator", f"{accelerator!r} asks for a GPU but torch sees none on this machine; use cpu")
        if not distributed and (device is None or str(device).lower() == "auto"):
            device = "cuda"
    target = resolve_device(device)
    if not distributed and target.type != "cpu":
        print(f"device: {device_name(target)}", file=sys.stderr)
    try:
        ctx, items = prepare(input_dir, out_dir, model, keep_ids, workers, clinical, batch_size, drop_modalities, debug,
                             auto_clinical=auto_clinical, memory_mb=memory_mb,
                             device=None if distributed else target)
        ctx.review_threshold = threshold
        choose_series(items, series)
        if distributed:
            return _run_distributed(ctx, items, resume, devices or 1, num_nodes, strategy, accelerator, progress)

        records: dict[str, dict[str, Any]] = {}
        pending: list[Item] = []
        for it in items:
            previous = read_record(ctx.out_dir, it) if resume else None
            if is_done(previous, it, ctx):
                records[it.out_id] = slim(previous)
            else:
                pending.append(it)
        skipped = len(items) - len(pending)
        if skipped:
            print(f"resume: {skipped} of {len(items)} studies already done with model {ctx.info['fingerprint']}", file=sys.stderr)
        with output_lock(ctx.out_dir):
            write_model_file(ctx)
            return _run_pending(ctx, items, pending, records, progress, on_study_done)
    finally:
        clear_memory_budget()


def _run_pending(ctx: Context, items: list[Item], pending: list[Item], records: dict[str, dict[str, Any]], progress: bool,
                 on_study_done: Callable[[dict[str, Any]], None] | None) -> int:
    total = sum(it.study.n_slices for it in pending if it.study is not None)
    bar = Bar(total, "slices", "diagnose", progress)
    t0 = time.perf_counter()
    last_csv = 0.0
    done_slices = 0
    read_ahead = _read_ahead(ctx, pending)
    try:
        for it in pending:
            bar.note(it.source[-40:])
            counted = [0]

            def tick(n: int, counted: list[int] = counted) -> None:
                counted[0] += n
                bar.update(n)

            samples = read_ahead.samples(it.out_id) if read_ahead is not None and it.study is not None else None
            record = process(it, ctx, on_batch=tick, samples=samples)
            records[it.out_id] = slim(record)
            if record.get("status") == "ok":
                done_slices += int(record.get("n_slices") or 0)
            elif it.study is not None:
                bar.update(max(0, it.study.n_slices - counted[0]))
            now = time.perf_counter()
            if now - last_csv >= _CSV_INTERVAL_S:
                with contextlib.suppress(OSError):  # an interim table; the final one reports a failure
                    write_predictions(ctx.out_dir, items, records, ctx.term_names, ctx.review_threshold)
                last_csv = now
            if on_study_done is not None:
                on_study_done(record)
    except KeyboardInterrupt:
        bar.close()
        write_predictions(ctx.out_dir, items, records, ctx.term_names, ctx.review_threshold)
        print(f"interrupted after {len(records)} of {len(items)} studies; rerun with --resume to complete", file=sys.stderr)
        raise
    finally:
        if read_ahead is not None:
            read_ahead.close()
    bar.close()
    try:
        write_predictions(ctx.out_dir, items, records, ctx.term_names, ctx.review_threshold)
    except OSError as exc:
        raise UsageError(ctx.out_dir / "predictions.csv", f"cannot be written ({exc.strerror or exc}); "
                                                          "the per-study JSONs that were written stay, rerun with --resume") from None
    return _summary(records, items, ctx.out_dir, time.perf_counter() - t0, done_slices)


def _read_ahead(ctx: Context, pending: Sequence[Item]) -> Any:
    """Loading threads that read the slices of the pending studies ahead of the model, across
    study boundaries (None with ``--workers 0``)."""
    if ctx.workers <= 0:
        return None
    from i2m2_med.inference.streaming import ReadAhead, modality_pipeline

    jobs = [(it.out_id, it.study, range(it.study.n_slices)) for it in pending if it.study is not None]
    return ReadAhead(jobs, modality_pipeline(int(ctx.meta.config.image_size)), ctx.workers,
                     lookahead=max(2 * ctx.batch_size, 4 * ctx.workers), exclude=ctx.drop_modalities)


# ---- scale-out: Lightning predict with DDP ---------------------------------------------------------


def _identity(batch: list[int]) -> list[int]:
    return batch


class _RankShare:
    """The positions (into the pending list) this rank diagnoses: every world-size-th, from its
    rank (all of them outside a process group). Decided when asked, after the group exists, so
    the loader's order and the read-ahead's are the same list."""

    def __init__(self, n: int):
        self.n = int(n)

    def indices(self) -> list[int]:
        import torch.distributed as dist

        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
        return list(range(rank, self.n, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return len(self.indices())


def _diagnose_task(ctx: Context, items: list[Item], pending: list[int], share: _RankShare, progress: bool) -> Any:
    """A LightningModule whose predict step diagnoses the items of its batch (positions), with the
    rank's own read-ahead over the studies it will see, in their order."""
    import pytorch_lightning as pl

    class DiagnoseTask(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = ctx.model  # registered, so the strategy places it on the rank's device
            self.bar: Any = None
            self.read_ahead: Any = None

        def on_predict_start(self) -> None:
            mine = [items[pending[i]] for i in share.indices()]
            self.read_ahead = _read_ahead(ctx, mine)
            if self.global_rank == 0:
                world = max(1, self.trainer.world_size)
                self.bar = Bar(len(mine), "studies", f"diagnose (rank 0 of {world})", progress)

        def predict_step(self, batch: list[int], batch_idx: int) -> None:
            for position in batch:
                it = items[int(position)]
                ahead = self.read_ahead
                samples = ahead.samples(it.out_id) if ahead is not None and it.study is not None else None
                process(it, ctx, samples=samples)
                if self.bar is not None:
                    self.bar.update(1)
            return None

        def _close(self) -> None:
            if self.read_ahead is not None:
                self.read_ahead.close()
                self.read_ahead = None
            if self.bar is not None:
                self.bar.close()
                self.bar = None

        def on_predict_end(self) -> None:
            self._close()
            self.trainer.strategy.barrier("diagnose-done")

        def teardown(self, stage: str) -> None:
            self._close()  # also after a failure, which skips on_predict_end

    return DiagnoseTask()


def _run_distributed(ctx: Context, items: list[Item], resume: bool, devices: int, num_nodes: int,
                     strategy: str, accelerator: str, progress: bool) -> int:
    """Each rank (Lightning launches them) diagnoses its share of the pending items through
    ``Trainer.predict`` (:class:`_RankShare` splits the item positions without repeats), reading
    its studies ahead as the single process does; rank 0 writes predictions.csv from every
    rank's JSONs after a barrier."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    pending = [i for i, it in enumerate(items) if not (resume and is_done(read_record(ctx.out_dir, it), it, ctx))]
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    write_model_file(ctx)  # each rank writes the same bytes, atomically
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,  # each rank's share is _RankShare's, which its read-ahead follows
    )
    t0 = time.perf_counter()
    if pending:
        share = _RankShare(len(pending))
        loader = DataLoader(pending, batch_size=1, sampler=share, num_workers=0, collate_fn=_identity)
        trainer.predict(_diagnose_task(ctx, items, pending, share, progress), dataloaders=loader, return_predictions=False)
    records = {it.out_id: slim(r) for it in items if (r := read_record(ctx.out_dir, it)) is not None}
    if trainer.global_rank != 0:
        return 0 if all((records.get(it.out_id) or {}).get("status") in ANSWERS for it in items) else 2
    write_predictions(ctx.out_dir, items, records, ctx.term_names, ctx.review_threshold)
    slices = sum(int(records[items[i].out_id].get("n_slices") or 0) for i in pending if items[i].out_id in records)
    return _summary(records, items, ctx.out_dir, time.perf_counter() - t0, slices)
