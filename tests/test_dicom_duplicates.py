"""DICOM series stored more than once: the same SOP instances in two transfer syntaxes (or
copied twice) read once, with a note; copies that disagree fail their series in one line; the
same series as one enhanced multi-frame file gives the volume of its single-frame files; and
``diagnose`` gives a duplicated series the probabilities of the clean one."""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from diagnose_inputs import make_checkpoint, restore_dicom, write_dicom_study
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    UID,
    generate_uid,
)

from i2m2_med.errors import StudyReadError
from i2m2_med.heads import HEADS
from i2m2_med.io.dicom import collect_dicom, read_dicom_series
from pipelines.cli import main


# random test images do not shrink under RLE; pydicom says so when it decodes them
pytestmark = pytest.mark.filterwarnings("ignore:The number of bytes of compressed pixel data:UserWarning")


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.dcm") if p.is_file())


def _save_in(ds: Dataset, path: Path, syntax: UID) -> Path:
    """``ds`` written to ``path`` in transfer syntax ``syntax`` (pydicom's own encoders)."""
    if syntax.is_compressed:
        ds.compress(syntax, encoding_plugin="pydicom", generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _store_twice(folder: Path, syntax: UID, prefix: str = "copy_") -> list[tuple[Path, Path]]:
    """Every DICOM file under ``folder`` stored a second time beside it in ``syntax`` (same SOP
    instance); returns (original, copy) pairs. The copies' names sort before the originals'."""
    pairs = []
    for path in _files(folder):
        copy = _save_in(pydicom.dcmread(path), path.with_name(prefix + path.name), syntax)
        pairs.append((path, copy))
    return pairs


def _volume(study) -> dict[str, np.ndarray]:
    slices = [study.read_slice(i) for i in range(study.n_slices)]
    return {key: np.stack([s[key] for s in slices]) for key in slices[0]}


def _assert_same_volume(got, expected) -> None:
    a, b = _volume(got), _volume(expected)
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ---- the same images stored twice -------------------------------------------------------------


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless],
                         ids=["implicit", "deflated", "rle"])
def test_series_stored_twice_in_another_syntax_is_read_once(tmp_path, syntax):
    uids = write_dicom_study(tmp_path / "clean", n_slices=4, phase=True, size=12, cols=10, seed=7)
    shutil.copytree(tmp_path / "clean", tmp_path / "twice")
    pairs = _store_twice(tmp_path / "twice", syntax)
    for original, copy in pairs:  # two real copies of one image
        a, b = pydicom.dcmread(original), pydicom.dcmread(copy)
        assert b.file_meta.TransferSyntaxUID == syntax and a.SOPInstanceUID == b.SOPInstanceUID
        np.testing.assert_array_equal(a.pixel_array, b.pixel_array)

    (clean,) = read_dicom_series(tmp_path / "clean")
    scan = collect_dicom(_files(tmp_path / "twice"))
    assert scan.problems == [] and len(scan.studies) == 1
    (twice,) = scan.studies
    assert (twice.n_slices, twice.modalities) == (4, ("magnitude", "phase"))  # not 8 slices
    assert twice.study_id == clean.study_id and twice.tags == clean.tags
    _assert_same_volume(twice, clean)

    duplicates = [n for n in twice.notes if "duplicate" in n]
    assert len(duplicates) == 2
    assert duplicates[0].startswith("4 duplicate images dropped: the same SOPInstanceUID stored more than once")
    assert duplicates[1].startswith("phase series: 4 duplicate images dropped")
    assert not any("share a slice position" in n for n in twice.notes)
    assert [n for n in twice.notes if n not in duplicates] == clean.notes
    text = " ".join(twice.notes)
    assert all(uid not in text for uid in uids.values()) and str(tmp_path) not in text and "im00" not in text

    # one copy of each image: the uncompressed one, else the first by path (the copy sorts first)
    kept_paths = [Path(entry[0]) for entry in twice.slice_reader.magnitude + twice.slice_reader.phase]
    assert len(set(kept_paths)) == 8
    kept = [path.name for path in kept_paths]
    if syntax.is_compressed:
        assert all(name.startswith("im") for name in kept)
        assert not any(n.startswith("compressed transfer syntax") for n in twice.notes)
    else:
        assert all(name.startswith("copy_") for name in kept)


