"""Lightning training: the losses by hand, every variant on the tiny synthetic cohort, the
metrics file, determinism, warm start, class balance and argument checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import WeightedRandomSampler

from i2m2_med.checkpoint import load_checkpoint, read_checkpoint_meta
from i2m2_med.config import load_config
from i2m2_med.data.cohort import load_cohort
from i2m2_med.data.sampling import class_weights
from i2m2_med.errors import ConfigError, UsageError
from i2m2_med.heads import HEADS
from i2m2_med.models import VARIANTS, I2M2Output, combine
from i2m2_med.training.datamodule import I2M2DataModule
from i2m2_med.training.fit import TrainerOptions, train
from i2m2_med.training.module import experts_loss, product_loss
from i2m2_med.training.results import ceilings_from_manifest, predict_dataset

QUICK = dict(epochs=1, n_boot=20, batch_size=8, options=TrainerOptions(progress=False, limit_train_batches=2))
SMALL = load_config("cpu").with_updates(image_size=32)
"""The cpu config at 32 x 32 pixels: the same networks, a quarter of the work."""


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these tiny batches gain nothing from more, and on a busy machine
    oversubscribed threads cost more than they give."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _check_unit(value) -> None:
    assert value is None or 0.0 <= value <= 1.0


# ---- losses --------------------------------------------------------------------------------------


def _terms(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: F.log_softmax(torch.randn(5, 4, 2, generator=g), dim=-1) for name in ("magnitude", "phase", "joint")}


def test_product_loss_is_the_weighted_nll_of_the_product_by_hand() -> None:
    terms = _terms()
    out = I2M2Output(terms=terms, combined=combine(terms))
    labels = torch.tensor([[1, 0, 0, 1], [0, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)
    weights = torch.tensor([[0.5, 2.0], [1.0, 1.0], [0.7, 3.0], [1.0, 1.5]])
    expected = 0.0
    for h in range(4):
        s = sum(t[:, h, :] for t in terms.values())
        logp = s - torch.logsumexp(s, dim=-1, keepdim=True)
        y = labels[:, h].long()
        w = weights[h][y]
        expected += float(-(w * logp[torch.arange(5), y]).sum() / w.sum())
    assert abs(float(product_loss(out, labels, weights)) - expected / 4) < 1e-5
    unweighted = float(product_loss(out, labels, None))
    assert unweighted != pytest.approx(float(product_loss(out, labels, weights)))


def test_experts_loss_averages_each_experts_own_nll() -> None:
    terms = _terms(1)
    out = I2M2Output(terms=terms, combined=combine(terms), mask={"phase": torch.tensor([True, True, False, False, True])})
    labels = torch.zeros(5, 4)
    labels[0, 0] = 1
    own = []
    for name, t in terms.items():
        keep = out.mask.get(name, torch.ones(5, dtype=torch.bool))
        own.append(float(sum(F.nll_loss(t[keep][:, h], labels[keep][:, h].long()) for h in range(4)) / 4))
    assert abs(float(experts_loss(out, labels, None)) - np.mean(own)) < 1e-5


# ---- data module -----------------------------------------------------------------------------------


def test_class_weighting_modes(tiny_cohort: Path) -> None:
    cohort = load_cohort(tiny_cohort)
    cfg = load_config("cpu")
    dm = I2M2DataModule(cfg.with_updates(**{"training.class_weighting": "loss"}), cohort=cohort)
    expected = class_weights(dm.datasets["train"].label_matrix())
    torch.testing.assert_close(dm.class_weights, expected)
    assert dm.sample_weights is None
    assert not isinstance(dm.train_dataloader().sampler, WeightedRandomSampler)
    dm = I2M2DataModule(cfg.with_updates(**{"training.class_weighting": "sampler"}), cohort=cohort)
    assert dm.class_weights is None
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, WeightedRandomSampler) and sampler.num_samples == len(dm.datasets["train"])
    assert len(dm.val_dataloader().dataset) == cohort.n_slices("val")


def test_ceilings_are_read_from_the_manifest(tiny_cohort: Path) -> None:
    manifest = json.loads((tiny_cohort / "manifest.json").read_text())
    ceilings = ceilings_from_manifest(manifest)
    assert ceilings is not None and set(ceilings["label_noise"]["auroc"]) == set(HEADS)
    assert ceilings["label_noise"]["mean_pathologies"] == pytest.approx(1.0)  # no label noise: a perfect predictor
    learnable = ceilings["learnable"]
    assert learnable["episode_bayes_auroc"] == manifest["episode_bayes_auroc"]
    assert learnable["slice_evidence_auroc"] == manifest["slice_evidence_auroc"]
    evidence = [manifest["slice_evidence_auroc"][h] for h in ("acl", "mtear", "cart")
                if manifest["slice_evidence_auroc"][h] is not None]
    assert learnable["mean_pathologies"] == pytest.approx(sum(evidence) / len(evidence))
    assert ceilings_from_manifest(None) is None


# ---- training --------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_trains_and_writes_its_metrics(variant: str, tiny_cohort: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = train(tiny_cohort, run, variant=variant, config=SMALL, seed=3, **QUICK)
    on_disk = json.loads((run / "metrics.json").read_text())
    assert result is not None and result.to_json() == on_disk  # the typed result carries the file's content
    assert on_disk["variant"] == variant == result.variant and on_disk["data_fingerprint"] == result.data_fingerprint
    experts = list(VARIANTS[variant])
    assert on_disk["experts"] == experts
    for split in ("val", "test"):
        block = on_disk[split]
        assert set(block["summary"]) == {"combined", "position_baseline", *experts}
        assert set(block["experts"]) == set(experts)
        # beside every model number, what the slice position alone gives (fitted on train)
        baseline = block["position_baseline"]
        assert baseline["clusters"] == "subjects" == block["combined"]["clusters"]
        assert baseline["slice"]["n"] == block["combined"]["slice"]["n"]
        assert set(baseline["in_view"]["per_head"]) == set(HEADS)
        for name, levels in block["summary"].items():
            for level in ("slice", "study", "in_view"):
                row = levels[level]
                for key in (*HEADS, "mean_pathologies", "mean_all"):
                    _check_unit(row[key])
        combined = block["combined"]["slice"]
        # in view: each head on the slices of its episodes (the tiny cohort has episodes.csv)
        view = load_cohort(tiny_cohort).in_view
        in_view = block["combined"]["in_view"]["per_head"]
        ids = [st.study_id for st in load_cohort(tiny_cohort).studies_in(split)]
        for h, head in enumerate(HEADS):
            assert in_view[head]["n"] == sum(int(view[i][:, h].sum()) for i in ids)
        assert combined["n"] == load_cohort(tiny_cohort).n_slices(split)
        assert combined["mean_all"]["auroc"] is not None  # some head has both classes
    t = on_disk["training"]
    assert t["epochs_run"] == 1 and t["train_slices"] == 2 * 8 and t["samples_per_s"] > 0
    assert (result.epochs_run, result.train_slices, result.samples_per_s) == (1, 16, t["samples_per_s"])
    assert result.experts == tuple(experts) and result.checkpoint == run / "model.safetensors"
    assert result.summary("test") == on_disk["test"]["summary"]["combined"]["slice"]
    assert on_disk["label_noise_ceiling_mean"] == pytest.approx(1.0)
    assert on_disk["inference"]["test"]["slices_per_s"] > 0
    model, meta = load_checkpoint(run / "model.safetensors", expected_variant=variant)
    assert meta.data_fingerprint == result.data_fingerprint and meta.n_tabular == 14
    assert (run / "logs" / "product" / "metrics.csv").is_file()
    preds = pd.read_csv(run / "predictions.csv")
    assert len(preds) == combined["n"] + on_disk["val"]["combined"]["slice"]["n"]
    assert preds[[f"p_{h}" for h in HEADS]].to_numpy().min() >= 0.0
    # the checkpoint reproduces the written test predictions, combined and per expert
    from i2m2_med.data.dataset import SliceDataset

    pred = predict_dataset(model, SliceDataset(load_cohort(tiny_cohort), "test", image_size=meta.config.image_size))
    written = preds[preds["split"] == "test"]
    assert list(written["study_id"]) == list(pred["study_id"])
    np.testing.assert_allclose(written[[f"p_{h}" for h in HEADS]].to_numpy(), pred["p"]["combined"], atol=2e-6)
    expert = experts[-1]
    np.testing.assert_allclose(written[[f"p_{expert}_{h}" for h in HEADS]].to_numpy(), pred["p"][expert], atol=2e-6)


def test_same_seed_same_model_other_seed_other_model(tiny_cohort: Path, tmp_path: Path) -> None:
    shas = []
    vals = []
    for i, seed in enumerate((5, 5, 6)):
        result = train(tiny_cohort, tmp_path / f"run{i}", variant="intra", config=SMALL, seed=seed, **QUICK)
        shas.append(read_checkpoint_meta(tmp_path / f"run{i}" / "model.safetensors").weights_sha256)
        vals.append(result.summary("val")["mean_all"])
    assert shas[0] == shas[1] and vals[0] == vals[1]
    assert shas[2] != shas[0]


def test_warm_start_trains_the_experts_then_the_product(tiny_cohort: Path, tmp_path: Path) -> None:
    cfg = SMALL.with_updates(**{"training.warm_start_epochs": 1})
    result = train(tiny_cohort, tmp_path / "run", variant="i2m2", config=cfg, warm_start=True, **QUICK)
    stages = result.stages
    assert [s.objective for s in stages] == ["experts", "product"]
    assert stages[0].history[0]["objective"] == "experts"
    assert result.metrics["training"]["warm_start"] is True and result.epochs_run == 2 == sum(s.epochs_run for s in stages)
    meta = read_checkpoint_meta(tmp_path / "run" / "model.safetensors")
    assert meta.config.training.warm_start is True and meta.extra["warm_start"] is True
    # the joint model warm-started for longer: the stage runs its epochs
    cfg = cfg.with_updates(**{"training.warm_start_joint_epochs": 2})
    longer = train(tiny_cohort, tmp_path / "run2", variant="i2m2", config=cfg, warm_start=True, **QUICK)
    assert [s.epochs_run for s in longer.stages] == [2, 1]


def test_the_joint_model_can_warm_start_longer_than_the_other_experts() -> None:
    """warm_start_joint_epochs: the stage lasts as long as the joint model's epochs; after their
    own epochs the other experts are neither run nor updated, and each expert's learning rate
    follows a cosine over its own epochs."""
    from i2m2_med.models import build_model
    from i2m2_med.training.fit import _strategy, warm_start_plan
    from i2m2_med.training.module import I2M2Module

    cfg = SMALL.with_updates(**{"training.warm_start_epochs": 2, "training.warm_start_joint_epochs": 4})
    model = build_model("i2m2", cfg, 14)
    stage, per = warm_start_plan(cfg, model.expert_names)
    assert stage == 4 and per == {"magnitude": 2, "phase": 2, "tabular": 2, "joint": 4}
    assert warm_start_plan(SMALL.with_updates(**{"training.warm_start_epochs": 2}), model.expert_names) == (2, None)
    assert warm_start_plan(cfg, ("magnitude", "phase"))[1] is None  # intra has no joint model
    assert _strategy("ddp", True) == "ddp_find_unused_parameters_true"  # idle experts have no gradients
    assert (_strategy("ddp", False), _strategy("auto", True)) == ("ddp", "auto")
    module = I2M2Module(model, cfg, objective="experts", max_epochs=stage, expert_epochs=per)
    assert module.active_experts(1) == ("magnitude", "phase", "tabular", "joint")
    assert module.active_experts(2) == ("joint",)
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    base = {g["name"]: g["lr"] for g in opt.param_groups}
    opt.step()  # no gradients yet: nothing moves
    sched.step()  # epoch 1
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["magnitude"] == pytest.approx(base["magnitude"] * 0.5)  # half-way through 2 epochs
    assert lrs["joint"] == pytest.approx(base["joint"] * 0.5 * (1 + np.cos(np.pi / 4)))
    sched.step()  # epoch 2: the others are done
    assert {g["name"]: g["lr"] for g in opt.param_groups}["magnitude"] == pytest.approx(0.0, abs=1e-12)

    g = torch.Generator().manual_seed(0)
    batch = {"magnitude": torch.rand(4, 1, 32, 32, generator=g), "phase": torch.rand(4, 1, 32, 32, generator=g) * 6 - 3,
             "tabular": torch.rand(4, 14, generator=g)}
    labels = (torch.rand(4, 4, generator=g) > 0.5).float()
    out = model(batch, only=module.active_experts(2))
    assert set(out.terms) == {"joint"}
    before = {name: [p.detach().clone() for p in model.experts[name].parameters()] for name in model.expert_names}
    opt.zero_grad(set_to_none=True)
    experts_loss(out, labels, None).backward()
    for group in opt.param_groups:
        group["lr"] = 1e-2
    opt.step()
    for name in model.expert_names:
        moved = any(not torch.equal(a, b) for a, b in zip(before[name], model.experts[name].parameters()))
        assert moved == (name == "joint"), name


def test_a_finished_expert_is_validated_from_its_last_logits(tiny_cohort: Path, tmp_path: Path, monkeypatch) -> None:
    """Once the other experts have finished their warm-start epochs, validation reuses their
    logits of their last epoch instead of running them again: the same validation figures, with
    fewer runs of exactly those experts."""
    from collections import Counter

    from i2m2_med.models import I2M2Model

    cfg = SMALL.with_updates(**{"training.warm_start_epochs": 1, "training.warm_start_joint_epochs": 3})
    original = I2M2Model.expert_logits

    def run(name: str, reuse: bool) -> tuple[Counter, list]:
        calls: Counter = Counter()

        def counting(self, expert, batch, present):
            if not self.training:
                calls[expert] += 1
            return original(self, expert, batch, present)

        monkeypatch.setattr(I2M2Model, "expert_logits", counting)
        if not reuse:
            monkeypatch.setattr("i2m2_med.training.module.I2M2Module._finished_experts", lambda self, epoch: ())
        result = train(tiny_cohort, tmp_path / name, variant="i2m2", config=cfg, warm_start=True, **QUICK)
        monkeypatch.undo()
        return calls, [(s.objective, s.history) for s in result.stages]

    with_reuse, history = run("reuse", True)
    without, history_without = run("plain", False)
    assert history == history_without
    saved = {name: without[name] - with_reuse[name] for name in ("magnitude", "phase", "tabular", "joint")}
    assert saved["joint"] == 0 and saved["magnitude"] > 0
    assert saved["magnitude"] == saved["phase"] == saved["tabular"]


def test_finetune_learning_rate_scale_reaches_the_optimiser() -> None:
    from i2m2_med.models import build_model
    from i2m2_med.training.module import I2M2Module

    cfg = SMALL.with_updates(**{"training.finetune_lr_scale": 0.1})
    model = build_model("i2m2", cfg, 14)
    full = I2M2Module(model, cfg).configure_optimizers()["optimizer"]
    scaled = I2M2Module(model, cfg, lr_scale=cfg.training.finetune_lr_scale).configure_optimizers()["optimizer"]
    for a, b in zip(full.param_groups, scaled.param_groups):
        assert b["lr"] == pytest.approx(0.1 * a["lr"]) and b["weight_decay"] == a["weight_decay"]
    assert {g["name"]: g["lr"] for g in full.param_groups}["joint"] == cfg.optim.joint.lr
    with pytest.raises(ConfigError):
        SMALL.with_updates(**{"training.finetune_lr_scale": 0.0})


def test_bad_arguments_are_one_line_errors(tiny_cohort: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--epochs"):
        train(tiny_cohort, tmp_path / "r", epochs=0)
    with pytest.raises(UsageError, match="unknown variant"):
        train(tiny_cohort, tmp_path / "r", variant="fusion")
    with pytest.raises(UsageError, match="unknown strategy"):
        train(tiny_cohort, tmp_path / "r", options=TrainerOptions(strategy="bogus"))
    with pytest.raises(UsageError, match="--devices"):
        train(tiny_cohort, tmp_path / "r", options=TrainerOptions(devices=0))
    with pytest.raises(UsageError, match="--accelerator"):
        train(tiny_cohort, tmp_path / "r", options=TrainerOptions(accelerator="abacus"))
    with pytest.raises(ConfigError, match="no such config file"):
        train(tiny_cohort, tmp_path / "r", config=str(tmp_path / "missing.yaml"))
    with pytest.raises(UsageError, match="no such data folder"):
        train(tmp_path / "nothing", tmp_path / "r")
    for err in (UsageError("x", "a\nb"),):
        assert "\n" not in err.one_line()


def test_study_operating_points_are_chosen_on_validation_and_travel_with_the_model(tiny_cohort: Path, tmp_path: Path) -> None:
    """Per head, a threshold on the calibrated study probability chosen on the validation studies
    (or the reason there is none), in metrics.json and in the checkpoint; diagnose writes it to
    the run's model.json."""
    from i2m2_med.metrics.thresholds import operating_point
    from pipelines import diagnose

    run = tmp_path / "run"
    result = train(tiny_cohort, run, variant="i2m2", config=SMALL, seed=2, **QUICK)
    points = result.metrics["operating_points"]
    assert points["rule"] == "youden" and points["level"] == "study" and points["fitted_on"] == "val"
    cohort = load_cohort(tiny_cohort)
    val_ids = [s.study_id for s in cohort.studies_in("val")]
    for h, entry in points["per_head"].items():
        positives = sum(bool(np.asarray(cohort.labels[sid])[:, HEADS.index(h)].any()) for sid in val_ids)
        assert entry["n_pos"] == positives and entry["n_pos"] + entry["n_neg"] == len(val_ids)
        if entry["threshold"] is None:
            assert entry["reason"] == f"no {'positive' if positives == 0 else 'negative'} study in the validation split"
        else:
            assert 0.0 <= entry["val_sensitivity"] <= 1.0 and 0.0 <= entry["val_specificity"] <= 1.0
    meta = read_checkpoint_meta(run / "model.safetensors")
    assert meta.metrics["operating_points"] == points
    # the threshold is the Youden point of the validation studies' reported probabilities
    out = tmp_path / "diag"
    diagnose.run(tiny_cohort / "h5", out, model=str(run), progress=False, keep_ids=True)
    rows = pd.read_csv(out / "predictions.csv", dtype={"study_id": str}).set_index("study_id")
    for h, entry in points["per_head"].items():
        if entry["threshold"] is not None:
            y = [bool(np.asarray(cohort.labels[sid])[:, HEADS.index(h)].any()) for sid in val_ids]
            p = [float(rows.loc[sid, f"p_{h}"]) for sid in val_ids]
            assert operating_point(y, p) == pytest.approx(entry["threshold"], abs=1e-5)
    assert json.loads((out / "model.json").read_text())["operating_points"] == points
