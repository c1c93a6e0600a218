"""The clinical ablation (`i2m2-med ablate`): statistics against hand computations, the report's
structure and contents, bad input shown with its reason, and the report in a real headless browser.

The end-to-end fixture runs the real pipeline once per module on the tiny synthetic cohort
(6 volumes, 12 slices each; see conftest): variants i2m2 and mag plus an unknown variant, one
seed, one epoch at 32 x 32 pixels, a small bootstrap, the full robustness study, no regime study.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from i2m2_med.ablation import conditions as cond
from i2m2_med.ablation import regimes as reg
from i2m2_med.ablation import stats
from i2m2_med.ablation.predict import Predictions, ensemble
from i2m2_med.ablation.settings import AblationSettings, default_settings
from i2m2_med.errors import UsageError
from i2m2_med.heads import HEADS
from i2m2_med.metrics.ranking import auroc
from pipelines.cli import main
from pipelines.report.ablation import SECTIONS

CHROMIUM = Path("/usr/bin/chromium")
BAD_VARIANT = "not-a-variant"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def report(tiny_cohort: Path, small_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One quick ablation through the CLI; returns the report folder."""
    out = tmp_path_factory.mktemp("ablation") / "report"
    rc = main([
        "ablate", "--data", str(tiny_cohort), "--out", str(out), "--variants", f"i2m2,mag,{BAD_VARIANT}",
        "--seeds", "1", "--epochs", "1", "--n-boot", "30", "--config", str(small_config), "--quick",
        "--no-regime-study", "--no-progress",
    ])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def results(report: Path) -> dict:
    return json.loads((report / "results.json").read_text())


# ---- end to end ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_report_files_and_self_contained_html(report: Path) -> None:
    page = (report / "report.html").read_text(encoding="utf-8")
    assert len(page) > 1_000_000  # plotly inlined
    assert not re.search(r"<script[^>]+src\s*=", page, flags=re.I), "no external script may be loaded"
    assert not re.search(r"<link[^>]+href\s*=\s*[\"']https?:", page, flags=re.I)
    assert page.count("Plotly.newPlot") >= 5
    # the robustness plot's legend names only the masks that were run (--quick: random only)
    assert "solid: random mask)" in page and "equispaced" not in page
    for sid, title in SECTIONS:
        assert f'<section id="{sid}"><h2>' in page, sid
        assert title.replace("&", "&amp;") in page
    assert "research use only" in page.lower()
    for name in ("auroc", "comparisons", "operating_points", "calibration", "robustness", "evidence_driving",
                 "evidence_agreement", "regime_study", "runs", "per_seed_auroc"):
        assert (report / "tables" / f"{name}.csv").is_file(), name


