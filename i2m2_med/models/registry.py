"""Model variants by name (the ablation grid) and the model that runs them.

===============  =========================================  ======================================
variant          experts (terms of the product)             modalities needed
===============  =========================================  ======================================
``mag``          magnitude                                  magnitude
``phase``        phase                                      phase
``tab``          tabular                                    tabular
``intra``        magnitude, phase, tabular                  each expert its own
``inter``        joint (magnitude+phase early fusion,       magnitude, phase (+ tabular when
                 tabular fused by FiLM / concat)            ``n_tabular > 0`` and fusion != none)
``i2m2``         magnitude, phase, tabular, joint           as above
``i2m2-notab``   magnitude, phase, joint (images only:      magnitude, phase
                 the joint model does not fuse tabular)
===============  =========================================  ======================================

Missing modalities: an expert runs only when every modality it needs is in the batch; otherwise it
is dropped from the product and listed in ``I2M2Output.dropped``. The joint model drops out when
magnitude or phase is missing; the tabular vector it fuses is optional: without it the fusion is
the identity (no placeholder values enter the model), only the tabular expert's term leaves the
product, and ``joint.tabular_dropout`` trains the joint model for that case. When no expert
of the variant can run, :class:`~i2m2_med.errors.UsageError` says which modalities are missing.

A modality may also be absent for only some samples of a batch: ``batch["present"][m]`` as a bool
tensor ``[B]`` (the collated form of the per-sample ``present`` dict), or ``batch["present"]`` as a
list of per-sample dicts. The expert then runs on the whole batch, but its term is excluded for
those samples (``I2M2Output.mask``); a sample left with no expert raises UsageError.

State-dict keys are ``experts.<name>.*`` (and ``prior.logits``; ``prior_offset`` once the prior
has been refitted after training, see :meth:`I2M2Model.set_prior_offset`; ``study_calibration``
once the study-level map has been fitted, :meth:`I2M2Model.set_study_calibration`; ``shift_*``
once the distribution-shift statistics have been fitted, :meth:`I2M2Model.set_shift_statistics`)
in every variant.
"""

from __future__ import annotations

from typing import Any, Collection, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from i2m2_med.config import Config
from i2m2_med.errors import UsageError
from i2m2_med.heads import HEADS
from i2m2_med.models.experts import ImageExpert, JointModel, TabularExpert
from i2m2_med.models.phase_filter import phase_input_module
from i2m2_med.models.product import I2M2Output, Prior, combine

MODALITIES: tuple[str, ...] = ("magnitude", "phase", "tabular")
EXPERTS: tuple[str, ...] = ("magnitude", "phase", "tabular", "joint")
VARIANTS: dict[str, tuple[str, ...]] = {
    "mag": ("magnitude",),
    "phase": ("phase",),
    "tab": ("tabular",),
    "intra": ("magnitude", "phase", "tabular"),
    "inter": ("joint",),
    "i2m2": ("magnitude", "phase", "tabular", "joint"),
    "i2m2-notab": ("magnitude", "phase", "joint"),
}
VARIANT_TITLES: dict[str, str] = {
    "mag": "Magnitude expert",
    "phase": "Phase expert",
    "tab": "Tabular expert",
    "intra": "Intra-modality (product of unimodal experts)",
    "inter": "Inter-modality (joint model)",
    "i2m2": "I2M2 (unimodal experts x joint model)",
    "i2m2-notab": "I2M2 without tabular data",
}
_JOINT_FUSES_TABULAR: dict[str, bool] = {"inter": True, "i2m2": True, "i2m2-notab": False}


def variant_experts(variant: str) -> tuple[str, ...]:
    """The experts of a variant, in the order of ``I2M2Output.terms``; UsageError if unknown."""
    if variant not in VARIANTS:
        raise UsageError(f"variant {variant!r}", f"unknown variant; expected one of {', '.join(VARIANTS)}")
    return VARIANTS[variant]


