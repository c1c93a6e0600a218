"""The homodyne high-pass phase: the local phase of susceptibility-weighted imaging.

A raw MR phase image is dominated by smooth terms that carry no finding -- the coil's transceive
phase, the residual B0 field, their wraps at +-pi -- on top of which a lesion's phase (blood
products, calcification, gas, flow) is a local bump of about a radian. SWI removes the smooth
part with a homodyne filter: the complex image divided by its low-pass version. On unit phasors,

    z = exp(i phase),   phase_hp = angle(z * conj(G_sigma * z))

with ``G_sigma`` a Gaussian low-pass (``sigma`` in pixels): smooth phase and its wraps go to 0,
a local bump stays (a bump much narrower than ``sigma`` keeps almost all of its amplitude). Only
the phase enters (unit magnitude), so the phase expert still sees no magnitude. The border is
handled by replicate padding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gaussian_kernel1d(sigma: float) -> Tensor:
    """Normalised 1-D Gaussian taps out to 3 sigma (float32)."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class PhaseHighPass(nn.Module):
    """``forward(phase [B, 1, H, W] radians) -> [B, 1, H, W]`` homodyne high-pass phase in (-pi, pi].

    The kernel is a non-persistent buffer: it follows the module's device and dtype but is not
    part of the state dict (it is fixed by ``sigma``, which the config records).
    """

    def __init__(self, sigma: float):
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)
        self.register_buffer("kernel", gaussian_kernel1d(self.sigma), persistent=False)

    def lowpass(self, x: Tensor) -> Tensor:
        """Separable Gaussian blur of every channel of ``x`` [B, C, H, W], replicate border."""
        c = x.shape[1]
        k = self.kernel.to(dtype=x.dtype)
        r = (k.numel() - 1) // 2
        x = F.pad(x, (r, r, r, r), mode="replicate")
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

    def forward(self, phase: Tensor) -> Tensor:
        cos, sin = torch.cos(phase), torch.sin(phase)
        smooth = self.lowpass(torch.cat([cos, sin], dim=1))
        sc, ss = smooth[:, :1], smooth[:, 1:]
        # z * conj(smooth) = (cos + i sin)(sc - i ss)
        return torch.atan2(sin * sc - cos * ss, cos * sc + sin * ss)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}"


def phase_input_module(filter_name: str, sigma: float) -> nn.Module:
    """The phase input stage named by the config: identity for ``none``, :class:`PhaseHighPass`."""
    if filter_name == "none":
        return nn.Identity()
    if filter_name == "highpass":
        return PhaseHighPass(sigma)
    raise ValueError(f"unknown phase filter {filter_name!r}")