def test_compressed_copies_alone_the_first_by_path_is_read(tmp_path):
    """Every copy compressed: the first by path is read, and the note names its syntax."""
    write_dicom_study(tmp_path / "s", n_slices=3, phase=False, size=8, seed=2)
    (clean,) = read_dicom_series(tmp_path / "s")
    expected = _volume(clean)["magnitude"]
    for original, _ in _store_twice(tmp_path / "s", RLELossless, prefix="a_"):
        _save_in(pydicom.dcmread(original), original.with_name("b_" + original.name), RLELossless)
        original.unlink()
    (study,) = read_dicom_series(tmp_path / "s")
    assert study.n_slices == 3 and any(n.startswith("3 duplicate images dropped") for n in study.notes)
    assert all(Path(e[0]).name.startswith("a_") for e in study.slice_reader.magnitude)
    assert "compressed transfer syntax: RLE Lossless" in study.notes
    np.testing.assert_array_equal(_volume(study)["magnitude"], expected)


def test_enhanced_file_in_three_syntaxes_is_one_series_of_ten_slices(tmp_path):
    """The bundled enhanced MR file and its RLE and JPEG 2000 versions: one SOP instance of 10
    frames, formerly stacked as 30 slices."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pydicom.data

        names = ["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm"]
        for name in names:
            shutil.copy(pydicom.data.get_testdata_file(name), tmp_path / name)
    expected = pydicom.dcmread(tmp_path / "emri_small.dcm").pixel_array
    (study,) = read_dicom_series(tmp_path)
    assert study.n_slices == 10
    assert any(n.startswith("20 duplicate images dropped") for n in study.notes)
    assert {Path(e[0]).name for e in study.slice_reader.magnitude} == {"emri_small.dcm"}
    assert [e[1] for e in study.slice_reader.magnitude] == list(range(10))
    np.testing.assert_array_equal(_volume(study)["magnitude"], expected.astype(np.float32))
    assert not any(n.startswith("compressed transfer syntax") for n in study.notes)


def _clash_copy(path: Path, how: str) -> Path:
    ds = pydicom.dcmread(path)
    if how == "size":
        pixels = ds.pixel_array[:, :-2]
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    else:
        ds.ImagePositionPatient = [float(v) + 5.0 for v in ds.ImagePositionPatient]
    out = path.with_name("z_" + path.name)
    ds.save_as(out, enforce_file_format=True)
    return out


@pytest.mark.parametrize("how, reason", [
    ("size", "but 12x10 pixels where the other copy has 12x12: not two copies of one image"),
    ("position", "but another ImagePositionPatient: not two copies of one image"),
])
def test_copies_that_disagree_fail_the_series_in_one_line(tmp_path, how, reason):
    uids = write_dicom_study(tmp_path / "s", n_slices=3, phase=False, size=12, seed=3)
    odd = _clash_copy(tmp_path / "s" / "magnitude" / "im001.dcm", how)
    scan = collect_dicom(_files(tmp_path))
    assert scan.studies == []
    ((path, message),) = scan.problems
    assert path == odd
    assert message.startswith("series ") and "the same SOPInstanceUID as im001.dcm " + reason in message
    assert all(uid not in message for uid in uids.values())
    with pytest.raises(StudyReadError) as info:
        read_dicom_series(tmp_path / "s")
    line = info.value.one_line()
    assert "\n" not in line and line.startswith(f"{odd}: series ") and line.endswith(reason)


def test_an_unusable_copy_loses_nothing(tmp_path):
    """A copy without pixel data is a problem of its own; its series is read from the good copy
    (it would otherwise be left out whole as a series that lost an image)."""
    write_dicom_study(tmp_path / "s", n_slices=3, phase=True, size=8, seed=5)
    (clean,) = read_dicom_series(tmp_path / "s")
    ds = pydicom.dcmread(tmp_path / "s" / "magnitude" / "im002.dcm")
    del ds.PixelData
    ds.save_as(tmp_path / "s" / "magnitude" / "im002_copy.dcm", enforce_file_format=True)
    scan = collect_dicom(_files(tmp_path))
    assert [(p.name, r) for p, r in scan.problems] == [("im002_copy.dcm", "no pixel data (PixelData element absent)")]
    (study,) = scan.studies
    assert study.n_slices == 3 and study.modalities == ("magnitude", "phase")
    assert "1 unusable duplicate image file set aside: the same SOPInstanceUID read from another copy" in study.notes
    _assert_same_volume(study, clean)


# ---- one series as single-frame files and as one multi-frame file --------------------------------


def _multiframe(files: list[Path], out: Path, *, layout: str, order: list[int], syntax: UID = ExplicitVRLittleEndian) -> Path:
    """The single-frame images ``files`` (one series, or with ``layout="mixed"`` a magnitude and
    its phase series) written as one enhanced MR file, frames in ``order`` (indices into
    ``files``). Geometry moves into the functional groups: the orientation in the shared group
    (``layout`` "shared", "stray" and "mixed") or in every frame ("per-frame"); "stray" leaves
    the first frame's ImagePositionPatient at the top level as well, as some converters do."""
    images = [pydicom.dcmread(p) for p in files]
    first = images[order[0]]
    ds = pydicom.dcmread(files[order[0]])
    components = [str(im.ImageType[2]) for im in images]
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.NumberOfFrames = len(order)
    if layout == "mixed":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "MIXED", "ND"]
    for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "SliceLocation",
                "RescaleSlope", "RescaleIntercept", "InstanceNumber"):
        if key in ds:
            delattr(ds, key)
    ds.InstanceNumber = 1
    if layout == "stray":
        ds.ImagePositionPatient = first.ImagePositionPatient

    def item(**values) -> Dataset:
        out_item = Dataset()
        for key, value in values.items():
            setattr(out_item, key, value)
        return out_item

    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([item(PixelSpacing=first.PixelSpacing, SliceThickness=first.SliceThickness)])
    if layout != "per-frame":
        shared.PlaneOrientationSequence = Sequence([item(ImageOrientationPatient=first.ImageOrientationPatient)])
    if layout != "mixed":
        shared.MRImageFrameTypeSequence = Sequence([item(
            FrameType=list(first.ImageType), ComplexImageComponent="PHASE" if components[0] == "P" else "MAGNITUDE")])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for k in order:
        im = images[k]
        group = Dataset()
        group.PlanePositionSequence = Sequence([item(ImagePositionPatient=im.ImagePositionPatient)])
        if layout == "per-frame":
            group.PlaneOrientationSequence = Sequence([item(ImageOrientationPatient=im.ImageOrientationPatient)])
        group.PixelValueTransformationSequence = Sequence([item(
            RescaleSlope=im.get("RescaleSlope", 1), RescaleIntercept=im.get("RescaleIntercept", 0), RescaleType="US")])
        if layout == "mixed":
            group.MRImageFrameTypeSequence = Sequence([item(
                FrameType=list(im.ImageType), ComplexImageComponent="PHASE" if components[k] == "P" else "MAGNITUDE")])
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = b"".join(images[k].pixel_array.astype(np.uint16).tobytes() for k in order)
    return _save_in(ds, out, syntax)