class I2M2Model(nn.Module):
    """A variant: its experts (``nn.ModuleDict`` keyed by expert name) and an optional prior.

    ``forward(batch) -> I2M2Output`` where ``batch`` is a mapping with (each optional, at least one
    expert's inputs required):

    * ``"magnitude"``: float tensor ``[B, 1, H, W]``;
    * ``"phase"``: float tensor ``[B, 1, H, W]`` (radians);
    * ``"tabular"``: float tensor ``[B, n_tabular]``;
    * ``"present"``: mapping modality -> bool or bool tensor ``[B]`` (default: True for every
      modality key in the batch).

    Other keys (``labels``, ``study_id``, ``slice``...) are ignored.
    """

    def __init__(self, variant: str, config: Config, n_tabular: int):
        super().__init__()
        experts = variant_experts(variant)
        if n_tabular < 0:
            raise UsageError(f"variant {variant!r}", f"n_tabular must be >= 0, got {n_tabular}")
        if "tabular" in experts and n_tabular == 0:
            raise UsageError(
                f"variant {variant!r}",
                "needs tabular features but n_tabular is 0; use 'mag', 'phase', 'inter' or 'i2m2-notab' for images only",
            )
        self.variant = variant
        self.config = config
        self.n_tabular = int(n_tabular)
        mcfg = config.model
        modules: dict[str, nn.Module] = {}
        def phase_filter() -> nn.Module:
            return phase_input_module(mcfg.phase_input.filter, mcfg.phase_input.sigma_px)

        for name in experts:
            if name == "magnitude":
                modules[name] = ImageExpert(1, mcfg.image_expert)
            elif name == "phase":
                modules[name] = ImageExpert(1, mcfg.image_expert, input_filter=phase_filter())
            elif name == "tabular":
                modules[name] = TabularExpert(n_tabular, mcfg.tabular_expert)
            else:
                fuse = _JOINT_FUSES_TABULAR[variant]
                modules[name] = JointModel(mcfg.image_expert, mcfg.joint, n_tabular if fuse else 0,
                                           phase_filter=phase_filter())
        self.experts = nn.ModuleDict(modules)
        self.prior = Prior(len(HEADS)) if mcfg.prior else None
        self.prior_offset: Tensor | None = None
        self.study_calibration: Tensor | None = None

    # ---- the prior refitted after training --------------------------------------------------

    def set_prior_offset(self, offset: Tensor | None) -> None:
        """Set (``[4]`` log-odds per head) or remove (None) the prior offset refitted after
        training (:func:`i2m2_med.metrics.calibration.fit_prior_offset`).

        The offset adds ``log p(y)`` with ``p(y=1) = sigmoid(offset)`` to the ``"prior"`` term of
        the product (the term exists from then on even when ``model.prior`` is off), so the
        combined log-odds move by ``offset`` per head and every expert's own output is unchanged.
        It is a persistent buffer: it travels in the state dict, the checkpoint's hashes and the
        model's fingerprint like any weight.
        """
        if "prior_offset" in self._buffers:
            del self._buffers["prior_offset"]
        if offset is None:
            self.prior_offset = None
            return
        value = torch.as_tensor(offset, dtype=torch.float32).detach().reshape(-1).clone()
        if value.numel() != len(HEADS) or not bool(torch.isfinite(value).all()):
            raise UsageError("prior_offset", f"expected {len(HEADS)} finite log-odds, got {value.tolist()}")
        if "prior_offset" in self.__dict__:
            del self.__dict__["prior_offset"]
        device = next(self.parameters()).device
        self.register_buffer("prior_offset", value.to(device), persistent=True)

    # ---- the study-level calibration fitted after training -------------------------------------

    def set_study_calibration(self, params: Tensor | np.ndarray | None) -> None:
        """Set (``[4, 2]``: slope and intercept per head) or remove (None) the study-level
        calibration map fitted on validation after training
        (:func:`i2m2_med.metrics.calibration.fit_study_calibration`): a study's probability is
        ``sigmoid(slope * logit(score) + intercept)`` of its aggregated score. A persistent buffer,
        so the checkpoint hash and fingerprint cover it; it does not change any slice output."""
        if "study_calibration" in self._buffers:
            del self._buffers["study_calibration"]
        if params is None:
            self.study_calibration = None
            return
        value = torch.as_tensor(params, dtype=torch.float32).detach().clone()
        if tuple(value.shape) != (len(HEADS), 2) or not bool(torch.isfinite(value).all()):
            raise UsageError("study_calibration", f"expected ({len(HEADS)}, 2) finite values, got {tuple(value.shape)}")
        if "study_calibration" in self.__dict__:
            del self.__dict__["study_calibration"]
        self.register_buffer("study_calibration", value.to(next(self.parameters()).device), persistent=True)

    def study_calibration_map(self) -> np.ndarray | None:
        """The study-level map as ``(4, 2)`` float64, or None when none was fitted."""
        return None if self.study_calibration is None else self.study_calibration.detach().cpu().double().numpy()

    # ---- the distribution-shift statistics fitted after training --------------------------------

    SHIFT_PREFIX = "shift_"

    def shift_experts(self) -> tuple[str, ...]:
        """The experts whose features the distribution-shift score reads: those that read the
        images alone -- the magnitude and phase experts, and the joint model when it fuses no
        tabular vector (with FiLM or concatenation its features move with the clinical values,
        and a study without a clinical table would look shifted)."""
        joint = self.experts["joint"] if "joint" in self.experts else None
        return tuple(e for e in ("magnitude", "phase", "joint") if e in self.experts
                     and (e != "joint" or not joint.uses_tabular))

    def shift_feature_dim(self, expert: str) -> int:
        """Width of an image expert's penultimate features (the input of its heads layer)."""
        return int(self.experts[expert].head.in_features)

    def shift_buffer_shapes(self, experts: tuple[str, ...] | list[str]) -> dict[str, tuple[int, ...]]:
        """Name -> shape of the shift buffers for ``experts``: ``shift_<expert>_mean`` ``[D]``,
        ``shift_<expert>_precision`` ``[D, D]`` and ``shift_threshold`` ``[1]``. UsageError for an
        expert that is not an image expert of this variant."""
        shapes: dict[str, tuple[int, ...]] = {}
        for e in experts:
            if e not in self.shift_experts():
                raise UsageError("shift statistics", f"{e!r} is not an image expert of variant {self.variant!r}")
            d = self.shift_feature_dim(e)
            shapes[f"{self.SHIFT_PREFIX}{e}_mean"] = (d,)
            shapes[f"{self.SHIFT_PREFIX}{e}_precision"] = (d, d)
        shapes[f"{self.SHIFT_PREFIX}threshold"] = (1,)
        return shapes

    def set_shift_statistics(self, stats: Mapping[str, Tensor] | None) -> None:
        """Set (name -> tensor, the names of :meth:`shift_buffer_shapes`) or remove (None) the
        statistics of the distribution-shift score (:mod:`i2m2_med.inference.shift` fits and reads
        them). Persistent buffers: the checkpoint's hashes, its HMAC and the fingerprint cover
        them like any weight; they change no output of the product."""
        for name in [n for n in self._buffers if n.startswith(self.SHIFT_PREFIX)]:
            del self._buffers[name]
        if stats is None:
            return
        names = {n for n in stats}
        experts = sorted({n[len(self.SHIFT_PREFIX):-len("_mean")] for n in names if n.endswith("_mean")})
        expected = self.shift_buffer_shapes(experts)
        if names != set(expected):
            raise UsageError("shift statistics", f"expected tensors {sorted(expected)}, got {sorted(names)}")
        device = next(self.parameters()).device
        for name, shape in expected.items():
            value = torch.as_tensor(stats[name], dtype=torch.float32).detach().clone()
            if tuple(value.shape) != shape or not bool(torch.isfinite(value).all()):
                raise UsageError("shift statistics", f"{name} must be {shape} finite values, got {tuple(value.shape)}")
            self.register_buffer(name, value.to(device), persistent=True)

    def shift_statistics(self) -> dict[str, Tensor]:
        """The shift buffers (empty when none were fitted)."""
        return {n: b for n, b in self._buffers.items() if n.startswith(self.SHIFT_PREFIX) and b is not None}

    @property
    def has_prior(self) -> bool:
        """True when the product has a ``"prior"`` term (a learned prior, a refitted offset, or both)."""
        return self.prior is not None or self.prior_offset is not None

    def _prior_term(self, batch_size: int) -> Tensor:
        logits = self.prior.logits if self.prior is not None else None
        if self.prior_offset is not None:
            shift = torch.stack([torch.zeros_like(self.prior_offset), self.prior_offset], dim=-1)
            logits = shift if logits is None else logits + shift.to(logits)
        return F.log_softmax(logits, dim=-1).unsqueeze(0).expand(batch_size, -1, -1)

    # ---- structure -------------------------------------------------------------------------

    @property
    def expert_names(self) -> tuple[str, ...]:
        return tuple(self.experts.keys())

    def required_modalities(self, expert: str) -> tuple[str, ...]:
        """Modalities an expert of this model needs, e.g. ``("magnitude", "phase", "tabular")``."""
        if expert == "joint":
            return ("magnitude", "phase")  # the tabular vector is optional (JointModel.forward)
        if expert not in EXPERTS:
            raise UsageError(f"expert {expert!r}", f"unknown expert; expected one of {', '.join(EXPERTS)}")
        return (expert,)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Every modality some expert of this model reads."""
        needed = {m for e in self.expert_names for m in self.required_modalities(e)}
        if "joint" in self.experts and self.experts["joint"].uses_tabular:
            needed.add("tabular")
        return tuple(m for m in MODALITIES if m in needed)

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary: variant, experts and the modalities each needs, parameter counts."""
        return {
            "variant": self.variant,
            "experts": {e: list(self.required_modalities(e)) for e in self.expert_names},
            "prior": self.prior is not None,
            "prior_offset": None if self.prior_offset is None else [float(v) for v in self.prior_offset],
            "n_tabular": self.n_tabular,
            "parameters": {e: sum(p.numel() for p in m.parameters()) for e, m in self.experts.items()},
        }

    # ---- forward ---------------------------------------------------------------------------

    def _presence(self, batch: Mapping[str, Any], batch_size: int, device: torch.device) -> dict[str, Tensor]:
        """modality -> bool [B] for the modalities present in the batch (all-False ones removed)."""
        flags = batch.get("present") or {}
        if isinstance(flags, (list, tuple)):  # per-sample dicts, uncollated
            if len(flags) != batch_size or not all(isinstance(f, Mapping) for f in flags):
                raise UsageError("batch", f"present must be a mapping or {batch_size} per-sample mappings")
            flags = {m: torch.tensor([bool(f.get(m, True)) for f in flags]) for m in MODALITIES}
        out: dict[str, Tensor] = {}
        for m in MODALITIES:
            if batch.get(m) is None:
                continue
            flag = flags.get(m, True) if isinstance(flags, Mapping) else True
            if isinstance(flag, Tensor):
                flag = flag.to(device=device, dtype=torch.bool).reshape(-1)
                if flag.numel() == 1:
                    flag = flag.expand(batch_size)
            else:
                flag = torch.as_tensor(flag, dtype=torch.bool, device=device).reshape(-1).expand(batch_size)
            if flag.numel() != batch_size:
                raise UsageError("batch", f"present[{m!r}] has {flag.numel()} entries for a batch of {batch_size}")
            if bool(flag.any()):
                out[m] = flag
        return out

    def _check_inputs(self, batch: Mapping[str, Any]) -> int:
        sizes = {}
        for m in ("magnitude", "phase"):
            x = batch.get(m)
            if x is None:
                continue
            if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 1:
                shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise UsageError("batch", f"{m} must be a float tensor [B, 1, H, W], got {shape}")
            sizes[m] = x.shape[0]
        t = batch.get("tabular")
        if t is not None and "tabular" in self.modalities:
            if not isinstance(t, Tensor) or t.ndim != 2 or t.shape[1] != self.n_tabular:
                shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise UsageError("batch", f"tabular must be a float tensor [B, {self.n_tabular}], got {shape}")
            sizes["tabular"] = t.shape[0]
        if len(set(sizes.values())) > 1:
            raise UsageError("batch", f"modalities disagree on the batch size: {sizes}")
        if not sizes:
            raise UsageError(
                f"variant {self.variant!r}",
                f"no expert can run: the batch has none of {', '.join(self.modalities)}",
            )
        return next(iter(sizes.values()))

    def expert_logits(self, name: str, batch: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> Tensor:
        """Logits ``[B, 4, 2]`` of one expert on ``batch`` (modality -> tensor); ``present``
        (modality -> bool ``[B]``) tells the joint model on which samples to fuse the tabular
        vector. The expert's own modalities must be in ``batch``."""
        expert = self.experts[name]
        if name in ("magnitude", "phase", "tabular"):
            return expert(batch[name].float())
        with_tab = expert.uses_tabular and "tabular" in present
        tab = batch["tabular"].float() if with_tab else None
        return expert(batch["magnitude"].float(), batch["phase"].float(), tab, present["tabular"] if with_tab else None)

    def forward(
        self, batch: Mapping[str, Any], only: Collection[str] | None = None, known: Mapping[str, Tensor] | None = None,
    ) -> I2M2Output:
        """The product of the experts on ``batch``; ``only``: run just these experts (the others
        are neither computed nor in the output: a warm start whose other experts have finished);
        ``known``: expert name -> its raw logits ``[B, 4, 2]`` on this batch, used instead of
        running that expert (the validation of a warm start, where a finished expert's logits no
        longer change)."""
        batch_size = self._check_inputs(batch)
        device = next(self.parameters()).device
        present = self._presence(batch, batch_size, device)
        terms: dict[str, Tensor] = {}
        logits: dict[str, Tensor] = {}
        mask: dict[str, Tensor] = {}
        dropped: list[str] = []
        for name in self.experts:
            if only is not None and name not in only:
                continue
            needs = self.required_modalities(name)
            if any(m not in present for m in needs):
                dropped.append(name)
                continue
            z = known[name] if known is not None and name in known else self.expert_logits(name, batch, present)
            logits[name] = z
            terms[name] = F.log_softmax(z, dim=-1)
            usable = torch.stack([present[m] for m in needs]).all(dim=0)
            if not bool(usable.all()):
                mask[name] = usable
        if not terms:
            missing = sorted({m for e in self.expert_names for m in self.required_modalities(e)} - set(present))
            raise UsageError(
                f"variant {self.variant!r}",
                f"no expert can run: missing {', '.join(missing)} (experts {', '.join(self.expert_names)})",
            )
        if mask:
            covered = torch.zeros(batch_size, dtype=torch.bool, device=device)
            for name in terms:
                covered |= mask.get(name, torch.ones_like(covered))
            if not bool(covered.all()):
                raise UsageError(
                    f"variant {self.variant!r}",
                    f"no expert can run for {int((~covered).sum())} sample(s) of the batch (their modalities are marked absent)",
                )
        if self.has_prior:
            terms["prior"] = self._prior_term(batch_size)
        return I2M2Output(terms=terms, combined=combine(terms, mask or None), dropped=dropped, mask=mask, logits=logits)

    @torch.no_grad()
    def predict(self, batch: Mapping[str, Any]) -> I2M2Output:
        """Inference: eval mode, no gradients, detached output (train mode restored after)."""
        was_training = self.training
        self.eval()
        try:
            return self.forward(batch).detach()
        finally:
            self.train(was_training)


def build_model(variant: str, config: Config, n_tabular: int) -> I2M2Model:
    """The model of a variant (``mag``, ``phase``, ``tab``, ``intra``, ``inter``, ``i2m2``,
    ``i2m2-notab``) for ``config`` and ``n_tabular`` tabular features (0: none)."""
    return I2M2Model(variant, config, n_tabular)


def per_expert_param_groups(model: I2M2Model, config: Config | None = None) -> list[dict[str, Any]]:
    """AdamW parameter groups, one per expert (and the prior), with that expert's ``lr`` and
    ``weight_decay`` from ``config.optim`` (default: the model's config). Each group carries a
    ``"name"`` key. Use: ``torch.optim.AdamW(per_expert_param_groups(m, c), betas=c.optim.betas)``.
    """
    optim = (config or model.config).optim
    groups = []
    for name, expert in model.experts.items():
        settings = getattr(optim, name)
        params = [p for p in expert.parameters() if p.requires_grad]
        if params:
            groups.append({"name": name, "params": params, "lr": settings.lr, "weight_decay": settings.weight_decay})
    if model.prior is not None:
        groups.append({"name": "prior", "params": [model.prior.logits], "lr": optim.prior.lr, "weight_decay": optim.prior.weight_decay})
    return groups
