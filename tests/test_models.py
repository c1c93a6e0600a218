"""Experts, joint model, variants: structure, training steps, missing modalities, paper architecture."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from i2m2_med.config import load_config
from i2m2_med.errors import UsageError
from i2m2_med.models import (
    VARIANTS,
    I2M2Model,
    build_model,
    combine,
    nll,
    per_expert_param_groups,
)
from i2m2_med.models.experts import ImageExpert, JointModel, image_expert_flops
from i2m2_med.models.preact_resnet import PreActBlock

N_TAB = 5
B = 6


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small convolutions run fastest on one thread when the cores are shared; restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    """The cpu config, shrunk further so that every variant trains in well under a second."""
    return load_config("cpu").with_updates(
        **{
            "image_size": 32,
            "model.image_expert.stem_width": 8,
            "model.image_expert.widths": [8, 8, 16, 16],
            "model.image_expert.groups": 4,
            "model.image_expert.pool_size": 2,
            "model.tabular_expert.hidden": [16],
            "optim.magnitude.lr": 1e-2,
            "optim.phase.lr": 1e-2,
            "optim.tabular.lr": 1e-2,
            "optim.joint.lr": 1e-2,
        }
    )


def _batch(size: int = 32, n: int = B, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "magnitude": torch.rand(n, 1, size, size, generator=g),
        "phase": (torch.rand(n, 1, size, size, generator=g) * 2 - 1) * torch.pi,
        "tabular": torch.randn(n, N_TAB, generator=g),
        "labels": (torch.rand(n, 4, generator=g) > 0.5).float(),
        "present": {"magnitude": True, "phase": True, "tabular": True},
        "study_id": ["s"] * n,
    }


def _model(variant: str, config, seed: int = 0) -> I2M2Model:
    torch.manual_seed(seed)
    return build_model(variant, config, N_TAB)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_builds_and_returns_every_expert_term(variant, tiny):
    model = _model(variant, tiny)
    assert model.expert_names == VARIANTS[variant]
    out = model(_batch())
    assert list(out.terms) == list(VARIANTS[variant])
    assert out.dropped == [] and out.mask == {}
    for name, term in out.terms.items():
        assert term.shape == (B, 4, 2)
        assert torch.allclose(term.exp().sum(-1), torch.ones(B, 4), atol=1e-5), name
        assert torch.allclose(term, torch.log_softmax(out.logits[name], -1))
    assert torch.allclose(out.combined, combine(out.terms))
    p1 = out.p1()
    assert p1.shape == (B, 4) and bool(((p1 >= 0) & (p1 <= 1)).all())


def _fit(model: I2M2Model, config, batch: dict, steps: int = 25) -> tuple[float, float]:
    """Train ``model`` on one batch for ``steps`` AdamW steps; its eval-mode NLL before and after."""
    opt = torch.optim.AdamW(per_expert_param_groups(model, config))

    def eval_loss() -> float:
        return nll(model.predict(batch).combined, batch["labels"]).item()

    before = eval_loss()
    model.train()
    for _ in range(steps):
        loss = nll(model(batch).combined, batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, eval_loss()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_trains_and_predicts(variant, tiny):
    model = _model(variant, tiny)
    batch = _batch()
    before, after = _fit(model, tiny, batch)
    assert after < 0.7 * before, (before, after)
    # predict: eval mode inside, no graph, training mode restored
    model.train()
    pred = model.predict(batch)
    assert model.training and not pred.combined.requires_grad
    assert torch.allclose(pred.combined, model.predict(batch).combined)  # deterministic in eval


# variant -> removed modality -> experts dropped (None: nothing left, UsageError)
MISSING = {
    "mag": {"magnitude": None, "phase": [], "tabular": []},
    "phase": {"magnitude": [], "phase": None, "tabular": []},
    "tab": {"magnitude": [], "phase": [], "tabular": None},
    "intra": {"magnitude": ["magnitude"], "phase": ["phase"], "tabular": ["tabular"]},
    "inter": {"magnitude": None, "phase": None, "tabular": []},
    "i2m2": {"magnitude": ["magnitude", "joint"], "phase": ["phase", "joint"], "tabular": ["tabular"]},
    "i2m2-notab": {"magnitude": ["magnitude", "joint"], "phase": ["phase", "joint"], "tabular": []},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("modality", ["magnitude", "phase", "tabular"])
@pytest.mark.parametrize("how", ["absent", "flagged"])
def test_missing_modality_drops_experts_never_crashes(variant, modality, how, tiny):
    model = _model(variant, tiny).eval()
    full = model(_batch())
    batch = _batch()
    if how == "absent":  # the contract: a missing modality is absent from the batch
        del batch[modality]
        batch["present"][modality] = False
    else:  # present in the batch but flagged absent for every sample
        batch["present"][modality] = torch.zeros(B, dtype=torch.bool)
    expected = MISSING[variant][modality]
    if expected is None:
        with pytest.raises(UsageError, match=f"variant '{variant}': no expert can run: missing .*{modality}"):
            model(batch)
        return
    out = model(batch)
    assert out.dropped == expected
    assert list(out.terms) == [e for e in VARIANTS[variant] if e not in expected]
    for name, term in out.terms.items():  # remaining experts are unaffected
        assert torch.allclose(term, full.terms[name], atol=1e-6)
    assert torch.allclose(out.combined, combine(out.terms), atol=1e-6)


def test_joint_model_without_tabular_reads_the_images_alone(tiny):
    model = _model("i2m2", tiny).eval()
    joint = model.experts["joint"]
    torch.manual_seed(0)
    for layer in joint.film:  # a trained FiLM: not the identity
        torch.nn.init.normal_(layer.weight, std=0.5)
        torch.nn.init.normal_(layer.bias, std=0.5)
    with_tab = model(_batch())
    batch = _batch()
    del batch["tabular"]
    batch["present"]["tabular"] = False
    without = model(batch)
    assert without.dropped == ["tabular"] and "joint" in without.terms
    assert not torch.allclose(without.terms["joint"], with_tab.terms["joint"])
    # without the vector the joint model is its image path: FiLM at the identity
    for layer in joint.film:
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    assert torch.allclose(model(_batch()).terms["joint"], without.terms["joint"], atol=1e-6)
    # flagged absent for one sample only: that sample alone reads the images alone
    for layer in joint.film:
        torch.nn.init.normal_(layer.weight, std=0.5)
    flags = torch.ones(B, dtype=torch.bool)
    flags[1] = False
    batch = _batch()
    batch["present"]["tabular"] = flags
    mixed = model(batch)
    assert torch.allclose(mixed.terms["joint"][1], without.terms["joint"][1], atol=1e-6)
    assert torch.allclose(mixed.terms["joint"][0], model(_batch()).terms["joint"][0], atol=1e-6)


def test_tabular_dropout_withholds_the_vector_in_training_only(tiny):
    cfg = tiny.with_updates(**{"model.joint.tabular_dropout": 0.5})
    model = build_model("inter", cfg, N_TAB)
    joint = model.experts["joint"]
    for layer in joint.film:
        torch.nn.init.normal_(layer.weight, std=0.5)
    model.eval()
    assert torch.equal(model(_batch()).terms["joint"], model(_batch()).terms["joint"])  # eval: deterministic
    model.train()
    joint.dropout.p = 0.0
    torch.manual_seed(1)
    a = model(_batch()).terms["joint"]
    torch.manual_seed(2)
    b = model(_batch()).terms["joint"]
    assert not torch.allclose(a, b)


def test_per_sample_absence_masks_the_term_for_those_samples(tiny):
    model = _model("i2m2", tiny).eval()
    batch = _batch()
    flags = torch.ones(B, dtype=torch.bool)
    flags[2] = False
    batch["present"]["phase"] = flags
    out = model(batch)
    assert out.dropped == []
    assert set(out.mask) == {"phase", "joint"} and torch.equal(out.mask["phase"], flags)
    kept = {k: v[2:3] for k, v in out.terms.items() if k not in ("phase", "joint")}
    assert torch.allclose(out.combined[2:3], combine(kept), atol=1e-6)
    assert torch.allclose(out.combined[0:1], combine({k: v[0:1] for k, v in out.terms.items()}), atol=1e-6)
    # the same flags as uncollated per-sample dicts
    batch_list = dict(batch, present=[{"magnitude": True, "phase": bool(f), "tabular": True} for f in flags])
    assert torch.allclose(model(batch_list).combined, out.combined)
    # a sample with nothing left is an error, not a silent uniform guess
    mag = _model("mag", tiny).eval()
    batch["present"]["magnitude"] = flags
    with pytest.raises(UsageError, match="no expert can run for 1 sample"):
        mag(batch)


def test_tabular_variants_need_tabular_features(tiny):
    for variant in ("tab", "intra", "i2m2"):
        with pytest.raises(UsageError, match="needs tabular features but n_tabular is 0"):
            build_model(variant, tiny, 0)
    inter = build_model("inter", tiny, 0)
    assert inter.required_modalities("joint") == ("magnitude", "phase")
    batch = _batch()
    del batch["tabular"]
    assert list(inter(batch).terms) == ["joint"]
    with pytest.raises(UsageError, match="unknown variant"):
        build_model("late-fusion", tiny, 0)


def test_required_modalities_per_variant(tiny):
    assert _model("i2m2", tiny).required_modalities("joint") == ("magnitude", "phase")  # tabular: optional
    assert _model("inter", tiny).modalities == ("magnitude", "phase", "tabular")  # fused when present
    assert _model("i2m2-notab", tiny).required_modalities("joint") == ("magnitude", "phase")
    assert _model("i2m2-notab", tiny).modalities == ("magnitude", "phase")
    assert _model("intra", tiny).modalities == ("magnitude", "phase", "tabular")
    none = tiny.with_updates(**{"model.joint.tabular_fusion": "none"})
    assert build_model("i2m2", none, N_TAB).required_modalities("joint") == ("magnitude", "phase")


def test_bad_inputs_are_usage_errors(tiny):
    model = _model("i2m2", tiny)
    batch = _batch()
    batch["tabular"] = torch.randn(B, N_TAB + 1)
    with pytest.raises(UsageError, match=r"tabular must be a float tensor \[B, 5\]"):
        model(batch)
    batch = _batch()
    batch["magnitude"] = batch["magnitude"][:, 0]
    with pytest.raises(UsageError, match=r"magnitude must be a float tensor \[B, 1, H, W\]"):
        model(batch)
    batch = _batch()
    batch["phase"] = batch["phase"][:3]
    with pytest.raises(UsageError, match="disagree on the batch size"):
        model(batch)


def test_film_starts_as_identity_and_concat_uses_tabular(tiny):
    batch, other = _batch(), _batch(seed=1)
    torch.manual_seed(0)
    film = JointModel(tiny.model.image_expert, tiny.model.joint, N_TAB).eval()
    a = film(batch["magnitude"], batch["phase"], batch["tabular"])
    b = film(batch["magnitude"], batch["phase"], other["tabular"])
    assert torch.allclose(a, b)  # zero-initialised modulation
    with torch.no_grad():
        for layer in film.film:
            layer.bias.normal_()
    assert not torch.allclose(film(batch["magnitude"], batch["phase"], batch["tabular"]), a)
    concat_cfg = tiny.with_updates(**{"model.joint.tabular_fusion": "concat"})
    concat = JointModel(concat_cfg.model.image_expert, concat_cfg.model.joint, N_TAB).eval()
    assert concat.head.in_features == 16 * 2 * 2 + concat_cfg.model.joint.tabular_hidden
    assert not torch.allclose(
        concat(batch["magnitude"], batch["phase"], batch["tabular"]),
        concat(batch["magnitude"], batch["phase"], other["tabular"]),
    )


def test_param_groups_cover_every_parameter_once_with_the_expert_settings(tiny):
    config = tiny.with_updates(**{"model.prior": True})
    model = build_model("i2m2", config, N_TAB)
    groups = per_expert_param_groups(model, config)
    assert [g["name"] for g in groups] == ["magnitude", "phase", "tabular", "joint", "prior"]
    for g in groups:
        settings = getattr(config.optim, g["name"])
        assert (g["lr"], g["weight_decay"]) == (settings.lr, settings.weight_decay)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    out = model(_batch())
    assert list(out.terms) == ["magnitude", "phase", "tabular", "joint", "prior"]


def test_paper_architecture_counts_and_one_training_step():
    paper = load_config("paper")
    torch.manual_seed(0)
    expert = ImageExpert(1, paper.model.image_expert)
    net = expert.backbone
    assert (net.stem.kernel_size, net.stem.stride, net.stem.in_channels, net.stem.out_channels) == ((3, 3), (1, 1), 1, 64)
    assert not any(isinstance(m, nn.MaxPool2d) for m in expert.modules())
    assert [len(s) for s in net.stages] == [2, 2, 2, 2]
    assert [s[0].conv1.out_channels for s in net.stages] == [64, 128, 256, 512]
    assert [s[0].conv1.stride for s in net.stages] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    norms = [m for m in expert.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 16 and {m.num_groups for m in norms} == {32}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in expert.modules())
    assert sum(isinstance(m, PreActBlock) and m.shortcut is not None for m in expert.modules()) == 3
    assert net.pool.output_size == (10, 10)
    assert (expert.head.in_features, expert.head.out_features) == (512 * 10 * 10, 8)
    n_params = sum(p.numel() for p in expert.parameters())
    assert n_params == 11_574_472  # PreActResNet-18 (11.17 M) + 512*100*8 linear heads

    # one forward + backward on a small input (80x80 ends at exactly 10x10)
    x = torch.randn(2, 1, 80, 80)
    out = expert(x)
    assert out.shape == (2, 4, 2)
    out.logsumexp(-1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in expert.parameters())

    joint = JointModel(paper.model.image_expert, paper.model.joint, N_TAB)
    assert joint.backbone.stem.in_channels == 2  # early fusion of magnitude and phase


def test_paper_flops_per_320_slice():
    paper = load_config("paper")
    analytic = image_expert_flops(paper.model.image_expert, 320)
    with torch.device("meta"):
        expert = ImageExpert(1, paper.model.image_expert)
        with FlopCounterMode(display=False) as counter:
            expert(torch.empty(1, 1, 320, 320))
    counted = counter.get_total_flops()
    assert counted == analytic
    # 55.4 G multiply-accumulates = 110.8 GFLOPs per slice per image expert
    assert analytic / 1e9 == pytest.approx(110.85, abs=0.01)
    cpu = load_config("cpu")
    assert image_expert_flops(cpu.model.image_expert, cpu.image_size) / 1e6 == pytest.approx(17.92, abs=0.01)


def test_same_seed_same_model(tiny):
    a, b = _model("i2m2", tiny, seed=7), _model("i2m2", tiny, seed=7)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


# ---- the phase input filter --------------------------------------------------------------------


def test_highpass_phase_removes_smooth_phase_and_wraps_keeps_local_bumps():
    import math

    from i2m2_med.models.phase_filter import PhaseHighPass

    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    background = 0.15 * xx + 0.002 * (yy - 30) ** 2 + 2.0  # about 10 rad across: several wraps
    bump = ((xx - 30) ** 2 + (yy - 20) ** 2 < 9).float()
    wrap = lambda p: torch.remainder(p + math.pi, 2 * math.pi) - math.pi  # noqa: E731
    f = PhaseHighPass(4.0)
    out = f(wrap(background + bump)[None, None])[0, 0]
    inner = torch.zeros(64, 64, dtype=torch.bool)
    inner[12:52, 12:52] = True
    inner[10:31, 19:42] = False  # away from the bump and the border
    assert out[inner].abs().max() < 0.05  # smooth phase and its wraps are gone
    assert 0.6 < out[20, 30] < 1.0  # a 1-rad bump of radius 3 px keeps most of its amplitude
    # the same bump with the opposite sign gives about the opposite output; a constant gives zero
    neg = f(wrap(background - bump)[None, None])[0, 0]
    assert neg[20, 30] == pytest.approx(-out[20, 30].item(), abs=0.1)
    assert f(torch.full((1, 1, 16, 16), 2.5)).abs().max() < 1e-5
    assert sum(p.numel() for p in f.parameters()) == 0 and "kernel" not in f.state_dict()


def test_phase_filter_config_reaches_the_phase_expert_and_the_joint_model(tiny):
    from i2m2_med.errors import ConfigError
    from i2m2_med.models.phase_filter import PhaseHighPass

    cfg = tiny.with_updates(**{"model.phase_input.filter": "highpass", "model.phase_input.sigma_px": 3.0})
    model = _model("i2m2", cfg)
    assert isinstance(model.experts["phase"].input_filter, PhaseHighPass)
    assert isinstance(model.experts["joint"].phase_filter, PhaseHighPass)
    assert isinstance(model.experts["magnitude"].input_filter, nn.Identity)
    assert model.experts["phase"].input_filter.sigma == 3.0
    # same parameters as the unfiltered model: checkpoints stay interchangeable in shape
    assert model.state_dict().keys() == _model("i2m2", tiny).state_dict().keys()
    out = model(_batch())
    assert torch.isfinite(out.combined).all()
    # the phase expert's output changes with the phase, and only through the filter
    batch = _batch()
    shifted = dict(batch, phase=torch.remainder(batch["phase"] + 1.0 + torch.pi, 2 * torch.pi) - torch.pi)
    model.eval()
    a, b = model(batch).terms["phase"], model(shifted).terms["phase"]
    torch.testing.assert_close(a, b, atol=2e-4, rtol=0)  # a global phase offset is removed
    with pytest.raises(ConfigError):
        tiny.with_updates(**{"model.phase_input.filter": "lowpass"})


@pytest.mark.parametrize("stride, size, side", [(1, 64, 64), (2, 64, 32), (2, 63, 32)])
def test_stem_stride_sets_stage0_side_and_flops(stride, size, side):
    cfg = load_config("cpu").model.image_expert.model_copy(update={"stem_stride": stride})
    with torch.device("meta"):
        expert = ImageExpert(1, cfg)
        assert expert.backbone.stem(torch.empty(1, 1, size, size)).shape[-1] == side
        with FlopCounterMode(display=False) as counter:
            expert(torch.empty(1, 1, size, size))
    assert counter.get_total_flops() == image_expert_flops(cfg, size)
    assert cfg.feature_size(size) == -(-side // 8)  # three halving stages after stage 0
    assert expert.backbone.stem.kernel_size == (3, 3) and expert.backbone.stem.padding == (1, 1)
