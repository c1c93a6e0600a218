""":func:`train`, the library entry point of training: one variant on one cohort -> a run folder.

Warm start (``warm_start=True``, the paper's AV-MNIST recipe): first every expert of the variant
is trained alone (the ``experts`` objective of :mod:`.module`) for
``training.warm_start_epochs`` epochs, the joint model for ``training.warm_start_joint_epochs``
when that is set (:func:`warm_start_plan`: the other experts then stop while it trains on); then
the product is fine-tuned end to end from those weights with a fresh optimiser (learning rates
times ``training.finetune_lr_scale``) and early stopping.

After fitting, rank 0 refits the product's prior on the validation slices
(``training.calibration: prior``, :mod:`i2m2_med.metrics.calibration`: class-weighted training
leaves the product with the probabilities of a balanced cohort; one log-odds offset per head
restores the cohort's prevalence without changing any slice-level ranking), then evaluates the
best weights on the validation and test splits (:mod:`.results`), fits the distribution-shift
statistics (:func:`i2m2_med.inference.shift.fit_shift`: the training slices' image features, the
threshold on the validation studies) and writes
``RUN_DIR/model.safetensors`` (through :mod:`i2m2_med.checkpoint`), ``RUN_DIR/metrics.json``,
``RUN_DIR/predictions.csv`` and ``RUN_DIR/config.yaml``; Lightning's CSV logs go to
``RUN_DIR/logs/``.

Scale-out: :class:`~.options.TrainerOptions` (``devices``, ``num_nodes``, ``strategy``,
``accelerator``, ...) go to the Lightning Trainer. ``ddp`` (one process per device, launched by
re-running the command) is the recommended multi-device strategy.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint, RichProgressBar
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.strategies import StrategyRegistry

from i2m2_med.atomic import json_safe, write_json, write_text
from i2m2_med.checkpoint import save_checkpoint
from i2m2_med.config import Config
from i2m2_med.data.cache import TensorCache
from i2m2_med.data.cohort import Cohort, data_fingerprint
from i2m2_med.data.dataset import SliceDataset
from i2m2_med.errors import UsageError
from i2m2_med.heads import HEADS
from i2m2_med.inference.shift import fit_shift
from i2m2_med.metrics.aggregation import aggregation_rule
from i2m2_med.metrics.calibration import calibration_errors, fit_prior_offset
from i2m2_med.models import I2M2Model, build_model, variant_experts
from i2m2_med.progress import bars_wanted
from i2m2_med.training.datamodule import I2M2DataModule
from i2m2_med.training.module import I2M2Module
from i2m2_med.training.options import (
    ACCELERATORS,
    TrainerOptions,
    resolve_config,
    split_log,
)
from i2m2_med.training.results import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    METRICS_NAME,
    PREDICTIONS_NAME,
    TrainResult,
    _checkpoint_metrics,
    _write_predictions,
    ceilings_from_manifest,
    label_noise_ceiling_mean,
    learnable_ceiling_mean,
    position_prior_of,
    predict_dataset,
    prediction_metrics,
    study_calibration_of,
    study_operating_points,
)
from i2m2_med.training.resume import (
    SafetensorsCheckpointIO,
    check_resume_data,
    clear_resume_state,
    finish_resume_state,
    resume_dir,
    stage_path,
    write_resume_args,
)
from i2m2_med.training.tracking import log_result, stage_logger, tracked_run

__all__ = ["ACCELERATORS", "TrainResult", "TrainerOptions", "resolve_config", "train"]



def _check_args(epochs: int | None, seed: int, options: TrainerOptions) -> None:
    devices = options.devices
    if epochs is not None and (isinstance(epochs, bool) or int(epochs) < 1):
        raise UsageError("--epochs", f"must be a positive integer, got {epochs}")
    if isinstance(devices, str):
        if devices != "auto":
            raise UsageError("--devices", f"must be a positive integer or 'auto', got {devices!r}")
    elif int(devices) < 1:
        raise UsageError("--devices", f"must be a positive integer, got {devices}")
    if int(options.num_nodes) < 1:
        raise UsageError("--num-nodes", f"must be a positive integer, got {options.num_nodes}")
    if int(seed) < 0:
        raise UsageError("--seed", f"must be a non-negative integer, got {seed}")
    if options.accelerator not in ACCELERATORS:
        raise UsageError("--accelerator", f"unknown accelerator {options.accelerator!r}; expected one of {', '.join(ACCELERATORS)}")
    strategy = options.strategy
    if strategy != "auto" and strategy not in StrategyRegistry.available_strategies():
        known = ", ".join(["auto", "ddp", "ddp_spawn", "ddp_fork", "fsdp", "deepspeed"])
        raise UsageError("--strategy", f"unknown strategy {strategy!r}; e.g. {known}")


def _strategy(name: str, idle_experts: bool) -> str:
    """The Lightning strategy of a stage: a ``ddp`` family strategy finds unused parameters when
    some experts sit out epochs (they have no gradients then); any other name as given."""
    if idle_experts and name in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook"):
        return f"{name}_find_unused_parameters_true"
    return name


def _precision(config: Config) -> str:
    """The config's precision on a GPU; full precision on a CPU (mixed precision is a GPU feature here)."""
    return config.training.precision if torch.cuda.is_available() else "32-true"


