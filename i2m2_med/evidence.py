"""Per-expert evidence of the product of experts.

One module, although a little over 500 lines: its three readings of a decision -- each expert's
additive contribution, where an image expert looks, what the tabular expert reads -- answer the
one question the app and the reports ask (which expert decided, and on what) and share the
expert and head lookups.

The I2M2 combination is, per head, ``log p(y|x) = sum_e log p_e(y|x) - logsumexp_y(...)``, so its
log-odds are exactly the sum of the experts' log-odds:

    log p(1|x) - log p(0|x) = sum_e [log p_e(1|x) - log p_e(0|x)]

(the normaliser cancels). Each expert's term ``log p_e(1) - log p_e(0)`` is therefore its additive
*contribution* to the decision, in nats of log-odds. Everything here reads the model's output
contract (:class:`i2m2_med.models.product.I2M2Output`, or anything shaped like it:
:class:`ModelOutput`): ``terms`` (dict expert -> log-probabilities ``[B, H, 2]``, the prior
included when the model uses one; a dropped expert is absent), ``combined`` (``[B, H, 2]``) and
the optional ``mask`` (expert -> bool ``[B]``: the expert ran but is excluded for the samples
where it is False, e.g. its modality is missing there). An excluded expert contributes 0 for
those samples, exactly as in the product. Inputs may be torch tensors or numpy arrays; outputs
are numpy float64 / int64 arrays. Nothing here imports torch at import time.

Where each expert looks, and what the tabular expert reads (these two run the model, so they
import torch and MONAI when called):

* :func:`saliency` -- a map ``(H, W)`` per image expert (``magnitude``, ``phase``, ``joint``) and
  head: MONAI's GradCAM of the expert's log-odds, or MONAI's occlusion sensitivity (the change of
  the expert's log-odds when a patch is occluded, in nats, signed);
* :func:`tabular_attributions` -- integrated gradients of the tabular expert's log-odds per
  feature and head, which add up to the log-odds minus that of the baseline vector.
"""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple, Protocol, Sequence

import numpy as np

from i2m2_med.errors import UndefinedMetricError, UsageError
from i2m2_med.heads import HEADS

if TYPE_CHECKING:  # the models import torch, which this module only loads when a function needs it
    from i2m2_med.models import I2M2Model

EXPERT_ORDER: tuple[str, ...] = ("magnitude", "phase", "tabular", "joint", "prior")
"""Canonical order of the terms in every output of this module (unknown names follow, sorted)."""

PRIOR = "prior"


class ModelOutput(Protocol):
    """What the evidence of a product is read from: a model's
    :class:`~i2m2_med.models.product.I2M2Output`, a study's
    :class:`~i2m2_med.inference.prediction.StudyPrediction`, the ablation's
    ``Predictions.output()``, or any object with these attributes. The arrays are numpy arrays or
    torch tensors. A ``mask`` attribute (expert -> bool ``[B]``) is read when present: only a
    model's own output excludes experts for some samples."""

    @property
    def terms(self) -> Mapping[str, Any]:
        """expert -> log-probabilities ``[B, H, 2]``."""

    @property
    def combined(self) -> Any:
        """The normalised product's log-probabilities ``[B, H, 2]``."""


Evidence = ModelOutput | Mapping[str, Any]
"""A model output, or its terms alone as a mapping (expert -> ``[B, H, 2]``)."""


class DrivingExperts(NamedTuple):
    """Which expert drives each decision.

    ``experts``: the names indexed by ``index``; ``index`` (B, H) int64, the expert with the largest
    contribution in the direction of the decision, -1 where no expert pushes that way (possible
    only with a threshold other than 0.5); ``decision`` (B, H) bool, the combined decision.
    """

    experts: tuple[str, ...]
    index: np.ndarray
    decision: np.ndarray


