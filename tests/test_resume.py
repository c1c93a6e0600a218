"""Training that survives an interruption: the resumable state's file format (tensors and tagged
JSON, never pickle), an interrupted run continued to the uninterrupted run's exact result, a
process killed mid-training and resumed from the command line, and one-line refusals."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from i2m2_med.checkpoint import read_checkpoint_meta
from i2m2_med.config import load_config
from i2m2_med.errors import CheckpointError, UsageError
from i2m2_med.training.fit import TrainerOptions, train
from i2m2_med.training.module import I2M2Module
from i2m2_med.training.resume import (
    load_state,
    resume_arguments,
    save_state,
    stage_path,
)
from pipelines.cli import main

REPO = Path(__file__).resolve().parents[1]
CFG = load_config("cpu").with_updates(
    image_size=32, **{"training.warm_start": True, "training.warm_start_epochs": 2, "training.early_stopping.patience": 2}
)
KW = {"variant": "i2m2", "config": CFG, "seed": 3, "epochs": 5, "n_boot": 20, "batch_size": 8}
"""Early stopping ends the product stage after its epoch 2 (patience 2, no gain after epoch 0): a
run resumed after epoch 1 must carry the patience already spent."""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- the file format -----------------------------------------------------------------------------


def test_state_round_trip_keeps_types_values_and_tensors(tmp_path: Path) -> None:
    state = {
        "epoch": 3,
        "loops": {"fit": {"progress": {"completed": 2, "ready": 2}}, "flag": True, "none": None},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.randn(3, 2)}},
                              "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}]}],
        "best_score": -math.inf,
        "ratio": float("nan"),
        "rng": torch.Generator().manual_seed(5).get_state(),
        "key": np.arange(4, dtype=np.int64),
        "path": Path("a/b"),
    }
    path = tmp_path / "s.safetensors"
    save_state(path, state)
    back = load_state(path)
    group = back["optimizer_states"][0]
    assert back["epoch"] == 3 and back["loops"] == state["loops"]
    assert list(group["state"]) == [0] and group["param_groups"][0]["betas"] == (0.9, 0.999)
    assert torch.equal(group["state"][0]["exp_avg"], state["optimizer_states"][0]["state"][0]["exp_avg"])
    assert group["state"][0]["step"].item() == 7.0 and group["state"][0]["step"].shape == ()
    assert back["best_score"] == -math.inf and math.isnan(back["ratio"])
    assert torch.equal(back["rng"], state["rng"]) and back["rng"].dtype == torch.uint8
    assert np.array_equal(back["key"], state["key"]) and back["path"] == "a/b"


def test_state_refuses_a_value_that_would_need_pickle(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"state\['hook'\].*set"):
        save_state(tmp_path / "s.safetensors", {"hook": {1, 2}})
    assert not (tmp_path / "s.safetensors").exists()


def test_state_loads_without_unpickling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.safetensors"
    save_state(path, {"w": torch.ones(2), "n": 1})

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling was attempted")

    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert load_state(path)["n"] == 1


def test_a_file_that_is_not_a_resumable_state_is_one_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="unreadable resumable state"):
        load_state(junk)
    model = REPO / "i2m2_med" / "assets" / "demo_model" / "model.safetensors"
    if model.is_file():
        with pytest.raises(CheckpointError, match="not a resumable training state"):
            load_state(model)


# ---- an interrupted run, continued ---------------------------------------------------------------


def _history(result) -> list:
    return [(h["objective"], h["epoch"], h["train_loss"], h["val_selection"])
            for s in result.metrics["training"]["stages"] for h in s["history"]]


def _same_result(a, b, run_a: Path, run_b: Path) -> None:
    assert read_checkpoint_meta(run_b / "model.safetensors").weights_sha256 == \
        read_checkpoint_meta(run_a / "model.safetensors").weights_sha256
    assert _history(b) == _history(a)
    for key in ("epochs_run", "best_epoch", "best_val_auroc_mean", "train_slices"):
        assert b.metrics["training"][key] == a.metrics["training"][key], key
    assert b.metrics["test"]["summary"] == a.metrics["test"]["summary"]
    assert (run_b / "predictions.csv").read_bytes() == (run_a / "predictions.csv").read_bytes()


def _preempted_run(cohort: Path, run: Path, monkeypatch: pytest.MonkeyPatch, stop: tuple[str, int] | None) -> None:
    """Train into ``run`` and stop it with an error at the end of epoch ``stop`` = (objective,
    epoch) -- before that epoch's resumable state is written -- or after the first epoch (None)."""
    original = I2M2Module.on_train_epoch_end

    def preempted(self) -> None:
        original(self)
        if stop is None or (self.objective, int(self.current_epoch)) == stop:
            raise RuntimeError("preempted")

    monkeypatch.setattr(I2M2Module, "on_train_epoch_end", preempted)
    try:
        with pytest.raises(RuntimeError, match="preempted"):
            train(cohort, run, options=TrainerOptions(progress=False), **KW)
    finally:
        monkeypatch.setattr(I2M2Module, "on_train_epoch_end", original)


