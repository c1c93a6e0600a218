"""The benchmark command runs on tiny inputs and writes well-formed results (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
        [sys.executable, "-m", "benchmarks.run", "--quick", "--sections", "transforms", "--out", str(out), "--json", str(js), "--quiet"],
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

    md = out.read_text()
    assert md.startswith("# Benchmarks\n")
    assert "## Modality pipeline" in md and "## GPU" in md
    assert "| ratio | median | IQR | min–max | target | met |" in md
    # one table row per figure and ratio, each with 5 or 6 cells
    rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == len(sec["figures"]) + len(sec["ratios"]) + 2
    assert all(line.count("|") in (6, 7) for line in rows)


def test_markdown_renders_failed_section() -> None:
    from benchmarks.run import render_markdown

    md = render_markdown({"sections": {"transforms": {"title": "T", "error": "ValueError: boom", "machine": {}}}})
    assert "**This section failed:** `ValueError: boom`" in md


def test_summarise() -> None:
    from benchmarks.common import summarise

    st = summarise([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (st["median"], st["q1"], st["q3"], st["min"], st["max"], st["n"]) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)
    assert summarise([2.0])["q1"] == 2.0
