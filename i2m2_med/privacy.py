"""De-identified ids: one rule for diagnose, inspect and the app.

An id (study, patient, file) is shown as the first 16 hex digits of its SHA-256. A plain hash of
a short id (a medical record number, an accession number) can be reversed by hashing every
candidate, so a site that shares outputs sets a secret key in the environment variable
``I2M2_ID_SALT``: ids are then the first 16 hex digits of HMAC-SHA256(key, id), which no one
without the key can link back. The same key gives the same ids (``diagnose --resume``, the app
matching a batch run's ids to its studies); the key itself is never written anywhere.

Free text (paths, messages, notes) is scrubbed by one rule, :func:`scrub`: a raw id is replaced by
its hash wherever it occurs, a part of a patient's name by ``anon`` where it stands as a word, and
a calendar date standing as a word (``19700101``, ``1970-01-01``, ``01.01.1970``: a birth or scan
date in a folder name) by ``date``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from typing import Any, Iterable, Sequence

ID_SALT_ENV = "I2M2_ID_SALT"
HASH_HEX = 16
ANON = "anon"
"""What a part of a patient's name becomes in free text."""
MIN_SECRET_CHARS = 3
"""Shorter ids and name parts are left in free text: they would match inside unrelated words."""
_HASHED = re.compile(rf"^[0-9a-f]{{{HASH_HEX}}}(-[0-9]+)?$")
DATE = "date"
"""What a calendar date becomes in free text."""
_MONTH, _DAY = r"(?:0[1-9]|1[0-2])", r"(?:0[1-9]|[12][0-9]|3[01])"
_DATES = re.compile(
    r"(?<![0-9A-Za-z])(?:"
    rf"(?:19|20)[0-9]{{2}}[-_.]?{_MONTH}[-_.]?{_DAY}"  # 19700101, 1970-01-01, 1970_01_01
    rf"|{_DAY}[-_.]{_MONTH}[-_.](?:19|20)[0-9]{{2}}"  # 01.01.1970, 01-01-1970
    r")(?![0-9A-Za-z])"
)


def id_salt() -> bytes | None:
    """The key from ``I2M2_ID_SALT`` (UTF-8), or None when unset or empty."""
    value = os.environ.get(ID_SALT_ENV, "")
    return value.encode("utf-8") if value else None


def hash_id(text: str) -> str:
    """The de-identified form of ``text``: 16 hex digits of HMAC-SHA256(key, text) with the key of
    ``I2M2_ID_SALT``, of SHA-256(text) without one."""
    key = id_salt()
    data = str(text).encode("utf-8")
    digest = hmac.new(key, data, hashlib.sha256).hexdigest() if key else hashlib.sha256(data).hexdigest()
    return digest[:HASH_HEX]


def is_hashed_id(text: str) -> bool:
    """True for an id of the form :func:`hash_id` writes (16 lower-case hex digits), also with the
    ``-2``, ``-3`` suffix that ``diagnose`` adds to repeated ids."""
    return bool(_HASHED.match(str(text)))


def id_rule() -> str:
    """How ids are hashed now, in words (for the outputs that say so)."""
    if id_salt() is not None:
        return f"HMAC-SHA256 keyed by {ID_SALT_ENV}, {HASH_HEX} hex digits"
    return f"SHA-256, {HASH_HEX} hex digits"


def name_parts(name: str) -> list[str]:
    """The parts of a patient's name (DICOM ``Doe^Jane``, ``DOE_JANE``, ...) long enough to scrub,
    longest first."""
    parts = {p for p in re.split(r"[\\^\s,._=-]+", str(name)) if len(p) >= MIN_SECRET_CHARS}
    return sorted(parts, key=lambda p: (-len(p), p))


def id_replacements(ids: Iterable[Any]) -> list[tuple[str, str]]:
    """``(raw id, hash_id(raw id))`` for every distinct id of at least :data:`MIN_SECRET_CHARS`
    characters (None and empty ids skipped), longest first."""
    raw = {str(i) for i in ids if i is not None and len(str(i)) >= MIN_SECRET_CHARS}
    return [(r, hash_id(r)) for r in sorted(raw, key=lambda r: (-len(r), r))]


def name_replacements(parts: Iterable[str]) -> list[tuple[str, str]]:
    """``(name part, "anon")`` for every part of at least :data:`MIN_SECRET_CHARS` characters."""
    return [(p, ANON) for p in parts if len(str(p)) >= MIN_SECRET_CHARS]


def scrub(text: str, replacements: Sequence[tuple[str, str]]) -> str:
    """``text`` with every ``(raw, replacement)`` applied, ignoring case: a name part (replacement
    ``"anon"``) where it stands as a whole word (``DOE_JANE`` -> ``anon_anon``), an id wherever it
    occurs (``PAT-1.h5`` -> ``<hash>.h5``). One pass over ``text``: where two could match at the
    same place the earlier pair wins, and a replacement is never scrubbed again (a short id cannot
    match inside the hash that replaced a longer one). Then calendar dates standing as words become
    ``date``, with or without replacements (a hash is letters and digits, never a word-bounded
    date)."""
    if not replacements:
        return _DATES.sub(DATE, str(text))
    alternatives = []
    for raw, replacement in replacements:
        pattern = re.escape(raw)
        if replacement == ANON:
            pattern = r"(?<![A-Za-z0-9])" + pattern + r"(?![A-Za-z0-9])"
        alternatives.append(f"({pattern})")
    combined = re.compile("|".join(alternatives), flags=re.IGNORECASE)
    return _DATES.sub(DATE, combined.sub(lambda m: replacements[m.lastindex - 1][1], str(text)))


def dicom_name_parts(study: Any) -> list[str]:
    """Parts (3+ characters) of the Patient's Name of a DICOM study's first image, read only to
    remove them from paths and messages (PACS exports often name folders after the patient)."""
    reader = study.slice_reader
    entries = getattr(reader, "magnitude", None) or getattr(reader, "phase", None) or []
    if not entries:
        return []
    try:
        import pydicom

        ds = pydicom.dcmread(entries[0][0], stop_before_pixels=True, specific_tags=["PatientName"])
        name = str(ds.get("PatientName") or "")
    except Exception:  # unreadable now: the study itself will report it
        return []
    return name_parts(name)


def study_secrets(study: Any, keep_ids: bool) -> list[tuple[str, str]]:
    """What a study reveals, as ``(text, replacement)`` pairs for :func:`scrub`: the parts of its
    patient's name always (DICOM), its raw patient id unless ``keep_ids``, and the name of a
    NIfTI file unless ``keep_ids`` (a NIfTI carries no identity tags, and converters build its name
    from the patient's name and dates: the name is its study id, hashed like one)."""
    out = [] if keep_ids else id_replacements([study.patient_id])
    if study.format == "dicom":
        out += name_replacements(dicom_name_parts(study))
    if study.format == "nifti" and not keep_ids:
        out += id_replacements([study.study_id])
    return out


def merge_secrets(groups: Iterable[Sequence[tuple[str, str]]]) -> list[tuple[str, str]]:
    """The pairs of several studies as one list for :func:`scrub`, longest text first: what any
    study of a run reveals is removed from every path and message of that run."""
    return sorted({pair for group in groups for pair in group}, key=lambda pair: (-len(pair[0]), pair[0]))


def scrub_ids(text: str, ids: Iterable[Any]) -> str:
    """``text`` with every id of ``ids`` replaced by its :func:`hash_id` (see :func:`scrub`)."""
    return scrub(text, id_replacements(ids))
