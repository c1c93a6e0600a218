"""Training runs of the ablation grid, cached on disk.

A run is identified by its *key*: the SHA-256 of the data fingerprint
(:func:`i2m2_med.data.cohort.data_fingerprint`), the variant, the seed, the resolved configuration
(epochs included) and the project version. It lives in ``CACHE_DIR/<variant>-s<seed>-<key[:12]>/``
as an ordinary training run folder (``model.safetensors``, ``metrics.json``, ...; see
:func:`i2m2_med.training.fit.train`) plus ``ablation_run.json``, written last, which marks it
complete. A later ablation with the same key reuses it: nothing is retrained unless the data, the
config, the variant, the seed or the code version changed.

A run that fails (unknown variant, a config that cannot train, an empty split, ...) is not cached:
its :class:`RunRecord` carries ``status="failed"`` and the one-line reason, and the traceback is
kept in ``error.txt`` of the run folder for whoever debugs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from i2m2_med import __version__
from i2m2_med.atomic import write_json, write_text
from i2m2_med.config import Config
from i2m2_med.data.cohort import Cohort
from i2m2_med.data.dataset import SliceDataset
from i2m2_med.errors import I2M2Error
from i2m2_med.training.options import TrainerOptions
from i2m2_med.training.results import TrainResult

RUN_MARKER = "ablation_run.json"
CHECKPOINT_NAME = "model.safetensors"
CACHE_SCHEMA = 1

Progress = Callable[[str], None]


@dataclass
class Shard:
    """Shard ``index`` of ``count`` (``--shard I/N``): which runs of an ablation this process trains.

    Every process of a sharded ablation considers the same runs in the same order (the main
    grid variant by variant and seed by seed, then each regime's grid); the k-th run considered
    belongs to shard ``k mod count``. :meth:`claims` is asked once per run, cached or not, so
    that every shard counts alike. A run of another shard that is not in the cache yet is left
    ``pending``; the merge (the same command without ``--shard``) reuses every finished run and
    trains only what no shard finished.
    """

    index: int
    count: int
    considered: int = 0

    def claims(self) -> tuple[bool, int]:
        """(whether this shard trains the next run, the shard that owns it)."""
        owner = self.considered % self.count
        self.considered += 1
        return owner == self.index, owner

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"I/N"`` (0 <= I < N) -> :class:`Shard`; UsageError otherwise."""
    from i2m2_med.errors import UsageError

    head, sep, tail = str(text).partition("/")
    try:
        index, count = int(head), int(tail)
    except ValueError:
        index, count = -1, 0
    if not sep or count < 1 or not 0 <= index < count:
        raise UsageError("--shard", f"expected I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return Shard(index, count)


@dataclass
class RunRecord:
    """One (variant, seed) of the grid: where it lives and how it went.

    ``status``: ``"trained"`` (now), ``"cached"`` (reused), ``"failed"`` (``reason`` says why) or
    ``"pending"`` (another shard's, not finished yet; see :class:`Shard`).
    ``training``: epochs run, best epoch and validation AUROC, times, samples/s (from the run's
    metrics.json) -- empty for a failed run.
    """

    variant: str
    seed: int
    key: str
    run_dir: str
    status: str
    reason: str | None = None
    seconds: float = 0.0
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in ("trained", "cached")

    @property
    def checkpoint(self) -> Path:
        return Path(self.run_dir) / CHECKPOINT_NAME

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def config_hash(config: Config) -> str:
    """SHA-256 (hex) of a resolved configuration's canonical JSON."""
    text = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def run_key(data_fingerprint: str, variant: str, seed: int, config: Config) -> str:
    """The cache key of a run (64 hex characters); see the module docstring."""
    parts = {
        "schema": CACHE_SCHEMA,
        "data": data_fingerprint,
        "variant": variant,
        "seed": int(seed),
        "config": config_hash(config),
        "version": __version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()


def run_dir_for(cache_dir: str | os.PathLike, variant: str, seed: int, key: str) -> Path:
    safe = "".join(c if (c.isalnum() or c in "-_") else "_" for c in variant)[:40] or "variant"
    return Path(cache_dir) / f"{safe}-s{int(seed)}-{key[:12]}"


def one_line_error(exc: BaseException) -> str:
    """A failure as one line: the project's ``where: reason`` or ``Type: message``."""
    if isinstance(exc, I2M2Error):
        return exc.one_line()
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text}"


def _training_summary(result: TrainResult) -> dict[str, Any]:
    return {
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "best_val_auroc_mean": result.best_val_auroc_mean,
        "time_s": result.time_s,
        "train_time_s": result.train_time_s,
        "train_slices": result.train_slices,
        "samples_per_s": result.samples_per_s,
    }


def epoch_line(variant: str, seed: int, progress: Progress) -> Callable[[str, int, int, dict], None]:
    """An ``on_epoch`` callback (:class:`~i2m2_med.training.options.TrainerOptions`) that says where
    a run of the grid is: variant, seed, stage, epoch of how many, training loss, validation figure."""

    def report(stage: str, epoch: int, max_epochs: int, record: dict) -> None:
        loss, selection = record.get("train_loss"), record.get("val_selection")
        what = "in-view AUROC" if record.get("val_in_view_auroc_mean") is not None else "AUROC"
        text = f"  {variant} (seed {seed}) {stage.replace('_', ' ')} epoch {epoch + 1} of {max_epochs}"
        if loss is not None:
            text += f": training loss {loss:.3f}"
        if selection is not None:
            text += f", validation {what} {selection:.3f}"
        progress(text)

    return report


def cached_run(run_dir: Path, key: str) -> dict[str, Any] | None:
    """The marker of a complete cached run with this key, or None."""
    marker = run_dir / RUN_MARKER
    if not marker.is_file() or not (run_dir / CHECKPOINT_NAME).is_file():
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if data.get("key") == key else None


def resumable(run_dir: Path, data_fingerprint: str) -> bool:
    """Whether ``run_dir`` holds the resumable state of an interrupted run on this data (the
    folder is keyed by data, variant, seed and config, so that run had the same arguments)."""
    from i2m2_med.training.resume import read_resume_args

    try:
        return read_resume_args(run_dir).get("data_fingerprint") == data_fingerprint
    except (OSError, ValueError, I2M2Error):
        return False


def train_or_reuse(
    data_dir: str | os.PathLike,
    cache_dir: str | os.PathLike,
    variant: str,
    seed: int,
    config: Config,
    data_fingerprint: str,
    *,
    cohort: Cohort | None = None,
    datasets: Mapping[str, SliceDataset] | None = None,
    train_n_boot: int = 50,
    progress: Progress | None = None,
    report_split: bool = True,
    shard: Shard | None = None,
) -> RunRecord:
    """Train one (variant, seed) with ``config`` (epochs already resolved), or reuse the cached
    run with the same key; a run of that key that was interrupted (killed, or a failure in an
    epoch) continues from its last finished epoch (:func:`resumable`). ``cohort`` and ``datasets`` (split -> SliceDataset of that cohort)
    are passed to :func:`i2m2_med.training.fit.train`, so the runs of a grid share one transform
    cache. Never raises for a training failure (KeyboardInterrupt aside): the record says
    ``failed`` and why. ``report_split``: as for :func:`~i2m2_med.training.fit.train`.
    ``shard``: train only the runs this shard claims (a run it does not claim and that is not
    cached is returned ``pending``)."""
    # Lightning loads with this import (seconds): only when a run is not in the cache
    from i2m2_med.training.fit import train

    key = run_key(data_fingerprint, variant, seed, config)
    run_dir = run_dir_for(cache_dir, variant, seed, key)
    mine, owner = shard.claims() if shard is not None else (True, 0)
    marker = cached_run(run_dir, key)
    if marker is not None:
        return RunRecord(variant, int(seed), key, str(run_dir), "cached", None, 0.0, marker.get("training", {}))
    if not mine:
        return RunRecord(variant, int(seed), key, str(run_dir), "pending", f"shard {owner}/{shard.count} trains it")
    resume = resumable(run_dir, data_fingerprint)
    if progress:
        progress(f"{'resuming' if resume else 'training'} {variant} (seed {seed})")
    t0 = time.perf_counter()
    try:
        result = train(
            data_dir,
            run_dir,
            variant=variant,
            config=config,
            options=TrainerOptions(accelerator="auto", progress=False,
                                   on_epoch=epoch_line(variant, seed, progress) if progress else None),
            seed=int(seed),
            n_boot=int(train_n_boot),
            num_workers=0,
            cohort=cohort,
            datasets=datasets,
            report_split=report_split,
            resume=resume,
        )
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # a failing variant is reported, never fatal to the ablation
        seconds = time.perf_counter() - t0
        reason = one_line_error(exc)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text(run_dir / "error.txt", "".join(traceback.format_exception(exc)))
        except OSError:
            pass
        return RunRecord(variant, int(seed), key, str(run_dir), "failed", reason, seconds)
    seconds = time.perf_counter() - t0
    assert result is not None, "a single-process run always evaluates (rank 0)"
    (run_dir / "error.txt").unlink(missing_ok=True)  # an earlier attempt's failure, now finished
    summary = _training_summary(result)
    write_json(
        run_dir / RUN_MARKER,
        {"key": key, "variant": variant, "seed": int(seed), "data_fingerprint": data_fingerprint,
         "config_hash": config_hash(config), "version": __version__, "seconds": seconds, "training": summary},
    )
    return RunRecord(variant, int(seed), key, str(run_dir), "trained", None, seconds, summary)
