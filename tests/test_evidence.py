"""Per-expert evidence on hand-made log-probabilities combined by the project's product of experts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from i2m2_med import evidence
from i2m2_med.errors import UndefinedMetricError, UsageError
from i2m2_med.models.product import I2M2Output, combine


def log_probs(p1, dtype=torch.float64) -> torch.Tensor:
    """[B, H] probabilities of class 1 -> [B, H, 2] log-probabilities."""
    p1 = torch.as_tensor(p1, dtype=dtype)
    return torch.stack([torch.log1p(-p1), torch.log(p1)], dim=-1)


# rows: samples; columns: heads (acl, mtear, cart, abnormal)
P1 = {
    "magnitude": [[0.8, 0.5, 0.9, 0.6], [0.2, 0.5, 0.3, 0.6]],
    "phase": [[0.3, 0.5, 0.6, 0.6], [0.4, 0.5, 0.3, 0.4]],
    "tabular": [[0.6, 0.5, 0.45, 0.6], [0.7, 0.5, 0.3, 0.4]],
    "joint": [[0.1, 0.5, 0.2, 0.6], [0.9, 0.5, 0.3, 0.4]],
}


def make_output(p1=P1, dtype=torch.float64, mask=None, prior=None) -> I2M2Output:
    terms = {name: log_probs(v, dtype) for name, v in p1.items()}
    if prior is not None:
        terms["prior"] = log_probs(prior, dtype).expand(len(next(iter(p1.values()))), -1, -1)
    return I2M2Output(terms=terms, combined=combine(terms, mask), mask=mask or {})


def logit(p):
    return math.log(p / (1 - p))


def test_contributions_hand_values_and_exact_sum():
    out = make_output(prior=[0.3, 0.2, 0.1, 0.5])
    contrib = evidence.contributions(out)
    assert list(contrib) == ["magnitude", "phase", "tabular", "joint", "prior"]
    assert contrib["magnitude"][0, 0] == pytest.approx(math.log(4.0), abs=1e-12)
    assert contrib["phase"][0, 0] == pytest.approx(math.log(3 / 7), abs=1e-12)
    assert contrib["tabular"][0, 1] == 0.0  # p = 0.5 contributes nothing
    assert contrib["prior"][1, 2] == pytest.approx(logit(0.1), abs=1e-12)
    total = sum(contrib.values())
    np.testing.assert_allclose(total, evidence.combined_log_odds(out), rtol=0, atol=1e-12)
    # the combined probability is the logistic of the summed contributions
    np.testing.assert_allclose(1 / (1 + np.exp(-total)), out.p1().numpy(), atol=1e-12)
    # in float32, as the models run, the sum still matches to rounding
    out32 = make_output(dtype=torch.float32)
    total32 = sum(evidence.contributions(out32).values())
    np.testing.assert_allclose(total32, evidence.combined_log_odds(out32), atol=1e-5)
    # without the prior they no longer add up to the combined log-odds
    no_prior = evidence.contributions(out, include_prior=False)
    assert "prior" not in no_prior
    assert not np.allclose(sum(no_prior.values()), evidence.combined_log_odds(out))


def test_contributions_respect_the_mask_and_numpy_input():
    mask = {"phase": torch.tensor([True, False])}  # phase missing for sample 1
    out = make_output(mask=mask)
    contrib = evidence.contributions(out)
    assert (contrib["phase"][1] == 0).all() and contrib["phase"][0, 0] == pytest.approx(math.log(3 / 7))
    np.testing.assert_allclose(sum(contrib.values()), evidence.combined_log_odds(out), atol=1e-12)
    plain = {name: t.numpy() for name, t in out.terms.items()}
    np.testing.assert_allclose(evidence.contributions(plain)["joint"], contrib["joint"])
    with pytest.raises(UsageError, match=r"\[B, H, 2\]"):
        evidence.contributions({"magnitude": np.zeros((2, 4))})
    with pytest.raises(UsageError, match="mask"):
        evidence.contributions(I2M2Output(out.terms, out.combined, mask={"phase": torch.ones(3, dtype=torch.bool)}))


def test_driving_expert_hand_example():
    out = make_output()
    drv = evidence.driving_expert(out)
    names = drv.experts
    assert names == ("magnitude", "phase", "tabular", "joint")
    # sample 0, acl: +log 4 (mag), log 3/7 (phase), log 1.5 (tab), log 1/9 (joint); sum -1.25 < 0:
    # negative decision, the joint model pushes hardest that way
    assert not drv.decision[0, 0] and names[drv.index[0, 0]] == "joint"
    # sample 1, acl: log 1/4, log 2/3, log 7/3, log 9; sum +1.25: the joint model drives it positive
    assert drv.decision[1, 0] and names[drv.index[1, 0]] == "joint"
    # sample 0, cart: log 9, log 1.5, log 9/11, log 1/4; sum +1.02 -> magnitude
    assert drv.decision[0, 2] and names[drv.index[0, 2]] == "magnitude"
    # sample 0, mtear: every expert at 0.5, combined p = 0.5 >= 0.5 is positive, nobody pushes
    assert drv.decision[0, 1] and drv.index[0, 1] == -1
    # a low threshold turns sample 0 acl positive (-1.25 >= logit 0.2 = -1.39): magnitude drives
    low = evidence.driving_expert(out, threshold=[0.2, 0.5, 0.5, 0.5])
    assert low.decision[0, 0] and names[low.index[0, 0]] == "magnitude"
    freq = evidence.driving_frequency(drv)
    assert freq["acl"] == {"magnitude": 0.0, "phase": 0.0, "tabular": 0.0, "joint": 1.0, "none": 0.0}
    assert freq["mtear"]["none"] == 1.0
    for row in freq.values():
        assert sum(row.values()) == pytest.approx(1.0)
    json.dumps(freq, allow_nan=False)
    with pytest.raises(UsageError, match="threshold"):
        evidence.driving_expert(out, threshold=1.0)


def test_driving_expert_none_when_nobody_pushes_and_masked_experts_cannot_drive():
    p1 = {"magnitude": [[0.45]], "phase": [[0.45]]}
    out = make_output(p1)
    # combined log-odds 2 * logit(0.45) = -0.40 >= logit(0.3) = -0.85: positive, yet both push down
    drv = evidence.driving_expert(out, threshold=0.3)
    assert drv.decision[0, 0] and drv.index[0, 0] == -1
    assert evidence.driving_frequency(drv, heads=["acl"])["acl"]["none"] == 1.0
    masked = make_output(mask={"joint": torch.tensor([True, False])})
    drv = evidence.driving_expert(masked)
    # sample 1, acl without the joint model: log 1/4 + log 2/3 + log 7/3 = -0.94 -> magnitude
    assert not drv.decision[1, 0] and drv.experts[drv.index[1, 0]] == "magnitude"


def test_agreement_matrix_hand_example():
    out = make_output(prior=[0.3, 0.3, 0.3, 0.3])
    agr = evidence.agreement_matrix(out)
    assert agr.experts == ("magnitude", "phase", "tabular", "joint")  # prior left out
    assert agr.matrix.shape == (4, 4, 4)
    np.testing.assert_array_equal(agr.matrix[:, range(4), range(4)], 1.0)
    # acl decisions (p >= 0.5): mag (1, 0), phase (0, 0), tab (1, 1), joint (0, 1)
    acl = agr.matrix[0]
    assert acl[0, 1] == 0.5 and acl[0, 2] == 0.5 and acl[0, 3] == 0.0
    assert acl[1, 2] == 0.0 and acl[2, 3] == 0.5 and acl[1, 3] == 0.5
    np.testing.assert_array_equal(agr.matrix, np.swapaxes(agr.matrix, 1, 2))
    assert agr.counts.tolist() == [[2] * 4] * 4
    with_prior = evidence.agreement_matrix(out, include_prior=True)
    assert with_prior.experts[-1] == "prior" and with_prior.matrix[0, 4, 1] == 1.0  # both always negative


def test_agreement_with_masks_counts_only_shared_samples():
    mask = {"phase": torch.tensor([True, False]), "tabular": torch.tensor([False, True])}
    agr = evidence.agreement_matrix(make_output(mask=mask))
    counts = agr.counts
    assert counts[0, 1] == 1 and counts[0, 2] == 1 and counts[1, 2] == 0 and counts[1, 1] == 1
    assert agr.matrix[0, 0, 1] == 0.0  # sample 0 only: mag positive, phase negative
    assert np.isnan(agr.matrix[0, 1, 2])  # never together
    as_json = agr.to_dict()
    assert as_json["per_head"]["acl"][1][2] is None
    json.dumps(as_json, allow_nan=False)
    empty = {"magnitude": np.zeros((0, 4, 2)), "phase": np.zeros((0, 4, 2))}
    with pytest.raises(UndefinedMetricError, match="no samples"):
        evidence.agreement_matrix(empty)