_STORAGES = {"as_stored": (False, False, False), "turned": (False, True, True), "transposed": (True, False, False)}


@pytest.mark.parametrize("storage", sorted(_STORAGES))
@pytest.mark.parametrize("layout", ["shared", "per-frame", "stray", "mixed"])
def test_multiframe_file_gives_the_volume_of_its_single_frame_files(tmp_path, storage, layout):
    write_dicom_study(tmp_path / "base", n_slices=5, phase=True, size=12, cols=10, seed=11)
    single = restore_dicom(tmp_path / "base", tmp_path / "single", *_STORAGES[storage])
    mags, phases = _files(single / "magnitude"), _files(single / "phase")
    frames = [3, 0, 4, 1, 2]  # stored out of slice order
    if layout == "mixed":  # magnitude and phase frames interleaved in one file
        _multiframe(mags + phases, tmp_path / "multi" / "mixed.dcm", layout=layout,
                    order=[i for k in frames for i in (k, k + 5)])
    else:
        _multiframe(mags, tmp_path / "multi" / "magnitude.dcm", layout=layout, order=frames)
        _multiframe(phases, tmp_path / "multi" / "phase.dcm", layout=layout, order=frames)

    (a,) = read_dicom_series(single)
    (b,) = read_dicom_series(tmp_path / "multi")
    assert (b.n_slices, b.modalities, b.study_id) == (5, ("magnitude", "phase"), a.study_id)
    _assert_same_volume(b, a)
    for key in ("image_shape", "image_directions", "orientation", "series_uid", "age_years", "te_ms"):
        assert b.tags.get(key) == a.tags.get(key), key
    paired = [n for n in a.notes if n.startswith("phase series ") and "paired" in n]
    expected = [n for n in a.notes if n not in paired]
    if layout == "mixed":  # the phase frames are of the magnitude's series: no second series to pair
        assert [n for n in b.notes if not (n.startswith("phase series ") and "paired" in n)] == expected
    else:
        assert b.notes == a.notes
    assert "slices ordered by ImagePositionPatient along the slice normal, anterior to posterior" in b.notes


