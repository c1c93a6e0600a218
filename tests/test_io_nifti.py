"""NIfTI reader: magnitude volume, optional / auto-paired phase, units, shapes, bad input."""

from __future__ import annotations

import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from i2m2_med.errors import StudyReadError
from i2m2_med.io.nifti import phase_sibling, read_nifti


def _save(path: Path, data: np.ndarray, zooms=(0.5, 0.5, 3.0)) -> Path:
    img = nib.Nifti1Image(data, np.diag([*zooms, 1.0]))
    img.header.set_zooms((tuple(zooms) + (1.0,))[: data.ndim])
    nib.save(img, str(path))
    return path


def _volume(shape=(20, 16, 4), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32) * 1000


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_magnitude_only(tmp_path, suffix):
    vol = _volume()
    path = _save(tmp_path / f"knee01{suffix}", vol)
    study = read_nifti(path)
    assert (study.study_id, study.format, study.domain, study.n_slices) == ("knee01", "nifti", "image", 4)
    assert study.modalities == ("magnitude",) and study.missing_modalities == ["phase"]
    assert "no phase volume: phase modality missing" in study.notes
    s = study.read_slice(2)
    assert set(s) == {"magnitude"} and s["magnitude"].dtype == np.float32 and s["magnitude"].shape == (20, 16)
    np.testing.assert_array_equal(s["magnitude"], vol[:, :, 2])
    assert study.tags["image_shape"] == [20, 16]
    assert study.tags["voxel_size_mm"] == [0.5, 0.5, 3.0]


def test_auto_paired_phase_in_radians(tmp_path):
    vol = _volume()
    phase = np.random.default_rng(1).uniform(-np.pi, np.pi, vol.shape).astype(np.float32)
    path = _save(tmp_path / "knee.nii.gz", vol)
    _save(tmp_path / "knee_phase.nii.gz", phase)
    assert phase_sibling(path) == tmp_path / "knee_phase.nii.gz"
    study = read_nifti(path)
    assert study.modalities == ("magnitude", "phase")
    assert "phase paired automatically from knee_phase.nii.gz" in study.notes
    assert "phase volume in radians" in study.notes
    np.testing.assert_allclose(study.read_slice(3)["phase"], phase[:, :, 3], atol=1e-6)


def test_explicit_phase_in_siemens_units(tmp_path):
    vol = _volume()
    stored = np.random.default_rng(2).integers(-4096, 4095, vol.shape).astype(np.int16)
    stored[0, 0, 2] = 4094
    path = _save(tmp_path / "m.nii", vol)
    ph = _save(tmp_path / "anything.nii", stored)
    study = read_nifti(path, phase_path=ph)
    assert "phase from anything.nii" in study.notes
    assert any("Siemens units" in n for n in study.notes)
    got = study.read_slice(1)["phase"]
    np.testing.assert_allclose(got, stored[:, :, 1] * np.pi / 4096, atol=1e-6)
    assert got.min() >= -np.pi and got.max() <= np.pi


def test_phase_out_of_any_known_range(tmp_path):
    path = _save(tmp_path / "m.nii", _volume())
    _save(tmp_path / "m_phase.nii", np.full((20, 16, 4), 9000.0, np.float32))
    with pytest.raises(StudyReadError, match="neither radians nor Siemens units"):
        read_nifti(path)


def test_phase_shape_mismatch(tmp_path):
    path = _save(tmp_path / "m.nii.gz", _volume())
    ph = _save(tmp_path / "m_phase.nii.gz", np.zeros((20, 16, 5), np.float32))
    with pytest.raises(StudyReadError) as info:
        read_nifti(path)
    assert str(ph) in info.value.one_line() and "differs from magnitude (20, 16, 4)" in info.value.one_line()


def test_2d_and_singleton_4d_accepted(tmp_path):
    two = read_nifti(_save(tmp_path / "a.nii", np.ones((8, 6), np.float32)))
    assert two.n_slices == 1 and two.read_slice(0)["magnitude"].shape == (8, 6)
    four = read_nifti(_save(tmp_path / "b.nii", np.ones((8, 6, 3, 1), np.float32)))
    assert four.n_slices == 3 and four.read_slice(2)["magnitude"].shape == (8, 6)


def test_true_4d_rejected(tmp_path):
    path = _save(tmp_path / "dwi.nii", np.ones((8, 6, 3, 2), np.float32))
    with pytest.raises(StudyReadError, match=r"volume has shape \(8, 6, 3, 2\); expected 3-D"):
        read_nifti(path)


def test_not_nifti(tmp_path):
    bad = tmp_path / "fake.nii.gz"
    bad.write_text("hello")
    with pytest.raises(StudyReadError) as info:
        read_nifti(bad)
    assert str(bad) in info.value.one_line() and "not a readable NIfTI file" in info.value.one_line()
    with pytest.raises(StudyReadError, match="no such file"):
        read_nifti(tmp_path / "absent.nii")


def test_nan_detected_at_slice_read(tmp_path):
    vol = _volume()
    vol[1, 1, 2] = np.nan
    study = read_nifti(_save(tmp_path / "n.nii", vol))
    study.read_slice(1)
    with pytest.raises(StudyReadError, match="slice 2: contains NaN/Inf"):
        study.read_slice(2)


def test_pickle(tmp_path):
    vol = _volume()
    _save(tmp_path / "k.nii.gz", vol)
    _save(tmp_path / "k_phase.nii.gz", np.zeros_like(vol))
    study = read_nifti(tmp_path / "k.nii.gz")
    study.read_slice(0)
    clone = pickle.loads(pickle.dumps(study))
    np.testing.assert_array_equal(clone.read_slice(3)["magnitude"], vol[:, :, 3])
