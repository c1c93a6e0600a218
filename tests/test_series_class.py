"""Series classification from tags (i2m2_med.io.series): the rule table on the series of a real
knee exam, other body parts, fastMRI headers, and what inspect shows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from i2m2_med.io.series import MODEL_SERIES, classify_series
from pipelines.cli import main

COR = [-1.0, 0.0, 0.0, 0.0, 0.0, 1.0]  # rows along -x, columns along z: the normal is y (coronal)
SAG = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
AX = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize("tags, plane, contrast, fat, model, reason", [
    ({"orientation": COR, "series_description": "COR PD", "body_part": "KNEE"}, "coronal", "PD", None, True, None),
    ({"orientation": COR, "series_description": "PD_TSE_FS_COR", "fat_sat": True}, "coronal", "PD", True, True, None),
    ({"orientation": SAG, "series_description": "t2_tse_fs_sag", "fat_sat": True}, "sagittal", "T2", True, False,
     "sagittal T2 FS: the model reads coronal PD / PD-FS"),
    ({"orientation": AX, "series_description": "PD FS AX", "fat_sat": True}, "axial", "PD", True, False, "axial PD FS"),
    ({"orientation": COR, "series_description": "T1 COR"}, "coronal", "T1", None, False, "coronal T1"),
    ({"orientation": COR, "series_description": "localizer", "image_type": ["ORIGINAL", "PRIMARY", "LOCALIZER"]},
     "coronal", "unknown", None, False, "a localiser"),
    ({"orientation": COR, "series_description": "COR PD", "image_type": ["DERIVED", "SECONDARY", "MPR"]},
     "coronal", "PD", None, False, "a derived series"),
    ({"orientation": COR, "series_description": "STIR COR"}, "coronal", "STIR", True, False, "coronal STIR"),
    ({"orientation": COR, "tr_ms": 3000.0, "te_ms": 30.0}, "coronal", "PD", None, True, None),  # TR/TE decide
    ({"orientation": COR, "tr_ms": 4000.0, "te_ms": 80.0}, "coronal", "T2", None, False, "coronal T2"),
    ({"orientation": COR, "scanning_sequence": ["GR"], "tr_ms": 20.0, "te_ms": 5.0}, "coronal", "GRE", None, False, "GRE"),
    ({"protocol": "CORPDFS_FBK", "fat_sat": True, "tr_ms": 2800.0, "te_ms": 30.0}, "coronal", "PD", True, True, None),  # fastMRI
    ({}, "unknown", "unknown", None, True, None),  # a NIfTI: nothing says it is another series
])
def test_rule_table(tags, plane, contrast, fat, model, reason) -> None:
    c = classify_series(tags)
    assert (c.plane, c.contrast, c.fat_sat, c.is_model_series) == (plane, contrast, fat, model), c
    if reason is None:
        assert c.reason is None
    else:
        assert reason in c.reason
        if "the model reads coronal" in c.reason:
            assert c.reason.endswith(MODEL_SERIES)


@pytest.mark.parametrize("tags, part", [
    ({"body_part": "SHOULDER", "orientation": COR, "series_description": "PD FS COR"}, "shoulder"),
    ({"body_part": "ABDOMEN", "orientation": AX, "series_description": "t1_vibe_dixon"}, "abdomen"),
    ({"study_description": "MRI HEAD w/o", "orientation": AX, "series_description": "t2_tse_tra"}, "head"),
    ({"body_part": "EXTREMITY", "orientation": COR, "series_description": "PD COR"}, "knee"),
    ({"study_description": "MR Knie rechts", "orientation": COR, "series_description": "pd_tse_cor"}, "knee"),
])
def test_other_body_parts_are_out_of_scope_from_their_tags(tags, part) -> None:
    c = classify_series(tags)
    assert c.body_part == part
    assert c.is_model_series == (part == "knee") and c.in_scope == (part == "knee")
    if part != "knee":
        assert c.reason == f"{part}: not a knee, the model reads knee MRI only"


def test_oblique_is_noted() -> None:
    c = classify_series({"orientation": [-0.94, 0.0, -0.34, 0.0, 0.0, 1.0], "series_description": "PD COR"})
    assert c.plane == "coronal" and not c.oblique
    c = classify_series({"orientation": [-0.7, 0.7, 0.0, 0.0, 0.0, 1.0], "series_description": "PD"})
    assert c.oblique and "ImageOrientationPatient" in c.evidence["plane"]


def test_inspect_shows_each_series_class(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from i2m2_med.synth import generate_cohort

    generate_cohort(tmp_path / "cohort", 1, 3, n_slices=8, dicom=True)
    dicom = tmp_path / "cohort" / "dicom"
    rc = main(["inspect", str(dicom), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["studies"]
    for s in report["studies"]:
        assert s["series"]["plane"] == "coronal" and s["series"]["contrast"] == "PD" and s["series"]["is_model_series"]
        assert s["series"]["body_part"] == "knee"
    assert main(["inspect", str(dicom)]) == 0
    assert "coronal PD" in capsys.readouterr().out


def test_diagnose_reads_the_model_series_and_lists_the_others(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An exam of five series: the coronal PD (with its phase) is diagnosed; a sagittal T2 FS, an
    axial PD FS and a localiser get rows of their own, status skipped, with the reason; a shoulder
    series is out of scope from its tags (whatever --series chooses); --series chooses another by
    hand."""
    import csv

    from diagnose_inputs import make_checkpoint, write_dicom_study

    ckpt = make_checkpoint(tmp_path / "run" / "model.safetensors", seed=1)
    exam = tmp_path / "exam"
    write_dicom_study(exam / "cor_pd", n_slices=3, phase=True, seed=1)
    write_dicom_study(exam / "sag_t2", n_slices=3, phase=False, seed=2, description="t2_tse_fs_sag", orientation=SAG)
    write_dicom_study(exam / "ax_pd", n_slices=3, phase=False, seed=3, description="PD FS AX", orientation=AX)
    write_dicom_study(exam / "loc", n_slices=3, phase=False, seed=4, description="localizer", image_type="LOCALIZER")
    write_dicom_study(exam / "shoulder", n_slices=3, phase=False, seed=5, description="PD FS COR", body_part="SHOULDER")

    def rows(out: Path) -> dict[str, dict[str, str]]:
        with (out / "predictions.csv").open(encoding="utf-8", newline="") as fh:
            return {r["source"].split("/")[0]: r for r in csv.DictReader(fh)}

    out = tmp_path / "out"
    rc = main(["diagnose", str(exam), "--out", str(out), "--model", str(ckpt), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0, err
    got = rows(out)
    assert got["cor_pd"]["status"] == "ok" and got["cor_pd"]["p_acl"] != ""
    assert "3 skipped" in err and "1 out of scope" in err
    expected = {"sag_t2": "sagittal T2 FS: the model reads coronal PD / PD-FS", "ax_pd": "axial PD FS: the model reads",
                "loc": "a localiser"}
    for name, reason in expected.items():
        assert got[name]["status"] == "skipped" and reason in got[name]["error"] and got[name]["p_acl"] == "", got[name]
    shoulder = got["shoulder"]
    assert shoulder["status"] == "out_of_scope" and shoulder["p_acl"] == "", shoulder
    assert shoulder["error"] == "out of scope by its tags: shoulder: not a knee, the model reads knee MRI only"
    doc = json.loads(next((out / "studies").glob(f"{got['sag_t2']['study_id']}.json")).read_text())
    assert doc["status"] == "skipped" and doc["series"]["label"] == "sagittal T2 FS"

    chosen = tmp_path / "chosen"
    rc = main(["diagnose", str(exam), "--out", str(chosen), "--model", str(ckpt), "--no-progress", "--series", "t2_tse"])
    capsys.readouterr()
    got = rows(chosen)
    assert rc == 0 and got["sag_t2"]["status"] == "ok"
    assert all(got[n]["status"] == "skipped" and "not the series chosen with --series" in got[n]["error"]
               for n in ("cor_pd", "ax_pd", "loc"))
    assert got["shoulder"]["status"] == "out_of_scope"
    assert main(["diagnose", str(exam), "--out", str(tmp_path / "bad"), "--model", str(ckpt), "--series", "("]) == 1
    assert "not a valid pattern" in capsys.readouterr().err
