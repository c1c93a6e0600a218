"""Find every study under a path: fastMRI h5, DICOM series and NIfTI volumes, in any mix.

Classification of each file (hidden files, names starting with ".", are not looked at):

* ``.h5`` / ``.hdf5`` -> :func:`i2m2_med.io.fastmri_h5.read_fastmri_h5`;
* ``.nii`` / ``.nii.gz`` -> :func:`i2m2_med.io.nifti.read_nifti`; ``<stem>_phase.nii[.gz]`` is
  paired with ``<stem>.nii[.gz]`` and is not a study of its own;
* ``.dcm`` / ``.dicom`` / ``.ima``, or any file with the DICOM preamble whatever its name ->
  DICOM, grouped into series across the whole tree (:func:`i2m2_med.io.dicom.collect_dicom`);
  ``DICOMDIR`` index files are ignored;
* anything else (CSV, text, images...) is listed in ``skipped``, not as a problem.

Symbolic links inside a folder are followed only while they stay inside it: a linked file whose
target lies outside the folder, and every linked folder (never walked into, wherever it points),
are listed in ``links`` with the reason and not read. A NIfTI magnitude whose phase volume is
such a link is a problem (reading it would read the phase from outside). A path named directly
(a file, or the folder itself) is the user's choice and is read wherever it points.

A file of a study format that cannot be read becomes a ``(path, reason)`` entry in
``problems``; discovery carries on. Studies are sorted by source path, then study id.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from i2m2_med.errors import StudyReadError
from i2m2_med.io.dicom import IGNORED_NAMES, collect_dicom, is_dicom_file
from i2m2_med.io.fastmri_h5 import read_fastmri_h5
from i2m2_med.io.nifti import (
    NIFTI_SUFFIXES,
    PHASE_SUFFIX,
    is_nifti_path,
    is_phase_path,
    nifti_stem,
    phase_sibling,
    read_nifti,
)
from i2m2_med.io.study import Study

H5_SUFFIXES = (".h5", ".hdf5")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


@dataclass
class DiscoveryResult:
    """``studies`` found; ``problems`` (path, reason) for files that failed; ``skipped``
    (path, reason) for files that are not studies (DICOMDIR, CSV, non-image DICOM...); ``links``
    (path, reason) for symbolic links that were not followed (see the module's text)."""

    studies: list[Study]
    problems: list[tuple[Path, str]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    links: list[tuple[Path, str]] = field(default_factory=list)


LINK_OUTSIDE = "a symbolic link to a file outside the folder: not read"
LINK_FOLDER = "a symbolic link to a folder: not followed"


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path``, all links resolved, lies in the (resolved) folder ``root``."""
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):  # a dangling link or a loop
        return False
    return target == root or root in target.parents


def _files(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The files to look at under ``root`` and the links not followed (path, reason)."""
    if root.is_file():
        return [root], []
    base = root.resolve()
    out: list[Path] = []
    links: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for d in sorted(dirnames):
            if not d.startswith(".") and (here / d).is_symlink():
                links.append((here / d, LINK_FOLDER))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not (here / d).is_symlink())
        for name in filenames:
            path = here / name
            if name.startswith("."):
                continue
            if path.is_symlink() and not _inside(path, base):
                links.append((path, LINK_OUTSIDE))
            else:
                out.append(path)
    return sorted(out), sorted(links, key=lambda item: str(item[0]))


def _kind(path: Path) -> str:
    name = path.name.lower()
    if path.name.upper() in IGNORED_NAMES:
        return "dicomdir"
    if name.endswith(H5_SUFFIXES):
        return "h5"
    if is_nifti_path(path):
        return "nifti"
    if name.endswith(DICOM_SUFFIXES) or is_dicom_file(path):
        return "dicom"
    return "other"


def _magnitude_of(phase: Path) -> Path | None:
    stem = nifti_stem(phase)[: -len(PHASE_SUFFIX)]
    for suffix in NIFTI_SUFFIXES:
        candidate = phase.with_name(stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def discover(root: str | os.PathLike) -> DiscoveryResult:
    """All studies under ``root`` (a file or a folder, walked recursively).

    Raises :class:`StudyReadError` only when ``root`` does not exist; everything else that
    fails is reported in ``problems``.
    """
    root = Path(root)
    if not root.exists():
        raise StudyReadError(root, "no such file or folder")
    studies: list[Study] = []
    problems: list[tuple[Path, str]] = []
    skipped: list[tuple[Path, str]] = []
    dicom_files: list[Path] = []
    files, links = _files(root)
    refused = {path for path, _ in links}
    for path in files:
        kind = _kind(path)
        try:
            if kind == "h5":
                studies.append(read_fastmri_h5(path))
            elif kind == "nifti":
                if is_phase_path(path):
                    magnitude = _magnitude_of(path)
                    if magnitude is not None and root.is_file():
                        # a phase file named on its own: read its magnitude, which pairs it
                        studies.append(read_nifti(magnitude))
                    elif magnitude is None:
                        problems.append((path, "phase volume without its magnitude volume "
                                         f"{nifti_stem(path)[: -len(PHASE_SUFFIX)]}.nii[.gz]"))
                    continue
                phase = phase_sibling(path)
                if phase is not None and phase in refused:
                    problems.append((path, f"its phase volume {phase.name} is {LINK_OUTSIDE}"))
                    continue
                studies.append(read_nifti(path))
            elif kind == "dicom":
                dicom_files.append(path)
            elif kind == "dicomdir":
                skipped.append((path, "DICOMDIR (directory index) ignored"))
            else:
                skipped.append((path, f"not a study file ({path.suffix or 'no extension'})"))
        except StudyReadError as exc:
            problems.append((path, exc.reason))
    if dicom_files:
        scan = collect_dicom(dicom_files)
        studies.extend(scan.studies)
        problems.extend(scan.problems)
        skipped.extend(scan.skipped)
    studies.sort(key=lambda s: (str(s.source), s.study_id))
    problems.sort(key=lambda item: str(item[0]))
    skipped.sort(key=lambda item: str(item[0]))
    counts = Counter(s.study_id for s in studies)
    for s in studies:
        if counts[s.study_id] > 1:
            s.notes.append(f"study id {s.study_id} is shared by {counts[s.study_id]} studies in this folder")
    return DiscoveryResult(studies, problems, skipped, links)
