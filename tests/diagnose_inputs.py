"""Small real input files and a small real checkpoint for the inference and diagnose tests.

Every file is written with the real writers (h5py through the project's fastMRI writer with a real
ISMRMRD header, pydicom, nibabel). The DICOM studies carry a patient name and id that must never
reach any output; the h5 files carry a raw patient id attribute.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

PATIENT_NAMES = ("Doe^Jane", "Roe^Richard")
PATIENT_NAME_PARTS = ("Doe", "Jane", "Roe", "Richard")
PATIENT_IDS = ("PAT-DCM-77123", "PAT-DCM-88456", "PAT-H5-31415", "PAT-H5-27182")


# ---- the model ------------------------------------------------------------------------------------


def make_checkpoint(path: Path, variant: str = "i2m2", seed: int = 0, prior: bool = False, aggregation: str | None = None) -> Path:
    """An untrained cpu-config model of ``variant`` saved as a real checkpoint (weights seeded)."""
    import torch

    from i2m2_med.checkpoint import save_checkpoint
    from i2m2_med.config import config_from_dict, load_config
    from i2m2_med.data.tabular import tabular_features
    from i2m2_med.models import build_model

    config = load_config("cpu")
    if prior or aggregation:
        data = config.to_dict()
        data["model"]["prior"] = bool(prior) or data["model"]["prior"]
        if aggregation:
            data["training"]["aggregation"] = aggregation
        config = config_from_dict(data)
    _, names = tabular_features({}, None)
    names = list(names)
    torch.manual_seed(seed)
    if variant in ("mag", "phase", "i2m2-notab"):
        names = []
    n_tab = len(names)
    model = build_model(variant, config, n_tab)
    if model.prior is not None:
        model.prior.set_frequencies(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    save_checkpoint(path, model, config, variant, n_tab, names, {"note": "untrained test model"}, "test-data")
    return path


# ---- studies ------------------------------------------------------------------------------------------


def _kspace(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """k-space of a smooth object with some detail, (S, [C,] 640, W) complex64."""
    rng = np.random.default_rng(seed)
    s, w = shape[0], shape[-1]
    yy, xx = np.mgrid[-1:1:640j, -1:1:complex(0, w)]
    out = np.empty(shape, dtype=np.complex64)
    for k in range(s):
        obj = ((xx / 0.6) ** 2 + (yy / 0.4) ** 2 < 1).astype(np.float32) * (1 + 0.3 * k)
        obj = obj + 0.05 * rng.standard_normal(obj.shape).astype(np.float32)
        img = obj * np.exp(1j * (0.5 * xx + 0.2 * k)).astype(np.complex64)
        if len(shape) == 4:
            coils = shape[1]
            sens = np.stack([np.exp(-((xx - 0.5 * np.cos(c)) ** 2 + (yy - 0.5 * np.sin(c)) ** 2)) for c in range(coils)])
            img = img[None] * sens
        k_img = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(img, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
        out[k] = k_img.astype(np.complex64)
    return out


def write_h5(path: Path, n_slices: int = 3, width: int = 372, coils: int | None = None, patient_id: str | None = None,
             seed: int = 0, nan: bool = False) -> Path:
    """A fastMRI knee h5 (singlecoil, or multicoil with ``coils``) through the project's writer."""
    from i2m2_med.io.fastmri_h5 import write_fastmri_h5
    from i2m2_med.io.ismrmrd import HeaderParams, build_header

    shape = (n_slices, 640, width) if coils is None else (n_slices, coils, 640, width)
    k = _kspace(shape, seed)
    if nan:
        k[-1, ..., 5, 5] = np.nan
    header = build_header(HeaderParams(encoded_y=width, n_slices=n_slices, n_coils=coils or 1))
    attrs = {"acquisition": "CORPD_FBK", "max": 1.0, "norm": 1.0}
    if patient_id:
        attrs["patient_id"] = patient_id
    path.parent.mkdir(parents=True, exist_ok=True)
    write_fastmri_h5(path, k, header, attrs=attrs)
    return path


