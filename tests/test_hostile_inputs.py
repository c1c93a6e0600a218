"""Hostile input files (fastMRI h5, DICOM, NIfTI): a few bytes must not claim gigabytes or hours,
read outside the file, hang on a FIFO, or stop the good files beside them. Every file here is a
real file made with h5py, pydicom or nibabel."""

from __future__ import annotations

import csv
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest

from i2m2_med.errors import StudyReadError
from i2m2_med.io.fastmri_h5 import read_fastmri_h5, write_fastmri_h5
from i2m2_med.io.ismrmrd import HeaderParams, build_header
from i2m2_med.io.limits import ReadLimits
from pipelines.cli import main


def _declared(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...]) -> Path:
    """A tiny file that declares a huge complex k-space (chunked, nothing written: fill value)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", shape=shape, dtype=np.complex64, chunks=chunks)
    assert path.stat().st_size < 64 * 1024
    return path


def _good(path: Path, slices: int = 2) -> Path:
    rng = np.random.default_rng(0)
    k = (rng.standard_normal((slices, 64, 48)) + 1j * rng.standard_normal((slices, 64, 48))).astype(np.complex64)
    write_fastmri_h5(path, k, header=build_header(HeaderParams()))
    return path


@pytest.mark.parametrize("shape, chunks, what", [
    ((1, 1, 10**9), (1, 1, 1024), "samples along one axis"),
    ((2, 20000, 2, 2), (1, 20000, 2, 2), "coils"),
    ((2, 640, 368, 1), (1, 640, 368, 1), "coils"),
    ((100000, 64, 48), (1, 64, 48), "slices"),
])
def test_declared_memory_and_time_bombs_are_refused_before_allocation(tmp_path: Path, shape, chunks, what) -> None:
    path = _declared(tmp_path / "bomb.h5", shape, chunks)
    with pytest.raises(StudyReadError, match=f"declares .* {what}.*beyond the limit") as err:
        read_fastmri_h5(path)
    assert str(path) in err.value.one_line() and "I2M2_MAX_" in err.value.one_line()


def test_inspect_on_a_bomb_stays_within_a_small_address_space(tmp_path: Path) -> None:
    """`inspect` on an 8 KB file declaring 8 GB of k-space, in a process that may map 3 GiB: the
    reason and exit 1 (an allocation of the declared size would fail or be killed instead)."""
    path = _declared(tmp_path / "bomb.h5", (1, 1, 10**9), (1, 1, 1024))

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))

    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "inspect", str(path)], capture_output=True, text=True,
                          timeout=120, preexec_fn=cap, cwd=Path(__file__).resolve().parents[1])
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    assert "beyond the limit" in text and "Traceback" not in text and "MemoryError" not in text


def test_limits_can_be_raised_for_a_real_acquisition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _declared(tmp_path / "many.h5", (1100, 8, 8), (1, 8, 8))
    with pytest.raises(StudyReadError, match="1,100 slices"):
        read_fastmri_h5(path)
    monkeypatch.setenv("I2M2_MAX_SLICES", "2000")
    assert read_fastmri_h5(path).n_slices == 1100
    monkeypatch.setenv("I2M2_MAX_SLICES", "0")  # nonsense never lowers a limit to nothing
    assert ReadLimits.from_env().slices == ReadLimits().slices


@pytest.mark.parametrize("text", ["inf", "1e400", "-inf", "nan", "1e12"])
def test_impossible_header_numbers_are_the_readers_error(tmp_path: Path, text: str) -> None:
    path = _good(tmp_path / "good.h5")
    header = build_header(HeaderParams()).decode("utf-8")
    start = header.index("<encodedSpace>")
    x_open = header.index("<x>", start) + 3
    x_close = header.index("</x>", x_open)
    with h5py.File(path, "r+") as f:
        del f["ismrmrd_header"]
        f["ismrmrd_header"] = (header[:x_open] + text + header[x_close:]).encode("utf-8")
    with pytest.raises(StudyReadError, match="not a finite number of sensible size"):
        read_fastmri_h5(path)


def test_external_storage_links_and_virtual_datasets_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "secret.bin"
    secret.parent.mkdir()
    secret.write_bytes(os.urandom(2 * 64 * 48 * 8))
    ext = tmp_path / "external.h5"
    with h5py.File(ext, "w") as f:
        f.create_dataset("kspace", shape=(2, 64, 48), dtype=np.complex64, external=[(str(secret), 0, h5py.h5f.UNLIMITED)])
    with pytest.raises(StudyReadError, match="stored in external files: refused"):
        read_fastmri_h5(ext)

    other = _good(tmp_path / "outside" / "other.h5")
    linked = tmp_path / "linked.h5"
    with h5py.File(linked, "w") as f:
        f["kspace"] = h5py.ExternalLink(str(other), "kspace")
    with pytest.raises(StudyReadError, match="link to another file: refused"):
        read_fastmri_h5(linked)

    virtual = tmp_path / "virtual.h5"
    layout = h5py.VirtualLayout(shape=(2, 64, 48), dtype=np.complex64)
    layout[:] = h5py.VirtualSource(str(other), "kspace", shape=(2, 64, 48))
    with h5py.File(virtual, "w") as f:
        f.create_virtual_dataset("kspace", layout)
    with pytest.raises(StudyReadError, match="virtual dataset"):
        read_fastmri_h5(virtual)

    recon = _good(tmp_path / "recon.h5")
    with h5py.File(recon, "r+") as f:
        f["reconstruction_rss"] = h5py.ExternalLink(str(other), "kspace")
    with pytest.raises(StudyReadError, match="'reconstruction_rss' is a link to another file"):
        read_fastmri_h5(recon)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    with pytest.raises(StudyReadError, match="not a regular file"):
        read_fastmri_h5(fifo)


@pytest.mark.slow
def test_links_leaving_the_data_folder_are_listed_not_read(tmp_path: Path) -> None:
    """A linked file whose target lies outside the folder, and a linked folder, are not read;
    a link to a file inside the folder is read like the file."""
    from i2m2_med.io.discover import LINK_FOLDER, LINK_OUTSIDE, discover

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    secret = _good(elsewhere / "secret.h5")
    data = tmp_path / "in"
    (data / "sub").mkdir(parents=True)
    good = _good(data / "good.h5")
    (data / "out.h5").symlink_to(secret)
    (data / "sub" / "again.h5").symlink_to(good)
    (data / "linked").symlink_to(elsewhere, target_is_directory=True)
    (data / "dangling.h5").symlink_to(tmp_path / "gone.h5")
    found = discover(data)
    assert sorted(Path(s.source).name for s in found.studies) == ["again.h5", "good.h5"]
    assert {p.name: why for p, why in found.links} == {
        "out.h5": LINK_OUTSIDE, "linked": LINK_FOLDER, "dangling.h5": LINK_OUTSIDE}
    assert not found.problems


def test_nifti_whose_phase_is_a_link_outside_is_a_problem(tmp_path: Path) -> None:
    import nibabel as nib

    from i2m2_med.io.discover import discover

    vol = nib.Nifti1Image(np.random.default_rng(0).random((16, 16, 3)).astype(np.float32), np.eye(4))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    nib.save(vol, elsewhere / "knee_phase.nii.gz")
    data = tmp_path / "in"
    data.mkdir()
    nib.save(vol, data / "knee.nii.gz")
    (data / "knee_phase.nii.gz").symlink_to(elsewhere / "knee_phase.nii.gz")
    found = discover(data)
    assert not found.studies
    (path, reason), = found.problems
    assert path.name == "knee.nii.gz" and "knee_phase.nii.gz is a symbolic link to a file outside" in reason


def test_diagnose_skips_a_link_leaving_the_folder_with_its_reason(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    elsewhere = tmp_path / "DOE_JANE"
    elsewhere.mkdir()
    secret = _good(elsewhere / "secret.h5", slices=3)
    data = tmp_path / "in"
    data.mkdir()
    _good(data / "good.h5", slices=3)
    (data / "escape.h5").symlink_to(secret)
    out = tmp_path / "out"
    rc = main(["diagnose", str(data), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0, err  # a skip is an answer, not a failure
    with (out / "predictions.csv").open(encoding="utf-8", newline="") as fh:
        rows = {r["source"]: r for r in csv.DictReader(fh)}
    assert rows["escape.h5"]["status"] == "skipped"
    assert rows["escape.h5"]["error"] == "a symbolic link to a file outside the folder: not read"
    assert rows["escape.h5"]["p_acl"] == "" and rows["good.h5"]["status"] in ("ok", "out_of_scope")
    assert "skipped escape.h5: a symbolic link" in err and "DOE_JANE" not in err
    assert "DOE_JANE" not in (out / "predictions.csv").read_text(encoding="utf-8")


def test_memory_budget_refuses_a_slice_that_would_pass_it_and_holds(tmp_path: Path) -> None:
    """Under `--memory-mb 1600` with 2 reader threads a slice may take about 30-55 MB (what the
    process holds after loading the model varies): a 64-coil file declaring 120 MB slices is
    refused by the budget, an 8-coil file of 15 MB slices is read, and the run's peak resident
    memory stays under the budget (the peak of the process's own memory, VmHWM: ``ru_maxrss``
    would report the parent test process's size, which Linux carries across exec)."""
    data = tmp_path / "in"
    data.mkdir()
    _declared(data / "wide.h5", (2, 64, 640, 368), (1, 1, 640, 368))
    rng = np.random.default_rng(0)
    k = (rng.standard_normal((3, 8, 640, 368), dtype=np.float32)
         + 1j * rng.standard_normal((3, 8, 640, 368), dtype=np.float32)).astype(np.complex64)
    write_fastmri_h5(data / "multicoil.h5", k, header=build_header(HeaderParams()))
    out = tmp_path / "out"
    code = ("import sys\nfrom pipelines.cli import main\n"
            f"rc = main(['diagnose', {str(data)!r}, '--out', {str(out)!r}, '--no-progress', '--memory-mb', '1600'])\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
            "print('peak_mb', int(hwm) / 1024, file=sys.stderr)\n"
            "sys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2, proc.stderr  # the refused file is an error row; the run went on
    assert "Traceback" not in proc.stderr
    peak = float(proc.stderr.rsplit("peak_mb", 1)[1].split()[0])
    assert peak < 1600, proc.stderr
    with (out / "predictions.csv").open(encoding="utf-8", newline="") as fh:
        rows = {r["source"]: r for r in csv.DictReader(fh)}
    assert rows["wide.h5"]["status"] == "error"
    assert "under the memory budget of 1,600 MB" in rows["wide.h5"]["error"]
    assert rows["multicoil.h5"]["status"] in ("ok", "out_of_scope")


def test_a_budget_too_small_to_read_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from i2m2_med.errors import UsageError
    from i2m2_med.io.limits import WORK_FACTOR, WORK_RESERVE_MB, slice_allowance

    assert slice_allowance(4096, 1000, 2) == int((4096 - 1000 - WORK_RESERVE_MB) * 2**20 / (2 * WORK_FACTOR))
    with pytest.raises(UsageError, match="leaves no room to read"):
        slice_allowance(1200, 1000, 2)
    data = tmp_path / "in"
    data.mkdir()
    _good(data / "good.h5")
    rc = main(["diagnose", str(data), "--out", str(tmp_path / "out"), "--no-progress", "--memory-mb", "300"])
    err = capsys.readouterr().err
    assert rc == 1 and "leaves no room to read" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_diagnose_keeps_the_good_file_beside_the_bombs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "in"
    data.mkdir()
    _declared(data / "bomb.h5", (1, 1, 10**9), (1, 1, 1024))
    _declared(data / "coils.h5", (2, 20000, 2, 2), (1, 20000, 2, 2))
    good = _good(data / "good.h5", slices=3)
    header = build_header(HeaderParams()).decode("utf-8").replace("<x>640</x>", "<x>inf</x>", 1)
    bad_header = _good(data / "badheader.h5")
    with h5py.File(bad_header, "r+") as f:
        del f["ismrmrd_header"]
        f["ismrmrd_header"] = header.encode("utf-8")
    out = tmp_path / "out"
    rc = main(["diagnose", str(data), "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 2, captured.err  # some studies failed, the run went on
    assert "Traceback" not in captured.err
    with (out / "predictions.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    # the good study is answered (a 3-slice toy volume may well be out of the model's scope: an
    # answer, not a failure) and the three others are refused
    assert len(rows) == 4 and sorted(r["status"] for r in rows).count("error") == 3
    assert [r["status"] for r in rows if r["status"] != "error"] in (["ok"], ["out_of_scope"])
    failed = " ".join(" ".join(r.values()) for r in rows if r["status"] == "error")
    assert failed.count("beyond the limit") == 2 and "not a finite number" in failed
    assert good.exists()


def test_dicom_frame_bomb_and_nifti_slice_bomb_are_refused_from_their_headers(tmp_path: Path) -> None:
    """A DICOM claiming 5 x 10^7 encapsulated frames and a 2 KB .nii.gz claiming 30,000 slices are
    refused from their headers in one line, without looping over what they claim."""
    import time

    import nibabel as nib
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, MRImageStorage, generate_uid

    from i2m2_med.io.dicom import read_dicom_series
    from i2m2_med.io.nifti import read_nifti

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.StudyInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.Rows, ds.Columns, ds.NumberOfFrames = "MR", 64, 64, 50_000_000
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 8, 8, 7, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
    folder = tmp_path / "dicom"
    folder.mkdir()
    bomb = folder / "frames.dcm"
    ds.save_as(bomb, enforce_file_format=True)
    started = time.perf_counter()
    with pytest.raises(StudyReadError, match="50,000,000 slices, beyond the limit"):
        read_dicom_series([bomb])
    assert time.perf_counter() - started < 10

    header = nib.Nifti1Header()
    header.set_data_shape((64, 64, 30000))
    header.set_data_dtype(np.uint8)
    nii = tmp_path / "slices.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((1, 1, 1), np.uint8), np.eye(4)), nii)  # a real file, then its header claims more
    img = nib.load(str(nii))
    img.header.set_data_shape((64, 64, 30000))
    with open(nii, "wb") as fh:
        import gzip

        with gzip.GzipFile(fileobj=fh, mode="wb") as gz:
            gz.write(img.header.binaryblock + b"\x00" * 4)
    assert nii.stat().st_size < 4096
    with pytest.raises(StudyReadError, match="30,000 slices, beyond the limit"):
        read_nifti(nii)


def test_a_dicom_image_cut_short_takes_its_study_out_whole(tmp_path: Path) -> None:
    """An image cut before Rows used to be skipped without a word: the magnitude series was scored
    on 3 of its 4 slices and its phase series became a study of its own. Now the pair is left out
    as one problem naming the lost image, and the cut file is a problem of its own."""
    from diagnose_inputs import write_dicom_study

    from i2m2_med.io.dicom import collect_dicom

    folder = tmp_path / "exam"
    write_dicom_study(folder, n_slices=4, phase=True, patient=1)
    other = tmp_path / "other"
    write_dicom_study(other, n_slices=3, phase=True, patient=0)  # an intact study beside it
    cut = folder / "magnitude" / "im002.dcm"
    data = cut.read_bytes()
    cut.write_bytes(data[: data.index(b"\x28\x00\x10\x00")])  # just before (0028,0010) Rows
    files = sorted(p for p in tmp_path.rglob("*.dcm"))
    scan = collect_dicom(files)
    assert [s.n_slices for s in scan.studies] == [3]  # only the intact study
    assert scan.studies[0].source.is_relative_to(other)
    reasons = dict((str(p), r) for p, r in scan.problems)
    assert "cut short" in reasons[str(cut)]
    series = [r for p, r in scan.problems if "left out whole" in r]
    assert len(series) == 1 and "1 of its 4 images unusable" in series[0] and "phase series" in series[0]
    assert not scan.skipped


def test_a_series_missing_an_image_says_how_many_slices_it_lacks(tmp_path: Path) -> None:
    """An image that is simply gone (deleted, or garbage that names no series) leaves a gap in
    the slice positions: the study is still read, with a note and a count of the missing
    slices, which diagnose's JSON carries."""
    from diagnose_inputs import write_dicom_study

    from i2m2_med.io.dicom import collect_dicom, missing_positions

    assert missing_positions([0.0, 3.0, 6.0, 9.0]) == 0
    assert missing_positions([0.0, 3.0, 9.0, 12.0, 21.0]) == 3
    assert missing_positions([0.0, 3.0, 7.4, 10.4]) == 0  # irregular, not a whole number of steps
    assert missing_positions([0.0, 3.0]) == 0
    folder = tmp_path / "exam"
    write_dicom_study(folder, n_slices=6, phase=False)
    (folder / "magnitude" / "im003.dcm").write_bytes(b"not a DICOM file at all")
    (folder / "magnitude" / "im004.dcm").unlink()
    scan = collect_dicom(sorted(folder.rglob("*.dcm")))
    study, = scan.studies
    assert study.n_slices == 4 and study.tags["missing_slices"] == 2
    assert any("2 slices missing from the series" in n for n in study.notes)
    intact = tmp_path / "intact"
    write_dicom_study(intact, n_slices=6, phase=False)
    whole, = collect_dicom(sorted(intact.rglob("*.dcm"))).studies
    assert "missing_slices" not in whole.tags and not any("missing from the series" in n for n in whole.notes)
    out = tmp_path / "out"
    main(["diagnose", str(folder), "--out", str(out), "--no-progress"])
    records = [json.loads(f.read_text(encoding="utf-8")) for f in (out / "studies").glob("*.json")]
    assert sorted(r["status"] for r in records)[0] == "error"  # the garbage file's own row
    record, = [r for r in records if r["status"] != "error"]
    if record["status"] == "ok":  # random pixels may be out of the model's scope: then no count is reported
        assert record["missing_slices"] == 2
    assert any("2 slices missing from the series" in n for n in record["notes"])
