"""The claim study (i2m2_med.ablation.claim) at its quick preset: nested training sets with one
validation split, held-out predictions per seed and per seed ensemble, paired margins over whole
subjects, the learning curve, reuse of finished runs, and the report's section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from i2m2_med.ablation.claim import claim_settings, run_claim_study, subset_cohort
from i2m2_med.data.cache import TensorCache
from i2m2_med.data.cohort import load_cohort
from i2m2_med.errors import UsageError


@pytest.fixture(scope="module")
def claim(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        work = tmp_path_factory.mktemp("claim")
        return work, run_claim_study(work, claim_settings(quick=True))
    finally:
        torch.set_num_threads(threads)


def _pool(work: Path):
    root = next((work / "pools").iterdir())
    return load_cohort(root, tensor_cache=TensorCache.of_cohort(root, 64))


@pytest.mark.slow
def test_training_sets_are_nested_with_one_validation_split(claim) -> None:
    work, _ = claim
    pool = _pool(work)
    small, large = subset_cohort(pool, 4, 6), subset_cohort(pool, 8, 6)
    val = {s for s, v in small.split.items() if v == "val"}
    assert val == {s for s, v in large.split.items() if v == "val"} and len(val) >= 6
    train_small = {s for s, v in small.split.items() if v == "train"}
    train_large = {s for s, v in large.split.items() if v == "train"}
    assert train_small < train_large and len(train_small) >= 4 and len(train_large) >= 8
    for cohort in (small, large):  # whole subjects in one split, nothing tested from the pool
        assert set(cohort.split.values()) == {"train", "val"}
        per_subject: dict[str, set[str]] = {}
        for sid, split in cohort.split.items():
            per_subject.setdefault(cohort.subjects[sid], set()).add(split)
        assert all(len(v) == 1 for v in per_subject.values())
    with pytest.raises(UsageError, match="too few"):
        subset_cohort(pool, 500, 6)


@pytest.mark.slow
def test_results_measure_every_variant_on_the_heldout_cohort(claim) -> None:
    work, result = claim
    block = result["regimes"]["inter"]
    assert block["test"]["generator_seed"] == 90002 and block["test"]["studies"] == 8
    for variant in ("i2m2", "intra", "inter"):
        entry = block["variants"][variant]
        assert entry["seeds"] == [0, 1]
        for level in ("in_view", "study", "slice"):
            values = entry["seed_summary"][level]["values"]
            assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values)
            ens = entry["ensemble"][level]
            assert 0.0 <= ens["value"] <= 1.0 and ens["ci"][0] <= ens["value"] <= ens["ci"][1]
    assert set(block["single_experts"]) == {"magnitude", "phase", "tabular"}
    base = block["position_baseline"]  # the slice position alone, on the same held-out slices
    assert all(0.0 <= base[level]["value"] <= 1.0 for level in ("in_view", "study", "slice"))
    for other in ("intra", "inter"):
        m = block["margins"][other]["in_view"]
        assert m["method"] == "paired bootstrap over whole subjects (seed ensembles)"
        i2m2 = block["variants"]["i2m2"]["ensemble"]["in_view"]["value"]
        assert m["auc_a"] - m["auc_b"] == pytest.approx(m["diff"])
        assert m["ci"][0] <= m["diff"] <= m["ci"][1] and 0.0 < m["p"] <= 1.0
        assert abs(m["auc_a"] - i2m2) < 0.2  # the same ensemble, on the heads with enough subjects for a bootstrap
    t = block["targets"]
    assert t["margin"] == pytest.approx(t["i2m2"] - max(t["intra"], t["inter"]))
    assert {"intra_at_most_0.60", "i2m2_at_least_0.80"} <= set(t)
    curve = result["learning_curve"]
    assert sorted({(p["variant"], p["train_volumes"]) for p in curve["points"]}) == sorted(
        (v, n) for v in ("i2m2", "intra", "inter") for n in (4, 8))
    # the 8-volume point is the regime comparison's seed 0: 3 variants x (one curve size + two seeds)
    assert len(list((work / "runs").iterdir())) == 9
    assert json.loads((work / "claim.json").read_text(encoding="utf-8"))["schema"] == "i2m2-med-claim/1"


@pytest.mark.slow
def test_rerun_reuses_runs_and_predictions(claim) -> None:
    work, result = claim
    again = run_claim_study(work, claim_settings(quick=True))
    assert again["regimes"]["inter"]["variants"] == result["regimes"]["inter"]["variants"]
    assert again["seconds"] < result["seconds"]


@pytest.mark.slow
def test_report_draws_the_claim_and_its_learning_curve(claim) -> None:
    from pipelines.report.ablation import render_report

    _, result = claim
    page = render_report({"claim_study": json.loads(json.dumps(result))})
    assert 'id="claim"' in page and "inter regime" in page and "held-out: 8 studies" in page
    assert "training volumes" in page and "in-view AUROC, mean ACL" in page  # the curve's axes
    assert "paired" in page and "I2M2 &ge; max(intra, inter) &minus; 0.01 in view" in page and "position only" in page
    empty = render_report({"claim_study": {"value": None, "reason": "not run: --claim-study ..."}})
    assert "not run: --claim-study" in empty
