"""Saliency maps of the image experts and integrated-gradients attributions of the tabular expert
(i2m2_med.evidence.saliency / tabular_attributions): where the evidence is, that the numbers add
up, and that the caller's model is left untouched."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from i2m2_med.config import load_config
from i2m2_med.errors import UsageError
from i2m2_med.evidence import saliency, tabular_attributions
from i2m2_med.heads import HEADS
from i2m2_med.models import build_model

torch.set_num_threads(1)
SIZE = 32


class QuadrantExpert(nn.Module):
    """An image expert whose log-odds for every head is 4 x the mean brightness (ReLU of the
    image, feature channel 0) over the top-left quadrant; channel 1 (the dark pixels) is unused.
    The evidence is the bright pixels of that quadrant and nothing else."""

    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            conv.weight.copy_(torch.tensor([[[[1.0]]], [[[-1.0]]]]))
            conv.bias.zero_()
        self.backbone = nn.Module()
        self.backbone.stages = nn.ModuleList([nn.Sequential(conv, nn.ReLU())])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone.stages[0](x)
        log_odds = 4.0 * features[:, 0, : SIZE // 2, : SIZE // 2].mean(dim=(1, 2))  # [B]
        z1 = log_odds[:, None].expand(-1, len(HEADS))
        return torch.stack([torch.zeros_like(z1), z1], dim=-1)


def quadrant_model() -> SimpleNamespace:
    return SimpleNamespace(experts=nn.ModuleDict({"magnitude": QuadrantExpert()}), expert_names=("magnitude",))


SQUARE = (slice(4, 10), slice(4, 10))  # bright square inside the top-left quadrant


def square_sample() -> dict:
    x = -torch.ones(1, SIZE, SIZE)
    x[0, SQUARE[0], SQUARE[1]] = 1.0
    return {"magnitude": x, "present": {"magnitude": True}}


def test_gradcam_lights_up_the_pixels_that_carry_the_evidence():
    cam = saliency(quadrant_model(), square_sample(), "magnitude", "acl", method="gradcam")
    assert cam.shape == (SIZE, SIZE) and cam.dtype == np.float32
    assert 0.0 <= cam.min() and cam.max() <= 1.0 + 1e-6
    inside = cam[SQUARE].mean()
    outside = cam[SIZE // 2 :, SIZE // 2 :].mean()
    assert inside > 0.9 and outside < 0.05, (inside, outside)


def test_occlusion_is_the_signed_log_odds_drop_where_the_evidence_is():
    occ = saliency(quadrant_model(), square_sample(), "magnitude", "cart", method="occlusion", mask_size=4, overlap=0.5)
    assert occ.shape == (SIZE, SIZE)
    # hiding the bright square lowers the log-odds: positive evidence there
    assert occ[6:8, 6:8].min() > 0.05
    # occluding far from it changes nothing
    assert np.abs(occ[SIZE // 2 + 2 :, SIZE // 2 + 2 :]).max() < 1e-6
    # at most the whole square's share of the 4 nats can be removed
    assert occ.max() <= 4.0 * 36 / 256 + 1e-5


def test_integrated_gradients_put_the_log_odds_on_the_square_and_add_up():
    """The quadrant expert's log-odds rise with the bright square; integrated gradients from a
    blurred copy place the difference there, and their sum is that difference (completeness)."""
    from i2m2_med.evidence import _blurred

    sample = square_sample()
    ig = saliency(quadrant_model(), sample, "magnitude", "mtear", method="integrated_gradients", steps=256)
    assert ig.shape == (SIZE, SIZE) and ig.dtype == np.float32
    net = QuadrantExpert()
    x = sample["magnitude"][None]
    with torch.no_grad():
        gain = float(net(x)[0, 1, 1] - net(_blurred(x, SIZE / 16.0))[0, 1, 1])
    assert gain > 0.1 and float(ig.sum()) == pytest.approx(gain, abs=1e-3)
    assert np.abs(ig[SIZE // 2 :, :]).max() < 1e-6 and np.abs(ig[:, SIZE // 2 :]).max() < 1e-6  # outside the quadrant: nothing
    top = np.unravel_index(np.argmax(ig), ig.shape)
    assert SQUARE[0].start <= top[0] < SQUARE[0].stop and SQUARE[1].start <= top[1] < SQUARE[1].stop


@pytest.fixture(scope="module")
def i2m2_model():
    torch.manual_seed(0)
    return build_model("i2m2", load_config("cpu"), 14).eval()


def test_real_experts_give_finite_maps_and_leave_the_model_untouched(i2m2_model):
    before = {k: v.clone() for k, v in i2m2_model.state_dict().items()}
    size = int(i2m2_model.config.image_size)
    g = torch.Generator().manual_seed(1)
    sample = {
        "magnitude": torch.rand(1, size, size, generator=g),
        "phase": torch.rand(1, size, size, generator=g) * 2 - 1,
        "tabular": torch.rand(14, generator=g),
        "present": {"magnitude": True, "phase": True},
    }
    for expert in ("magnitude", "phase", "joint"):
        for head in (0, "abnormal"):
            m = saliency(i2m2_model, sample, expert, head)
            assert m.shape == (size, size) and np.isfinite(m).all()
        ig = saliency(i2m2_model, sample, expert, "cart", method="integrated_gradients", steps=8)
        assert ig.shape == (size, size) and np.isfinite(ig).all()
    after = i2m2_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    hooked = [n for n, mod in i2m2_model.named_modules() if mod._forward_hooks or mod._backward_hooks]
    assert hooked == []
    assert not i2m2_model.training


def test_saliency_refuses_what_it_cannot_explain(i2m2_model):
    size = int(i2m2_model.config.image_size)
    only_magnitude = {"magnitude": torch.rand(1, size, size), "present": {"magnitude": True, "phase": False}}
    with pytest.raises(UsageError, match="no phase image"):
        saliency(i2m2_model, only_magnitude, "phase", "acl")
    with pytest.raises(UsageError, match="image expert"):
        saliency(i2m2_model, only_magnitude, "tabular", "acl")
    with pytest.raises(UsageError, match="unknown head"):
        saliency(i2m2_model, only_magnitude, "magnitude", "pcl")
    with pytest.raises(UsageError, match="unknown saliency method"):
        saliency(i2m2_model, only_magnitude, "magnitude", "acl", method="lime")


def test_integrated_gradients_add_up_to_the_log_odds_change(i2m2_model):
    names = [f"f{i}_missing" if i % 2 else f"f{i}" for i in range(14)]
    x = np.linspace(0.1, 0.9, 14).astype(np.float32)
    attr = tabular_attributions(i2m2_model, x, names=names, steps=128)
    assert attr.attributions.shape == (14, len(HEADS))
    # default baseline: every feature unknown (value 0, missing indicator 1)
    np.testing.assert_array_equal(attr.baseline, [1.0 if n.endswith("_missing") else 0.0 for n in names])
    with torch.no_grad():
        z = i2m2_model.experts["tabular"](torch.from_numpy(np.stack([x, attr.baseline.astype(np.float32)])))
    lo = (z[..., 1] - z[..., 0]).double().numpy()
    np.testing.assert_allclose(attr.log_odds, lo[0], atol=1e-5)
    np.testing.assert_allclose(attr.baseline_log_odds, lo[1], atol=1e-5)
    change = np.abs(attr.log_odds - attr.baseline_log_odds)
    assert (attr.completeness_gap() <= 0.02 * change + 1e-4).all(), (attr.completeness_gap(), change)
    doc = attr.to_dict()
    assert set(doc["per_head"]) == set(HEADS) and len(doc["features"]) == 14


def test_default_integrated_gradients_agree_with_the_log_odds_change_to_the_shown_digits():
    """On the bundled model and a plausible study, the attributions' sum and the log-odds change
    the viewer shows beside it (two decimals) agree to within 0.005 nats for every head."""
    from i2m2_med.data.tabular import tabular_features
    from i2m2_med.inference.loading import load_model

    model, meta = load_model(None)
    for tags in ({"age_years": 65, "sex": "F", "bmi": 23.7, "field_strength_t": 1.5, "fat_sat": True, "tr_ms": 3574, "te_ms": 38},
                 {"age_years": 24, "sex": "M", "field_strength_t": 3.0, "fat_sat": False, "tr_ms": 2800, "te_ms": 27}):
        x, names = tabular_features(tags)
        assert list(names) == list(meta.tabular_names)
        attr = tabular_attributions(model, x, names=names)
        assert (attr.completeness_gap() < 0.005).all(), attr.completeness_gap()


def test_integrated_gradients_are_exact_for_a_linear_expert():
    config = load_config("cpu").with_updates(**{"model.tabular_expert.hidden": []})
    model = build_model("tab", config, 3).eval()
    x = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    base = np.array([0.0, 1.0, 0.0], dtype=np.float32)
    attr = tabular_attributions(model, x, baseline=base, steps=4)
    w = model.experts["tabular"].head.weight.detach().double().numpy().reshape(len(HEADS), 2, 3)
    expected = (w[:, 1, :] - w[:, 0, :]).T * (x - base)[:, None]
    np.testing.assert_allclose(attr.attributions, expected, atol=1e-6)
    assert attr.completeness_gap().max() < 1e-5
    with pytest.raises(UsageError, match="names"):
        tabular_attributions(model, x, names=["a", "b"])
    with pytest.raises(UsageError, match="NaN"):
        tabular_attributions(model, np.array([np.nan, 0, 0], dtype=np.float32))
