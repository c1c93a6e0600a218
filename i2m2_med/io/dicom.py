"""DICOM MR series as image-domain studies (pydicom, with its pixel-data plugins).

What this reader does, in order:

1. **Scan** every file's header (pixel data deferred): files that are not DICOM, DICOMDIRs and
   non-image objects (structured reports, presentation states) are set aside; an image without
   pixel data, or in a transfer syntax no installed plugin decodes, is a problem naming the file.
   (Deflated files are inflated before their pixels are decoded.)
2. **Group** frames by ``SeriesInstanceUID`` and complex component. Classic single-frame files
   contribute one frame each; an enhanced multi-frame file contributes all its frames (and may
   hold both magnitude and phase frames, told apart per frame). A frame's position, orientation
   and rescale come from its functional groups (per-frame, then shared) before the top-level
   tags, so one series stored as single-frame files or as one multi-frame file is the same
   volume.
   **Duplicates**: the same image stored more than once -- one ``SOPInstanceUID`` (with the
   frame number, in a multi-frame file) in several files, e.g. in two transfer syntaxes -- is
   read once: the first uncompressed copy by file path, else the first by path; a note says how
   many copies were dropped (the series named by a hash). Two images of one UID that differ in
   size, position, orientation or rescale are not copies of one image: their series fails, one
   problem naming one of the files. An unusable file (e.g. without pixel data) whose image the
   series holds from another copy costs the series nothing; its own problem is still listed.
3. **Order** the slices of a series by ``ImagePositionPatient`` projected on the slice normal
   (the cross product of the two ``ImageOrientationPatient`` direction cosines; for a coronal
   series the normal is turned to point posterior, so that slices run anterior to posterior
   whichever way the series was stored), falling back to ``InstanceNumber``, then to file name
   / frame number. A series whose frames differ in size is a problem.
4. **Pair** each magnitude series with a phase series of the same study, matrix, slice count and
   slice positions (the nearest ``SeriesNumber`` when several fit). The component comes from
   ``ComplexImageComponent`` (enhanced MR) or ``ImageType``: value 3 ('M' / 'P', Siemens and
   Philips), else any later value equal to M, P, MAGNITUDE or PHASE. Without one, the image is
   taken as a magnitude image.
5. **Scale**: ``RescaleSlope`` / ``RescaleIntercept`` (per frame for enhanced files) are applied.
   Phase is then mapped to radians: the 2**BitsStored stored levels cover one full turn, so a
   rescaled value ``v`` becomes ``(v - lo) * 2 pi / (2**BitsStored * slope) - pi`` where ``lo``
   is the rescaled smallest stored value (Siemens: 12 bits, slope 2, intercept -4096, i.e.
   -4096..4094 -> ``v * pi / 4096``, [-pi, pi)). Floating-point phase pixel data is taken as
   radians already. Results are clipped to [-pi, pi].
6. **Orient**: a coronal series (the model's plane) is brought to the training orientation by
   :mod:`i2m2_med.io.orientation` from its ``ImageOrientationPatient`` -- row index towards the
   head, column index towards the patient's right -- by swapping rows and columns and / or
   reversing them (pixels are only moved, never interpolated; ``image_shape`` follows a swap).
   A paired phase series gets the transform of its own orientation, which for a phase stored
   like its magnitude is the magnitude's (the magnitude's when the phase has no orientation).
   Other planes, axes 45 degrees or more from every patient axis and series without the tag are
   left as stored. Either way a note says what was done, and the ``image_directions`` tag gives
   the anatomical direction in which the row and column index increase when it is known.

Slices read as ``{"magnitude": (H, W) float32, "phase": (H, W) float32 radians}`` (phase only
when paired). A study without a phase series has ``modalities == ("magnitude",)`` and the note
"no phase series: phase modality missing"; a phase series without magnitude is the mirror case.

Study ids are ``dicom-`` plus 16 hex digits of sha256(StudyInstanceUID | SeriesInstanceUID): no
raw UID leaves this module in an id. The patient's name is never read into any output;
``PatientID`` goes to ``Study.patient_id`` only.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple

import numpy as np

from i2m2_med.errors import StudyReadError
from i2m2_med.io.limits import check_regular_file, read_limits
from i2m2_med.io.orientation import AS_STORED, InPlane, Reorientation, dicom_reorientation, slice_direction
from i2m2_med.io.study import Study

#: File names never read as DICOM images.
IGNORED_NAMES = frozenset({"DICOMDIR"})
_MEDIA_DIRECTORY_SOP = "1.2.840.10008.1.3.10"
_MAGNITUDE = {"M", "MAGNITUDE"}
_PHASE = {"P", "PHASE"}
_OTHER_COMPONENTS = {"R", "I", "REAL", "IMAGINARY", "MIXED"}
_FAT_SAT_OPTIONS = {"FS", "SFS", "FSS", "FAT_SAT", "FATSAT", "SPAIR", "SPIR", "CHESS"}
_FAT_SAT_DESCRIPTION = re.compile(r"(?<![a-z])(fs|fat[ _-]?sat\w*|fat[ _-]?supp\w*|spair|spir)(?![a-z])", re.I)


class DicomScan(NamedTuple):
    """What :func:`collect_dicom` found: studies, problems ``(path, reason)``, and files set
    aside ``(path, reason)`` (not DICOM, DICOMDIR, non-image objects)."""

    studies: list[Study]
    problems: list[tuple[Path, str]]
    skipped: list[tuple[Path, str]]


@dataclass
class _Frame:
    """One 2-D image of a series: a file (and frame number for multi-frame files)."""

    path: Path
    frame: int | None
    rows: int
    cols: int
    slope: float
    intercept: float
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    instance: int | None
    sop_uid: str | None = None  # SOPInstanceUID of the file; with ``frame`` it names the image
    transfer_syntax: str = ""


@dataclass
class _Series:
    key: tuple[str, str]  # (SeriesInstanceUID, component "M"/"P")
    study_uid: str
    series_uid: str
    component: str
    series_number: int | None
    echo_time: float | None
    bits_stored: int
    signed: bool
    float_pixels: bool
    tags: dict[str, Any]
    patient_id: str | None
    frames: list[_Frame] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    order_note: str = ""

    @property
    def orientation(self) -> Reorientation:
        """The orientation rule for this series (from its first frame's orientation)."""
        return dicom_reorientation(self.frames[0].orientation if self.frames else None)


# ---- small helpers --------------------------------------------------------------------------


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when the file has the DICOM Part 10 preamble ("DICM" at byte 128)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _short_hash(*parts: str, n: int = 16) -> str:
    return hashlib.sha256("|".join(parts).encode("utf-8")).hexdigest()[:n]


def _float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = value[0]
        out = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return out if math.isfinite(out) else None


def _int(value: Any) -> int | None:
    f = _float(value)
    return None if f is None else int(f)


def parse_age(value: Any) -> float | None:
    """DICOM age string -> years: "045Y" -> 45.0, "006M" -> 0.5, "010W", "003D"."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d{1,3})\s*([DWMYdwmy]?)\s*", str(value))
    if not m:
        return None
    n = float(m.group(1))
    unit = (m.group(2) or "Y").upper()
    return {"Y": n, "M": n / 12.0, "W": n * 7.0 / 365.25, "D": n / 365.25}[unit]


def _groups(ds: Any, frame: int | None) -> list[Any]:
    """Functional-group items that apply to ``frame``: per-frame first, then shared."""
    out = []
    per = ds.get("PerFrameFunctionalGroupsSequence")
    if per is not None and frame is not None and frame < len(per):
        out.append(per[frame])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        out.append(shared[0])
    return out


def _find(ds: Any, keyword: str, frame: int | None = 0) -> Any:
    """``keyword`` at the top level, else inside the functional groups of ``frame``."""
    value = ds.get(keyword)
    if value not in (None, ""):
        return value
    for group in _groups(ds, frame):
        for element in group:
            if element.VR != "SQ" or not element.value:
                continue
            item = element.value[0]
            if keyword in item and item.get(keyword) not in (None, ""):
                return item.get(keyword)
    return None


def _component_of_image_type(image_type: Any) -> str | None:
    values = [str(v).strip().upper() for v in (image_type or [])]
    if len(values) > 2 and values[2] in _MAGNITUDE | _PHASE | _OTHER_COMPONENTS:
        value = values[2]
    else:
        value = next((v for v in values[2:] if v in _MAGNITUDE | _PHASE), None)
    if value is None:
        return None
    return "M" if value in _MAGNITUDE else "P" if value in _PHASE else value


def _component(ds: Any, frame: int | None) -> str:
    """'M', 'P' or another component name for ``frame`` (magnitude when nothing says)."""
    if frame is not None:
        for group in _groups(ds, frame):
            seq = group.get("MRImageFrameTypeSequence")
            if seq and seq[0].get("ComplexImageComponent"):
                value = str(seq[0].ComplexImageComponent).upper()
                if value != "MIXED":
                    return "M" if value in _MAGNITUDE else "P" if value in _PHASE else value
            if seq and seq[0].get("FrameType"):
                comp = _component_of_image_type(seq[0].FrameType)
                if comp:
                    return comp
    value = str(ds.get("ComplexImageComponent") or "").upper()
    if value and value != "MIXED":
        return "M" if value in _MAGNITUDE else "P" if value in _PHASE else value
    return _component_of_image_type(ds.get("ImageType")) or "M"


def _fat_sat(ds: Any) -> bool | None:
    options = ds.get("ScanOptions")
    description = str(ds.get("SeriesDescription") or "") + " " + str(ds.get("ProtocolName") or "")
    suppression = str(_find(ds, "SpectrallySelectedSuppression") or "").upper()
    if options:
        values = [str(v).strip().upper() for v in (options if not isinstance(options, str) else options.split("\\"))]
        if any(v in _FAT_SAT_OPTIONS for v in values):
            return True
    if suppression in {"FAT", "FAT_AND_WATER"}:
        return True
    if _FAT_SAT_DESCRIPTION.search(description):
        return True
    if options or description.strip() or suppression:
        return False
    return None


def dicom_tags(ds: Any) -> dict[str, Any]:
    """Standard study tags (see :mod:`i2m2_med.io.study`) from a DICOM header.

    Never reads ``PatientName``. Enhanced MR values inside functional groups are found too.
    """
    tags: dict[str, Any] = {}
    age = parse_age(ds.get("PatientAge"))
    if age is not None:
        tags["age_years"] = age
    sex = str(ds.get("PatientSex") or "").strip().upper()
    if sex in {"M", "F", "O"}:
        tags["sex"] = sex
    weight = _float(ds.get("PatientWeight"))
    if weight and weight > 0:
        tags["weight_kg"] = weight
    height = _float(ds.get("PatientSize"))
    if height and height > 0:
        tags["height_m"] = height
        if weight and weight > 0:
            tags["bmi"] = weight / (height * height)
    for key, keyword in (
        ("field_strength_t", "MagneticFieldStrength"),
        ("tr_ms", "RepetitionTime"),
        ("flip_angle_deg", "FlipAngle"),
    ):
        value = _float(_find(ds, keyword))
        if value is not None:
            tags[key] = value
    te = _float(ds.get("EchoTime")) if ds.get("EchoTime") not in (None, "") else _float(_find(ds, "EffectiveEchoTime"))
    if te is not None:
        tags["te_ms"] = te
    ti = _float(ds.get("InversionTime")) if ds.get("InversionTime") not in (None, "") else _float(_find(ds, "InversionTimes"))
    if ti is not None:
        tags["ti_ms"] = ti
    for key, keyword in (("vendor", "Manufacturer"), ("model", "ManufacturerModelName")):
        value = str(ds.get(keyword) or "").strip()
        if value:
            tags[key] = value
    protocol = str(ds.get("ProtocolName") or ds.get("SeriesDescription") or "").strip()
    if protocol:
        tags["protocol"] = protocol
    fat = _fat_sat(ds)
    if fat is not None:
        tags["fat_sat"] = fat
    # what the series classification reads (i2m2_med.io.series)
    for key, keyword in (("series_description", "SeriesDescription"), ("study_description", "StudyDescription"),
                         ("body_part", "BodyPartExamined")):
        value = str(ds.get(keyword) or "").strip()
        if value:
            tags[key] = value[:128]
    for key, keyword in (("image_type", "ImageType"), ("scanning_sequence", "ScanningSequence"),
                         ("sequence_variant", "SequenceVariant")):
        value = ds.get(keyword)
        if value:
            items = [value] if isinstance(value, str) else list(value)
            tags[key] = [str(v).strip().upper()[:32] for v in items[:8]]
    return tags


def _transfer_syntax_problem(ds: Any) -> str | None:
    from pydicom.pixels import get_decoder

    meta = getattr(ds, "file_meta", None)
    ts = None if meta is None else meta.get("TransferSyntaxUID")
    if ts is None:
        return None
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        return f"unsupported transfer syntax {ts.name} ({ts}): no pixel-data decoder exists"
    if not decoder.is_available:
        return f"unsupported transfer syntax {ts.name}: no installed pixel-data plugin decodes it"
    return None


def _native_pixel_shortfall(ds: Any, rows: int, cols: int) -> str | None:
    """A reason when uncompressed pixel data is shorter than Rows x Columns x frames needs."""
    meta = getattr(ds, "file_meta", None)
    ts = None if meta is None else meta.get("TransferSyntaxUID")
    if "PixelData" not in ds or (ts is not None and ts.is_compressed):
        return None
    element = ds.get_item("PixelData")
    length = getattr(element, "length", None)
    if length is None:
        value = getattr(element, "value", None)
        length = None if value is None else len(value)
    if length is None or length == 0xFFFFFFFF:
        return None
    frames = _int(ds.get("NumberOfFrames")) or 1
    bits = _int(ds.get("BitsAllocated")) or 16
    needed = rows * cols * frames * bits // 8
    if length < needed:
        return f"pixel data truncated: {length} bytes, {rows}x{cols}x{frames} at {bits} bits needs {needed}"
    return None


def _rescale(ds: Any, frame: int | None) -> tuple[float, float]:
    slope = intercept = None
    if frame is not None:
        for group in _groups(ds, frame):
            seq = group.get("PixelValueTransformationSequence")
            if seq:
                slope = _float(seq[0].get("RescaleSlope"))
                intercept = _float(seq[0].get("RescaleIntercept"))
                break
    if slope is None:
        slope = _float(ds.get("RescaleSlope"))
    if intercept is None:
        intercept = _float(ds.get("RescaleIntercept"))
    return (1.0 if not slope else slope), (0.0 if intercept is None else intercept)


def _position(ds: Any, frame: int | None) -> tuple[tuple | None, tuple | None]:
    """(ImagePositionPatient, ImageOrientationPatient) of ``frame``. In a multi-frame file the
    functional groups (per-frame, then shared) come first: a top-level position some converters
    leave behind is one frame's, and would put every frame at the same place."""
    pos = ori = None
    if frame is not None:
        for group in _groups(ds, frame):
            if pos is None and group.get("PlanePositionSequence"):
                pos = group.PlanePositionSequence[0].get("ImagePositionPatient")
            if ori is None and group.get("PlaneOrientationSequence"):
                ori = group.PlaneOrientationSequence[0].get("ImageOrientationPatient")
    if pos is None:
        pos = ds.get("ImagePositionPatient")
    if ori is None:
        ori = ds.get("ImageOrientationPatient")
    try:
        pos_t = tuple(float(v) for v in pos) if pos is not None and len(pos) == 3 else None
    except (TypeError, ValueError):
        pos_t = None
    try:
        ori_t = tuple(float(v) for v in ori) if ori is not None and len(ori) == 6 else None
    except (TypeError, ValueError):
        ori_t = None
    return pos_t, ori_t


# ---- scanning -------------------------------------------------------------------------------


def _read_header(path: Path) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    check_regular_file(path)
    try:
        return pydicom.dcmread(path, defer_size=1024, force=not is_dicom_file(path))
    except InvalidDicomError as exc:
        raise StudyReadError(path, f"not a DICOM file ({exc})") from None
    except Exception as exc:  # pydicom raises many types on garbage input
        raise StudyReadError(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None


def _damaged(path: Path, ds: Any, reason: str) -> StudyReadError:
    """The error of an image file that cannot be used, carrying the series it belongs to (when
    its header names one), so that the series is not assembled without it."""
    exc = StudyReadError(path, reason)
    exc.series_uid = str(ds.get("SeriesInstanceUID") or "")  # type: ignore[attr-defined]
    exc.sop_uid = _sop_uid(ds)  # type: ignore[attr-defined]
    return exc


def _sop_uid(ds: Any) -> str | None:
    """The SOPInstanceUID of a file (the file meta's copy when the data set lacks it)."""
    meta = getattr(ds, "file_meta", None)
    uid = ds.get("SOPInstanceUID") or (meta.get("MediaStorageSOPInstanceUID") if meta is not None else None)
    return (str(uid).strip() or None) if uid else None


def _scan_file(path: Path, series: dict[tuple[str, str], _Series]) -> str | None:
    """Add the frames of one file to ``series``; return a reason when the file is set aside.

    Raises :class:`StudyReadError` for an image file that cannot be used.
    """
    if path.name.upper() in IGNORED_NAMES:
        return "DICOMDIR (directory index) ignored"
    ds = _read_header(path)
    meta = getattr(ds, "file_meta", None)
    sop = str(ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else "") or "")
    if sop == _MEDIA_DIRECTORY_SOP or "DirectoryRecordSequence" in ds:
        return "DICOMDIR (directory index) ignored"
    has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    if not has_pixels:
        if "Rows" in ds or "Columns" in ds:
            raise _damaged(path, ds, "no pixel data (PixelData element absent)")
        if not ds.get("SOPClassUID") and not ds.get("SeriesInstanceUID"):
            raise StudyReadError(path, "not a DICOM file (no SOP class, series or pixel data)")
        name = getattr(ds.get("SOPClassUID"), "name", sop) or "unknown SOP class"
        if str(name).endswith("Image Storage"):  # an image object without its image: cut short
            raise _damaged(path, ds, f"an image ({name}) without Rows, Columns or pixel data: the file is cut short")
        return f"not an image ({name})"
    problem = _transfer_syntax_problem(ds)
    if problem:
        raise StudyReadError(path, problem)
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise StudyReadError(path, f"colour image ({ds.get('PhotometricInterpretation')}) is not an MR magnitude/phase image")
    rows, cols = _int(ds.get("Rows")), _int(ds.get("Columns"))
    if not rows or not cols:
        raise StudyReadError(path, "Rows/Columns missing or zero")
    read_limits().check(str(path), slices=max(1, _int(ds.get("NumberOfFrames")) or 1), matrix=(rows, cols),
                        item_bytes=max(4, (_int(ds.get("BitsAllocated")) or 16) // 8))
    short = _native_pixel_shortfall(ds, rows, cols)
    if short:
        raise StudyReadError(path, short)
    series_uid = str(ds.get("SeriesInstanceUID") or "")
    study_uid = str(ds.get("StudyInstanceUID") or "")
    if not series_uid:
        series_uid = "file:" + str(path)
    n_frames = _int(ds.get("NumberOfFrames")) or 1
    multiframe = "NumberOfFrames" in ds
    tags = dicom_tags(ds)
    patient_id = str(ds.get("PatientID") or "").strip() or None
    float_pixels = "PixelData" not in ds
    ts = str(getattr(meta, "TransferSyntaxUID", "") or "")
    # every frame is described first, so that a failure leaves ``series`` untouched
    instance = _int(ds.get("InstanceNumber"))
    sop_uid = _sop_uid(ds)
    described = []
    for frame in range(n_frames) if multiframe else [None]:
        slope, intercept = _rescale(ds, frame)
        pos, ori = _position(ds, frame)
        described.append((_component(ds, frame), _Frame(path, frame, rows, cols, slope, intercept, pos, ori, instance,
                                                        sop_uid, ts)))
    for comp, frame_info in described:
        key = (series_uid, comp)
        s = series.get(key)
        if s is None:
            s = series[key] = _Series(
                key=key,
                study_uid=study_uid,
                series_uid=series_uid,
                component=comp,
                series_number=_int(ds.get("SeriesNumber")),
                echo_time=tags.get("te_ms"),
                bits_stored=_int(ds.get("BitsStored")) or _int(ds.get("BitsAllocated")) or 16,
                signed=bool(_int(ds.get("PixelRepresentation")) or 0),
                float_pixels=float_pixels,
                tags=tags,
                patient_id=patient_id,
            )
        s.frames.append(frame_info)
    return None


def missing_positions(positions: list[float]) -> int:
    """How many slices a series lacks, from its sorted slice positions (mm along the normal):
    where the spacing between neighbours is a whole multiple (2 or more, within 10 %) of the
    series' spacing (the median of the spacings up to 1.5 times the smallest), the slices in
    between are missing. 0 for fewer than 3 slices or irregular spacing."""
    d = np.diff(np.asarray(positions, dtype=np.float64))
    if d.size < 2 or float(d.min()) <= 0:
        return 0
    step = float(np.median(d[d <= 1.5 * float(d.min())]))
    ratio = d / step
    whole = np.rint(ratio)
    gaps = (whole >= 2) & (np.abs(ratio - whole) <= 0.1 * whole)
    return int((whole[gaps] - 1).sum())


def _order(s: _Series) -> str:
    """Sort the frames of a series in place; return a note saying how."""
    frames = s.frames
    if all(f.position is not None for f in frames) and frames[0].orientation is not None:
        normal = slice_direction(frames[0].orientation)
        if normal is not None:
            frames.sort(key=lambda f: (float(np.dot(normal, f.position)), f.instance or 0, str(f.path), f.frame or 0))
            proj = [float(np.dot(normal, f.position)) for f in frames]
            if len(set(round(p, 3) for p in proj)) < len(proj):
                s.notes.append("several images share a slice position (multi-echo or repeated acquisition?)")
            else:
                missing = missing_positions(proj)
                if missing:
                    s.tags["missing_slices"] = missing
                    s.notes.append(f"{missing} slice{'' if missing == 1 else 's'} missing from the series: gaps in the "
                                   "slice positions where the others are evenly spaced (images lost or unreadable?)")
            how = "slices ordered by ImagePositionPatient along the slice normal"
            return how + (", anterior to posterior" if s.orientation.canonical else "")
    if len({f.path for f in frames}) == 1 and frames[0].frame is not None:
        frames.sort(key=lambda f: f.frame or 0)
        return "slices ordered by frame number (no per-frame positions in the multi-frame file)"
    if all(f.instance is not None for f in frames):
        frames.sort(key=lambda f: (f.instance, str(f.path), f.frame or 0))
        return "slices ordered by InstanceNumber (no usable ImagePositionPatient/ImageOrientationPatient)"
    frames.sort(key=lambda f: (str(f.path), f.frame or 0))
    return "slices ordered by file name / frame number (no positions or instance numbers)"


def _compressed(transfer_syntax: str) -> bool:
    from pydicom.uid import UID

    return bool(transfer_syntax) and UID(transfer_syntax).is_compressed


def _copy_clash(kept: _Frame, other: _Frame) -> str | None:
    """Why two images with one SOPInstanceUID (and frame) are not copies of one image, if they
    differ in what the reader takes from them: size, place in the patient, rescale."""
    if (kept.rows, kept.cols) != (other.rows, other.cols):
        return f"{other.rows}x{other.cols} pixels where the other copy has {kept.rows}x{kept.cols}"
    for name, a, b, tol in (("ImagePositionPatient", kept.position, other.position, 0.01),
                            ("ImageOrientationPatient", kept.orientation, other.orientation, 1e-4)):
        if (a is None) != (b is None) or (a is not None and not np.allclose(a, b, rtol=0.0, atol=tol)):
            return f"another {name}"
    if not (math.isclose(kept.slope, other.slope, rel_tol=1e-4)
            and math.isclose(kept.intercept, other.intercept, rel_tol=1e-4, abs_tol=1e-4)):
        return "another RescaleSlope / RescaleIntercept"
    return None


def _drop_duplicates(s: _Series) -> None:
    """Keep one image per SOPInstanceUID (and frame, in a multi-frame file): the same instance
    stored twice -- in two transfer syntaxes, or copied twice into the folder -- is one slice.

    The copy kept is the first uncompressed one by file path, else the first by file path; a
    note says how many were dropped. Raises :class:`StudyReadError` (naming a copy) when two
    images of one UID differ in size, position, orientation or rescale: not copies of one image.
    """
    copies: dict[tuple[str, int | None], list[_Frame]] = defaultdict(list)
    for f in s.frames:
        if f.sop_uid:
            copies[(f.sop_uid, f.frame)].append(f)
    dropped: set[int] = set()
    for (_, frame), group in copies.items():
        if len(group) < 2:
            continue
        group.sort(key=lambda f: (_compressed(f.transfer_syntax), str(f.path)))
        kept = group[0]
        for other in group[1:]:
            clash = _copy_clash(kept, other)
            if clash:
                what = "SOPInstanceUID" if frame is None else f"SOPInstanceUID and frame number ({frame + 1})"
                raise StudyReadError(
                    other.path,
                    f"series {_short_hash(s.series_uid, n=12)}: the same {what} as {kept.path.name} "
                    f"but {clash}: not two copies of one image",
                )
            dropped.add(id(other))
    if not dropped:
        return
    s.frames = [f for f in s.frames if id(f) not in dropped]
    n = len(dropped)
    s.notes.append(
        f"{n} duplicate image{'' if n == 1 else 's'} dropped: the same SOPInstanceUID stored more than once "
        f"in series {_short_hash(s.series_uid, n=12)}; one copy of each read (uncompressed preferred)"
    )


def _check_sizes(s: _Series) -> None:
    sizes: dict[tuple[int, int], list[_Frame]] = defaultdict(list)
    for f in s.frames:
        sizes[(f.rows, f.cols)].append(f)
    if len(sizes) > 1:
        major = max(sizes, key=lambda k: len(sizes[k]))
        odd = next(f for f in s.frames if (f.rows, f.cols) != major)
        listing = ", ".join(
            f"{r}x{c} ({len(v)} image{'' if len(v) == 1 else 's'})" for (r, c), v in sorted(sizes.items())
        )
        raise StudyReadError(
            odd.path,
            f"series {_short_hash(s.series_uid, n=12)} mixes image sizes {listing}; "
            f"this image is {odd.rows}x{odd.cols}",
        )


def _slice_positions(s: _Series) -> np.ndarray | None:
    if not s.frames or any(f.position is None for f in s.frames) or s.frames[0].orientation is None:
        return None
    normal = slice_direction(s.frames[0].orientation)
    if normal is None:
        return None
    return np.asarray([np.dot(normal, f.position) for f in s.frames])


def _pairable(mag: _Series, ph: _Series) -> bool:
    if mag.study_uid != ph.study_uid or len(mag.frames) != len(ph.frames):
        return False
    if (mag.frames[0].rows, mag.frames[0].cols) != (ph.frames[0].rows, ph.frames[0].cols):
        return False
    pm, pp = _slice_positions(mag), _slice_positions(ph)
    if pm is not None and pp is not None:
        return bool(np.allclose(pm, pp, atol=0.01))
    return True


def _phase_mapping(s: _Series) -> tuple[float, float] | None:
    """(lo, span) with radians = (v - lo) * 2 pi / span - pi; None for float (radian) data."""
    if s.float_pixels:
        return None
    f0 = s.frames[0]
    levels = 2.0 ** s.bits_stored
    min_stored = -(levels / 2.0) if s.signed else 0.0
    lo = f0.slope * min_stored + f0.intercept
    span = levels * f0.slope
    if f0.slope < 0:  # a negative slope flips the range
        lo, span = f0.slope * (min_stored + levels - 1) + f0.intercept, -span
    return lo, span


class DicomSliceReader:
    """Reads slice ``i`` of a DICOM study: one frame per modality, decoded on demand.

    Picklable (paths and numbers only). Returns ``{"magnitude": (H, W) float32}`` and, when a
    phase series is paired, ``"phase": (H, W) float32`` in radians; each image transformed by
    its series' :class:`~i2m2_med.io.orientation.InPlane` (``magnitude_transform``,
    ``phase_transform``) to the training orientation. The files in ``deflated`` (Deflated
    Explicit VR Little Endian) are read whole and inflated: pixel data cannot be found in them
    without that.
    """

    def __init__(self, magnitude: list[tuple], phase: list[tuple] | None, phase_map: tuple[float, float] | None,
                 phase_only: bool = False, magnitude_transform: InPlane = AS_STORED,
                 phase_transform: InPlane = AS_STORED, deflated: frozenset[str] = frozenset()):
        # each entry: (path str, frame index or None, slope, intercept)
        self.magnitude = magnitude
        self.phase = phase
        self.phase_map = phase_map
        self.phase_only = phase_only
        self.magnitude_transform = magnitude_transform
        self.phase_transform = phase_transform
        self.deflated = frozenset(deflated)

    def _decode(self, entry: tuple, index: int) -> np.ndarray:
        import pydicom
        from pydicom.pixels import pixel_array

        path, frame, slope, intercept = entry
        try:
            arr = pixel_array(pydicom.dcmread(path) if path in self.deflated else path, index=frame)
        except Exception as exc:  # decoder failures come in many types
            raise StudyReadError(path, f"slice {index}: cannot decode pixel data ({type(exc).__name__}: {exc})") from None
        if arr.ndim != 2:
            raise StudyReadError(path, f"slice {index}: decoded pixel array has shape {arr.shape}, expected (H, W)")
        out = arr.astype(np.float32)
        if slope != 1.0 or intercept != 0.0:
            out = out * np.float32(slope) + np.float32(intercept)
        if not np.isfinite(out).all():
            raise StudyReadError(path, f"slice {index}: pixel data contains NaN/Inf")
        return out

    def _to_radians(self, values: np.ndarray) -> np.ndarray:
        if self.phase_map is None:
            return np.clip(values, -np.pi, np.pi).astype(np.float32)
        lo, span = self.phase_map
        rad = (values - np.float32(lo)) * np.float32(2.0 * np.pi / span) - np.float32(np.pi)
        return np.clip(rad, -np.pi, np.pi).astype(np.float32)

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if not self.phase_only:
            out["magnitude"] = self.magnitude_transform.apply(self._decode(self.magnitude[index], index))
        if self.phase is not None:
            out["phase"] = self.phase_transform.apply(self._to_radians(self._decode(self.phase[index], index)))
        return out


def _entries(s: _Series) -> list[tuple]:
    return [(str(f.path), f.frame, f.slope, f.intercept) for f in s.frames]


def _source(s: _Series) -> Path:
    paths = sorted({f.path for f in s.frames})
    if len(paths) == 1:
        return paths[0]
    return Path(os.path.commonpath([str(p) for p in paths]))


def _describe_rescale(s: _Series) -> str | None:
    pairs = sorted({(f.slope, f.intercept) for f in s.frames})
    if pairs == [(1.0, 0.0)]:
        return None
    if len(pairs) == 1:
        return f"rescale applied (slope {pairs[0][0]:g}, intercept {pairs[0][1]:g})"
    return f"rescale applied per image ({len(pairs)} distinct slope/intercept pairs)"


def _build_study(mag: _Series | None, ph: _Series | None) -> Study:
    main = mag if mag is not None else ph
    assert main is not None
    notes = list(main.notes)
    notes.append(main.order_note)
    rule = main.orientation
    notes.append(rule.note)
    main_transform = rule.in_plane
    phase_transform = main_transform
    if mag is not None and ph is not None:
        notes.extend("phase series: " + n for n in ph.notes)
    if mag is not None and ph is not None and ph.frames[0].orientation is not None:
        phase_transform = ph.orientation.in_plane
        if phase_transform != main_transform:
            notes.append(f"phase series stored in another orientation: {ph.orientation.note}")
    from pydicom.uid import UID

    compressed = sorted({UID(f.transfer_syntax).name for f in main.frames if _compressed(f.transfer_syntax)})
    if compressed:
        notes.append(f"compressed transfer syntax: {', '.join(compressed)}")
    if mag is not None:
        r = _describe_rescale(mag)
        if r:
            notes.append("magnitude: " + r)
    phase_map = None
    if ph is not None:
        phase_map = _phase_mapping(ph)
        r = _describe_rescale(ph)
        if r:
            notes.append("phase: " + r)
        if phase_map is None:
            notes.append("phase: floating-point pixel data taken as radians")
        else:
            lo, span = phase_map
            notes.append(
                f"phase: {ph.bits_stored}-bit stored range [{lo:g}, {lo + span - abs(ph.frames[0].slope):g}] "
                f"mapped to radians [-pi, pi)"
            )
        if mag is not None:
            notes.append(f"phase series {_short_hash(ph.series_uid, n=12)} paired (series number {ph.series_number})")
    if mag is not None and ph is None:
        notes.append("no phase series: phase modality missing")
    if mag is None:
        notes.append("no magnitude series: magnitude modality missing (phase series only)")
    modalities = tuple(m for m, s in (("magnitude", mag), ("phase", ph)) if s is not None)
    tags = dict(main.tags)
    f0 = main.frames[0]
    tags["image_shape"] = list(main_transform.shape(f0.rows, f0.cols))
    if f0.orientation is not None:
        tags["orientation"] = [round(float(v), 4) for v in f0.orientation]
    if rule.directions is not None:
        tags["image_directions"] = list(rule.directions)
    if not main.series_uid.startswith("file:"):  # a series without a UID is named by its file: not a tag
        tags["series_uid"] = main.series_uid
    if main.series_number is not None:
        tags["series_number"] = main.series_number
    reader = DicomSliceReader(
        _entries(mag) if mag is not None else [],
        _entries(ph) if ph is not None else None,
        phase_map,
        phase_only=mag is None,
        magnitude_transform=main_transform,
        phase_transform=phase_transform if mag is not None else main_transform,
        deflated=frozenset(str(f.path) for s in (mag, ph) if s is not None for f in s.frames
                           if f.transfer_syntax and UID(f.transfer_syntax).is_deflated),
    )
    return Study(
        study_id="dicom-" + _short_hash(main.study_uid, main.series_uid),
        source=_source(main),
        format="dicom",
        domain="image",
        n_slices=len(main.frames),
        modalities=modalities,
        slice_reader=reader,
        tags=tags,
        patient_id=main.patient_id,
        notes=notes,
    )



def collect_dicom(paths: Iterable[str | os.PathLike]) -> DicomScan:
    """Scan DICOM files (any extension), group them into series and pair magnitude with phase.

    Never raises for a bad file: every failure is returned in ``problems`` as ``(path, reason)``
    and the rest is still read. Studies come sorted by source path, then study id.
    """
    series: dict[tuple[str, str], _Series] = {}
    problems: list[tuple[Path, str]] = []
    skipped: list[tuple[Path, str]] = []
    lost: dict[str, list[tuple[Path, str, str | None]]] = {}  # series uid -> its unusable images (path, reason, SOP uid)
    for p in sorted({Path(p) for p in paths}):
        try:
            reason = _scan_file(p, series)
        except StudyReadError as exc:
            problems.append((p, exc.reason))
            uid = getattr(exc, "series_uid", "")
            if uid:
                lost.setdefault(uid, []).append((p, exc.reason, getattr(exc, "sop_uid", None)))
            continue
        except Exception as exc:  # a malformed element surfaces when pydicom converts it
            problems.append((p, f"malformed DICOM header ({type(exc).__name__}: {' '.join(str(exc).split())})"))
            continue
        if reason:
            skipped.append((p, reason))

    good: list[_Series] = []
    for s in series.values():
        try:
            _drop_duplicates(s)
            _check_sizes(s)
        except StudyReadError as exc:
            problems.append((Path(exc.where or ""), exc.reason))
            continue
        s.order_note = _order(s)
        if s.component not in ("M", "P"):
            problems.append((_source(s), f"series of {s.component} component images is not supported (magnitude/phase only)"))
            continue
        good.append(s)
    good = _without_lost(good, lost, problems)

    mags = sorted((s for s in good if s.component == "M"), key=lambda s: (s.study_uid, s.series_number or 0, s.series_uid))
    phases = [s for s in good if s.component == "P"]
    used: set[tuple[str, str]] = set()
    studies: list[Study] = []
    for mag in mags:
        candidates = [p for p in phases if p.key not in used and _pairable(mag, p)]
        # the same series split into M and P frames comes first, then the same echo time,
        # then the nearest series number
        candidates.sort(key=lambda p: (
            p.series_uid != mag.series_uid,
            p.echo_time != mag.echo_time,
            abs((p.series_number or 0) - (mag.series_number or 0)),
            p.series_uid,
        ))
        ph = candidates[0] if candidates else None
        if ph is not None:
            used.add(ph.key)
        studies.append(_build_study(mag, ph))
    for ph in phases:
        if ph.key not in used:
            studies.append(_build_study(None, ph))
    studies.sort(key=lambda st: (str(st.source), st.study_id))
    problems.sort(key=lambda item: str(item[0]))
    return DicomScan(studies, problems, skipped)


def _without_lost(good: list[_Series], lost: Mapping[str, list[tuple[Path, str, str | None]]],
                  problems: list[tuple[Path, str]]) -> list[_Series]:
    """The series of ``good`` minus those that lost images (``lost``: series uid -> unusable
    files), and minus the other component (magnitude or phase) each of those would have been
    paired with: a study is never scored on fewer slices than it has, and its phase never splits
    off as a study of its own. Each left-out study is one problem naming the lost images. An
    unusable file whose SOPInstanceUID the series holds from another copy loses nothing (its
    problem stays listed; a note says a copy was set aside)."""
    if not lost:
        return good
    held: dict[str, set[str]] = defaultdict(set)  # series uid -> the SOP instances read (all components)
    for s in good:
        held[s.series_uid].update(f.sop_uid for f in s.frames if f.sop_uid)
    for s in good:
        own = {f.sop_uid for f in s.frames}
        covered = sum(1 for _, _, sop in lost.get(s.series_uid, ()) if sop is not None and sop in own)
        if covered:
            s.notes.append(f"{covered} unusable duplicate image file{'' if covered == 1 else 's'} set aside: "
                           "the same SOPInstanceUID read from another copy")
    missing = {uid: gone for uid, files in lost.items()
               if (gone := [(p, reason) for p, reason, sop in files if sop is None or sop not in held[uid]])}
    lost = missing
    damaged = [s for s in good if s.series_uid in lost]
    dropped: set[tuple[str, str]] = {s.key for s in damaged}
    for s in damaged:
        partners = [o for o in good if o.key not in dropped and o.component != s.component and _partial_pair(s, o)]
        dropped.update(o.key for o in partners)
        files = lost[s.series_uid]
        first_path, first_reason = files[0]
        what = "series and its " + ("phase" if s.component == "M" else "magnitude") + " series" if partners else "series"
        problems.append((_source(s), f"{len(files)} of its {len(s.frames) + len(files)} images unusable "
                                     f"({first_path.name}: {first_reason}): the {what} left out whole, "
                                     "rather than scored on fewer slices"))
    return [s for s in good if s.key not in dropped]


def _partial_pair(damaged: _Series, other: _Series) -> bool:
    """Whether ``other`` is the magnitude/phase partner of a series that lost images: same study
    and image size, and the damaged series' slice positions a subset of the other's."""
    if damaged.study_uid != other.study_uid:
        return False
    if (damaged.frames[0].rows, damaged.frames[0].cols) != (other.frames[0].rows, other.frames[0].cols):
        return False
    if damaged.series_uid == other.series_uid:
        return True  # one series split into magnitude and phase frames
    pd, po = _slice_positions(damaged), _slice_positions(other)
    if pd is None or po is None:
        return len(damaged.frames) < len(other.frames)
    return bool(all(np.isclose(po, x, atol=0.01).any() for x in pd))


def _walk(paths_or_folder: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    if isinstance(paths_or_folder, (str, os.PathLike)):
        items = [Path(paths_or_folder)]
    else:
        items = [Path(p) for p in paths_or_folder]
    files: list[Path] = []
    for item in items:
        if item.is_dir():
            files.extend(p for p in item.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif item.exists():
            files.append(item)
        else:
            raise StudyReadError(item, "no such file or folder")
    return sorted(files)


def read_dicom_series(paths_or_folder: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Study]:
    """Read DICOM files or a folder tree into studies, strictly.

    ``paths_or_folder``: one file, one folder (walked recursively) or several of either. Files
    set aside (DICOMDIR, non-image objects) are ignored; any other problem raises the first
    :class:`StudyReadError` (file and reason). Use :func:`collect_dicom` (or
    :func:`i2m2_med.io.discover.discover`) to keep going past bad files. Raises as well when
    nothing readable is found.
    """
    files = _walk(paths_or_folder)
    scan = collect_dicom(files)
    if scan.problems:
        path, reason = scan.problems[0]
        raise StudyReadError(path, reason)
    if not scan.studies:
        where = files[0] if len(files) == 1 else paths_or_folder if isinstance(paths_or_folder, (str, os.PathLike)) else None
        reason = scan.skipped[0][1] if len(files) == 1 and scan.skipped else "no DICOM image series found"
        raise StudyReadError(where, reason)
    return scan.studies
