"""Out of scope: the distribution-shift score and the body-part rule, end to end on real files.

The bundled demo model carries shift statistics fitted on its own training cohort. Noise tagged as
a coronal PD knee and a real scanner MR image of another body part (pydicom's bundled test files,
re-tagged so that only the content can tell) are out of scope by their score; a real head series
is out of scope from its tags before any model runs; synthetic knees are in scope. A model
without statistics answers as before, with a note. The statistics travel in the checkpoint under
its hashes: a round trip keeps them, a changed byte is refused.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from diagnose_inputs import make_checkpoint, write_broken, write_dicom_study
from pydicom.data import get_testdata_file
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

import i2m2_med
from i2m2_med.checkpoint import load_checkpoint, save_checkpoint
from i2m2_med.errors import CheckpointError
from i2m2_med.inference.loading import load_model
from i2m2_med.inference.predict import predict_study
from i2m2_med.inference.shift import UNAVAILABLE, fit_shift, has_shift
from i2m2_med.io.discover import discover
from pipelines.cli import main

BUNDLED = i2m2_med.demo_model_path()


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "predictions.csv").open(encoding="utf-8", newline="") as fh:
        return {r["source"].split("/")[0]: r for r in csv.DictReader(fh)}


def _real_mr_as_coronal_pd_knee(folder: Path) -> Path:
    """pydicom's MR_small.dcm (a real scanner image, not a knee: its tags say an axial derived T2)
    re-tagged as an acquired coronal PD series without a body part, so only its pixels can tell."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.ImageOrientationPatient = [-1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
    ds.SeriesDescription = "PD COR"
    folder.mkdir(parents=True)
    ds.save_as(folder / "mr.dcm")
    return folder


@pytest.fixture(scope="module")
def exam(tmp_path_factory) -> Path:
    """A folder of studies: two synthetic knees (with their clinical table), noise tagged as a
    coronal PD knee (magnitude and phase), a real non-knee MR re-tagged as a knee, and a real head
    series (pydicom's emri_small.dcm, BodyPartExamined HEAD)."""
    from i2m2_med.synth import generate_cohort

    root = tmp_path_factory.mktemp("exam") / "in"
    generate_cohort(root / "knees", 2, 11, regime="mixed", n_slices=12)
    shutil.move(str(root / "knees" / "tabular.csv"), str(root / "tabular.csv"))
    for name in ("annotations", "manifest.json", "splits.csv", "episodes.csv", "slice_labels.csv"):
        target = root / "knees" / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    write_dicom_study(root / "noise", n_slices=4, phase=True, size=64, seed=3)  # uniform noise, coronal PD tags
    _real_mr_as_coronal_pd_knee(root / "mr_small")
    (root / "head").mkdir()
    shutil.copy(get_testdata_file("emri_small.dcm"), root / "head" / "emri_small.dcm")
    return root


@pytest.fixture(scope="module")
def bundled_run(exam, tmp_path_factory):
    assert has_shift(load_model(None)[0]), "the bundled model carries shift statistics"
    out = tmp_path_factory.mktemp("out") / "diag"
    rc = main(["diagnose", str(exam), "--out", str(out), "--no-progress", "--workers", "0"])
    return rc, out


def test_noise_and_a_real_non_knee_image_are_out_of_scope_by_score(bundled_run):
    rc, out = bundled_run
    assert rc == 0  # out of scope is an answer, not a failure
    rows = _rows(out)
    for name in ("noise", "mr_small"):
        r = rows[name]
        assert r["status"] == "out_of_scope", r
        assert "out of scope by content" in r["error"] and "distribution-shift score" in r["error"]
        assert float(r["shift_score"]) > float(r["shift_threshold"]) > 0
        assert all(r[f"p_{h}"] == "" for h in ("acl", "mtear", "cart", "abnormal"))  # no findings reported
        assert all(r[c] == "" for c in r if c.startswith("contrib_"))
        doc = json.loads((out / "studies" / f"{r['study_id']}.json").read_text())
        assert doc["status"] == "out_of_scope" and doc["shift"]["out_of_scope"] is True
        assert "slices" not in doc and "study" not in doc and "sr" not in doc
    assert not (out / "sr").exists() or not any((out / "sr").iterdir())  # no SR for any of them
    # the real scanner image is scored by its magnitude expert alone (it has no phase series)
    doc = json.loads((out / "studies" / f"{rows['mr_small']['study_id']}.json").read_text())
    assert set(doc["shift"]["experts"]) == {"magnitude"}


