"""Where a study comes from: the demo set, a folder under an allowed data root, or an upload.

A :class:`StudyRef` names one study without holding it open; :func:`open_study` opens it (the
readers of :mod:`i2m2_med.io`) and attaches the fastMRI+ labels and boxes of its cohort folder
when there are any. Opening is cheap (metadata only; slices are read lazily), so every use opens
its own :class:`~i2m2_med.io.study.Study` and no file handle is shared between sessions.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import threading
import weakref
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from i2m2_med.data.layout import ANNOTATIONS_CSV, CLINICAL_CSV
from viewer.settings import private_dir

# ---- references ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyRef:
    """One study, by location.

    ``kind``: ``demo`` | ``root`` | ``upload`` | ``record`` (a ``diagnose`` JSON without images);
    ``path``: the resolved file or folder to discover the study in; ``study_id``: which of the
    studies found there (None: the only / first one); ``label``: what the picker shows (no
    identifiers); ``cohort``: a folder holding ``annotations/knee.csv`` and ``tabular.csv``
    (labels, boxes, clinical row); ``record``: the ``diagnose`` JSON of the study, when opened
    from a batch run; ``token``: changes when the file changes (size and mtime, or the upload's
    SHA-256), so cached results never outlive their source.
    """

    kind: str
    path: str
    study_id: str | None
    label: str
    cohort: str | None = None
    record: str | None = None
    token: str = ""

    @property
    def key(self) -> str:
        """Cache key: SHA-256 of every field."""
        text = json.dumps([self.kind, self.path, self.study_id, self.cohort, self.record, self.token])
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @property
    def has_images(self) -> bool:
        return self.kind != "record"


def file_token(path: Path) -> str:
    """``size-mtime_ns`` of a file, or of a folder's own entry."""
    try:
        st = Path(path).stat()
    except OSError:
        return "missing"
    return f"{st.st_size}-{st.st_mtime_ns}"


def find_cohort(path: Path, stop: Path | None = None) -> Path | None:
    """The nearest folder at or above ``path`` (not above ``stop``) holding ``annotations/knee.csv``
    or ``tabular.csv`` -- the layout of a synthetic or fastMRI+-annotated cohort."""
    here = Path(path)
    here = here if here.is_dir() else here.parent
    stop = Path(stop).resolve() if stop is not None else None
    for folder in [here, *here.parents]:
        if (folder / ANNOTATIONS_CSV).is_file() or (folder / CLINICAL_CSV).is_file():
            return folder
        if stop is not None and folder.resolve() == stop:
            break
    return None


# ---- opening --------------------------------------------------------------------------------------


class StudyUnavailable(Exception):
    """The study cannot be opened; ``str(exc)`` is one line for the user."""


def _annotate(study: Any, cohort: Path) -> None:
    """Attach ``labels`` (S, 4) and ``boxes`` from ``cohort/annotations/knee.csv`` when it lists the
    study; a problem with the file becomes a note, never an error."""
    from i2m2_med.data.layout import annotation_paths
    from i2m2_med.errors import AnnotationError
    from i2m2_med.io.annotations import (
        read_fastmri_plus,
        read_fastmri_plus_boxes,
        slice_labels,
        volume_name,
    )

    csv, listing = annotation_paths(cohort, None)
    if csv is None:
        return
    name = volume_name(study.source) if study.format == "fastmri_h5" else str(study.study_id)
    try:
        table = read_fastmri_plus(csv, listing)
        study.labels = slice_labels(table, name, study.n_slices)
        boxes = read_fastmri_plus_boxes(csv)
        rows = boxes[boxes["file"] == name]
        study.boxes = [
            {"slice": int(r.slice), "x": int(r.x), "y": int(r.y), "width": int(r.width),
             "height": int(r.height), "label": str(r.label), "head": str(r.head)}
            for r in rows.itertuples(index=False)
        ]
    except AnnotationError as exc:
        if "labels unknown" not in exc.reason:
            study.notes.append(f"fastMRI+ labels not shown: {exc.reason}")


