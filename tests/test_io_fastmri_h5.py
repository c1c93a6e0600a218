"""fastMRI h5 reader: layout, header tags, every width, lazy per-process handles, bad input."""

from __future__ import annotations

import multiprocessing as mp
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from i2m2_med.errors import StudyReadError
from i2m2_med.io.fastmri_h5 import (
    FastMRISliceReader,
    read_fastmri_h5,
    read_reconstruction,
    write_fastmri_h5,
)
from i2m2_med.io.ismrmrd import HeaderParams, build_header


def _kspace(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def _write(path: Path, shape: tuple[int, ...], *, header: HeaderParams | None = None, seed: int = 0, **kw) -> np.ndarray:
    k = _kspace(shape, seed)
    width = shape[-1]
    params = header or HeaderParams(encoded_y=width, n_slices=shape[0], n_coils=shape[1] if len(shape) == 4 else 1)
    write_fastmri_h5(path, k, build_header(params), **kw)
    return k


@pytest.mark.parametrize("width", [320, 338, 372, 400, 454, 644])
def test_singlecoil_every_width_kept_with_notes(tmp_path, width):
    path = tmp_path / f"file{width}.h5"
    k = _write(path, (3, 640, width), seed=width)
    study = read_fastmri_h5(path)
    assert study.study_id == f"file{width}"
    assert (study.format, study.domain, study.n_slices) == ("fastmri_h5", "kspace", 3)
    assert study.modalities == ("magnitude", "phase")
    assert study.missing_modalities == []
    assert study.tags["kspace_shape"] == [640, width]
    assert study.tags["n_coils"] == 1
    assert study.tags["encoded_matrix"] == [640, width, 1]
    for i in range(3):
        got = study.read_slice(i)["kspace"]
        assert got.dtype == np.complex64 and got.shape == (640, width)
        np.testing.assert_array_equal(got, k[i])
    joined = " | ".join(study.notes)
    if width > 320:
        assert f"W={width} wider than the 320 crop: centre-cropped" in joined
    else:
        assert "W=320 equals the 320 crop" in joined
    assert "no zero-padded k-space columns per header" in joined


def test_narrow_width_is_zero_filled_note(tmp_path):
    path = tmp_path / "narrow.h5"
    _write(path, (2, 640, 288))
    assert "W=288 narrower than the 320 crop: zero-filled" in read_fastmri_h5(path).notes


def test_multicoil_slices_and_tags(tmp_path):
    path = tmp_path / "file_multi.h5"
    k = _write(path, (2, 4, 640, 372), reconstruction=np.full((2, 320, 320), 3.0))
    study = read_fastmri_h5(path, study_id="custom")
    assert study.study_id == "custom"
    assert study.tags["kspace_shape"] == [4, 640, 372]
    assert study.tags["n_coils"] == 4
    assert study.tags["receiver_channels"] == 4
    got = study.read_slice(1)["kspace"]
    assert got.shape == (4, 640, 372)
    np.testing.assert_array_equal(got, k[1])
    rec = read_reconstruction(study, 0)
    assert rec.shape == (320, 320) and rec.dtype == np.float32 and float(rec[5, 5]) == 3.0
    with h5py.File(path) as f:
        assert "reconstruction_rss" in f


def test_header_and_attrs_become_tags(tmp_path):
    path = tmp_path / "file1000001.h5"
    params = HeaderParams(
        encoded_y=372, enc_center=176, enc_maximum=340, n_slices=2, tr_ms=3000, te_ms=30.5, ti_ms=50,
        flip_angle_deg=120, field_strength_t=1.494, vendor="SIEMENS", model="Aera",
    )
    _write(
        path, (2, 640, 372), header=params, reconstruction=np.zeros((2, 320, 320)),
        attrs={"acquisition": "CORPDFS_FBK", "max": 0.0004, "norm": 0.12, "patient_id": "f7c3a9"},
    )
    study = read_fastmri_h5(path)
    t = study.tags
    assert t["acquisition"] == "CORPDFS_FBK" and t["fat_sat"] is True
    assert (t["tr_ms"], t["te_ms"], t["ti_ms"], t["flip_angle_deg"]) == (3000.0, 30.5, 50.0, 120.0)
    assert t["field_strength_t"] == pytest.approx(1.494)
    assert (t["vendor"], t["model"]) == ("SIEMENS", "Aera")
    assert t["max"] == pytest.approx(0.0004) and t["norm"] == pytest.approx(0.12)
    # fastMRI convention: left = 372 // 2 - 176 = 10, right = 10 + 340 + 1 = 351
    assert (t["padding_left"], t["padding_right"]) == (10, 351)
    assert "zero-padded k-space columns per header: 10 on the left (0..9) and 21 on the right (351..371)" in study.notes
    assert study.patient_id == "f7c3a9"
    assert "patient_id" not in t
    assert read_reconstruction(study, 1).shape == (320, 320)


def test_non_fat_sat_and_no_patient_id(tmp_path):
    path = tmp_path / "pd.h5"
    _write(path, (1, 640, 368), attrs={"acquisition": "CORPD_FBK"})
    study = read_fastmri_h5(path)
    assert study.tags["fat_sat"] is False
    assert study.patient_id is None
    assert read_reconstruction(study, 0) is None


def test_missing_header_is_noted_not_fatal(tmp_path):
    path = tmp_path / "nohdr.h5"
    with h5py.File(path, "w") as f:
        f["kspace"] = _kspace((2, 640, 320))
    study = read_fastmri_h5(path)
    assert any("no ismrmrd_header" in n for n in study.notes)
    assert "tr_ms" not in study.tags and study.tags["kspace_shape"] == [640, 320]


def test_readout_other_than_640_is_recorded(tmp_path):
    path = tmp_path / "short.h5"
    with h5py.File(path, "w") as f:
        f["kspace"] = _kspace((1, 512, 320))
    notes = " | ".join(read_fastmri_h5(path).notes)
    assert "readout of 512 samples (fastMRI knee has 640)" in notes


def test_out_of_range_slice(tmp_path):
    path = tmp_path / "a.h5"
    _write(path, (2, 640, 320))
    with pytest.raises(IndexError):
        read_fastmri_h5(path).read_slice(2)


def test_slice_reads_are_partial(tmp_path):
    """Nothing is opened at open time, one cached handle serves every read, and close() drops it.
    (That a read touches its own slice's chunk only is shown by test_corrupt_chunk_...: slice 0
    reads fine while the chunk of slice 1 is garbage.)"""
    path = tmp_path / "a.h5"
    _write(path, (4, 640, 320))
    study = read_fastmri_h5(path)
    reader = study.slice_reader
    assert isinstance(reader, FastMRISliceReader)
    assert reader._file is None  # nothing opened at read_fastmri_h5 time
    study.read_slice(0)
    handle = reader._file
    study.read_slice(3)
    assert reader._file is handle and handle.id.valid
    reader.close()
    assert reader._file is None
    assert study.read_slice(1)["kspace"].shape == (640, 320)  # reopened


def test_pickle_drops_handle_and_reopens(tmp_path):
    path = tmp_path / "a.h5"
    k = _write(path, (3, 640, 320))
    study = read_fastmri_h5(path)
    study.read_slice(0)  # open the handle
    clone = pickle.loads(pickle.dumps(study))
    assert clone.slice_reader._file is None
    np.testing.assert_array_equal(clone.read_slice(2)["kspace"], k[2])


def test_study_close_releases_the_file_and_reopens_on_read(tmp_path):
    path = tmp_path / "a.h5"
    k = _write(path, (3, 640, 320))
    with read_fastmri_h5(path) as study:
        np.testing.assert_array_equal(study.read_slice(0)["kspace"], k[0])
        handle = study.slice_reader._file
        assert handle is not None and handle.id.valid
    assert study.slice_reader._file is None and not handle.id.valid and study.slice_reader._fd is None
    np.testing.assert_array_equal(study.read_slice(2)["kspace"], k[2])  # reopened on demand
    study.close()
    study.close()  # closing twice is harmless


def _child_sum(study) -> float:
    return float(np.abs(study.read_slice(1)["kspace"]).sum())


def test_forked_and_spawned_workers_reopen(tmp_path):
    path = tmp_path / "a.h5"
    k = _write(path, (3, 640, 320))
    study = read_fastmri_h5(path)
    study.read_slice(0)  # parent holds an open handle
    expected = float(np.abs(k[1]).sum())
    for method in ("fork", "spawn"):
        with mp.get_context(method).Pool(1) as pool:
            assert pool.apply(_child_sum, (study,)) == pytest.approx(expected, rel=1e-6)
    assert study.read_slice(2)["kspace"].shape == (640, 320)


# ---- bad input ------------------------------------------------------------------------------


def _expect_error(path: Path, *fragments: str) -> StudyReadError:
    with pytest.raises(StudyReadError) as info:
        read_fastmri_h5(path)
    msg = info.value.one_line()
    assert str(path) in msg and "\n" not in msg
    for frag in fragments:
        assert frag in msg
    return info.value


@pytest.mark.parametrize("keep", [0.5, 0.98, 0.0005])
def test_truncated_file(tmp_path, keep):
    good = tmp_path / "good.h5"
    _write(good, (3, 640, 372))
    data = good.read_bytes()
    bad = tmp_path / "cut.h5"
    bad.write_bytes(data[: int(len(data) * keep)])
    _expect_error(bad, "truncated")


def test_text_file_with_h5_extension(tmp_path):
    bad = tmp_path / "notes.h5"
    bad.write_text("this is not HDF5\n")
    _expect_error(bad, "not an HDF5 file")


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "absent.h5", "no such file")