@pytest.mark.slow
def test_results_structure_and_finite_numbers(results: dict, report: Path) -> None:
    json.dumps(results, allow_nan=False)  # no NaN / inf anywhere
    json.loads((report / "results.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-finite {c} in results.json"))
    assert results["schema"] == "i2m2-med-ablation/1"
    assert list(results["variants"]) == ["i2m2", "mag", BAD_VARIANT]
    assert results["settings"]["quick"] is True and results["settings"]["seeds"] == 1
    assert "ablate --data" in results["command"] and "--quick" in results["command"]
    assert results["model_card"]["intended_use"] == "research use only"
    assert "prior refitted on the validation slices" in results["model_card"]["model"]["training"]
    assert results["model_card"]["software"]["torch"] == torch.__version__.split("+")[0] or results["model_card"]["software"]["torch"]
    for v in ("i2m2", "mag"):
        entry = results["variants"][v]
        assert entry["status"] == "ok" and entry["seeds"] == [0]
        table = entry["table"]
        for level in ("slice", "study"):
            for head in HEADS:
                cell = table[level]["per_head"][head]
                if cell["auroc"] is None:
                    assert cell["reason"]
                else:
                    assert 0.0 <= cell["auroc"] <= 1.0
                assert cell["ece"] is None or 0.0 <= cell["ece"] <= 1.0
        # the per-seed AUROC of the one seed equals the ensemble's (an ensemble of one is that model)
        cart = table["slice"]["per_head"]["cart"]["auroc"]
        assert entry["per_seed"]["0"]["slice"]["per_head"]["cart"]["value"] == pytest.approx(cart)
    comp = results["comparisons"]["mag"]
    # every paired test resamples whole subjects, at study level too (no DeLong on dependent studies)
    assert comp["study"]["method"] == comp["slice"]["method"] == "paired bootstrap resampling whole subjects"
    # the position-only baseline is measured on the same test slices, in view included (synthetic cohort)
    base = results["position_baseline"]
    assert base["slice"]["per_head"]["mtear"]["n"] == table["slice"]["per_head"]["mtear"]["n"]
    assert "in_view" in base and "in_view" in results["variants"]["i2m2"]["table"]
    # robustness: every condition is reported for both trained variants
    names = [c["name"] for c in results["robustness"]["conditions"]]
    assert {"drop:magnitude", "drop:phase", "drop:tabular", "us:random:x2", "us:random:x4", "us:random:x8", "noise:0.1"} <= set(names)
    assert not any("equispaced" in n for n in names)  # --quick: random masks only (the full ablation has both)
    mag = results["robustness"]["variants"]["mag"]
    assert "no expert can run" in mag["drop:magnitude"]["reason"]  # the magnitude expert alone cannot run without magnitude
    assert mag["drop:phase"]["slice"]["mean_pathologies"]["delta"] == pytest.approx(0.0, abs=1e-12)  # phase unused by mag
    ev = results["evidence"]
    # the four experts, then the prior term refitted on validation after training
    assert ev["experts"] == ["magnitude", "phase", "tabular", "joint", "prior"]
    assert ev["agreement_experts"] == ["magnitude", "phase", "tabular", "joint"]  # the prior sees no input
    for head in HEADS:
        fractions = ev["driving"][head]
        assert sum(v for v in fractions.values() if v is not None) == pytest.approx(1.0)
        agree = np.array([[np.nan if v is None else v for v in row] for row in ev["agreement"][head]])
        assert np.allclose(np.diag(agree), 1.0)


@pytest.mark.slow
def test_failed_variant_and_undefined_heads_are_reported(results: dict, report: Path) -> None:
    page = (report / "report.html").read_text(encoding="utf-8")
    bad = results["variants"][BAD_VARIANT]
    assert bad["status"] == "failed" and "unknown variant" in bad["reason"]
    assert results["comparisons"][BAD_VARIANT]["value"] is None and "unknown variant" in results["comparisons"][BAD_VARIANT]["reason"]
    assert [r["status"] for r in results["runs"]].count("failed") == 1
    assert "unknown variant" in page and html_escaped(BAD_VARIANT) in page
    # the tiny cohort's test split (one study) has no ACL finding: undefined with the reason, never NaN
    test = results["data"]["splits"]["test"]
    empty_heads = [h for h in HEADS if test["positive_studies"][h] == 0]
    assert "acl" in empty_heads
    for head in empty_heads:
        cell = results["variants"]["i2m2"]["table"]["study"]["per_head"][head]
        assert cell["auroc"] is None and "no positives in test split" in cell["reason"]
    assert "no positives in test split (0 of 12 slices)" in page
    assert any("no positives for ACL in the test split" in p["reason"] for p in results["data"]["problems"])
    # one test study: slice-level intervals and paired bootstraps would resample a single study
    cart = results["variants"]["i2m2"]["table"]["slice"]["per_head"]["cart"]
    assert cart["ci"] is None and "too few subjects for a bootstrap" in cart["ci_reason"]