def open_study(ref: StudyRef) -> Any:
    """The :class:`~i2m2_med.io.study.Study` of ``ref`` (labels and boxes attached when known).

    Raises :class:`StudyUnavailable` with a one-line reason."""
    from i2m2_med.errors import I2M2Error
    from i2m2_med.io.discover import discover

    if not ref.has_images:
        raise StudyUnavailable("this study was opened from a batch result; its images are not available")
    path = Path(ref.path)
    if not path.exists():
        raise StudyUnavailable(f"{path.name}: the file is no longer there")
    try:
        found = discover(path)
    except I2M2Error as exc:
        raise StudyUnavailable(exc.reason) from None
    studies = found.studies
    if ref.study_id is not None:
        studies = [s for s in studies if s.study_id == ref.study_id]
    if not studies:
        reason = found.problems[0][1] if found.problems else "no study found there"
        raise StudyUnavailable(reason)
    study = studies[0]
    if ref.cohort:
        _annotate(study, Path(ref.cohort))
    return study


def clinical_row(ref: StudyRef, study: Any) -> Mapping[str, Any] | None:
    """The study's row of the cohort's clinical table (``tabular.csv``), found as ``diagnose`` and
    training find it (:func:`i2m2_med.data.layout.clinical_row`: by study id, file name, then
    patient id), or None."""
    if not ref.cohort:
        return None
    csv = Path(ref.cohort) / CLINICAL_CSV
    if not csv.is_file():
        return None
    from i2m2_med.data.layout import clinical_row as lookup
    from i2m2_med.data.tabular import read_clinical_csv
    from i2m2_med.errors import AnnotationError

    try:
        table = read_clinical_csv(csv)
    except AnnotationError as exc:
        study.notes.append(f"clinical table not used: {exc.reason}")
        return None
    return lookup(table, study)


# ---- the demo set ----------------------------------------------------------------------------------

DEMO_SEED = 7
DEMO_VOLUMES = 3
DEMO_VERSION = "1"
_DEMO_LOCK = threading.Lock()
READY = "ready.json"


def demo_folder(cache_dir: Path) -> Path:
    return Path(cache_dir) / f"demo-studies-v{DEMO_VERSION}"


def ensure_demo(cache_dir: Path, volumes: int = DEMO_VOLUMES, n_slices: int | None = None, seed: int = DEMO_SEED) -> Path:
    """The demo studies under ``cache_dir``, generated on first use with the project's synthetic
    cohort generator (``seed`` fixed): ``h5/*.h5`` (fastMRI k-space), one study again as a NIfTI
    magnitude volume without its phase (``magnitude_only/``: a study with a missing modality),
    ``annotations/`` (fastMRI+ format) and ``tabular.csv``. Written into a temporary folder and
    renamed into place, so a half-written set is never used."""
    from i2m2_med.synth import generate_cohort

    final = demo_folder(cache_dir)
    if (final / READY).is_file():
        return final
    with _DEMO_LOCK:
        if (final / READY).is_file():
            return final
        private_dir(Path(cache_dir))
        tmp = Path(tempfile.mkdtemp(prefix=".demo-partial-", dir=cache_dir))
        try:
            manifest = generate_cohort(tmp, int(volumes), int(seed), regime="mixed", nifti=True, n_slices=n_slices)
            h5 = sorted((tmp / "h5").glob("*.h5")) if (tmp / "h5").is_dir() else sorted(tmp.glob("*.h5"))
            niftis = sorted(p for p in (tmp / "nifti").glob("*.nii.gz") if not p.name.endswith("_phase.nii.gz"))
            if niftis:
                only = tmp / "magnitude_only"
                only.mkdir()
                shutil.move(str(niftis[-1]), only / niftis[-1].name)
            shutil.rmtree(tmp / "nifti", ignore_errors=True)
            (tmp / READY).write_text(json.dumps({
                "seed": int(seed), "volumes": int(volumes), "n_slices": n_slices,
                "studies": [p.stem for p in h5], "generator": manifest.get("generator_version", ""),
            }))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def demo_refs(folder: Path) -> list[StudyRef]:
    """The demo studies as references, labelled for the picker."""
    folder = Path(folder)
    h5_dir = folder / "h5" if (folder / "h5").is_dir() else folder
    refs = []
    for i, path in enumerate(sorted(h5_dir.glob("*.h5")), start=1):
        refs.append(StudyRef("demo", str(path.resolve()), None, f"Demo knee {i} - raw k-space (fastMRI h5)",
                             cohort=str(folder.resolve()), token=file_token(path)))
    for path in sorted((folder / "magnitude_only").glob("*.nii.gz")):
        n = len(refs) + 1
        refs.append(StudyRef("demo", str(path.resolve()), None, f"Demo knee {n} - NIfTI magnitude only (phase missing)",
                             cohort=str(folder.resolve()), token=file_token(path)))
    return refs