def test_missing_kspace_key(tmp_path):
    bad = tmp_path / "nokspace.h5"
    with h5py.File(bad, "w") as f:
        f["reconstruction_esc"] = np.zeros((2, 320, 320), np.float32)
    _expect_error(bad, "no 'kspace' dataset", "reconstruction_esc")


def test_real_dtype(tmp_path):
    bad = tmp_path / "real.h5"
    with h5py.File(bad, "w") as f:
        f["kspace"] = np.zeros((2, 640, 320), np.float32)
    _expect_error(bad, "kspace dtype float32 is not complex")


@pytest.mark.parametrize("shape", [(640, 320), (1, 2, 3, 640, 320)])
def test_wrong_rank(tmp_path, shape):
    bad = tmp_path / "rank.h5"
    with h5py.File(bad, "w") as f:
        f["kspace"] = np.zeros(shape, np.complex64)
    _expect_error(bad, f"kspace has rank {len(shape)}")


def test_empty_volume(tmp_path):
    bad = tmp_path / "empty.h5"
    with h5py.File(bad, "w") as f:
        f["kspace"] = np.zeros((0, 640, 320), np.complex64)
    _expect_error(bad, "kspace is empty")


def test_malformed_header(tmp_path):
    bad = tmp_path / "hdr.h5"
    with h5py.File(bad, "w") as f:
        f["kspace"] = np.zeros((1, 640, 320), np.complex64)
        f["ismrmrd_header"] = np.bytes_(b"<ismrmrdHeader><unclosed>")
    _expect_error(bad, "ismrmrd_header is not valid XML")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_inf_detected_at_slice_read(tmp_path, value):
    path = tmp_path / "nan.h5"
    k = _kspace((3, 640, 320))
    k[1, 100, 7] = value
    write_fastmri_h5(path, k, build_header(HeaderParams(encoded_y=320, n_slices=3)))
    study = read_fastmri_h5(path)  # opening does not load the volume
    assert study.read_slice(0)["kspace"].shape == (640, 320)
    with pytest.raises(StudyReadError) as info:
        study.read_slice(1)
    msg = info.value.one_line()
    assert str(path) in msg and "slice 1" in msg and "1 NaN/Inf" in msg


