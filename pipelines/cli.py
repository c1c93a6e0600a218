"""`i2m2-med`: the command line, a thin shell over the pipelines.

Each command parses its options and calls one function of a pipelines module; library errors
(:class:`i2m2_med.errors.I2M2Error`) become one line on stderr and a non-zero exit code.
``--debug`` (before the command) shows the full traceback instead.

Exit codes: 0 success; 1 usage error or a failure that stops the command; 2 partial failure
(documented per command, e.g. `diagnose` when some studies failed); 130 interrupted.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="I2M2 for knee MRI: synthesise, inspect, train, diagnose and ablate.",
    pretty_exceptions_enable=False,
)
_state = {"debug": False}


def _command(name: str):
    """``app.command(name)`` with the docstring's paragraphs reflowed: the help formatter keeps the
    source's line breaks, which would break each paragraph at the source's column."""
    import inspect

    def register(func):
        doc = inspect.cleandoc(func.__doc__ or "")
        text = "\n\n".join(" ".join(p.split()) for p in doc.split("\n\n"))
        return app.command(name, help=text)(func)

    return register


def _print_version(value: bool) -> None:
    if value:
        from i2m2_med import __version__

        print(f"i2m2-med {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version),
) -> None:
    _state["debug"] = debug


# ---- commands -------------------------------------------------------------------------------
# Each command imports its pipeline lazily so that `i2m2-med --help` stays fast.


@_command("synth")
def synth_cmd(
    out_dir: Path = typer.Argument(..., help="Folder to write the cohort into (created if missing)."),
    volumes: int = typer.Option(..., "--volumes", help="Number of volumes (h5 studies) to generate."),
    seed: int = typer.Option(..., "--seed", help="Seed: the same seed gives byte-identical k-space."),
    regime: str = typer.Option("mixed", "--regime", help="Where the evidence lives: mixed, intra or inter."),
    label_noise: float = typer.Option(0.0, "--label-noise", help="Fraction of slice labels flipped, in [0, 0.5)."),
    multicoil: bool = typer.Option(False, "--multicoil", help="Multicoil k-space (S, C, 640, W) with reconstruction_rss."),
    dicom: bool = typer.Option(False, "--dicom", help="Also write magnitude and phase DICOM series per study."),
    nifti: bool = typer.Option(False, "--nifti", help="Also write magnitude and phase NIfTI volumes per study."),
    workers: int = typer.Option(1, "--workers", help="Worker processes (the output does not depend on it)."),
    slices: Optional[int] = typer.Option(None, "--slices", help="Fixed slices per volume, 8-64 (default: 30-46, drawn)."),
    coils: int = typer.Option(15, "--coils", help="Coils with --multicoil."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Write a synthetic knee cohort in the fastMRI format (h5, fastMRI+ annotations, tabular, splits, manifest)."""
    from . import synthesize as pipeline

    raise typer.Exit(
        pipeline.run(
            out_dir, volumes=volumes, seed=seed, regime=regime, label_noise=label_noise, multicoil=multicoil,
            dicom=dicom, nifti=nifti, workers=workers, slices=slices, coils=coils, progress=progress,
        )
    )


