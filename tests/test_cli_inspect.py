"""`i2m2-med inspect`: tables and JSON with the same content, hashed patient ids, labels,
clinical rows, one-line errors and exit codes (0 all read, 1 nothing / missing path, 2 partial)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

import numpy as np
import pytest

from i2m2_med.heads import HEADS
from i2m2_med.io.fastmri_h5 import write_fastmri_h5
from i2m2_med.io.ismrmrd import HeaderParams, build_header
from pipelines.cli import main

REPO = Path(__file__).resolve().parents[1]


def _sha16(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _h5(path: Path, width: int = 372, slices: int = 4, patient: str | None = "pat-0042") -> None:
    k = np.full((slices, 640, width), 1 + 1j, np.complex64)
    attrs = {"acquisition": "CORPDFS_FBK", "max": 0.5, "norm": 1.5}
    if patient:
        attrs["patient_id"] = patient
    write_fastmri_h5(path, k, build_header(HeaderParams(encoded_y=width, n_slices=slices)), attrs=attrs)


def _dicom(path: Path) -> None:
    import pydicom.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = pydicom.data.get_testdata_file("MR_small.dcm")
    ds = pydicom.dcmread(src)
    ds.PatientName = "Rossi^Maria"
    ds.PatientID = "HOSP-778899"
    ds.PatientAge = "061Y"
    ds.PatientSize = 1.70
    ds.save_as(path)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    _h5(root / "file1000001.h5")
    _dicom(root / "IM0001")
    return root


def _json(capsys, *args: str) -> tuple[int, dict, str]:
    rc = main(["inspect", *args, "--json"])
    out = capsys.readouterr()
    return rc, json.loads(out.out), out.err


def test_json_summary_of_a_folder(folder, capsys):
    rc, report, err = _json(capsys, str(folder))
    assert rc == 0 and err == ""
    assert report["summary"] == {"studies": 2, "problems": 0, "skipped": 0}
    dcm, h5 = report["studies"]
    assert h5["study_id"] == _sha16("file1000001") and h5["format"] == "fastmri_h5" and h5["domain"] == "kspace"
    assert h5["source"] == "file1000001.h5"  # relative to the inspected folder
    assert h5["slices"] == 4 and h5["kspace_shape"] == [640, 372] and h5["n_coils"] == 1
    assert h5["checked_slice"] == 2
    assert h5["acquisition"]["acquisition"] == "CORPDFS_FBK" and h5["acquisition"]["fat_sat"] is True
    assert h5["missing"] == {"modalities": [], "tags": ["age_years", "sex", "weight_kg", "bmi"]}
    assert h5["patient"] == _sha16("pat-0042")
    assert "W=372 wider than the 320 crop: centre-cropped" in h5["notes"]
    assert h5["labels"] is None
    assert dcm["format"] == "dicom" and dcm["image_shape"] == [64, 64]
    assert dcm["modalities"] == ["magnitude"] and dcm["missing"]["modalities"] == ["phase"]
    assert dcm["tags"]["age_years"] == 61.0 and dcm["tags"]["bmi"] == pytest.approx(80 / 1.7**2)
    assert dcm["patient"] == _sha16("HOSP-778899")
    tab = dcm["tabular"]
    if tab["available"]:
        assert len(tab["names"]) == len(tab["values"]) > 0 and all(np.isfinite(tab["values"]))
    else:
        assert tab["raw_tags"]["age_years"] == 61.0 and tab["raw_tags"]["sex"] == "F"


def test_no_patient_names_or_raw_ids_in_any_output(folder, capsys):
    for args in ([str(folder)], [str(folder), "--json"]):
        assert main(["inspect", *args]) == 0
        out = capsys.readouterr().out
        for secret in ("Rossi", "Maria", "HOSP-778899", "pat-0042", str(folder)):
            assert secret not in out  # nor the absolute path of the folder
        assert _sha16("HOSP-778899") in out and _sha16("pat-0042") in out


def test_table_shows_the_json_content(folder, capsys):
    _, report, _ = _json(capsys, str(folder))
    assert main(["inspect", str(folder)]) == 0
    text = capsys.readouterr().out
    assert "2 studies in" in text
    for s in report["studies"]:
        for value in (s["study_id"], s["format"], s["patient"], *s["notes"], *s["missing"]["tags"]):
            assert value in text, value
    assert "k-space 640x372" in text and "image 64x64" in text


def test_partial_failure_exit_2(folder, capsys):
    (folder / "broken.h5").write_text("not hdf5")
    nan = np.ones((3, 640, 320), np.complex64)
    nan[1, 0, 0] = np.nan  # the middle slice is checked
    write_fastmri_h5(folder / "nan.h5", nan, build_header(HeaderParams(encoded_y=320, n_slices=3)))
    rc, report, _ = _json(capsys, str(folder))
    assert rc == 2
    assert [s["study_id"] for s in report["studies"]] == [report["studies"][0]["study_id"], _sha16("file1000001")]
    reasons = {Path(p["path"]).name: p["reason"] for p in report["problems"]}
    assert "not an HDF5 file" in reasons["broken.h5"]
    assert "slice 1" in reasons["nan.h5"] and "NaN/Inf" in reasons["nan.h5"]
    assert main(["inspect", str(folder)]) == 2
    text = capsys.readouterr().out
    assert "2 file(s) could not be read" in text and "broken.h5" in text


def test_nothing_readable_exit_1(tmp_path, capsys):
    (tmp_path / "a.h5").write_text("x")
    rc, report, _ = _json(capsys, str(tmp_path))
    assert rc == 1 and report["studies"] == [] and len(report["problems"]) == 1
    (tmp_path / "a.h5").unlink()
    assert main(["inspect", str(tmp_path)]) == 1
    assert "no readable study found" in capsys.readouterr().out


def test_missing_path_one_line_error(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["inspect", str(missing)]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.strip() == f"error: {missing}: no such file or folder"


def test_single_file(folder, capsys):
    rc, report, _ = _json(capsys, str(folder / "file1000001.h5"))
    assert rc == 0 and [s["study_id"] for s in report["studies"]] == [_sha16("file1000001")]
    assert report["studies"][0]["source"] == "file1000001.h5"
    rc, report, _ = _json(capsys, str(folder / "file1000001.h5"), "--keep-ids")
    assert rc == 0 and [(s["study_id"], s["patient"]) for s in report["studies"]] == [("file1000001", "pat-0042")]


def test_labels_from_fastmri_plus(folder, tmp_path, capsys):
    csv = tmp_path / "knee.csv"
    csv.write_text(
        "file,slice,study_level,x,y,width,height,label\n"
        "file1000001,1,No,10,20,30,40,ACL High Grade Sprain\n"
        "file1000001,3,No,10,20,30,40,Meniscus Tear\n"
        "file1000001,3,No,50,60,10,10,Joint Effusion \n"
    )
    (tmp_path / "knee_file_list.csv").write_text("file1000001\nfile1000002\n")
    rc, report, _ = _json(capsys, str(folder), "--annotations", str(csv))
    assert rc == 0
    dcm, h5 = report["studies"]
    assert dcm["labels"] == {"known": False, "reason": "not among the annotated volumes"}
    labels = h5["labels"]
    assert labels["known"] is True
    assert labels["volume"] == {"acl": True, "mtear": True, "cart": False, "abnormal": True}
    assert labels["positive_slices"] == {"acl": [1], "mtear": [3], "cart": [], "abnormal": [3]}
    assert list(labels["volume"]) == list(HEADS)
    main(["inspect", str(folder), "--annotations", str(csv)])
    assert "acl: positive (slices 1)" in capsys.readouterr().out


def test_bad_annotations_one_line_error(folder, tmp_path, capsys):
    assert main(["inspect", str(folder), "--annotations", str(tmp_path / "absent.csv")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "absent.csv" in err and "Traceback" not in err and err.count("\n") == 1


def test_clinical_rows(folder, tmp_path, capsys):
    clinical = tmp_path / "clinical.csv"
    clinical.write_text("study_id,age,sex,bmi\nfile1000001,54,F,27.5\n")
    rc, report, _ = _json(capsys, str(folder), "--clinical", str(clinical))
    assert rc == 0
    dcm, h5 = report["studies"]
    assert h5["clinical_row"] is True and "clinical" not in h5["missing"]
    assert dcm["clinical_row"] is False and dcm["missing"]["clinical"] is True
    if not h5["tabular"]["available"]:
        assert h5["tabular"]["clinical"] == {"age": 54, "sex": "F", "bmi": 27.5}


def test_clinical_rows_are_read_and_matched_as_diagnose_does(folder, tmp_path, capsys):
    """The table is read by the library's reader and a row is found by study id, file name or
    patient id -- the DICOM study's row is keyed by its patient id."""
    clinical = tmp_path / "clinical.csv"
    clinical.write_text("study_id,age_years,sex\nfile1000001.h5,54,F\nHOSP-778899,70,M\n")
    rc, report, _ = _json(capsys, str(folder), "--clinical", str(clinical))
    assert rc == 0
    dcm, h5 = report["studies"]
    assert h5["clinical_row"] is True and dcm["clinical_row"] is True
    values = dict(zip(dcm["tabular"]["names"], dcm["tabular"]["values"]))
    assert values["age_years"] == pytest.approx(0.70) and values["sex_male"] == 1.0  # the header says 61, F
    text = main(["inspect", str(folder), "--clinical", str(clinical)])
    assert text == 0 and "HOSP-778899" not in capsys.readouterr().out
    for content, reason in (("id,age_years\nx,1\n", "no id column 'study_id'"), ("study_id,age_years\n", "no rows"),
                            ("study_id,age_years\na,1\na,2\n", "appears more than once")):
        clinical.write_text(content)
        assert main(["inspect", str(folder), "--clinical", str(clinical)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and reason in err and err.count("\n") == 1 and "Traceback" not in err


def _console_script() -> str:
    found = shutil.which("i2m2-med") or str(Path(sysconfig.get_path("scripts")) / "i2m2-med")
    if not Path(found).exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", str(REPO)], check=True)
    return found


def test_console_script_subprocess(folder, tmp_path):
    exe = _console_script()
    env = {**os.environ, "COLUMNS": "200"}
    ok = subprocess.run([exe, "inspect", str(folder), "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["summary"]["studies"] == 2
    missing = subprocess.run([exe, "inspect", str(tmp_path / "nope")], capture_output=True, text=True, env=env,
                             timeout=120)
    assert missing.returncode == 1
    assert "Traceback" not in missing.stderr
    assert missing.stderr.strip() == f"error: {tmp_path / 'nope'}: no such file or folder"
    (folder / "junk.dcm").write_text("not dicom")
    partial = subprocess.run([exe, "inspect", str(folder)], capture_output=True, text=True, env=env, timeout=120)
    assert partial.returncode == 2 and "junk.dcm" in partial.stdout and "not a DICOM file" in partial.stdout


def test_a_cohort_folder_shows_its_own_labels_and_clinical_rows(tiny_cohort, capsys):
    """A cohort folder's annotations/knee.csv and tabular.csv are read by default, as train and
    diagnose read them; tags the clinical row provides are not listed as missing."""
    rc, report, _ = _json(capsys, str(tiny_cohort))
    assert rc == 0
    assert report["annotations"] == "annotations/knee.csv" and report["clinical"] == "tabular.csv"
    studies = report["studies"]
    assert len(studies) == 6 and all(s["labels"]["known"] for s in studies)
    assert any(any(s["labels"]["volume"].values()) for s in studies)
    for s in studies:
        assert s["clinical_row"] is True
        assert not {"age_years", "sex", "bmi", "weight_kg"} & set(s["missing"]["tags"]), s["missing"]
        values = dict(zip(s["tabular"]["names"], s["tabular"]["values"]))
        assert values["age_years_missing"] == 0.0 and values["sex_male_missing"] == 0.0
    main(["inspect", str(tiny_cohort)])
    out = capsys.readouterr().out
    assert "positive (slices" in out and "missing tags" in out
    many = [s for s in studies if len(s["labels"]["positive_slices"]["mtear"]) > 1]
    if many:  # slice numbers are listed, not drawn as a shape ("3x4x5")
        assert "mtear: positive (slices " + ", ".join(str(i) for i in many[0]["labels"]["positive_slices"]["mtear"]) in out
    # naming other files still wins over the folder's own
    rc, report, _ = _json(capsys, str(tiny_cohort), "--annotations", str(tiny_cohort / "annotations" / "knee.csv"))
    assert rc == 0 and all(s["labels"]["known"] for s in report["studies"])