def html_escaped(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@pytest.mark.slow
def test_cached_runs_are_reused(report: Path, tiny_cohort: Path, small_config: Path) -> None:
    from i2m2_med.ablation import run_ablation

    settings = default_settings(quick=True, variants=("mag",), seeds=1, epochs=1, n_boot=30, config=str(small_config),
                                regime_study=False, robustness=False)
    again = run_ablation(tiny_cohort, report.parent / "again", settings, cache_dir=report)
    assert [r["status"] for r in again["runs"]] == ["cached"]
    first = json.loads((report / "results.json").read_text())
    a = first["variants"]["mag"]["per_seed"]["0"]["slice"]["per_head"]["cart"]["value"]
    b = again["variants"]["mag"]["per_seed"]["0"]["slice"]["per_head"]["cart"]["value"]
    assert a == b


@pytest.mark.slow
def test_empty_test_split_is_reported(tiny_cohort: Path, small_config: Path, tmp_path: Path) -> None:
    from i2m2_med.ablation import run_ablation
    from pipelines.ablation import write_report

    data = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, data)
    splits = (data / "splits.csv").read_text().replace(",test\n", ",train\n")
    (data / "splits.csv").write_text(splits)
    settings = default_settings(quick=True, variants=("mag",), seeds=1, epochs=1, n_boot=20, config=str(small_config),
                                regime_study=False, noise_levels=(0.1,), accelerations=(4,), mask_types=("random",))
    res = run_ablation(data, tmp_path / "report", settings)
    json.dumps(res, allow_nan=False)
    assert res["data"]["splits"]["test"]["studies"] == 0
    assert any(p["reason"] == "empty test split: no study" for p in res["data"]["problems"])
    cell = res["variants"]["mag"]["table"]["slice"]["per_head"]["cart"]
    assert cell["auroc"] is None and cell["reason"].startswith("empty test split")
    assert res["evidence"]["value"] is None
    page = write_report(res, tmp_path / "report").read_text(encoding="utf-8")
    assert "empty test split" in page


# ---- the headless browser -------------------------------------------------------------------------


