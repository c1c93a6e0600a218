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
    # shift one row down and two columns right: the first row / two columns become zero
    moved = apply_geometry(x, torch.tensor([False]), torch.tensor([[1, 2]]))
    expected = torch.zeros(4, 4)
    expected[1:, 2:] = x[0, 0, :3, :2]
    assert torch.equal(moved[0, 0], expected)
    # a negative shift moves up / left
    back = apply_geometry(x, torch.tensor([False]), torch.tensor([[-1, -1]]))
    assert torch.equal(back[0, 0, :3, :3], x[0, 0, 1:, 1:])
    assert float(back[0, 0, 3].abs().sum()) == 0.0


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
    # whole-pixel moves: every output phase value is an input value of that sample or the zero fill
    for i in range(batch["phase"].shape[0]):
        allowed = set(batch["phase"][i].flatten().tolist()) | {0.0}
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
    cpu = load_config("cpu")  # the compact default flips and shifts (chosen on validation)
    assert cpu.training.augment.flip_p == 0.5 and cpu.training.augment.max_shift == 4
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
