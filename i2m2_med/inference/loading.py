"""Loading a model for inference: a run folder or checkpoint file (the bundled demo model when
none is named) -> the model in eval mode and its checkpoint metadata.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch

from i2m2_med import demo_model_path
from i2m2_med.checkpoint import CheckpointMeta, load_checkpoint
from i2m2_med.data.tabular import TABULAR_FEATURES
from i2m2_med.errors import CheckpointError, UsageError
from i2m2_med.models import I2M2Model

#: Checkpoint file names looked for, in order, when a run folder is given.
CHECKPOINT_NAMES: tuple[str, ...] = ("model.safetensors", "best.safetensors", "checkpoint.safetensors", "last.safetensors")


def resolve_checkpoint(path: str | os.PathLike | None = None) -> Path:
    """The checkpoint file of ``path``: the file itself, the checkpoint inside a run folder
    (``model.safetensors``, ``best.safetensors``, ... or the only ``*.safetensors`` there), or,
    for ``None``, the bundled demo model. Raises :class:`CheckpointError` when none is found."""
    if path is None:
        path = demo_model_path()
        if not path.exists():
            raise CheckpointError(path, "the bundled demo model is missing; run `i2m2-med demo` to build it")
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        for name in CHECKPOINT_NAMES:
            if (p / name).is_file():
                return p / name
        found = sorted(p.glob("*.safetensors"))
        if len(found) == 1:
            return found[0]
        if found:
            names = ", ".join(f.name for f in found[:4])
            raise CheckpointError(p, f"several checkpoints in the run folder ({names}); name the file")
        raise CheckpointError(p, "no checkpoint (*.safetensors) in this folder")
    raise CheckpointError(p, "no such checkpoint file or run folder")


DEVICE_HELP = "auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda or cuda:N"


def resolve_device(spec: str | None = "auto", option: str = "--device") -> torch.device:
    """The torch device named by ``spec`` (:data:`DEVICE_HELP`; None is ``auto``). Raises
    :class:`UsageError` naming ``option`` for a GPU this machine does not have or a name that is
    none of these, so a run never falls back to the CPU behind the user's back."""
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        index = text.partition(":")[2]
        if index and not index.isdigit():
            raise UsageError(option, f"{spec!r} is not a device; use {DEVICE_HELP}")
        if not torch.cuda.is_available():
            raise UsageError(option, f"{spec!r} asks for a CUDA GPU but torch sees none on this machine; use cpu or auto")
        n = int(index or torch.cuda.current_device())
        if n >= torch.cuda.device_count():
            raise UsageError(option, f"{spec!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
        return torch.device("cuda", n)
    raise UsageError(option, f"{spec!r} is not a device; use {DEVICE_HELP}")


def device_name(device: torch.device) -> str:
    """``cpu`` or ``cuda:N (card name)``, for a run's log."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def load_model(path: str | os.PathLike | None = None, map_location: str | torch.device = "cpu") -> tuple[I2M2Model, CheckpointMeta]:
    """Load a checkpoint for inference: ``(model in eval mode, CheckpointMeta)``.

    ``path``: a checkpoint file, a training run folder holding one, or ``None`` for the bundled
    demo model. Refuses corrupt, tampered or mismatched checkpoints with
    :class:`~i2m2_med.errors.CheckpointError` (file and reason, one line). The weights are put in
    channels-last memory format (see :func:`channels_last`).
    """
    model, meta = load_checkpoint(resolve_checkpoint(path), map_location=map_location)
    return model.to(memory_format=torch.channels_last), meta


def channels_last(model: torch.nn.Module) -> bool:
    """True when the model's convolution weights are in channels-last memory format (as
    :func:`load_model` leaves them: about 1.2-1.4x faster convolutions on CPU, same numbers to
    ~1e-6); :func:`predict_study` then feeds it channels-last images."""
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and module.in_channels > 1 and module.kernel_size != (1, 1):
            w = module.weight
            return bool(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous())
    return False


def model_info(meta: CheckpointMeta) -> dict[str, str]:
    """``{"fingerprint", "variant", "version"}`` of a checkpoint (version: the i2m2-med version
    that wrote it)."""
    return {
        "fingerprint": str(meta.fingerprint),
        "variant": str(meta.variant),
        "version": str(meta.project_version),
    }


def tabular_columns(meta: CheckpointMeta) -> list[str] | dict[str, float] | None:
    """The ``columns`` argument of :func:`i2m2_med.data.tabular.tabular_features` that reproduces the
    checkpoint's feature vector: ``extra["tabular_columns"]`` when the checkpoint declares it,
    else the extra clinical columns named in ``tabular_names`` (divisor 1), else None (the
    standard features only)."""
    declared = meta.extra.get("tabular_columns")
    if declared:
        return dict(declared) if isinstance(declared, Mapping) else list(declared)
    names = list(meta.tabular_names)
    extra = [n for n in names[::2] if n not in TABULAR_FEATURES]
    return extra or None
