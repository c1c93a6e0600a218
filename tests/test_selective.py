"""Selective prediction (:mod:`i2m2_med.metrics.selective`) on hand-built arrays, and the
report's section drawn from a hand-built results block."""

from __future__ import annotations

import numpy as np
import pytest

from i2m2_med.errors import UsageError
from i2m2_med.heads import HEADS
from i2m2_med.metrics import selective as sel


def _logp(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    return np.stack([np.log1p(-p), np.log(p)], axis=-1)


def test_head_disagreement_is_the_sd_of_log_odds_and_undefined_for_one_expert() -> None:
    p = np.array([[0.5, 0.9], [0.5, 0.1]])  # 2 experts, 2 heads
    got = sel.head_disagreement(p)
    lo = np.log(9.0)
    assert got[0] == pytest.approx(0.0) and got[1] == pytest.approx(lo)  # sd of (+lo, -lo) with ddof=0
    assert np.isnan(sel.head_disagreement(np.array([[0.3, 0.7]]))).all()
    # an expert that did not run (NaN) is left out; one left is undefined
    assert np.isnan(sel.head_disagreement(np.array([[0.3], [np.nan]])))[0]
    with pytest.raises(UsageError):
        sel.head_disagreement(np.array([[1.5], [0.2]]))


def test_study_disagreement_uses_the_aggregation_rule_and_leaves_out_the_prior() -> None:
    s = 4
    mag = np.full((s, len(HEADS)), 0.5)
    mag[0] = 0.99  # one confident slice: max sees it, the mean of all four dilutes it
    phase = np.full((s, len(HEADS)), 0.5)
    terms = {"magnitude": _logp(mag), "phase": _logp(phase), "prior": _logp(np.full((s, len(HEADS)), 0.01))}
    by_max = sel.study_disagreement(terms, "max")
    by_mean = sel.study_disagreement(terms, "mean")
    assert by_max["experts"] == ["magnitude", "phase"]
    lo_max = np.log(0.99 / 0.01) / 2
    assert by_max["value"] == pytest.approx(lo_max, rel=1e-6)
    pm = (0.99 + 1.5) / 4
    assert by_mean["value"] == pytest.approx(np.log(pm / (1 - pm)) / 2, rel=1e-6)
    assert set(by_max["per_head"]) == set(HEADS)
    one = sel.study_disagreement({"tabular": terms["magnitude"], "prior": terms["prior"]}, "max")
    assert one["value"] is None and "two" in one["reason"] and all(v is None for v in one["per_head"].values())


def test_overall_is_the_mean_over_acl_mtear_cart() -> None:
    per = np.array([[1.0, 2.0, 3.0, 100.0]])
    assert sel.overall(per)[0] == pytest.approx(2.0)


def test_setting_aside_disagreeing_studies_raises_the_auroc() -> None:
    # six clean studies ranked perfectly, two where the experts disagree and the product is wrong
    y = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    score = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1, 0.05, 0.95])
    d = np.array([0.1, 0.2, 0.1, 0.3, 0.2, 0.1, 3.0, 2.5])
    Y = np.repeat(y[:, None], len(HEADS), axis=1)
    P = np.repeat(score[:, None], len(HEADS), axis=1)
    curve = sel.coverage_curve(Y, P, d, coverages=(1.0, 0.75))
    full, kept = curve["points"]
    assert (full["kept"], full["set_aside"]) == (8, 0) and (kept["kept"], kept["set_aside"]) == (6, 2)
    assert full["mean_auroc"] < 0.8 and kept["mean_auroc"] == pytest.approx(1.0)
    assert kept["heads"] == ["acl", "mtear", "cart"] and kept["max_disagreement"] == pytest.approx(0.3)


def test_setting_aside_changes_nothing_when_the_ranking_is_already_perfect() -> None:
    rng = np.random.default_rng(0)
    y = np.array([1, 0] * 10)
    score = np.where(y == 1, 0.6 + 0.3 * rng.random(20), 0.4 * rng.random(20))
    d = rng.random(20)
    Y = np.repeat(y[:, None], len(HEADS), axis=1)
    P = np.repeat(score[:, None], len(HEADS), axis=1)
    curve = sel.coverage_curve(Y, P, d)
    assert [pt["coverage"] for pt in curve["points"]] == list(sel.DEFAULT_COVERAGES)
    for pt in curve["points"]:
        if pt["mean_auroc"] is not None:
            assert pt["mean_auroc"] == pytest.approx(1.0)


