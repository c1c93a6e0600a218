"""The benchmark command runs on tiny inputs and writes well-formed results (no timing asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from i2m2_med.errors import TransformError
from i2m2_med.transforms.modalities import kspace_to_modalities

REPO = Path(__file__).resolve().parents[1]


def _check_stats(item: dict) -> None:
    st = item["stats"]
    assert st["n"] == len(item["values"]) >= 1
    assert st["min"] <= st["q1"] <= st["median"] <= st["q3"] <= st["max"]
    assert all(v > 0 for v in item["values"])


@pytest.mark.slow
def test_quick_benchmark_writes_json_and_markdown(tmp_path: Path) -> None:
    out = tmp_path / "BENCH.md"
    js = tmp_path / "results.json"
    # an earlier section measured elsewhere must survive a run of other sections
    js.write_text(json.dumps({"schema": 1, "sections": {"gpu": {"title": "GPU", "measured_at": "then", "figures": []}}}))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--sections", "transforms", "synth", "models", "--out", str(out), "--json", str(js), "--quiet"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(js.read_text())
    assert data["schema"] == 1 and "gpu" in data["sections"]
    sec = data["sections"]["transforms"]
    assert "error" not in sec
    assert sec["quick"] is True and sec["repeats"] == 2
    assert sec["machine"]["cores"] >= 1 and sec["software"]["scipy"] != "not installed"
    keys = {f["key"] for f in sec["figures"]}
    assert {"bare_volume", "bare_slices", "bare_limit", "i2m2_volume", "i2m2_slice", "fastmri_slice",
            "fastmri_volume", "monai_volume"} <= keys
    for item in sec["figures"] + sec["ratios"]:
        _check_stats(item)
    assert {f["unit"] for f in sec["figures"]} == {"slices/s", "slices/CPU-s"}
    assert {"i2m2_no_io_cpu", "bare_volume_cpu"} <= keys
    targets = {r["key"]: r["target"] for r in sec["ratios"]}
    assert targets["i2m2_volume_vs_bare"] == 0.8 and targets["i2m2_best_vs_fastmri_best"] == 2.0
    assert sec["params"]["max_relative_difference_i2m2_vs_fastmri"] < 1e-5

    synth = data["sections"]["synth"]
    assert "error" not in synth, synth.get("traceback")
    assert synth["quick"] is True and synth["params"]["volumes_per_repetition"] == 1
    assert synth["params"]["slices_per_repetition"] == 8 and synth["params"]["cli_default_workers"] == 1
    assert {f["key"] for f in synth["figures"]} == {"volumes_per_min_w1", "volumes_per_cpu_min_w1", "slices_per_s_w1"}
    for item in synth["figures"] + synth["ratios"]:
        _check_stats(item)
        assert len(item["values"]) == 2 and all(math.isfinite(v) for v in item["values"])
    by_key = {f["key"]: f["values"] for f in synth["figures"]}
    # 8 slices per volume: slices/s is 8 volumes/min over 60, repetition by repetition
    assert by_key["slices_per_s_w1"] == pytest.approx([v * 8 / 60 for v in by_key["volumes_per_min_w1"]])
    assert [r["target"] for r in synth["ratios"]] == [10.0]
    assert synth["ratios"][0]["values"] == by_key["volumes_per_min_w1"]

    models = data["sections"]["models"]
    assert "error" not in models, models.get("traceback")
    assert models["params"]["torch_threads"] == 1  # quick run; 2 in a full run
    cases = {(c["config"], c["variant"]): c for c in models["params"]["cases"]}
    assert set(cases) == {("cpu", "i2m2"), ("cpu", "mag"), ("paper", "mag")}
    assert cases[("cpu", "i2m2")]["batch"] == 4 and cases[("paper", "mag")]["image_size"] == 32
    gflops = models["params"]["image_expert_forward_gflops_per_slice"]
    assert 0 < gflops["cpu"] < 0.1 and 0 < gflops["paper"]  # cpu config: about 18 MFLOPs per slice
    n_params = models["params"]["parameters"]
    assert n_params["cpu_i2m2"] > n_params["cpu_mag"] > 0 and n_params["paper_mag"] > 10 * n_params["cpu_mag"]
    mkeys = {f["key"] for f in models["figures"]}
    for case in ("cpu_i2m2", "cpu_mag", "paper_mag"):
        assert {f"{case}_train", f"{case}_train_cpu", f"{case}_infer", f"{case}_infer_cpu"} <= mkeys
    assert {f["unit"] for f in models["figures"]} == {"samples/s", "samples/CPU-s", "slices/s", "slices/CPU-s"}
    for item in models["figures"] + models["ratios"]:
        _check_stats(item)
        assert len(item["values"]) == 2 and all(math.isfinite(v) for v in item["values"])

    md = out.read_text()
    assert md.startswith("# Benchmarks\n")
    assert "## Modality pipeline" in md and "## GPU" in md
    assert "## Synthetic generator" in md and "## Models" in md
    # report order: the registered sections first, in registration order, then the others
    assert md.index("## Modality pipeline") < md.index("## Synthetic generator") < md.index("## Models") < md.index("## GPU")
    # the hand-written record of removed options closes the report, whatever the sections
    assert md.rstrip().endswith((REPO / "benchmarks" / "removed_options.md").read_text().strip())
    assert "| ratio | median | IQR | min–max | target | met |" in md
    # one table row per figure and ratio, plus a header row per table, each with 5 or 6 cells
    rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    secs = [sec, synth, models]
    tables = sum(bool(s["figures"]) + bool(s["ratios"]) for s in secs)
    targeted = [r for s in secs for r in s["ratios"] if r.get("target") is not None]
    glance = 1 + len(targeted)  # "Targets at a glance": a header and one row per ratio with a target
    assert len(rows) == sum(len(s["figures"]) + len(s["ratios"]) for s in secs) + tables + glance
    assert md.index("## Targets at a glance") < md.index("## Modality pipeline")
    assert md.count("| ≥ 0.8 | ") >= 2 and "| ≥ 10 | yes |" in md
    glance_rows = md.split("## Targets at a glance", 1)[1].split("\n## ", 1)[0]
    glance_rows = [line for line in glance_rows.splitlines() if line.startswith("| ") and "---" not in line]
    assert glance_rows[0].endswith("| measured | CPU |") and len(glance_rows) == glance
    cpu = sec["machine"]["cpu"]
    assert all(line.count("|") == 8 and line.endswith(f"| {cpu} |") for line in glance_rows[1:])
    assert all(line.count("|") in (6, 7) for line in rows if line not in glance_rows)


def test_markdown_renders_failed_section() -> None:
    from benchmarks.run import render_markdown

    md = render_markdown({"sections": {"transforms": {"title": "T", "error": "ValueError: boom", "machine": {}}}})
    assert "**This section failed:** `ValueError: boom`" in md


def test_summarise() -> None:
    from benchmarks.common import summarise

    st = summarise([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (st["median"], st["q1"], st["q3"], st["min"], st["max"], st["n"]) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)
    assert summarise([2.0])["q1"] == 2.0


def test_models_standalone_cli_and_thread_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from benchmarks import bench_models
    from benchmarks.common import Context

    threads = torch.get_num_threads()
    try:
        bench_models.main(["--config", "cpu", "--variants", "mag", "--batch-size", "2", "--steps", "2", "--warmup", "0",
                           "--threads", "1"])
        assert torch.get_num_threads() == 1
        out = json.loads(capsys.readouterr().out)
        assert out["config"] == "cpu" and out["image_size"] == 64 and out["steps"] == 2 and out["threads"] == 1
        assert out["bf16_autocast"] is False and out["channels_last"] is False and out["device"] == "cpu"
        mag = out["variants"]["mag"]
        assert len(mag["train_step_seconds"]) == 2 and mag["train_samples_per_s_best"] >= mag["train_samples_per_s_median"] > 0
        assert mag["parameters"] > 0 and 0 < out["image_expert_forward_gflops_per_slice"] < 0.1

        # bf16 autocast + channels-last run on CPU too (the GPU script's options)
        res = bench_models.bench("cpu", ["mag"], 2, 1, 6, "cpu", bf16=True, channels_last=True, warmup=0)
        assert res["bf16_autocast"] and res["channels_last"] and res["variants"]["mag"]["infer_slices_per_s_median"] > 0
        assert res["variants"]["mag"]["parameters"] == mag["parameters"]

        # as a section it sets its own thread count (1 in a quick run) and gives the process's back
        torch.set_num_threads(2)
        ctx = Context(quick=True, repeats=1, workdir=tmp_path)
        result = bench_models.run(ctx)
        assert torch.get_num_threads() == 2 and result["params"]["torch_threads"] == 1
    finally:
        torch.set_num_threads(threads)
    assert all(len(f["values"]) == 1 and f["values"][0] > 0 for f in result["figures"])
    assert any("32 x 32" in note for note in result["notes"])


def test_gpu_section_without_cuda_exits_2() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_section"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA is not available" in lines[0]
    assert proc.stdout == ""


def test_gpu_output_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.gpu_section import output_path

    monkeypatch.delenv("OUT", raising=False)
    assert output_path() == Path("gpu_results.json")
    monkeypatch.setenv("OUT", str(tmp_path))
    assert output_path() == tmp_path / "gpu_results.json"
    monkeypatch.setenv("OUT", str(tmp_path / "g.json"))
    assert output_path() == tmp_path / "g.json"
    assert output_path(tmp_path / "x.json") == tmp_path / "x.json"


def test_gpu_merge_keeps_other_sections(tmp_path: Path) -> None:
    from benchmarks.gpu_section import SECTION, TITLE, main

    entry = {"title": TITLE, "measured_at": "now", "repeats": 3, "machine": {"cpu": "host", "gpu": "Card X"},
             "figures": [{"key": "paper_mag_train", "label": "training", "unit": "samples/s", "values": [3.0, 1.0, 2.0]}],
             "ratios": [], "params": {"card": "Card X"}}
    gpu_json = tmp_path / "gpu_results.json"
    gpu_json.write_text(json.dumps(entry))
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"schema": 1, "sections": {"transforms": {"title": "Modality pipeline", "figures": []}}}))
    md = tmp_path / "B.md"
    assert main(["--merge", str(gpu_json), "--json", str(results), "--out", str(md)]) == 0
    data = json.loads(results.read_text())
    assert set(data["sections"]) == {"transforms", SECTION}
    st = data["sections"][SECTION]["figures"][0]["stats"]
    assert (st["median"], st["min"], st["max"], st["n"]) == (2.0, 1.0, 3.0, 3)
    text = md.read_text()
    assert text.index("## Modality pipeline") < text.index(f"## {TITLE}")
    assert "| training | 2.00 | 1.50–2.50 | 1.00–3.00 | samples/s |" in text


def test_training_section_quick(tmp_path: Path) -> None:
    """The training section trains I2M2 and a single expert on a tiny cohort and reports the
    models-issue target as ratios (values checked, not only presence)."""
    from benchmarks import bench_training
    from benchmarks.common import Context

    result = bench_training.run(Context(quick=True, repeats=1, workdir=tmp_path))
    runs = result["params"]["results"]
    assert set(runs) == {"i2m2", "mag"}
    assert runs["i2m2"]["config_changes"] == {} and runs["mag"]["config_changes"] == bench_training.NO_AUGMENT
    # every run records its in-view AUROC next to the slice-level one (the quick cohort has episodes.csv)
    assert all("test_in_view_mean_auroc" in r for r in runs.values())
    for r in runs.values():
        assert r["epochs"] == [1] and r["wall_seconds"] > 0
        assert r["train_samples_per_s"] is not None and r["train_samples_per_s"] > 0
    keys = {r["key"]: r for r in result["ratios"]}
    assert keys["time_i2m2"]["target"] == 1.0
    assert abs(keys["time_i2m2"]["values"][0] - 600.0 / runs["i2m2"]["wall_seconds"]) < 1e-9
    if runs["i2m2"]["test_mean_auroc"] is not None:
        ceiling_ratio = keys["quality_i2m2"]["values"][0]
        assert abs(ceiling_ratio - runs["i2m2"]["test_mean_auroc"] / 0.95) < 1e-9
    assert any("label-noise ceiling" in note.lower() for note in result["notes"])


def test_ablation_section_quick(tmp_path: Path) -> None:
    """The ablation section runs `ablate --quick` end to end on a tiny cohort and reports its wall
    time against the 5-minute target."""
    from benchmarks import bench_ablation
    from benchmarks.common import Context

    result = bench_ablation.run(Context(quick=True, repeats=1, workdir=tmp_path))
    (fig,) = result["figures"]
    (ratio,) = result["ratios"]
    minutes = fig["values"][0]
    assert fig["unit"] == "min" and minutes > 0 and fig["label"].startswith("ablate --quick, wall time")
    assert ratio["target"] == 1.0 and abs(ratio["values"][0] - 5.0 / minutes) < 1e-9
    assert result["params"]["settings"]["variants"] == ["mag"] and result["params"]["timing"]["total_s"] > 0
    assert (tmp_path / "report" / "report.html").is_file()


def test_ablation_full_section_quick(tmp_path: Path) -> None:
    """The full-ablation section runs a default (not --quick) `ablate` on a tiny cohort and reports
    its wall time against the 30-minute target."""
    from benchmarks import bench_ablation_full
    from benchmarks.common import Context

    result = bench_ablation_full.run(Context(quick=True, repeats=1, workdir=tmp_path))
    (fig,) = result["figures"]
    (ratio,) = result["ratios"]
    assert fig["key"] == "ablate_full_min" and fig["unit"] == "min" and fig["values"][0] > 0
    assert fig["label"].startswith("ablate, wall time") and ratio["label"] == "30 min / ablate wall time"
    assert ratio["target"] == 1.0 and abs(ratio["values"][0] - 30.0 / fig["values"][0]) < 1e-9
    assert "full default" not in result["description"] and "seven variants over 3 seeds" in result["description"]
    report = json.loads((tmp_path / "report" / "results.json").read_text())
    assert report["settings"]["quick"] is False and report["settings"]["mask_types"] == ["random", "equispaced"]


def test_training_seeds_section_quick(tmp_path: Path) -> None:
    """The seeds section trains its recipes over two seeds in two worker processes and summarises
    each figure over the seeds (one value per seed), choosing on validation."""
    from benchmarks import bench_training_seeds
    from benchmarks.common import Context

    result = bench_training_seeds.run(Context(quick=True, repeats=1, workdir=tmp_path))
    runs = result["params"]["results"]
    assert list(runs) == [label for label, _ in bench_training_seeds.RECIPES_QUICK]
    for rows in runs.values():
        assert [r["seed"] for r in rows] == [0, 1]
        assert all(r["epochs"] == [1, 1] and r["wall_seconds"] > 0 for r in rows)  # warm start + product
        # a different seed is a different run
        assert rows[0]["val_auroc_mean"] != rows[1]["val_auroc_mean"] or \
            rows[0]["test_mean_auroc"] != rows[1]["test_mean_auroc"]
    figures = {f["key"]: f for f in result["figures"]}
    for label, rows in runs.items():
        assert figures[f"val_{label}"]["values"] == [r["val_auroc_mean"] for r in rows]
    chosen = result["params"]["chosen_on_validation"]
    means = {label: sum(r["val_auroc_mean"] for r in rows) / len(rows) for label, rows in runs.items()}
    assert means[chosen] == max(means.values())
    assert any(note.startswith(f"Highest mean validation AUROC over the seeds: {chosen}") for note in result["notes"])


def test_training_episodes_note_counts_the_training_split(tiny_cohort: Path, tmp_path: Path) -> None:
    """The training section's note on what the training split holds: finding episodes per head and
    regime rule, counted from episodes.csv for the training studies only."""
    import csv

    from benchmarks.bench_training import training_episodes_note

    with open(tiny_cohort / "splits.csv", newline="") as f:
        train_ids = {r["study_id"] for r in csv.DictReader(f) if r["split"] == "train"}
    with open(tiny_cohort / "episodes.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["study_id"] in train_ids]
    note = training_episodes_note(tiny_cohort)
    for head in ("acl", "mtear", "cart"):
        found = [r for r in rows if r["head"] == head and r["finding"] == "1"]
        inter = [r for r in found if r["mode"] == "inter"]
        slices = sum(int(r["last_slice"]) - int(r["first_slice"]) + 1 for r in inter)
        mimics = sum(1 for r in rows if r["head"] == head and r["finding"] == "0")
        assert f"{head}: {len(found)} finding episodes (inter {len(inter)} ({slices} slices)" in note
        assert f"against {mimics} mimic episodes" in note.split(f"{head}:")[1].split(";")[0]
    assert training_episodes_note(tmp_path) is None  # no episodes.csv: no note


def test_ablation_regime_notes_carry_the_claim_margins_and_in_view() -> None:
    """The ablation sections' notes read the regime study of the report's results.json: the
    claim per regime, the paired margins and each variant's in-view AUROC with its CI."""
    from benchmarks.bench_ablation import regime_notes

    results = {"regime_study": {
        "targets": {"slice": {"tolerance": 0.01, "per_regime": {
            "inter": {"i2m2": 0.86, "intra": 0.79, "inter": 0.76, "met": True},
            "intra": {"i2m2": None, "intra": 0.5, "inter": 0.6, "met": None, "reason": "i2m2: failed"}}}},
        "regimes": {"inter": {
            "test_studies": 5,
            "margins": {"inter": {"slice": {"diff": 0.1, "ci": [0.01, 0.2], "p": 0.03, "method": "paired bootstrap"}}},
            "in_view": {"i2m2": {"value": 0.712, "ci": [0.6, 0.8]}, "intra": {"value": 0.55, "ci": None},
                        "inter": {"value": None, "reason": "no test predictions"}}}},
    }}
    notes = regime_notes(results)
    assert "Regime inter, slice level, mean AUROC ACL/MTEAR/CART: i2m2 0.860, intra 0.790, inter 0.760" in notes[0]
    assert notes[0].endswith("met.") and notes[1] == "Regime intra, slice level: no result (i2m2: failed)."
    assert "i2m2 − inter = +0.100 (95% CI +0.010 to +0.200, p = 0.03" in notes[2]
    assert notes[3].startswith("Regime inter, in view") and notes[3].endswith(
        "i2m2 0.712 (95% CI 0.600–0.800), intra 0.550, inter – (no test predictions).")
    assert "below chance" not in " ".join(notes)
    # a model that ranks mimics above findings is flagged, from the CI (not the point value)
    results["regime_study"]["targets"]["slice"]["per_regime"]["inter"].update(i2m2=0.31, intra=0.45, inter=0.49, met=True)
    results["regime_study"]["regimes"]["inter"]["in_view"] = {
        "i2m2": {"value": 0.3, "ci": [0.2, 0.47]}, "intra": {"value": 0.45, "ci": [0.3, 0.6]}, "inter": {"value": 0.4, "ci": None}}
    notes = regime_notes(results)
    assert notes[0].endswith("Every variant is below chance (0.5): these models rank negatives above positives, so the"
                             " claim compares models that have not learned the task.")
    assert "i2m2 0.300 (95% CI 0.200–0.470) [below chance], intra 0.450 (95% CI 0.300–0.600), inter 0.400." in notes[3]
    assert notes[3].endswith("so the model ranks the mimics above the findings.")
    # no verdict (too few studies of a class): no below-chance sentence on top of the reason
    results["regime_study"]["targets"]["slice"]["per_regime"]["inter"].update(met=None, reason="too few test studies of a class")
    notes = regime_notes(results)
    assert notes[0].endswith("no verdict: too few test studies of a class.")
    assert regime_notes({}) == []