def test_compressed_multiframe_file_gives_the_same_volume(tmp_path):
    write_dicom_study(tmp_path / "single", n_slices=4, phase=False, size=12, cols=10, seed=12)
    _multiframe(_files(tmp_path / "single"), tmp_path / "multi" / "rle.dcm", layout="shared", order=[2, 3, 0, 1],
                syntax=RLELossless)
    (a,) = read_dicom_series(tmp_path / "single")
    (b,) = read_dicom_series(tmp_path / "multi")
    assert b.n_slices == 4 and "compressed transfer syntax: RLE Lossless" in b.notes
    _assert_same_volume(b, a)


# ---- diagnose ---------------------------------------------------------------------------------------


def _probabilities(out: Path) -> tuple[dict[str, str], np.ndarray]:
    with open(out / "predictions.csv", newline="", encoding="utf-8") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["status"] == "ok", row["error"]
    return row, np.array([float(row[f"p_{h}"]) for h in HEADS])


def test_diagnose_gives_a_duplicated_series_the_probabilities_of_the_clean_one(capsys, tmp_path):
    checkpoint = make_checkpoint(tmp_path / "run" / "model.safetensors", seed=3)
    write_dicom_study(tmp_path / "clean", n_slices=3, phase=True, size=16, seed=21)
    shutil.copytree(tmp_path / "clean", tmp_path / "twice")
    _store_twice(tmp_path / "twice", ImplicitVRLittleEndian, prefix="implicit_")
    _store_twice(tmp_path / "twice", RLELossless, prefix="rle_")  # of the originals and of the implicit copies
    assert len(_files(tmp_path / "twice")) == 4 * len(_files(tmp_path / "clean"))
    results = {}
    for name in ("clean", "twice"):
        out = tmp_path / f"out_{name}"
        rc = main(["diagnose", str(tmp_path / name), "--out", str(out), "--model", str(checkpoint), "--no-progress"])
        assert rc == 0, capsys.readouterr().err
        row, p = _probabilities(out)
        results[name] = (row, p, json.loads((out / "studies" / f"{row['study_id']}.json").read_text()))
    (clean_row, clean_p, clean_doc), (row, p, doc) = results["clean"], results["twice"]
    assert int(row["n_slices"]) == int(clean_row["n_slices"]) == 3
    np.testing.assert_array_equal(p, clean_p)
    assert row["study_id"] == clean_row["study_id"]
    assert any(n.startswith("9 duplicate images dropped") for n in doc["notes"])
    assert any(n.startswith("phase series: 9 duplicate images dropped") for n in doc["notes"])
    assert not any("duplicate" in n for n in clean_doc["notes"])
