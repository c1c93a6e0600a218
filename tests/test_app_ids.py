"""One rule for ids in every output: the app's downloadable study report, ``diagnose`` and
``inspect`` show the same hashed id for the same study -- plain SHA-256 without a site key, keyed
HMAC-SHA256 with ``I2M2_ID_SALT`` -- and no raw id reaches the report."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from app_support import APP_DIR  # noqa: F401  (puts app/ on the path)
from diagnose_inputs import PATIENT_IDS, make_checkpoint, write_dicom_study, write_h5
from viewer import compute, report, sources, ui

from i2m2_med.privacy import ID_SALT_ENV, hash_id
from pipelines import diagnose
from pipelines import inspect as inspect_cli

torch.set_num_threads(1)
H5_PATIENT = PATIENT_IDS[2]
DICOM_PATIENT = PATIENT_IDS[0]
SALT = "site-secret-7f3a"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "model.safetensors", seed=11)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Two visits of one patient exported under the patient's id (the reader's study id is the
    file name, so both studies share it and discovery notes that with the raw id), and a DICOM
    study of another patient."""
    root = tmp_path_factory.mktemp("ids") / "in"
    write_h5(root / "visit1" / f"{H5_PATIENT}.h5", n_slices=2, width=368, patient_id=H5_PATIENT, seed=1)
    write_h5(root / "visit2" / f"{H5_PATIENT}.h5", n_slices=2, width=368, patient_id=H5_PATIENT, seed=2)
    write_dicom_study(root / "dcm", n_slices=2, phase=False, patient=0, seed=3)
    return root