def test_corrupt_chunk_detected_at_slice_read(tmp_path):
    """Overwrite the bytes of the last slice's chunk (compressed, so the filter fails)."""
    path = tmp_path / "corrupt.h5"
    k = _kspace((2, 640, 64))
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=k, chunks=(1, 640, 64), compression="gzip")
        offset = f["kspace"].id.get_chunk_info(1).byte_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    study = read_fastmri_h5(path)
    np.testing.assert_array_equal(study.read_slice(0)["kspace"], k[0])
    with pytest.raises(StudyReadError) as info:
        study.read_slice(1)
    assert "slice 1" in info.value.one_line() and str(path) in info.value.one_line()


# ---- direct reads (os.preadv at the slice offsets) against h5py -------------------------------


def _layout_file(path: Path, k: np.ndarray, layout: str) -> None:
    """``k`` as the ``kspace`` dataset in one of several storage layouts."""
    kw: dict = {}
    file_kw: dict = {}
    data = k
    if layout == "chunked":
        kw["chunks"] = (1, *k.shape[1:])
    elif layout == "gzip":
        kw.update(chunks=(1, *k.shape[1:]), compression="gzip")
    elif layout == "two_slice_chunks":
        kw["chunks"] = (2, *k.shape[1:])
    elif layout == "big_endian":
        data = k.astype(">c8")
    elif layout == "userblock":
        file_kw["userblock_size"] = 1024
    elif layout == "userblock_chunked":
        file_kw["userblock_size"] = 1024
        kw["chunks"] = (1, *k.shape[1:])
    with h5py.File(path, "w", **file_kw) as f:
        f.create_dataset("kspace", data=data, **kw)


