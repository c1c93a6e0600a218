"""I2M2 models: experts, the joint (inter-modality) model, the product of experts, the variants."""

from i2m2_med.models.experts import ImageExpert, JointModel, TabularExpert
from i2m2_med.models.product import I2M2Output, Prior, combine, nll
from i2m2_med.models.registry import (
    EXPERTS,
    MODALITIES,
    VARIANT_TITLES,
    VARIANTS,
    I2M2Model,
    build_model,
    per_expert_param_groups,
    variant_experts,
)

__all__ = [
    "EXPERTS",
    "MODALITIES",
    "VARIANTS",
    "VARIANT_TITLES",
    "I2M2Model",
    "I2M2Output",
    "ImageExpert",
    "JointModel",
    "Prior",
    "TabularExpert",
    "build_model",
    "combine",
    "nll",
    "per_expert_param_groups",
    "variant_experts",
]
