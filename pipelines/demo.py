"""`i2m2-med demo`: build the embedded default model from nothing.

1. synthesise the demo cohort (900 volumes of about 600 subjects, mixed regime: half the
   evidence needs magnitude *and* phase together, half shows in either alone) under
   ``OUT/cohort``, straight into its tensor cache (``OUT/cohort/.i2m2_cache``): each volume's
   64 px images are cached as soon as it is written and its k-space (about 65 MB) is dropped, so
   the cohort costs about 1.1 GB of disk, not 58 GB;
2. train the ``i2m2`` variant on it (``OUT/run``) with the shipped ``demo`` config as it is
   (``i2m2_med/config/demo.yaml``: the ``cpu`` architecture with the warm start, draws that favour
   the slices of findings and their mimics, the best epoch chosen on the validation in-view AUROC,
   and the prior and the study-level map refitted on validation);
3. bundle the model into the package, ``i2m2_med/assets/demo_model/``: ``model.safetensors``,
   ``metrics.json`` and ``command.txt`` (the command that reproduces it) -- the model that
   ``diagnose`` and the app use when the user names none.

Exit codes: 0 success; 1 bad arguments or a failure (one line on stderr).
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

DEMO_VOLUMES = 900
"""Volumes of the demo cohort (598 subjects at seed 0). With the demo recipe, 900 volumes did
better on validation than 400 (BENCHMARKS.md, held-out section); the demo then takes about
21 minutes on 2 cores, synthesis included."""
DEMO_SEED = 0
DEMO_REGIME = "mixed"
DEMO_VARIANT = "i2m2"
DEMO_CONFIG = "demo"
"""The shipped config that is the bundled model's recipe (chosen on the validation split, see the
module docstring)."""
DEMO_SYNTH_WORKERS = 2
"""Processes synthesising the cohort (the cohort does not depend on it)."""


def _cohort_matches(cohort_dir: Path, volumes: int, seed: int) -> bool:
    """True when ``cohort_dir`` already holds the demo cohort of these parameters, written by this
    generator version (a rerun reuses it instead of synthesising it again)."""
    from i2m2_med.synth import GENERATOR_VERSION

    manifest = cohort_dir / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        got = (
            data["counts"]["volumes"], data["seed"], data["regime"], data["label_noise"], data["generator_version"],
            data.get("multicoil"),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False
    cached = {s.study_id for s in _tensor_cache(cohort_dir).cached_studies()}
    return got == (volumes, seed, DEMO_REGIME, 0.0, GENERATOR_VERSION, False) and cached == set(data.get("study_ids", []))


def _tensor_cache(cohort_dir: Path):  # -> TensorCache (imported on use: MONAI takes seconds)
    """The demo cohort's tensor cache at the demo config's image size."""
    from i2m2_med.config import load_config
    from i2m2_med.data.cache import TensorCache

    return TensorCache.of_cohort(cohort_dir, load_config(DEMO_CONFIG).image_size)


def command_line(volumes: int, seed: int) -> str:
    return f"i2m2-med demo --volumes {volumes} --seed {seed}"


def _portable(value: Any, out: Path) -> Any:
    """``value`` (JSON-like) with every path string under the folder ``out`` rewritten relative to
    its parent (``/home/me/demo_out/cohort`` -> ``demo_out/cohort``)."""
    if isinstance(value, dict):
        return {k: _portable(v, out) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v, out) for v in value]
    if isinstance(value, str):
        root = str(out.resolve())
        if value == root or value.startswith(root + os.sep):
            return str(Path(out.name) / Path(value).relative_to(root))
    return value


def bundle(run_dir: Path, volumes: int, seed: int, target: Path | None = None) -> Path:
    """Write a demo run's checkpoint and metrics into the package (atomically, file by file) and
    ``command.txt``; returns the bundle folder. Paths of the build machine (the demo's output
    folder) are written relative to that folder's parent, e.g. ``demo_out/cohort``: the shipped
    files name no folder of the machine that built them. The weights, and so the fingerprint,
    are those of the run."""
    import i2m2_med
    from i2m2_med.atomic import write_json, write_text
    from i2m2_med.checkpoint import load_checkpoint, save_checkpoint
    from i2m2_med.errors import UsageError

    target = Path(target) if target is not None else i2m2_med.DEMO_MODEL_DIR
    out = run_dir.parent
    try:
        target.mkdir(parents=True, exist_ok=True)
        model, meta = load_checkpoint(run_dir / "model.safetensors")
        save_checkpoint(
            target / "model.safetensors", model, meta.config, meta.variant, meta.n_tabular, meta.tabular_names,
            _portable(meta.metrics, out), meta.data_fingerprint, extra=_portable(meta.extra, out),
        )
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        write_json(target / "metrics.json", _portable(metrics, out))
        for name in ("model.safetensors", "metrics.json"):
            (target / name).chmod(0o644)
        note = (
            f"The bundled demo model was produced by this command: the {DEMO_VARIANT} variant trained with the shipped "
            f"{DEMO_CONFIG} config (i2m2_med/config/{DEMO_CONFIG}.yaml) on the {DEMO_REGIME}-regime synthetic cohort of "
            f"{volumes} volumes, seed {seed}, that the command synthesises. Training is deterministic on one machine; on "
            "a CPU with other vector instructions the floating-point rounding differs and training carries it on, so "
            "the weights and AUROCs of a rebuild there differ from these."
        )
        text = textwrap.fill(note, 96, initial_indent="# ", subsequent_indent="# ") + f"\n{command_line(volumes, seed)}\n"
        write_text(target / "command.txt", text)
        (target / "command.txt").chmod(0o644)
    except PermissionError as exc:
        raise UsageError(target, f"cannot write the bundled model here ({exc.strerror}); use --no-bundle") from None
    return target


def ensure_cohort(cohort_dir: Path, volumes: int, seed: int, log: Callable[[str], None] = print) -> Path:
    """The demo's synthetic cohort in ``cohort_dir``: reused when it is there and matches
    ``volumes`` and ``seed``, else synthesised straight into its tensor cache."""
    if _cohort_matches(cohort_dir, volumes, seed):
        log(f"reusing the synthetic cohort in {cohort_dir}")
        return cohort_dir
    from i2m2_med.data.cache import cache_then_drop
    from i2m2_med.synth import generate_cohort

    log(f"synthesising {volumes} volumes (regime {DEMO_REGIME}, seed {seed}) into the tensor cache of {cohort_dir} ...")
    generate_cohort(cohort_dir, volumes, seed, regime=DEMO_REGIME, workers=DEMO_SYNTH_WORKERS,
                    on_written=cache_then_drop(_tensor_cache(cohort_dir)))
    return cohort_dir


def run(
    out: Path | None = None,
    volumes: int = DEMO_VOLUMES,
    seed: int = DEMO_SEED,
    progress: bool = True,
    bundle_model: bool = True,
    epochs: int | None = None,
) -> int:
    """Synthesise, train and bundle; returns the exit code."""
    from rich.console import Console

    from i2m2_med.errors import UsageError
    from i2m2_med.training.fit import TrainerOptions, train
    from .train import print_summary

    if volumes < 6:
        raise UsageError("--volumes", f"the demo needs at least 6 volumes for train/val/test splits, got {volumes}")
    if seed < 0:
        raise UsageError("--seed", f"must be a non-negative integer, got {seed}")
    if epochs is not None and bundle_model:
        raise UsageError("--epochs", "a demo run with other epochs than the config's is not bundled; add --no-bundle")
    out = Path(out) if out is not None else Path("demo_out")
    if out.exists() and not out.is_dir():
        raise UsageError(out, "the output path is a file")
    console = Console(stderr=True)
    cohort_dir = out / "cohort"
    ensure_cohort(cohort_dir, volumes, seed, console.print)
    run_dir = out / "run"
    console.print(f"training {DEMO_VARIANT} ({DEMO_CONFIG} config) in {run_dir} ...")
    result = train(
        cohort_dir,
        run_dir,
        variant=DEMO_VARIANT,
        config=DEMO_CONFIG,
        epochs=epochs,
        seed=seed,
        options=TrainerOptions(progress=progress),
        extra={"command": command_line(volumes, seed), "demo_volumes": volumes, "regime": DEMO_REGIME},
    )
    print_summary(result.metrics, run_dir)
    if bundle_model:
        target = bundle(run_dir, volumes, seed)
        print(f"bundled demo model: {target}")
    sys.stdout.flush()
    return 0