@contextlib.contextmanager
def _quiet_lightning(progress: bool) -> Iterator[None]:
    """Silence Lightning's informational logs and advice warnings around a fit (the caller
    decides what the user sees; errors still propagate), and restore torch's deterministic-
    algorithms setting afterwards (the Trainer turns it on for the whole process)."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    names = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING if progress else logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*number of training batches.*")
            warnings.filterwarnings("ignore", message=r".*log_every_n_steps.*")
            warnings.filterwarnings("ignore", message=r".*GPU available but not used.*")
            warnings.filterwarnings("ignore", message=r".*Checkpoint directory.*")
            warnings.filterwarnings("ignore", message=r".*Experiment logs directory.*")
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


class _ProgressBar(RichProgressBar):
    """Lightning's rich bar without the logger's version number (a stage name here, not news)."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class _EpochReport(Callback):
    """Calls ``on_epoch(stage, epoch, max_epochs, record)`` after each finished epoch (``record``:
    the module's history entry of that epoch: losses and validation figures)."""

    def __init__(self, on_epoch: Any, stage: str, max_epochs: int):
        self.on_epoch, self.stage, self.max_epochs = on_epoch, stage, int(max_epochs)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        history = getattr(pl_module, "history", None) or [{}]
        if trainer.global_rank == 0:
            self.on_epoch(self.stage, int(trainer.current_epoch), self.max_epochs, history[-1])


