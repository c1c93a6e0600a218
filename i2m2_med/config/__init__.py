"""Model and training configuration: validated pydantic models loaded from YAML.

Three configurations ship with the library, beside this module (``i2m2_med/config/*.yaml``):

* ``paper`` -- faithful to the I2M2 knee reference: PreActResNet-18 experts (3x3 stride-1 stem,
  no max-pool, GroupNorm(32), blocks [2, 2, 2, 2], widths 64-512, adaptive average pool to
  10x10, linear heads), 320x320 input, AdamW with the reference's per-expert learning rates and
  weight decays, batch 16, early stopping (patience 5) on the mean validation AUROC.
* ``cpu`` -- the same structure, compact (lower resolution and width), trains on 2 CPU cores in
  minutes; the default of ``train`` and ``ablate``. Two departures from the reference, chosen on
  validation: the homodyne high-pass phase as the phase input (:class:`PhaseInputConfig`) and
  training-time flips and shifts (:class:`AugmentConfig`).
* ``demo`` -- ``cpu`` with the warm start (``training.warm_start``): the recipe of the bundled
  demo model, which ``i2m2-med demo`` trains.

:func:`load_config` takes ``"cpu"``, ``"demo"``, ``"paper"`` or a path to a YAML file. Every key is checked:
an unknown key or an ill-typed value raises :class:`~i2m2_med.errors.ConfigError` with one line
``<file>: <key.path>: <what was expected>``. Types are strict (no silent ``"3"`` -> 3, no
``1`` -> ``True``); an integer is accepted where a float is expected, and YAML's ``1e-5`` (which
YAML 1.1 reads as a string) is read as a number.
"""

from __future__ import annotations

import copy
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from i2m2_med.errors import ConfigError
from i2m2_med.metrics.aggregation import CONFIG_RULES