@pytest.mark.slow
def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    if not CHROMIUM.is_file():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)")
    args = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--virtual-time-budget=20000"]
    url = (report / "report.html").as_uri()
    dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=300).stdout
    assert dom.count('class="main-svg"') >= 5, "plotly did not draw the figures offline"
    folder = Path(os.environ.get("I2M2_TEST_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / "ablation_report.png"
    subprocess.run([*args, f"--screenshot={png}", "--window-size=1400,3000", url], capture_output=True, timeout=300)
    from PIL import Image

    image = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    assert image.shape == (3000, 1400)
    assert image.std() > 20.0  # not blank: header band, tables and text
    print(f"screenshot: {png}")


# ---- statistics against hand computations --------------------------------------------------------


def test_paired_mean_difference_identical_scores_is_zero_with_p_one() -> None:
    rng = np.random.default_rng(0)
    y = np.stack([rng.random(60) < 0.4, rng.random(60) < 0.5], axis=1)
    s = rng.random((60, 2))
    res = stats.paired_mean_auroc_difference(y, s, s, n_boot=200, seed=1)
    assert res["diff"] == 0.0 and res["ci"] == [0.0, 0.0] and res["p"] == 1.0


def test_paired_mean_difference_point_estimate_and_interval() -> None:
    rng = np.random.default_rng(3)
    n = 200
    y = np.stack([rng.random(n) < 0.3, rng.random(n) < 0.5], axis=1)
    good = y + rng.normal(0, 0.6, size=y.shape)
    bad = y + rng.normal(0, 3.0, size=y.shape)
    res = stats.paired_mean_auroc_difference(y, good, bad, n_boot=500, seed=2, names=("a", "b"))
    expected = np.mean([auroc(y[:, h], good[:, h]) for h in range(2)]) - np.mean([auroc(y[:, h], bad[:, h]) for h in range(2)])
    assert res["diff"] == pytest.approx(expected, abs=1e-12)
    assert res["ci"][0] > 0.0 and res["ci"][0] < res["diff"] < res["ci"][1]
    assert res["p"] < 0.01 and res["heads"] == ["a", "b"]
    # a hand case: one head, 2 positives and 2 negatives per cluster-free row
    y1 = np.array([[1], [1], [0], [0]], dtype=bool)
    a = np.array([[0.9], [0.8], [0.2], [0.1]])  # AUROC 1
    b = np.array([[0.9], [0.1], [0.2], [0.8]])  # pairs: (0.9>0.2, 0.9>0.8, 0.1<0.2, 0.1<0.8) -> 2/4
    res = stats.paired_mean_auroc_difference(y1, a, b, n_boot=100, seed=0)
    assert res["diff"] == pytest.approx(0.5)


def test_too_few_units_guards_degenerate_bootstraps() -> None:
    y = np.array([1, 0, 0, 1, 0, 0], dtype=bool)
    one_study = np.array(["s1"] * 6)
    assert "1 studies with a positive and 0 without" in stats.too_few_units(y, one_study)
    groups = np.array(["a", "a", "b", "c", "c", "d"])
    assert stats.too_few_units(y, groups) is None  # a and c hold positives, b and d none
    assert "1 positive and 3 negative" in stats.too_few_units(np.array([1, 0, 0, 0], bool))
    res = stats.paired_mean_auroc_difference(y[:, None], np.arange(6.0)[:, None], np.zeros((6, 1)), groups=one_study)
    assert res["value"] is None and "too few studies" in res["reason"]
    # a head with too few studies leaves the mean; the others stay
    two = np.stack([y, np.array([1, 1, 0, 0, 0, 0], bool)], axis=1)
    res = stats.paired_mean_auroc_difference(two, np.tile(np.arange(6.0)[:, None], 2), np.zeros((6, 2)), groups=groups,
                                             n_boot=50, names=("x", "y"))
    assert res["heads"] == ["x"] and "too few studies" in res["excluded_heads"]["y"]


def _pred(p: np.ndarray, y: np.ndarray, ids: list[str], terms: dict | None = None) -> Predictions:
    n = len(ids)
    combined = np.stack([np.log(1 - p), np.log(p)], axis=-1)
    terms = terms or {"magnitude": combined.copy()}
    return Predictions(np.array(ids, dtype=object), np.arange(n), y.astype(np.float32), p, combined,
                       terms, {k: np.ones(n, bool) for k in terms})


def test_ensemble_is_the_mean_probability_and_checks_alignment() -> None:
    y = np.zeros((3, 4))
    a = _pred(np.full((3, 4), 0.2), y, ["s", "s", "t"])
    b = _pred(np.full((3, 4), 0.6), y, ["s", "s", "t"])
    e = ensemble([a, b])
    assert np.allclose(e.p, 0.4) and np.allclose(np.exp(e.combined[..., 1]), 0.4)
    assert np.allclose(np.exp(e.terms["magnitude"][..., 1]), 0.4)
    with pytest.raises(UsageError):
        ensemble([a, _pred(np.full((3, 4), 0.6), y, ["s", "t", "t"])])
    failed = Predictions.empty("not applicable: no expert can run")
    assert ensemble([failed, a]) is a
    assert ensemble([failed]).reason == "not applicable: no expert can run"


def test_predictions_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((5, 4)) < 0.5).astype(np.float32)
    p = _pred(rng.uniform(0.05, 0.95, (5, 4)), y, ["a", "a", "b", "b", "b"])
    p.mask["magnitude"][1] = False
    p.save(tmp_path / "p.npz")
    q = Predictions.load(tmp_path / "p.npz")
    assert list(q.study_id) == ["a", "a", "b", "b", "b"] and q.reason is None
    assert np.array_equal(q.p, p.p) and np.array_equal(q.mask["magnitude"], p.mask["magnitude"])
    assert np.isnan(q.expert_p("magnitude")[1]).all() and np.isfinite(q.expert_p("magnitude")[0]).all()
    Predictions.empty("not applicable: x").save(tmp_path / "e.npz")
    assert Predictions.load(tmp_path / "e.npz").reason == "not applicable: x"


def test_point_aurocs_and_seed_summary() -> None:
    ids = ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["d"] * 3
    y = np.zeros((12, 4))
    y[[0, 1, 6], 2] = 1  # CART positive in studies a and c
    p = np.full((12, 4), 0.5)
    p[:, 2] = np.linspace(0.9, 0.1, 12)
    r1 = stats.point_aurocs(_pred(p, y, ids), "mean_top_k", 3)
    assert r1["slice"]["per_head"]["cart"]["value"] == pytest.approx(auroc(y[:, 2], p[:, 2]))
    assert r1["slice"]["per_head"]["acl"]["value"] is None and "no positives" in r1["slice"]["per_head"]["acl"]["reason"]
    assert r1["slice"]["mean_pathologies"]["value"] == pytest.approx(r1["slice"]["per_head"]["cart"]["value"])
    # study level: a and c positive; top-3 means of a, b, c, d decrease -> a 1, b 0, c 1, d 0 ranks: (a > b, a > d, c > d, c < b)
    assert r1["study"]["per_head"]["cart"]["value"] == pytest.approx(0.75)
    p2 = p.copy()
    p2[:, 2] = p[::-1, 2]
    r2 = stats.point_aurocs(_pred(p2, y, ids), "mean_top_k", 3)
    summary = stats.seed_summary([r1, r2])
    vals = [r1["slice"]["per_head"]["cart"]["value"], r2["slice"]["per_head"]["cart"]["value"]]
    assert summary["slice"]["cart"]["mean"] == pytest.approx(np.mean(vals))
    assert summary["slice"]["cart"]["sd"] == pytest.approx(np.std(vals, ddof=1))
    assert summary["slice"]["acl"]["mean"] is None and "no positives" in summary["slice"]["acl"]["reason"]


def test_variant_table_operating_points_from_validation() -> None:
    rng = np.random.default_rng(5)
    ids = [f"s{i // 4}" for i in range(80)]
    y = (rng.random((80, 4)) < 0.3).astype(float)
    p = np.clip(0.2 + 0.6 * y + rng.normal(0, 0.15, y.shape), 0.01, 0.99)
    test, val = _pred(p, y, ids), _pred(p, y, ids)
    table = stats.variant_table(test, val, agg_rule="mean_top_k", k=3, n_boot=100)
    for level in ("slice", "study"):
        for head in HEADS:
            cell = table[level]["per_head"][head]
            assert cell["threshold"] is not None and cell["sens_spec"]["sensitivity"]["value"] is not None
            assert cell["ci"][0] <= cell["auroc"] <= cell["ci"][1]
    # no validation predictions: every head says why it has no operating point
    table = stats.variant_table(test, Predictions.empty("no validation predictions"), agg_rule="mean_top_k", k=3, n_boot=50)
    assert all("no operating point" in table["slice"]["per_head"][h]["threshold_reason"] for h in HEADS)


def test_compare_to_reference_uses_delong_for_studies() -> None:
    from i2m2_med.metrics.aggregation import study_level
    from i2m2_med.metrics.paired import delong_test

    rng = np.random.default_rng(11)
    ids = [f"s{i // 3}" for i in range(90)]
    y = np.zeros((90, 4))
    for s in range(30):
        if rng.random() < 0.4:
            y[3 * s: 3 * s + 2, :] = 1
    pa = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.1, y.shape), 0.01, 0.99)
    pb = np.clip(0.4 + 0.1 * y + rng.normal(0, 0.2, y.shape), 0.01, 0.99)
    res = stats.compare_to_reference(_pred(pa, y, ids), _pred(pb, y, ids), agg_rule="mean_top_k", k=3, n_boot=200)
    sa = study_level(np.array(ids), pa, y > 0.5)
    sb = study_level(np.array(ids), pb, y > 0.5)
    expected = delong_test(sa.y[:, 1], sa.p[:, 1], sb.p[:, 1])
    assert res["study"]["per_head"]["mtear"]["p"] == pytest.approx(expected.p)
    assert res["study"]["per_head"]["mtear"]["diff"] == pytest.approx(expected.diff)
    assert "cluster" in res["slice"]["per_head"]["mtear"]["method"] and res["slice"]["per_head"]["mtear"]["diff"] > 0