def test_a_real_head_series_is_out_of_scope_from_its_tags(bundled_run):
    rc, out = bundled_run
    r = _rows(out)["head"]
    assert r["status"] == "out_of_scope" and r["error"].startswith("out of scope by its tags: head: not a knee"), r
    assert r["shift_score"] == "" and r["p_acl"] == ""  # decided before the model ran
    doc = json.loads((out / "studies" / f"{r['study_id']}.json").read_text())
    assert "shift" not in doc and doc["series"]["body_part"] == "head"


def test_synthetic_knees_are_in_scope(bundled_run):
    rc, out = bundled_run
    with (out / "predictions.csv").open(encoding="utf-8", newline="") as fh:
        knees = [r for r in csv.DictReader(fh) if r["source"].startswith("knees/")]
    assert len(knees) == 2
    for r in knees:
        assert r["status"] == "ok" and r["p_acl"] != "", r
        assert float(r["shift_score"]) <= float(r["shift_threshold"])


def test_summary_line_counts_out_of_scope(exam, tmp_path, capsys):
    rc = main(["diagnose", str(exam), "--out", str(tmp_path / "o"), "--no-progress", "--workers", "0"])
    err = capsys.readouterr().err
    assert rc == 0
    assert "5 studies: 2 ok, 0 failed, 3 out of scope (no probabilities reported)" in err, err


def test_a_model_without_shift_statistics_answers_with_a_note(exam, tmp_path):
    ckpt = make_checkpoint(tmp_path / "run" / "model.safetensors", seed=2)
    assert not has_shift(load_checkpoint(ckpt)[0])
    out = tmp_path / "out"
    assert main(["diagnose", str(exam), "--out", str(out), "--model", str(ckpt), "--no-progress"]) == 0
    rows = _rows(out)
    for name in ("noise", "mr_small"):  # never out of scope by content without statistics
        r = rows[name]
        assert r["status"] == "ok" and r["shift_score"] == "" and r["p_acl"] != "", r
        doc = json.loads((out / "studies" / f"{r['study_id']}.json").read_text())
        assert doc["shift"] == {"available": False, "note": UNAVAILABLE}
    assert rows["head"]["status"] == "out_of_scope"  # the tags rule needs no statistics


