"""Folder discovery: any mix of fastMRI h5, DICOM (with or without extension) and NIfTI."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from i2m2_med.errors import StudyReadError
from i2m2_med.io.discover import DiscoveryResult, discover
from i2m2_med.io.fastmri_h5 import write_fastmri_h5
from i2m2_med.io.ismrmrd import HeaderParams, build_header


def _mr_small() -> Path:
    import pydicom.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Path(pydicom.data.get_testdata_file("MR_small.dcm"))


def _h5(path: Path, width: int = 320, slices: int = 2, coils: int | None = None) -> None:
    shape = (slices, 640, width) if coils is None else (slices, coils, 640, width)
    k = np.ones(shape, np.complex64)
    write_fastmri_h5(path, k, build_header(HeaderParams(encoded_y=width, n_slices=slices, n_coils=coils or 1)))


def _nifti(path: Path, shape=(16, 12, 3), value: float = 1.0) -> None:
    nib.save(nib.Nifti1Image(np.full(shape, value, np.float32), np.eye(4)), str(path))


@pytest.fixture()
def mixed(tmp_path: Path) -> Path:
    root = tmp_path / "cohort"
    (root / "h5").mkdir(parents=True)
    (root / "dicom" / "series1").mkdir(parents=True)
    (root / "nifti").mkdir()
    (root / ".hidden").mkdir()
    _h5(root / "h5" / "file_b.h5", width=372)
    _h5(root / "h5" / "file_a.h5", width=644, coils=2)
    (root / "h5" / "broken.h5").write_text("not hdf5 at all\n")
    shutil.copy(_mr_small(), root / "dicom" / "series1" / "IM0001")  # no extension
    (root / "dicom" / "DICOMDIR").write_bytes(b"\0" * 200)
    (root / "dicom" / "bad.dcm").write_text("plain text, not DICOM")
    _nifti(root / "nifti" / "knee.nii.gz")
    _nifti(root / "nifti" / "knee_phase.nii.gz", value=0.5)
    _nifti(root / "nifti" / "orphan_phase.nii.gz", value=0.5)
    (root / "README.txt").write_text("cohort notes")
    (root / ".hidden" / "x.h5").write_text("never looked at")
    return root


def test_mixed_folder(mixed: Path):
    result = discover(mixed)
    assert isinstance(result, DiscoveryResult)
    ids = [(s.format, s.study_id) for s in result.studies]
    # sorted by source path: dicom/series1/IM0001 < h5/file_a.h5 < h5/file_b.h5 < nifti/knee.nii.gz
    assert [f for f, _ in ids] == ["dicom", "fastmri_h5", "fastmri_h5", "nifti"]
    assert [i for _, i in ids][1:] == ["file_a", "file_b", "knee"]
    assert ids[0][1].startswith("dicom-") and len(ids[0][1]) == 6 + 16
    h5a = result.studies[1]
    assert h5a.tags["kspace_shape"] == [2, 640, 644] and h5a.n_slices == 2
    knee = result.studies[3]
    assert knee.modalities == ("magnitude", "phase")
    assert float(knee.read_slice(0)["phase"].mean()) == pytest.approx(0.5)
    dcm = result.studies[0]
    assert dcm.modalities == ("magnitude",) and dcm.missing_modalities == ["phase"]

    problems = {p.relative_to(mixed).as_posix(): reason for p, reason in result.problems}
    assert set(problems) == {"h5/broken.h5", "dicom/bad.dcm", "nifti/orphan_phase.nii.gz"}
    assert "not an HDF5 file" in problems["h5/broken.h5"]
    assert "not a DICOM file" in problems["dicom/bad.dcm"]
    assert "phase volume without its magnitude volume orphan.nii[.gz]" in problems["nifti/orphan_phase.nii.gz"]
    skipped = {p.relative_to(mixed).as_posix(): reason for p, reason in result.skipped}
    assert skipped == {
        "README.txt": "not a study file (.txt)",
        "dicom/DICOMDIR": "DICOMDIR (directory index) ignored",
    }


def test_deterministic(mixed: Path):
    a, b = discover(mixed), discover(mixed)
    assert [(s.study_id, str(s.source)) for s in a.studies] == [(s.study_id, str(s.source)) for s in b.studies]
    assert a.problems == b.problems


def test_single_files(mixed: Path):
    one = discover(mixed / "h5" / "file_b.h5")
    assert [s.study_id for s in one.studies] == ["file_b"] and one.problems == []
    bad = discover(mixed / "h5" / "broken.h5")
    assert bad.studies == [] and bad.problems[0][0] == mixed / "h5" / "broken.h5"
    dcm = discover(mixed / "dicom" / "series1" / "IM0001")
    assert len(dcm.studies) == 1 and dcm.studies[0].format == "dicom"
    # naming the phase file reads its magnitude, paired
    ph = discover(mixed / "nifti" / "knee_phase.nii.gz")
    assert [(s.study_id, s.modalities) for s in ph.studies] == [("knee", ("magnitude", "phase"))]


def test_missing_root(tmp_path: Path):
    with pytest.raises(StudyReadError, match="no such file or folder"):
        discover(tmp_path / "nope")


def test_empty_folder(tmp_path: Path):
    result = discover(tmp_path)
    assert result.studies == [] and result.problems == [] and result.skipped == []


def test_duplicate_ids_are_noted(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _h5(tmp_path / "a" / "file1.h5")
    _h5(tmp_path / "b" / "file1.h5")
    result = discover(tmp_path)
    assert len(result.studies) == 2
    assert all("study id file1 is shared by 2 studies in this folder" in s.notes for s in result.studies)
