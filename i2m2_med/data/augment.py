"""Training-time augmentation of a batch: the same random geometry for magnitude and phase.

Only geometric operations that move whole pixels are used -- a left-right flip and an integer
translation -- so that the phase (radians, wrapped to [-pi, pi]) is never interpolated and a
magnitude cue and a phase cue on the same site stay on the same pixel (the co-location that
carries the inter-modality evidence).

The pixels a translation uncovers repeat the nearest edge pixel; they are not zero. A zero band
beside a phase image is a step from the image's smooth background phase to 0 rad, and the phase
expert's homodyne high-pass (:mod:`i2m2_med.models.phase_filter`) turns that step into a strip of
local phase of the same size as a lesion's phase cue (about a radian), on every shifted sample:
with zero fill, the phase expert trained on 200 intra-regime volumes told findings from their
mimics no better than chance on held-out data (BENCHMARKS.md, "Training recipe and the phase
cue"). Each sample of the batch draws its own flip and shift; the labels do not change (a finding is per lesion class, not per side: a flipped
right knee looks like a left one).

The draws come from a :class:`torch.Generator` seeded once, so a training run is reproducible.
Applied on the batch in the training step (after the data loader and its cache), so cached
samples stay unaugmented and validation / test never see it.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from i2m2_med.errors import UsageError

IMAGE_KEYS: tuple[str, ...] = ("magnitude", "phase")


class BatchAugment:
    """Random left-right flip (probability ``flip_p``) and integer shift of up to ``max_shift``
    pixels in each direction, drawn per sample and shared by the image modalities.

    Args:
        flip_p: probability of flipping a sample left-right (the last axis).
        max_shift: largest translation in pixels (rows and columns drawn independently,
            uniformly in ``[-max_shift, max_shift]``); uncovered pixels are zero.
        seed: seeds the generator of the draws.
    """

    def __init__(self, flip_p: float = 0.5, max_shift: int = 0, seed: int = 0):
        if not 0.0 <= float(flip_p) <= 1.0:
            raise UsageError("augment.flip_p", f"must lie in [0, 1], got {flip_p}")
        if int(max_shift) < 0:
            raise UsageError("augment.max_shift", f"must be >= 0, got {max_shift}")
        self.flip_p = float(flip_p)
        self.max_shift = int(max_shift)
        self.generator = torch.Generator().manual_seed(int(seed))

    @property
    def active(self) -> bool:
        return self.flip_p > 0.0 or self.max_shift > 0

    def draw(self, n: int) -> tuple[Tensor, Tensor]:
        """``flips`` bool ``[n]`` and ``shifts`` int64 ``[n, 2]`` (rows, columns) for ``n`` samples."""
        flips = torch.rand(n, generator=self.generator) < self.flip_p
        if self.max_shift > 0:
            shifts = torch.randint(-self.max_shift, self.max_shift + 1, (n, 2), generator=self.generator)
        else:
            shifts = torch.zeros(n, 2, dtype=torch.int64)
        return flips, shifts

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """A new batch dict with the image modalities augmented (other entries shared)."""
        out = dict(batch)
        keys = [k for k in IMAGE_KEYS if isinstance(batch.get(k), Tensor)]
        if not keys or not self.active:
            return out
        n = int(batch[keys[0]].shape[0])
        flips, shifts = self.draw(n)
        for key in keys:
            out[key] = apply_geometry(batch[key], flips, shifts)
        return out


def apply_geometry(x: Tensor, flips: Tensor, shifts: Tensor) -> Tensor:
    """Flip (last axis) then shift each sample of ``x`` ``[B, C, H, W]`` by ``shifts`` ``[B, 2]``
    (rows, columns; positive moves down / right); uncovered pixels repeat the nearest edge pixel
    (see the module's text for why not zero)."""
    if x.ndim != 4:
        raise UsageError("augment", f"expected images [B, C, H, W], got shape {tuple(x.shape)}")
    flips = flips.to(x.device)
    y = torch.where(flips[:, None, None, None], x.flip(-1), x)
    b, c, h, w = (int(n) for n in y.shape)
    shifts = shifts.to(device=x.device, dtype=torch.int64)
    # output pixel (r, q) reads input pixel (r - dy, q - dx), clamped into the image
    rows = (torch.arange(h, device=x.device)[None, :] - shifts[:, :1]).clamp(0, h - 1)  # [B, H]
    cols = (torch.arange(w, device=x.device)[None, :] - shifts[:, 1:]).clamp(0, w - 1)  # [B, W]
    y = torch.gather(y, 2, rows[:, None, :, None].expand(b, c, h, w))
    return torch.gather(y, 3, cols[:, None, None, :].expand(b, c, h, w))


__all__ = ["BatchAugment", "apply_geometry", "IMAGE_KEYS"]
