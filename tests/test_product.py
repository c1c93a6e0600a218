"""The normalised product of experts: formula against hand computations, masks, loss, prior."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from i2m2_med.errors import UsageError
from i2m2_med.models.product import I2M2Output, Prior, combine, nll


def _log(p: list[list[float]]) -> torch.Tensor:
    """Per-head p(y=1) rows -> log-probabilities [1, 4, 2]."""
    p1 = torch.tensor(p, dtype=torch.float64)
    return torch.log(torch.stack([1 - p1, p1], dim=-1))


def test_product_of_two_experts_by_hand():
    # head 0: 0.8 x 0.6 -> 0.48 / (0.48 + 0.2 * 0.4) = 0.857142...
    # head 1: 0.5 x 0.9 -> 0.45 / (0.45 + 0.05)      = 0.9
    # head 2: 0.3 x 0.3 -> 0.09 / (0.09 + 0.49)      = 0.155172...
    # head 3: 0.1 x 0.9 -> 0.09 / (0.09 + 0.09)      = 0.5
    a = _log([[0.8, 0.5, 0.3, 0.1]])
    b = _log([[0.6, 0.9, 0.3, 0.9]])
    combined = combine({"magnitude": a, "phase": b})
    expected = torch.tensor([[0.48 / 0.56, 0.9, 0.09 / 0.58, 0.5]], dtype=torch.float64)
    assert torch.allclose(combined[..., 1].exp(), expected, atol=1e-12)
    assert torch.allclose(combined.exp().sum(-1), torch.ones(1, 4, dtype=torch.float64))
    # the log-domain formula itself: sum - logsumexp over y
    total = a + b
    assert torch.allclose(combined, total - torch.logsumexp(total, -1, keepdim=True))


def test_uninformative_expert_changes_nothing_and_prior_reweights():
    a = _log([[0.8, 0.5, 0.3, 0.1]])
    b = _log([[0.6, 0.9, 0.3, 0.9]])
    flat = _log([[0.5, 0.5, 0.5, 0.5]])
    two = combine({"magnitude": a, "phase": b})
    assert torch.allclose(combine({"magnitude": a, "phase": b, "tabular": flat}), two)
    # prior p(y=1) = 0.1 on head 0: 0.48*0.1 / (0.48*0.1 + 0.08*0.9) = 0.048 / 0.12 = 0.4
    prior = _log([[0.1, 0.5, 0.5, 0.5]])
    with_prior = combine({"magnitude": a, "phase": b, "prior": prior})
    assert with_prior[0, 0, 1].exp().item() == pytest.approx(0.4, abs=1e-12)
    assert torch.allclose(with_prior[0, 1:], two[0, 1:])


def test_single_term_is_returned_unchanged():
    a = _log([[0.8, 0.5, 0.3, 0.1]])
    assert torch.allclose(combine({"joint": a}), a)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, (3, 5, 4, 2), elements=st.floats(-20, 20)))
def test_product_equals_softmax_of_summed_logits(z):
    logits = torch.from_numpy(z)
    terms = {f"e{i}": F.log_softmax(logits[i], -1) for i in range(3)}
    combined = combine(terms)
    assert torch.allclose(combined, F.log_softmax(logits.sum(0), -1), atol=1e-9)
    assert torch.isfinite(combined).all()


def test_mask_excludes_a_term_for_chosen_samples_only():
    a = torch.cat([_log([[0.8, 0.5, 0.3, 0.1]]), _log([[0.7, 0.2, 0.6, 0.4]])])
    b = torch.cat([_log([[0.6, 0.9, 0.3, 0.9]]), _log([[0.9, 0.9, 0.9, 0.9]])])
    masked = combine({"magnitude": a, "phase": b}, mask={"phase": torch.tensor([True, False])})
    assert torch.allclose(masked[0], combine({"magnitude": a, "phase": b})[0])
    assert torch.allclose(masked[1], a[1])


def test_combine_without_terms_is_a_usage_error():
    with pytest.raises(UsageError, match="no expert terms"):
        combine({})


def test_nll_by_hand_with_and_without_class_weights():
    # one head shown; the other heads are certain and correct (zero loss)
    p1 = torch.tensor([[0.8, 1.0, 0.0, 1.0], [0.4, 1.0, 0.0, 1.0]], dtype=torch.float64).clamp(1e-300, 1)
    log_probs = torch.log(torch.stack([(1 - p1).clamp_min(1e-300), p1], -1))
    labels = torch.tensor([[1.0, 1, 0, 1], [0.0, 1, 0, 1]])
    # head 0: -(log 0.8 + log 0.6) / 2
    assert nll(log_probs, labels).item() == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2, rel=1e-9)
    weights = torch.ones(4, 2, dtype=torch.float64)
    weights[0] = torch.tensor([1.0, 3.0])  # positives count three times
    expected = -(3 * math.log(0.8) + 1 * math.log(0.6)) / 4
    assert nll(log_probs, labels, weights).item() == pytest.approx(expected, rel=1e-9)


def test_prior_from_frequencies_and_output_helpers():
    prior = Prior()
    prior.set_frequencies(torch.tensor([0.1, 0.25, 0.5, 0.9]))
    term = prior(3)
    assert term.shape == (3, 4, 2)
    assert torch.allclose(term[0, :, 1].exp(), torch.tensor([0.1, 0.25, 0.5, 0.9]), atol=1e-6)
    out = I2M2Output(terms={"prior": term}, combined=combine({"prior": term}))
    assert torch.allclose(out.p1(), out.expert_p1("prior"))
    assert out.experts == ["prior"] and out.dropped == []
