"""The prior refitted after training: the one-dimensional fit against closed forms, the model's
prior term, the checkpoint, and what training writes (calibrated validation predictions, slice
AUROC unchanged)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from i2m2_med.checkpoint import load_checkpoint, save_checkpoint
from i2m2_med.config import load_config
from i2m2_med.errors import CheckpointError, UsageError
from i2m2_med.heads import HEADS
from i2m2_med.metrics.calibration import (
    MAX_OFFSET,
    calibration_errors,
    fit_offset,
    fit_prior_offset,
    offset_nll,
)
from i2m2_med.metrics.ranking import auroc
from i2m2_med.models import build_model
from i2m2_med.training.fit import TrainerOptions, train

SMALL = load_config("cpu").with_updates(image_size=32)
QUICK = dict(epochs=1, n_boot=20, batch_size=8, options=TrainerOptions(progress=False, limit_train_batches=2))


# ---- the fit ------------------------------------------------------------------------------------


def test_offset_of_a_constant_score_is_the_logit_of_the_prevalence() -> None:
    y = np.array([1, 1, 1] + [0] * 9, dtype=float)
    b, reason = fit_offset(np.zeros(12), y)
    assert reason is None and b == pytest.approx(np.log(3 / 9), abs=1e-9)
    # a score that is already shifted: the offset undoes exactly that shift
    b, _ = fit_offset(np.full(12, 2.5), y)
    assert b == pytest.approx(np.log(3 / 9) - 2.5, abs=1e-9)


def test_fitted_offset_matches_the_mean_probability_to_the_prevalence_and_minimises_the_nll() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(1.5, 2.0, 400)                       # over-predicting scores, as class weighting leaves them
    y = (rng.random(400) < 1 / (1 + np.exp(-(z - 3.0)))).astype(float)
    b, reason = fit_offset(z, y)
    assert reason is None and -5.0 < b < -1.0
    p = 1 / (1 + np.exp(-(z + b)))
    assert p.mean() == pytest.approx(y.mean(), abs=1e-8)  # the intercept's score equation
    for step in (-0.05, 0.05):
        assert offset_nll(z, y, b) < offset_nll(z, y, b + step)
    assert offset_nll(z, y, b) < offset_nll(z, y, 0.0)


def test_heads_that_cannot_be_fitted_keep_zero_and_say_why() -> None:
    assert fit_offset(np.zeros(5), np.zeros(5)) == (0.0, "one class only (0 of 5 slices positive)")
    assert fit_offset(np.zeros(3), np.full(3, np.nan)) == (0.0, "no labelled slice")
    # 1 positive in 10 million would need |b| > MAX_OFFSET: refused rather than extrapolated
    z = np.full(20, 40.0)
    y = np.zeros(20)
    y[0] = 1
    b, reason = fit_offset(z, y)
    assert b == 0.0 and f"{MAX_OFFSET:g}" in reason


def test_per_head_fit_and_report() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0.0, 1.0, (200, len(HEADS)))
    y = (rng.random((200, len(HEADS))) < 0.2).astype(float)
    y[:, 3] = 0.0                                            # one head without positives
    offsets, report = fit_prior_offset(z, y)
    assert offsets.dtype == np.float32 and offsets.shape == (len(HEADS),)
    heads = report["per_head"]
    assert [heads[h]["fitted"] for h in HEADS] == [True, True, True, False] and offsets[3] == 0.0
    for h in HEADS[:3]:
        assert heads[h]["nll_after"] < heads[h]["nll_before"] and heads[h]["slices"] == 200
    with pytest.raises(ValueError):
        fit_prior_offset(z[:, :3], y[:, :3])
    errors = calibration_errors(z + offsets.astype(np.float64), y, offsets)
    assert errors[HEADS[0]]["mean_p_after"] == pytest.approx(errors[HEADS[0]]["prevalence"], abs=1e-6)
    assert errors[HEADS[0]]["after"] < errors[HEADS[0]]["before"]


# ---- the model's prior term and the checkpoint -----------------------------------------------------


def _batch(n_tab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "magnitude": torch.rand(3, 1, 32, 32, generator=g),
        "phase": torch.rand(3, 1, 32, 32, generator=g) * 6 - 3,
        "tabular": torch.randn(3, n_tab, generator=g),
    }


def test_offset_moves_the_combined_log_odds_only() -> None:
    torch.manual_seed(0)
    model = build_model("i2m2", SMALL, 6).eval()
    batch = _batch(6)
    before = model.predict(batch)
    assert not model.has_prior and "prior" not in before.terms and "prior_offset" not in model.state_dict()
    offset = torch.tensor([-2.0, -1.0, 0.5, -3.0])
    model.set_prior_offset(offset)
    after = model.predict(batch)
    assert model.has_prior and "prior_offset" in model.state_dict()
    assert set(after.terms) == set(before.terms) | {"prior"}
    for name, term in before.terms.items():
        torch.testing.assert_close(after.terms[name], term)
    shift = (after.combined[..., 1] - after.combined[..., 0]) - (before.combined[..., 1] - before.combined[..., 0])
    torch.testing.assert_close(shift, offset.expand(3, -1), atol=1e-5, rtol=0)
    assert model.describe()["prior_offset"] == pytest.approx(offset.tolist())
    model.set_prior_offset(None)
    assert not model.has_prior and "prior_offset" not in model.state_dict()
    torch.testing.assert_close(model.predict(batch).combined, before.combined)
    with pytest.raises(UsageError):
        model.set_prior_offset(torch.tensor([0.0, float("nan"), 0.0, 0.0]))


def test_offset_adds_to_a_learned_prior() -> None:
    cfg = SMALL.with_updates(**{"model.prior": True})
    torch.manual_seed(0)
    model = build_model("mag", cfg, 0).eval()
    model.prior.set_frequencies(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    batch = {"magnitude": _batch(0)["magnitude"]}
    before = model.predict(batch)
    model.set_prior_offset(torch.tensor([1.0, 0.0, 0.0, -1.0]))
    after = model.predict(batch)
    prior_lo = after.terms["prior"][0, :, 1] - after.terms["prior"][0, :, 0]
    expected = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4]) / torch.tensor([0.9, 0.8, 0.7, 0.6])) + torch.tensor([1.0, 0, 0, -1.0])
    torch.testing.assert_close(prior_lo, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(after.terms["magnitude"], before.terms["magnitude"])


def test_checkpoint_carries_the_offset_and_refuses_a_changed_one(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save as st_save

    torch.manual_seed(0)
    model = build_model("i2m2", SMALL, 6).eval()
    model.set_prior_offset(torch.tensor([-2.0, -1.5, -1.0, -0.5]))
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, model, SMALL, "i2m2", 6, [f"t{i}" for i in range(6)], metrics={}, data_fingerprint="x")
    loaded, meta = load_checkpoint(path)
    torch.testing.assert_close(loaded.prior_offset, model.prior_offset)
    batch = _batch(6, seed=2)
    torch.testing.assert_close(loaded.predict(batch).combined, model.predict(batch).combined)
    # the offset is a weight: changing it breaks the checkpoint's hash
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    state["prior_offset"] = state["prior_offset"] + 1.0
    bad = tmp_path / "tampered.safetensors"
    bad.write_bytes(st_save(state, metadata=header))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(bad)


# ---- training -----------------------------------------------------------------------------------


def test_training_refits_the_prior_on_validation_without_changing_slice_auroc(tiny_cohort: Path, tmp_path: Path) -> None:
    fitted = train(tiny_cohort, tmp_path / "prior", variant="intra", config=SMALL, seed=4, **QUICK)
    plain = train(tiny_cohort, tmp_path / "none", variant="intra",
                  config=SMALL.with_updates(**{"training.calibration": "none"}), seed=4, **QUICK)
    cal = fitted.calibration
    assert cal["method"] == "prior" and cal["fitted_on"] == "val"
    assert plain.calibration["offsets"] is None
    on_disk = json.loads((tmp_path / "prior" / "metrics.json").read_text())
    assert on_disk["calibration"]["offsets"] == pytest.approx(cal["offsets"])
    fitted_heads = [h for h in HEADS if cal["per_head"][h]["fitted"]]
    assert fitted_heads, "the tiny cohort's validation split has both classes for some head"

    preds = pd.read_csv(tmp_path / "prior" / "predictions.csv")
    plain_preds = pd.read_csv(tmp_path / "none" / "predictions.csv")
    val = preds[preds["split"] == "val"]
    for h in fitted_heads:
        # the maximum-likelihood intercept makes the mean validation probability the prevalence
        assert val[f"p_{h}"].mean() == pytest.approx(val[f"y_{h}"].mean(), abs=2e-4)
        assert cal["per_head"][h]["nll_after"] <= cal["per_head"][h]["nll_before"]
        assert cal["ece_slice"]["val"][h]["mean_p_after"] == pytest.approx(cal["ece_slice"]["val"][h]["prevalence"], abs=2e-4)
    for split in ("val", "test"):
        a, b = preds[preds["split"] == split], plain_preds[plain_preds["split"] == split]
        for h in HEADS:
            y = a[f"y_{h}"].to_numpy()
            if 0 < y.sum() < len(y):
                assert auroc(y, a[f"p_{h}"].to_numpy()) == pytest.approx(auroc(y, b[f"p_{h}"].to_numpy()), abs=1e-9)
        # the experts' own probabilities are untouched
        np.testing.assert_allclose(a[f"p_magnitude_{HEADS[0]}"], b[f"p_magnitude_{HEADS[0]}"], atol=1e-6)
    model, _ = load_checkpoint(tmp_path / "prior" / "model.safetensors")
    assert model.prior_offset.tolist() == pytest.approx([cal["offsets"][h] for h in HEADS], abs=1e-6)


def test_study_map_recovers_a_known_platt_map_and_keeps_the_ranking():
    from i2m2_med.metrics.calibration import apply_study_map, fit_study_map

    rng = np.random.default_rng(0)
    s = rng.uniform(0.02, 0.98, 4000)
    logit = np.log(s / (1 - s))
    y = rng.random(s.size) < 1 / (1 + np.exp(-(0.5 * logit - 1.0)))  # true map: slope 0.5, intercept -1
    a, b, reason = fit_study_map(s, y, ridge=0.0)
    assert reason is None and a == pytest.approx(0.5, abs=0.08) and b == pytest.approx(-1.0, abs=0.1)
    p = apply_study_map(s, a, b)
    assert (np.argsort(p, kind="stable") == np.argsort(s, kind="stable")).all()  # monotone: AUROC unchanged
    # a head with one class keeps the identity and says why
    a1, b1, why = fit_study_map(s[:10], np.zeros(10))
    assert (a1, b1) == (1.0, 0.0) and "one class only" in why
    np.testing.assert_allclose(apply_study_map(s[:5], 1.0, 0.0), s[:5], rtol=1e-9, atol=1e-9)


def test_study_calibration_lowers_the_validation_ece_of_an_overconfident_score():
    from i2m2_med.metrics.calibration import fit_study_calibration

    rng = np.random.default_rng(1)
    y = rng.random((300, 4)) < 0.2
    s = np.clip(np.where(y, 0.75, 0.45) + rng.normal(0, 0.12, y.shape), 0.01, 0.99)  # ranks well, p far too high
    params, report = fit_study_calibration(s, y)
    assert params.shape == (4, 2)
    for head in report["per_head"].values():
        assert head["fitted"] and head["ece_after"] < head["ece_before"] / 2
