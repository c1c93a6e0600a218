"""Study-level inference: the product identity per slice, aggregation to the study, missing and
dropped modalities, batching / threading invariance, bounded read-ahead, the JSON contract and
model loading (run folders, tampered checkpoints)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diagnose_inputs import make_checkpoint, write_dicom_study, write_h5, write_nifti

from i2m2_med.errors import CheckpointError, UsageError
from i2m2_med.heads import HEADS
from i2m2_med.inference.loading import load_model, resolve_checkpoint
from i2m2_med.inference.predict import predict_study
from i2m2_med.inference.prediction import StudyPrediction
from i2m2_med.inference.streaming import iter_slice_samples
from i2m2_med.io.dicom import read_dicom_series
from i2m2_med.io.fastmri_h5 import read_fastmri_h5
from i2m2_med.io.nifti import read_nifti
from i2m2_med.io.study import Study
from i2m2_med.metrics.aggregation import aggregate_study

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, kw in {
        "i2m2": {},
        "prior_max": {"prior": True, "aggregation": "max"},
        "mean": {"aggregation": "mean"},
    }.items():
        path = make_checkpoint(root / name / "model.safetensors", seed=len(out), **kw)
        out[name] = (path, *load_model(path))
    return out


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    h5 = read_fastmri_h5(write_h5(root / "a.h5", n_slices=4, width=372, patient_id="P1", seed=1))
    multi = read_fastmri_h5(write_h5(root / "m.h5", n_slices=2, width=368, coils=3, seed=2))
    write_dicom_study(root / "dcm_phase", n_slices=3, phase=True, patient=0)
    write_dicom_study(root / "dcm_mag", n_slices=3, phase=False, patient=1)
    (dcm_phase,) = read_dicom_series(root / "dcm_phase")
    (dcm_mag,) = read_dicom_series(root / "dcm_mag")
    nifti = read_nifti(write_nifti(root / "v.nii.gz", n_slices=3))
    return {"h5": h5, "multi": multi, "dcm_phase": dcm_phase, "dcm_mag": dcm_mag, "nifti": nifti}


def _check_product(pred: StudyPrediction) -> None:
    """combined = normalised sum of the terms; p = exp(combined[..., 1]); all in float64."""
    total = sum(v.astype(np.float64) for v in pred.terms.values())
    norm = total - np.logaddexp(total[..., :1], total[..., 1:])
    np.testing.assert_allclose(pred.combined, norm, atol=2e-5)
    np.testing.assert_allclose(pred.p, np.exp(norm[..., 1]), atol=2e-5)
    assert pred.p.shape == (pred.n_slices, len(HEADS))


def _check_json_identity(doc: dict) -> None:
    """The product checked from the JSON alone, as a reader of the file would."""
    assert doc["heads"] == list(HEADS)
    for s in doc["slices"]:
        for h in HEADS:
            lp0 = sum(s["logp"][t][h][0] for t in s["logp"])
            lp1 = sum(s["logp"][t][h][1] for t in s["logp"])
            p1 = np.exp(lp1) / (np.exp(lp0) + np.exp(lp1))
            assert abs(p1 - s["p"][h]) < 1e-5, (s["index"], h, p1, s["p"][h])


@pytest.mark.parametrize("name", ["h5", "multi", "dcm_phase", "nifti"])
def test_all_experts_product_and_study_level(models, studies, name):
    _, model, meta = models["i2m2"]
    study = studies[name]
    pred = predict_study(model, meta, study, batch_size=2)
    assert pred.n_slices == study.n_slices
    assert list(pred.terms) == ["magnitude", "phase", "tabular", "joint"]
    assert pred.missing_modalities == [] and pred.dropped_experts == []
    assert all(v.shape == (study.n_slices, 4, 2) and v.dtype == np.float32 for v in pred.terms.values())
    _check_product(pred)
    # study level: the checkpoint's rule (top3_mean -> mean of the 3 largest slice scores)
    assert pred.aggregation == {"rule": "mean_top_k", "k": 3}
    expected = np.sort(pred.p.astype(np.float64), axis=0)[::-1][:3].mean(axis=0)
    np.testing.assert_allclose(pred.p_study, expected, rtol=1e-6)
    np.testing.assert_array_equal(pred.top_slice, pred.p.argmax(axis=0))
    # contributions add up to the mean combined log-odds of the slices the rule reads
    logit = np.log(pred.p.astype(np.float64)) - np.log1p(-pred.p.astype(np.float64))
    for j in range(4):
        top = np.argsort(-pred.p[:, j], kind="stable")[: min(3, pred.n_slices)]
        total = sum(c[j] for c in pred.contributions.values())
        assert total == pytest.approx(logit[top, j].mean(), abs=1e-4)
    _check_json_identity(pred.to_json())


def test_missing_phase_drops_phase_and_joint(models, studies):
    _, model, meta = models["i2m2"]
    pred = predict_study(model, meta, studies["dcm_mag"])
    assert pred.missing_modalities == ["phase"]
    assert pred.dropped_experts == ["phase", "joint"]
    assert list(pred.terms) == ["magnitude", "tabular"]
    assert pred.modalities == ["magnitude", "tabular"]
    _check_product(pred)
    doc = pred.to_json()
    assert doc["missing_modalities"] == ["phase"] and doc["dropped_experts"] == ["phase", "joint"]
    assert set(doc["slices"][0]["logp"]) == {"magnitude", "tabular"}
    _check_json_identity(doc)


def test_drop_modalities_equals_the_product_without_those_terms(models, studies):
    _, model, meta = models["i2m2"]
    full = predict_study(model, meta, studies["h5"])
    dropped = predict_study(model, meta, studies["h5"], drop_modalities=["phase"])
    assert dropped.excluded_modalities == ["phase"] and dropped.missing_modalities == []
    assert dropped.dropped_experts == ["phase", "joint"]
    # the remaining experts say exactly what they said with every modality present
    for t in ("magnitude", "tabular"):
        np.testing.assert_allclose(dropped.terms[t], full.terms[t], atol=1e-6)
    # and the product is the renormalised sum of those two terms only
    total = full.terms["magnitude"].astype(np.float64) + full.terms["tabular"]
    p1 = 1.0 / (1.0 + np.exp(total[..., 0] - total[..., 1]))
    np.testing.assert_allclose(dropped.p, p1, atol=2e-5)
    only_tab = predict_study(model, meta, studies["h5"], drop_modalities=["magnitude", "phase"])
    assert list(only_tab.terms) == ["tabular"]
    with pytest.raises(UsageError, match="no expert can run"):
        predict_study(model, meta, studies["h5"], drop_modalities=["magnitude", "phase", "tabular"])
    with pytest.raises(UsageError, match="unknown modality"):
        predict_study(model, meta, studies["h5"], drop_modalities=["kspace"])


def test_batch_size_and_loading_threads_do_not_change_numbers(models, studies):
    _, model, meta = models["i2m2"]
    ref = predict_study(model, meta, studies["h5"], batch_size=4)
    for kw in ({"batch_size": 1}, {"batch_size": 3, "workers": 2}, {"batch_size": 2, "workers": 1}):
        other = predict_study(model, meta, studies["h5"], **kw)
        for t in ref.terms:
            np.testing.assert_allclose(other.terms[t], ref.terms[t], atol=1e-5)
        np.testing.assert_allclose(other.p_study, ref.p_study, atol=1e-6)
        np.testing.assert_array_equal(other.top_slice, ref.top_slice)


def test_channels_last_weights_give_the_same_numbers(models, studies):
    from i2m2_med.checkpoint import load_checkpoint
    from i2m2_med.inference.loading import channels_last

    path, model, meta = models["i2m2"]
    assert channels_last(model)  # as load_model leaves it (faster convolutions on CPU)
    plain, _ = load_checkpoint(path)
    assert not channels_last(plain)
    a = predict_study(model, meta, studies["multi"])
    b = predict_study(plain, meta, studies["multi"])
    for t in a.terms:
        np.testing.assert_allclose(a.terms[t], b.terms[t], atol=1e-5)
    np.testing.assert_allclose(a.p_study, b.p_study, atol=1e-6)


def test_prior_term_and_max_rule(models, studies):
    _, model, meta = models["prior_max"]
    pred = predict_study(model, meta, studies["nifti"])
    assert list(pred.terms) == ["magnitude", "phase", "tabular", "joint", "prior"]
    np.testing.assert_allclose(np.exp(pred.terms["prior"][0, :, 1]), [0.1, 0.2, 0.3, 0.4], rtol=1e-4)
    _check_product(pred)
    assert pred.aggregation["rule"] == "max"
    np.testing.assert_allclose(pred.p_study, pred.p.max(axis=0), rtol=1e-6)
    # with the max rule the contributions add up exactly to logit(p_study)
    logit = np.log(pred.p_study) - np.log1p(-pred.p_study)
    np.testing.assert_allclose(sum(pred.contributions.values()), logit, atol=1e-4)
    _check_json_identity(pred.to_json())


def test_mean_rule(models, studies):
    _, model, meta = models["mean"]
    pred = predict_study(model, meta, studies["h5"])
    np.testing.assert_allclose(pred.p_study, aggregate_study(pred.p, "mean"), rtol=1e-6)
    np.testing.assert_allclose(pred.p_study, pred.p.mean(axis=0), rtol=1e-5)


def test_json_contract(models, studies):
    _, model, meta = models["i2m2"]
    pred = predict_study(model, meta, studies["dcm_phase"])
    doc = json.loads(json.dumps(pred.to_json()))
    for key in ("study_id", "source", "format", "model", "heads", "missing_modalities", "slices", "study"):
        assert key in doc
    assert doc["model"] == {"fingerprint": meta.fingerprint, "variant": "i2m2", "version": meta.project_version}
    assert [s["index"] for s in doc["slices"]] == [0, 1, 2]
    assert set(doc["study"]) >= {"p", "top_slice"}
    assert set(doc["study"]["p"]) == set(HEADS) and set(doc["study"]["top_slice"]) == set(HEADS)
    assert doc["study"]["top_slice"] == {h: int(pred.p[:, j].argmax()) for j, h in enumerate(HEADS)}
    assert doc["format"] == "dicom" and doc["status"] == "ok"
    renamed = pred.with_identity("abc123", "x/y")
    assert renamed.to_json()["study_id"] == "abc123" and renamed.to_json()["source"] == "x/y"


def test_clinical_row_feeds_the_tabular_expert(models, studies):
    from i2m2_med.data.tabular import tabular_features

    _, model, meta = models["i2m2"]
    base = predict_study(model, meta, studies["nifti"])  # NIfTI: no age / sex / BMI in the header
    row = {"age_years": 71.0, "sex": "M", "bmi": 33.0}
    with_row = predict_study(model, meta, studies["nifti"], clinical_row=row)
    assert with_row.tabular["age_years"] == pytest.approx(0.71) and with_row.tabular["age_years_missing"] == 0.0
    assert base.tabular["age_years_missing"] == 1.0 and base.tabular["sex_male_missing"] == 1.0
    vec, names = tabular_features(studies["nifti"].tags, row)
    assert list(with_row.tabular) == list(meta.tabular_names) == names
    np.testing.assert_allclose(list(with_row.tabular.values()), vec)
    assert not np.allclose(with_row.terms["tabular"], base.terms["tabular"])
    np.testing.assert_allclose(with_row.terms["magnitude"], base.terms["magnitude"], atol=1e-6)


def test_read_ahead_is_bounded():
    """With loading threads, at most ``lookahead`` slices are read ahead of the consumer."""
    started: list[int] = []
    lock = threading.Lock()

    def reader(i: int) -> dict:
        with lock:
            started.append(i)
        time.sleep(0.002)
        return {"magnitude": np.full((8, 8), i, np.float32)}

    study = Study("s", Path("s"), "nifti", "image", 40, ("magnitude",), reader)

    def pipe(raw: dict) -> dict:
        return {"magnitude": raw["magnitude"][None]}

    consumed = 0
    for sample in iter_slice_samples(study, pipe, range(40), workers=3, lookahead=5):
        assert float(sample["magnitude"][0, 0, 0]) == consumed  # in order
        consumed += 1
        time.sleep(0.004)
        with lock:
            assert len(started) - consumed <= 5
    assert consumed == 40 and sorted(started) == list(range(40))


def test_read_ahead_across_studies(models, studies):
    """Slices of several studies read ahead by threads across study boundaries: the same numbers
    as reading each study alone; a study left half consumed is skipped cleanly; memory bounded."""
    from i2m2_med.inference.streaming import ReadAhead, modality_pipeline

    _, model, meta = models["i2m2"]
    names = ["h5", "dcm_mag", "nifti"]
    alone = {n: predict_study(model, meta, studies[n]) for n in names}
    pipe = modality_pipeline(meta.config.image_size)
    jobs = [(n, studies[n], range(studies[n].n_slices)) for n in names]
    with ReadAhead(jobs, pipe, workers=2, lookahead=3) as ahead:
        first = ahead.samples("h5")
        next(first)  # consume one slice of the first study only, then move on
        assert len(ahead._window) <= 3
        for n in names[1:]:
            pred = predict_study(model, meta, studies[n], samples=ahead.samples(n))
            for t in pred.terms:
                np.testing.assert_allclose(pred.terms[t], alone[n].terms[t], atol=1e-6)
            assert pred.missing_modalities == alone[n].missing_modalities
    with ReadAhead(jobs, pipe, workers=1) as ahead:
        # a stream that is told to drop nothing still withholds what predict_study drops
        pred = predict_study(model, meta, studies["h5"], samples=ahead.samples("h5"), drop_modalities=["phase"])
        assert pred.dropped_experts == ["phase", "joint"]
    with ReadAhead(jobs, pipe, workers=1) as ahead:
        with pytest.raises(UsageError, match="gave 3 slices for 4"):
            predict_study(model, meta, studies["h5"], samples=ahead.samples("nifti"))


def test_a_failing_slice_raises_its_error_and_stops_reading(models, tmp_path):
    from i2m2_med.errors import StudyReadError

    _, model, meta = models["i2m2"]
    study = read_fastmri_h5(write_h5(tmp_path / "nan.h5", n_slices=3, width=368, nan=True))
    with pytest.raises(StudyReadError, match="NaN"):
        predict_study(model, meta, study, batch_size=1, workers=2)


def test_load_model_run_folder_and_refusals(models, tmp_path):
    path, _, meta = models["i2m2"]
    assert resolve_checkpoint(path.parent) == path
    model, meta2 = load_model(path.parent)
    assert meta2.fingerprint == meta.fingerprint and not model.training
    with pytest.raises(CheckpointError, match="no checkpoint"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such"):
        resolve_checkpoint(tmp_path / "missing.safetensors")
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    bad = tmp_path / "tampered.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as err:
        load_model(bad)
    assert "\n" not in err.value.one_line() and "tampered.safetensors" in err.value.one_line()
    (tmp_path / "two").mkdir()
    for n in ("a", "b"):
        (tmp_path / "two" / f"{n}.safetensors").write_bytes(path.read_bytes())
    with pytest.raises(CheckpointError, match="several checkpoints"):
        resolve_checkpoint(tmp_path / "two")


def test_config_aggregation_names_are_the_metrics_rules():
    from i2m2_med.config import Config, config_from_dict
    from i2m2_med.errors import ConfigError
    from i2m2_med.metrics.aggregation import (
        AGGREGATION_RULES,
        CONFIG_RULES,
        aggregation_rule,
    )

    assert aggregation_rule("top3_mean") == ("mean_top_k", 3)
    for name in CONFIG_RULES:
        rule, k = aggregation_rule(name)
        assert rule in AGGREGATION_RULES and k >= 1
        assert Config().with_updates(**{"training.aggregation": name}).training.aggregation == name
    data = Config().to_dict()
    data["training"]["aggregation"] = "noisy_or"
    with pytest.raises(ConfigError, match="training.aggregation"):
        config_from_dict(data)


def test_default_model_is_the_bundled_demo_model():
    import i2m2_med

    demo = i2m2_med.demo_model_path()
    assert resolve_checkpoint(None) == resolve_checkpoint(demo)
    model, meta = load_model()
    assert meta.variant and len(meta.fingerprint) >= 8 and not model.training


def test_a_study_calibration_map_travels_in_the_checkpoint_and_maps_the_study_p(tmp_path, studies):
    from i2m2_med.checkpoint import load_checkpoint, save_checkpoint
    from i2m2_med.metrics.calibration import apply_study_map

    path = make_checkpoint(tmp_path / "m.safetensors", "i2m2")
    model, meta = load_checkpoint(path)
    plain = predict_study(model, meta, studies["h5"])
    assert model.study_calibration_map() is None and "calibration" not in plain.aggregation
    np.testing.assert_allclose(plain.p_study, plain.study_score)
    params = np.array([[0.5, -1.0], [1.0, 0.0], [2.0, 0.3], [0.8, -0.2]])
    model.set_study_calibration(params)
    save_checkpoint(tmp_path / "c.safetensors", model, meta.config, meta.variant, meta.n_tabular, meta.tabular_names,
                    None, "test-data")
    loaded, meta2 = load_checkpoint(tmp_path / "c.safetensors")
    assert meta2.fingerprint != meta.fingerprint  # the map changes what the model says: a new fingerprint
    np.testing.assert_allclose(loaded.study_calibration_map(), params, rtol=1e-6)
    pred = predict_study(loaded, meta2, studies["h5"])
    np.testing.assert_allclose(pred.p, plain.p, rtol=1e-6)  # slices untouched
    np.testing.assert_allclose(pred.study_score, plain.study_score, rtol=1e-6)
    np.testing.assert_allclose(pred.p_study, apply_study_map(plain.study_score, params[:, 0], params[:, 1]), rtol=1e-5)
    assert pred.aggregation["calibration"]["slope"]["acl"] == pytest.approx(0.5)
    doc = pred.to_json()
    assert doc["study"]["score"]["acl"] == pytest.approx(float(pred.study_score[0]))
    back = type(pred).from_json(doc)
    np.testing.assert_allclose(back.study_score, pred.study_score) and np.testing.assert_allclose(back.p_study, pred.p_study)
