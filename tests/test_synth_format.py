"""Synthetic cohort: fastMRI layout through real readers, reconstructions, annotations, DICOM,
NIfTI, tabular / splits / manifest, determinism and the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from i2m2_med.errors import UsageError
from i2m2_med.heads import HEADS
from i2m2_med.io.ismrmrd import parse_header
from i2m2_med.synth import generate_cohort
from i2m2_med.synth.cohort import plan_cohort
from i2m2_med.synth.kspace import center_crop
from i2m2_med.synth.subject import TABULAR_COLUMNS

SLICES = 10


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "cohort"
    manifest = generate_cohort(out, 3, seed=11, regime="inter", dicom=True, nifti=True, n_slices=SLICES)
    return out, manifest


@pytest.fixture(scope="module")
def multicoil(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth_mc") / "cohort"
    manifest = generate_cohort(out, 1, seed=5, multicoil=True, n_slices=8, n_coils=4, dicom=True)
    return out, manifest


def _h5s(out: Path) -> list[Path]:
    return sorted((out / "h5").glob("*.h5"))


# ---- the h5 files ---------------------------------------------------------------------------


def test_h5_layout_header_and_padding(cohort):
    out, manifest = cohort
    files = _h5s(out)
    assert [f.stem for f in files] == manifest["study_ids"] == ["synth11_0000", "synth11_0001", "synth11_0002"]
    for f in files:
        with h5py.File(f, "r") as h:
            k = h["kspace"]
            assert k.dtype == np.complex64 and k.shape[:2] == (SLICES, 640)
            width = k.shape[2]
            assert width in (356, 368, 372, 386)
            rec = h["reconstruction_esc"]
            assert rec.dtype == np.float32 and rec.shape == (SLICES, 320, 320)
            assert h.attrs["acquisition"] in ("CORPD_FBK", "CORPDFS_FBK")
            assert h.attrs["max"] == pytest.approx(float(rec[()].max()))
            assert h.attrs["norm"] == pytest.approx(float(np.linalg.norm(rec[()].astype(np.float64))), rel=1e-6)
            assert len(h.attrs["patient_id"]) == 32
            tags = parse_header(h["ismrmrd_header"][()])
            assert tags["encoded_matrix"] == [640, width, 1] and tags["recon_matrix"] == [320, 320, 1]
            pl, pr = tags["padding_left"], tags["padding_right"]
            assert 14 <= pl <= 20 and width - 20 <= pr <= width - 14
            kk = k[3]
            assert np.all(kk[:, :pl] == 0) and np.all(kk[:, pr:] == 0)
            assert np.all(np.abs(kk[:, pl:pr]).max(axis=0) > 0)  # every acquired column carries signal
            assert tags["protocol"] == h.attrs["acquisition"]
            assert 1e-5 < float(rec[()].max()) < 1e-2  # fastMRI-like absolute scale


def test_reconstruction_is_centre_crop_of_ifft2c(cohort, multicoil):
    import fastmri

    for f in _h5s(cohort[0])[:2]:
        with h5py.File(f, "r") as h:
            k = torch.view_as_real(torch.from_numpy(h["kspace"][()]))
            expected = fastmri.complex_abs(fastmri.ifft2c(k))
            expected = center_crop(expected.numpy(), 320, 320)
            np.testing.assert_allclose(h["reconstruction_esc"][()], expected, rtol=1e-4, atol=1e-6 * expected.max())
    with h5py.File(_h5s(multicoil[0])[0], "r") as h:
        k = h["kspace"][()]
        assert k.shape[:3] == (8, 4, 640) and k.dtype == np.complex64
        img = fastmri.ifft2c(torch.view_as_real(torch.from_numpy(k)))
        expected = center_crop(fastmri.rss(fastmri.complex_abs(img), dim=1).numpy(), 320, 320)
        np.testing.assert_allclose(h["reconstruction_rss"][()], expected, rtol=1e-4, atol=1e-6 * expected.max())
        assert "reconstruction_esc" not in h


def test_fastmri_slicedataset_reads_singlecoil_and_multicoil(cohort, multicoil, tmp_path):
    from fastmri.data import SliceDataset

    ds = SliceDataset(cohort[0] / "h5", challenge="singlecoil", dataset_cache_file=tmp_path / "c1.pkl")
    assert len(ds) == 3 * SLICES
    kspace, mask, target, attrs, fname, dataslice = ds[SLICES + 4]
    assert fname == "synth11_0001.h5" and dataslice == 4
    assert kspace.shape[0] == 640 and kspace.dtype == np.complex64
    assert target.shape == (320, 320)
    with h5py.File(cohort[0] / "h5" / fname, "r") as h:
        np.testing.assert_array_equal(target, h["reconstruction_esc"][4])
        tags = parse_header(h["ismrmrd_header"][()])
    assert attrs["padding_left"] == tags["padding_left"] and attrs["padding_right"] == tags["padding_right"]
    assert attrs["recon_size"] == (320, 320, 1) and attrs["acquisition"] in ("CORPD_FBK", "CORPDFS_FBK")

    ds = SliceDataset(multicoil[0] / "h5", challenge="multicoil", dataset_cache_file=tmp_path / "c2.pkl")
    kspace, mask, target, attrs, fname, dataslice = ds[2]
    assert kspace.shape[:2] == (4, 640) and target.shape == (320, 320)


def test_monai_fastmri_reader(cohort):
    from monai.apps.reconstruction.fastmri_reader import FastMRIReader

    reader = FastMRIReader()  # (its verify_suffix() rejects every name in MONAI 1.6: "..h5" is never matched)
    path = _h5s(cohort[0])[0]
    raw = reader.read(str(path))
    assert raw["reconstruction_esc"].shape == (SLICES, 320, 320) and raw["filename"] == path.name
    data, meta = reader.get_data(raw)
    assert data.shape[:2] == (SLICES, 640) and data.dtype == np.complex64
    assert meta["acquisition"] in ("CORPD_FBK", "CORPDFS_FBK")
    assert meta["max"] == pytest.approx(float(raw["reconstruction_esc"].max()))
    assert len(meta["patient_id"]) == 32 and meta["mask"].shape == data.shape  # no mask stored: zeros


def test_project_h5_reader(cohort):
    from i2m2_med.io.fastmri_h5 import read_fastmri_h5

    path = _h5s(cohort[0])[1]
    study = read_fastmri_h5(path)
    assert study.study_id == "synth11_0001" and study.n_slices == SLICES and study.domain == "kspace"
    assert study.tags["fat_sat"] == (study.tags["acquisition"] == "CORPDFS_FBK")
    with h5py.File(path, "r") as h:
        np.testing.assert_array_equal(study.read_slice(7)["kspace"], h["kspace"][7])
    tab = pd.read_csv(cohort[0] / "tabular.csv").set_index("study_id")
    assert bool(tab.loc["synth11_0001", "fat_sat"]) == study.tags["fat_sat"]
    assert tab.loc["synth11_0001", "field_strength_t"] == pytest.approx(study.tags["field_strength_t"])


# ---- annotations ----------------------------------------------------------------------------


def test_annotations_fastmri_plus_format_and_round_trip(cohort):
    from i2m2_med.io.annotations import (
        read_fastmri_plus,
        read_fastmri_plus_boxes,
        slice_labels,
    )

    out, manifest = cohort
    csv_path = out / "annotations" / "knee.csv"
    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["file", "slice", "study_level", "x", "y", "width", "height", "label"]
    assert len(rows) - 1 == manifest["counts"]["annotation_rows"] > 0
    assert (out / "annotations" / "knee_file_list.csv").read_text().split() == manifest["study_ids"]
    truth = pd.read_csv(out / "slice_labels.csv")
    df = read_fastmri_plus(csv_path, out / "annotations" / "knee_file_list.csv")
    for sid in manifest["study_ids"]:
        got = slice_labels(df, sid, SLICES)
        want = truth[truth.study_id == sid].sort_values("slice")[list(HEADS)].to_numpy().astype(bool)
        np.testing.assert_array_equal(got, want)
    boxes = read_fastmri_plus_boxes(csv_path)
    assert (boxes["note"] == "").all()
    raw = pd.read_csv(csv_path)
    np.testing.assert_array_equal(boxes["y"].to_numpy(), 320 - raw["y"].to_numpy() - raw["height"].to_numpy())


def _phase_contrast(img: np.ndarray, x: int, y: int, w: int, h: int) -> float:
    """|phase inside the box against a frame around it| of a complex image (rows, cols)."""
    inner = img[y + h // 4:y + h - h // 4, x + w // 4:x + w - w // 4]
    y0, y1, x0, x1 = max(0, y - h), min(320, y + 2 * h), max(0, x - w), min(320, x + 2 * w)
    outer = img[y0:y1, x0:x1].copy()
    outer[y - y0:y - y0 + h, x - x0:x - x0 + w] = 0
    return float(abs(np.angle(inner.sum() * np.conj(outer.sum()))))


def test_boxes_land_on_the_planted_lesions(cohort):
    """In the inter regime every finding carries a phase cue: inside each box (image convention,
    stored orientation) the phase departs from its surroundings; boxes flipped the wrong way do not."""
    from i2m2_med.io.annotations import read_fastmri_plus_boxes

    out, _ = cohort
    boxes = read_fastmri_plus_boxes(out / "annotations" / "knee.csv")
    right, wrong = [], []
    for sid, group in boxes.groupby("file"):
        with h5py.File(out / "h5" / f"{sid}.h5", "r") as h:
            k = h["kspace"][()]
        img = center_crop(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)))
        for b in group.itertuples():
            right.append(_phase_contrast(img[b.slice], b.x, b.y, b.width, b.height))
            wrong.append(_phase_contrast(img[b.slice], b.x, 320 - b.y - b.height, b.width, b.height))
    assert len(right) >= 5
    assert np.median(right) > 0.5 and np.median(right) > 3 * np.median(wrong)


# ---- tables and manifest --------------------------------------------------------------------


def test_tabular_splits_and_manifest(cohort):
    out, manifest = cohort
    tab = pd.read_csv(out / "tabular.csv")
    assert list(tab.columns) == ["study_id", *TABULAR_COLUMNS]
    assert tab["age_years"].between(18, 88).all() and tab["bmi"].between(17, 48).all()
    assert set(tab["sex"]) <= {"F", "M"} and set(tab["field_strength_t"]) <= {2.89362, 1.494}
    splits = pd.read_csv(out / "splits.csv")
    assert list(splits.columns) == ["study_id", "subject_id", "split"]
    assert splits.groupby("subject_id")["split"].nunique().max() == 1  # subject-level
    assert set(splits["split"]) <= {"train", "val", "test"}
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    for key in ("seed", "regime", "label_noise", "counts", "prevalence", "label_noise_ceiling_auroc",
                "generator_version", "episode_bayes_auroc", "slice_position_auroc"):
        assert key in manifest
    assert manifest["seed"] == 11 and manifest["regime"] == "inter" and manifest["label_noise"] == 0.0
    assert manifest["counts"]["volumes"] == 3 and manifest["counts"]["slices"] == 3 * SLICES
    truth = pd.read_csv(out / "slice_labels.csv")
    for h in HEADS:
        assert manifest["counts"]["positive_slices_true"][h] == int(truth[f"{h}_true"].sum())
        ceiling = manifest["label_noise_ceiling_auroc"][h]["expected"]
        assert ceiling == 1.0  # no label noise: a perfect predictor is perfect
    assert manifest["episode_bayes_auroc"] == {"magnitude": 0.5, "phase": 0.5, "joint": 1.0}


def test_episode_table_matches_the_labels(cohort):
    """episodes.csv: every true positive slice lies in a finding episode of its head and every
    finding episode's slices are positive; in the inter regime a finding shows both cues together
    and a mimic shows them apart, so the evidence ceiling is perfect."""
    out, manifest = cohort
    ep = pd.read_csv(out / "episodes.csv")
    assert list(ep.columns) == ["study_id", "class", "head", "label", "finding", "mode", "evidence",
                                "first_slice", "last_slice"]
    assert len(ep) == sum(manifest["counts"]["episodes"].values())
    assert set(ep["mode"]) == {"inter"}
    assert (ep.loc[ep["finding"] == 1, "evidence"] == "together").all()
    assert (ep.loc[ep["finding"] == 0, "evidence"] == "apart").all()
    truth = pd.read_csv(out / "slice_labels.csv")
    for sid, rows in truth.groupby("study_id"):
        for h in HEADS:
            covered = np.zeros(len(rows), bool)
            for e in ep[(ep["study_id"] == sid) & (ep["head"] == h) & (ep["finding"] == 1)].itertuples():
                covered[e.first_slice:e.last_slice + 1] = True
            np.testing.assert_array_equal(covered, rows[f"{h}_true"].to_numpy(bool))
    for h in HEADS:
        if manifest["slice_evidence_auroc"][h] is not None:
            assert manifest["slice_evidence_auroc"][h] == 1.0


def test_label_noise_flips_labels_and_sets_the_ceiling(tmp_path):
    m = generate_cohort(tmp_path / "noisy", 2, seed=3, label_noise=0.2, n_slices=12)
    truth = pd.read_csv(tmp_path / "noisy" / "slice_labels.csv")
    true = truth[[f"{h}_true" for h in HEADS]].to_numpy()
    noisy = truth[list(HEADS)].to_numpy()
    flipped = (true != noisy).mean()
    assert 0.08 < flipped < 0.35  # 96 labels flipped with p = 0.2
    for i, h in enumerate(HEADS):
        c = m["label_noise_ceiling_auroc"][h]
        assert c["expected"] < 0.95
        if c["empirical"] is not None:
            assert 0.5 < c["empirical"] < 1.0
    from i2m2_med.io.annotations import read_fastmri_plus, slice_labels

    df = read_fastmri_plus(tmp_path / "noisy" / "annotations" / "knee.csv", tmp_path / "noisy" / "annotations" / "knee_file_list.csv")
    got = np.concatenate([slice_labels(df, sid, 12) for sid in m["study_ids"]])
    np.testing.assert_array_equal(got, noisy.astype(bool))


def test_expected_ceiling_matches_simulation():
    from i2m2_med.synth.label_noise import auroc, expected_ceiling, flip_labels

    rng = np.random.default_rng(0)
    true = rng.random((200_000, 1)) < 0.1
    noisy = flip_labels(rng, true, 0.15)
    assert auroc(true[:, 0].astype(float), noisy[:, 0]) == pytest.approx(expected_ceiling(0.1, 0.15), abs=0.005)
    assert expected_ceiling(0.1, 0.0) == 1.0 and expected_ceiling(0.3, 0.49) < 0.52


# ---- determinism ----------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate_cohort(tmp_path / "a", 2, seed=7, n_slices=8)
    b = generate_cohort(tmp_path / "b", 2, seed=7, n_slices=8, workers=2)
    c = generate_cohort(tmp_path / "c", 2, seed=8, n_slices=8)
    assert a == b
    for sid in a["study_ids"]:
        with h5py.File(tmp_path / "a" / "h5" / f"{sid}.h5", "r") as ha, h5py.File(tmp_path / "b" / "h5" / f"{sid}.h5", "r") as hb:
            assert ha["kspace"][()].tobytes() == hb["kspace"][()].tobytes()
    for name in ("annotations/knee.csv", "tabular.csv", "splits.csv", "slice_labels.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with h5py.File(tmp_path / "a" / "h5" / "synth7_0000.h5", "r") as ha, h5py.File(tmp_path / "c" / "h5" / "synth8_0000.h5", "r") as hc:
        assert ha["kspace"].shape != hc["kspace"].shape or ha["kspace"][()].tobytes() != hc["kspace"][()].tobytes()


def test_plan_is_independent_of_later_volumes():
    short, long = plan_cohort(4, 9), plan_cohort(12, 9)
    for p, q in zip(short[:-1], long):  # the last subject of a short cohort may be cut to one study
        assert p.study_ids == q.study_ids and p.fat_sat == q.fat_sat
        assert p.seed.entropy == q.seed.entropy and p.seed.spawn_key == q.seed.spawn_key


def test_default_slice_counts_are_realistic(tmp_path):
    from i2m2_med.synth.volume import SLICE_RANGE, draw_anatomy

    counts = [draw_anatomy(np.random.default_rng(i), f"s{i}")[1].geometry.n_slices for i in range(3)]
    assert all(SLICE_RANGE[0] <= c <= SLICE_RANGE[1] for c in counts) and SLICE_RANGE == (30, 46)


# ---- DICOM and NIfTI ------------------------------------------------------------------------


def test_dicom_series_tags_and_values(cohort):
    out, manifest = cohort
    sid = manifest["study_ids"][0]
    mags = sorted((out / "dicom" / sid / "magnitude").glob("*.dcm"))
    phs = sorted((out / "dicom" / sid / "phase").glob("*.dcm"))
    assert len(mags) == len(phs) == SLICES
    m, p = pydicom.dcmread(mags[3]), pydicom.dcmread(phs[3])
    assert list(m.ImageType) == ["ORIGINAL", "PRIMARY", "M", "ND"]
    assert list(p.ImageType) == ["ORIGINAL", "PRIMARY", "P", "ND"]
    assert str(m.PatientName) == "SYNTH^ANON" and m.Modality == "MR" and m.BodyPartExamined == "KNEE"
    assert m.StudyInstanceUID == p.StudyInstanceUID and m.SeriesInstanceUID != p.SeriesInstanceUID
    tab = pd.read_csv(out / "tabular.csv").set_index("study_id").loc[sid]
    assert m.PatientAge == f"{int(tab['age_years']):03d}Y" and m.PatientSex == tab["sex"]
    assert float(m.PatientWeight) == pytest.approx(tab["weight_kg"]) and float(m.PatientSize) == pytest.approx(tab["height_m"])
    assert float(m.MagneticFieldStrength) == pytest.approx(tab["field_strength_t"])
    assert float(m.RepetitionTime) == pytest.approx(tab["tr_ms"]) and float(m.EchoTime) == pytest.approx(tab["te_ms"])
    assert (m.ScanOptions == "FS") == bool(tab["fat_sat"])
    assert float(p.RescaleSlope) == 2 and float(p.RescaleIntercept) == -4096
    z = [float(pydicom.dcmread(f).ImagePositionPatient[1]) for f in mags]
    assert np.all(np.diff(z) > 0)  # slice positions advance anterior -> posterior
    with h5py.File(out / "h5" / f"{sid}.h5", "r") as h:
        rec = h["reconstruction_esc"][3]
    np.testing.assert_allclose(m.pixel_array * float(m.RescaleSlope), rec, atol=float(rec.max()) / 4095)


def test_dicom_and_nifti_read_by_the_project_readers_match_h5(cohort):
    from i2m2_med.io.dicom import read_dicom_series
    from i2m2_med.io.nifti import read_nifti

    out, manifest = cohort
    sid = manifest["study_ids"][2]
    with h5py.File(out / "h5" / f"{sid}.h5", "r") as h:
        rec = h["reconstruction_esc"][()]
        k = h["kspace"][()]
    phase = np.angle(center_crop(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))))
    studies = read_dicom_series(out / "dicom" / sid)
    assert len(studies) == 1 and studies[0].modalities == ("magnitude", "phase") and studies[0].n_slices == SLICES
    sl = studies[0].read_slice(5)
    np.testing.assert_allclose(sl["magnitude"], rec[5], atol=float(rec.max()) / 4095)
    dphi = np.angle(np.exp(1j * (sl["phase"] - phase[5])))
    assert np.abs(dphi).max() < 2 * np.pi / 4096 + 1e-4
    nii = read_nifti(out / "nifti" / f"{sid}.nii.gz")
    assert nii.modalities == ("magnitude", "phase") and nii.n_slices == SLICES
    sl = nii.read_slice(5)
    np.testing.assert_allclose(sl["magnitude"], rec[5], rtol=1e-6)
    np.testing.assert_allclose(np.angle(np.exp(1j * (sl["phase"] - phase[5]))), 0, atol=1e-4)


def test_multicoil_dicom_phase_is_the_coil_combination(multicoil):
    out, manifest = multicoil
    sid = manifest["study_ids"][0]
    assert manifest["n_coils"] == 4 and manifest["multicoil"] is True
    p = pydicom.dcmread(sorted((out / "dicom" / sid / "phase").glob("*.dcm"))[4])
    assert p.pixel_array.max() <= 4095 and p.pixel_array.std() > 100  # a real phase map, not a constant


# ---- arguments and CLI ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_volumes": -1}, "volumes must be at least 1"),
        ({"n_volumes": 0}, "volumes must be at least 1"),
        ({"regime": "both"}, "unknown regime 'both'"),
        ({"label_noise": 0.5}, "label noise must be in [0, 0.5)"),
        ({"label_noise": -0.1}, "label noise must be in [0, 0.5)"),
        ({"seed": -3}, "seed must be a non-negative integer"),
        ({"workers": 0}, "workers must be at least 1"),
        ({"n_slices": 4}, "slices must be between 8 and 64"),
    ],
)
def test_bad_arguments_raise_usage_error_and_write_nothing(tmp_path, kwargs, message):
    args = {"out_dir": tmp_path / "x", "n_volumes": 1, "seed": 0, **kwargs}
    with pytest.raises(UsageError) as err:
        generate_cohort(**args)
    assert message in err.value.one_line() and "\n" not in err.value.one_line()
    assert not (tmp_path / "x").exists()


def test_out_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        generate_cohort(f, 1, 0)


def test_cli_synth(tmp_path, capsys):
    from pipelines.cli import main

    assert main(["synth", str(tmp_path / "c"), "--volumes", "1", "--seed", "2", "--slices", "8", "--no-progress"]) == 0
    assert (tmp_path / "c" / "h5" / "synth2_0000.h5").is_file() and (tmp_path / "c" / "manifest.json").is_file()
    capsys.readouterr()
    for argv, message in (
        (["--volumes", "-2", "--seed", "1"], "volumes must be at least 1"),
        (["--volumes", "1", "--seed", "1", "--regime", "nope"], "unknown regime"),
        (["--volumes", "1", "--seed", "1", "--label-noise", "0.7"], "label noise must be in [0, 0.5)"),
    ):
        assert main(["synth", str(tmp_path / "d"), *argv]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    (tmp_path / "f").write_text("")
    assert main(["synth", str(tmp_path / "f"), "--volumes", "1", "--seed", "1"]) == 1
    assert "not a folder" in capsys.readouterr().err
