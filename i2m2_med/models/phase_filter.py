"""The homodyne high-pass phase: the local phase of susceptibility-weighted imaging.

A raw MR phase image is dominated by smooth terms that carry no finding -- the coil's transceive
phase, the residual B0 field, their wraps at +-pi -- on top of which a lesion's phase (blood
products, calcification, gas, flow) is a local bump of about a radian. SWI removes the smooth
part with a homodyne filter: the complex image divided by its low-pass version. On unit phasors,

    z = exp(i phase),   phase_hp = angle(z * conj(G_sigma * z))

with ``G_sigma`` a Gaussian low-pass (``sigma`` in pixels): smooth phase and its wraps go to 0,
a local bump stays (a bump much narrower than ``sigma`` keeps almost all of its amplitude). Only
the phase enters (unit magnitude), so the phase expert still sees no magnitude. The border is
handled by replicating the edge pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn


def gaussian_kernel1d(sigma: float) -> Tensor:
    """Normalised 1-D Gaussian taps out to 3 sigma (float32)."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class PhaseHighPass(nn.Module):
    """``forward(phase [B, 1, H, W] radians) -> [B, 1, H, W]`` homodyne high-pass phase in (-pi, pi].

    The Gaussian is applied as two matrix products, ``A_H @ x @ A_W^T``, with the replicate border
    folded into the (H x H and W x W) band matrices: the same numbers as padding and a separable
    convolution, at a fraction of the cost on small images. The matrices are built per image size
    and kept out of the state dict (they follow from ``sigma``, which the config records).
    """

    def __init__(self, sigma: float):
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)
        self.kernel = gaussian_kernel1d(self.sigma)  # taps only; the blur uses blur_matrix()
        self._matrices: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}

    def blur_matrix(self, n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """(n, n): row i holds the Gaussian weights of output i on the inputs, border replicated."""
        key = (int(n), device, dtype)
        m = self._matrices.get(key)
        if m is None:
            k = self.kernel.to(torch.float64)
            r = (k.numel() - 1) // 2
            rows = torch.arange(n)[:, None]
            src = (rows + torch.arange(-r, r + 1)[None, :]).clamp(0, n - 1)  # replicate border
            m = torch.zeros(n, n, dtype=torch.float64)
            m.scatter_add_(1, src, k[None, :].expand(n, -1).contiguous())
            m = m.to(device=device, dtype=dtype)
            self._matrices[key] = m
        return m

    def lowpass(self, x: Tensor) -> Tensor:
        """Separable Gaussian blur of every channel of ``x`` [B, C, H, W], replicate border."""
        a_h = self.blur_matrix(x.shape[-2], x.device, x.dtype)
        a_w = self.blur_matrix(x.shape[-1], x.device, x.dtype)
        return a_h @ x @ a_w.T

    def forward(self, phase: Tensor) -> Tensor:
        cos, sin = torch.cos(phase), torch.sin(phase)
        smooth = self.lowpass(torch.cat([cos, sin], dim=1))
        sc, ss = smooth[:, :1], smooth[:, 1:]
        # z * conj(smooth) = (cos + i sin)(sc - i ss)
        return torch.atan2(sin * sc - cos * ss, cos * sc + sin * ss)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}"


class FixedSizePhaseHighPass(PhaseHighPass):
    """:class:`PhaseHighPass` for one image size, its blur matrices held as (non-persistent)
    buffers: no cache and no Python state at call time, so tracers and graph exporters see plain
    tensor operations. ``forward(phase [B, 1, height, width])``; other sizes are not accepted."""

    def __init__(self, sigma: float, height: int, width: int):
        super().__init__(sigma)
        self.register_buffer("a_h", self.blur_matrix(height, torch.device("cpu"), torch.float32), persistent=False)
        self.register_buffer("a_w", self.blur_matrix(width, torch.device("cpu"), torch.float32).clone(), persistent=False)
        self._matrices.clear()

    def lowpass(self, x: Tensor) -> Tensor:
        return self.a_h @ x @ self.a_w.T

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}, size={self.a_h.shape[0]}x{self.a_w.shape[0]}"


def phase_input_module(filter_name: str, sigma: float) -> nn.Module:
    """The phase input stage named by the config: identity for ``none``, :class:`PhaseHighPass`."""
    if filter_name == "none":
        return nn.Identity()
    if filter_name == "highpass":
        return PhaseHighPass(sigma)
    raise ValueError(f"unknown phase filter {filter_name!r}")


def highpass_phase_image(phase: np.ndarray, sigma_px: float, model_size: int) -> np.ndarray:
    """The high-pass phase of one 2-D phase image (radians) of any size, for display: the model's
    ``sigma_px`` (pixels of its ``model_size`` input) is scaled to the image's width, so the picture
    shows what the phase expert sees, at the image's own resolution. Returns float32."""
    image = np.asarray(phase, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D phase image, got shape {image.shape}")
    sigma = float(sigma_px) * image.shape[1] / float(model_size)
    with torch.no_grad():
        out = PhaseHighPass(sigma)(torch.from_numpy(np.ascontiguousarray(image))[None, None])
    return out[0, 0].numpy()
