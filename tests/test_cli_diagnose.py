"""`i2m2-med diagnose` end to end on a mixed folder: one row per study with the right status,
the JSON identity from the written files, DICOM SR, de-identification, resume, an interrupted
run completed by --resume, atomic outputs, one-line errors and exit codes, and DDP with 2 CPU
processes."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from diagnose_inputs import (
    PATIENT_IDS,
    PATIENT_NAME_PARTS,
    make_checkpoint,
    mixed_folder,
    write_broken,
    write_dicom_study,
    write_h5,
    write_nifti,
)

from i2m2_med.heads import HEADS
from i2m2_med.io.dicom import read_dicom_series
from pipelines import diagnose
from pipelines.cli import main

REPO = Path(__file__).resolve().parents[1]
LEADING = ["study_id", "source", "format", "status", "error", "n_slices", "p_acl", "p_mtear", "p_cart", "p_abnormal"]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "predictions.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _header(out: Path) -> list[str]:
    with open(out / "predictions.csv", newline="", encoding="utf-8") as fh:
        return next(csv.reader(fh))


def _json(out: Path, study_id: str) -> dict:
    return json.loads((out / "studies" / f"{study_id}.json").read_text())


def _all_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file())


def _diagnose(capsys, *args: str) -> tuple[int, str]:
    rc = main(["diagnose", *map(str, args)])
    err = capsys.readouterr().err
    return rc, err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("run") / "model.safetensors", seed=3)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mixed")
    mixed_folder(root)
    write_broken(root / "broken")
    return root


@pytest.fixture(scope="module")
def mixed_run(mixed, checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "diag"
    rc = main(["diagnose", str(mixed), "--out", str(out), "--model", str(checkpoint.parent), "--workers", "2"])
    return rc, out


def test_mixed_folder_rows_statuses_and_columns(mixed_run, mixed):
    rc, out = mixed_run
    assert rc == 2  # some studies failed
    header = _header(out)
    assert header[:10] == LEADING
    terms = ["magnitude", "phase", "tabular", "joint"]
    assert header[10:10 + 16] == [f"contrib_{t}_{h}" for t in terms for h in HEADS]
    rows = {r["source"]: r for r in _rows(out)}
    ok = {
        "h5/knee_single.h5": ("fastmri_h5", 3),
        "h5/knee_multi.h5": ("fastmri_h5", 2),
        # a NIfTI name is its study id (converters build it from the patient's name and dates): hashed
        f"nifti/{_sha('knee_vol')}.nii.gz": ("nifti", 3),
        "dicom/with_phase/magnitude": ("dicom", 3),
        "dicom/magnitude_only/magnitude": ("dicom", 3),
    }
    for source, (fmt, n) in ok.items():
        r = rows.pop(source)
        assert (r["status"], r["format"], int(r["n_slices"]), r["error"]) == ("ok", fmt, n, ""), r
        for h in HEADS:
            assert 0.0 <= float(r[f"p_{h}"]) <= 1.0
    # every broken file is its own error row with a one-line reason
    errors = {
        "broken/truncated.h5": "truncated",
        "broken/notes.h5": "HDF5",
        "broken/nopixels.dcm": "pixel data",
        "broken/garbage.nii.gz": "",
        "broken/nan.h5": "NaN",
    }
    for source, fragment in errors.items():
        r = rows.pop(source)
        assert r["status"] == "error" and r["error"] and "\n" not in r["error"], r
        assert fragment.lower() in r["error"].lower(), r["error"]
        assert all(r[f"p_{h}"] == "" for h in HEADS)
    assert rows == {}, f"unexpected rows: {sorted(rows)}"
    assert not any(p.name.endswith(".part") for p in _all_files(out))
    for path in [out / "predictions.csv", *(out / "studies").glob("*.json")]:
        assert str(mixed) not in path.read_text(), f"absolute input path in {path.name}"


def test_missing_phase_is_shown_and_the_product_computed_without_it(mixed_run):
    _, out = mixed_run
    rows = {r["source"]: r for r in _rows(out)}
    mag = rows["dicom/magnitude_only/magnitude"]
    both = rows["dicom/with_phase/magnitude"]
    assert mag["missing_modalities"] == "phase" and mag["dropped_experts"] == "phase;joint"
    assert all(mag[f"contrib_phase_{h}"] == "" and mag[f"contrib_joint_{h}"] == "" for h in HEADS)
    assert all(mag[f"contrib_magnitude_{h}"] != "" for h in HEADS)
    assert both["missing_modalities"] == "" and all(both[f"contrib_joint_{h}"] != "" for h in HEADS)
    doc = _json(out, mag["study_id"])
    assert doc["missing_modalities"] == ["phase"] and doc["dropped_experts"] == ["phase", "joint"]
    assert set(doc["slices"][0]["logp"]) == {"magnitude", "tabular"}


def test_json_identity_from_the_written_files(mixed_run, checkpoint):
    from i2m2_med.checkpoint import read_checkpoint_meta

    _, out = mixed_run
    meta = read_checkpoint_meta(checkpoint)
    checked = 0
    for r in _rows(out):
        doc = _json(out, r["study_id"])
        assert doc["study_id"] == r["study_id"] and doc["source"] == r["source"] and doc["format"] == r["format"]
        assert doc["model"]["fingerprint"] == meta.fingerprint and doc["model"]["variant"] == "i2m2"
        if r["status"] != "ok":
            assert doc["status"] == "error" and doc["error"] == r["error"]
            continue
        assert doc["heads"] == list(HEADS)
        assert len(doc["slices"]) == int(r["n_slices"])
        for s in doc["slices"]:
            for h in HEADS:
                lp0 = sum(s["logp"][t][h][0] for t in s["logp"])
                lp1 = sum(s["logp"][t][h][1] for t in s["logp"])
                p1 = np.exp(lp1) / (np.exp(lp0) + np.exp(lp1))
                assert abs(p1 - s["p"][h]) < 1e-5
                checked += 1
        # study level from the slices by the documented rule (mean of the top 3)
        for h in HEADS:
            ps = sorted((s["p"][h] for s in doc["slices"]), reverse=True)
            assert doc["study"]["p"][h] == pytest.approx(np.mean(ps[:3]), rel=1e-6)
            assert float(r[f"p_{h}"]) == pytest.approx(doc["study"]["p"][h], rel=1e-12)
            top = doc["study"]["top_slice"][h]
            assert doc["slices"][top]["p"][h] == max(ps)
            assert int(r[f"top_slice_{h}"]) == top
            contrib = doc["study"]["contributions"]
            for t in contrib:
                assert float(r[f"contrib_{t}_{h}"]) == pytest.approx(contrib[t][h])
    assert checked == 4 * (3 + 2 + 3 + 3 + 3)


def test_dicom_sr_references_the_source_series(mixed_run, mixed):
    import highdicom as hd

    _, out = mixed_run
    rows = {r["source"]: r for r in _rows(out)}
    srs = sorted((out / "sr").glob("*.dcm"))
    assert len(srs) == 2  # one per DICOM study, none for h5 / NIfTI
    for folder, series in (("with_phase", ("magnitude", "phase")), ("magnitude_only", ("magnitude",))):
        row = rows[f"dicom/{folder}/magnitude"]
        doc = _json(out, row["study_id"])
        assert doc["sr"] == f"sr/{row['study_id']}.dcm"
        sr = pydicom.dcmread(out / doc["sr"])
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
        assert str(sr.PatientName) == "" and sr.PatientBirthDate == ""
        assert sr.PatientID == _sha(PATIENT_IDS[0 if folder == "with_phase" else 1])
        src_series = {}
        for s in series:
            first = pydicom.dcmread(mixed / "dicom" / folder / s / "im000.dcm", stop_before_pixels=True)
            src_series[s] = first.SeriesInstanceUID
            assert sr.StudyInstanceUID == first.StudyInstanceUID
        ref = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        assert {item.SeriesInstanceUID for item in ref} == set(src_series.values())
        assert sum(len(item.ReferencedSOPSequence) for item in ref) == 3 * len(series)
        items = list(_walk(sr.ContentSequence))
        texts = [item.TextValue for item in items if item.ValueType == "TEXT"]
        assert any(t.startswith("RESEARCH USE ONLY") for t in texts)
        assert ("missing modalities: phase" in " ".join(texts)) == (folder == "magnitude_only")
        assert "RESEARCH USE ONLY" in sr.SeriesDescription
        # the probabilities are the study-level p of the CSV, one Probability item per head
        values = sorted(float(x.MeasuredValueSequence[0].NumericValue) for x in items if x.ValueType == "NUM")
        assert values == pytest.approx(sorted(float(row[f"p_{h}"]) for h in HEADS), abs=1e-6)
        # the top slice of each head is referenced as the source image of its measurement group
        (study,) = read_dicom_series(mixed / "dicom" / folder)
        mag_uids = [pydicom.dcmread(entry[0], stop_before_pixels=True).SOPInstanceUID
                    for entry in study.slice_reader.magnitude]  # in the reader's slice order
        refs = [x.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for x in items if x.ValueType == "IMAGE"]
        assert refs == [mag_uids[int(row[f"top_slice_{h}"])] for h in HEADS]
        # highdicom reads it back as a Comprehensive SR
        parsed = hd.sr.srread(out / doc["sr"])
        assert isinstance(parsed, hd.sr.ComprehensiveSR)


def _walk(seq):
    for item in seq:
        yield item
        if "ContentSequence" in item:
            yield from _walk(item.ContentSequence)


def test_no_patient_name_or_raw_id_in_any_output(mixed_run):
    _, out = mixed_run
    files = _all_files(out)
    assert len(files) >= 12
    for path in files:
        data = path.read_bytes()
        for secret in (*PATIENT_NAME_PARTS, *PATIENT_IDS):
            assert secret.encode() not in data, f"{secret} found in {path.relative_to(out)}"
    rows = _rows(out)
    # study ids are sha256 hashes of the readers' ids; patient ids hashed
    by_source = {r["source"]: r for r in rows}
    assert by_source["h5/knee_single.h5"]["study_id"] == _sha("knee_single")
    assert by_source["h5/knee_single.h5"]["patient_id"] == _sha(PATIENT_IDS[2])
    assert by_source[f"nifti/{_sha('knee_vol')}.nii.gz"]["study_id"] == _sha("knee_vol")


def test_patient_name_and_id_in_folder_names_are_removed(capsys, tmp_path, checkpoint):
    """PACS exports often name folders after the patient: the name parts and the id are replaced
    in every path and message of the outputs."""
    src = tmp_path / "in"
    write_dicom_study(src / "DOE_JANE" / PATIENT_IDS[0], n_slices=2, phase=False, patient=0)
    write_h5(src / f"{PATIENT_IDS[2]}.h5", n_slices=2, width=368, patient_id=PATIENT_IDS[2])
    out = tmp_path / "out"
    rc, err = _diagnose(capsys, src, "--out", out, "--model", checkpoint, "--no-progress")
    assert rc == 0, err
    sources = sorted(r["source"] for r in _rows(out))
    assert sources == sorted([f"anon_anon/{_sha(PATIENT_IDS[0])}/magnitude", f"{_sha(PATIENT_IDS[2])}.h5"])
    for path in _all_files(out):
        for secret in (*PATIENT_NAME_PARTS, *PATIENT_IDS):
            assert secret.encode() not in path.read_bytes(), f"{secret} in {path.name}"


def test_keep_ids(capsys, tmp_path, checkpoint):
    src = tmp_path / "in"
    write_h5(src / "knee_kept.h5", n_slices=2, width=368, patient_id=PATIENT_IDS[2])
    write_dicom_study(src / "dcm", n_slices=2, phase=False, patient=0)
    out = tmp_path / "out"
    rc, err = _diagnose(capsys, src, "--out", out, "--model", checkpoint, "--keep-ids", "--no-progress")
    assert rc == 0, err
    rows = {r["source"]: r for r in _rows(out)}
    assert rows["knee_kept.h5"]["study_id"] == "knee_kept"
    assert rows["knee_kept.h5"]["patient_id"] == PATIENT_IDS[2]
    assert rows["dcm/magnitude"]["study_id"].startswith("dicom-")
    sr = pydicom.dcmread(next((out / "sr").glob("*.dcm")))
    assert sr.PatientID == PATIENT_IDS[0] and str(sr.PatientName) == ""
    for path in _all_files(out):
        for name in PATIENT_NAME_PARTS:
            assert name.encode() not in path.read_bytes()


def test_keyed_ids_with_i2m2_id_salt(capsys, tmp_path, checkpoint, monkeypatch):
    """With a secret key in I2M2_ID_SALT, ids are HMAC-SHA256 (no dictionary of ids reverses
    them), stable for the same key; the key itself appears in no output."""
    import hmac

    src = tmp_path / "in"
    write_h5(src / "knee_salted.h5", n_slices=2, width=368, patient_id=PATIENT_IDS[2])
    key = "site-secret-7f3a"
    monkeypatch.setenv("I2M2_ID_SALT", key)
    runs = []
    for name in ("out1", "out2"):
        rc, err = _diagnose(capsys, src, "--out", tmp_path / name, "--model", checkpoint, "--no-progress")
        assert rc == 0, err
        runs.append(_rows(tmp_path / name)[0])
    keyed = hmac.new(key.encode(), b"knee_salted", hashlib.sha256).hexdigest()[:16]
    assert runs[0]["study_id"] == runs[1]["study_id"] == keyed != _sha("knee_salted")
    assert runs[0]["patient_id"] == hmac.new(key.encode(), PATIENT_IDS[2].encode(), hashlib.sha256).hexdigest()[:16]
    for path in _all_files(tmp_path / "out1"):
        data = path.read_bytes()
        assert key.encode() not in data and PATIENT_IDS[2].encode() not in data
    monkeypatch.delenv("I2M2_ID_SALT")
    rc, err = _diagnose(capsys, src, "--out", tmp_path / "plain", "--model", checkpoint, "--no-progress")
    assert rc == 0 and _rows(tmp_path / "plain")[0]["study_id"] == _sha("knee_salted")


def _small_folder(root: Path) -> Path:
    write_h5(root / "a.h5", n_slices=2, width=368, patient_id="PX-1", seed=11)
    write_h5(root / "b.h5", n_slices=3, width=372, patient_id="PX-2", seed=12)
    write_dicom_study(root / "c", n_slices=2, phase=True, patient=0, seed=13)
    return root


def _outputs(out: Path) -> dict[str, object]:
    """CSV text and every JSON, for comparing two runs (the SR carries creation times)."""
    docs = {p.name: json.loads(p.read_text()) for p in sorted((out / "studies").glob("*.json"))}
    return {"csv": (out / "predictions.csv").read_text(), "json": docs,
            "sr": sorted(p.name for p in (out / "sr").glob("*.dcm"))}


def test_resume_skips_done_studies_and_reruns_for_another_model(capsys, tmp_path, checkpoint):
    src = _small_folder(tmp_path / "in")
    out = tmp_path / "out"
    rc, _ = _diagnose(capsys, src, "--out", out, "--model", checkpoint, "--no-progress")
    assert rc == 0
    first = _outputs(out)
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "studies").glob("*.json")}
    rc, err = _diagnose(capsys, src, "--out", out, "--model", checkpoint, "--resume", "--no-progress")
    assert rc == 0 and "3 of 3 studies already done" in err
    assert {p: p.stat().st_mtime_ns for p in (out / "studies").glob("*.json")} == mtimes
    assert _outputs(out) == first
    # other settings are another result: withholding a modality is not skipped by --resume
    rc, err = _diagnose(capsys, src, "--out", out, "--model", checkpoint, "--resume", "--drop", "tabular", "--no-progress")
    assert rc == 0 and "already done" not in err
    assert all(json.loads(p.read_text())["excluded_modalities"] == ["tabular"] for p in (out / "studies").glob("*.json"))
    rc, err = _diagnose(capsys, src, "--out", out, "--model", checkpoint, "--resume", "--drop", "tabular", "--no-progress")
    assert "3 of 3 studies already done" in err
    other = make_checkpoint(tmp_path / "other" / "model.safetensors", seed=99)
    rc, err = _diagnose(capsys, src, "--out", out, "--model", other, "--resume", "--no-progress")
    assert rc == 0 and "already done" not in err
    docs = [json.loads(p.read_text()) for p in (out / "studies").glob("*.json")]
    from i2m2_med.checkpoint import read_checkpoint_meta

    assert {d["model"]["fingerprint"] for d in docs} == {read_checkpoint_meta(other).fingerprint}


def test_interrupted_run_is_completed_by_resume(tmp_path, checkpoint):
    src = _small_folder(tmp_path / "in")
    out = tmp_path / "out"
    seen = []

    def stop_after_first(record: dict) -> None:
        seen.append(record["study_id"])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        diagnose.run(src, out, model=checkpoint, progress=False, on_study_done=stop_after_first)
    # consistent after the interrupt: one finished study, listed in the CSV, no temporary files
    rows = _rows(out)
    assert [r["study_id"] for r in rows] == seen and rows[0]["status"] == "ok"
    assert sorted(p.stem for p in (out / "studies").glob("*.json")) == seen
    assert not any(p.name.endswith(".part") for p in _all_files(out))
    assert diagnose.run(src, out, model=checkpoint, resume=True, progress=False) == 0
    reference = tmp_path / "reference"
    assert diagnose.run(src, reference, model=checkpoint, progress=False) == 0
    assert _outputs(out) == _outputs(reference)
    assert len(_rows(out)) == 3


def test_tampered_checkpoint_is_one_line_exit_1(capsys, tmp_path, checkpoint):
    src = _small_folder(tmp_path / "in")
    data = bytearray(checkpoint.read_bytes())
    data[-50] ^= 0x01
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    rc, err = _diagnose(capsys, src, "--out", tmp_path / "out", "--model", bad, "--no-progress")
    assert rc == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "bad.safetensors" in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "predictions.csv").exists()
    (tmp_path / "trunc.safetensors").write_bytes(bytes(data[: len(data) // 2]))
    rc, err = _diagnose(capsys, src, "--out", tmp_path / "out", "--model", tmp_path / "trunc.safetensors")
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    # a valid safetensors file that is not a checkpoint of this project
    import torch
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3)}, str(tmp_path / "foreign.safetensors"))
    rc, err = _diagnose(capsys, src, "--out", tmp_path / "out", "--model", tmp_path / "foreign.safetensors")
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "not an i2m2-med checkpoint" in err


def test_usage_errors_exit_1(capsys, tmp_path, checkpoint):
    rc, err = _diagnose(capsys, tmp_path / "nowhere", "--out", tmp_path / "o", "--model", checkpoint)
    assert rc == 1 and "no such input folder" in err and "Traceback" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, err = _diagnose(capsys, empty, "--out", tmp_path / "o", "--model", checkpoint)
    assert rc == 1 and "no study found" in err
    (tmp_path / "file").write_text("x")
    src = _small_folder(tmp_path / "in")
    rc, err = _diagnose(capsys, src, "--out", tmp_path / "file", "--model", checkpoint)
    assert rc == 1 and "not a folder" in err
    rc, err = _diagnose(capsys, src, "--out", tmp_path / "o", "--model", checkpoint, "--workers", "-1")
    assert rc == 1 and "Traceback" not in err
    rc, err = _diagnose(capsys, src, "--out", tmp_path / "o", "--model", checkpoint, "--drop", "kspace")
    assert rc == 1 and "unknown modality" in err


def test_help_documents_exit_codes(capsys):
    rc = main(["diagnose", "--help"])
    text = capsys.readouterr().out
    assert rc == 0
    for fragment in ("0 every study succeeded", "2 some studies failed", "1 usage error", "--resume", "--keep-ids", "--workers"):
        assert fragment in " ".join(text.split()), fragment


def test_help_paragraphs_are_reflowed():
    """Every command's help keeps its paragraphs but not the source's line breaks inside them (the
    help formatter keeps those, which left a short ragged line at each)."""
    import typer

    from pipelines.cli import app

    commands = typer.main.get_command(app).commands
    assert {"diagnose", "ablate", "train", "fit-shift"} <= set(commands)
    for name, command in commands.items():
        paragraphs = command.help.split("\n\n")
        assert all("\n" not in p and "  " not in p for p in paragraphs), name
    diagnose = commands["diagnose"].help.split("\n\n")
    assert len(diagnose) == 3 and diagnose[1].startswith("Status of each row") and diagnose[1].endswith("says why).")


def test_no_progress_bar_when_stderr_is_not_a_terminal(capsys, tmp_path, checkpoint):
    """Captured (as in a log file), diagnose draws no bar: the summary line is what a log keeps.
    The bar itself, on a terminal, is tests/test_progress.py's."""
    src = _small_folder(tmp_path / "in")
    rc, err = _diagnose(capsys, src, "--out", tmp_path / "out", "--model", checkpoint)
    assert rc == 0
    assert "slices" not in err.split("3 studies")[0] and "eta" not in err
    assert "3 studies: 3 ok, 0 failed" in err