@pytest.fixture(scope="module")
def uninterrupted(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory):
    with torch.inference_mode(False):
        torch.set_num_threads(1)
        run = tmp_path_factory.mktemp("uninterrupted") / "run"
        result = train(tiny_cohort, run, options=TrainerOptions(progress=False), **KW)
    return run, result


@pytest.mark.parametrize("stop", [("experts", 0), ("product", 0), ("product", 2)])
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(
    stop, tiny_cohort: Path, tmp_path: Path, uninterrupted, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_a, result_a = uninterrupted
    assert not (run_a / "resume").exists()  # a finished run keeps no resumable state
    assert [s["epochs_run"] for s in result_a.metrics["training"]["stages"]] == [2, 3]  # stopped early
    run = tmp_path / "run"
    _preempted_run(tiny_cohort, run, monkeypatch, stop)
    assert not (run / "metrics.json").exists()
    written = {p.name for p in (run / "resume").iterdir()}
    assert {"args.json", "config.yaml"} <= written
    assert ("warm_start.safetensors" in written) == (stop != ("experts", 0))
    cpu_before = 0.0
    if stop == ("product", 2):
        state = load_state(stage_path(run, "product"))
        assert state["epoch"] == 1 and len(state["i2m2"]["history"]) == 2  # the last finished epoch
        cpu_before = state["i2m2"]["fit_cpu_seconds"] + load_state(stage_path(run, "warm_start"))["i2m2"]["fit_cpu_seconds"]
        assert cpu_before > 0

    args = resume_arguments(run)
    options = TrainerOptions(**args.pop("options"))
    result_b = train(args.pop("data_dir"), args.pop("out_dir"), options=options, **args)
    _same_result(result_a, result_b, run_a, run)
    assert result_b.metrics["training"]["cpu_time_s"] >= cpu_before  # the time before the resume counts
    resumed = result_b.metrics["training"]["resumed_stages"]
    assert resumed == {("experts", 0): [], ("product", 0): ["warm_start"], ("product", 2): ["warm_start", "product"]}[stop]
    assert not (run / "resume").exists()


def test_a_grid_run_that_was_interrupted_continues_where_it_stopped(
    tiny_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ablation's train_or_reuse resumes a run of its key from the last finished epoch, to
    the weights of a run that was never interrupted."""
    from i2m2_med.ablation.runs import train_or_reuse
    from i2m2_med.data.cohort import data_fingerprint, load_cohort

    cfg = CFG.with_updates(**{"training.max_epochs": 5, "training.batch_size": 8, "training.seed": 3})
    fp = data_fingerprint(load_cohort(tiny_cohort))
    whole = train_or_reuse(tiny_cohort, tmp_path / "a", "i2m2", 3, cfg, fp, train_n_boot=20)
    assert whole.status == "trained"

    original = I2M2Module.on_train_epoch_end

    def preempted(self) -> None:
        original(self)
        if (self.objective, int(self.current_epoch)) == ("product", 2):
            raise RuntimeError("preempted")

    monkeypatch.setattr(I2M2Module, "on_train_epoch_end", preempted)
    failed = train_or_reuse(tiny_cohort, tmp_path / "b", "i2m2", 3, cfg, fp, train_n_boot=20)
    monkeypatch.setattr(I2M2Module, "on_train_epoch_end", original)
    assert failed.status == "failed" and "preempted" in failed.reason
    said: list[str] = []
    resumed = train_or_reuse(tiny_cohort, tmp_path / "b", "i2m2", 3, cfg, fp, train_n_boot=20, progress=said.append)
    assert resumed.status == "trained" and said[0] == "resuming i2m2 (seed 3)"
    run_a, run_b = Path(whole.run_dir), Path(resumed.run_dir)
    metrics = json.loads((run_b / "metrics.json").read_text())
    assert metrics["training"]["resumed_stages"] == ["warm_start", "product"]
    assert read_checkpoint_meta(run_b / "model.safetensors").weights_sha256 == \
        read_checkpoint_meta(run_a / "model.safetensors").weights_sha256
    assert not (run_b / "error.txt").exists() and not (run_b / "resume").exists()
    again = train_or_reuse(tiny_cohort, tmp_path / "b", "i2m2", 3, cfg, fp, train_n_boot=20)
    assert again.status == "cached"


def test_a_fresh_run_in_the_same_folder_discards_the_old_state(
    tiny_cohort: Path, tmp_path: Path, uninterrupted, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_a, result_a = uninterrupted
    run = tmp_path / "run"
    _preempted_run(tiny_cohort, run, monkeypatch, ("product", 1))
    result = train(tiny_cohort, run, options=TrainerOptions(progress=False), **KW)  # no resume: from the start
    assert result.metrics["training"]["resumed_stages"] == []
    _same_result(result_a, result, run_a, run)


def test_resume_refuses_a_changed_cohort_a_finished_run_and_a_foreign_folder(
    tiny_cohort: Path, tmp_path: Path, uninterrupted, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_a, _ = uninterrupted
    with pytest.raises(UsageError, match="this run is complete; there is nothing to resume"):
        resume_arguments(run_a)
    with pytest.raises(UsageError, match="no resumable training here"):
        resume_arguments(tmp_path)
    cohort = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, cohort)
    run = tmp_path / "run"
    _preempted_run(cohort, run, monkeypatch, None)
    knee = cohort / "annotations" / "knee.csv"
    lines = knee.read_text().splitlines()
    knee.write_text("\n".join(lines[:-1]) + "\n")  # one finding fewer: not the cohort the run began on
    args = resume_arguments(run)
    options = TrainerOptions(**args.pop("options"))
    with pytest.raises(UsageError, match="the cohort changed since this run started"):
        train(args.pop("data_dir"), args.pop("out_dir"), options=options, **args)


# ---- the command line: a process killed mid-training, then `train --resume RUN` ------------------


def _cli_args(cohort: Path, run: Path, config: Path) -> list[str]:
    return ["train", "--data", str(cohort), "--out", str(run), "--variant", "intra", "--config", str(config),
            "--epochs", "12", "--seed", "4", "--batch-size", "8", "--n-boot", "20", "--no-progress"]


@pytest.mark.slow
def test_a_killed_training_process_resumes_from_the_command_line(
    tiny_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = tmp_path / "patient.yaml"  # early stopping out of the way: the run must outlive the kill
    config.write_text(load_config("cpu").with_updates(image_size=32, **{"training.early_stopping.patience": 12,
                                                                         "training.warm_start": False}).to_yaml())
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    assert main(_cli_args(tiny_cohort, run_a, config)) == 0

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # as this process: the same arithmetic
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from pipelines.cli import main; sys.exit(main(sys.argv[1:]))",
                             *_cli_args(tiny_cohort, run_b, config)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    product = stage_path(run_b, "product")
    deadline = time.monotonic() + 300
    try:
        while not product.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be interrupted"
        proc.send_signal(signal.SIGKILL)  # a preempted node: no clean-up of any kind
    finally:
        proc.wait(timeout=60)
    assert not (run_b / "metrics.json").exists()
    capsys.readouterr()

    assert main(["train", "--resume", str(run_b), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resumed: the product stage continued from the last finished epoch" in out
    a = json.loads((run_a / "metrics.json").read_text())
    b = json.loads((run_b / "metrics.json").read_text())
    assert b["training"]["resumed_stages"] == ["product"]
    assert b["config"] == a["config"] == str(config)
    assert read_checkpoint_meta(run_b / "model.safetensors").weights_sha256 == \
        read_checkpoint_meta(run_a / "model.safetensors").weights_sha256
    assert b["training"]["stages"][0]["history"] == a["training"]["stages"][0]["history"]
    assert b["test"]["summary"] == a["test"]["summary"]
    assert not (run_b / "resume").exists()


def test_resume_from_the_command_line_refuses_other_arguments_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for argv, expected in [
        (["train", "--resume", str(tmp_path), "--variant", "mag"], "--resume: continues the run with the arguments it was started with; leave out --variant"),
        (["train", "--resume", str(tmp_path), "--seed", "9"], "leave out --seed"),
        (["train", "--resume", str(tmp_path), "--out", str(tmp_path / "x")], "--out: --resume continues the run in its own folder"),
        (["train", "--resume", str(tmp_path)], "no resumable training here"),
        (["train", "--out", str(tmp_path / "x")], "--data: missing; give --data DIR and --out RUN (or --resume RUN)"),
    ]:
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