# ---- conditions --------------------------------------------------------------------------------


def test_complex_noise_level_and_determinism() -> None:
    rng = np.random.default_rng(0)
    k = (rng.normal(size=(64, 48)) + 1j * rng.normal(size=(64, 48))).astype(np.complex64) * 3.0
    a = cond.add_complex_noise({"kspace": k}, 0.1, seed=5)["kspace"]
    b = cond.add_complex_noise({"kspace": k}, 0.1, seed=5)["kspace"]
    c = cond.add_complex_noise({"kspace": k}, 0.1, seed=6)["kspace"]
    assert a.dtype == np.complex64 and np.array_equal(a, b) and not np.array_equal(a, c)
    rms = np.sqrt(np.mean(np.abs(k) ** 2))
    assert np.sqrt(np.mean(np.abs(a - k) ** 2)) == pytest.approx(0.1 * rms, rel=0.05)
    image = {"magnitude": np.full((32, 32), 2.0, np.float32), "phase": np.zeros((32, 32), np.float32)}
    noisy = cond.add_complex_noise(image, 0.2, seed=1)
    z = noisy["magnitude"] * np.exp(1j * noisy["phase"])
    assert np.sqrt(np.mean(np.abs(z - 2.0) ** 2)) == pytest.approx(0.4, rel=0.1)
    assert np.abs(noisy["phase"]).max() <= np.pi