def _trainer(
    out_dir: Path,
    config: Config,
    options: TrainerOptions,
    *,
    stage: str,
    max_epochs: int,
    early_stopping: bool,
    n_train_batches: int,
    idle_experts: bool = False,
) -> pl.Trainer:
    """The Lightning Trainer of one fitting stage (``stage`` names its log folders).
    ``idle_experts``: some experts sit out some epochs, so a ``ddp`` strategy must look for
    parameters without gradients (:func:`warm_start_plan`)."""
    loggers: list[Any] = [
        CSVLogger(str(out_dir), name="logs", version=stage, flush_logs_every_n_steps=max(1, n_train_batches))
    ]
    if options.tensorboard:
        try:
            # optional: tensorboard may not be installed, which only --tensorboard needs to know
            from pytorch_lightning.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(str(out_dir), name="tensorboard", version=stage))
        except ModuleNotFoundError as exc:
            raise UsageError("--tensorboard", f"TensorBoard is not installed ({exc.name}); "
                                              "pip install 'i2m2-med[tracking]'") from None
    if options.mlflow:
        loggers.append(stage_logger(out_dir, options, stage, run_name=out_dir.name))
    # the stage's resumable state after every epoch (:mod:`.resume`), overwritten in place
    checkpoint = ModelCheckpoint(dirpath=str(resume_dir(out_dir)), filename=stage, monitor=None, save_top_k=1,
                                 every_n_epochs=1, save_on_train_epoch_end=True, enable_version_counter=False)
    checkpoint.FILE_EXTENSION = stage_path(out_dir, stage).suffix
    callbacks: list[Any] = [checkpoint]
    if early_stopping:
        es = config.training.early_stopping
        callbacks.append(EarlyStopping(monitor=es.monitor, mode=es.mode, patience=es.patience, check_finite=True))
    bars = bars_wanted(options.progress)
    if bars:
        callbacks.append(_ProgressBar(refresh_rate=max(1, n_train_batches // 20), console_kwargs={"file": sys.stderr}))
    if options.on_epoch is not None:
        callbacks.append(_EpochReport(options.on_epoch, stage, max_epochs))
    return pl.Trainer(
        accelerator=options.accelerator,
        devices=options.devices,
        num_nodes=options.num_nodes,
        strategy=_strategy(options.strategy, idle_experts),
        max_epochs=max_epochs,
        precision=_precision(config),
        logger=loggers,
        callbacks=callbacks,
        enable_checkpointing=True,
        plugins=[SafetensorsCheckpointIO()],
        enable_progress_bar=bars,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, n_train_batches)),
        gradient_clip_val=config.optim.gradient_clip_val,
        deterministic=True if not torch.cuda.is_available() else "warn",
        default_root_dir=str(out_dir),
        limit_train_batches=options.limit_train_batches,
    )


def warm_start_plan(cfg: Config, experts: tuple[str, ...] | list[str]) -> tuple[int, dict[str, int] | None]:
    """``(epochs of the warm-start stage, per-expert epochs or None when all train them all)``:
    ``training.warm_start_epochs`` for every expert, ``training.warm_start_joint_epochs`` (when
    set) for the joint model; the stage lasts as long as its longest expert."""
    base = int(cfg.training.warm_start_epochs)
    joint = cfg.training.warm_start_joint_epochs
    if joint is None or "joint" not in experts or int(joint) == base:
        return base, None
    per = {name: base for name in experts}
    per["joint"] = int(joint)
    return max(per.values()), per


def train(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    variant: str = "i2m2",
    config: str | os.PathLike | Config = "cpu",
    options: TrainerOptions | None = None,
    *,
    epochs: int | None = None,
    seed: int = 0,
    warm_start: bool | None = None,
    n_boot: int = 1000,
    extra: Mapping[str, Any] | None = None,
    labels: str | os.PathLike | None = None,
    clinical: str | os.PathLike | None = None,
    splits: str | os.PathLike | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    cache_size: int | None = None,
    cohort: Cohort | None = None,
    datasets: Mapping[str, SliceDataset] | None = None,
    report_split: bool = True,
    resume: bool = False,
) -> TrainResult | None:
    """Train ``variant`` on the cohort under ``data_dir``; write the run to ``out_dir``.

    Args:
        data_dir: folder of studies with ``annotations/knee.csv`` (or ``labels``), optionally
            ``tabular.csv``, ``splits.csv`` and ``manifest.json`` (see :mod:`i2m2_med.data.dataset`).
        out_dir: run folder: ``model.safetensors``, ``metrics.json``, ``predictions.csv``,
            ``config.yaml``, ``logs/``.
        variant: ``mag``, ``phase``, ``tab``, ``intra``, ``inter``, ``i2m2``, ``i2m2-notab``.
        config: ``"cpu"``, ``"paper"``, a YAML path or a Config.
        options: how Lightning runs the fit: accelerator, devices, nodes, strategy, progress bars,
            logging (:class:`~.options.TrainerOptions`; its defaults when None).
        epochs: overrides ``training.max_epochs``; seed: ``seed_everything`` and the shuffle.
        warm_start: train the experts alone first, then the product (None: the config's choice).
        n_boot: bootstrap replicates of the confidence intervals.
        extra: JSON-able values written under ``extra`` in ``metrics.json``.
        labels, clinical, splits: label, clinical and split files other than ``data_dir``'s own.
        batch_size, num_workers, cache_size: override the config's.
        cohort: an already loaded cohort (then ``data_dir`` only names it).
        datasets: already built :class:`~i2m2_med.data.dataset.SliceDataset` of ``cohort`` by split
            name (same ``image_size``), used instead of new ones -- with their caches, so runs that
            share them (an ablation grid) transform each slice once.
        report_split: log the cohort's split problems before training (a caller that trains
            many runs on one cohort reports them once itself).
        resume: continue from the resumable state in ``out_dir/resume/`` (:mod:`.resume`; the
            same arguments as the interrupted call, see :func:`~.resume.resume_arguments`);
            without it any such state is discarded and training starts from the beginning.

    Returns the :class:`~.results.TrainResult` (its ``metrics`` exactly as written to
    ``metrics.json``) on the global rank 0 process; None on the other ranks of a multi-process
    run (only rank 0 evaluates and writes).

    Raises UsageError / ConfigError for bad arguments (one line), and the data layer's errors for
    unreadable data.
    """
    options = options if options is not None else TrainerOptions()
    _check_args(epochs, seed, options)
    variant_experts(variant)
    cfg = resolve_config(config, epochs, seed, warm_start)
    config_label = config if isinstance(config, str) else (str(config) if not isinstance(config, Config) else cfg.name)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(out, "the run folder is a file")
    data_dir = Path(data_dir)
    tensor_cache = TensorCache.of_cohort(data_dir, cfg.image_size) if cfg.training.tensor_cache else None

    pl.seed_everything(int(seed), workers=True, verbose=False)
    dm = I2M2DataModule(
        cfg,
        cohort=cohort,
        data_dir=data_dir,
        seed=seed,
        batch_size=batch_size,
        num_workers=num_workers,
        cache_size=cache_size,
        labels=labels,
        clinical=clinical,
        splits=splits,
        datasets=datasets,
        tensor_cache=tensor_cache,
    )
    split_problems = dm.cohort.split_problems()
    for problem in split_problems if report_split else ():  # in the first seconds, before any training
        split_log.warning("split check: %s", problem)
    fingerprint = data_fingerprint(dm.cohort)
    if resume:
        config_label = check_resume_data(out, fingerprint).get("config_label") or config_label
    else:
        clear_resume_state(out)
        write_resume_args(out, data_dir=data_dir, variant=variant, config=cfg, config_label=config_label, seed=seed,
                          options=options, n_boot=n_boot, extra=extra, labels=labels, clinical=clinical, splits=splits,
                          batch_size=batch_size, num_workers=num_workers, cache_size=cache_size,
                          data_fingerprint=fingerprint)
    val_in_view = dm.in_view_of("val")
    model = build_model(variant, cfg, dm.n_tabular)
    if model.prior is not None and cfg.training.class_weighting == "none":
        model.prior.set_frequencies(torch.as_tensor(dm.train_positive_fraction, dtype=torch.float32))
    n_train_batches = max(1, math.ceil(dm.epoch_slices / dm.batch_size))
    out.mkdir(parents=True, exist_ok=True)

    def resume_from(stage: str) -> str | None:
        path = stage_path(out, stage)
        return str(path) if resume and path.is_file() else None

    stages: list[dict[str, Any]] = []
    resumed_stages: list[str] = []
    with _quiet_lightning(options.progress):
        if cfg.training.warm_start:
            ws_epochs, expert_epochs = warm_start_plan(cfg, model.expert_names)
            module = I2M2Module(model, cfg, dm.class_weights, objective="experts", max_epochs=ws_epochs,
                                expert_epochs=expert_epochs)
            trainer = _trainer(out, cfg, options, stage="warm_start", max_epochs=ws_epochs, early_stopping=False,
                               n_train_batches=n_train_batches, idle_experts=expert_epochs is not None)
            dm.new_stage()
            ckpt = resume_from("warm_start")
            trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
            resumed_stages += ["warm_start"] if ckpt else []
            stages.append(_stage_record("experts", module, trainer))
            model = module.model
        module = I2M2Module(model, cfg, dm.class_weights, objective="product",
                            lr_scale=cfg.training.finetune_lr_scale if cfg.training.warm_start else 1.0,
                            val_in_view=val_in_view)
        trainer = _trainer(out, cfg, options, stage="product", max_epochs=cfg.training.max_epochs, early_stopping=True,
                           n_train_batches=n_train_batches)
        dm.new_stage()
        ckpt = resume_from("product")
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
        resumed_stages += ["product"] if ckpt else []
        stages.append(_stage_record("product", module, trainer))
    fit_seconds = sum(s["seconds"] for s in stages)  # a resumed stage counts its time before the resume
    fit_cpu_seconds = sum(s["cpu_seconds"] for s in stages)  # likewise
    model = module.model

    if trainer.global_rank != 0:
        return None

    device = torch.device("cuda") if (torch.cuda.is_available() and options.accelerator != "cpu") else torch.device("cpu")
    model = model.to(device).eval()
    eval_batch = max(dm.batch_size, 64)
    calibration = _refit_prior(model, cfg, dm, eval_batch, device)
    splits_out: dict[str, Any] = {}
    predictions: dict[str, Any] = {}
    position_prior = position_prior_of(dm.datasets["train"]) if len(dm.datasets["train"]) else None
    n_slices = {s.study_id: s.n_slices for s in dm.cohort.studies}
    for split in ("val", "test"):
        ds = dm.datasets[split]
        if len(ds) == 0:
            splits_out[split] = None
            continue
        predictions[split] = predict_dataset(model, ds, batch_size=eval_batch, num_workers=0, device=device)
    study_map, calibration["study"] = study_calibration_of(predictions.get("val"), cfg.training.aggregation)
    if study_map is not None and cfg.training.calibration == "prior":
        model.set_study_calibration(study_map)
    operating = study_operating_points(predictions.get("val"), cfg.training.aggregation, model.study_calibration_map())
    for split, pred in predictions.items():
        splits_out[split] = prediction_metrics(
            pred, split, cfg.training.aggregation, n_boot=n_boot, seed=seed, in_view=dm.cohort.in_view,
            subjects=dm.cohort.subjects, position_prior=position_prior, n_slices=n_slices,
            study_calibration=study_map,
        )
    shift = fit_shift(model, dm.datasets["train"], dm.datasets["val"], batch_size=eval_batch, device=device)
    model = model.cpu()
    if calibration.get("offsets") is not None:
        offsets = [calibration["offsets"][h] for h in HEADS]
        calibration["ece_slice"] = {
            split: calibration_errors(pred["log_odds"], pred["labels"], offsets) for split, pred in predictions.items()
        }

    train_slices = sum(s["train_samples"] for s in stages)
    train_seconds = sum(s["train_seconds"] for s in stages)
    ceilings = ceilings_from_manifest(dm.cohort.manifest)
    test_summary = (splits_out.get("test") or {}).get("summary", {}).get("combined") or {}

    metrics: dict[str, Any] = {
        "variant": variant,
        "experts": list(model.expert_names),
        "config": config_label,
        "seed": int(seed),
        "data_dir": str(data_dir),
        "data_fingerprint": fingerprint,
        "cohort": dm.cohort.summary(),
        "split_problems": split_problems,
        "heads": list(HEADS),
        "aggregation": {"name": cfg.training.aggregation, "rule": aggregation_rule(cfg.training.aggregation)[0],
                        "k": aggregation_rule(cfg.training.aggregation)[1]},
        "score": "p(y=1) of each head (combined: the normalised product; experts: their own softmax)",
        "ceilings": ceilings,
        "label_noise_ceiling_mean": label_noise_ceiling_mean(ceilings),
        "learnable_ceiling_mean": learnable_ceiling_mean(ceilings),
        "test_mean_pathologies": {
            "slice": (test_summary.get("slice") or {}).get("mean_pathologies"),
            "study": (test_summary.get("study") or {}).get("mean_pathologies"),
            "in_view": (test_summary.get("in_view") or {}).get("mean_pathologies"),
        },
        "training": {
            "warm_start": bool(cfg.training.warm_start),
            "stages": stages,
            "epochs_run": sum(s["epochs_run"] for s in stages),
            "best_epoch": stages[-1]["best_epoch"],
            "best_val_auroc_mean": stages[-1]["best_val_auroc_mean"],
            "time_s": fit_seconds,
            "resumed_stages": resumed_stages,
            "mlflow": tracked_run(out, options),
            "cpu_time_s": fit_cpu_seconds,
            "cpu_time_note": "CPU seconds (all threads) of fitting, a resumed stage's before its resume included: on a busy "
            "machine, cpu_time_s / cores estimates the wall time an idle machine would take",
            "train_time_s": train_seconds,
            "train_slices": train_slices,
            "samples_per_s": (train_slices / train_seconds) if train_seconds > 0 else None,
            "world_size": int(trainer.world_size),
            "devices": options.devices,
            "num_nodes": int(options.num_nodes),
            "strategy": options.strategy,
            "accelerator": type(trainer.accelerator).__name__,
            "precision": _precision(cfg),
            "batch_size": dm.batch_size,
            "class_weighting": cfg.training.class_weighting,
            "class_weights": None if dm.class_weights is None else dm.class_weights.tolist(),
            "torch_threads": torch.get_num_threads(),
        },
        "inference": {
            split: {"slices": int(len(p["study_id"])), "seconds": p["seconds"], "slices_per_s": p["slices_per_s"],
                    "note": "reading + transforms + forward, batch %d, %s" % (eval_batch, device.type)}
            for split, p in predictions.items()
        },
        "calibration": calibration,
        "operating_points": operating,
        "shift": shift,
        "position_prior": None if position_prior is None else {
            "bins": int(position_prior.shape[0]),
            "rates": position_prior.tolist(),
            "note": "per bin of relative slice position (k + 0.5) / S and head, the training split's "
            "positive rate: the position-only baseline",
        },
        "val": splits_out.get("val"),
        "test": splits_out.get("test"),
    }
    if extra:
        metrics["extra"] = dict(extra)
    save_checkpoint(
        out / CHECKPOINT_NAME,
        model,
        cfg,
        variant,
        dm.n_tabular,
        dm.cohort.tabular_names,
        metrics=_checkpoint_metrics(metrics),
        data_fingerprint=metrics["data_fingerprint"],
        extra={"seed": int(seed), "epochs_run": metrics["training"]["epochs_run"], "data_dir": str(data_dir),
               "warm_start": bool(cfg.training.warm_start)},
    )
    metrics["checkpoint"] = str(out / CHECKPOINT_NAME)
    write_text(out / CONFIG_NAME, cfg.to_yaml())
    _write_predictions(out / PREDICTIONS_NAME, predictions)
    metrics = json_safe(metrics)
    write_json(out / METRICS_NAME, metrics)
    log_result(out, options, metrics)
    finish_resume_state(out)
    return TrainResult.from_metrics(out, metrics)


def _refit_prior(model: I2M2Model, cfg: Config, dm: I2M2DataModule, batch_size: int, device: torch.device) -> dict[str, Any]:
    """``training.calibration: prior``: fit the prior offset of the trained product on the
    validation slices (:func:`i2m2_med.metrics.calibration.fit_prior_offset`) and set it on ``model``.
    Returns the JSON-ready record for ``metrics.json`` (offsets None when nothing was fitted)."""
    record: dict[str, Any] = {"method": cfg.training.calibration, "fitted_on": None, "offsets": None}
    if cfg.training.calibration == "none":
        record["note"] = "the product as trained (training.calibration: none)"
        return record
    ds = dm.datasets["val"]
    if len(ds) == 0:
        record["note"] = "not fitted: the validation split is empty"
        return record
    pred = predict_dataset(model, ds, batch_size=batch_size, num_workers=0, device=device)
    offsets, report = fit_prior_offset(pred["log_odds"], pred["labels"])
    record.update(report)
    if not any(report["per_head"][h]["fitted"] for h in HEADS):
        record["note"] = "not fitted: no head has both classes on the validation slices"
        return record
    model.set_prior_offset(torch.from_numpy(offsets))
    record.update(
        fitted_on="val",
        offsets={h: float(offsets[i]) for i, h in enumerate(HEADS)},
        note="one log-odds offset per head added to the product's prior term, fitted by maximum likelihood "
        "on the validation slices with every expert frozen; slice-level AUROC is unchanged. The validation "
        "figures after the fit are in-sample for the offset; test is the honest check.",
    )
    return record


def _stage_record(objective: str, module: I2M2Module, trainer: pl.Trainer) -> dict[str, Any]:
    cb = trainer.callback_metrics
    best = module.best_score if module.best_epoch is not None else (float(cb["best_val_auroc_mean"]) if "best_val_auroc_mean" in cb else None)
    best_epoch = module.best_epoch if module.best_epoch is not None else (int(cb["best_epoch"]) if "best_epoch" in cb else None)
    return {
        "objective": objective,
        "epochs_run": int(trainer.current_epoch),
        "best_epoch": best_epoch,
        "best_val_auroc_mean": best,
        "stopped_early": bool(trainer.should_stop) and int(trainer.current_epoch) < int(trainer.max_epochs or 0),
        "seconds": module.fit_seconds,
        "cpu_seconds": module.fit_cpu_seconds,
        "train_seconds": module.train_seconds,
        "val_seconds": module.val_seconds,
        "train_samples": int(module.train_samples) * int(trainer.world_size),
        "history": module.history,
    }
