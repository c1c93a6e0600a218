"""Scale-out of the ablation: shards that split the runs between processes (`--shard I/N`), the
merge that reuses them, and `--jobs J` running the shards at once on one machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from i2m2_med.ablation import run_ablation
from i2m2_med.ablation.runs import Shard, parse_shard
from i2m2_med.ablation.settings import default_settings
from i2m2_med.errors import UsageError
from pipelines.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_shards_take_every_run_once_in_turn() -> None:
    shards = [Shard(i, 3) for i in range(3)]
    owners = [[s.claims() for s in shards] for _ in range(7)]  # every shard considers the same 7 runs
    for k, row in enumerate(owners):
        assert [mine for mine, _ in row] == [i == k % 3 for i in range(3)]
        assert {owner for _, owner in row} == {k % 3}
    assert parse_shard("2/5") == Shard(2, 5)
    for bad in ("5/5", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(UsageError, match="--shard: expected I/N"):
            parse_shard(bad)


@pytest.mark.slow
def test_shards_split_the_grid_and_the_regime_study_and_the_merge_trains_nothing(
    tiny_cohort: Path, small_config: Path, tmp_path: Path
) -> None:
    settings = default_settings(quick=True, variants=("i2m2", "intra", "inter"), seeds=1, epochs=1, n_boot=20,
                                config=str(small_config), regime_study=True, robustness=False, regime_volumes=6,
                                regime_slices=12, regime_epochs=1, regime_seeds=1)
    report, cache = tmp_path / "report", tmp_path / "cache"
    first = run_ablation(tiny_cohort, report, settings, cache_dir=cache, shard=Shard(0, 2))
    second = run_ablation(tiny_cohort, report, settings, cache_dir=cache, shard=Shard(1, 2))
    # 3 runs on the ablated (mixed) cohort, which is also the mixed regime's; 3 on each of intra and inter
    assert first["runs_considered"] == second["runs_considered"] == 9
    assert first["counts"] == {"trained": 5, "cached": 0, "pending": 4, "failed": 0}
    assert second["counts"] == {"trained": 4, "cached": 5, "pending": 0, "failed": 0}
    trained = [{r["key"] for r in rec["runs"] if r["status"] == "trained"} for rec in (first, second)]
    assert not trained[0] & trained[1] and len(trained[0] | trained[1]) == 9
    pending = {r["key"]: r["reason"] for r in first["runs"] if r["status"] == "pending"}
    assert set(pending) == trained[1] and set(pending.values()) == {"shard 1/2 trains it"}
    assert json.loads((report / "shards" / "shard-1-of-2.json").read_text())["counts"] == second["counts"]
    assert not (report / "results.json").exists()  # a shard writes no report
    assert not list((cache / "cohorts").glob(".*.part"))  # each regime cohort generated whole, once

    merged = run_ablation(tiny_cohort, report, settings, cache_dir=cache)
    assert merged["timing"]["runs_trained"] == 0 and merged["timing"]["runs_cached"] == 3
    for regime in ("intra", "inter"):
        block = merged["regime_study"]["regimes"][regime]
        assert block["source"] == "generated for the regime study"
        assert all(block["variants"][v]["status"] != "failed" for v in ("i2m2", "intra", "inter"))
        assert block["train_seconds"] < 5  # reused from the shards, not trained again
    assert (report / "results.json").is_file()


@pytest.mark.slow
def test_jobs_run_the_shards_at_once_then_merge_into_the_report(
    tiny_cohort: Path, small_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "report"
    rc = main(["ablate", "--data", str(tiny_cohort), "--out", str(out), "--variants", "mag,tab", "--seeds", "2",
               "--epochs", "1", "--n-boot", "20", "--config", str(small_config), "--quick", "--no-regime-study",
               "--no-robustness", "--jobs", "2"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "2 shard processes started" in err and "shard 0/2 finished" in err and "shard 1/2 finished" in err
    for i in range(2):
        record = json.loads((out / "shards" / f"shard-{i}-of-2.json").read_text())
        assert record["counts"]["trained"] == 2 and record["counts"]["failed"] == 0
        assert "runs trained" in (out / "shards" / f"shard-{i}-of-2.log").read_text()
    results = json.loads((out / "results.json").read_text())
    assert results["timing"]["runs_trained"] == 0 and results["timing"]["runs_cached"] == 4
    assert (out / "report.html").is_file()
    assert "--jobs" in results["command"] and "--shard" not in results["command"]


def test_shard_options_are_checked_in_one_line(tiny_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for extra, expected in ((["--shard", "2/2"], "--shard: expected I/N"),
                            (["--shard", "0/2", "--jobs", "2"], "--jobs: runs shards itself; leave out --shard"),
                            (["--jobs", "0"], "--jobs: must be a positive integer")):
        assert main(["ablate", "--data", str(tiny_cohort), "--out", str(tmp_path / "r"), "--no-progress", *extra]) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], lines