def test_one_bad_study_among_good_ones_and_drop_option(capsys, tmp_path, checkpoint):
    src = _small_folder(tmp_path / "in")
    write_h5(src / "zz_bad.h5", n_slices=2, width=368, nan=True)
    out = tmp_path / "out"
    rc, err = _diagnose(capsys, src, "--out", out, "--model", checkpoint, "--drop", "tabular", "--no-progress")
    assert rc == 2 and "Traceback" not in err
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "error"]
    assert "zz_bad.h5" in rows[-1]["error"] and "NaN" in rows[-1]["error"]
    assert not rows[-1]["error"].startswith("/")  # paths relative to INPUT_DIR
    for r in rows[:3]:
        assert all(r[f"contrib_tabular_{h}"] == "" for h in HEADS)
        assert _json(out, r["study_id"])["excluded_modalities"] == ["tabular"]


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_a_single_process_run(tmp_path, checkpoint):
    src = _small_folder(tmp_path / "in")
    write_h5(src / "d.h5", n_slices=2, width=368, seed=21)
    single = tmp_path / "single"
    assert diagnose.run(src, single, model=checkpoint, progress=False) == 0
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "diagnose", str(src), "--out", str(out), "--model", str(checkpoint),
         "--devices", "2", "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _outputs(single), _outputs(out)
    assert a["sr"] == b["sr"] and set(a["json"]) == set(b["json"])
    rows_a, rows_b = _rows(single), _rows(out)
    assert [r["study_id"] for r in rows_a] == [r["study_id"] for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        for h in HEADS:
            assert float(ra[f"p_{h}"]) == pytest.approx(float(rb[f"p_{h}"]), abs=1e-6)
    shutil.rmtree(out)


def test_synthetic_cohort_all_formats_with_clinical_table(capsys, tmp_path, checkpoint):
    """The synthetic generator's h5 + DICOM + NIfTI of two subjects, with its tabular.csv as the
    clinical table: six ok rows, the clinical values reach the tabular expert, and neither the
    placeholder patient name nor the raw subject ids appear in any output."""
    from i2m2_med.synth import generate_cohort

    src = tmp_path / "synth"
    generate_cohort(src, 2, seed=0, dicom=True, nifti=True, n_slices=8)
    with open(src / "splits.csv", newline="") as fh:
        subjects = {row["subject_id"] for row in csv.DictReader(fh)}
    assert len(subjects) == 2
    plain, joined, default = tmp_path / "plain", tmp_path / "joined", tmp_path / "default"
    rc, err = _diagnose(capsys, src, "--out", plain, "--model", checkpoint, "--no-progress", "--no-clinical")
    assert rc == 0, err
    assert "clinical table" not in err
    rc, err = _diagnose(capsys, src, "--out", joined, "--model", checkpoint, "--clinical", src / "tabular.csv",
                        "--no-progress", "--workers", "2")
    assert rc == 0, err
    # without --clinical the cohort folder's own tabular.csv is the table, as in train and the app
    rc, err = _diagnose(capsys, src, "--out", default, "--model", checkpoint, "--no-progress")
    assert rc == 0, err
    assert f"clinical table: {src / 'tabular.csv'}" in err
    assert _rows(default) == _rows(joined)
    rc, err = _diagnose(capsys, src, "--out", tmp_path / "both", "--model", checkpoint, "--no-progress",
                        "--no-clinical", "--clinical", src / "tabular.csv")
    assert rc == 1 and err.count("\n") == 1 and "--no-clinical" in err and not (tmp_path / "both").exists()
    rows = {r["source"]: r for r in _rows(joined)}
    assert sorted((r["format"], r["status"], r["n_slices"]) for r in rows.values()) == sorted(
        [(f, "ok", "8") for f in ("fastmri_h5", "dicom", "nifti") for _ in range(2)])
    before = {r["source"]: r for r in _rows(plain)}
    for source in (f"nifti/{_sha('synth0_0000')}.nii.gz", f"nifti/{_sha('synth0_0001')}.nii.gz"):
        # a NIfTI header has no age / sex / BMI: only the clinical table supplies them
        assert rows[source]["contrib_tabular_acl"] != before[source]["contrib_tabular_acl"]
        assert rows[source]["contrib_magnitude_acl"] == before[source]["contrib_magnitude_acl"]
    assert len(list((joined / "sr").glob("*.dcm"))) == 2
    for path in _all_files(joined):
        data = path.read_bytes()
        for secret in ("SYNTH", "ANON", *subjects):
            assert secret.encode() not in data, f"{secret} in {path.name}"


def test_unreadable_files_dates_and_nifti_names_are_scrubbed_like_ok_rows(capsys, tmp_path, checkpoint, monkeypatch):
    """What one study reveals (its patient's name and id) is removed from every row's path and
    message, the rows of unreadable files beside it included; dates in names become ``date``; a
    NIfTI name (no identity tags to go by) is hashed like the study id it is."""
    monkeypatch.setenv("I2M2_ID_SALT", "site key")
    src = tmp_path / "in"
    folder = src / f"DOE_JANE_{PATIENT_IDS[0]}"
    write_dicom_study(folder / "series", n_slices=2, phase=False, patient=0)
    (folder / "notes.h5").write_bytes(b"not an hdf5 file at all")  # unreadable, in the patient's folder
    write_nifti(src / "anon anon 19700101" / "ROE_RICHARD_2021-03-04.nii.gz", n_slices=2, phase=False)
    out = tmp_path / "out"
    rc, err = _diagnose(capsys, src, "--out", out, "--model", checkpoint, "--no-progress")
    assert rc == 2, err
    rows = _rows(out)
    assert sorted(r["status"] for r in rows) == ["error", "ok", "ok"]
    for path in _all_files(out):
        data = path.read_bytes()
        for secret in (*PATIENT_NAME_PARTS, PATIENT_IDS[0], "19700101", "2021-03-04", "ROE_RICHARD"):
            assert secret.encode() not in data, f"{secret} in {path.relative_to(out)}"
    for secret in ("DOE", "JANE", PATIENT_IDS[0], "19700101", "RICHARD"):
        assert secret not in err
    error = next(r for r in rows if r["status"] == "error")
    assert error["source"].endswith("/notes.h5") and error["source"].startswith("anon_anon_")
    nifti = next(r for r in rows if r["format"] == "nifti")
    assert nifti["source"].startswith("anon anon date/") and nifti["source"].endswith(".nii.gz")


def _review_folder(root: Path) -> Path:
    """Ok studies with four experts and with two (no phase), a localiser (skipped), a shoulder
    series (out of scope by its tags) and a broken file (error)."""
    write_h5(root / "a.h5", n_slices=3, width=368, patient_id="PX-1", seed=21)
    write_dicom_study(root / "cor", n_slices=3, phase=True, patient=0, seed=22)
    write_dicom_study(root / "mag_only", n_slices=3, phase=False, patient=1, seed=23)
    write_dicom_study(root / "loc", n_slices=2, phase=False, seed=24, description="localizer", image_type="LOCALIZER")
    write_dicom_study(root / "shoulder", n_slices=2, phase=False, seed=25, description="PD FS COR", body_part="SHOULDER")
    (root / "notes.h5").write_text("this is not an HDF5 file\n")
    return root


def test_disagreement_column_json_and_review_flags(capsys, tmp_path, checkpoint):
    from i2m2_med.metrics.selective import study_disagreement

    src = _review_folder(tmp_path / "in")
    out = tmp_path / "o"
    rc, err = _diagnose(capsys, src, "--out", out, "--model", checkpoint, "--review-threshold", "0", "--no-progress")
    assert rc == 2, err  # the broken file
    header = _header(out)
    assert header[:10] == LEADING and header[-2:] == ["disagreement", "review"]
    rows = {r["source"].split("/")[0]: r for r in _rows(out)}
    assert {k: r["status"] for k, r in rows.items()} == {
        "a.h5": "ok", "cor": "ok", "mag_only": "ok", "loc": "skipped", "shoulder": "out_of_scope", "notes.h5": "error"}
    for name in ("a.h5", "cor", "mag_only"):
        r = rows[name]
        doc = _json(out, r["study_id"])
        block = doc["disagreement"]
        assert float(r["disagreement"]) == pytest.approx(block["value"], rel=1e-12) and block["value"] > 0
        assert r["review"] == "yes"  # threshold 0: every study with two or more experts
        # the value is what the rule gives on the experts' slice log-probabilities in the JSON
        terms = {t: np.asarray([[s["logp"][t][h] for h in HEADS] for s in doc["slices"]]) for t in doc["slices"][0]["logp"]}
        again = study_disagreement(terms, doc["aggregation"]["rule"], doc["aggregation"].get("k", 3))
        assert again["value"] == pytest.approx(block["value"], rel=1e-9)
        assert np.mean([block["per_head"][h] for h in ("acl", "mtear", "cart")]) == pytest.approx(block["value"])
    assert rows["mag_only"]["dropped_experts"] == "phase;joint" and _json(out, rows["mag_only"]["study_id"])["disagreement"]["experts"] == [
        "magnitude", "tabular"]
    for name in ("loc", "shoulder", "notes.h5"):
        r = rows[name]
        assert (r["disagreement"], r["review"]) == ("", ""), r
        assert _json(out, r["study_id"]).get("disagreement") is None

    # a huge threshold flags none; --resume reuses the studies and applies the new threshold
    rc, err = _diagnose(capsys, src, "--out", out, "--model", checkpoint, "--review-threshold", "1e9", "--resume", "--no-progress")
    rows = {r["source"].split("/")[0]: r for r in _rows(out)}
    assert [rows[n]["review"] for n in ("a.h5", "cor", "mag_only")] == ["no", "no", "no"]
    assert all(rows[n]["status"] == "ok" for n in ("a.h5", "cor", "mag_only"))
    # without the option the column is empty
    rc, err = _diagnose(capsys, src, "--out", out, "--model", checkpoint, "--resume", "--no-progress")
    assert all(r["review"] == "" for r in _rows(out))


def test_one_expert_has_no_disagreement_and_is_never_flagged(capsys, tmp_path, checkpoint):
    src = tmp_path / "in"
    write_h5(src / "a.h5", n_slices=2, width=368, patient_id="PX-1", seed=31)
    out = tmp_path / "o"
    rc, err = _diagnose(capsys, src, "--out", out, "--model", checkpoint, "--drop", "magnitude", "--drop", "phase",
                        "--review-threshold", "0", "--no-progress")
    assert rc == 0, err
    (r,) = _rows(out)
    assert r["status"] == "ok" and r["disagreement"] == "" and r["review"] == "no"
    block = _json(out, r["study_id"])["disagreement"]
    assert block["value"] is None and block["experts"] == ["tabular"] and "two" in block["reason"]


@pytest.mark.parametrize("bad", ["-0.5", "nan", "inf"])
def test_bad_review_threshold_is_one_line_exit_1(capsys, tmp_path, checkpoint, bad):
    src = _small_folder(tmp_path / "in")
    rc, err = _diagnose(capsys, src, "--out", tmp_path / "o", "--model", checkpoint, f"--review-threshold={bad}")
    assert rc == 1 and "--review-threshold" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_help_documents_the_review_threshold(capsys):
    assert main(["diagnose", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "--review-thresh" in text and "disagreement" in text and "status stays ok" in text


def test_device_choice_never_falls_back_silently(capsys, tmp_path, checkpoint):
    """`--device cuda` (or `--accelerator gpu`) where torch sees no GPU is one line and exit 1
    with nothing written; a name that is no device likewise; `cpu` and `auto` run."""
    import torch

    from i2m2_med.inference.loading import resolve_device

    src = tmp_path / "in"
    write_h5(src / "a.h5", n_slices=2, width=368, seed=11)
    if torch.cuda.is_available():
        rc, err = _diagnose(capsys, src, "--out", tmp_path / "gpu", "--model", checkpoint, "--device", "cuda")
        assert rc == 0 and "device: cuda:" in err
    else:
        assert resolve_device("auto") == torch.device("cpu")
        for args, reason in ((("--device", "cuda"), "asks for a CUDA GPU but torch sees none"),
                             (("--device", "cuda:1"), "asks for a CUDA GPU but torch sees none"),
                             (("--accelerator", "gpu"), "'gpu' asks for a GPU but torch sees none")):
            rc, err = _diagnose(capsys, src, "--out", tmp_path / "no", "--model", checkpoint, *args)
            lines = err.strip().splitlines()
            assert rc == 1 and len(lines) == 1 and reason in lines[0], err
            assert not (tmp_path / "no").exists()
    rc, err = _diagnose(capsys, src, "--out", tmp_path / "no", "--model", checkpoint, "--device", "tpu")
    assert rc == 1 and "'tpu' is not a device" in err and not (tmp_path / "no").exists()
    for device in ("cpu", "auto"):
        rc, _ = _diagnose(capsys, src, "--out", tmp_path / device, "--model", checkpoint, "--device", device)
        assert rc == 0 and (tmp_path / device / "predictions.csv").is_file()
    if not torch.cuda.is_available():  # auto is the CPU here: the same answers
        assert (tmp_path / "cpu" / "predictions.csv").read_text() == (tmp_path / "auto" / "predictions.csv").read_text()
