"""Training that survives an interruption: a resumable checkpoint after every epoch, without pickle.

Layout, inside the run folder::

    RUN/resume/args.json               what train() was asked (data, variant, config, seed, ...)
    RUN/resume/warm_start.safetensors  the warm-start stage after its latest epoch
    RUN/resume/product.safetensors     the product stage after its latest epoch

Each stage file is Lightning's own training state -- weights, optimiser moments and step counts,
the learning-rate schedule, the loop counters, early stopping's patience, the module's history
and best epoch's weights, the training sampler's and the augmentation's random generators, and
the process's random states -- written as one safetensors file: every tensor as a tensor, every
other value in the header as tagged JSON (:func:`encode`). Reading it back parses JSON and raw
tensors only; a value of any other type is refused when the file is written, so nothing needs
unpickling when it is read. Files are written atomically (a reader sees the old or the new one).

``train(..., resume=True)`` (``i2m2-med train --resume RUN``) hands each stage's file to
Lightning's ``fit(ckpt_path=...)``; a finished stage is a no-op fit that restores its best epoch.
Given the same data, the continued run ends with the weights and metrics of a run that was never
interrupted (tests/test_resume.py checks it bit for bit on CPU). When the run completes, the
folder ``RUN/resume/`` is removed: it is only a means to finish.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning_fabric.plugins import CheckpointIO
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_save

from i2m2_med.atomic import json_safe, write_bytes, write_json, write_text
from i2m2_med.errors import CheckpointError, UsageError

RESUME_DIR = "resume"
ARGS_NAME = "args.json"
FORMAT = "i2m2-med-resume"
FORMAT_VERSION = "1"
STAGES: tuple[str, ...] = ("warm_start", "product")


def resume_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / RESUME_DIR


def stage_path(run_dir: str | os.PathLike, stage: str) -> Path:
    """Where the resumable state of ``stage`` (``warm_start`` or ``product``) lives."""
    return resume_dir(run_dir) / f"{stage}.safetensors"


# -- tagged JSON + tensors -------------------------------------------------------------------------

def encode(obj: Any, tensors: dict[str, torch.Tensor], where: str = "state") -> Any:
    """``obj`` as JSON-able data; its tensors go into ``tensors`` (named ``t0``, ``t1``, ...).

    Plain JSON values stay as they are; a list, tuple, dict, tensor or numpy array becomes a
    one-key object (``{"list": [...]}``, ``{"tuple": [...]}``, ``{"dict": [[key, value], ...]}``,
    ``{"tensor": name}``, ``{"ndarray": name}``) so that their types and dict keys of any plain
    type come back unchanged. Anything else raises TypeError naming where it was."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous().clone()
        return {"tensor": name}
    if isinstance(obj, np.ndarray):
        name = f"t{len(tensors)}"
        tensors[name] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"ndarray": name}
    if isinstance(obj, Mapping):
        return {"dict": [[encode(k, tensors, f"{where} key"), encode(v, tensors, f"{where}[{k!r}]")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"tuple": [encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return {"list": [encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{where}: a {type(obj).__name__} cannot be stored in a resumable checkpoint")


def decode(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The inverse of :func:`encode`."""
    if not isinstance(obj, dict):
        if isinstance(obj, list):
            raise TypeError("untagged list")
        return obj
    if len(obj) != 1:
        raise ValueError("a tagged value has exactly one key")
    (tag, value), = obj.items()
    if tag == "tensor":
        return tensors[value]
    if tag == "ndarray":
        return tensors[value].numpy()
    if tag == "list":
        return [decode(v, tensors) for v in value]
    if tag == "tuple":
        return tuple(decode(v, tensors) for v in value)
    if tag == "dict":
        return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in value}
    raise ValueError(f"unknown tag {tag!r}")


def _hashable(key: Any) -> Any:
    if isinstance(key, (dict, list)):
        raise TypeError("a dict key must be a plain value")
    return key


def save_state(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Write ``state`` (a Lightning checkpoint dict) atomically as one safetensors file."""
    tensors: dict[str, torch.Tensor] = {}
    header = json.dumps(encode(dict(state), tensors), allow_nan=True)
    data = safetensors_save(tensors, metadata={"format": FORMAT, "format_version": FORMAT_VERSION, "state": header})
    write_bytes(path, data)


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file of :func:`save_state`; :class:`CheckpointError` (file, reason) when it is not one."""
    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CheckpointError(p, "not a resumable training state of this project")
            if meta.get("format_version") != FORMAT_VERSION:
                raise CheckpointError(p, f"resumable state format {meta.get('format_version')!r} is not supported")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            state = decode(json.loads(meta["state"]), tensors)
    except CheckpointError:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(p, f"unreadable resumable state ({exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(p, "unreadable resumable state (not a mapping)")
    return state


class SafetensorsCheckpointIO(CheckpointIO):
    """Lightning's checkpoint I/O through :func:`save_state` / :func:`load_state` (no pickle)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None) -> None:
        save_state(path, checkpoint)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_state(path)

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        Path(path).unlink(missing_ok=True)


# -- the process's random states -------------------------------------------------------------------

def random_states() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python random states, as :func:`encode` can store them."""
    np_state = np.random.get_state(legacy=False)
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"bit_generator": np_state["bit_generator"], "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: Mapping[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": int(n["pos"])},
                         "has_gauss": int(n["has_gauss"]), "gauss": float(n["gauss"])})
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# -- the arguments of a run, to continue it with the same ones ------------------------------------

CONFIG_COPY = "config.yaml"


def write_resume_args(
    run_dir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike,
    variant: str,
    config: Any,
    config_label: str,
    seed: int,
    options: Any,
    n_boot: int,
    extra: Mapping[str, Any] | None,
    labels: str | os.PathLike | None,
    clinical: str | os.PathLike | None,
    splits: str | os.PathLike | None,
    batch_size: int | None,
    num_workers: int | None,
    cache_size: int | None,
    data_fingerprint: str,
) -> None:
    """Record what :func:`~.fit.train` was asked in ``RUN/resume/`` (the resolved config as YAML,
    the rest as JSON), before the first epoch."""

    def path_or_none(p: str | os.PathLike | None) -> str | None:
        return None if p is None else str(Path(p).resolve())

    folder = resume_dir(run_dir)
    write_text(folder / CONFIG_COPY, config.to_yaml())
    write_json(folder / ARGS_NAME, json_safe({
        "data_dir": path_or_none(data_dir),
        "variant": variant,
        "config_label": config_label,
        "seed": int(seed),
        "options": {k: v for k, v in asdict(options).items() if k != "on_epoch"},
        "n_boot": int(n_boot),
        "extra": None if extra is None else dict(extra),
        "labels": path_or_none(labels),
        "clinical": path_or_none(clinical),
        "splits": path_or_none(splits),
        "batch_size": batch_size,
        "num_workers": num_workers,
        "cache_size": cache_size,
        "data_fingerprint": data_fingerprint,
    }))


def read_resume_args(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``RUN/resume/args.json``; UsageError (one line) when there is nothing to resume."""
    path = resume_dir(run_dir) / ARGS_NAME
    if (Path(run_dir) / "metrics.json").is_file() and not path.is_file():
        raise UsageError(run_dir, "this run is complete; there is nothing to resume")
    if not path.is_file():
        raise UsageError(run_dir, "no resumable training here (no resume/args.json: the run never started, "
                                  "or its folder is not a run folder)")
    try:
        args = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(path, f"unreadable ({exc})") from None
    if not isinstance(args, dict) or not {"data_dir", "variant", "seed", "data_fingerprint"} <= set(args):
        raise UsageError(path, "not the arguments of a training run")
    return args


def resume_arguments(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The keyword arguments of :func:`~.fit.train` that continue the run in ``run_dir``:
    ``data_dir``, ``out_dir``, ``variant``, ``config`` (the resolved config the run started
    with), ``seed``, ``n_boot``, ``extra``, the data files, the loader sizes, the trainer options
    as a dict (``options``) and ``resume=True``. UsageError (one line) when there is nothing to resume."""
    from i2m2_med.config import load_config

    run = Path(run_dir)
    args = read_resume_args(run)
    config = load_config(resume_dir(run) / CONFIG_COPY)
    return {
        "data_dir": args["data_dir"],
        "out_dir": run,
        "variant": args["variant"],
        "config": config,
        "seed": int(args["seed"]),
        "n_boot": int(args.get("n_boot") or 1000),
        "extra": args.get("extra"),
        "labels": args.get("labels"),
        "clinical": args.get("clinical"),
        "splits": args.get("splits"),
        "batch_size": args.get("batch_size"),
        "num_workers": args.get("num_workers"),
        "cache_size": args.get("cache_size"),
        "options": dict(args.get("options") or {}),
        "resume": True,
    }


def check_resume_data(run_dir: str | os.PathLike, fingerprint: str) -> dict[str, Any]:
    """The run's recorded arguments (:func:`read_resume_args`); UsageError unless its data
    fingerprint is ``fingerprint`` (the cohort now)."""
    args = read_resume_args(run_dir)
    if args["data_fingerprint"] != fingerprint:
        raise UsageError(run_dir, "the cohort changed since this run started (data fingerprint "
                                  f"{args['data_fingerprint'][:12]}, now {fingerprint[:12]}); start a new run")
    return args


def clear_resume_state(run_dir: str | os.PathLike) -> None:
    """A fresh start: remove the stage files an earlier run left (never continue from them)."""
    for stage in STAGES:
        stage_path(run_dir, stage).unlink(missing_ok=True)


def finish_resume_state(run_dir: str | os.PathLike) -> None:
    """The run is complete: remove ``RUN/resume/`` (it is only a means to finish)."""
    shutil.rmtree(resume_dir(run_dir), ignore_errors=True)
