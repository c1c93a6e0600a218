"""DICOM reader: real scanner test files, compressed syntaxes, enhanced multi-frame, series
grouping, ordering, magnitude/phase pairing, rescale, phase in radians, tags and bad input."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import UID, generate_uid

from i2m2_med.errors import StudyReadError
from i2m2_med.io.dicom import collect_dicom, dicom_tags, parse_age, read_dicom_series


def _testfile(name: str) -> Path:
    import pydicom.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Path(pydicom.data.get_testdata_file(name))


MR_SMALL = _testfile("MR_small.dcm")
SAGITTAL = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]  # rows along +y, columns along -z: normal = -x


def _write(
    path: Path, values: np.ndarray, *, series_uid: str, study_uid: str, x_mm: float | None, instance: int | None,
    image_type=("ORIGINAL", "PRIMARY", "M", "ND"), bits: int = 16, slope=None, intercept=None, series_number=1,
    **extra,
) -> Path:
    ds = pydicom.dcmread(MR_SMALL)
    ds.SeriesInstanceUID = series_uid
    ds.StudyInstanceUID = study_uid
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesNumber = series_number
    ds.ImageType = list(image_type)
    ds.ImageOrientationPatient = SAGITTAL
    if x_mm is None:
        del ds.ImagePositionPatient
    else:
        ds.ImagePositionPatient = [x_mm, -80.0, 60.0]
    if instance is None:
        del ds.InstanceNumber
    else:
        ds.InstanceNumber = instance
    ds.Rows, ds.Columns = values.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.PixelData = values.astype(np.uint16).tobytes()
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    for key, value in extra.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _series(folder: Path, n: int, *, study_uid: str, series_uid: str | None = None, phase: bool = False,
            shape=(8, 6), positions=True, series_number=1, **kw) -> tuple[str, list[np.ndarray]]:
    """n slices at x = 10, 20, ... mm, written with instance numbers *reversed* and file names
    in a shuffled order; slice at x = 10*(k+1) holds the value k (+ a ramp)."""
    series_uid = series_uid or generate_uid()
    order = [2, 0, 3, 1, 4, 5][:n] if n <= 6 else list(range(n))
    arrays = []
    for k in range(n):
        values = np.full(shape, 100 * (k + 1), np.uint16) + np.arange(shape[1], dtype=np.uint16)
        if phase:
            values = np.full(shape, [0, 1024, 2048, 3072, 4095][k % 5], np.uint16)
        arrays.append(values)
        _write(
            folder / f"img{order[k]:03d}.dcm", values, series_uid=series_uid, study_uid=study_uid,
            x_mm=10.0 * (k + 1) if positions else None, instance=n - k,
            image_type=("ORIGINAL", "PRIMARY", "P" if phase else "M", "ND"),
            bits=12 if phase else 16, slope=2 if phase else None, intercept=-4096 if phase else None,
            series_number=series_number, **kw,
        )
    return series_uid, arrays


# ---- real files -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"])
def test_bundled_mr_small_every_transfer_syntax(name):
    expected = pydicom.dcmread(MR_SMALL).pixel_array.astype(np.float32)
    (study,) = read_dicom_series(_testfile(name))
    assert (study.format, study.domain, study.n_slices) == ("dicom", "image", 1)
    assert study.modalities == ("magnitude",) and study.missing_modalities == ["phase"]
    assert "no phase series: phase modality missing" in study.notes
    got = study.read_slice(0)
    assert set(got) == {"magnitude"}
    assert got["magnitude"].dtype == np.float32 and got["magnitude"].shape == (64, 64)
    np.testing.assert_array_equal(got["magnitude"], expected)
    t = study.tags
    assert (t["sex"], t["weight_kg"], t["tr_ms"], t["te_ms"], t["flip_angle_deg"]) == ("F", 80.0, 4000.0, 240.0, 90.0)
    assert (t["vendor"], t["model"]) == ("TOSHIBA_MEC", "MRT50H1")
    assert study.patient_id == "4MR1"
    if name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"):
        assert any(n.startswith("compressed transfer syntax") for n in study.notes)


def test_same_series_in_two_syntaxes_has_one_id():
    a = read_dicom_series(_testfile("MR_small.dcm"))[0]
    b = read_dicom_series(_testfile("MR_small_RLE.dcm"))[0]
    assert a.study_id == b.study_id
    ds = pydicom.dcmread(MR_SMALL)
    assert ds.StudyInstanceUID not in a.study_id and ds.SeriesInstanceUID not in a.study_id


def test_siemens_file_tags_fat_sat_age_height():
    (study,) = read_dicom_series(_testfile("MR-SIEMENS-DICOM-WithOverlays.dcm"))
    t = study.tags
    assert t["age_years"] == 58.0 and t["sex"] == "M" and t["height_m"] == pytest.approx(1.73)
    assert t["field_strength_t"] == pytest.approx(1.494, abs=1e-3)
    assert t["fat_sat"] is True  # ScanOptions SAT2\FS
    assert t["vendor"] == "SIEMENS" and t["model"] == "Avanto"
    assert study.read_slice(0)["magnitude"].shape == (484, 484)


def test_rescale_applied():
    path = _testfile("MR2_UNCR.dcm")
    ds = pydicom.dcmread(path)
    (study,) = read_dicom_series(path)
    got = study.read_slice(0)["magnitude"]
    np.testing.assert_allclose(got, ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept), rtol=1e-6)
    assert any("rescale applied (slope 3.77411" in n for n in study.notes)


@pytest.mark.parametrize("name", ["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm"])
def test_enhanced_multiframe(name):
    expected = pydicom.dcmread(_testfile("emri_small.dcm")).pixel_array
    (study,) = read_dicom_series(_testfile(name))
    assert study.n_slices == 10 and study.modalities == ("magnitude",)
    for i in (0, 4, 9):
        np.testing.assert_array_equal(study.read_slice(i)["magnitude"], expected[i].astype(np.float32))
    assert study.tags["field_strength_t"] == 3.0


def test_enhanced_phase_pairs_by_complex_image_component(tmp_path):
    ds = pydicom.dcmread(_testfile("emri_small.dcm"))
    ds.ComplexImageComponent = "PHASE"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 302
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "phase.dcm")
    (tmp_path / "mag.dcm").write_bytes(_testfile("emri_small.dcm").read_bytes())
    (study,) = read_dicom_series(tmp_path)
    assert study.modalities == ("magnitude", "phase") and study.n_slices == 10
    s = study.read_slice(3)
    # 12 bits unsigned, no rescale: stored v -> v * 2 pi / 4096 - pi
    raw = ds.pixel_array[3].astype(np.float64)
    np.testing.assert_allclose(s["phase"], raw * 2 * np.pi / 4096 - np.pi, atol=1e-5)
    assert s["phase"].min() >= -np.pi and s["phase"].max() <= np.pi


# ---- constructed series ---------------------------------------------------------------------


def test_ordering_by_position_along_normal(tmp_path):
    study_uid = generate_uid()
    _, arrays = _series(tmp_path, 5, study_uid=study_uid)
    (study,) = read_dicom_series(tmp_path)
    assert study.n_slices == 5
    assert "slices ordered by ImagePositionPatient along the slice normal" in study.notes
    # normal = -x: the slice at the largest x comes first
    firsts = [float(study.read_slice(i)["magnitude"][0, 0]) for i in range(5)]
    assert firsts == [500.0, 400.0, 300.0, 200.0, 100.0]
    np.testing.assert_array_equal(study.read_slice(4)["magnitude"], arrays[0].astype(np.float32))
    assert study.source == tmp_path


def test_ordering_falls_back_to_instance_number(tmp_path):
    _series(tmp_path, 4, study_uid=generate_uid(), positions=False)
    (study,) = read_dicom_series(tmp_path)
    assert any("InstanceNumber" in n for n in study.notes)
    # instance numbers are reversed (slice k has n - k)
    assert [float(study.read_slice(i)["magnitude"][0, 0]) for i in range(4)] == [400.0, 300.0, 200.0, 100.0]


def test_magnitude_phase_pairing_and_radians(tmp_path):
    study_uid = generate_uid()
    _series(tmp_path / "mag", 5, study_uid=study_uid, series_number=3)
    _series(tmp_path / "pha", 5, study_uid=study_uid, phase=True, series_number=4)
    # an unrelated phase series of another study, same geometry: must not be paired
    _series(tmp_path / "other", 5, study_uid=generate_uid(), phase=True, series_number=4)
    scan = collect_dicom(sorted(tmp_path.rglob("*.dcm")))
    assert scan.problems == []
    paired = [s for s in scan.studies if s.modalities == ("magnitude", "phase")]
    lone = [s for s in scan.studies if s.modalities == ("phase",)]
    assert len(paired) == 1 and len(lone) == 1 and len(scan.studies) == 2
    study = paired[0]
    assert any(n.startswith("phase series") and "paired" in n for n in study.notes)
    assert any("12-bit stored range [-4096, 4094] mapped to radians" in n for n in study.notes)
    # phase values written per position k: stored 0, 1024, 2048, 3072, 4095 -> rescaled 2v-4096
    # -> radians (2v - 4096) * pi / 4096; slices come in order x = 50 .. 10 (k = 4 .. 0)
    stored = [4095, 3072, 2048, 1024, 0]
    for i, v in enumerate(stored):
        s = study.read_slice(i)
        assert s["phase"].dtype == np.float32 and s["phase"].shape == (8, 6)
        np.testing.assert_allclose(s["phase"], (2 * v - 4096) * np.pi / 4096, atol=1e-6)
        assert float(s["magnitude"][0, 0]) == 100.0 * (5 - i)
    assert lone[0].missing_modalities == ["magnitude"]
    assert any("no magnitude series" in n for n in lone[0].notes)


def test_phase_not_paired_when_geometry_differs(tmp_path):
    study_uid = generate_uid()
    _series(tmp_path / "mag", 3, study_uid=study_uid)
    _series(tmp_path / "pha", 3, study_uid=study_uid, phase=True, shape=(8, 8))
    studies = read_dicom_series(tmp_path)
    assert sorted(s.modalities for s in studies) == [("magnitude",), ("phase",)]


def test_mixed_sizes_within_a_series(tmp_path):
    series_uid = generate_uid()
    study_uid = generate_uid()
    for k in range(3):
        _write(tmp_path / f"a{k}.dcm", np.zeros((8, 6)), series_uid=series_uid, study_uid=study_uid,
               x_mm=10.0 * k, instance=k + 1)
    odd = _write(tmp_path / "a9.dcm", np.zeros((10, 6)), series_uid=series_uid, study_uid=study_uid, x_mm=50.0,
                 instance=9)
    scan = collect_dicom(sorted(tmp_path.glob("*.dcm")))
    assert scan.studies == []
    (path, reason), = scan.problems
    assert path == odd
    assert "mixes image sizes 8x6 (3 images), 10x6 (1 image); this image is 10x6" in reason
    with pytest.raises(StudyReadError) as info:
        read_dicom_series(tmp_path)
    assert str(odd) in info.value.one_line()


def test_tags_age_bmi_fat_sat_and_no_patient_name(tmp_path):
    _write(tmp_path / "x.dcm", np.zeros((8, 6)), series_uid=generate_uid(), study_uid=generate_uid(), x_mm=0,
           instance=1, PatientAge="045Y", PatientWeight=80, PatientSize=1.6, PatientSex="M",
           PatientName="Doe^Jane", PatientID="MRN-12345", MagneticFieldStrength=3, InversionTime=150,
           SeriesDescription="PD SAG fs", ScanOptions="")
    (study,) = read_dicom_series(tmp_path / "x.dcm")
    t = study.tags
    assert t["age_years"] == 45.0 and t["sex"] == "M"
    assert t["bmi"] == pytest.approx(80 / 1.6**2) and t["height_m"] == 1.6
    assert t["field_strength_t"] == 3.0 and t["ti_ms"] == 150.0
    assert t["fat_sat"] is True
    assert study.patient_id == "MRN-12345"
    everything = repr(study) + repr(t) + repr(study.notes) + study.study_id
    assert "Doe" not in everything and "Jane" not in everything and "MRN-12345" not in everything


@pytest.mark.parametrize(
    "options, description, expected",
    [("FS", "", True), (["PFP", "SFS"], "", True), ("FAT_SAT", "", True), ("PFP", "PD SAG", False),
     ("", "PD FAT SAT COR", True), ("", "pd_tse_fs_sag", True), ("", "T2 FSE", False), (None, None, None)],
)
def test_fat_sat_detection(options, description, expected):
    ds = pydicom.Dataset()
    if options is not None:
        ds.ScanOptions = options
    if description is not None:
        ds.SeriesDescription = description
    assert dicom_tags(ds).get("fat_sat") is expected


@pytest.mark.parametrize("text, years", [("045Y", 45.0), ("006M", 0.5), ("052W", 52 * 7 / 365.25), ("030D", 30 / 365.25),
                                         ("45", 45.0), ("", None), ("abc", None), (None, None)])
def test_parse_age(text, years):
    got = parse_age(text)
    assert got == (None if years is None else pytest.approx(years))


def test_pickle_study(tmp_path):
    study_uid = generate_uid()
    _series(tmp_path / "mag", 3, study_uid=study_uid)
    _series(tmp_path / "pha", 3, study_uid=study_uid, phase=True)
    (study,) = read_dicom_series(tmp_path)
    clone = pickle.loads(pickle.dumps(study))
    for key in ("magnitude", "phase"):
        np.testing.assert_array_equal(clone.read_slice(1)[key], study.read_slice(1)[key])


# ---- bad input ------------------------------------------------------------------------------


def test_no_pixel_data(tmp_path):
    ds = pydicom.dcmread(MR_SMALL)
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    with pytest.raises(StudyReadError) as info:
        read_dicom_series(tmp_path / "nopix.dcm")
    assert info.value.one_line() == f"{tmp_path / 'nopix.dcm'}: no pixel data (PixelData element absent)"


def test_unsupported_transfer_syntax(tmp_path):
    ds = pydicom.dcmread(MR_SMALL)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2, no decoder
    ds.PixelData = encapsulate([b"\0" * 128])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "mpeg.dcm")
    with pytest.raises(StudyReadError) as info:
        read_dicom_series(tmp_path / "mpeg.dcm")
    msg = info.value.one_line()
    assert str(tmp_path / "mpeg.dcm") in msg and "unsupported transfer syntax MPEG2" in msg


def test_truncated_pixel_data():
    path = _testfile("MR_truncated.dcm")
    with pytest.raises(StudyReadError, match="pixel data truncated: 8130 bytes"):
        read_dicom_series(path)


def test_not_dicom(tmp_path):
    (tmp_path / "scan.dcm").write_text("this is a text file\n" * 20)
    with pytest.raises(StudyReadError) as info:
        read_dicom_series(tmp_path / "scan.dcm")
    assert "not a DICOM file" in info.value.one_line() and str(tmp_path / "scan.dcm") in info.value.one_line()


def test_bad_file_does_not_stop_the_others(tmp_path):
    _series(tmp_path / "good", 3, study_uid=generate_uid())
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 10)
    scan = collect_dicom(sorted(tmp_path.rglob("*.dcm")))
    assert len(scan.studies) == 1 and scan.studies[0].n_slices == 3
    assert [p.name for p, _ in scan.problems] == ["bad.dcm"]


def test_missing_path(tmp_path):
    with pytest.raises(StudyReadError, match="no such file or folder"):
        read_dicom_series(tmp_path / "absent")
