"""Orientation: the rule of :mod:`i2m2_med.io.orientation` and the DICOM / NIfTI readers that use it.

Every in-plane storage of a coronal DICOM slice and every axis order and direction of a coronal
NIfTI volume reads back in the training orientation, exactly (nibabel's own orientation tools
agree); other planes and unusable geometry are read as stored, with a note; and ``diagnose``
with the bundled model gives one knee the same probabilities however its files store it, where
the stored arrays alone would not.
"""

from __future__ import annotations

import csv
import itertools
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from diagnose_inputs import (
    STORAGES,
    restore_dicom,
    restore_nifti,
    store,
    stored_geometry,
    stored_volume,
    write_dicom_study,
)

from i2m2_med.errors import StudyReadError
from i2m2_med.heads import HEADS
from i2m2_med.io.dicom import read_dicom_series
from i2m2_med.io.nifti import read_nifti
from i2m2_med.io.orientation import (
    CANONICAL_IOP,
    dicom_reorientation,
    letter,
    slice_direction,
    volume_layout,
)
from i2m2_med.synth.nifti_volumes import affine as synth_affine

torch.set_num_threads(1)
AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
SAGITTAL = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
ALL_AXIS_STORAGES = [(order, flips) for order in itertools.permutations(range(3))
                     for n in range(4) for flips in itertools.combinations(range(3), n)]


def _rotated_about_y(degrees: float) -> list[float]:
    """The training orientation turned in the coronal plane by ``degrees``."""
    t = np.radians(degrees)
    rot = np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])
    return [*(rot @ np.array(CANONICAL_IOP[:3])), *(rot @ np.array(CANONICAL_IOP[3:]))]


