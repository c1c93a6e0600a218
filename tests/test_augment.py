"""Training-time augmentation: whole-pixel geometry shared by magnitude and phase."""

from __future__ import annotations

import pytest
import torch

from i2m2_med.config import load_config
from i2m2_med.data.augment import BatchAugment, apply_geometry
from i2m2_med.errors import UsageError


def _batch(n: int = 6, size: int = 8) -> dict:
    g = torch.Generator().manual_seed(1)
    mag = torch.rand(n, 1, size, size, generator=g)
    phase = (torch.rand(n, 1, size, size, generator=g) * 2 - 1) * torch.pi
    return {"magnitude": mag, "phase": phase, "labels": torch.ones(n, 4), "tabular": torch.zeros(n, 3)}


def test_flip_and_shift_by_hand() -> None:
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    flipped = apply_geometry(x, torch.tensor([True]), torch.zeros(1, 2, dtype=torch.int64))
    assert torch.equal(flipped[0, 0, 0], torch.tensor([3.0, 2.0, 1.0, 0.0]))
    # shift one row down and two columns right: the uncovered first row and two columns repeat
    # the nearest edge pixel
    moved = apply_geometry(x, torch.tensor([False]), torch.tensor([[1, 2]]))
    expected = torch.tensor([[0.0, 0.0, 0.0, 1.0],
                             [0.0, 0.0, 0.0, 1.0],
                             [4.0, 4.0, 4.0, 5.0],
                             [8.0, 8.0, 8.0, 9.0]])
    assert torch.equal(moved[0, 0], expected)
    # a negative shift moves up / left; the last row and column repeat
    back = apply_geometry(x, torch.tensor([False]), torch.tensor([[-1, -1]]))
    assert torch.equal(back[0, 0, :3, :3], x[0, 0, 1:, 1:])
    assert torch.equal(back[0, 0, 3], torch.tensor([13.0, 14.0, 15.0, 15.0]))
    # flipped first, then shifted beyond the image: every pixel repeats the flipped edge column
    far = apply_geometry(x, torch.tensor([True]), torch.tensor([[0, -9]]))
    assert torch.equal(far[0, 0], torch.tensor([[0.0] * 4, [4.0] * 4, [8.0] * 4, [12.0] * 4]))


def test_a_shifted_phase_image_gains_no_step_for_the_high_pass() -> None:
    """A smooth phase background shifted with zero fill gets a step to 0 rad at its border, which
    the phase expert's homodyne high-pass turns into local phase the size of a lesion's cue; with
    the edge repeated the high-pass output stays as flat as the unshifted image's."""
    from i2m2_med.models.phase_filter import PhaseHighPass

    rows = torch.linspace(1.5, 2.5, 64)
    phase = rows[None, None, :, None].expand(1, 1, 64, 64).contiguous()  # a smooth ramp, no cue
    hp = PhaseHighPass(5.0)
    flat = float(hp(phase).abs().max())
    shifted = apply_geometry(phase, torch.tensor([False]), torch.tensor([[4, 4]]))
    assert float(hp(shifted).abs().max()) <= flat + 1e-4
    zero_filled = phase.clone()
    zero_filled[..., :4, :] = 0.0
    zero_filled[..., :, :4] = 0.0
    assert float(hp(zero_filled).abs().max()) > 0.8  # what zero fill would have made of it


def test_same_geometry_for_both_modalities_and_no_interpolation() -> None:
    batch = _batch()
    # a cue at the same pixel in both modalities stays co-located
    batch["magnitude"][:, :, 3, 2] = 50.0
    batch["phase"][:, :, 3, 2] = 3.0
    out = BatchAugment(flip_p=0.5, max_shift=2, seed=0)(batch)
    for i in range(batch["magnitude"].shape[0]):
        mag_at = (out["magnitude"][i, 0] == 50.0).nonzero().tolist()
        phase_at = (out["phase"][i, 0] == 3.0).nonzero().tolist()
        assert mag_at == phase_at and len(mag_at) == 1
    # whole-pixel moves: every output phase value is an input value of that sample
    for i in range(batch["phase"].shape[0]):
        allowed = set(batch["phase"][i].flatten().tolist())
        assert set(out["phase"][i].flatten().tolist()) <= allowed
    assert out["labels"] is batch["labels"] and out["tabular"] is batch["tabular"]


def test_reproducible_and_varied() -> None:
    batch = _batch(n=32)
    a = BatchAugment(0.5, 2, seed=3)(batch)["magnitude"]
    b = BatchAugment(0.5, 2, seed=3)(batch)["magnitude"]
    c = BatchAugment(0.5, 2, seed=4)(batch)["magnitude"]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    flips, shifts = BatchAugment(0.5, 2, seed=0).draw(2000)
    assert 0.45 < flips.float().mean().item() < 0.55
    assert shifts.min().item() == -2 and shifts.max().item() == 2


def test_inactive_is_identity_and_bad_settings_refused() -> None:
    batch = _batch()
    aug = BatchAugment(0.0, 0)
    assert not aug.active
    assert aug(batch)["magnitude"] is batch["magnitude"]
    with pytest.raises(UsageError):
        BatchAugment(flip_p=1.5)
    with pytest.raises(UsageError):
        BatchAugment(max_shift=-1)


def test_shipped_configs_and_validation() -> None:
    paper = load_config("paper")  # the reference trains without augmentation
    assert paper.training.augment.flip_p == 0.0 and paper.training.augment.max_shift == 0
    for name in ("cpu", "demo"):  # the compact recipes flip and shift (chosen on validation)
        cfg = load_config(name)
        assert cfg.training.augment.flip_p == 0.5 and cfg.training.augment.max_shift == 4
    cfg = load_config("cpu").model_copy(deep=True)
    on = type(cfg.training.augment)(flip_p=1.0, max_shift=0)
    assert on.flip_p == 1.0
    with pytest.raises(Exception):
        type(cfg.training.augment)(flip_p=0.5, rotate=10)  # unknown key refused


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_step_sees_the_augmented_batch() -> None:
    from i2m2_med.models import build_model
    from i2m2_med.training.module import I2M2Module

    base = load_config("cpu")
    cfg = base.model_copy(update={"training": base.training.model_copy(
        update={"augment": type(base.training.augment)(flip_p=1.0, max_shift=0)})})
    size = cfg.image_size
    batch = _batch(n=2, size=size)
    batch["present"] = {m: torch.ones(2, dtype=torch.bool) for m in ("magnitude", "phase", "tabular")}
    seen: dict = {}

    def capture(mod, args) -> None:  # a pre-hook returning None leaves the input unchanged
        seen["magnitude"] = args[0]["magnitude"].clone()

    module = I2M2Module(build_model("mag", cfg, 3), cfg)
    module.model.register_forward_pre_hook(capture)
    module.training_step(batch, 0)
    assert torch.equal(seen["magnitude"], batch["magnitude"].flip(-1))
    seen.clear()
    off = base.with_updates(**{"training.augment.flip_p": 0.0, "training.augment.max_shift": 0})
    plain = I2M2Module(build_model("mag", off, 3), off)
    plain.model.register_forward_pre_hook(capture)
    plain.training_step(batch, 0)
    assert torch.equal(seen["magnitude"], batch["magnitude"])