@pytest.mark.parametrize(
    "layout, direct",
    [("contiguous", True), ("chunked", True), ("userblock", True), ("userblock_chunked", True),
     ("gzip", False), ("two_slice_chunks", False), ("big_endian", False)],
)
def test_direct_reads_match_h5py_in_every_layout(tmp_path, layout, direct):
    path = tmp_path / f"{layout}.h5"
    k = _kspace((5, 64, 40), seed=3)
    _layout_file(path, k, layout)
    study = read_fastmri_h5(path)
    reader = study.slice_reader
    assert reader.direct is direct
    assert reader.slice_shape == (64, 40)
    for i in range(5):
        np.testing.assert_array_equal(study.read_slice(i)["kspace"], k[i])
    np.testing.assert_array_equal(reader.read_block(1, 4), k[1:4])
    out = np.full((2, 64, 40), 7 + 7j, np.complex64)
    assert reader.read_block(3, 5, out=out) is out
    np.testing.assert_array_equal(out, k[3:5])
    with pytest.raises(IndexError):
        reader.read_block(4, 6)
    with pytest.raises(ValueError, match="C-contiguous complex64"):
        reader.read_block(0, 2, out=np.empty((2, 64, 40), np.complex128))
    reader.close()


def test_direct_reads_multicoil_and_after_pickle(tmp_path):
    path = tmp_path / "mc.h5"
    k = _write(path, (3, 4, 32, 24), seed=5)
    study = read_fastmri_h5(path)
    assert study.slice_reader.direct
    np.testing.assert_array_equal(study.slice_reader.read_block(0, 3), k)
    clone = pickle.loads(pickle.dumps(study))
    assert clone.slice_reader._fd is None
    np.testing.assert_array_equal(clone.read_slice(2)["kspace"], k[2])
    clone.slice_reader.close()
    study.slice_reader.close()


def test_direct_reads_name_the_slice_with_nan(tmp_path):
    path = tmp_path / "nanblock.h5"
    k = _kspace((6, 64, 40))
    k[4, 3, 2] = np.nan
    k[4, 5, 2] = np.inf
    write_fastmri_h5(path, k, build_header(HeaderParams(encoded_y=40, n_slices=6)))
    reader = read_fastmri_h5(path).slice_reader
    assert reader.direct
    np.testing.assert_array_equal(reader.read_block(0, 4), k[:4])
    with pytest.raises(StudyReadError) as info:
        reader.read_block(2, 6)
    assert "slice 4: k-space contains 2 NaN/Inf values" in info.value.one_line()
    unchecked = reader.read_block(2, 6, check_finite=False)  # for callers that check the image
    assert int((~np.isfinite(unchecked)).sum()) == 2 and np.isnan(unchecked[2, 3, 2])
    reader.close()


def test_huge_finite_values_are_not_reported_as_nan(tmp_path):
    """The one-pass check sums each slice: an overflowing sum of finite values is no error."""
    path = tmp_path / "huge.h5"
    k = np.full((2, 64, 40), 3e38 + 3e38j, np.complex64)
    _layout_file(path, k, "contiguous")
    reader = read_fastmri_h5(path).slice_reader
    np.testing.assert_array_equal(reader.read_block(0, 2), k)
    reader.close()


def test_direct_read_of_a_truncated_file_is_one_clear_error(tmp_path):
    path = tmp_path / "cut.h5"
    k = _kspace((4, 64, 40))
    _layout_file(path, k, "contiguous")
    reader = read_fastmri_h5(path).slice_reader
    assert reader.direct  # layout taken while the file is whole
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size - 64 * 40 * 8 - 10)
    with pytest.raises(StudyReadError) as info:
        reader.read_block(2, 4)
    msg = info.value.one_line()
    assert str(path) in msg and "slices 2..3" in msg and "truncated" in msg
    reader.close()


@pytest.mark.parametrize("layout", ["contiguous", "chunked", "userblock_chunked"])
def test_direct_layout_check_refuses_wrong_offsets(tmp_path, layout):
    """The layout is checked against h5py at both ends of the dataset: a base offset off by one
    value, a wrong slice stride or a file cut short before the last slice all fail the check
    (and the reader then falls back to h5py)."""
    import os

    from i2m2_med.io.fastmri_h5 import _direct_layout, _DirectLayout

    path = tmp_path / f"{layout}.h5"
    k = _kspace((5, 64, 40), seed=9)
    _layout_file(path, k, layout)
    with h5py.File(path, "r") as f:
        ds = f["kspace"]
        good = _direct_layout(f)
        fd = os.open(path, os.O_RDONLY)
        try:
            assert good is not None and good.verified(fd, ds)
            shifted = _DirectLayout(good.offsets + 8, good.slice_bytes, good.contiguous)
            assert not shifted.verified(fd, ds)
            stride = good.offsets.copy()
            stride[-1] += 40 * 8  # the last slice one line further on
            assert not _DirectLayout(stride, good.slice_bytes, good.contiguous).verified(fd, ds)
            past_end = good.offsets.copy()
            past_end[-1] = path.stat().st_size - 10
            assert not _DirectLayout(past_end, good.slice_bytes, good.contiguous).verified(fd, ds)
        finally:
            os.close(fd)
