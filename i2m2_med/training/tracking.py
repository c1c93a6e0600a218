"""MLflow tracking of a training run (``train --mlflow URI``), beside the CSV logs it always writes.

One MLflow run per training: Lightning's :class:`~pytorch_lightning.loggers.MLFlowLogger` logs
each stage's per-epoch metrics under the stage's prefix (``warm_start-train_loss``,
``product-val_in_view_auroc_mean``, ...), both stages into the same MLflow run; when training
ends, :func:`log_result` adds the run's parameters (variant, config, seed, the data fingerprint;
never a path), its test figures beside the position-only baseline, and ``metrics.json`` as an
artifact. A resumed run (:mod:`.resume`) continues the same MLflow run: its id is kept in
``RUN/resume/mlflow_run_id``.

``URI`` is a tracking server's URL, a database URI, or a local folder. MLflow keeps its local
folder store in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``; a folder named here is the
user's explicit choice of that store, so the variable is set for this process when it is unset.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from i2m2_med.atomic import write_text
from i2m2_med.errors import UsageError
from i2m2_med.training.resume import resume_dir

RUN_ID_NAME = "mlflow_run_id"


def _id_file(run_dir: Path) -> Path:
    return resume_dir(run_dir) / RUN_ID_NAME


def tracking_uri(uri: str) -> str:
    """A tracking URI as MLflow takes it: URLs and database URIs as given, a folder as ``file:``."""
    if "://" in uri or uri.startswith(("file:", "sqlite:", "postgresql:", "mysql:", "databricks")):
        return uri
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return Path(uri).expanduser().resolve().as_uri()


def _mlflow() -> Any:
    try:
        import mlflow
        from pytorch_lightning.loggers import MLFlowLogger  # noqa: F401
    except ModuleNotFoundError as exc:
        raise UsageError("--mlflow", f"MLflow is not installed ({exc.name}); pip install 'i2m2-med[tracking]'") from None
    return mlflow


def stage_logger(run_dir: Path, options: Any, stage: str, run_name: str) -> Any:
    """The MLflow logger of one stage, in the training's MLflow run (created by the first stage,
    or the one a resumed run started). UsageError when MLflow is missing or the store refuses."""
    _mlflow()
    from pytorch_lightning.loggers import MLFlowLogger

    id_file = _id_file(run_dir)
    run_id = id_file.read_text(encoding="utf-8").strip() if id_file.is_file() else None
    uri = tracking_uri(options.mlflow)
    try:
        logger = MLFlowLogger(experiment_name=options.mlflow_experiment, tracking_uri=uri, run_name=run_name,
                              run_id=run_id or None, prefix=stage)
        new_id = logger.run_id  # creates the experiment and the run now, not at the first metric
    except Exception as exc:  # noqa: BLE001 -- MLflow's errors are many; the user needs the one line
        raise UsageError("--mlflow", f"MLflow refused {uri}: {str(exc).splitlines()[0][:300]}") from None
    if new_id != run_id:
        write_text(id_file, new_id + "\n")
    return logger


def tracked_run(run_dir: Path, options: Any) -> dict[str, str] | None:
    """``{"experiment", "run_id"}`` of the training's MLflow run, None when it is not tracked."""
    id_file = _id_file(run_dir)
    if not options.mlflow or not id_file.is_file():
        return None
    return {"experiment": options.mlflow_experiment, "run_id": id_file.read_text(encoding="utf-8").strip()}


def log_result(run_dir: Path, options: Any, metrics: Mapping[str, Any]) -> str | None:
    """After training: the run's parameters, test figures and ``metrics.json`` into its MLflow run
    (``metrics["training"]["mlflow"]``, :func:`tracked_run`). Returns the MLflow run id (None when
    the run was not tracked)."""
    training = metrics.get("training") or {}
    tracked = training.get("mlflow")
    if not options.mlflow or not tracked:
        return None
    run_id = str(tracked["run_id"])
    client = _mlflow().tracking.MlflowClient(tracking_uri(options.mlflow))
    params = {
        "variant": metrics.get("variant"),
        "config": Path(str(metrics.get("config"))).name,
        "seed": metrics.get("seed"),
        "data_fingerprint": str(metrics.get("data_fingerprint"))[:12],
        "warm_start": training.get("warm_start"),
        "class_weighting": training.get("class_weighting"),
        "batch_size": training.get("batch_size"),
    }
    for key, value in params.items():
        client.log_param(run_id, key, str(value))
    figures: dict[str, Any] = {
        "epochs_run": training.get("epochs_run"),
        "best_epoch": training.get("best_epoch"),
        "best_val_selection": training.get("best_val_auroc_mean"),
    }
    summary = ((metrics.get("test") or {}).get("summary") or {})
    for model, name in (("combined", "test"), ("position_baseline", "test_position_only")):
        for level in ("in_view", "study", "slice"):
            row = (summary.get(model) or {}).get(level) or {}
            figures[f"{name}_{level}_auroc_mean3"] = row.get("mean_pathologies")
    for key, value in figures.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            client.log_metric(run_id, key, float(value))
    metrics_file = Path(run_dir) / "metrics.json"
    if metrics_file.is_file():
        client.log_artifact(run_id, str(metrics_file))
    client.set_terminated(run_id, "FINISHED")
    return run_id