def test_drop_from_batch_marks_the_modality_absent() -> None:
    batch = {"magnitude": torch.zeros(3, 1, 8, 8), "phase": torch.zeros(3, 1, 8, 8), "tabular": torch.zeros(3, 5),
             "present": {m: torch.ones(3, dtype=torch.bool) for m in ("magnitude", "phase", "tabular")}, "study_id": ["a"] * 3}
    out = cond.drop_from_batch(batch, ["phase"])
    assert "phase" not in out and "phase" in batch and not out["present"]["phase"].any() and out["present"]["magnitude"].all()
    names = [c.name for c in cond.robustness_conditions((2, 4, 8), ("random", "equispaced"), (0.05, 0.1))]
    assert names[0] == "clean" and len(names) == 1 + 3 + 6 + 2 and "us:equispaced:x8" in names


# ---- regimes and settings --------------------------------------------------------------------------


def test_regime_targets_and_label_noise_ceiling(tmp_path: Path) -> None:
    def block(i2m2: float, intra: float, inter: float) -> dict:
        cell = lambda m: {"seed_summary": {"slice": {"mean_pathologies": {"mean": m}}}}  # noqa: E731
        return {"variants": {"i2m2": cell(i2m2), "intra": cell(intra), "inter": cell(inter)}}

    t = reg.regime_targets({"intra": block(0.90, 0.905, 0.70), "inter": block(0.80, 0.50, 0.82),
                            "mixed": {"value": None, "reason": "cohort not available"}})
    assert t["per_regime"]["intra"]["met"] is True and t["per_regime"]["intra"]["margin_over_best"] == pytest.approx(-0.005)
    assert t["per_regime"]["inter"]["met"] is False
    assert t["per_regime"]["mixed"]["met"] is None and t["all_met"] is None
    # study level: a regime whose test split has too few studies gets no verdict, with the reason
    def study_block(i2m2: float, intra: float, inter: float, n: int) -> dict:
        cell = lambda m: {"seed_summary": {"study": {"mean_pathologies": {"mean": m}}}}  # noqa: E731
        return {"test_studies": n, "variants": {"i2m2": cell(i2m2), "intra": cell(intra), "inter": cell(inter)}}

    ts = reg.regime_targets({"intra": study_block(0.0, 0.0, 0.0, 2), "inter": study_block(0.7, 0.6, 0.9, 12)}, level="study")
    small = ts["per_regime"]["intra"]
    assert small["met"] is None and "only 2 test studies" in small["reason"] and small["i2m2"] == 0.0
    assert ts["per_regime"]["inter"]["met"] is False and ts["all_met"] is None
    # enough studies, but a head with one negative study: its study-level AUROC is that study's rank
    thin = study_block(0.3, 0.27, 0.26, 9) | {"test_study_classes": {
        "acl": {"positive": 0, "negative": 9}, "mtear": {"positive": 8, "negative": 1}, "cart": {"positive": 3, "negative": 6}}}
    tt = reg.regime_targets({"intra": thin}, level="study")["per_regime"]["intra"]
    assert tt["met"] is None and tt["i2m2"] == 0.3
    assert "MTEAR 8 positive / 1 negative" in tt["reason"] and "ACL" not in tt["reason"] and "CART" not in tt["reason"]
    # a head without positive studies is out of the mean (no AUROC) and does not hold the verdict back
    balanced = thin | {"test_study_classes": {"acl": {"positive": 0, "negative": 9}, "mtear": {"positive": 7, "negative": 2}}}
    assert reg.regime_targets({"intra": balanced}, level="study")["per_regime"]["intra"]["met"] is True
    # the slice level of a regime with thin study classes keeps its verdict
    assert reg.regime_targets({"intra": block(0.9, 0.8, 0.7) | {"test_study_classes": thin["test_study_classes"]}})[
        "per_regime"]["intra"]["met"] is True
    # the slice level of the same small regime still gets its verdict
    assert reg.regime_targets({"intra": block(0.9, 0.8, 0.7) | {"test_studies": 2}})["per_regime"]["intra"]["met"] is True
    rows = ["study_id,slice," + ",".join(f"{h}_true,{h}" for h in HEADS)]
    truth = [0, 1, 1, 0, 1, 0]
    noisy = [0, 1, 0, 0, 1, 1]
    for i, (a, b) in enumerate(zip(truth, noisy)):
        rows.append(f"s{i // 3},{i % 3}," + ",".join(f"{a},{b}" for _ in HEADS))
    (tmp_path / "slice_labels.csv").write_text("\n".join(rows) + "\n")
    o = reg.label_noise_ceiling(tmp_path, ["s0", "s1"])
    # noisy positives {1, 4, 5} scored by truth {1, 1, 0}; negatives {0, 2, 3} scored {0, 1, 0}
    expected = auroc(np.array(noisy, bool), np.array(truth, float))
    assert o["mean_pathologies"] == pytest.approx(expected) and o["slices"] == 6
    assert reg.label_noise_ceiling(tmp_path / "missing", ["s0"])["value"] is None


