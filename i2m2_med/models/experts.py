"""The experts of I2M2: one classifier per modality and the joint (inter-modality) model.

Every expert maps its inputs to logits ``[B, 4, 2]`` (heads in :data:`i2m2_med.heads.HEADS`
order, classes ``(absent, present)``); the product of experts (``product.py``) turns them into
log-probabilities and combines them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from i2m2_med.config import ImageExpertConfig, JointConfig, TabularExpertConfig
from i2m2_med.heads import HEADS
from i2m2_med.models.preact_resnet import PreActResNet, preact_resnet_flops

N_CLASSES = 2


def _heads_layer(in_features: int, n_heads: int) -> nn.Linear:
    # One Linear to n_heads * 2 outputs is the reference's four Linear(in, 2) heads stacked.
    return nn.Linear(in_features, n_heads * N_CLASSES)


def _backbone(in_channels: int, cfg: ImageExpertConfig) -> PreActResNet:
    return PreActResNet(
        in_channels=in_channels,
        stem_width=cfg.stem_width,
        blocks=cfg.blocks,
        widths=cfg.widths,
        groups=cfg.groups,
        pool_size=cfg.pool_size,
        stem_stride=cfg.stem_stride,
        final_norm=cfg.final_norm,
    )


class ImageExpert(nn.Module):
    """[input filter] + PreActResNet backbone + dropout + linear heads.

    ``forward(x [B, in_channels, H, W] float32) -> logits [B, heads, 2]``. ``input_filter`` (a
    module without parameters, e.g. the phase expert's :class:`~i2m2_med.models.phase_filter.PhaseHighPass`)
    is applied to ``x`` first; identity by default.
    """

    def __init__(self, in_channels: int, cfg: ImageExpertConfig, heads: int = len(HEADS),
                 input_filter: nn.Module | None = None):
        super().__init__()
        self.n_heads = heads
        self.input_filter = input_filter if input_filter is not None else nn.Identity()
        self.backbone = _backbone(in_channels, cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = _heads_layer(self.backbone.feature_dim, heads)

    def forward(self, x: Tensor) -> Tensor:
        features = self.dropout(self.backbone(self.input_filter(x)))
        return self.head(features).view(x.shape[0], self.n_heads, N_CLASSES)


class TabularExpert(nn.Module):
    """MLP over the tabular vector: (Linear -> ReLU -> Dropout) per hidden size -> Linear.

    ``forward(t [B, n_tabular] float32) -> logits [B, heads, 2]``.
    """

    def __init__(self, n_tabular: int, cfg: TabularExpertConfig, heads: int = len(HEADS)):
        super().__init__()
        if n_tabular < 1:
            raise ValueError("a tabular expert needs at least one tabular feature")
        self.n_heads = heads
        layers: list[nn.Module] = []
        width = n_tabular
        for hidden in cfg.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = hidden
        self.mlp = nn.Sequential(*layers)
        self.head = _heads_layer(width, heads)

    def forward(self, t: Tensor) -> Tensor:
        return self.head(self.mlp(t)).view(t.shape[0], self.n_heads, N_CLASSES)


class JointModel(nn.Module):
    """The inter-modality model: magnitude and phase stacked as input channels of one
    PreActResNet (early fusion, as in the reference), with the tabular vector fused by FiLM or
    concatenation (``JointConfig``), or not at all when ``n_tabular == 0`` or fusion is ``none``.

    * FiLM: ``e = ReLU(Linear(t))`` (``tabular_hidden`` units); for every stage ``i`` a linear map
      ``e -> (gamma_i, beta_i)`` modulates the stage output ``h <- h * (1 + gamma_i) + beta_i``.
      The maps start at zero, so the joint model starts as the image-only model.
    * concat: ``[pooled image features, ReLU(Linear(t))]`` -> dropout -> linear heads.

    ``forward(magnitude [B,1,H,W], phase [B,1,H,W], tabular [B,F] | None, tabular_present [B] | None)
    -> logits [B, heads, 2]``. Without a tabular vector (None, or a sample marked absent) the
    FiLM maps are the identity and the concatenated embedding is zero: the joint model reads the
    images alone, as it learns to when ``tabular_dropout`` withholds the vector in training. ``phase_filter`` (parameter-free,
    e.g. :class:`~i2m2_med.models.phase_filter.PhaseHighPass`) is applied to the phase channel.
    """

    def __init__(
        self,
        image_cfg: ImageExpertConfig,
        joint_cfg: JointConfig,
        n_tabular: int,
        heads: int = len(HEADS),
        phase_filter: nn.Module | None = None,
    ):
        super().__init__()
        self.n_heads = heads
        self.phase_filter = phase_filter if phase_filter is not None else nn.Identity()
        self.fusion = joint_cfg.tabular_fusion if n_tabular > 0 else "none"
        self.uses_tabular = self.fusion != "none"
        self.n_tabular = int(n_tabular)
        self.tabular_dropout = float(joint_cfg.tabular_dropout)
        self.backbone = _backbone(2, image_cfg)
        self.dropout = nn.Dropout(image_cfg.dropout)
        features = self.backbone.feature_dim
        self.tabular_embed: nn.Module | None = None
        self.film: nn.ModuleList | None = None
        if self.uses_tabular:
            self.tabular_embed = nn.Sequential(nn.Linear(n_tabular, joint_cfg.tabular_hidden), nn.ReLU())
        if self.fusion == "film":
            self.film = nn.ModuleList(
                nn.Linear(joint_cfg.tabular_hidden, 2 * width) for width in self.backbone.widths
            )
            for layer in self.film:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        elif self.fusion == "concat":
            features += joint_cfg.tabular_hidden
        self.head = _heads_layer(features, heads)

    def forward(self, magnitude: Tensor, phase: Tensor, tabular: Tensor | None = None,
                tabular_present: Tensor | None = None) -> Tensor:
        x = torch.cat([magnitude, self.phase_filter(phase)], dim=1)  # [B, 2, H, W]
        if not self.uses_tabular:
            features = self.backbone(x)
        else:
            b = x.shape[0]
            keep = torch.ones(b, dtype=torch.bool, device=x.device) if tabular_present is None else tabular_present.to(torch.bool)
            if tabular is None:
                keep = torch.zeros(b, dtype=torch.bool, device=x.device)
                tabular = torch.zeros(b, self.n_tabular, device=x.device, dtype=x.dtype)
            if self.training and self.tabular_dropout > 0.0:
                keep = keep & (torch.rand(b, device=x.device) >= self.tabular_dropout)
            on = keep.to(x.dtype)[:, None]
            embedding = self.tabular_embed(tabular) * on
            if self.fusion == "film":
                film = [tuple((layer(embedding) * on).chunk(2, dim=1)) for layer in self.film]
                features = self.backbone(x, film=film)
            else:
                features = torch.cat([self.backbone(x), embedding], dim=1)
        logits = self.head(self.dropout(features))
        return logits.view(x.shape[0], self.n_heads, N_CLASSES)


def image_expert_flops(cfg: ImageExpertConfig, image_size: int, in_channels: int = 1, heads: int = len(HEADS)) -> int:
    """Analytic forward FLOPs (2 per multiply-accumulate) of one image expert on one slice."""
    return preact_resnet_flops(
        in_channels, image_size, cfg.stem_width, cfg.blocks, cfg.widths, cfg.pool_size, cfg.stem_stride, heads * N_CLASSES,
    )