def test_heads_without_both_classes_are_left_out_with_the_reason() -> None:
    y = np.zeros((4, len(HEADS)), dtype=int)
    y[:, 0] = [1, 0, 1, 0]  # ACL has both classes; MTEAR and CART none positive
    p = np.tile(np.array([[0.9], [0.1], [0.8], [0.2]]), (1, len(HEADS)))
    pt = sel.coverage_curve(y, p, np.arange(4.0), coverages=(1.0,))["points"][0]
    assert pt["heads"] == ["acl"] and pt["mean_auroc"] == pytest.approx(1.0)
    assert pt["per_head"]["mtear"]["value"] is None and pt["per_head"]["mtear"]["reason"]
    none = sel.coverage_curve(np.zeros((3, len(HEADS))), np.full((3, len(HEADS)), 0.5), np.zeros(3), coverages=(1.0,))
    assert none["points"][0]["mean_auroc"] is None and none["points"][0]["reason"]


def test_undefined_disagreement_and_bad_coverage_are_refused() -> None:
    y = np.ones((2, len(HEADS)))
    with pytest.raises(UsageError):
        sel.coverage_curve(y, y * 0.5, np.array([0.1, np.nan]))
    with pytest.raises(UsageError):
        sel.coverage_curve(y, y * 0.5, np.array([0.1, 0.2]), coverages=(0.0,))


def test_slices_to_studies_groups_by_study_and_skips_an_expert_that_did_not_run() -> None:
    ids = np.array(["b", "b", "a", "a"])
    mag = np.array([[0.9] * 4, [0.5] * 4, [0.5] * 4, [0.5] * 4])
    phase = np.full((4, 4), 0.5)
    joint = np.array([[0.5] * 4, [0.5] * 4, [np.nan] * 4, [np.nan] * 4])
    got_ids, d = sel.slices_to_studies(ids, {"magnitude": mag, "phase": phase, "joint": joint}, "max")
    assert got_ids.tolist() == ["b", "a"]
    lo = np.log(9.0)
    assert d[0, 0] == pytest.approx(np.std([lo, 0.0, 0.0]))
    assert d[1, 0] == pytest.approx(0.0)


def test_report_draws_the_selective_section() -> None:
    from pipelines.report.ablation import render_report

    y = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    s = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1, 0.05, 0.95])
    d = np.array([0.1, 0.2, 0.1, 0.3, 0.2, 0.1, 3.0, 2.5])
    curve = sel.coverage_curve(np.repeat(y[:, None], 4, 1), np.repeat(s[:, None], 4, 1), d)
    page = render_report({"selective": {"split": "test", "measure": sel.MEASURE, "variants": {
        "i2m2": curve, "intra": {"value": None, "reason": "not in the grid"}}}})
    start = page.index('<section id="selective">')
    block = page[start: page.index("</section>", start)]
    assert "Selective prediction" in block and "coverage" in block.lower()
    assert "test split" in block and "set aside" in block
    assert 'class="plotly-graph-div"' in block or "Plotly.newPlot" in block
    assert "fraction of test studies kept" in block and "study-level AUROC" in block
    assert "<table>" in block and "not in the grid" in block
    empty = render_report({})
    start = empty.index('<section id="selective">')
    assert "not in these results" in empty[start: empty.index("</section>", start)]


def test_ablation_analysis_gives_a_curve_per_multi_expert_variant() -> None:
    from i2m2_med.ablation.analysis import selective_prediction
    from i2m2_med.ablation.predict import Predictions

    rng = np.random.default_rng(1)
    studies, per = 12, 3
    ids = np.repeat([f"s{i}" for i in range(studies)], per).astype(object)
    labels = np.repeat((np.arange(studies) % 2)[:, None], per, axis=0) * np.ones((1, len(HEADS)))
    p = np.clip(0.3 + 0.4 * labels + 0.1 * rng.standard_normal(labels.shape), 0.01, 0.99)

    def pred(experts: list[str]) -> Predictions:
        terms = {e: _logp(np.clip(p + 0.2 * rng.standard_normal(p.shape), 0.01, 0.99))[..., :, :] for e in experts}
        combined = _logp(p)
        return Predictions(ids, np.tile(np.arange(per), studies), labels.astype(np.float32), p, combined, terms,
                           {e: np.ones(len(ids), bool) for e in experts})

    ens = {"i2m2": pred(["magnitude", "phase", "tabular", "joint"]), "intra": pred(["magnitude"])}
    block = selective_prediction(ens, ["i2m2", "intra", "mag"], {}, "max", 3)
    assert block["split"] == "test" and set(block["variants"]) == {"i2m2", "intra"}
    curve = block["variants"]["i2m2"]
    assert curve["studies"] == studies and [pt["kept"] for pt in curve["points"]] == [12, 11, 10, 8, 7, 6]
    assert all(pt["mean_auroc"] is not None for pt in curve["points"])
    assert block["variants"]["intra"]["value"] is None and "one expert" in block["variants"]["intra"]["reason"]