class Agreement(NamedTuple):
    """Pairwise agreement of the experts' own decisions (each alone: positive when ``p_e(1) >= 0.5``).

    ``matrix[h, i, j]`` (H, E, E) float64: the fraction of samples where experts i and j make the
    same decision for head h, over the ``counts[i, j]`` (E, E) int64 samples where both take part
    (see the ``mask`` of the output). Ones on the diagonal; NaN exactly where ``counts`` is 0,
    which :meth:`to_dict` writes as None.
    """

    experts: tuple[str, ...]
    matrix: np.ndarray
    counts: np.ndarray

    def to_dict(self, heads: Sequence[str] = HEADS) -> dict[str, Any]:
        """JSON-ready: ``{"experts": [...], "counts": [[...]], "per_head": {head: [[...]]}}``."""
        if len(heads) != self.matrix.shape[0]:
            raise UsageError("heads", f"{len(heads)} head names for {self.matrix.shape[0]} heads")
        return {
            "experts": list(self.experts),
            "counts": self.counts.tolist(),
            "per_head": {
                head: [[None if np.isnan(v) else float(v) for v in row] for row in self.matrix[h]]
                for h, head in enumerate(heads)
            },
        }


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[-1] != 2:
        raise UsageError(name, f"log-probabilities must be [B, H, 2], got shape {arr.shape}")
    if np.isnan(arr).any() or np.isposinf(arr).any():
        raise UsageError(name, "log-probabilities contain NaN or +inf")
    return arr


def _terms(output: Evidence) -> dict[str, np.ndarray]:
    """The terms of an output object (``.terms``) or of a plain mapping, in canonical order."""
    raw = output if isinstance(output, Mapping) else output.terms
    if not isinstance(raw, Mapping) or not raw:
        raise UsageError("terms", "expected a model output with a non-empty terms dict (expert -> [B, H, 2])")
    names = sorted(raw, key=lambda n: (EXPERT_ORDER.index(n) if n in EXPERT_ORDER else len(EXPERT_ORDER), n))
    terms = {name: _to_numpy(raw[name], f"terms[{name!r}]") for name in names}
    shapes = {t.shape for t in terms.values()}
    if len(shapes) != 1:
        raise UsageError("terms", f"every term must have the same shape, got {sorted(shapes)}")
    return terms


def _masks(output: Evidence, terms: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """expert -> bool (B,): where the expert takes part (all True unless the output masks it)."""
    raw = getattr(output, "mask", None) or {}  # optional: see ModelOutput
    n = next(iter(terms.values())).shape[0]
    out = {}
    for name in terms:
        if name in raw:
            m = raw[name]
            if hasattr(m, "detach"):
                m = m.detach().cpu().numpy()
            m = np.asarray(m).astype(bool)
            if m.shape != (n,):
                raise UsageError(f"mask[{name!r}]", f"a mask must be bool [B] = ({n},), got {m.shape}")
            out[name] = m
        else:
            out[name] = np.ones(n, dtype=bool)
    return out


def _log_odds(logp: np.ndarray) -> np.ndarray:
    """``log p(1) - log p(0)`` of [B, H, 2] log-probabilities -> (B, H); +-inf where a class has p 0."""
    with np.errstate(invalid="ignore"):
        return logp[..., 1] - logp[..., 0]


def contributions(output: Evidence, include_prior: bool = True) -> dict[str, np.ndarray]:
    """Each term's log-odds contribution ``log p_e(1) - log p_e(0)``: expert -> (B, H) float64,
    0 for the samples where the output's ``mask`` excludes the expert.

    With ``include_prior`` (default) the contributions of all terms add up to
    :func:`combined_log_odds` exactly (up to floating-point rounding).
    """
    terms = _terms(output)
    masks = _masks(output, terms)
    return {
        name: np.where(masks[name][:, None], _log_odds(t), 0.0)
        for name, t in terms.items()
        if include_prior or name != PRIOR
    }


def combined_log_odds(output: Evidence) -> np.ndarray:
    """Log-odds of the combined prediction, (B, H) float64, from ``output.combined`` [B, H, 2]."""
    combined = None if isinstance(output, Mapping) else output.combined
    if combined is None:
        raise UsageError("combined", "the model output has no combined log-probabilities")
    return _log_odds(_to_numpy(combined, "combined"))


def _thresholds(threshold: float | Sequence[float], n_heads: int) -> np.ndarray:
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (n_heads,)).copy()
    if not ((thr > 0.0) & (thr < 1.0)).all():
        raise UsageError("threshold", f"thresholds must lie strictly between 0 and 1, got {thr.tolist()}")
    return thr


