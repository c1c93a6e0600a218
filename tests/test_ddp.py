"""Distributed data parallel training through Lightning: 2 CPU processes (gloo) on the tiny
synthetic cohort, launched the way a user would (`i2m2-med train --devices 2 --strategy ddp`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from i2m2_med.config import load_config
from i2m2_med.data.cohort import load_cohort

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("joint_longer", [False, True])
def test_ddp_two_cpu_processes(tiny_cohort: Path, tmp_path: Path, joint_longer: bool) -> None:
    """joint_longer: a warm start whose joint model trains an epoch alone, when the other
    experts' parameters have no gradients (DDP must be told to expect that)."""
    config = tmp_path / "small.yaml"
    changes = {"training.warm_start": True, "training.warm_start_epochs": 1, "training.warm_start_joint_epochs": 2}
    config.write_text(load_config("cpu").with_updates(image_size=32, name="small", **(changes if joint_longer else {})).to_yaml())
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [
        sys.executable, "-m", "pipelines.cli", "train", "--data", str(tiny_cohort), "--out", str(run),
        "--variant", "i2m2", "--config", str(config), "--epochs", "1", "--batch-size", "6", "--n-boot", "20",
        "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu", "--no-progress",
    ]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    cohort = load_cohort(tiny_cohort)
    t = metrics["training"]
    assert t["world_size"] == 2 and t["strategy"] == "ddp" and t["epochs_run"] == (3 if joint_longer else 1)
    assert [s["epochs_run"] for s in t["stages"]] == ([2, 1] if joint_longer else [1])
    # the two processes shared one pass over the training slices per epoch (padded to equal halves)
    n_train = cohort.n_slices("train")
    assert n_train <= t["stages"][-1]["train_samples"] <= n_train + 1
    # validation AUROC during training saw every validation slice once (gathered across ranks)
    history = t["stages"][-1]["history"]
    assert len(history) == 1 and history[-1]["val_auroc_mean"] is not None
    assert metrics["val"]["combined"]["slice"]["n"] == cohort.n_slices("val")
    # only rank 0 printed the summary and wrote the run
    assert res.stdout.count("checkpoint:") == 1
    assert (run / "model.safetensors").is_file()