def _diagnose(folder: Path, out: Path, checkpoint: Path) -> list[dict]:
    assert diagnose.run(folder, out, model=str(checkpoint), progress=False, workers=0) == 0
    with open(out / "predictions.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["notes"] = json.loads((out / "studies" / f"{row['study_id']}.json").read_text())["notes"]
    return rows


def _report(ref: sources.StudyRef, lm: compute.LoadedModel) -> tuple[dict, str]:
    """The JSON and HTML report of a study as the study page builds them (identifiers hidden)."""
    pred = compute.prediction(ref.key, lm.key, (), ref, lm)
    summary = ui.study_summary(ref)
    doc = report.report_json(pred, summary, ui.display_id(pred.study_id), show_ids=False, withheld=[])
    return doc, report.report_html(doc)


def _app_reports(folder: Path, checkpoint: Path) -> tuple[list[tuple[dict, str]], tuple[dict, str]]:
    """The reports of the two visits uploaded together as one zip (the upload keeps them together,
    so the shared-id note is there), and of the DICOM study opened from the data folder."""
    lm = compute.load_model(*compute.model_location(checkpoint), False)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for h5 in sorted(folder.glob("visit*/*.h5")):
            zf.write(h5, h5.relative_to(folder).as_posix())
    upload = sources.accept_upload("visits.zip", buf.getvalue(), 64 << 20)
    try:
        visits = [_report(ref, lm) for ref in upload.refs]
    finally:
        upload.close()
    found, problems = sources.scan_folder(folder / "dcm", folder)
    assert not problems and len(found) == 1
    return visits, _report(found[0].ref, lm)


@pytest.mark.parametrize("salt", [None, SALT], ids=["plain", "keyed"])
def test_report_diagnose_and_inspect_give_one_id_per_study(salt, folder, checkpoint, tmp_path, monkeypatch):
    if salt is None:
        monkeypatch.delenv(ID_SALT_ENV, raising=False)
    else:
        monkeypatch.setenv(ID_SALT_ENV, salt)
    plain = hashlib.sha256(H5_PATIENT.encode()).hexdigest()[:16]
    keyed = hmac.new(SALT.encode(), H5_PATIENT.encode(), hashlib.sha256).hexdigest()[:16]
    expected = plain if salt is None else keyed

    rows = _diagnose(folder, tmp_path / "out", checkpoint)
    inspected = inspect_cli.inspect_path(folder)["studies"]
    visit_reports, (dicom_doc, _) = _app_reports(folder, checkpoint)

    # the two visits: diagnose's ids (the second de-duplicated), its hashed patient id and the id in
    # its notes; inspect's hashed patient id; the app report's id and the id in its notes
    visits = [r for r in rows if r["format"] == "fastmri_h5"]
    assert sorted(r["study_id"] for r in visits) == [expected, f"{expected}-2"]
    assert {r["patient_id"] for r in visits} == {expected}
    shared = f"study id {expected} is shared by 2 studies in this folder"
    assert all(shared in r["notes"] for r in visits)
    assert {s["patient"] for s in inspected if s["format"] == "fastmri_h5"} == {expected}
    assert len(visit_reports) == 2
    for doc, html in visit_reports:
        assert doc["study"]["id"] == doc["prediction"]["study_id"] == expected
        assert shared in doc["prediction"]["notes"] and shared in html
        assert H5_PATIENT not in json.dumps(doc) and H5_PATIENT not in html
        assert ("HMAC" in doc["identifiers"]) == (salt is not None)

    # the DICOM study: the same id in diagnose and the app report; the same patient in diagnose and inspect
    (dicom_row,) = [r for r in rows if r["format"] == "dicom"]
    (dicom_seen,) = [s for s in inspected if s["format"] == "dicom"]
    assert dicom_doc["study"]["id"] == dicom_row["study_id"] == dicom_seen["study_id"]  # inspect hashes ids too
    assert dicom_seen["patient"] == dicom_row["patient_id"] == hash_id(DICOM_PATIENT)
    if salt is not None:
        assert dicom_row["patient_id"] != hashlib.sha256(DICOM_PATIENT.encode()).hexdigest()[:16]


def test_the_scrubbing_rule():
    from i2m2_med.privacy import (
        ANON,
        id_replacements,
        is_hashed_id,
        name_parts,
        name_replacements,
        scrub,
    )

    secrets = id_replacements(["PAT-1234", None, "", "ab"]) + name_replacements(name_parts("Doe^Jane"))
    assert secrets == [("PAT-1234", hash_id("PAT-1234")), ("Jane", ANON), ("Doe", ANON)]
    text = scrub("DOE_JANE/pat-1234.h5: Jane's knee (Doesburg) ab", secrets)
    # ids anywhere and in any case; name parts as whole words only; ids too short to scrub are left
    assert text == f"anon_anon/{hash_id('PAT-1234')}.h5: anon's knee (Doesburg) ab"
    # one pass: a short id made of hex digits is not found again inside the hash of a longer one
    long_id = next(f"{i:07d}" for i in range(10**6) if "123" in hash_id(f"{i:07d}"))
    assert scrub(f"{long_id} 123", id_replacements([long_id, "123"])) == f"{hash_id(long_id)} {hash_id('123')}"
    assert is_hashed_id(hash_id("x")) and is_hashed_id(hash_id("x") + "-2")
    assert not is_hashed_id("PAT-1234") and not is_hashed_id(hash_id("x").upper())


@pytest.mark.parametrize("text, expected", [
    ("anon anon 19700101", "anon anon date"),
    ("scan_2021-03-04_T2", "scan_date_T2"),
    ("visit 04.03.2021/series", "visit date/series"),
    ("file1000001.h5", "file1000001.h5"),  # a fastMRI id is not a date
    ("a8c20190705b3e1f", "a8c20190705b3e1f"),  # nor are the digits inside a hash
    ("20191399", "20191399"),  # no 13th month
])
def test_scrub_replaces_calendar_dates_standing_as_words(text: str, expected: str) -> None:
    from i2m2_med.privacy import scrub

    assert scrub(text, []) == expected


def test_the_picker_hides_what_the_folder_names_reveal(tmp_path: Path) -> None:
    """A PACS export named after the patient: with identifiers hidden the picker's label has
    neither the name nor the id (nor a date); with them shown it is the path as it is."""
    from diagnose_inputs import PATIENT_IDS, write_dicom_study

    root = tmp_path / "root"
    write_dicom_study(root / "DOE_JANE_19700101" / PATIENT_IDS[0], n_slices=2, phase=False, patient=0)
    (found,), problems = sources.scan_folder(root, root)
    assert not problems
    assert "DOE_JANE_19700101" in found.ref.label and PATIENT_IDS[0] in found.ref.label
    private = found.private_label
    for secret in ("DOE", "JANE", "19700101", PATIENT_IDS[0]):
        assert secret.lower() not in private.lower(), private
    assert private.startswith("anon_anon_date/") and "DICOM series" in private