def driving_expert(
    output: Evidence, threshold: float | Sequence[float] = 0.5, include_prior: bool = True
) -> DrivingExperts:
    """The expert that drives each combined decision.

    The decision for a head is ``p(1) >= threshold`` (a scalar or one per head (H,)), i.e.
    combined log-odds ``>= logit(threshold)``. Among the experts whose contribution points the same
    way (positive for a positive decision, negative for a negative one), the one with the largest
    magnitude drives it. With the default 0.5 some expert always points the decision's way,
    because the contributions sum to the combined log-odds.
    """
    contrib = contributions(output, include_prior=include_prior)
    names = tuple(contrib)
    stack = np.stack([contrib[n] for n in names])  # (E, B, H)
    thr = _thresholds(threshold, stack.shape[2])
    log_odds = combined_log_odds(output)
    if log_odds.shape != stack.shape[1:]:
        raise UsageError("combined", f"combined is {log_odds.shape[:2]} but the terms are {stack.shape[1:]}")
    decision = log_odds >= np.log(thr) - np.log1p(-thr)
    direction = np.where(decision, 1.0, -1.0)
    pushing = stack * direction[None]  # > 0 where the expert pushes towards the decision
    best = np.argmax(pushing, axis=0)
    none = np.take_along_axis(pushing, best[None], axis=0)[0] <= 0.0
    index = np.where(none, -1, best).astype(np.int64)
    return DrivingExperts(names, index, decision)


def driving_frequency(driving: DrivingExperts, heads: Sequence[str] = HEADS) -> dict[str, dict[str, float]]:
    """How often each expert drives the decision: head -> {expert: fraction of samples}, plus
    ``"none"`` for the fraction where no expert pushes the decision's way. JSON-ready.

    Raises UndefinedMetricError for an empty batch.
    """
    n_samples, n_heads = driving.index.shape
    if len(heads) != n_heads:
        raise UsageError("heads", f"{len(heads)} head names for {n_heads} heads")
    if n_samples == 0:
        raise UndefinedMetricError("driving_frequency", "no samples: cannot say which expert drives decisions")
    out: dict[str, dict[str, float]] = {}
    for h, head in enumerate(heads):
        column = driving.index[:, h]
        row = {name: float(np.mean(column == e)) for e, name in enumerate(driving.experts)}
        row["none"] = float(np.mean(column == -1))
        out[head] = row
    return out


def agreement_matrix(output: Evidence, include_prior: bool = False) -> Agreement:
    """Pairwise agreement of the experts' own decisions (see :class:`Agreement`).

    The prior is left out by default: it sees no input, so its decision is the same for every
    sample. Raises UndefinedMetricError for an empty batch.
    """
    terms = _terms(output)
    masks = _masks(output, terms)
    names = tuple(n for n in terms if include_prior or n != PRIOR)
    if not names:
        raise UsageError("terms", "no expert terms to compare")
    decisions = np.stack([_log_odds(terms[n]) >= 0.0 for n in names])  # (E, B, H)
    present = np.stack([masks[n] for n in names])  # (E, B)
    if decisions.shape[1] == 0:
        raise UndefinedMetricError("agreement_matrix", "no samples: agreement between experts is undefined")
    both = present[:, None, :] & present[None, :, :]  # (E, E, B)
    same = (decisions[:, None] == decisions[None, :]) & both[..., None]  # (E, E, B, H)
    counts = both.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.where(counts[..., None] > 0, same.sum(axis=2) / counts[..., None], np.nan)
    return Agreement(names, np.moveaxis(matrix, -1, 0), counts.astype(np.int64))


# ---- where the experts look ---------------------------------------------------------------------

IMAGE_EXPERTS: tuple[str, ...] = ("magnitude", "phase", "joint")
"""Experts with an image input, for which :func:`saliency` is defined."""
SALIENCY_METHODS: tuple[str, ...] = ("gradcam", "occlusion", "integrated_gradients")
SIGNED_METHODS: tuple[str, ...] = ("occlusion", "integrated_gradients")
"""Methods whose map is signed, in nats: positive where the image raises the head's log-odds."""
IG_STEPS = 64
"""Integration steps of :func:`saliency`'s integrated gradients (midpoint rule)."""
IG_CHUNK_VALUES = 1 << 19
"""Input values per forward/backward pass of integrated gradients (the path points are batched)."""


def _head_index(head: int | str) -> int:
    if isinstance(head, str):
        if head not in HEADS:
            raise UsageError(f"head {head!r}", f"unknown head; expected one of {', '.join(HEADS)}")
        return HEADS.index(head)
    index = int(head)
    if not 0 <= index < len(HEADS):
        raise UsageError(f"head {head!r}", f"head index must lie in 0..{len(HEADS) - 1}")
    return index


def _expert_module(model: I2M2Model, expert: str) -> Any:
    if expert not in model.experts:
        have = ", ".join(model.expert_names) or "none"
        raise UsageError(f"expert {expert!r}", f"the model has no such expert (it has: {have})")
    return model.experts[expert]


