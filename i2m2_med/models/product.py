"""The I2M2 combination: a normalised product of experts, per head.

For each head and each sample, with experts ``e`` and classes ``y in {0, 1}``::

    s(y)          = sum_e log_softmax(z_e)(y)          (+ log p(y) when a prior term is used)
    log p(y | x)  = s(y) - logsumexp_y' s(y')

Dropping an expert is dropping its term. :func:`combine` takes the terms already as
log-probabilities (``log_softmax`` of each expert's logits), so every consumer (loss, evaluation,
evidence, diagnose, app) reads the same numbers from :class:`I2M2Output`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from i2m2_med.errors import UsageError
from i2m2_med.heads import HEADS


def combine(terms: Mapping[str, Tensor], mask: Mapping[str, Tensor] | None = None) -> Tensor:
    """Normalised product of experts.

    Args:
        terms: name -> log-probabilities ``[B, 4, 2]`` (float). A ``"prior"`` term is combined like
            any other.
        mask: optional name -> bool ``[B]``; a term contributes to sample ``b`` only where
            ``mask[name][b]`` is True (absent names contribute everywhere).

    Returns:
        ``[B, 4, 2]`` log-probabilities: ``sum_e terms[e] - logsumexp_y(sum_e terms[e])``.
        With no contributing term a sample gets the uniform distribution (log 0.5).
    """
    if not terms:
        raise UsageError("combine", "no expert terms to combine")
    total: Tensor | None = None
    for name, term in terms.items():
        if mask is not None and name in mask:
            term = term * mask[name].to(term.dtype)[:, None, None]
        total = term if total is None else total + term
    return total - torch.logsumexp(total, dim=-1, keepdim=True)


def nll(log_probs: Tensor, labels: Tensor, class_weights: Tensor | None = None) -> Tensor:
    """Negative log-likelihood summed over the heads, each head averaged over the batch (as the
    reference's sum of four cross-entropies).

    Args:
        log_probs: ``[B, H, 2]`` log-probabilities (e.g. ``I2M2Output.combined``).
        labels: ``[B, H]`` in {0, 1} (float or integer).
        class_weights: optional ``[H, 2]`` per-head class weights; as ``F.nll_loss`` with weights,
            each head is a weighted mean (normalised by the sum of the weights of the samples).

    Returns: scalar tensor.
    """
    target = labels.round().long()
    losses = []
    for h in range(log_probs.shape[1]):
        weight = None if class_weights is None else class_weights[h].to(log_probs.dtype)
        losses.append(F.nll_loss(log_probs[:, h, :], target[:, h], weight=weight))
    return torch.stack(losses).sum()


class Prior(nn.Module):
    """A class prior log p(y) per head: ``[4, 2]`` log-probabilities, learned (initialised uniform)
    or set from training frequencies with :meth:`set_frequencies`."""

    def __init__(self, heads: int = len(HEADS)):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(heads, 2))

    @torch.no_grad()
    def set_frequencies(self, p1: Tensor) -> None:
        """Set the prior from the fraction of positives per head, ``p1 [4]`` in (0, 1)."""
        p1 = p1.to(self.logits).clamp(1e-4, 1 - 1e-4)
        self.logits.copy_(torch.stack([torch.log1p(-p1), torch.log(p1)], dim=-1))

    def forward(self, batch_size: int) -> Tensor:
        """-> log p(y) expanded to ``[batch_size, 4, 2]``."""
        return F.log_softmax(self.logits, dim=-1).unsqueeze(0).expand(batch_size, -1, -1)


@dataclass
class I2M2Output:
    """What every model returns.

    Attributes:
        terms: expert name -> log-probabilities ``[B, 4, 2]`` (``"magnitude"``, ``"phase"``,
            ``"tabular"``, ``"joint"``, and ``"prior"`` when the model has a prior); only the
            experts that ran. ``terms[e][..., 1].exp()`` is that expert's own p(y=1).
        combined: the normalised product ``[B, 4, 2]`` of the terms (respecting ``mask``).
        dropped: experts of the variant left out because a modality they need is absent from the
            batch (in the variant's expert order).
        mask: expert name -> bool ``[B]`` for experts that ran but are excluded for some samples
            (``batch["present"][modality]`` False there); empty when every term counts everywhere.
        logits: expert name -> raw logits ``[B, 4, 2]`` (no prior).
    """

    terms: dict[str, Tensor]
    combined: Tensor
    dropped: list[str] = field(default_factory=list)
    mask: dict[str, Tensor] = field(default_factory=dict)
    logits: dict[str, Tensor] = field(default_factory=dict)

    def p1(self) -> Tensor:
        """Combined p(y=1) per head: ``[B, 4]`` float in [0, 1]."""
        return self.combined[..., 1].exp()

    def expert_p1(self, name: str) -> Tensor:
        """One term's own p(y=1) per head: ``[B, 4]``."""
        return self.terms[name][..., 1].exp()

    @property
    def experts(self) -> list[str]:
        """Names of the terms that ran (prior included), in order."""
        return list(self.terms)

    def detach(self) -> "I2M2Output":
        return I2M2Output(
            terms={k: v.detach() for k, v in self.terms.items()},
            combined=self.combined.detach(),
            dropped=list(self.dropped),
            mask={k: v.detach() for k, v in self.mask.items()},
            logits={k: v.detach() for k, v in self.logits.items()},
        )
