"""DICOM Structured Report of one study's diagnosis (highdicom Comprehensive SR, TID 1500).

The report is an *Imaging Measurement Report* whose evidence is the source series (every image of
the magnitude series and, when paired, of the phase series): its Current Requested Procedure
Evidence Sequence lists their Study / Series / SOP Instance UIDs, so a PACS or viewer links the
report to the images it was computed from. Content, per head (ACL, MTEAR, CART, ABNORMAL), one
measurement group with

* a tracking identifier (the head) and the algorithm (``I2M2 <variant>``, version = the model
  fingerprint);
* a numeric item "Probability" (DCM 122157, unit UCUM ``1``): the study-level p(y=1);
* a qualitative item "Finding" = Present / Absent at the stated threshold;
* a text item naming the top slice and each expert's log-odds contribution;
* the source image of the top slice (and its frame number for multi-frame files).

Two text items in the root container say "RESEARCH USE ONLY - not for diagnostic use" and which
modalities were missing / which experts were dropped; the series description says it too.

De-identification: the patient module is rebuilt from a whitelist -- Patient's Name and Birth
Date are always empty, Patient ID is the caller's (hashed) id, Referring Physician's Name is
empty; with ``keep_ids=False`` the Accession Number, Study ID and study date / time are emptied
as well. Only the UIDs needed to reference the source images are kept. The SR's own UIDs are
derived from the study id and the model fingerprint, so a rerun writes the same UIDs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from i2m2_med import __version__
from i2m2_med.atomic import atomic_path
from i2m2_med.errors import StudyReadError
from i2m2_med.heads import HEAD_TITLES, HEADS

RESEARCH_USE = "RESEARCH USE ONLY - not for diagnostic use. Computed by i2m2-med; not reviewed by a physician."
SCHEME = "99I2M2"
"""Private coding scheme designator for the concepts no standard code names exactly."""

_HEAD_CODES = {h: hd.sr.CodedConcept(h.upper(), SCHEME, HEAD_TITLES[h]) for h in HEADS}
_PROCEDURE = hd.sr.CodedConcept("MRKNEE", SCHEME, "Magnetic resonance imaging of knee")
# Attributes copied from the first source image (everything else about the patient is dropped).
_KEEP = ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID", "Modality", "PatientSex")
_KEEP_WITH_IDS = ("AccessionNumber", "StudyID", "StudyDate", "StudyTime")


@dataclass(frozen=True)
class SourceImage:
    """One image of a source series: the file and, for a multi-frame file, the frame (0-based)."""

    path: str
    frame: int | None = None


def _header(path: str) -> Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises several types for unreadable files
        raise StudyReadError(path, f"cannot re-read the DICOM header for the report ({type(exc).__name__}: {exc})") from None


def _evidence_item(ds: Dataset, patient_id: str, keep_ids: bool) -> Dataset:
    """A whitelisted copy of a source header: only what the SR needs to reference and inherit."""
    out = Dataset()
    for keyword in _KEEP + (_KEEP_WITH_IDS if keep_ids else ()):
        if keyword in ds:
            setattr(out, keyword, ds.get(keyword))
    for keyword in ("Modality", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime"):
        if keyword not in out:
            setattr(out, keyword, "" if keyword != "Modality" else "MR")
    out.PatientName = ""
    out.PatientBirthDate = ""
    out.PatientID = patient_id
    out.ReferringPhysicianName = ""
    if "NumberOfFrames" in ds:
        out.NumberOfFrames = ds.NumberOfFrames
    return out


def build_diagnosis_sr(
    *,
    sources: Sequence[Sequence[SourceImage]],
    top_source: Mapping[str, SourceImage],
    probabilities: Mapping[str, float],
    top_slice: Mapping[str, int],
    contributions: Mapping[str, Mapping[str, float]],
    model: Mapping[str, str],
    study_id: str,
    patient_id: str,
    missing_modalities: Sequence[str] = (),
    dropped_experts: Sequence[str] = (),
    threshold: float = 0.5,
    keep_ids: bool = False,
) -> Dataset:
    """The SR of one study as a pydicom Dataset (highdicom ``ComprehensiveSR``).

    Args:
        sources: the source series, each a list of its images (magnitude first, then phase).
        top_source: head -> the image of its top slice.
        probabilities: head -> study-level p(y=1) in [0, 1].
        top_slice: head -> index of the top slice (0-based, in the series' slice order).
        contributions: term -> head -> study-level log-odds contribution (nats).
        model: ``{"fingerprint", "variant", "version"}``.
        study_id: the (hashed) study id of the outputs; patient_id: the (hashed) patient id.
        threshold: p at and above which a finding is reported Present.
        keep_ids: keep accession number, study id and study date / time of the source.

    Raises StudyReadError when a source header cannot be re-read.
    """
    headers: dict[str, Dataset] = {}
    evidence: list[Dataset] = []
    for series in sources:
        for image in series:
            if image.path in headers:
                continue
            headers[image.path] = _header(image.path)
            evidence.append(_evidence_item(headers[image.path], patient_id, keep_ids))
    if not evidence:
        raise StudyReadError(study_id, "no source images to reference in the report")

    fingerprint = str(model.get("fingerprint", ""))
    algorithm = hd.sr.AlgorithmIdentification(
        name=f"I2M2 {model.get('variant', '')}".strip(), version=fingerprint or "unknown"
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["i2m2-med device", fingerprint]),
            name="i2m2-med",
            manufacturer_name="i2m2-med",
            model_name=f"I2M2 {model.get('variant', '')}".strip(),
        ),
    )
    groups = []
    for head in HEADS:
        p = float(probabilities[head])
        finding = codes.SCT.Present if p >= threshold else codes.SCT.Absent
        image = top_source[head]
        frames = None if image.frame is None else [image.frame + 1]
        source_image = hd.sr.SourceImageForMeasurementGroup.from_source_image(headers[image.path], referenced_frame_numbers=frames)
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=generate_uid(entropy_srcs=[study_id, fingerprint, head]), identifier=HEAD_TITLES[head]
            ),
            finding_type=_HEAD_CODES[head],
            algorithm_id=algorithm,
            finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.KneeJoint)],
            measurements=[
                hd.sr.Measurement(
                    name=codes.DCM.Probability,
                    value=p,
                    unit=codes.UCUM.NoUnits,
                    algorithm_id=algorithm,
                )
            ],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.DCM.Finding, value=finding)],
            source_images=[source_image],
        )
        parts = [f"{HEAD_TITLES[head]}: p = {p:.4f} ({'present' if p >= threshold else 'absent'} at threshold {threshold:g})",
                 f"top slice {int(top_slice[head])}"]
        terms = [f"{term} {float(values[head]):+.3f}" for term, values in contributions.items() if head in values]
        if terms:
            parts.append("log-odds contributions: " + ", ".join(terms))
        group[0].ContentSequence.append(
            hd.sr.TextContentItem(name=codes.DCM.Comment, value="; ".join(parts), relationship_type="CONTAINS")
        )
        groups.append(group)

    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_PROCEDURE,
        imaging_measurements=groups,
    )
    notes = [RESEARCH_USE]
    context = []
    if missing_modalities:
        context.append("missing modalities: " + ", ".join(missing_modalities))
    if dropped_experts:
        context.append("experts dropped from the product: " + ", ".join(dropped_experts))
    if context:
        notes.append("; ".join(context))
    for text in notes:
        report[0].ContentSequence.append(
            hd.sr.TextContentItem(name=codes.DCM.Comment, value=text, relationship_type="CONTAINS")
        )

    sr = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=report,
        series_instance_uid=generate_uid(entropy_srcs=[study_id, fingerprint, "sr-series"]),
        series_number=9901,
        sop_instance_uid=generate_uid(entropy_srcs=[study_id, fingerprint, "sr-instance"]),
        instance_number=1,
        manufacturer="i2m2-med",
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description="I2M2 knee findings - RESEARCH USE ONLY",
        software_versions=__version__,
    )
    return sr


def write_diagnosis_sr(path: str | os.PathLike, dataset: Dataset) -> Path:
    """Write an SR dataset to ``path`` atomically (temporary name, then rename); returns the path."""
    target = Path(path)
    with atomic_path(target) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)
    return target
