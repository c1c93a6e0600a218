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

from i2m2_med.config import stem_output_side, stem_padding


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
        stem_kernel: side of the stem's kernel (3 in the reference). A kernel equal to the stride
            is a patchify stem (non-overlapping patches, as ConvNeXt's): a larger input reaches
            stage 0 at the same resolution, so small structures keep more pixels for little cost.
        final_norm: GroupNorm + ReLU after the last stage (absent in the reference).
        hadamard: two-stream input with multiplicative fusion (the joint model's
            ``image_fusion: hadamard``): input channel 0 and channel 1 (magnitude and phase) each
            go through their own stem and stage 0; the two stage-0 maps ``m`` and ``p`` are
            pre-activated (GroupNorm + ReLU, so that each is a non-negative detector map) and
            joined as ``[m, p, m * p]`` by a 1x1 convolution back to ``widths[0]`` channels,
            which stages 1... then process as usual. ``m * p`` is non-zero only where a
            magnitude feature and a phase feature fire on the same pixel: co-location is a
            first-order feature instead of something the early layers must learn from the
            summed channels. Needs ``in_channels == 2`` and at least two stages.

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
        stem_kernel: int = 3,
        hadamard: bool = False,
    ):
        super().__init__()
        if hadamard and (in_channels != 2 or len(widths) < 2):
            raise ValueError("hadamard fusion needs two input channels (magnitude, phase) and at least two stages")
        self.hadamard = bool(hadamard)

        def stem(channels: int) -> nn.Conv2d:
            return nn.Conv2d(channels, stem_width, stem_kernel, stride=stem_stride,
                             padding=stem_padding(stem_kernel, stem_stride), bias=False)

        def stage(index: int, n_blocks: int, in_ch: int, width: int) -> nn.Sequential:
            return nn.Sequential(*(
                PreActBlock(in_ch if b == 0 else width, width, 2 if (index > 0 and b == 0) else 1, groups)
                for b in range(n_blocks)
            ))

        self.stem = stem(1 if hadamard else in_channels)
        stages = [stage(0, blocks[0], stem_width, widths[0])]
        for index in range(1, len(blocks)):
            stages.append(stage(index, blocks[index], widths[index - 1], widths[index]))
        self.stages = nn.ModuleList(stages)
        in_ch = widths[-1]
        if hadamard:
            # the phase stream's stem and stage 0; self.stem / self.stages[0] are the magnitude's
            self.stem_b = stem(1)
            self.stage0_b = stage(0, blocks[0], stem_width, widths[0])
            self.norm_a = nn.GroupNorm(groups, widths[0])
            self.norm_b = nn.GroupNorm(groups, widths[0])
            self.fuse = nn.Conv2d(3 * widths[0], widths[0], 1, bias=False)
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
        if self.hadamard:
            a = F.relu(self.norm_a(self.stages[0](self.stem(x[:, 0:1]))))
            b = F.relu(self.norm_b(self.stage0_b(self.stem_b(x[:, 1:2]))))
            out = self.fuse(torch.cat([a, b, a * b], dim=1))
        else:
            out = self.stem(x)
        for index, stage in enumerate(self.stages):
            if not (self.hadamard and index == 0):
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
    stem_kernel: int = 3,
) -> int:
    """Analytic FLOPs of one forward pass of a :class:`PreActResNet` + linear heads on one
    ``image_size x image_size`` input, counting 2 FLOPs per multiply-accumulate of the
    convolutions and the linear layer (the convention of ``torch.utils.flop_counter``);
    normalisation, activations, pooling and additions are not counted (< 1 %).
    """

    def out_side(side: int, stride: int) -> int:
        return (side + 2 - 3) // stride + 1  # 3x3, padding 1

    side = stem_output_side(image_size, stem_kernel, stem_stride)
    macs = side * side * in_channels * stem_width * stem_kernel * stem_kernel
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
