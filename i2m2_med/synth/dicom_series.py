"""Magnitude and phase DICOM series (MR Image Storage) of a synthetic acquisition.

One folder per study, ``dicom/<study_id>/magnitude/IM_0001.dcm ...`` and ``.../phase/...``:
classic single-frame MR images, Explicit VR Little Endian, 12 bits stored in 16.

* ``ImageType`` ORIGINAL\\PRIMARY\\M\\ND (magnitude) and ORIGINAL\\PRIMARY\\P\\ND (phase).
* Magnitude: stored 0..4095, ``RescaleSlope`` = max / 4095 so that rescaled values are the
  reconstruction in its own units (``reconstruction_esc`` / ``_rss`` of the h5 file, to 12-bit
  precision).
* Phase (Siemens convention): stored 0..4095, ``RescaleSlope`` 2, ``RescaleIntercept`` -4096,
  radians = rescaled value * pi / 4096, covering [-pi, pi). For multicoil data the phase is that
  of the coil combination with the known sensitivities.
* Pixel rows are in the orientation of the h5 reconstruction (row 0 = inferior), so that the
  three formats of a study give the same images and the fastMRI+ boxes (image convention) land
  on them: ``ImageOrientationPatient`` = [-1, 0, 0, 0, 0, 1] (along a row towards the patient's
  right, down a column towards the head); slices run anterior to posterior (``+y`` in LPS),
  ``ImagePositionPatient`` of the first pixel, ``SliceLocation`` = y, ``InstanceNumber`` = slice + 1.
* Patient module from the tabular subject: ``PatientName`` "SYNTH^ANON" (a placeholder, never a
  name), ``PatientID`` the hashed subject id, ``PatientAge`` (nnnY), ``PatientSex``,
  ``PatientWeight`` (kg), ``PatientSize`` (m). Sequence: ``MagneticFieldStrength`` (T),
  ``RepetitionTime`` / ``EchoTime`` (ms), ``FlipAngle`` (deg), ``ScanningSequence`` SE,
  ``SequenceVariant`` SK\\SP, ``ScanOptions`` "FS" with fat saturation, ``SliceThickness`` and
  ``SpacingBetweenSlices`` (mm), ``PixelSpacing`` (mm).
* UIDs are derived deterministically from the study id (same seed, same files).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from i2m2_med.atomic import atomic_path
from i2m2_med.synth.volume import Acquisition

ORIENTATION = [-1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
PATIENT_NAME = "SYNTH^ANON"


def _ds(value: float) -> str:
    text = f"{value:.6g}"
    return text if len(text) <= 16 else f"{value:.4e}"


def _uid(*parts: object) -> str:
    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def quantise_phase(phase: np.ndarray) -> np.ndarray:
    """Radians -> Siemens 12-bit stored values (uint16, 0..4095): v = stored * 2 - 4096, rad = v * pi / 4096."""
    wrapped = np.mod(phase.astype(np.float64) + np.pi, 2 * np.pi) - np.pi
    stored = np.round((wrapped + np.pi) * (4096.0 / (2 * np.pi))).astype(np.int64) % 4096
    return stored.astype(np.uint16)


def write_dicom_series(out_dir: Path, acq: Acquisition, seed: int) -> tuple[Path, Path]:
    """Write the magnitude and phase series of ``acq`` under ``out_dir/dicom/<study_id>/``."""
    base = out_dir / "dicom" / acq.study_id
    mag = acq.reconstruction
    phase = np.angle(acq.image).astype(np.float32)
    peak = float(mag.max()) or 1.0
    mag_slope = peak / 4095.0
    mag_stored = np.clip(np.round(mag / mag_slope), 0, 4095).astype(np.uint16)
    ph_stored = quantise_phase(phase)

    study_uid = _uid("study", seed, acq.study_id)
    frame_uid = _uid("frame", seed, acq.study_id)
    date = (_dt.date(2020, 1, 1) + _dt.timedelta(days=int(acq.subject.subject_id[:6], 16) % 1500)).strftime("%Y%m%d")
    s = acq.n_slices
    ps = acq.pixel_mm
    spacing = acq.slice_thickness_mm
    out = []
    for component, stored, series_no in (("M", mag_stored, 3), ("P", ph_stored, 4)):
        folder = base / ("magnitude" if component == "M" else "phase")
        series_uid = _uid("series", seed, acq.study_id, component)
        for k in range(s):
            ds = _slice_dataset(acq, component, stored[k], k, s, ps, spacing, study_uid, series_uid, frame_uid,
                                series_no, date, seed, mag_slope)
            with atomic_path(folder / f"IM_{k + 1:04d}.dcm") as tmp:
                ds.save_as(tmp, enforce_file_format=True)
        out.append(folder)
    return out[0], out[1]


def _slice_dataset(acq: Acquisition, component: str, pixels: np.ndarray, k: int, s: int, ps: float, spacing: float,
                   study_uid: str, series_uid: str, frame_uid: str, series_no: int, date: str, seed: int,
                   mag_slope: float) -> FileDataset:
    sop_uid = _uid("sop", seed, acq.study_id, component, k)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    subj, proto = acq.subject, acq.protocol
    fs = proto.fat_sat
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.Modality = "MR"
    ds.ImageType = ["ORIGINAL", "PRIMARY", component, "ND"]
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = "090000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.StudyDescription = "KNEE SYNTHETIC"
    ds.SeriesDescription = f"{'COR PD FS' if fs else 'COR PD'}{'_P' if component == 'P' else ''}"
    ds.ProtocolName = proto.acquisition
    ds.SeriesNumber = series_no
    ds.InstanceNumber = k + 1
    ds.PatientName = PATIENT_NAME
    ds.PatientID = subj.subject_id
    ds.PatientBirthDate = ""
    ds.PatientAge = f"{int(subj.age_years):03d}Y"
    ds.PatientSex = subj.sex
    ds.PatientWeight = _ds(subj.weight_kg)
    ds.PatientSize = _ds(subj.height_m)
    ds.BodyPartExamined = "KNEE"
    ds.Laterality = subj.knee_side
    ds.Manufacturer = subj.vendor
    ds.ManufacturerModelName = subj.model
    ds.MagneticFieldStrength = _ds(subj.field_strength_t)
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = ["SK", "SP"]
    ds.ScanOptions = "FS" if fs else ""
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = "*tse2d1_4"
    ds.RepetitionTime = _ds(proto.tr_ms)
    ds.EchoTime = _ds(proto.te_ms)
    ds.EchoTrainLength = 4
    ds.FlipAngle = _ds(proto.flip_angle_deg)
    ds.ImagingFrequency = _ds(42.577478 * subj.field_strength_t)
    ds.ImagedNucleus = "1H"
    ds.SliceThickness = _ds(acq.slice_thickness_mm)
    ds.SpacingBetweenSlices = _ds(spacing)
    ds.PixelSpacing = [_ds(ps), _ds(ps)]
    ds.PatientPosition = "FFS"
    ds.ImageOrientationPatient = [_ds(v) for v in ORIENTATION]
    y = (k - (s - 1) / 2.0) * spacing
    half = (pixels.shape[0] / 2.0 - 0.5) * ps
    ds.ImagePositionPatient = [_ds(half), _ds(y), _ds(-half)]
    ds.SliceLocation = _ds(y)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if component == "M":
        ds.RescaleSlope = _ds(mag_slope)
        ds.RescaleIntercept = "0"
        ds.RescaleType = "US"
        ds.WindowCenter = "2048"
        ds.WindowWidth = "4096"
    else:
        ds.RescaleSlope = "2"
        ds.RescaleIntercept = "-4096"
        ds.RescaleType = "US"
        ds.WindowCenter = "0"
        ds.WindowWidth = "8192"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    return ds