SHIPPED_CONFIGS: tuple[str, ...] = ("cpu", "demo", "paper")
MAX_WIDTH = 2048
"""The widest layer a config may ask for (the paper config's widest is 512): with
:data:`MAX_BLOCKS`, a config -- a YAML file or a checkpoint's header -- cannot make building the
model exhaust memory."""
MAX_BLOCKS = 16


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ImageExpertConfig(_Strict):
    """A pre-activation ResNet image expert (also the backbone of the joint model).

    Stem: a 3x3 ``Conv2d(in_channels, stem_width, 3, stride=stem_stride, padding=1)``, no max-pool;
    ``stem_stride`` 1 (the reference) or 2 (stage 0 at half the input's side).
    Stage ``i`` has ``blocks[i]`` pre-activation basic blocks of width ``widths[i]``; stage 0 keeps
    the resolution, every later stage halves it (stride 2 in its first block). Normalisation is
    ``GroupNorm(groups, C)``. The last feature map is average-pooled to ``pool_size x pool_size``,
    flattened, passed through dropout ``dropout`` and a linear layer to 4 heads x 2 classes.
    ``final_norm`` adds a GroupNorm + ReLU before the pool (the reference has none).
    """

    stem_width: int = Field(64, ge=1, le=MAX_WIDTH)
    stem_stride: int = Field(1, ge=1, le=2)
    blocks: list[int] = Field(default_factory=lambda: [2, 2, 2, 2], min_length=1, max_length=8)
    widths: list[int] = Field(default_factory=lambda: [64, 128, 256, 512], min_length=1, max_length=8)
    groups: int = Field(32, ge=1, le=MAX_WIDTH)
    pool_size: int = Field(10, ge=1, le=64)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    final_norm: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> "ImageExpertConfig":
        if len(self.blocks) != len(self.widths):
            raise ValueError(f"blocks ({len(self.blocks)} stages) and widths ({len(self.widths)} stages) must have the same length")
        if any(b < 1 for b in self.blocks) or any(w < 1 for w in self.widths):
            raise ValueError("every stage needs at least one block and a positive width")
        if any(b > MAX_BLOCKS for b in self.blocks) or any(w > MAX_WIDTH for w in self.widths):
            raise ValueError(f"at most {MAX_BLOCKS} blocks and width {MAX_WIDTH} per stage")
        for width in [self.stem_width, *self.widths]:
            if width % self.groups:
                raise ValueError(f"groups={self.groups} must divide every width (stem_width and widths); {width} is not a multiple")
        return self

    def feature_size(self, image_size: int) -> int:
        """Side (pixels) of the last stage's feature map for an ``image_size`` input."""
        side = -(-image_size // self.stem_stride)
        for _ in self.widths[1:]:
            side = -(-side // 2)
        return side


class TabularExpertConfig(_Strict):
    """An MLP over the tabular vector: Linear -> ReLU -> Dropout per hidden size, then Linear to 4x2."""

    hidden: list[int] = Field(default_factory=lambda: [64, 64], max_length=8)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _positive(self) -> "TabularExpertConfig":
        if any(h < 1 or h > MAX_WIDTH for h in self.hidden):
            raise ValueError(f"hidden sizes must lie in 1..{MAX_WIDTH}")
        return self


class JointConfig(_Strict):
    """The inter-modality (joint) model: magnitude and phase as two input channels of one image
    backbone (early fusion, as in the reference), with the tabular vector fused by

    * ``film``: a tabular MLP (``tabular_hidden``) yields a per-channel scale and shift for the
      output of every stage, ``h <- h * (1 + gamma) + beta``, initialised to the identity;
    * ``concat``: the tabular embedding is concatenated to the pooled image features before the
      heads;
    * ``none``: no tabular input (also what the ``i2m2-notab`` variant uses).
    """

    tabular_fusion: Literal["film", "concat", "none"] = "film"
    tabular_hidden: int = Field(32, ge=1, le=MAX_WIDTH)
    tabular_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Probability that a training sample's tabular vector is withheld from the joint model, so
    that it also learns to read the images alone: without a tabular vector the joint model still
    runs (the FiLM maps become the identity, the concatenated embedding zeros) and only the
    tabular term leaves the product."""


class PhaseInputConfig(_Strict):
    """What the phase expert and the joint model see of the phase (:mod:`i2m2_med.models.phase_filter`):

    * ``none``: the phase as given (radians, wrapped), as in the reference;
    * ``highpass``: the homodyne high-pass phase of susceptibility-weighted imaging, the angle of
      ``exp(i phase) * conj(G_sigma * exp(i phase))``: the smooth background (coil and B0 phase,
      wraps) removed, local phase kept; ``sigma_px`` is the Gaussian's width in pixels of the
      model's input. Computed from the phase alone, so no magnitude reaches the phase expert.
    """

    filter: Literal["none", "highpass"] = "none"
    sigma_px: float = Field(5.0, gt=0.0, le=64.0)


class ModelConfig(_Strict):
    image_expert: ImageExpertConfig = Field(default_factory=ImageExpertConfig)
    tabular_expert: TabularExpertConfig = Field(default_factory=TabularExpertConfig)
    joint: JointConfig = Field(default_factory=JointConfig)
    phase_input: PhaseInputConfig = Field(default_factory=PhaseInputConfig)
    prior: bool = False
    """Add a learned class prior log p(y) per head (a ``"prior"`` term of the product)."""


class OptimSettings(_Strict):
    lr: float = Field(gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)


class OptimConfig(_Strict):
    """AdamW with one parameter group per expert (see ``models.registry.per_expert_param_groups``)."""

    betas: list[float] = Field(default_factory=lambda: [0.9, 0.999], min_length=2, max_length=2)
    magnitude: OptimSettings = OptimSettings(lr=1e-5, weight_decay=1e-3)
    phase: OptimSettings = OptimSettings(lr=1e-4, weight_decay=1e-1)
    tabular: OptimSettings = OptimSettings(lr=1e-3, weight_decay=1e-2)
    joint: OptimSettings = OptimSettings(lr=1e-4, weight_decay=1e-2)
    prior: OptimSettings = OptimSettings(lr=1e-3, weight_decay=0.0)
    scheduler: Literal["none", "cosine"] = "none"
    gradient_clip_val: float | None = Field(None, gt=0.0)


class EarlyStoppingConfig(_Strict):
    monitor: str = "val_selection"
    """Name of the logged metric; ``val_selection`` is what chooses the best epoch: the combined
    in-view validation AUROC on a cohort with episodes (findings against their mimics), else the
    mean slice-level validation AUROC over the four heads (``val_auroc_mean``)."""
    mode: Literal["max", "min"] = "max"
    patience: int = Field(5, ge=0)


class AugmentConfig(_Strict):
    """Training-time augmentation (:mod:`i2m2_med.data.augment`): per-sample left-right flip and integer
    shift, the same for magnitude and phase; off by default (the knee reference trains without)."""

    flip_p: float = Field(0.0, ge=0.0, le=1.0)
    max_shift: int = Field(0, ge=0)
    """Largest translation in pixels of the model's input size."""


class TrainingConfig(_Strict):
    batch_size: int = Field(16, ge=1)
    max_epochs: int = Field(50, ge=1)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    class_weighting: Literal["none", "loss", "sampler", "both"] = "loss"
    """``loss``: per-head class weights (inverse training frequency) in the NLL; ``sampler``: a
    weighted random sampler over slices; ``both``; ``none``."""
    warm_start: bool = False
    """Train each expert of the variant alone first, then initialise the product from them and
    fine-tune it end to end (the paper's AV-MNIST recipe); otherwise train the product end to end
    from scratch (the knee reference)."""
    warm_start_epochs: int = Field(5, ge=1)
    warm_start_joint_epochs: int | None = Field(None, ge=1)
    """The joint model's warm-start epochs, when they differ from ``warm_start_epochs``: the
    other experts stop (are neither run nor updated) after their own epochs while the joint
    model trains on, each expert on a cosine schedule over its own epochs. Unset: every expert
    trains ``warm_start_epochs``."""
    finetune_lr_scale: float = Field(1.0, gt=0.0, le=1.0)
    """After a warm start, the product is fine-tuned at every expert's learning rate times this
    factor (1: the same rates as the experts' own training)."""
    calibration: Literal["none", "prior"] = "prior"
    """``prior``: after training, the prior term of the product is refitted on the validation
    split, one log-odds offset per head with every expert frozen (:mod:`i2m2_med.metrics.calibration`), so
    that p(y=1) carries the cohort's prevalence rather than the balanced one that class-weighted
    training learns; slice-level AUROC is unchanged. ``none``: leave the product as trained."""
    aggregation: str = "top3_mean"
    """Slice -> study rule, one of :data:`i2m2_med.metrics.aggregation.CONFIG_RULES`."""
    sampling: Literal["uniform", "hard_cases"] = "uniform"
    """``hard_cases``: the training draws give the slices inside a finding's or a mimic's episode
    ``hard_share`` of the draws (:func:`i2m2_med.data.sampling.hard_case_weights`; uniform on a
    cohort without episodes)."""
    hard_share: float = Field(0.5, gt=0.0, lt=1.0)
    epoch_slices: int | None = Field(None, ge=1)
    """Training slices drawn per epoch (with replacement when weighted); all of them when unset."""
    tensor_cache: bool = False
    """Read the model-resolution images from the cohort's tensor cache (``DIR/.i2m2_cache``,
    :mod:`i2m2_med.data.cache`; built on first use), and find the studies whose k-space was
    dropped after caching there."""
    num_workers: int = Field(0, ge=0)
    cache_size: int = Field(512, ge=0)
    """Slices kept in memory by the data loader (per worker); bounds memory independently of the
    cohort size."""
    precision: Literal["32-true", "16-mixed", "bf16-mixed"] = "32-true"
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    seed: int = 0

    @field_validator("aggregation")
    @classmethod
    def _known_rule(cls, name: str) -> str:
        if name not in CONFIG_RULES:
            raise ValueError(f"unknown rule {name!r}; expected one of {', '.join(CONFIG_RULES)}")
        return name

    @model_validator(mode="after")
    def _fractions(self) -> "TrainingConfig":
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must leave subjects for training (sum < 1)")
        return self


class Config(_Strict):
    """The whole configuration of a model and its training."""

    name: str = "custom"
    image_size: int = Field(320, ge=8, le=1024)
    """Side of the square magnitude / phase images (pixels), centre-cropped / resized upstream."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    @model_validator(mode="after")
    def _pool_fits(self) -> "Config":
        side = self.model.image_expert.feature_size(self.image_size)
        if self.model.image_expert.pool_size > side:
            raise ValueError(
                f"model.image_expert.pool_size={self.model.image_expert.pool_size} exceeds the last "
                f"feature map ({side}x{side} for image_size={self.image_size})"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-serialisable dict; ``config_from_dict(c.to_dict()) == c``."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_updates(self, **dotted: Any) -> "Config":
        """A copy with dotted keys replaced and re-validated, e.g.
        ``c.with_updates(**{"training.max_epochs": 3})``; raises ConfigError on a bad key."""
        data = self.to_dict()
        for key, value in dotted.items():
            node = data
            parts = key.split(".")
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    raise ConfigError("config override", f"{key}: unknown key")
                node = node[part]
            if parts[-1] not in node:
                raise ConfigError("config override", f"{key}: unknown key")
            node[parts[-1]] = value
        return config_from_dict(data, where="config override")


# ---- loading ------------------------------------------------------------------------------


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-5`` (no dot) as a float, as YAML 1.2 does."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _format_error(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()))
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return f"{loc}: unknown key"
    msg = str(err.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if "input" in err and kind != "missing" and not isinstance(err["input"], dict):
        msg = f"{msg} (got {err['input']!r})"
    return f"{loc}: {msg}" if loc else msg


#: Removed keys -> the value that meant what the config means without them. A file or a
#: checkpoint's config that still carries one at that value loads as before; any other value is
#: an unknown key.
RETIRED_KEYS: dict[tuple[str, ...], Any] = {
    ("model", "image_expert", "kind"): "preact_resnet",
    ("model", "image_expert", "norm"): "group",
    ("model", "image_expert", "stem_kernel"): 3,
    ("model", "joint", "swi_channel"): False,
    ("model", "joint", "swi_power"): 4,
    ("model", "joint", "image_fusion"): "early",
    ("optim", "optimizer"): "adamw",
}


def _without_retired_keys(data: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for path, value in RETIRED_KEYS.items():
        node: Any = data
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and path[-1] in node and type(node[path[-1]]) is type(value) and node[path[-1]] == value:
            del node[path[-1]]
    return data


def config_from_dict(data: Any, where: str | os.PathLike = "config") -> Config:
    """Validate a plain dict (as read from YAML) into a :class:`Config`; ConfigError otherwise."""
    if not isinstance(data, dict):
        raise ConfigError(where, f"expected a mapping of config keys at the top level, got {type(data).__name__}")
    try:
        return Config.model_validate(_without_retired_keys(data))
    except ValidationError as exc:
        errors = exc.errors()
        first = _format_error(errors[0])
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(where, first + more) from None


def shipped_config_path(name: str) -> Path:
    """Path of a shipped config (one of :data:`SHIPPED_CONFIGS`): the YAML file beside this module."""
    if name not in SHIPPED_CONFIGS:
        raise ConfigError(name, f"unknown config name; expected one of {', '.join(SHIPPED_CONFIGS)} or a YAML file path")
    return Path(str(resources.files(__name__).joinpath(f"{name}.yaml")))


def load_config(name_or_path: str | os.PathLike) -> Config:
    """A shipped config's name (:data:`SHIPPED_CONFIGS`) or a path to a YAML file -> a validated Config.

    Raises ConfigError(file, "<key.path>: <expected>") for a missing or unreadable file, invalid
    YAML, an unknown key or an ill-typed value.
    """
    text_name = os.fspath(name_or_path)
    if isinstance(name_or_path, str) and text_name in SHIPPED_CONFIGS:
        path = shipped_config_path(text_name)
    else:
        path = Path(text_name)
        if not path.is_file():
            raise ConfigError(
                path, f"no such config file (shipped configs: {', '.join(SHIPPED_CONFIGS)})"
            )
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_YamlLoader)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, f"cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(path, f"invalid YAML{line}: {getattr(exc, 'problem', None) or exc}") from None
    return config_from_dict(data, where=path)