def _image_tensor(sample: Mapping[str, Any], modality: str, expert: str) -> Any:
    import torch

    x = sample.get(modality)
    if x is None or not bool((sample.get("present") or {}).get(modality, True)):
        raise UsageError(f"expert {expert!r}", f"the sample has no {modality} image (missing modality)")
    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    x = x.detach().float()
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] != 1:
        raise UsageError(f"sample[{modality!r}]", f"expected a [1, H, W] image, got shape {tuple(x.shape)}")
    return x


def _log_odds_network(model: I2M2Model, sample: Mapping[str, Any], expert: str) -> tuple[Any, Any, str]:
    """``(network, input [1, C, H, W], name of its last backbone stage)`` where the network maps
    the expert's image input to its log-odds ``[B, 4]``. The network holds a private copy of the
    expert, so hooks placed on it never touch the caller's model."""
    import torch
    from torch import nn

    module = copy.deepcopy(_expert_module(model, expert)).float().eval()
    for p in module.parameters():
        p.requires_grad_(True)
    if expert == "joint":
        x = torch.cat([_image_tensor(sample, "magnitude", expert), _image_tensor(sample, "phase", expert)], dim=0)
        tab = None
        if module.uses_tabular:
            t = sample.get("tabular")
            if t is None:
                raise UsageError("expert 'joint'", "this joint model fuses the tabular vector; the sample has none")
            tab = torch.as_tensor(np.asarray(t, dtype=np.float32)).reshape(1, -1)
    elif expert in ("magnitude", "phase"):
        x = _image_tensor(sample, expert, expert)
        tab = None
    else:
        raise UsageError(f"expert {expert!r}", f"saliency needs an image expert ({', '.join(IMAGE_EXPERTS)})")
    device = next(module.parameters()).device  # the model's device (a GPU with `--device cuda`)
    x = x.to(device)
    tab = None if tab is None else tab.to(device)

    class LogOdds(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.expert = module

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            if expert == "joint":
                t = None if tab is None else tab.expand(images.shape[0], -1)
                z = self.expert(images[:, :1], images[:, 1:2], t)
            else:
                z = self.expert(images)
            return z[..., 1] - z[..., 0]

    stages = len(module.backbone.stages)
    return LogOdds().eval(), x[None], f"expert.backbone.stages.{stages - 1}"


def _blurred(x: Any, sigma: float) -> Any:
    """``x`` [1, C, H, W] blurred by a separable Gaussian of ``sigma`` pixels (edges repeated)."""
    import torch
    import torch.nn.functional as F

    radius = int(np.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    out = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def saliency(
    model: I2M2Model,
    sample: Mapping[str, Any],
    expert: str,
    head: int | str,
    method: str = "gradcam",
    mask_size: int | None = None,
    overlap: float = 0.5,
    steps: int = IG_STEPS,
) -> np.ndarray:
    """Where an image expert looks for one head, on one transformed slice.

    Args:
        model: an :class:`~i2m2_med.models.registry.I2M2Model` (not modified: the expert is copied).
        sample: a transformed slice (``"magnitude"`` / ``"phase"`` float ``[1, H, W]``, and
            ``"tabular"`` ``[F]`` for a joint model that fuses it), e.g. from
            :func:`i2m2_med.data.sample.image_sample`.
        expert: ``"magnitude"``, ``"phase"`` or ``"joint"`` (magnitude and phase together).
        head: a head name of :data:`HEADS` or its index.
        method: ``"gradcam"``: MONAI's GradCAM of the expert's log-odds at the last backbone stage,
            upsampled to the image and divided by its maximum, so in [0, 1] (1 = where the evidence
            for the finding is strongest, 0 = none; unsigned; all zeros when nothing supports it). ``"occlusion"``: MONAI's occlusion sensitivity, returned as
            ``log-odds(image) - log-odds(image with a patch around the pixel occluded)`` in nats:
            positive where the region supports the finding, negative where it speaks against it.
            ``"integrated_gradients"``: the expert's log-odds integrated along the straight path
            from a blurred copy of the image (Gaussian, sigma ``H / 16`` pixels: the anatomy's
            layout without its fine detail, where small lesions and their cues live) to the image
            (``steps`` midpoints), summed over the input channels: per pixel, in nats, signed;
            for the magnitude expert the map sums to the log-odds of the image minus that of its
            blurred copy (completeness); for an expert that reads the high-pass phase the sum can
            miss that difference, since the filter's angle wraps at +-pi, a jump along the path that
            gradients do not see. Not from an all-zero input: the experts normalise their first
            features, so a scaled image scores like the image and the zero path says nothing.
        mask_size: occlusion patch side in pixels (default ``H // 8``, at least 3).
        overlap: overlap of neighbouring occlusion patches in [0, 1).
        steps: integration steps of integrated gradients.

    Returns ``(H, W)`` float32 at the sample's image size. Raises UsageError for an unknown
    expert / head / method, or when the modality the expert needs is missing from the sample.
    """
    import torch

    if method not in SALIENCY_METHODS:
        raise UsageError(f"method {method!r}", f"unknown saliency method; expected one of {', '.join(SALIENCY_METHODS)}")
    h = _head_index(head)
    net, x, layer = _log_odds_network(model, sample, expert)
    height, width = int(x.shape[-2]), int(x.shape[-1])
    with torch.enable_grad():
        if method == "gradcam":
            from monai.visualize import GradCAM

            # MONAI's default post-processing maps (min, max) to (1, 0) -- it flips the map; keep the
            # raw ReLU map and scale it by its maximum, so that 0 stays "no evidence"
            cam = GradCAM(nn_module=net, target_layers=layer, postprocessing=lambda m: m)
            out = cam(x.clone().requires_grad_(True), class_idx=h)
            result = out.detach().reshape(height, width).cpu().numpy()
            peak = float(np.max(result)) if result.size else 0.0
            result = result / peak if peak > 0 else np.zeros_like(result)
        elif method == "integrated_gradients":
            if int(steps) < 1:
                raise UsageError("steps", f"must be >= 1, got {steps}")
            base = _blurred(x, max(1.0, min(height, width) / 16.0))
            alphas = (torch.arange(int(steps), dtype=x.dtype, device=x.device) + 0.5) / int(steps)
            grads = torch.zeros_like(x)
            # bounded memory: about IG_CHUNK_VALUES input values per pass (all 64 points of a 64 px slice)
            per_pass = max(1, IG_CHUNK_VALUES // int(x[0].numel()))
            for chunk in torch.split(alphas, per_pass):
                path = (base + chunk[:, None, None, None] * (x - base)).detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(net(path)[:, h].sum(), path)
                grads += grad.sum(dim=0, keepdim=True)
            result = ((x - base) * grads / int(steps)).sum(dim=1)[0].detach().cpu().numpy()
        else:
            from monai.visualize import OcclusionSensitivity

            size = int(mask_size) if mask_size is not None else max(3, min(height, width) // 8)
            if not 1 <= size <= min(height, width):
                raise UsageError("mask_size", f"must lie in 1..{min(height, width)}, got {size}")
            if not 0.0 <= float(overlap) < 1.0:
                raise UsageError("overlap", f"must lie in [0, 1), got {overlap}")
            with torch.no_grad():
                base = float(net(x)[0, h])
                occ = OcclusionSensitivity(nn_module=net, mask_size=size, n_batch=64, verbose=False,
                                           mode="mean_img", overlap=float(overlap), activate=False)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # MONAI's own indexing deprecation notices
                    occ_map, _ = occ(x)
            occ_map = occ_map.detach().cpu()
            # [B, heads, H, W] (MONAI >= 1.3); older releases put the classes last, [B, C, H, W, heads]
            per_head = occ_map[0, h] if occ_map.ndim == 4 else occ_map[0, 0, ..., h]
            result = base - per_head.numpy()
    result = np.nan_to_num(np.asarray(result, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if result.shape != (height, width):
        raise UsageError("saliency", f"map of shape {result.shape} for an image of {(height, width)}")
    return result


class TabularAttribution(NamedTuple):
    """Integrated-gradients attributions of the tabular expert.

    ``names`` (F,) the features; ``values`` (F,) float64 the study's vector; ``baseline`` (F,)
    float64 the reference vector; ``attributions`` (F, H) float64, nats of log-odds per feature
    and head; ``log_odds`` (H,) and ``baseline_log_odds`` (H,) the expert's log-odds at the
    vector and at the baseline. Completeness: ``attributions.sum(0) ~= log_odds - baseline_log_odds``
    (the gap is reported by :meth:`completeness_gap`).
    """

    names: tuple[str, ...]
    values: np.ndarray
    baseline: np.ndarray
    attributions: np.ndarray
    log_odds: np.ndarray
    baseline_log_odds: np.ndarray

    def completeness_gap(self) -> np.ndarray:
        """``|sum_f attributions[f, h] - (log_odds[h] - baseline_log_odds[h])|``, (H,) float64."""
        return np.abs(self.attributions.sum(axis=0) - (self.log_odds - self.baseline_log_odds))

    def to_dict(self, heads: Sequence[str] = HEADS) -> dict[str, Any]:
        """JSON-ready: per head, feature -> attribution, plus the log-odds and the baseline."""
        return {
            "method": "integrated_gradients",
            "features": {n: float(v) for n, v in zip(self.names, self.values)},
            "baseline": {n: float(v) for n, v in zip(self.names, self.baseline)},
            "per_head": {
                head: {
                    "log_odds": float(self.log_odds[j]),
                    "baseline_log_odds": float(self.baseline_log_odds[j]),
                    "attributions": {n: float(self.attributions[i, j]) for i, n in enumerate(self.names)},
                }
                for j, head in enumerate(heads)
            },
        }


def tabular_attributions(
    model: I2M2Model,
    tabular: Any,
    names: Sequence[str] | None = None,
    baseline: Any = None,
    steps: int = 1024,
) -> TabularAttribution:
    """Integrated gradients of the tabular expert's log-odds, per feature and head.

    Args:
        model: an :class:`~i2m2_med.models.registry.I2M2Model` with a ``tabular`` expert.
        tabular: the study's tabular vector ``(F,)`` (array, list or tensor).
        names: the F feature names (default ``f0, f1, ...``).
        baseline: the reference vector ``(F,)``. Default: every feature *unknown* -- the
            vector :func:`i2m2_med.data.tabular.tabular_features` gives a study with no tags (value 0,
            and 1 in each ``<name>_missing`` indicator) -- so an attribution says how much knowing
            that feature moves the expert; zeros when ``names`` carry no missing indicators.
        steps: points of the Riemann (midpoint) approximation of the path integral.

    Returns a :class:`TabularAttribution`; its attributions of a head add up to the change of the
    expert's log-odds between the baseline and the vector (exactly for a piecewise-linear MLP in
    the limit of many steps; the default 1024 keeps the gap under the two decimals the viewer
    shows -- a few hundred microseconds for a small MLP).
    """
    import torch

    module = _expert_module(model, "tabular")
    x = torch.as_tensor(np.asarray(tabular, dtype=np.float32)).reshape(-1)
    n = int(x.shape[0])
    names = tuple(str(v) for v in names) if names is not None else tuple(f"f{i}" for i in range(n))
    if len(names) != n:
        raise UsageError("names", f"{len(names)} names for a tabular vector of {n} features")
    if baseline is None:
        base = torch.tensor([1.0 if name.endswith("_missing") else 0.0 for name in names])
    else:
        base = torch.as_tensor(np.asarray(baseline, dtype=np.float32)).reshape(-1)
    if base.shape != x.shape:
        raise UsageError("baseline", f"baseline of {tuple(base.shape)} for a vector of ({n},)")
    if not (torch.isfinite(x).all() and torch.isfinite(base).all()):
        raise UsageError("tabular", "the tabular vector or the baseline has NaN/Inf values")
    if int(steps) < 1:
        raise UsageError("steps", f"must be >= 1, got {steps}")
    param = next(module.parameters())
    was_training = module.training
    module.eval()
    try:
        alphas = (torch.arange(int(steps), dtype=torch.float32) + 0.5) / int(steps)
        path = (base[None] + alphas[:, None] * (x - base)[None]).to(param)
        attributions = np.zeros((n, len(HEADS)), dtype=np.float64)
        with torch.enable_grad():
            for h in range(len(HEADS)):
                point = path.clone().requires_grad_(True)
                z = module(point)
                lo = z[:, h, 1] - z[:, h, 0]
                (grad,) = torch.autograd.grad(lo.sum(), point)
                attributions[:, h] = ((x - base).double() * grad.mean(dim=0).double().cpu()).numpy()
        with torch.no_grad():
            ends = module(torch.stack([x, base]).to(param)).double().cpu()
        lo_ends = (ends[..., 1] - ends[..., 0]).numpy()
    finally:
        module.train(was_training)
    return TabularAttribution(
        names=names,
        values=x.double().numpy(),
        baseline=base.double().numpy(),
        attributions=attributions,
        log_odds=lo_ends[0],
        baseline_log_odds=lo_ends[1],
    )
