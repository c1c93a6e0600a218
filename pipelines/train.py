"""`i2m2-med train --data DIR --out RUN_DIR`: train one variant and report its AUROCs.

A thin shell over :func:`i2m2_med.training.fit.train`: it trains, writes ``RUN_DIR/model.safetensors``,
``metrics.json``, ``predictions.csv``, ``config.yaml`` and ``logs/``, then prints a table of the
validation and test AUROCs (combined and per expert; slice and study level) and where the files
are. In a multi-process run (``--devices N --strategy ddp``) only rank 0 prints.

``--resume RUN`` (:func:`resume_run`) continues an interrupted run from its last finished epoch
(:mod:`i2m2_med.training.resume`) and then prints the same summary.

Exit codes: 0 success; 1 bad arguments or unreadable data (one line on stderr).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

from i2m2_med.errors import UsageError
from i2m2_med.heads import HEADS
from i2m2_med.training.options import TrainerOptions


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


LEVELS = ("in_view", "study", "slice")
"""Primary first: the in-view AUROC (findings against their mimics) and the study level; the
slice level, which the slice position alone mostly explains, last."""


def summary_table(metrics: Mapping[str, Any], title: str | None = None) -> Any:
    """A rich Table of AUROC per split, model (combined, each expert and the position-only
    baseline) and level (in view, study, slice): ``mean3`` over ACL/MTEAR/CART, ``mean4`` over all
    heads, then each head."""
    from rich.table import Table

    table = Table(
        title=title or f"{metrics.get('variant')}: AUROC of p(y=1)",
        caption="in view: findings against their mimics (synthetic cohorts); position only: the training "
        "positive rate at the slice's relative position. mean3: ACL/MTEAR/CART; mean4: all four heads; "
        "-: undefined (one class only)",
    )
    for col in ("split", "level", "model"):
        table.add_column(col, no_wrap=True)
    for col in ("mean3", "mean4", *HEADS):
        table.add_column(col, justify="right", no_wrap=True)
    for split in ("val", "test"):
        block = metrics.get(split) or {}
        summary = block.get("summary") or {}
        for level in LEVELS:
            for name, levels in summary.items():
                row = (levels or {}).get(level)
                if row is None:
                    continue
                table.add_row(
                    split, level.replace("_", " "), "position only" if name == "position_baseline" else name,
                    _fmt(row.get("mean_pathologies")), _fmt(row.get("mean_all")), *(_fmt(row.get(h)) for h in HEADS),
                )
    return table


def calibration_line(cal: Mapping[str, Any]) -> str:
    """One line on the prior refitted after training: the offsets and the test calibration error
    (slice level, mean over the heads) before and after."""
    offsets = cal.get("offsets")
    if not offsets:
        return f"prior not refitted: {cal.get('note') or 'training.calibration is none'}"
    test = (cal.get("ece_slice") or {}).get("test") or {}
    rows = [r for r in test.values() if r]
    text = "prior refitted on validation, log-odds offsets " + ", ".join(f"{h} {v:+.2f}" for h, v in offsets.items())
    if rows:
        before = sum(r["before"] for r in rows) / len(rows)
        after = sum(r["after"] for r in rows) / len(rows)
        text += f"; test calibration error (slice ECE, mean of {len(rows)} heads) {before:.3f} -> {after:.3f}"
    return text


def print_summary(metrics: Mapping[str, Any], out_dir: Path) -> None:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=110)
    console.print(summary_table(metrics))
    t = metrics.get("training", {})
    sps = t.get("samples_per_s")
    line = f"epochs {t.get('epochs_run')} (best {t.get('best_epoch')}, val mean4 AUROC {_fmt(t.get('best_val_auroc_mean'))})"
    if sps:
        line += f", {t.get('time_s', 0):.1f} s, {sps:.1f} training slices/s"
    console.print(line)
    if t.get("resumed_stages"):
        stages = " and ".join(s.replace("_", " ") for s in t["resumed_stages"])
        console.print(f"resumed: the {stages} stage{'s' if len(t['resumed_stages']) > 1 else ''} continued from the last finished epoch")
    learnable = metrics.get("learnable_ceiling_mean")
    noise = metrics.get("label_noise_ceiling_mean")
    if learnable is not None or noise is not None:
        test = metrics.get("test_mean_pathologies") or {}
        console.print(
            f"this model on test (mean3): in view {_fmt(test.get('in_view'))}, study {_fmt(test.get('study'))}, "
            f"slice {_fmt(test.get('slice'))}; learnable ceiling (slice evidence the images show, mean3) "
            f"{_fmt(learnable)}; label-noise ceiling (mean3) {_fmt(noise)}", soft_wrap=True,
        )
    console.print(calibration_line(metrics.get("calibration") or {}), soft_wrap=True)
    console.print(f"checkpoint: {out_dir / 'model.safetensors'}", soft_wrap=True)
    console.print(f"metrics:    {out_dir / 'metrics.json'}", soft_wrap=True)
    tracked = (metrics.get("training") or {}).get("mlflow")
    if tracked:
        console.print(f"MLflow:     run {tracked['run_id']} in experiment {tracked['experiment']!r}", soft_wrap=True)


def _check_bundle(bundle: Path | None) -> None:
    """A ``--bundle`` folder is checked before any training (one line when it cannot be written)."""
    if bundle is not None:
        from i2m2_med.inference.bundle import check_bundle_folder

        check_bundle_folder(bundle)


def _report(result: Any, out: Path, bundle: Path | None) -> int:
    """Print the summary and write the ``--bundle`` folder; only rank 0 of a multi-process run
    has a ``result`` (it alone evaluates)."""
    if result is not None:
        print_summary(result.metrics, out)
        if bundle is not None:
            from i2m2_med.inference.bundle import write_bundle

            print(f"MONAI Bundle: {write_bundle(out, bundle)}")
        sys.stdout.flush()
    return 0


def run(
    data: Path,
    out: Path,
    variant: str = "i2m2",
    config: str = "cpu",
    epochs: int | None = None,
    seed: int = 0,
    devices: int = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    warm_start: bool | None = None,
    progress: bool = True,
    labels: Path | None = None,
    clinical: Path | None = None,
    splits: Path | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    tensorboard: bool = False,
    accelerator: str = "auto",
    n_boot: int = 1000,
    bundle: Path | None = None,
    mlflow: str | None = None,
    mlflow_experiment: str = "i2m2-med",
) -> int:
    """Train and print the summary; returns the exit code (errors propagate to the CLI).
    ``bundle``: a new folder for the trained model as a MONAI Bundle (checked before training)."""
    if not Path(data).is_dir():
        raise UsageError(data, "no such data folder")
    _check_bundle(bundle)
    # Lightning loads with this import (seconds): only once the data folder is known to exist
    from i2m2_med.training.fit import train

    options = TrainerOptions(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        progress=progress,
        tensorboard=tensorboard,
        mlflow=mlflow,
        mlflow_experiment=mlflow_experiment,
    )
    result = train(
        data,
        out,
        variant=variant,
        config=config,
        options=options,
        epochs=epochs,
        seed=seed,
        warm_start=warm_start,
        labels=labels,
        clinical=clinical,
        splits=splits,
        batch_size=batch_size,
        num_workers=num_workers,
        n_boot=n_boot,
    )
    return _report(result, Path(out), bundle)


def resume_run(
    run_dir: Path,
    *,
    devices: int = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    accelerator: str = "auto",
    progress: bool = True,
    bundle: Path | None = None,
) -> int:
    """Continue the interrupted run in ``run_dir`` with its own arguments; how it runs (devices,
    nodes, strategy, accelerator) follows the run's unless given here (non-default)."""
    from i2m2_med.training.resume import resume_arguments

    args = resume_arguments(run_dir)  # one line when there is nothing to resume, before Lightning loads
    _check_bundle(bundle)
    from i2m2_med.training.fit import train

    stored = args.pop("options")
    given = {"devices": devices, "num_nodes": num_nodes, "strategy": strategy, "accelerator": accelerator}
    defaults = {"devices": 1, "num_nodes": 1, "strategy": "auto", "accelerator": "auto"}
    stored.update({k: v for k, v in given.items() if v != defaults[k]})
    stored["progress"] = progress
    options = TrainerOptions(**{k: v for k, v in stored.items() if k in TrainerOptions.__dataclass_fields__})
    data_dir, out = args.pop("data_dir"), Path(args.pop("out_dir"))
    if not Path(data_dir).is_dir():
        raise UsageError(data_dir, "the run's data folder is gone; resume needs the same cohort")
    result = train(data_dir, out, options=options, **args)
    return _report(result, out, bundle)