# ---- uploads --------------------------------------------------------------------------------------

UPLOAD_SUFFIXES: tuple[str, ...] = (".h5", ".hdf5", ".nii", ".nii.gz", ".zip", ".dcm")
MAX_ZIP_MEMBERS = 4096
MAX_ZIP_NAME_BYTES = 200
"""Longest name of one path component of a zip entry (file systems stop at 255 bytes)."""
ZIP_EXPANSION = 4
"""A zip may expand to at most this many times the upload limit (zip-bomb guard)."""


class UploadRejected(Exception):
    """The upload is refused; ``str(exc)`` is one clear line for the user."""


def _suffix(name: str) -> str | None:
    lower = name.lower()
    for s in sorted(UPLOAD_SUFFIXES, key=len, reverse=True):
        if lower.endswith(s):
            return s
    return None


def _safe_name(name: str, suffix: str) -> str:
    base = Path(name.replace("\\", "/")).name
    stem = base[: -len(suffix)] if suffix and base.lower().endswith(suffix) else base
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).strip("._") or "upload"
    return keep[:80] + suffix


def _extract_zip(archive: Path, target: Path, max_bytes: int) -> None:
    """Extract ``archive`` into ``target`` after checking every member: regular files only, no
    absolute or parent paths, at most :data:`MAX_ZIP_MEMBERS` members and ``max_bytes`` in all
    (counted while writing, whatever the headers claim)."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError):
        raise UploadRejected("not a valid zip archive") from None
    with zf:
        members = zf.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            raise UploadRejected(f"the zip holds {len(members)} entries; at most {MAX_ZIP_MEMBERS} are accepted")
        total = 0
        for info in members:
            name = info.filename
            parts = Path(name.replace("\\", "/")).parts
            if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                raise UploadRejected(f"the zip entry {name!r} points outside the archive")
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UploadRejected(f"the zip entry {name!r} is a symbolic link")
            if info.flag_bits & 0x1:
                raise UploadRejected("the zip is encrypted")
            if any(len(part.encode("utf-8")) > MAX_ZIP_NAME_BYTES for part in parts):
                raise UploadRejected(f"the zip entry {name[:60]!r}... has a name longer than {MAX_ZIP_NAME_BYTES} bytes")
            if info.is_dir():
                continue
            out = target.joinpath(*parts)
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                if out.exists():
                    raise FileExistsError(str(out))
            except OSError:
                raise UploadRejected(f"the zip entry {name!r} clashes with another entry (a file and a folder, "
                                     "or the same name twice)") from None
            try:
                with zf.open(info) as src, open(out, "wb") as dst:
                    while True:
                        chunk = src.read(1 << 20)
                        if not chunk:
                            break
                        total += len(chunk)
                        if total > max_bytes:
                            raise UploadRejected(f"the zip expands to more than {max_bytes // (1 << 20)} MB")
                        dst.write(chunk)
            except (zipfile.BadZipFile, zlib.error, OSError, RuntimeError, EOFError):
                raise UploadRejected(f"the zip entry {name!r} is corrupt") from None


@dataclass
class Upload:
    """An accepted upload: its private folder (mode 0700) and the studies found in it. The folder
    is removed by :meth:`close`, when the object is garbage-collected (the session ended), or at
    interpreter exit -- whichever comes first."""

    name: str
    sha256: str
    folder: Path
    refs: list[StudyRef]
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.folder), True)

    def close(self) -> None:
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self.folder.exists()


UPLOAD_PREFIX = "i2m2-upload-"


def remove_stale_uploads(base: str | os.PathLike | None = None) -> int:
    """Delete the upload folders that servers which no longer run left in the temporary folder
    (an upload folder's name carries its server's process id); returns how many went. Called
    when the app starts."""
    removed = 0
    root = Path(base) if base is not None else Path(tempfile.gettempdir())
    try:
        entries = list(root.glob(f"{UPLOAD_PREFIX}*"))
    except OSError:
        return 0
    for entry in entries:
        pid_text = entry.name[len(UPLOAD_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or not entry.is_dir() or entry.is_symlink():
            continue
        pid = int(pid_text)
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # its server still runs
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError, OSError):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    return removed


def _private_upload_folder(name: str) -> Path:
    """A new folder for one upload, readable by this user only (0700); UploadRejected naming
    ``name`` when the server cannot make one."""
    try:
        folder = Path(tempfile.mkdtemp(prefix=f"{UPLOAD_PREFIX}{os.getpid()}-"))
    except OSError as exc:
        raise UploadRejected(f"{name}: the server cannot store uploads now ({exc.strerror or exc})") from None
    os.chmod(folder, 0o700)
    return folder


def accept_upload(name: str, data: bytes, max_bytes: int) -> Upload:
    """Validate and store an upload in a private temporary folder; return the studies in it.

    Accepted: a fastMRI ``.h5``, a NIfTI volume (``.nii`` / ``.nii.gz``), one DICOM file (``.dcm``:
    a multi-frame series or a single image), or a ``.zip`` of a DICOM series (or of a NIfTI
    magnitude + ``_phase`` pair). Refused with :class:`UploadRejected` (one
    line): an empty or oversized file, another file type, an unsafe or oversized zip, a file
    the readers cannot read, or one whose slices cannot be read. Nothing is kept on refusal.
    """
    from i2m2_med.errors import I2M2Error
    from i2m2_med.io.discover import discover

    if not data:
        raise UploadRejected(f"{name}: the file is empty")
    if len(data) > max_bytes:
        raise UploadRejected(f"{name}: {len(data) / (1 << 20):.1f} MB is over the {max_bytes // (1 << 20)} MB upload limit")
    suffix = _suffix(name)
    if suffix is None:
        raise UploadRejected(f"{name}: not a supported file; upload a fastMRI .h5, a NIfTI (.nii / .nii.gz), a .dcm "
                             "or a .zip of a DICOM series")
    folder = _private_upload_folder(name)
    try:
        if suffix == ".dcm":  # one DICOM file (a multi-frame series, or a single image): a series folder of it
            (folder / "series").mkdir(mode=0o700)
            target = folder / "series" / _safe_name(name, suffix)
        else:
            target = folder / _safe_name(name, suffix)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if suffix == ".zip":
            series = folder / "series"
            series.mkdir(mode=0o700)
            try:
                _extract_zip(target, series, ZIP_EXPANSION * max_bytes)
            except UploadRejected as exc:
                raise UploadRejected(f"{name}: {exc}") from None
            target.unlink()
            target = series
        elif suffix == ".dcm":
            target = target.parent
        return _studies_of_upload(folder, target, name, hashlib.sha256(data).hexdigest())
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _check_batch(label: str, files: Sequence[tuple[str, bytes]], max_bytes: int) -> None:
    """Several files uploaded at once: at most :data:`MAX_ZIP_MEMBERS` (the bound on a zipped
    series' members) and at most ``max_bytes`` together, else :class:`UploadRejected` naming ``label``."""
    if len(files) > MAX_ZIP_MEMBERS:
        raise UploadRejected(f"{label}: more than {MAX_ZIP_MEMBERS} files in one upload")
    total = sum(len(d) for _, d in files)
    if total > max_bytes:
        raise UploadRejected(f"{label}: {total / (1 << 20):.1f} MB together is over the {max_bytes // (1 << 20)} MB upload limit")


def accept_uploads(files: Sequence[tuple[str, bytes]], max_bytes: int) -> Upload:
    """Several files at once: one is :func:`accept_upload`'s; more are the files of DICOM series
    (``.dcm`` each: a series' slices, a folder's files selected together), stored together and
    read as the series they form, within one upload limit for all of them. Refused with
    :class:`UploadRejected` (one line): a file that is not ``.dcm``, an empty file, more than the
    limit in total, or files that form no readable series. Nothing is kept on refusal."""
    files = list(files)
    if not files:
        raise UploadRejected("no file was uploaded")
    if len(files) == 1:
        return accept_upload(files[0][0], files[0][1], max_bytes)
    label = f"{len(files)} files"
    others = [n for n, _ in files if _suffix(n) != ".dcm"]
    if others:
        raise UploadRejected(f"{label}: {Path(others[0]).name} is not a .dcm file; several files are read as the slices of "
                             "DICOM series (upload an .h5, a NIfTI or a .zip on its own)")
    empty = [n for n, d in files if not d]
    if empty:
        raise UploadRejected(f"{label}: {Path(empty[0]).name} is empty")
    _check_batch(label, files, max_bytes)
    return _stored_batch(label, "series", [(name, data, _safe_name(name, ".dcm")) for name, data in files], f"{label} (DICOM)")


def _stored_batch(label: str, subdir: str, files: Sequence[tuple[str, bytes, str]], name: str,
                  problems: Sequence[str] = ()) -> Upload:
    """Several uploaded files (name, bytes, stored name) written, numbered (two files may share a
    name), into ``subdir`` of a new private upload folder and read as the studies they form
    (:func:`_studies_of_upload`, refusals naming ``name``); ``problems`` lead the upload's own.
    Nothing is kept on refusal."""
    folder = _private_upload_folder(label)
    try:
        target = folder / subdir
        target.mkdir(mode=0o700)
        digest = hashlib.sha256()
        for i, (original, data, stored) in enumerate(files):
            fd = os.open(target / f"{i:05d}_{stored}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            digest.update(original.encode("utf-8", "replace") + b"\0" + hashlib.sha256(data).digest())
        upload = _studies_of_upload(folder, target, name, digest.hexdigest())
        upload.problems[:0] = list(problems)
        return upload
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini", "icon\r"})
"""Files an operating system leaves in a folder (with every name starting with a dot): not part of
an uploaded folder's studies, skipped without a word."""


def accept_folder(files: Sequence[tuple[str, bytes]], max_bytes: int) -> Upload:
    """The files of an uploaded folder (as a browser sends a chosen directory: each file's name,
    perhaps with its path inside the folder), stored together and read as the studies they form:
    DICOM series whatever their files are called (scanner exports often have no extension), and
    fastMRI .h5 or NIfTI files. Hidden and system files, and files that are no study, are skipped;
    empty files are listed in ``problems``. Refused with :class:`UploadRejected` (one line): no
    file, more than :data:`MAX_ZIP_MEMBERS` files, more than the limit in total, or no readable
    study. Nothing is kept on refusal."""
    named = [(str(n).replace("\\", "/"), d) for n, d in files]
    kept = [(n, d) for n, d in named
            if not Path(n).name.startswith(".") and Path(n).name.lower() not in SYSTEM_FILES and "__MACOSX/" not in n]
    label = f"a folder of {len(kept)} files"
    if not kept:
        raise UploadRejected("the folder holds no file")
    _check_batch(label, kept, max_bytes)
    empty = [f"{Path(n).name}: empty file" for n, d in kept if not d]
    stored = [(n, d, _safe_name(Path(n).name, _suffix(Path(n).name) or "")) for n, d in kept if d]
    return _stored_batch(label, "folder", stored, label, empty)


def _studies_of_upload(folder: Path, target: Path, name: str, digest: str) -> Upload:
    """The studies the readers find in ``target`` (an upload's stored file or series folder), each
    read once in its middle slice; :class:`UploadRejected` naming ``name`` when there is none or
    one does not read."""
    from i2m2_med.errors import I2M2Error
    from i2m2_med.io.discover import discover

    try:
        found = discover(target)
    except I2M2Error as exc:
        raise UploadRejected(f"{name}: {exc.reason}") from None
    except Exception as exc:  # whatever a hostile file makes a reader raise: refused, never a traceback
        raise UploadRejected(f"{name}: cannot be read ({type(exc).__name__})") from None
    problems = [f"{Path(p).name}: {r}" for p, r in found.problems]
    if not found.studies:
        reason = found.problems[0][1] if found.problems else (
            "no study found (expected a fastMRI .h5, a DICOM series or a NIfTI volume)")
        raise UploadRejected(f"{name}: {reason}")
    refs = []
    for i, study in enumerate(found.studies, start=1):
        try:
            study.read_slice(study.n_slices // 2)
        except Exception as exc:  # a reader's error, or whatever a hostile file raises: refused
            reason = exc.reason if isinstance(exc, I2M2Error) else f"cannot be read ({type(exc).__name__})"
            raise UploadRejected(f"{name}: {reason}") from None
        finally:
            study.close()
        label = f"{Path(name).name} - {study.format}, {study.n_slices} slices" + (f" (series {i})" if len(found.studies) > 1 else "")
        refs.append(StudyRef("upload", str(target.resolve()), study.study_id, label, token=digest))
    return Upload(name=Path(name).name, sha256=digest, folder=folder, refs=refs, problems=problems)


# ---- data roots ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoundStudy:
    """A study found under a data root (for the picker)."""

    ref: StudyRef
    format: str
    n_slices: int
    modalities: tuple[str, ...]
    private_label: str = ""
    """The label with what the folder's studies reveal scrubbed (patient names and ids, NIfTI
    names, dates): what the picker shows while identifiers are hidden."""


def scan_folder(folder: Path, root: Path) -> tuple[list[FoundStudy], list[str]]:
    """The studies under ``folder`` (already checked to lie inside ``root``) and the problems."""
    from i2m2_med.io.discover import discover

    from i2m2_med.privacy import merge_secrets, scrub, study_secrets

    found = discover(folder)
    secrets = merge_secrets(study_secrets(s, keep_ids=False) for s in found.studies)
    out = []
    for study in found.studies:
        source = Path(study.source)
        # h5 / NIfTI open from their own file; a DICOM series from the scanned folder by its id
        path = source if study.format in ("fastmri_h5", "nifti") and source.is_file() else Path(folder)
        cohort = find_cohort(source, stop=root)
        try:
            label = source.resolve().relative_to(root).as_posix()
        except ValueError:
            label = source.name
        if study.format == "dicom":
            label = f"{label} (DICOM series {study.tags.get('series_number', '')})".replace(" )", ")")
        out.append(FoundStudy(
            ref=StudyRef("root", str(path.resolve()), study.study_id, label,
                         cohort=str(cohort.resolve()) if cohort else None, token=file_token(path)),
            format=str(study.format), n_slices=int(study.n_slices), modalities=tuple(study.modalities),
            private_label=scrub(label, secrets),
        ))
    problems = [scrub(f"{Path(p).name}: {r}", secrets) for p, r in found.problems]
    return out, problems


# ---- display orientation ---------------------------------------------------------------------------


_LETTERS = frozenset("LRAPSI")


def image_directions(study: Any) -> tuple[str, str] | None:
    """Where the row and the column index of the study's slices increase, as anatomical letters
    (``("S", "R")``: row index towards the head, column index towards the patient's right), or
    None when the geometry does not tell.

    fastMRI reconstructions are the training orientation itself (row 0 inferior -- fastMRI+
    flipped them up/down before labelling). DICOM and NIfTI: what the reader found
    (:mod:`i2m2_med.io.orientation`; a coronal series is read in the training orientation)."""
    from i2m2_med.io.orientation import CANONICAL_DIRECTIONS

    if study.format == "fastmri_h5":
        return CANONICAL_DIRECTIONS
    found = study.tags.get("image_directions")
    if isinstance(found, (list, tuple)) and len(found) == 2 and all(str(v) in _LETTERS for v in found):
        return str(found[0]), str(found[1])
    return None


def row0_is_inferior(study: Any) -> bool:
    """True when row 0 of the study's slices is the inferior edge, so that showing the rows
    flipped puts the patient's head at the top (the radiological display of a coronal knee)."""
    directions = image_directions(study)
    return directions is not None and directions[0] == "S"


def edge_labels(directions: Any, flipped: bool) -> dict[str, str] | None:
    """The anatomical letter at each edge of a slice as the viewer shows it: ``directions`` (row,
    column) of the slice as read, ``flipped`` when its rows are shown reversed (superior at the
    top). Column 0 is at the left edge; row 0 at the top unless ``flipped``. None when unknown."""
    from i2m2_med.io.orientation import opposite

    if not directions or len(directions) != 2:
        return None
    row, col = str(directions[0]), str(directions[1])
    top = row if flipped else opposite(row)
    return {"top": top, "bottom": opposite(top), "left": opposite(col), "right": col}