@_command("inspect")
def inspect_cmd(
    path: Path = typer.Argument(..., help="A study (h5, DICOM file or folder, NIfTI) or a folder of studies."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table."),
    annotations: Optional[Path] = typer.Option(
        None, "--annotations", help="fastMRI+ knee.csv (labels per slice); knee_file_list.csv beside it is used too "
                                    "(default: a folder's annotations/knee.csv when present)."
    ),
    clinical: Optional[Path] = typer.Option(
        None, "--clinical", help="Clinical CSV joined by study id (age, sex, BMI, ...; default: a folder's tabular.csv when present)."
    ),
    keep_ids: bool = typer.Option(False, "--keep-ids", help="Show the readers' study and patient ids instead of their hashes."),
) -> None:
    """Summarise a study or a folder: format, slices, k-space shape, acquisition, tabular features, labels, what is missing."""
    from . import inspect as pipeline

    raise typer.Exit(pipeline.run(path, as_json=as_json, annotations=annotations, clinical=clinical, keep_ids=keep_ids))


@_command("diagnose")
def diagnose_cmd(
    input_dir: Path = typer.Argument(..., help="Folder (or file) of studies: fastMRI .h5, DICOM series, NIfTI, in any mix."),
    out: Path = typer.Option(..., "--out", help="Output folder: predictions.csv, studies/<id>.json, sr/<id>.dcm."),
    model: Optional[Path] = typer.Option(
        None, "--model", help="Checkpoint file or training run folder (default: the bundled demo model)."
    ),
    keep_ids: bool = typer.Option(False, "--keep-ids", help="Keep the readers' study ids and patient ids instead of sha256 hashes."),
    resume: bool = typer.Option(False, "--resume", help="Skip studies already done in OUT with the same model fingerprint."),
    workers: int = typer.Option(
        2, "--workers", min=0, help="Loading threads (read + transform) running ahead of the model, across studies; 0: load in the main thread."
    ),
    clinical: Optional[Path] = typer.Option(
        None, "--clinical", help="Clinical CSV joined by study id (age, sex, BMI, ...); default: INPUT/tabular.csv when present."
    ),
    no_clinical: bool = typer.Option(False, "--no-clinical", help="Use no clinical table, not even INPUT/tabular.csv."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Slices per forward pass (default: the model's training batch size)."),
    drop: list[str] = typer.Option(
        [], "--drop", help="Withhold a modality from the model (magnitude, phase, tabular); repeatable."
    ),
    devices: Optional[int] = typer.Option(
        None, "--devices", min=1, help="Processes / devices per node; >1 runs Lightning predict with DDP."
    ),
    num_nodes: int = typer.Option(1, "--num-nodes", min=1, help="Nodes for a multi-node DDP run."),
    strategy: str = typer.Option("ddp", "--strategy", help="Lightning strategy for --devices/--num-nodes (ddp, ddp_spawn, ...)."),
    accelerator: str = typer.Option("cpu", "--accelerator", help="Lightning accelerator for --devices (cpu, gpu, auto); gpu on a machine without one is refused."),
    device: str = typer.Option("auto", "--device", help="Where the model runs: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N; a GPU that is not there is refused."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar with ETA on stderr."),
    series: Optional[str] = typer.Option(
        None, "--series", help="Diagnose only this series: a SeriesInstanceUID, or a pattern of the series description "
                               "(default: every coronal PD / PD-FS knee series; the others are listed as skipped, with why)."
    ),
    review_threshold: Optional[float] = typer.Option(
        None, "--review-threshold", help="Flag for human review (review column: yes) the ok studies whose experts' disagreement "
                                         "(disagreement column: sd of the experts' study-level log-odds, mean over ACL/MTEAR/CART) "
                                         "is above this number >= 0; their status stays ok."
    ),
    memory_mb: Optional[int] = typer.Option(
        None, "--memory-mb", min=1, help="Memory budget of the run in MB (default: I2M2_MEMORY_MB or 4096): a slice that would "
                                         "take the run past it is refused before it is read (that study's row says why)."
    ),
) -> None:
    """Run a model over every study of a folder: per-study predictions, per-slice evidence, DICOM SR.

    Status of each row of predictions.csv: ok (diagnosed: probabilities in the row); skipped (a
    series of a knee exam the model does not read: localiser, derived, another plane or contrast,
    or not the one chosen with --series); out_of_scope (another body part by its tags, or images
    unlike the training data: distribution-shift score above its threshold; shift_score and
    shift_threshold say by how much; no probabilities reported); error (could not be read or run;
    the error column says why).

    Exit codes: 0 every study succeeded, was skipped or is out of scope (answers, not failures); 2
    some studies failed (error rows in predictions.csv say why, the others are complete); 1 usage
    error (bad path or option, corrupt or mismatched checkpoint, no study found); 130 interrupted
    (rerun with --resume to complete).
    """
    from . import diagnose as pipeline

    if clinical is not None and no_clinical:
        from i2m2_med.errors import UsageError

        raise UsageError("--no-clinical", "contradicts --clinical; give one of them")
    raise typer.Exit(
        pipeline.run(
            input_dir,
            out,
            model=model,
            keep_ids=keep_ids,
            resume=resume,
            workers=workers,
            clinical=clinical,
            batch_size=batch_size,
            drop_modalities=drop,
            devices=devices,
            num_nodes=num_nodes,
            strategy=strategy,
            accelerator=accelerator,
            progress=progress,
            debug=_state["debug"],
            auto_clinical=not no_clinical,
            series=series,
            review_threshold=review_threshold,
            memory_mb=memory_mb,
            device=device,
        )
    )


@_command("app")
def app_cmd(
    port: Optional[int] = typer.Option(None, "--port", min=1, max=65535, help="Port to serve on (default: Streamlit's, 8501)."),
    address: Optional[str] = typer.Option(
        None, "--address", help="Address to listen on (default: localhost only; change deliberately, e.g. behind an authenticating proxy)."
    ),
    device: Optional[str] = typer.Option(
        None, "--device", help="Where the model runs: auto (a CUDA GPU when there is one), cpu, cuda or cuda:N (default: I2M2_DEVICE, else auto)."
    ),
) -> None:
    """Start the evidence viewer (the same app as `streamlit run app/main.py` from a checkout) with its safe server settings. Its settings come from the environment: I2M2_DATA_ROOT, I2M2_MODEL, I2M2_CACHE_DIR, I2M2_DEVICE."""
    from . import app as pipeline

    raise typer.Exit(pipeline.run(port=port, address=address, device=device))


@_command("export")
def export_cmd(
    model: Optional[Path] = typer.Argument(
        None, help="Training run folder or checkpoint file (default: the bundled demo model)."
    ),
    fmt: str = typer.Option(..., "--format", help="onnx, torchscript or exported-program (torch.export, a .pt2 file)."),
    out: Path = typer.Option(..., "--out", help="File to write; a description FILE.json is written beside it."),
) -> None:
    """Export a model as an ONNX, TorchScript or ExportedProgram graph with plain tensor inputs (images, tabular vector, presence flags) and every expert's log-probabilities plus the combined ones as outputs; the file is checked against PyTorch before it is kept."""
    from . import export as pipeline

    raise typer.Exit(pipeline.run(model, fmt, out))


@_command("bundle")
def bundle_cmd(
    model: Optional[Path] = typer.Argument(
        None, help="Training run folder or checkpoint file (default: the bundled demo model)."
    ),
    out: Path = typer.Option(..., "--out", help="New folder for the bundle (configs/, models/, docs/)."),
) -> None:
    """Write a model as a MONAI Bundle: configs/metadata.json, configs/inference.json (which `python -m monai.bundle run` executes as diagnose over a folder of studies), models/ and docs/README.md (the model card)."""
    from . import bundle as pipeline

    raise typer.Exit(pipeline.run(model, out))


@_command("fit-shift")
def fit_shift_cmd(
    run: Path = typer.Argument(..., help="Training run folder (or its checkpoint file) to add the statistics to."),
    data: Path = typer.Option(..., "--data", help="The cohort the run was trained on (its splits: train fits, val sets the threshold)."),
    allow_other_data: bool = typer.Option(
        False, "--allow-other-data", help="Fit on a cohort whose data fingerprint is not the run's (refused by default)."
    ),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Slices per forward pass."),
) -> None:
    """Fit the distribution-shift statistics of an existing run (train does this itself) and write them into its checkpoint.

    Exit codes: 0 written; 1 bad run, cohort or option (nothing written).
    """
    from . import fit_shift as pipeline

    raise typer.Exit(pipeline.run(run, data, allow_other_data=allow_other_data, batch_size=batch_size))


@_command("train")
def train_cmd(
    data: Optional[Path] = typer.Option(None, "--data", help="Cohort folder: studies, annotations/knee.csv, optional tabular.csv and splits.csv."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder: model.safetensors, metrics.json, predictions.csv, config.yaml, logs/."),
    variant: str = typer.Option("i2m2", "--variant", help="mag, phase, tab, intra, inter, i2m2 or i2m2-notab."),
    config: str = typer.Option("cpu", "--config", help="cpu, paper, or a YAML config file."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Maximum epochs (default: the config's)."),
    seed: int = typer.Option(0, "--seed", help="Seed of weights, shuffling and everything random."),
    devices: int = typer.Option(1, "--devices", help="Devices (processes) per node; >1 needs --strategy ddp."),
    num_nodes: int = typer.Option(1, "--num-nodes", help="Nodes of a multi-node DDP run."),
    strategy: str = typer.Option("auto", "--strategy", help="Lightning strategy: auto, ddp, ddp_spawn, ..."),
    accelerator: str = typer.Option("auto", "--accelerator", help="Lightning accelerator: auto, cpu, gpu."),
    warm_start: Optional[bool] = typer.Option(
        None, "--warm-start/--no-warm-start", help="Train each expert alone first, then fine-tune the product (default: the config's)."
    ),
    labels: Optional[Path] = typer.Option(None, "--labels", help="fastMRI+ knee.csv (default: DATA/annotations/knee.csv)."),
    clinical: Optional[Path] = typer.Option(None, "--clinical", help="Clinical CSV (default: DATA/tabular.csv when present)."),
    splits: Optional[Path] = typer.Option(None, "--splits", help="Split CSV (default: DATA/splits.csv, else a sha256 split by subject)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Slices per batch (default: the config's)."),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", help="DataLoader workers (default: the config's)."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also log to TensorBoard in RUN/tensorboard/ (the tracking extra)."),
    mlflow: Optional[str] = typer.Option(
        None, "--mlflow", help="Also log to MLflow (the tracking extra): a server URL, a database URI or a local folder."
    ),
    mlflow_experiment: str = typer.Option("i2m2-med", "--mlflow-experiment", help="MLflow experiment name."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap replicates of the AUROC confidence intervals."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    bundle: Optional[Path] = typer.Option(
        None, "--bundle", help="Also write the trained model as a MONAI Bundle into this new folder (as `i2m2-med bundle`)."
    ),
    resume: Optional[Path] = typer.Option(
        None, "--resume", help="Continue the interrupted run in this folder from its last finished epoch, with the "
        "arguments it was started with (--devices, --strategy, --accelerator, --progress and --bundle may change).",
    ),
) -> None:
    """Train a variant on a cohort; write the checkpoint and metrics (slice- and study-level AUROC, per expert).

    After every epoch the run's resumable state is written to RUN/resume/ (safetensors, no
    pickle); `--resume RUN` continues an interrupted run to the result it would have reached."""
    from i2m2_med.errors import UsageError
    from . import train as pipeline

    for name, value in (("--epochs", epochs), ("--devices", devices), ("--num-nodes", num_nodes),
                        ("--batch-size", batch_size), ("--n-boot", n_boot)):
        if value is not None and value < 1:
            raise UsageError(name, f"must be a positive integer, got {value}")
    if resume is not None:
        # what the run learns comes from RUN/resume/: a different value here would be silently lost
        learning = {"--data": (data, None), "--variant": (variant, "i2m2"), "--config": (config, "cpu"),
                    "--epochs": (epochs, None), "--seed": (seed, 0), "--warm-start": (warm_start, None),
                    "--labels": (labels, None), "--clinical": (clinical, None), "--splits": (splits, None),
                    "--batch-size": (batch_size, None), "--num-workers": (num_workers, None),
                    "--tensorboard": (tensorboard, False), "--n-boot": (n_boot, 1000), "--mlflow": (mlflow, None),
                    "--mlflow-experiment": (mlflow_experiment, "i2m2-med")}
        for flag, (value, default) in learning.items():
            if value != default:
                raise UsageError("--resume", f"continues the run with the arguments it was started with; leave out {flag}")
        if out is not None and Path(out).resolve() != Path(resume).resolve():
            raise UsageError("--out", "--resume continues the run in its own folder; leave out --out")
        raise typer.Exit(pipeline.resume_run(resume, devices=devices, num_nodes=num_nodes, strategy=strategy,
                                             accelerator=accelerator, progress=progress, bundle=bundle))
    if data is None or out is None:
        raise UsageError("--data" if data is None else "--out", "missing; give --data DIR and --out RUN (or --resume RUN)")
    raise typer.Exit(
        pipeline.run(
            data, out, variant=variant, config=config, epochs=epochs, seed=seed, devices=devices,
            num_nodes=num_nodes, strategy=strategy, warm_start=warm_start, progress=progress, labels=labels,
            clinical=clinical, splits=splits, batch_size=batch_size, num_workers=num_workers, tensorboard=tensorboard,
            accelerator=accelerator, n_boot=n_boot, bundle=bundle, mlflow=mlflow, mlflow_experiment=mlflow_experiment,
        )
    )


@_command("ablate")
def ablate_cmd(
    data: Path = typer.Option(..., "--data", help="Cohort folder (as for train): studies, annotations/knee.csv, optional tabular.csv, splits.csv, manifest.json."),
    out: Path = typer.Option(..., "--out", help="Report folder: report.html (self-contained), results.json, tables/*.csv, runs/ (the cache)."),
    variants: Optional[list[str]] = typer.Option(
        None, "--variants", help="Variants to compare (repeatable or comma-separated; default: mag, phase, tab, intra, inter, i2m2, i2m2-notab)."
    ),
    seeds: Optional[int] = typer.Option(None, "--seeds", min=1, help="Seeds per variant (default 3; 1 with --quick)."),
    config: str = typer.Option("cpu", "--config", help="cpu, paper, or a YAML config file."),
    quick: bool = typer.Option(False, "--quick", help="Short ablation: 1 seed, fewer epochs, smaller bootstrap and regime cohorts."),
    regime_study: Optional[bool] = typer.Option(
        None, "--regime-study/--no-regime-study", help="Run the intra/inter/mixed regime study (default: when the data is a synthetic cohort)."
    ),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Maximum epochs per run (default: the ablation's preset)."),
    n_boot: Optional[int] = typer.Option(None, "--n-boot", min=1, help="Bootstrap replicates of CIs and paired tests (default 1000; 200 with --quick)."),
    robustness: bool = typer.Option(True, "--robustness/--no-robustness", help="Missing-modality, undersampling and noise study."),
    regime_volumes: Optional[int] = typer.Option(None, "--regime-volumes", min=3, help="Volumes of each regime-study cohort."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Cache folder of training runs and regime cohorts (default: OUT)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Print progress lines on stderr."),
    cv: Optional[int] = typer.Option(
        None, "--cv", help="K-fold cross-validation by subject for a cohort too small for a held-out test: every study tested once "
                           "(no robustness study; a cohort too small for K folds is refused)."
    ),
    claim_study: bool = typer.Option(
        False, "--claim-study/--no-claim-study", help="Also run the paper's claim at scale on synthetic cohorts: i2m2, intra and inter "
                                                      "over three seeds per regime, tested on held-out cohorts, with a learning curve "
                                                      "(about two hours on 2 cores; minutes with --quick)."
    ),
    shard: Optional[str] = typer.Option(
        None, "--shard", help="I/N: train only shard I of N's runs into the cache (N scheduler jobs sharing --cache), no report; "
                              "the same command without --shard merges them into the report."
    ),
    jobs: int = typer.Option(1, "--jobs", help="Train as this many shard processes at once on this machine, then merge."),
) -> None:
    """Train every variant over the seeds and write the clinical ablation report (CIs, paired tests, calibration, robustness, regimes).

    Exit codes: 0 report written (failed variants, empty splits and heads without positives are
    shown in it with their reasons); 1 nothing could be done (bad folder, config or option);
    130 interrupted (rerun the same command: finished runs are reused).
    """
    from . import ablation as pipeline

    raise typer.Exit(
        pipeline.run(
            data, out, variants=variants, seeds=seeds, config=config, quick=quick, regime_study=regime_study,
            epochs=epochs, n_boot=n_boot, robustness=robustness, cache=cache, regime_volumes=regime_volumes,
            progress=progress, argv=["i2m2-med", *_state.get("argv", sys.argv[1:])], cv=cv,
            claim_study=claim_study, shard=shard, jobs=jobs,
        )
    )


def _demo_defaults() -> dict[str, int]:
    from .demo import (  # a light module: no torch at import
        DEMO_SEED,
        DEMO_VOLUMES,
    )

    return {"volumes": DEMO_VOLUMES, "seed": DEMO_SEED}


@_command("demo")
def demo_cmd(
    out: Optional[Path] = typer.Option(None, "--out", help="Working folder for the cohort and the run (default: ./demo_out)."),
    volumes: Optional[int] = typer.Option(
        None, "--volumes", help=f"Volumes of the synthetic demo cohort (default: {_demo_defaults()['volumes']})."
    ),
    seed: int = typer.Option(_demo_defaults()["seed"], "--seed", help="Seed of the cohort and of the training."),
    bundle: bool = typer.Option(True, "--bundle/--no-bundle", help="Write the model into the package (i2m2_med/assets/demo_model)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Synthesise the demo cohort, train i2m2 with the demo recipe (demo.yaml) and bundle it as the default model."""
    from . import demo as pipeline

    raise typer.Exit(
        pipeline.run(
            out, volumes=pipeline.DEMO_VOLUMES if volumes is None else volumes, seed=seed, progress=progress,
            bundle_model=bundle,
        )
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    from i2m2_med.errors import I2M2Error

    args = list(sys.argv[1:] if argv is None else argv)
    _state["argv"] = args
    debug = "--debug" in args
    try:
        result = app(args=args, standalone_mode=False)
        return int(result or 0)
    except I2M2Error as exc:
        if debug:
            raise
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except typer.Exit as exc:
        return int(exc.exit_code)
    except SystemExit as exc:  # click's own usage errors, already printed
        return int(exc.code or 0)
    except Exception as exc:  # click usage errors raised in non-standalone mode
        import click

        # typer >= 0.29 raises its own vendored click's exceptions (typer._click), not click's
        vendored = type(exc).__module__.startswith("typer.") and callable(getattr(exc, "show", None))
        if isinstance(exc, click.exceptions.ClickException) or vendored:
            exc.show()
            return 1
        if isinstance(exc, click.exceptions.Abort) or type(exc).__name__ == "Abort":
            print("aborted", file=sys.stderr)
            return 130
        raise


if __name__ == "__main__":
    sys.exit(main())