def test_settings_presets_and_validation() -> None:
    full, quick = default_settings(), default_settings(quick=True)
    assert full.seeds == 3 and quick.seeds == 1 and quick.n_boot < full.n_boot and quick.quick
    assert default_settings(quick=True, seeds=2, variants=["i2m2"]).seeds == 2
    with pytest.raises(UsageError):
        AblationSettings(seeds=0)
    with pytest.raises(UsageError):
        AblationSettings(variants=("i2m2", "i2m2"))
    with pytest.raises(UsageError):
        AblationSettings(mask_types=("spiral",))
    assert json.dumps(full.to_dict())


def test_cli_refuses_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["ablate", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "no such data folder" in err[0]


@pytest.mark.slow
def test_regime_study_end_to_end(tiny_cohort: Path, small_config: Path, tmp_path: Path) -> None:
    """The regime study on tiny cohorts: the mixed regime reuses the ablated (mixed) cohort's grid,
    intra and inter cohorts are generated; every regime reports the three variants, the label-noise
    and the margins (or why not), and the targets as measured."""
    from i2m2_med.ablation import run_ablation
    from pipelines.ablation import write_report

    settings = default_settings(quick=True, variants=("i2m2", "intra", "inter"), seeds=1, epochs=1, n_boot=20,
                                config=str(small_config), regime_study=True, robustness=False, regime_volumes=6,
                                regime_slices=12, regime_epochs=1, regime_seeds=1)
    res = run_ablation(tiny_cohort, tmp_path / "report", settings, cache_dir=tmp_path / "cache")
    json.dumps(res, allow_nan=False)
    study = res["regime_study"]
    assert list(study["regimes"]) == ["intra", "inter", "mixed"]
    assert study["regimes"]["mixed"]["source"].startswith("the ablated cohort")
    for regime in ("intra", "inter"):
        block = study["regimes"][regime]
        assert block["source"] == "generated for the regime study"
        manifest = json.loads((Path(block["cohort"]) / "manifest.json").read_text())
        assert manifest["regime"] == regime and manifest["counts"]["volumes"] == 6
        assert manifest["seed"] == settings.regime_cohort_seed
    for regime, block in study["regimes"].items():
        assert set(block["variants"]) == {"i2m2", "intra", "inter"}
        assert all(v["status"] == "ok" for v in block["variants"].values()), regime
        assert block["label_noise_ceiling"]["mean_pathologies"] == pytest.approx(1.0)  # no label noise: the truth is the label
        for other in ("intra", "inter"):
            m = block["margins"][other]
            for level in ("slice", "study"):
                cell = m[level]
                assert (cell.get("diff") is not None and cell["ci"][0] <= cell["diff"] <= cell["ci"][1]) or cell["reason"]
        # findings against mimics: each variant's in-view AUROC, or why there is none
        for v in ("i2m2", "intra", "inter"):
            cell = block["in_view"][v]
            assert (cell["value"] is not None and 0.0 <= cell["value"] <= 1.0) or cell["reason"], (regime, v)
            if cell["value"] is not None and cell["ci"] is not None:
                assert cell["ci"][0] <= cell["value"] <= cell["ci"][1]
        classes = block["test_study_classes"]
        assert set(classes) == {"acl", "mtear", "cart"}
        assert all(c["positive"] + c["negative"] == block["test_studies"] for c in classes.values())
    targets = study["targets"]["slice"]["per_regime"]
    for regime, t in targets.items():
        if t["met"] is not None:
            assert t["met"] == (t["i2m2"] >= max(t["intra"], t["inter"]) - 0.01)
    assert res["targets"]["regime_claim"]["tolerance"] == 0.01
    page = write_report(res, tmp_path / "report").read_text(encoding="utf-8")
    assert "label-noise ceiling" in page and "generated for the regime study" in page
    assert "in-view AUROC" in page
    # an in-view AUROC whose whole CI lies under 0.5 is marked (the legend says what it means once)
    below = sum(1 for block in study["regimes"].values() for v in ("i2m2", "intra", "inter")
                if block["in_view"][v].get("ci") and block["in_view"][v]["ci"][1] < 0.5)
    assert page.count('<span class="bad">below chance</span>') == below + 1
    # a second run reuses the generated cohorts and every cached run
    again = run_ablation(tiny_cohort, tmp_path / "report2", settings, cache_dir=tmp_path / "cache")
    assert again["timing"]["runs_trained"] == 0
    assert again["regime_study"]["regimes"]["intra"]["variants"]["i2m2"]["training"]["reused_from_cache"] == 1


@pytest.mark.slow
def test_empty_validation_split_fails_every_variant_with_its_reason(tiny_cohort: Path, tmp_path: Path) -> None:
    from i2m2_med.ablation import run_ablation
    from pipelines.ablation import write_report

    data = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, data)
    (data / "splits.csv").write_text((data / "splits.csv").read_text().replace(",val\n", ",train\n"))
    settings = default_settings(quick=True, variants=("i2m2", "mag"), seeds=1, epochs=1, n_boot=20, regime_study=False)
    res = run_ablation(data, tmp_path / "report", settings)
    json.dumps(res, allow_nan=False)
    assert any(p["reason"] == "empty val split: no study" for p in res["data"]["problems"])
    for v in ("i2m2", "mag"):
        assert res["variants"][v]["status"] == "failed" and "the val split has no slices" in res["variants"][v]["reason"]
    assert "the val split has no slices" in res["comparisons"]["mag"]["reason"]
    assert res["evidence"]["value"] is None and res["robustness"]["variants"]["mag"]["value"] is None
    assert res["timing"]["runs_failed"] == 2
    assert "turned off" in res["regime_study"]["reason"]
    page = write_report(res, tmp_path / "report").read_text(encoding="utf-8")
    assert page.count("the val split has no slices") >= 3