def test_exit_codes(exam, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(exam / "noise", mixed / "noise")
    write_broken(mixed / "broken")
    assert main(["diagnose", str(mixed), "--out", str(tmp_path / "a"), "--no-progress"]) == 2  # a study failed
    assert main(["diagnose", str(exam / "head"), "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    assert main(["diagnose", str(tmp_path / "nothing"), "--out", str(tmp_path / "c")]) == 1  # usage error


def test_help_documents_the_statuses(capsys):
    assert main(["diagnose", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for fragment in ("ok (diagnosed", "skipped (a series", "out_of_scope (another body part", "error (could not",
                     "0 every study succeeded, was skipped or is out of scope", "2 some studies failed", "1 usage error"):
        assert fragment in text, fragment


# ---- fitting and the checkpoint ------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted(tiny_cohort, tmp_path_factory, one_torch_thread):
    """An untrained cpu-config i2m2 with statistics fitted on the tiny cohort, saved."""
    from i2m2_med.config import load_config
    from i2m2_med.data.cohort import load_cohort
    from i2m2_med.data.dataset import SliceDataset
    from i2m2_med.models import build_model

    cfg = load_config("cpu")
    cohort = load_cohort(tiny_cohort)
    torch.manual_seed(0)
    model = build_model("i2m2", cfg, len(cohort.tabular_names))
    record = fit_shift(model, SliceDataset(cohort, "train", image_size=cfg.image_size),
                       SliceDataset(cohort, "val", image_size=cfg.image_size))
    path = tmp_path_factory.mktemp("fitted") / "model.safetensors"
    save_checkpoint(path, model, cfg, "i2m2", len(cohort.tabular_names), cohort.tabular_names, {"shift": record}, "tiny")
    return model, record, path


def test_fit_reads_the_image_experts_and_sets_the_threshold_on_validation(fitted):
    model, record, _ = fitted
    assert record["fitted"] and record["experts"] == ["magnitude", "phase"]  # the FiLM joint model reads tabular too
    assert record["quantile"] == 0.99 and record["threshold"] > 0 and "empirical_quantile" in record["val_scores"]
    assert record["val_studies"] >= 1 and all(n > 10 for n in record["train_slices"].values())
    stats = model.shift_statistics()
    assert set(stats) == {"shift_magnitude_mean", "shift_magnitude_precision", "shift_phase_mean",
                          "shift_phase_precision", "shift_threshold"}
    d = model.shift_feature_dim("magnitude")
    assert stats["shift_magnitude_precision"].shape == (d, d)


def test_checkpoint_round_trip_keeps_the_statistics(fitted):
    model, record, path = fitted
    loaded, meta = load_checkpoint(path)
    for name, value in model.shift_statistics().items():
        assert torch.equal(loaded.shift_statistics()[name], value), name
    assert meta.metrics["shift"]["threshold"] == pytest.approx(record["threshold"])
    assert meta.fingerprint != make_fingerprint_without_shift(model)  # the statistics are part of the model's identity


def make_fingerprint_without_shift(model) -> str:
    from i2m2_med.checkpoint import model_fingerprint

    clone = type(model)(model.variant, model.config, model.n_tabular)
    clone.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("shift_")})
    return model_fingerprint(clone)


def test_a_tampered_statistics_block_is_refused(fitted, tmp_path):
    _, _, path = fitted
    with safe_open(str(path), framework="pt") as fh:
        header = fh.metadata()
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    state["shift_threshold"] = state["shift_threshold"] * 100.0  # nothing out of scope any more
    bad = tmp_path / "tampered.safetensors"
    bad.write_bytes(safetensors_save(state, metadata=header))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(bad)
    state.pop("shift_phase_precision")  # an incomplete block is refused like a wrong weight
    bad.write_bytes(safetensors_save(state, metadata=header))
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)


def test_a_signed_checkpoint_covers_the_statistics(fitted, tmp_path, monkeypatch):
    model, _, _ = fitted
    monkeypatch.setenv("I2M2_MODEL_KEY", "deployment-key")
    signed = tmp_path / "signed.safetensors"
    save_checkpoint(signed, model, model.config, "i2m2", model.n_tabular, [f"f{i}" for i in range(model.n_tabular)],
                    {}, "tiny")
    assert has_shift(load_checkpoint(signed)[0])
    with safe_open(str(signed), framework="pt") as fh:
        header = fh.metadata()
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    state["shift_magnitude_mean"] = state["shift_magnitude_mean"] + 1.0
    bad = tmp_path / "forged.safetensors"
    bad.write_bytes(safetensors_save(state, metadata=header))
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)


def test_fit_shift_command_adds_the_statistics_to_a_run(tiny_cohort, tmp_path, capsys, one_torch_thread):
    ckpt = make_checkpoint(tmp_path / "run" / "model.safetensors", seed=4)
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"variant": "i2m2"}))
    # the run was not trained on this cohort: refused unless asked for
    assert main(["fit-shift", str(tmp_path / "run"), "--data", str(tiny_cohort)]) == 1
    assert "not the run's training data" in capsys.readouterr().err
    assert not has_shift(load_checkpoint(ckpt)[0])
    assert main(["fit-shift", str(tmp_path / "run"), "--data", str(tiny_cohort), "--allow-other-data"]) == 0
    assert "threshold" in capsys.readouterr().err
    model, meta = load_checkpoint(ckpt)
    assert has_shift(model) and meta.metrics["shift"]["fitted"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["shift"]["fitted"]
    # the same weights: the product's answers do not change
    study = discover(tiny_cohort).studies[0]
    before = predict_study(load_checkpoint(make_checkpoint(tmp_path / "again.safetensors", seed=4))[0],
                           meta, study)
    after = predict_study(model, meta, study)
    np.testing.assert_array_equal(before.p, after.p)
    assert after.shift["available"] and not before.shift["available"]


def test_the_threshold_is_the_lognormal_quantile_not_the_sample_maximum():
    """With tens of validation studies the empirical 99th percentile is their maximum; the
    log-normal's 99th percentile recovers the true point of log-normal scores and lies beyond a
    small sample's maximum when the sample is typical."""
    from i2m2_med.inference.shift import lognormal_quantile

    rng = np.random.default_rng(0)
    true = float(np.exp(0.1 * 2.3263478740408408))
    big = np.exp(rng.normal(0.0, 0.1, 200_000))
    assert lognormal_quantile(big) == pytest.approx(true, rel=2e-3)
    beyond = [lognormal_quantile(s) > s.max() for s in (np.exp(rng.normal(0.0, 0.1, 58)) for _ in range(200))]
    assert np.mean(beyond) > 0.5
    assert lognormal_quantile(np.array([1.2])) == pytest.approx(1.2)
    assert lognormal_quantile(np.array([1.0, 1.0, 1.0])) == pytest.approx(1.0)