def _read_volume(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``data`` read slice by slice the way the NIfTI reader does, stacked on the last axis."""
    layout = volume_layout(affine)
    n = data.shape[layout.slice_axis]
    order = range(n - 1, -1, -1) if layout.rule.reverse_slices else range(n)
    return np.stack([layout.rule.in_plane.apply(np.take(data, k, axis=layout.slice_axis)) for k in order], axis=-1)


# ---- the rule ----------------------------------------------------------------------------------------------------


def test_every_in_plane_storage_of_a_coronal_slice_maps_back_exactly():
    image = np.arange(35).reshape(5, 7)  # not square: a swap must swap the shape too
    for st in STORAGES:
        stored = store(image, *st)
        iop, _, _ = stored_geometry(list(CANONICAL_IOP), [10.0, -20.0, -30.0], [0.5, 0.4], image.shape, *st)
        rule = dicom_reorientation(iop)
        assert (rule.canonical, rule.plane, rule.directions) == (True, "coronal", ("S", "R")), st
        np.testing.assert_array_equal(rule.in_plane.apply(stored), image)
        assert rule.in_plane.shape(*stored.shape) == image.shape
        assert rule.in_plane.identity == (st == (False, False, False))
        # slices run anterior to posterior whichever way the stored normal points
        normal = np.cross(iop[:3], iop[3:])
        assert rule.reverse_slices == bool(normal[1] < 0)
        np.testing.assert_allclose(slice_direction(iop), [0.0, 1.0, 0.0], atol=1e-12)
    assert "stored in the training orientation" in dicom_reorientation(CANONICAL_IOP).note
    # a scanner's usual coronal (row 0 at the head, patient's right on the viewer's left): turned 180 degrees
    usual = dicom_reorientation([1.0, 0.0, 0.0, 0.0, 0.0, -1.0]).in_plane
    assert (usual.transpose, usual.flip_rows, usual.flip_cols) == (False, True, True)


def test_oblique_coronal_slices_up_to_45_degrees():
    for degrees in (-30.0, 10.0, 44.0):
        rule = dicom_reorientation(_rotated_about_y(degrees))
        assert rule.canonical and rule.in_plane.identity, degrees
    turned = dicom_reorientation(_rotated_about_y(180.0 - 30.0))
    assert turned.canonical and (turned.in_plane.flip_rows, turned.in_plane.flip_cols) == (True, True)
    at_45 = dicom_reorientation(_rotated_about_y(45.0))
    assert not at_45.canonical and at_45.in_plane.identity and at_45.directions is None
    assert "oblique by 45 degrees or more: images left as stored" in at_45.note


@pytest.mark.parametrize("iop, plane, note", [
    (AXIAL, "axial", "axial slices (the model reads coronal ones): images left as stored"),
    (SAGITTAL, "sagittal", "sagittal slices (the model reads coronal ones): images left as stored"),
    (None, "unknown", "orientation unknown (no ImageOrientationPatient): images left as stored"),
    ([float("nan")] * 6, "unknown", "not finite"),
    ([1.0, 0.0, 0.0, 0.6, 0.0, 0.8], "unknown", "not perpendicular"),
    ([0.0] * 6, "unknown", "zero"),
])
def test_other_planes_and_unusable_geometry_are_left_as_stored(iop, plane, note):
    rule = dicom_reorientation(iop)
    assert rule.in_plane.identity and not rule.reverse_slices and not rule.canonical
    assert rule.plane == plane and note in rule.note
    # a known plane still names its directions (the viewer labels them); an unknown one does not
    assert (rule.directions is not None) == (plane != "unknown")
    assert dicom_reorientation(AXIAL).directions == ("P", "L")  # rows towards +y (posterior), columns +x
    assert letter([0.0, 0.0, -2.0]) == "I" and letter([0.7, 0.7, 0.0]) is None


def test_every_axis_order_and_direction_of_a_coronal_volume_reads_back_exactly():
    vol = np.random.default_rng(0).random((6, 5, 4)).astype(np.float32)  # (rows, columns, slices)
    canonical_affine = synth_affine(6, 4, 0.4, 3.0)
    target = nib.orientations.axcodes2ornt(("S", "R", "P"))
    for order, flips in ALL_AXIS_STORAGES:
        data, affine = stored_volume(vol, canonical_affine, order, flips)
        np.testing.assert_array_equal(_read_volume(data, affine), vol, err_msg=f"{order} {flips}")
        # nibabel's orientation tools bring the stored volume to the same place
        ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine), target)
        np.testing.assert_array_equal(nib.orientations.apply_orientation(data, ornt), vol)
    assert volume_layout(canonical_affine).rule.in_plane.identity


def test_volume_layout_without_a_usable_affine_or_coronal_axis():
    for affine, fragment in ((None, "no affine"), (np.zeros((4, 4)), "zero or singular"),
                             (np.diag([1.0, 1.0, 0.0, 1.0]), "zero or singular"),
                             (np.full((4, 4), np.nan), "not a finite")):
        layout = volume_layout(affine)
        assert layout.slice_axis == 2 and layout.rule.in_plane.identity and fragment in layout.rule.note
    axial = volume_layout(np.diag([0.5, 0.5, 3.0, 1.0]))  # slices along S: another plane, as stored
    assert axial.slice_axis == 2 and axial.rule.plane == "axial" and axial.rule.in_plane.identity
    iso = volume_layout(np.eye(4))  # no thickest axis: the last axis stays the slice axis
    assert iso.slice_axis == 2 and iso.rule.plane == "axial"
    cor = volume_layout(np.diag([0.5, 3.0, 0.5, 1.0]))  # RAS-canonical coronal: slices on axis 1
    assert cor.slice_axis == 1 and cor.rule.canonical and cor.why_axis


# ---- the DICOM reader --------------------------------------------------------------------------------------------


def _images(study) -> list[dict[str, np.ndarray]]:
    return [study.read_slice(i) for i in range(study.n_slices)]


def test_a_dicom_study_stored_eight_ways_reads_the_same_images(tmp_path):
    write_dicom_study(tmp_path / "base", n_slices=4, size=12, cols=9)
    base = read_dicom_series(tmp_path / "base")[0]
    expected = _images(base)
    assert base.tags["image_shape"] == [12, 9] and base.tags["image_directions"] == ["S", "R"]
    first = pydicom.dcmread(sorted((tmp_path / "base" / "magnitude").iterdir())[0]).pixel_array
    for st in STORAGES:
        folder = restore_dicom(tmp_path / "base", tmp_path / "stored_{:d}{:d}{:d}".format(*st), *st)
        stored = pydicom.dcmread(sorted((folder / "magnitude").iterdir())[0]).pixel_array
        if st != (False, False, False):  # the files really hold other arrays
            assert stored.shape != first.shape or not np.array_equal(stored, first)
        study = read_dicom_series(folder)[0]
        assert study.modalities == ("magnitude", "phase"), st
        assert study.tags["image_shape"] == [12, 9] and study.tags["image_directions"] == ["S", "R"]
        for got, want in zip(_images(study), expected):
            for m in ("magnitude", "phase"):
                np.testing.assert_array_equal(got[m], want[m], err_msg=f"{st} {m}")
        assert "slices ordered by ImagePositionPatient along the slice normal, anterior to posterior" in study.notes
        assert any(n.startswith("coronal images ") for n in study.notes)


def test_a_phase_series_stored_another_way_pairs_and_reads_like_its_magnitude(tmp_path):
    write_dicom_study(tmp_path / "base", n_slices=3, size=10, cols=8)
    expected = _images(read_dicom_series(tmp_path / "base")[0])
    shutil.copytree(tmp_path / "base" / "magnitude", tmp_path / "mixed" / "magnitude")
    restore_dicom(tmp_path / "base" / "phase", tmp_path / "mixed" / "phase", flip_rows=True, keep_study=True)
    [study] = read_dicom_series(tmp_path / "mixed")
    assert study.modalities == ("magnitude", "phase")
    assert any(n.startswith("phase series stored in another orientation") for n in study.notes)
    for got, want in zip(_images(study), expected):
        np.testing.assert_array_equal(got["phase"], want["phase"])
        np.testing.assert_array_equal(got["magnitude"], want["magnitude"])


def test_dicom_of_another_plane_or_without_orientation_is_read_as_stored(tmp_path):
    write_dicom_study(tmp_path / "ax", n_slices=3, phase=False, size=10, cols=8, orientation=AXIAL, description="PD AX")
    restore_dicom(tmp_path / "ax", tmp_path / "ax_flipped", flip_rows=True)
    study = read_dicom_series(tmp_path / "ax_flipped")[0]
    assert "axial slices (the model reads coronal ones): images left as stored" in study.notes
    assert study.tags["image_shape"] == [10, 8]
    raw = {float(pydicom.dcmread(p).ImagePositionPatient[2]): pydicom.dcmread(p).pixel_array
           for p in (tmp_path / "ax_flipped" / "magnitude").iterdir()}
    got = _images(study)
    for k, z in enumerate(sorted(raw, reverse=True)):  # the stored normal points down: sorted along -z
        np.testing.assert_array_equal(got[k]["magnitude"], raw[z].astype(np.float32))
    # no ImageOrientationPatient: as stored, and the viewer gets no directions
    write_dicom_study(tmp_path / "bare", n_slices=2, phase=False, size=6, cols=5)
    for p in (tmp_path / "bare" / "magnitude").iterdir():
        ds = pydicom.dcmread(p)
        del ds.ImageOrientationPatient
        ds.save_as(p)
    bare = read_dicom_series(tmp_path / "bare")[0]
    assert "orientation unknown (no ImageOrientationPatient): images left as stored" in bare.notes
    assert "image_directions" not in bare.tags and bare.read_slice(0)["magnitude"].shape == (6, 5)


# ---- the NIfTI reader --------------------------------------------------------------------------------------------


def _write_volume(path: Path, vol: np.ndarray, affine: np.ndarray, phase: bool = True) -> Path:
    nib.save(nib.Nifti1Image(vol, affine), str(path))
    if phase:
        nib.save(nib.Nifti1Image(np.clip(vol - 0.5, -3, 3).astype(np.float32), affine),
                 str(path.with_name(path.name.replace(".nii", "_phase.nii"))))
    return path


def test_a_nifti_pair_with_its_axes_permuted_and_flipped_reads_the_same_images(tmp_path):
    vol = np.random.default_rng(1).random((10, 7, 5)).astype(np.float32)
    base_path = _write_volume(tmp_path / "base.nii", vol, synth_affine(10, 5, 0.4, 3.0))
    base = read_nifti(base_path)
    expected = _images(base)
    assert base.tags == {"image_shape": [10, 7], "image_directions": ["S", "R"], "voxel_size_mm": pytest.approx([0.4, 0.4, 3.0])}
    for order, flips in ALL_AXIS_STORAGES:
        name = "v_{}_{}.nii".format("".join(map(str, order)), "".join(map(str, flips)))
        study = read_nifti(restore_nifti(base_path, tmp_path / name, order, flips))
        assert study.modalities == ("magnitude", "phase") and study.n_slices == 5
        assert study.tags == base.tags, name
        for got, want in zip(_images(study), expected):
            for m in ("magnitude", "phase"):
                np.testing.assert_array_equal(got[m], want[m], err_msg=f"{name} {m}")
    # what RAS-canonical tools (nibabel's as_closest_canonical, MONAI's Orientation("RAS")) write
    for suffix in ("", "_phase"):
        img = nib.load(str(tmp_path / f"base{suffix}.nii"))
        nib.save(nib.as_closest_canonical(img), str(tmp_path / f"ras{suffix}.nii"))
    assert nib.aff2axcodes(nib.load(str(tmp_path / "ras.nii")).affine) == ("R", "A", "S")
    ras = read_nifti(tmp_path / "ras.nii")
    assert any("slices read along voxel axis 1" in n for n in ras.notes)
    for got, want in zip(_images(ras), expected):
        np.testing.assert_array_equal(got["magnitude"], want["magnitude"])


def test_nifti_without_a_usable_affine_or_of_another_plane_is_read_as_stored(tmp_path):
    vol = np.random.default_rng(2).random((6, 5, 3)).astype(np.float32)
    zero = nib.Nifti1Image(vol, np.eye(4))
    zero.set_sform(np.zeros((4, 4)), code=2)
    nib.save(zero, str(tmp_path / "zero.nii"))
    unset = nib.Nifti1Image(vol, np.eye(4))
    unset.set_sform(None, code=0)
    unset.set_qform(None, code=0)
    nib.save(unset, str(tmp_path / "unset.nii"))
    _write_volume(tmp_path / "axial.nii", vol, np.diag([0.5, 0.5, 3.0, 1.0]), phase=False)
    for name, fragment in (("zero", "the affine is zero or singular"), ("unset", "neither sform nor qform"),
                           ("axial", "axial slices (the model reads coronal ones)")):
        study = read_nifti(tmp_path / f"{name}.nii")
        assert any(fragment in n and "images left as stored" in n for n in study.notes), (name, study.notes)
        assert "slices along the last axis of the volume" in study.notes
        np.testing.assert_array_equal(study.read_slice(1)["magnitude"], vol[:, :, 1])
    assert "image_directions" not in read_nifti(tmp_path / "zero.nii").tags


def test_a_nifti_phase_whose_affine_describes_another_plane_is_refused(tmp_path):
    vol = np.random.default_rng(3).random((6, 6, 3)).astype(np.float32)
    path = _write_volume(tmp_path / "knee.nii", vol, synth_affine(6, 3, 0.4, 3.0), phase=False)
    nib.save(nib.Nifti1Image(vol * 0, np.diag([0.4, 0.4, 3.0, 1.0])), str(tmp_path / "knee_phase.nii"))
    with pytest.raises(StudyReadError, match="phase volume's affine describes other slices"):
        read_nifti(path)


# ---- end to end: diagnose with the bundled model -----------------------------------------------------------------


def _answers(out: Path) -> dict[str, tuple[str, np.ndarray]]:
    """Per input folder: the status and what it says -- the probabilities of an ok study, the
    distribution-shift score of an out-of-scope one."""
    with open(out / "predictions.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    answered = ("ok", "out_of_scope")
    assert all(r["status"] in answered for r in rows), [(r["source"], r["error"]) for r in rows if r["status"] not in answered]
    return {r["source"].split("/")[0]: (r["status"], np.array([float(r[f"p_{h}"]) for h in HEADS]) if r["status"] == "ok"
                                        else np.array([float(r["shift_score"])])) for r in rows}


def test_diagnose_gives_one_knee_the_same_probabilities_however_it_is_stored(tmp_path):
    """A synthetic knee (the generator's DICOM and NIfTI) and the small DICOM study of the test
    inputs, each stored several ways; the bundled model must not tell the storages apart."""
    import dataclasses

    from i2m2_med.inference.loading import load_model
    from i2m2_med.inference.predict import predict_study
    from i2m2_med.synth import generate_cohort
    from pipelines.cli import main

    cohort = tmp_path / "cohort"
    generate_cohort(cohort, 1, seed=0, dicom=True, nifti=True, n_slices=8)
    [dicom] = sorted((cohort / "dicom").iterdir())
    [nifti] = sorted(p for p in (cohort / "nifti").glob("*.nii.gz") if not p.name.endswith("_phase.nii.gz"))
    inp = tmp_path / "in"
    shutil.copytree(dicom, inp / "generated_dcm_as_is")
    restore_dicom(dicom, inp / "generated_dcm_rows_flipped", flip_rows=True)
    restore_dicom(dicom, inp / "generated_dcm_transposed", transpose=True)
    restore_dicom(dicom, inp / "generated_dcm_turned", flip_rows=True, flip_cols=True)  # as scanners store coronals
    restore_nifti(nifti, inp / "generated_nii_as_is" / "volume.nii.gz")
    restore_nifti(nifti, inp / "generated_nii_permuted" / "volume.nii.gz", order=(2, 0, 1), flips=(0, 2))
    restore_nifti(nifti, inp / "generated_nii_swapped" / "volume.nii.gz", order=(1, 0, 2), flips=(1,))
    write_dicom_study(tmp_path / "small", n_slices=3, size=32, cols=24, seed=4)
    shutil.copytree(tmp_path / "small", inp / "small_as_is")
    restore_dicom(tmp_path / "small", inp / "small_rows_flipped", flip_rows=True)
    restore_dicom(tmp_path / "small", inp / "small_transposed", transpose=True)

    out = tmp_path / "out"
    assert main(["diagnose", str(inp), "--out", str(out), "--no-progress"]) == 0  # the bundled model
    answers = _answers(out)
    assert len(answers) == 10, sorted(answers)
    # the generated knee is diagnosed; the small study (random pixels, 32 x 24) gets one answer
    # however it is stored (in or out of scope is the model's score; noise at full size is out of
    # scope for the bundled model, test_shift)
    assert all(answers[k][0] == "ok" for k in answers if k.startswith("generated"))
    assert len({answers[k][0] for k in answers if k.startswith("small")}) == 1
    for group in ("generated_dcm", "generated_nii", "small"):
        names = sorted(k for k in answers if k.startswith(group))
        assert len(names) >= 3
        for name in names:
            np.testing.assert_allclose(answers[name][1], answers[names[0]][1], atol=0.01, err_msg=f"{name} vs {names[0]}")
    p = {k: v for k, (status, v) in answers.items() if status == "ok"}

    # the arrays as stored (what reached the model before) give the knee other probabilities
    model, meta = load_model(None)
    [transposed] = read_dicom_series(inp / "generated_dcm_transposed")
    as_stored = dataclasses.replace(  # the reader's images swapped back: the arrays in the files
        transposed, slice_reader=lambda i, read=transposed.slice_reader: {k: v.T.copy() for k, v in read(i).items()})
    stored_p = predict_study(model, meta, as_stored).p_study
    assert np.abs(stored_p - p["generated_dcm_as_is"]).max() > 0.01
