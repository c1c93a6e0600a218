"""Experiment tracking from `i2m2-med train`: MLflow (a local store, read back with MLflow's own
client) and TensorBoard event files, beside the CSV logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")
mlflow = pytest.importorskip("mlflow", reason="the tracking extra is not installed")


def test_train_logs_epochs_parameters_and_test_figures_to_mlflow_and_tensorboard(
    tiny_cohort: Path, small_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store, run = tmp_path / "mlruns", tmp_path / "run"
    assert main(["train", "--data", str(tiny_cohort), "--out", str(run), "--variant", "intra", "--config",
                 str(small_config), "--epochs", "2", "--seed", "1", "--batch-size", "16", "--n-boot", "20",
                 "--no-progress", "--warm-start", "--mlflow", str(store), "--mlflow-experiment", "knee-test",
                 "--tensorboard"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    tracked = metrics["training"]["mlflow"]
    assert tracked["experiment"] == "knee-test" and f"MLflow:     run {tracked['run_id']}" in out

    client = mlflow.tracking.MlflowClient(store.resolve().as_uri())
    experiment = client.get_experiment_by_name("knee-test")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [tracked["run_id"]]  # both stages in one MLflow run
    mlrun = runs[0]
    assert mlrun.info.status == "FINISHED"
    params = mlrun.data.params
    assert params["variant"] == "intra" and params["seed"] == "1" and params["config"] == small_config.name
    assert params["data_fingerprint"] == metrics["data_fingerprint"][:12]
    assert not any(str(tiny_cohort) in v or str(tmp_path) in v for v in params.values())  # no paths
    stages = {s["objective"]: s for s in metrics["training"]["stages"]}
    product = client.get_metric_history(mlrun.info.run_id, "product-val_auroc_mean")
    assert len(product) == stages["product"]["epochs_run"] == len(stages["product"]["history"])
    assert [round(m.value, 6) for m in product] == [round(h["val_auroc_mean"], 6) for h in stages["product"]["history"]]
    assert len(client.get_metric_history(mlrun.info.run_id, "warm_start-val_auroc_mean")) == stages["experts"]["epochs_run"]
    figures = mlrun.data.metrics
    in_view = metrics["test"]["summary"]["combined"]["in_view"]["mean_pathologies"]
    if in_view is not None:
        assert figures["test_in_view_auroc_mean3"] == pytest.approx(in_view)
    assert figures["epochs_run"] == metrics["training"]["epochs_run"]
    assert "metrics.json" in [a.path for a in client.list_artifacts(mlrun.info.run_id)]

    events = list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert {e.parent.name for e in events} == {"warm_start", "product"}
    assert not (run / "resume").exists()


def test_an_unreachable_mlflow_store_is_one_line(tiny_cohort: Path, small_config: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc = main(["train", "--data", str(tiny_cohort), "--out", str(tmp_path / "run"), "--config", str(small_config),
               "--epochs", "1", "--no-progress", "--mlflow", str(blocker / "mlruns")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: --mlflow: MLflow refused file:"), err
