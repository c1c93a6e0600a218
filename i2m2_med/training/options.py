"""What a training run is asked for beyond its data and config: the Lightning Trainer's options
(:class:`TrainerOptions`) and the command line's overrides of the config (:func:`resolve_config`).

A light module (no Lightning import), so the command line and the ablation can build both
without paying for Lightning.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

from i2m2_med.config import Config, load_config

split_log = logging.getLogger("i2m2_med.training")
"""Where training reports what the user should know before it starts (the split check); without
a handler, Python prints warnings to stderr."""

ACCELERATORS: tuple[str, ...] = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")


@dataclass(frozen=True)
class TrainerOptions:
    """How Lightning runs a fit; none of it changes what a single-process run learns.

    Attributes:
        accelerator: Lightning's (one of :data:`ACCELERATORS`).
        devices: devices (processes) per node, or ``"auto"``.
        num_nodes: nodes of a multi-node run.
        strategy: Lightning's (``"ddp"`` for several devices: one process per device, launched by
            re-running the command).
        progress: a progress bar (Lightning's rich bar, on stderr when it is a terminal:
            :func:`i2m2_med.progress.bars_wanted`) and Lightning's informational logs.
        tensorboard: also log to ``RUN_DIR/tensorboard/`` (needs tensorboard installed); the
            CSV logs in ``RUN_DIR/logs/`` are always written.
        mlflow: also log to MLflow (needs the ``tracking`` extra): a tracking server's URL
            (``http://host:5000``), a database URI (``sqlite:///mlflow.db``, needs the full
            ``mlflow`` package), or a local folder (MLflow's file store). One MLflow run per
            training: the stages' metrics prefixed ``warm_start-`` / ``product-``, then the run's
            parameters, its test figures and ``metrics.json``.
        mlflow_experiment: the MLflow experiment's name.
        on_epoch: called as ``on_epoch(stage, epoch, max_epochs, record)`` after every epoch
            (``stage``: ``warm_start`` or ``product``; ``record``: that epoch's training loss and
            validation figures), e.g. for a line per epoch where bars do not fit (``ablate``).
        limit_train_batches: Lightning's, to shorten epochs (smoke tests, quick checks).
    """

    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    progress: bool = True
    tensorboard: bool = False
    mlflow: str | None = None
    mlflow_experiment: str = "i2m2-med"
    on_epoch: Callable[[str, int, int, dict], None] | None = None
    limit_train_batches: int | float | None = None


def resolve_config(config: str | os.PathLike | Config, epochs: int | None, seed: int, warm_start: bool | None) -> Config:
    """The config with the command line's epochs, seed and warm-start applied (and re-validated)."""
    cfg = config if isinstance(config, Config) else load_config(config)
    updates: dict[str, Any] = {"training.seed": int(seed)}
    if epochs is not None:
        updates["training.max_epochs"] = int(epochs)
    if warm_start is not None:
        updates["training.warm_start"] = bool(warm_start)
    return cfg.with_updates(**updates)
