"""A configurable pre-activation ResNet backbone (He et al., "Identity Mappings in Deep Residual
Networks", 2016), the image architecture of the I2M2 knee reference.

Built from torch.nn layers (Conv2d, GroupNorm, AdaptiveAvgPool2d). MONAI's
``monai.networks.blocks.Convolution`` orders conv -> norm -> act; a pre-activation block needs
norm -> act -> conv, so the block is written here in a few lines.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PreActBlock(nn.Module):
    """Pre-activation basic block: GN-ReLU-conv3x3(stride) - GN-ReLU-conv3x3, plus a shortcut.

    The shortcut is the identity, or a 1x1 strided convolution of the pre-activated input when the
    width or the resolution changes. Input ``[B, in_ch, H, W]`` -> ``[B, out_ch, H/stride, W/stride]``.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
            if stride != 1 or in_ch != out_ch
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.norm1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.norm2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Stem conv3x3 (no max-pool) -> stages of PreActBlocks -> adaptive average pool -> flatten.

    Args:
        in_channels: input channels (1 for a magnitude or phase expert, 2 for the joint model).
        stem_width: output channels of the stem convolution.
        blocks: blocks per stage, e.g. ``[2, 2, 2, 2]`` for ResNet-18.
        widths: channels per stage, e.g. ``[64, 128, 256, 512]``.
        groups: GroupNorm groups (must divide every width).
        pool_size: side of the adaptive average pool output.
        stem_stride: stride of the stem (1 in the reference).
        final_norm: GroupNorm + ReLU after the last stage (absent in the reference).

    ``forward(x [B, C, H, W] float32) -> features [B, widths[-1] * pool_size**2]``.
    Stage 0 keeps the resolution; each later stage halves it.
    """

    def __init__(
        self,
        in_channels: int,
        stem_width: int,
        blocks: Sequence[int],
        widths: Sequence[int],
        groups: int,
        pool_size: int,
        stem_stride: int = 1,
        final_norm: bool = False,
    ):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, stem_width, 3, stride=stem_stride, padding=1, bias=False)
        stages = []
        in_ch = stem_width
        for index, (n_blocks, width) in enumerate(zip(blocks, widths)):
            stages.append(nn.Sequential(*(
                PreActBlock(in_ch if b == 0 else width, width, 2 if (index > 0 and b == 0) else 1, groups)
                for b in range(n_blocks)
            )))
            in_ch = width
        self.stages = nn.ModuleList(stages)
        self.final_norm = nn.GroupNorm(groups, in_ch) if final_norm else None
        self.pool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
        self.widths = tuple(int(w) for w in widths)
        self.feature_dim = in_ch * pool_size * pool_size
        self._init_weights()

    def _init_weights(self) -> None:
        # As the reference: Kaiming-normal (fan_out) convolutions, GroupNorm weight 1 / bias 0.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor, film: Sequence[tuple[Tensor, Tensor]] | None = None) -> Tensor:
        """``x [B, C, H, W]`` -> ``[B, feature_dim]``.

        ``film``: optional per-stage ``(gamma, beta)``, each ``[B, widths[i]]``; the output ``h`` of
        stage ``i`` becomes ``h * (1 + gamma) + beta`` (feature-wise linear modulation).
        """
        out = self.stem(x)
        for index, stage in enumerate(self.stages):
            out = stage(out)
            if film is not None:
                gamma, beta = film[index]
                out = out * (1.0 + gamma[:, :, None, None]) + beta[:, :, None, None]
        if self.final_norm is not None:
            out = F.relu(self.final_norm(out))
        return torch.flatten(self.pool(out), 1)


def preact_resnet_flops(
    in_channels: int,
    image_size: int,
    stem_width: int,
    blocks: Sequence[int],
    widths: Sequence[int],
    pool_size: int,
    stem_stride: int = 1,
    n_outputs: int = 8,
) -> int:
    """Analytic FLOPs of one forward pass of a :class:`PreActResNet` + linear heads on one
    ``image_size x image_size`` input, counting 2 FLOPs per multiply-accumulate of the
    convolutions and the linear layer (the convention of ``torch.utils.flop_counter``);
    normalisation, activations, pooling and additions are not counted (< 1 %).
    """

    def out_side(side: int, stride: int) -> int:
        return (side + 2 - 3) // stride + 1  # 3x3, padding 1

    side = out_side(image_size, stem_stride)
    macs = side * side * in_channels * stem_width * 9
    in_ch = stem_width
    for index, (n_blocks, width) in enumerate(zip(blocks, widths)):
        for b in range(n_blocks):
            stride = 2 if (index > 0 and b == 0) else 1
            new_side = out_side(side, stride)
            macs += new_side * new_side * in_ch * width * 9  # conv1
            macs += new_side * new_side * width * width * 9  # conv2
            if stride != 1 or in_ch != width:
                macs += new_side * new_side * in_ch * width  # 1x1 shortcut
            side, in_ch = new_side, width
    macs += in_ch * pool_size * pool_size * n_outputs
    return 2 * macs