def _mr_template():
    import pydicom
    import pydicom.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm"))


CORONAL = [-1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
"""Rows along the patient's -x, columns along z: slices stacked along y (the knee protocol's plane)."""


def write_dicom_study(folder: Path, n_slices: int = 3, phase: bool = True, patient: int = 0, size: int = 32,
                      seed: int = 0, description: str = "PD COR", orientation: list[float] | None = None,
                      body_part: str | None = None, image_type: str | None = None,
                      cols: int | None = None) -> dict[str, str]:
    """A magnitude series (and, with ``phase``, its phase series) of one study; returns the UIDs.
    The default is a coronal PD series of ``size`` x ``size`` images (``cols``: another number of
    columns); ``description``, ``orientation``, ``body_part`` and ``image_type`` (the third value
    of ImageType, e.g. LOCALIZER) make the other series of an exam."""
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(seed)
    study_uid = generate_uid()
    uids = {"study": study_uid, "magnitude": generate_uid()}
    if phase:
        uids["phase"] = generate_uid()
    for component in (["magnitude", "phase"] if phase else ["magnitude"]):
        for k in range(n_slices):
            ds = _mr_template()
            ds.PatientName = PATIENT_NAMES[patient]
            ds.PatientID = PATIENT_IDS[patient]
            ds.PatientBirthDate = "19700101"
            ds.PatientAge = "052Y"
            ds.PatientSex = "F" if patient == 0 else "M"
            ds.PatientWeight = 70.0
            ds.PatientSize = 1.70
            ds.MagneticFieldStrength = 3.0
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = uids[component]
            ds.SOPInstanceUID = generate_uid()
            ds.SeriesNumber = 2 if component == "phase" else 1
            ds.SeriesDescription = description
            ds.ImageType = ["ORIGINAL", "PRIMARY", "P" if component == "phase" else "M", image_type or "ND"]
            o = orientation or CORONAL
            ds.ImageOrientationPatient = o
            normal = np.cross(np.asarray(o[:3]), np.asarray(o[3:]))
            ds.ImagePositionPatient = [float(v) for v in np.asarray([-60.0, -80.0, 60.0]) + 3.0 * k * normal]
            if body_part:
                ds.BodyPartExamined = body_part
            ds.InstanceNumber = k + 1
            ds.Rows, ds.Columns = size, cols or size
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            if component == "phase":
                values = rng.integers(0, 4096, (size, cols or size))
                ds.RescaleSlope, ds.RescaleIntercept = 2, -4096
            else:
                values = 500 + 300 * k + rng.integers(0, 200, (size, cols or size))
                for key in ("RescaleSlope", "RescaleIntercept"):
                    if key in ds:
                        delattr(ds, key)
            ds.PixelData = values.astype(np.uint16).tobytes()
            path = folder / component / f"im{k:03d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
    return uids


def write_knee_dicom_study(folder: Path, n_slices: int = 3, seed: int = 0) -> Path:
    """A synthetic knee's magnitude and phase DICOM series, written by the generator's own DICOM
    writer and cut to their middle ``n_slices`` slices, under ``folder/magnitude`` and
    ``folder/phase``: images the bundled model reads as knee MRI (in scope), where the random
    pixels of :func:`write_dicom_study` are, rightly, out of scope."""
    import shutil

    from i2m2_med.synth import generate_cohort

    work = folder.parent / f".{folder.name}-cohort"
    generate_cohort(work, 1, seed, dicom=True, n_slices=8)
    (series,) = (work / "dicom").iterdir()
    for component in ("magnitude", "phase"):
        files = sorted((series / component).glob("*.dcm"))
        first = (len(files) - n_slices) // 2
        (folder / component).mkdir(parents=True, exist_ok=True)
        for path in files[first:first + n_slices]:
            shutil.copy(path, folder / component / path.name)
    shutil.rmtree(work)
    return folder


# ---- the same series stored another way --------------------------------------------------------------

STORAGES = [(t, r, c) for t in (False, True) for r in (False, True) for c in (False, True)]
"""The 8 in-plane storages of a slice: (rows and columns swapped, then rows reversed, then
columns reversed)."""


def store(image: np.ndarray, transpose: bool, flip_rows: bool, flip_cols: bool) -> np.ndarray:
    """``image`` (H, W) stored another way: swapped, then rows and / or columns reversed."""
    out = image.T if transpose else image
    if flip_rows:
        out = out[::-1]
    if flip_cols:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def stored_geometry(iop: list[float], ipp: list[float], spacing: list[float], shape: tuple[int, int],
                    transpose: bool, flip_rows: bool, flip_cols: bool) -> tuple[list[float], list[float], list[float]]:
    """ImageOrientationPatient, ImagePositionPatient and PixelSpacing of a slice stored with
    :func:`store`, so that every pixel keeps its place in the patient."""
    r, c = np.asarray(iop[:3], float), np.asarray(iop[3:], float)  # along a row (columns), down a column (rows)
    pos = np.asarray(ipp, float)
    row_mm, col_mm = float(spacing[0]), float(spacing[1])  # between rows, between columns
    rows, cols = shape
    if transpose:
        r, c, row_mm, col_mm, rows, cols = c, r, col_mm, row_mm, cols, rows
    if flip_rows:
        pos, c = pos + (rows - 1) * row_mm * c, -c
    if flip_cols:
        pos, r = pos + (cols - 1) * col_mm * r, -r
    return [*map(float, r), *map(float, c)], [float(v) for v in pos], [row_mm, col_mm]


def restore_dicom(src: Path, dst: Path, transpose: bool = False, flip_rows: bool = False, flip_cols: bool = False,
                  keep_study: bool = False) -> Path:
    """Every DICOM file under ``src`` written again under ``dst`` with its pixels stored another
    way (:func:`store`) and ``ImageOrientationPatient`` / ``ImagePositionPatient`` /
    ``PixelSpacing`` / ``Rows`` / ``Columns`` to match: the same images of the same patient. UIDs
    are new (derived from the old ones and ``dst``), so the copy is a study of its own -- unless
    ``keep_study``: then the series joins its old study (a series of the study stored another way)."""
    import pydicom
    from pydicom.uid import generate_uid

    def uid(old: str) -> str:
        return str(generate_uid(entropy_srcs=[old, dst.name, str((transpose, flip_rows, flip_cols))]))

    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        spacing = [float(v) for v in ds.get("PixelSpacing", [1.0, 1.0])]
        iop, ipp, spacing = stored_geometry([float(v) for v in ds.ImageOrientationPatient],
                                            [float(v) for v in ds.ImagePositionPatient], spacing, pixels.shape,
                                            transpose, flip_rows, flip_cols)
        stored = store(pixels, transpose, flip_rows, flip_cols)
        ds.ImageOrientationPatient = [round(v, 6) for v in iop]
        ds.ImagePositionPatient = [round(v, 6) for v in ipp]
        ds.PixelSpacing = [round(v, 6) for v in spacing]
        ds.Rows, ds.Columns = stored.shape
        ds.PixelData = stored.astype(pixels.dtype).tobytes()
        renamed = ("SeriesInstanceUID", "SOPInstanceUID") if keep_study else (
            "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
        for key in renamed:
            if key in ds:
                setattr(ds, key, uid(str(ds.get(key))))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(out, enforce_file_format=True)
    return dst


def stored_volume(data: np.ndarray, affine: np.ndarray, order: tuple[int, int, int] = (0, 1, 2),
                  flips: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """A volume and its voxel -> RAS affine stored another way: voxel axes permuted (new axis j
    is old axis ``order[j]``), then reversed along ``flips``; every voxel keeps its place."""
    t = np.zeros((4, 4))  # old voxel index = t @ new voxel index (homogeneous)
    t[3, 3] = 1.0
    for j, old in enumerate(order):
        if j in flips:
            t[old, j], t[old, 3] = -1.0, data.shape[old] - 1
        else:
            t[old, j] = 1.0
    new = np.transpose(data, order)
    for j in flips:
        new = np.flip(new, axis=j)
    return np.ascontiguousarray(new), np.asarray(affine, dtype=float) @ t


def restore_nifti(src: Path, dst: Path, order: tuple[int, int, int] = (0, 1, 2), flips: tuple[int, ...] = (),
                  phase: bool = True) -> Path:
    """A NIfTI volume (and its ``_phase`` sibling) written again as ``dst`` stored another way
    (:func:`stored_volume`), the affine to match: the same voxels at the same places."""
    import nibabel as nib

    def rewrite(source: Path, target: Path) -> None:
        img = nib.load(str(source))
        data, affine = stored_volume(np.asarray(img.dataobj), img.affine, order, flips)
        out = nib.Nifti1Image(data, affine)
        out.header.set_xyzt_units("mm")
        target.parent.mkdir(parents=True, exist_ok=True)
        nib.save(out, str(target))

    def stem(path: Path) -> str:
        return path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem

    rewrite(src, dst)
    sibling = src.with_name(stem(src) + "_phase" + src.name[len(stem(src)):])
    if phase and sibling.is_file():
        rewrite(sibling, dst.with_name(stem(dst) + "_phase" + dst.name[len(stem(dst)):]))
    return dst


def write_nifti(path: Path, n_slices: int = 3, size: int = 32, phase: bool = True, seed: int = 0) -> Path:
    import nibabel as nib

    rng = np.random.default_rng(seed)
    mag = (rng.random((size, size, n_slices)) * 1000).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(mag, np.eye(4)), str(path))
    if phase:
        ph = rng.uniform(-np.pi, np.pi, mag.shape).astype(np.float32)
        stem = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem
        nib.save(nib.Nifti1Image(ph, np.eye(4)), str(path.with_name(stem + "_phase" + path.name[len(stem):])))
    return path


def write_broken(folder: Path) -> dict[str, str]:
    """Broken files of the kinds the readers refuse; returns name -> a fragment of its reason."""
    folder.mkdir(parents=True, exist_ok=True)
    good = write_h5(folder / "_tmp_full.h5", n_slices=2, width=368, seed=9)
    data = good.read_bytes()
    (folder / "truncated.h5").write_bytes(data[: len(data) // 3])
    good.unlink()
    (folder / "notes.h5").write_text("this is not an HDF5 file\n")
    ds = _mr_template()
    ds.PatientName = PATIENT_NAMES[0]
    ds.PatientID = PATIENT_IDS[0]
    del ds.PixelData
    ds.save_as(folder / "nopixels.dcm", enforce_file_format=True)
    (folder / "garbage.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    write_h5(folder / "nan.h5", n_slices=2, width=368, seed=10, nan=True)
    return {"truncated.h5": "truncated", "notes.h5": "HDF5", "nopixels.dcm": "pixel data",
            "garbage.nii.gz": "", "nan.h5": "NaN"}


def mixed_folder(root: Path) -> dict[str, Path]:
    """The good studies of the mixed folder: h5 singlecoil and multicoil, DICOM magnitude + phase,
    DICOM magnitude only, NIfTI (with phase)."""
    paths = {
        "h5_single": write_h5(root / "h5" / "knee_single.h5", n_slices=3, width=372, patient_id=PATIENT_IDS[2], seed=1),
        "h5_multi": write_h5(root / "h5" / "knee_multi.h5", n_slices=2, width=368, coils=4, patient_id=PATIENT_IDS[3], seed=2),
        "nifti": write_nifti(root / "nifti" / "knee_vol.nii.gz", n_slices=3, seed=3),
    }
    write_dicom_study(root / "dicom" / "with_phase", n_slices=3, phase=True, patient=0, seed=4)
    write_dicom_study(root / "dicom" / "magnitude_only", n_slices=3, phase=False, patient=1, seed=5)
    paths["dicom_phase"] = root / "dicom" / "with_phase"
    paths["dicom_mag"] = root / "dicom" / "magnitude_only"
    return paths