@pytest.mark.slow
def test_condition_datasets_change_the_images(tiny_cohort: Path) -> None:
    from i2m2_med.data.cohort import load_cohort

    cohort = load_cohort(tiny_cohort)
    clean, _ = cond.condition_dataset(cohort, "test", 64, cond.CLEAN, seed=3)
    x = clean[0]
    for condition in (cond.undersample_condition("random", 8), cond.undersample_condition("equispaced", 4), cond.noise_condition(0.2)):
        ds, note = cond.condition_dataset(cohort, "test", 64, condition, seed=3)
        assert note is None and len(ds) == len(clean)
        a, b = ds[0], ds[0]
        assert a["study_id"] == x["study_id"] and a["slice"] == x["slice"]
        for m in ("magnitude", "phase"):
            diff = float((a[m] - x[m]).abs().mean())
            assert diff > 1e-3, (condition.name, m)
            assert torch.equal(a[m], b[m]), "a condition must give the same image every time"
    # the stronger the change, the further from the clean image
    mild, _ = cond.condition_dataset(cohort, "test", 64, cond.undersample_condition("equispaced", 2), seed=3)
    strong, _ = cond.condition_dataset(cohort, "test", 64, cond.undersample_condition("equispaced", 8), seed=3)
    assert float((strong[0]["magnitude"] - x["magnitude"]).abs().mean()) > float((mild[0]["magnitude"] - x["magnitude"]).abs().mean())