# ---- the whole-volume path that the transforms section times ---------------------------------


def _kspace(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


@pytest.mark.parametrize("shape, block", [((11, 96, 72), 4), ((3, 2, 96, 72), 8), ((5, 96, 72), 1)])
def test_iter_volume_modalities_equals_slice_by_slice(tmp_path, shape, block):
    from benchmarks.volume_modalities import iter_volume_modalities
    from i2m2_med.io.fastmri_h5 import read_fastmri_h5, write_fastmri_h5
    from i2m2_med.io.ismrmrd import HeaderParams, build_header

    k = _kspace(shape, seed=len(shape) + block)
    path = tmp_path / "vol.h5"
    coils = shape[1] if len(shape) == 4 else 1
    write_fastmri_h5(path, k, build_header(HeaderParams(encoded_y=shape[-1], n_slices=shape[0], n_coils=coils)))
    study = read_fastmri_h5(path)
    assert study.slice_reader.direct
    starts, mags, phases = [], [], []
    for start, out in iter_volume_modalities(study, (64, 64), block=block):
        starts.append(start)
        assert out["magnitude"].shape[1:] == (64, 64) and out["magnitude"].dtype == np.float32
        mags.append(out["magnitude"])
        phases.append(out["phase"])
    assert starts == list(range(0, shape[0], block))
    mag, phase = np.concatenate(mags), np.concatenate(phases)
    assert mag.shape == (shape[0], 64, 64)
    for i in range(shape[0]):
        ref = kspace_to_modalities(k[i], (64, 64), coils=len(shape) == 4)
        np.testing.assert_allclose(mag[i], ref["magnitude"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(phase[i], ref["phase"], rtol=1e-5, atol=1e-5)
    study.slice_reader.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_iter_volume_modalities_names_the_bad_slice_of_a_direct_read_file(tmp_path, workers):
    """The volume path skips the reader's NaN/Inf pass and checks the images instead: the
    error still names the file and the slice, with the reader's count; a finite slice whose
    image overflows float32 is a TransformError, not a NaN report."""
    from benchmarks.volume_modalities import iter_volume_modalities
    from i2m2_med.errors import StudyReadError
    from i2m2_med.io.fastmri_h5 import read_fastmri_h5, write_fastmri_h5
    from i2m2_med.io.ismrmrd import HeaderParams, build_header

    k = _kspace((7, 96, 72), seed=21)
    k[5, 40, 7] = np.nan
    k[5, 2, 70] = -np.inf
    path = tmp_path / "nan.h5"
    write_fastmri_h5(path, k, build_header(HeaderParams(encoded_y=72, n_slices=7)))
    study = read_fastmri_h5(path)
    assert study.slice_reader.direct
    blocks = iter_volume_modalities(study, (64, 64), block=4, workers=workers)
    start, first = next(blocks)
    assert start == 0 and np.isfinite(first["magnitude"]).all()
    with pytest.raises(StudyReadError) as info:
        next(blocks)
    msg = info.value.one_line()
    assert str(path) in msg and "slice 5: k-space contains 2 NaN/Inf values" in msg
    study.slice_reader.close()

    huge = np.full((2, 96, 72), 3e38 + 3e38j, np.complex64)
    path = tmp_path / "huge.h5"
    write_fastmri_h5(path, huge, build_header(HeaderParams(encoded_y=72, n_slices=2)))
    study = read_fastmri_h5(path)
    with pytest.raises(TransformError, match="slice 0: the image overflows float32"):
        list(iter_volume_modalities(study, (64, 64), workers=workers))
    study.slice_reader.close()


def test_iter_volume_modalities_without_block_reads_and_bad_studies(tmp_path):
    from pathlib import Path

    from benchmarks.volume_modalities import iter_volume_modalities
    from i2m2_med.errors import StudyReadError
    from i2m2_med.io.study import Study

    k = _kspace((5, 64, 48), seed=9)

    def reader(i: int) -> dict:
        if i == 3:
            raise StudyReadError("mem.h5", "slice 3: k-space contains 1 NaN/Inf values")
        return {"kspace": k[i]}

    study = Study("mem", Path("mem.h5"), "fastmri_h5", "kspace", 5, ("magnitude", "phase"), reader)
    blocks = iter_volume_modalities(study, (32, 32), block=2)
    first = next(blocks)
    assert first[0] == 0
    np.testing.assert_allclose(first[1]["magnitude"][1], kspace_to_modalities(k[1], (32, 32))["magnitude"], rtol=1e-6)
    with pytest.raises(StudyReadError, match="slice 3"):
        list(blocks)
    image = Study("img", Path("img.nii.gz"), "nifti", "image", 2, ("magnitude",), lambda i: {})
    with pytest.raises(TransformError, match="not a k-space study"):
        next(iter_volume_modalities(image))


def test_iter_volume_modalities_closed_early_leaves_nothing_running():
    """With two workers the next block is queued before a block is yielded; closing the
    generator cancels what has not started and waits for what has, so no slice is read after
    close returns, and slices of later blocks are never read."""
    import threading
    import time
    from pathlib import Path

    from benchmarks.volume_modalities import iter_volume_modalities
    from i2m2_med.io.study import Study

    k = _kspace((24, 64, 48), seed=33)
    reads: list[int] = []
    lock = threading.Lock()

    def reader(i: int) -> dict:
        time.sleep(0.01)
        with lock:
            reads.append(i)
        return {"kspace": k[i]}

    study = Study("slow", Path("slow.h5"), "fastmri_h5", "kspace", 24, ("magnitude", "phase"), reader)
    blocks = iter_volume_modalities(study, (32, 32), block=4, workers=2)
    start, out = next(blocks)
    assert start == 0 and out["magnitude"].shape == (4, 32, 32)
    blocks.close()
    with lock:
        done = sorted(reads)
    time.sleep(0.1)
    assert sorted(reads) == done  # nothing read after close
    assert set(range(4)) <= set(done) and max(done) < 8  # block 0 and at most the queued block 1


def test_cache_section_compares_the_three_data_paths(tmp_path: Path) -> None:
    from benchmarks import bench_cache
    from benchmarks.common import Context

    result = bench_cache.run(Context(quick=True, repeats=1, workdir=tmp_path))
    figures = {f["key"]: f["values"] for f in result["figures"]}
    assert set(figures) == {"files", "cache_first", "cache_later", "persistent_first", "persistent_later"}
    assert all(len(v) == 1 and v[0] > 0 for v in figures.values())
    # a later epoch from the memory-mapped cache reads no file and transforms nothing
    assert figures["cache_later"][0] < figures["files"][0]
    assert result["params"]["slices"] == 16


@pytest.mark.slow
def test_heldout_section_measures_the_bundled_model_against_position(tmp_path: Path, monkeypatch) -> None:
    import i2m2_med
    from benchmarks import bench_heldout
    from benchmarks.common import Context

    if not i2m2_med.demo_model_path().is_file():
        pytest.skip("the demo model is not bundled in this checkout")
    monkeypatch.delenv(bench_heldout.HELDOUT_DIR_ENV, raising=False)
    result = bench_heldout.run(Context(quick=True, repeats=1, workdir=tmp_path))
    values = result["heldout"]["values"]
    assert values["slice_mean3"] is not None and values["position_slice_mean3"] is not None
    assert 0.0 <= values["slice_mean3"] <= 1.0 and 0.0 <= values["study_ece"] <= 1.0
    assert set(result["heldout"]["met"]) == set(bench_heldout.TARGETS)
    assert any(n.startswith("Targets: ") for n in result["notes"])
    assert not any(p.suffix == ".h5" for p in tmp_path.rglob("*.h5"))  # generated straight into the cache


@pytest.mark.slow
def test_claim_and_finetune_sections_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim section runs the quick claim study and reports per-seed figures, margins, targets
    and the learning curve; the fine-tuning section reuses its pool and chooses a scale on
    validation."""
    from benchmarks import bench_claim, bench_finetune
    from benchmarks.common import Context

    monkeypatch.setenv("I2M2_CLAIM_DIR", str(tmp_path / "claim"))
    ctx = Context(quick=True, repeats=1, workdir=tmp_path)
    claim = bench_claim.run(ctx)
    keys = {f["key"] for f in claim["figures"]}
    assert {"wall_min", "inter_i2m2_in_view", "inter_intra_study", "inter_inter_in_view"} <= keys
    assert all(len(f["values"]) == 2 for f in claim["figures"] if f["key"] != "wall_min")  # two seeds each
    text = "\n".join(claim["notes"])
    assert "I2M2 − intra (paired, subjects)" in text and "position only" in text and "Learning curve" in text
    assert claim["claim"]["targets"]["per_regime"]["inter"]["met"] in (True, False)
    tune = bench_finetune.run(ctx)
    rows = tune["finetune"]["rows"]
    assert [r["scale"] for r in rows] == [0.1, 0.3, 1.0]
    best = max(rows, key=lambda r: r["val_in_view_mean4"])
    assert tune["finetune"]["chosen"] == best["scale"]
    assert len(list((tmp_path / "claim" / "pools").iterdir())) == 1  # the pool was reused, not generated again


@pytest.mark.slow
def test_learnability_section_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The learnability section trains the magnitude expert alone on the intra pool and reports,
    per training size, the per-epoch curves, the held-out in-view AUROC and the cue response."""
    from benchmarks import bench_learnability
    from benchmarks.common import Context

    monkeypatch.setenv("I2M2_CLAIM_DIR", str(tmp_path / "claim"))
    monkeypatch.delenv("I2M2_HELDOUT_DIR", raising=False)
    result = bench_learnability.run(Context(quick=True, repeats=1, workdir=tmp_path))
    (row,) = result["learnability"]["rows"]
    assert row["train_volumes"] == bench_learnability.QUICK["sizes"][0]
    assert len(row["train_loss"]) == len(row["val_in_view"]) == row["epochs_run"] == bench_learnability.QUICK["epochs"]
    assert set(row["heldout_in_view"]) == {"acl", "mtear", "cart", "abnormal"}
    assert set(row["cue_response"]["mtear"]) == {"mimics", "findings"}
    assert {f["key"] for f in result["figures"]} == {"in_view_8", "cue_mimics_8"}
    assert result["notes"][0].startswith("8 training volumes (") and "cue response (magnitude)" in result["notes"][0]
    assert [p.name for p in (tmp_path / "claim" / "pools").iterdir()] == ["intra-v24-s71001"]


@pytest.mark.slow
def test_budget_section_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget section trains the joint model on nested training sets of the mixed pool for
    more or fewer epochs and reports, per run, the held-out in-view AUROC, the co-location and cue
    responses and the per-epoch curves."""
    from benchmarks import bench_budget
    from benchmarks.common import Context

    monkeypatch.setenv("I2M2_CLAIM_DIR", str(tmp_path / "claim"))
    monkeypatch.delenv("I2M2_HELDOUT_DIR", raising=False)
    result = bench_budget.run(Context(quick=True, repeats=1, workdir=tmp_path))
    rows = result["budget"]["rows"]
    assert [(r["train_volumes"], r["epochs"]) for r in rows] == [tuple(r) for r in bench_budget.QUICK["runs"]]
    for row in rows:
        assert len(row["train_loss"]) == len(row["val_in_view"]) == row["epochs_run"] == row["epochs"]
        assert set(row["heldout_in_view"]) == {"acl", "mtear", "cart", "abnormal"}
        assert set(row["colocation"]["mtear"]) == {"auroc", "n_together", "n_apart"}
        assert row["seconds"] > 0 and row["draws"] == row["epochs"] * bench_budget.QUICK["draws"]
    assert rows[0]["train_subjects"] < rows[1]["train_subjects"]
    assert {f["key"] for f in result["figures"]} >= {"in_view_8v_1e", "coloc_14v_2e", "train_min_14v_2e"}
    assert result["notes"][0].startswith("8 volumes, 1 epochs (64 draws)") and "co-location response" in result["notes"][0]
    assert [p.name for p in (tmp_path / "claim" / "pools").iterdir()] == ["mixed-v24-s71003"]


@pytest.mark.slow
def test_recipe_section_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recipe section trains the phase expert under every recipe and seed and i2m2 on a demo
    cohort under two, reports validation and held-out figures apart, and chooses on validation only."""
    from benchmarks import bench_recipe
    from benchmarks.common import Context

    monkeypatch.setenv("I2M2_CLAIM_DIR", str(tmp_path / "claim"))
    monkeypatch.delenv("I2M2_HELDOUT_DIR", raising=False)
    result = bench_recipe.run(Context(quick=True, repeats=1, workdir=tmp_path))
    rows = result["recipe"]["rows"]
    assert [(r["recipe"], r["seed"]) for r in rows] == [(name, 0) for name in bench_recipe.RECIPES]
    assert all("reason" not in r for r in rows), rows
    assert all(set(r["heldout_in_view"]) == {"acl", "mtear", "cart", "abnormal"} for r in rows)
    assert len({r["changes"]["training.augment.max_shift"] for r in rows if "training.augment.max_shift" in r["changes"]}) == 1
    assert len(result["figures"]) == 2 * len(bench_recipe.RECIPES) + 4 * len(bench_recipe.I2M2_RECIPES)
    i2m2 = result["recipe"]["i2m2_rows"]
    assert [r["recipe"] for r in i2m2] == list(bench_recipe.I2M2_RECIPES)
    assert all(r["heldout_study_ece"] is None or 0.0 <= r["heldout_study_ece"] <= 1.0 for r in i2m2)
    assert result["notes"][-1].startswith("i2m2 on the demo cohort, chosen on validation: ")
    assert "shifts up to 4 px" in result["notes"][-1]  # the shipped demo recipe, read from demo.yaml
    # the choice follows validation: a made-up held-out score never moves it
    fake = [dict(r, heldout_in_view_mean3=1.0 - (r["val_in_view"] or 0.0)) for r in rows]
    assert bench_recipe._chosen(fake) == result["recipe"]["chosen"]
    best = max(rows, key=lambda r: r["val_in_view"] if r["val_in_view"] is not None else -1)
    assert result["recipe"]["chosen"] == best["recipe"]


def test_saliency_section_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import i2m2_med
    from benchmarks import bench_heldout, bench_saliency
    from benchmarks.common import Context

    if not i2m2_med.demo_model_path().is_file():
        pytest.skip("the demo model is not bundled in this checkout")
    monkeypatch.delenv(bench_heldout.HELDOUT_DIR_ENV, raising=False)
    result = bench_saliency.run(Context(quick=True, repeats=1, workdir=tmp_path))
    summary = result["saliency"]
    assert set(summary) == {"magnitude", "phase", "joint"}
    for expert, block in summary.items():
        for method in bench_saliency.METHODS:
            rate = block[method]["pointing"]
            assert rate is None or 0.0 <= rate <= 1.0
        assert block["chance"] is None or 0.0 < block["chance"] < 1.0
    assert any(n.startswith("Target: integrated_gradients (the viewer's default) points inside the box") for n in result["notes"])


@pytest.mark.slow
def test_app_speed_section_times_slices_and_pathologies_in_a_browser(tmp_path: Path) -> None:
    from benchmarks import bench_app_speed
    from benchmarks.common import Context

    if not bench_app_speed.CHROMIUM.is_file():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    result = bench_app_speed.run(Context(quick=True, repeats=1, workdir=tmp_path))
    values = {f["key"]: f["values"] for f in result["figures"]}
    assert len(values["slice_new_s"]) == 2 and len(values["slice_seen_s"]) == 2 and len(values["pathology_s"]) == 1
    assert all(0.0 < v < 300.0 for vs in values.values() for v in vs)
    assert {r["key"] for r in result["ratios"]} == {"slice_target", "pathology_target"}
