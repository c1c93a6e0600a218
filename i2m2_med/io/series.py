"""What a series is, from its tags: plane, contrast, fat suppression, localiser or derived, body
part -- and whether it is the series the model was trained for.

The models of this project read coronal proton-density series, with or without fat suppression
(the fastMRI knee protocol: CORPD_FBK and CORPDFS_FBK). A real knee exam holds more (localisers,
sagittal PD / T2 FS, axial PD FS, coronal T1 ...), and an archive holds other body parts; this
module names each series so that the rest of the project can read the right one and say why it
leaves the others.

Rule table (the first rule that decides wins; every decision carries its reason in words):

============  ==========================================================================
plane         ``ImageOrientationPatient``: the slice normal (row x column direction) along
              the patient's x axis is **sagittal**, y **coronal**, z **axial**; ``oblique``
              is added when the largest component of the normal is below 0.8. Without the
              tag: a plane word in the description (``sag``, ``cor``, ``ax`` / ``tra``);
              else unknown.
localiser     ``ImageType`` contains ``LOCALIZER``, or the description says ``loc``,
              ``scout``, ``survey``, ``3-plane`` / ``tri-pilot`` / ``aahead``.
derived       ``ImageType`` starts with ``DERIVED`` (MPR, subtraction, maps).
contrast      the description (``SeriesDescription``, else ``ProtocolName``): ``PD`` /
              ``proton`` / ``dens`` -> PD; ``STIR`` / ``TIRM`` -> STIR; ``T2`` -> T2;
              ``T1`` -> T1; ``DESS`` / ``MEDIC`` / ``GRE`` / ``FLASH`` / ``FFE`` -> GRE.
              Without a word: ``ScanningSequence`` ``GR`` -> GRE, ``IR`` with short TI ->
              STIR; then TR / TE (spin echo): TE >= 60 ms and TR >= 2000 ms -> T2;
              TE < 40 ms and TR >= 1500 ms -> PD; TR < 1000 ms and TE < 30 ms -> T1.
fat_sat       the reader's ``fat_sat`` tag (``ScanOptions`` FS / SFS / FAT_SAT,
              spectral fat suppression, or ``FS`` / ``fat sat`` / ``SPAIR`` in the
              description); STIR counts as fat-suppressed.
body part     ``BodyPartExamined``, else a body-part word in the study or series
              description; **knee** when it says knee (``KNEE``, ``knie``, ``genou``,
              ``ginocchio``, ``rodilla``) or names no body part; another body part
              (``shoulder``, ``head``, ``brain``, ``abdomen``, ``spine``, ``hip``, ...) is
              out of scope.
============  ==========================================================================

A series is the **model's series** when it is a knee, coronal, PD (with or without fat
suppression), neither a localiser nor derived. A plane or contrast the tags do not tell (a NIfTI
file, a DICOM without descriptions) does not exclude a series: its label says ``unknown``. Any
known mismatch is described with the reason the model does not read the series (``"sagittal T2
FS: the model reads coronal PD / PD-FS"``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

PLANES = ("sagittal", "coronal", "axial")
MODEL_SERIES = "coronal PD / PD-FS"
OBLIQUE_BELOW = 0.8

_LOCALISER = re.compile(r"(?<![a-z])(loc|localiz|localis|scout|survey|3[-_ ]?plane|tri[-_ ]?pilot|aahead|aascout)", re.I)
_PLANE_WORDS = {"sagittal": re.compile(r"(?<![a-z])sag", re.I), "coronal": re.compile(r"(?<![a-z])cor", re.I),
                "axial": re.compile(r"(?<![a-z])(ax|tra)(?![a-z]{3})", re.I)}
_CONTRAST_WORDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("PD", re.compile(r"(?<![a-z])(pd|pdw|proton|dens)|corpd", re.I)),  # fastMRI: CORPD_FBK, CORPDFS_FBK
    ("STIR", re.compile(r"(?<![a-z])(stir|tirm)", re.I)),
    ("T2", re.compile(r"(?<![a-z0-9])t2", re.I)),
    ("T1", re.compile(r"(?<![a-z0-9])t1", re.I)),
    ("GRE", re.compile(r"(?<![a-z])(dess|medic|gre|flash|ffe|fl3d|we3d)", re.I)),
)
_KNEE = re.compile(r"(knee|knie|genou|ginocchio|rodilla)", re.I)
_KNEE_ALIASES = ("EXTREMITY", "LEG", "LOWER LIMB", "LOWER EXTREMITY", "LOWEREXTREMITY")
"""BodyPartExamined values scanners write for a knee exam."""
_OTHER_PARTS = re.compile(
    r"(shoulder|schulter|head|brain|skull|abdomen|abdo|pelvis|spine|lumbar|cervical|thoracic|chest|thorax|liver|"
    r"prostate|breast|hip|ankle|foot|wrist|hand|elbow|heart|cardiac|neck)", re.I)


@dataclass(frozen=True)
class SeriesClass:
    """A series described: ``plane`` (sagittal / coronal / axial / unknown), ``oblique``,
    ``contrast`` (PD / T1 / T2 / STIR / GRE / unknown), ``fat_sat`` (None: unknown),
    ``localiser``, ``derived``, ``body_part`` (knee / the part named / unknown), ``is_model_series``
    and ``reason`` (why the model does not read it; None for the model's series), plus
    ``label`` (``"coronal PD FS"``) and ``evidence`` (which tag decided what)."""

    plane: str
    oblique: bool
    contrast: str
    fat_sat: bool | None
    localiser: bool
    derived: bool
    body_part: str
    is_model_series: bool
    reason: str | None
    label: str
    evidence: dict[str, str]

    @property
    def in_scope(self) -> bool:
        """False for another body part than the knee: out of the model's scope from the tags
        alone (``diagnose`` reports it ``out_of_scope``, the app shows why, before any model
        runs); the other series the model does not read are in scope but skipped."""
        return self.body_part == "knee"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "in_scope": self.in_scope}


def _plane(tags: Mapping[str, Any], text: str, evidence: dict[str, str]) -> tuple[str, bool]:
    o = tags.get("orientation")
    if o is not None and len(o) == 6:
        v = np.asarray(o, dtype=float)
        normal = np.cross(v[:3], v[3:])
        size = float(np.linalg.norm(normal))
        if size > 1e-6:
            normal = np.abs(normal / size)
            axis = int(np.argmax(normal))
            evidence["plane"] = f"ImageOrientationPatient (slice normal {np.round(normal, 2).tolist()})"
            return PLANES[axis], bool(normal[axis] < OBLIQUE_BELOW)
    for plane, pattern in _PLANE_WORDS.items():
        if pattern.search(text):
            evidence["plane"] = "description"
            return plane, False
    evidence["plane"] = "no orientation tag or plane word"
    return "unknown", False


def _contrast(tags: Mapping[str, Any], text: str, evidence: dict[str, str]) -> str:
    for name, pattern in _CONTRAST_WORDS:
        if pattern.search(text):
            evidence["contrast"] = "description"
            return name
    sequence = [str(v).upper() for v in tags.get("scanning_sequence") or []]
    tr, te, ti = tags.get("tr_ms"), tags.get("te_ms"), tags.get("ti_ms")
    if "GR" in sequence and "SE" not in sequence:
        evidence["contrast"] = "ScanningSequence GR"
        return "GRE"
    if "IR" in sequence and ti is not None and float(ti) < 250:
        evidence["contrast"] = "ScanningSequence IR with a short TI"
        return "STIR"
    if tr is not None and te is not None:
        tr, te = float(tr), float(te)
        evidence["contrast"] = f"TR {tr:g} ms, TE {te:g} ms"
        if te >= 60 and tr >= 2000:
            return "T2"
        if te < 40 and tr >= 1500:
            return "PD"
        if tr < 1000 and te < 30:
            return "T1"
    evidence.setdefault("contrast", "no contrast word, sequence or TR/TE that decides")
    return "unknown"


def _body_part(tags: Mapping[str, Any], evidence: dict[str, str]) -> str:
    named = str(tags.get("body_part") or "").strip()
    if named:
        evidence["body_part"] = "BodyPartExamined"
        if _KNEE.search(named) or named.upper() in _KNEE_ALIASES:
            return "knee"
        return named.lower()
    text = " ".join(str(tags.get(k) or "") for k in ("study_description", "series_description", "protocol"))
    if _KNEE.search(text):
        evidence["body_part"] = "description"
        return "knee"
    other = _OTHER_PARTS.search(text)
    if other:
        evidence["body_part"] = "description"
        return other.group(1).lower()
    evidence["body_part"] = "no body part named: taken as knee"
    return "knee"


def classify_series(tags: Mapping[str, Any]) -> SeriesClass:
    """Classify a series from its study tags (:func:`i2m2_med.io.dicom.dicom_tags` plus
    ``orientation``); see the module docstring for the rules."""
    evidence: dict[str, str] = {}
    text = " ".join(str(tags.get(k) or "") for k in ("series_description", "protocol"))
    image_type = [str(v).upper() for v in tags.get("image_type") or []]
    localiser = "LOCALIZER" in image_type or bool(_LOCALISER.search(text))
    derived = bool(image_type) and image_type[0] == "DERIVED"
    plane, oblique = _plane(tags, text, evidence)
    contrast = _contrast(tags, text, evidence)
    fat = tags.get("fat_sat")
    fat_sat = True if contrast == "STIR" else (None if fat is None else bool(fat))
    body = _body_part(tags, evidence)
    label = " ".join(w for w in (plane if plane != "unknown" else "plane unknown", contrast if contrast != "unknown" else "contrast unknown",
                                 "FS" if fat_sat and contrast != "STIR" else "") if w)
    if localiser:
        label = f"localiser ({label})"
    reason = None
    if body != "knee":
        reason = f"{body}: not a knee, the model reads knee MRI only"
    elif localiser:
        reason = f"{label}: a localiser, not a diagnostic series"
    elif derived:
        reason = f"{label}: a derived series (ImageType DERIVED), the model reads acquired images"
    elif plane not in ("coronal", "unknown") or contrast not in ("PD", "unknown"):
        reason = f"{label}: the model reads {MODEL_SERIES}"
    return SeriesClass(plane, oblique, contrast, fat_sat, localiser, derived, body, reason is None, reason, label, evidence)


__all__ = ["MODEL_SERIES", "SeriesClass", "classify_series"]
