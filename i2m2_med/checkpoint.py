"""Checkpoints: one ``.safetensors`` file holding the weights and, in its header, the metadata.

Layout (safetensors header ``__metadata__``, all strings):

* ``format``: ``"i2m2-med-checkpoint"``; ``format_version``: ``"1"``;
* ``meta``: JSON with ``variant``, ``n_tabular``, ``tabular_names``, ``config`` (the full
  :class:`~i2m2_med.config.Config` as a dict), ``metrics``, ``data_fingerprint``,
  ``project_version``, ``weights_sha256``, ``fingerprint`` and ``extra``;
* ``sha256``: SHA-256 over the weights (every tensor's name, dtype, shape and bytes, in name
  order) followed by the ``meta`` JSON, so that a change to any tensor byte or any metadata value
  is detected.

Fitted after training, and stored like weights (tensors in the same file, under the same hashes,
HMAC and fingerprint): the prior offset and the study-level map (:mod:`i2m2_med.metrics.calibration`)
and the distribution-shift statistics (``shift_*``, :mod:`i2m2_med.inference.shift`). A file
without them loads as before; one with them is checked against the variant's feature widths.

Loading never unpickles: safetensors holds raw tensors only. :func:`load_checkpoint` verifies the
file structure, the hash, the config (every size bounded, :data:`i2m2_med.config.MAX_WIDTH`) and
that the weights match the variant's structure exactly -- on a model built on PyTorch's ``meta``
device first, so that no memory is allocated for a structure the file does not hold -- and raises
:class:`~i2m2_med.errors.CheckpointError` (file, reason) otherwise. Writes are atomic.

What the hash protects, plainly: the unkeyed SHA-256 detects accidental damage (a truncated copy,
a flipped byte, an edited value without a recomputed hash). It does not stop a deliberate forgery:
anyone can change the config or weights and recompute it. A deployment that must refuse models it
did not produce sets ``I2M2_MODEL_KEY``: :func:`save_checkpoint` then also writes
``hmac_sha256``, an HMAC-SHA-256 of the same bytes under that key, and :func:`load_checkpoint`
refuses any checkpoint without a valid one (the bundled demo model is unsigned: sign your own
with ``save_checkpoint`` under the key, or leave the variable unset).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_save

from i2m2_med import __version__
from i2m2_med.atomic import write_bytes
from i2m2_med.config import MAX_WIDTH, Config, config_from_dict
from i2m2_med.errors import CheckpointError, ConfigError, UsageError
from i2m2_med.heads import HEADS
from i2m2_med.models.registry import VARIANTS, I2M2Model, build_model

FORMAT = "i2m2-med-checkpoint"
FORMAT_VERSION = "1"
FINGERPRINT_CHARS = 12


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about itself (everything but the weights)."""

    path: str
    variant: str
    n_tabular: int
    tabular_names: list[str]
    config: Config
    metrics: dict[str, Any]
    data_fingerprint: str
    project_version: str
    sha256: str
    weights_sha256: str
    fingerprint: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (config as a dict)."""
        return {
            "path": self.path,
            "variant": self.variant,
            "n_tabular": self.n_tabular,
            "tabular_names": list(self.tabular_names),
            "config": self.config.to_dict(),
            "metrics": self.metrics,
            "data_fingerprint": self.data_fingerprint,
            "project_version": self.project_version,
            "sha256": self.sha256,
            "weights_sha256": self.weights_sha256,
            "fingerprint": self.fingerprint,
            "extra": self.extra,
        }


# ---- hashing ------------------------------------------------------------------------------


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        digest.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{list(t.shape)}\n".encode())
        digest.update(_tensor_bytes(t))
    return digest.hexdigest()


def _config_json(config: Config) -> str:
    return json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))


def _fingerprint(weights_hex: str, config: Config, variant: str) -> str:
    text = f"{weights_hex}|{variant}|{_config_json(config)}"
    return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_CHARS]


def model_fingerprint(model: I2M2Model, config: Config | None = None) -> str:
    """Short hex fingerprint of a model: SHA-256 of its weights, variant and config (12 chars;
    ``config``: the model's own when None).

    Equal to ``CheckpointMeta.fingerprint`` of a checkpoint of the same model.
    """
    cfg = config if config is not None else model.config
    return _fingerprint(weights_sha256(model.state_dict()), cfg, model.variant)


def _file_sha(weights_hex: str, meta_json: str) -> str:
    return hashlib.sha256(weights_hex.encode() + b"\n" + meta_json.encode()).hexdigest()


MODEL_KEY_ENV = "I2M2_MODEL_KEY"
MAX_CHECKPOINT_BYTES = 1 << 30
"""The largest checkpoint file read (the paper config's i2m2 is about 140 MB)."""


def _model_key() -> bytes | None:
    key = os.environ.get(MODEL_KEY_ENV, "")
    return key.encode("utf-8") if key else None


def _signature(key: bytes, weights_hex: str, meta_json: str) -> str:
    return hmac.new(key, weights_hex.encode() + b"\n" + meta_json.encode(), hashlib.sha256).hexdigest()


def _jsonable(obj: Any) -> Any:
    """Plain JSON (NaN / inf -> None, numpy / tensor scalars -> Python numbers)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item) and not isinstance(obj, (str, bytes)):
        try:
            return _jsonable(obj.item())
        except (TypeError, ValueError):
            pass
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    raise UsageError("checkpoint metadata", f"value of type {type(obj).__name__} is not JSON-serialisable")


# ---- save ---------------------------------------------------------------------------------


def save_checkpoint(
    path: str | os.PathLike,
    model: I2M2Model,
    config: Config,
    variant: str,
    n_tabular: int,
    tabular_names: Sequence[str],
    metrics: Mapping[str, Any] | None,
    data_fingerprint: str,
    extra: Mapping[str, Any] | None = None,
) -> CheckpointMeta:
    """Write ``model``'s weights and metadata to one safetensors file (atomically).

    Args:
        path: target file (conventionally ``*.safetensors``); parent folders are created.
        model: the :class:`~i2m2_med.models.registry.I2M2Model` of ``variant`` (its structure is
            what ``build_model(variant, config, n_tabular)`` reproduces on loading).
        config: the configuration the model was built and trained with.
        variant: the variant name (``i2m2``, ``mag``, ...).
        n_tabular: number of tabular features; ``tabular_names`` must have that length.
        metrics: JSON-able metrics (nested dicts / lists / numbers); NaN is stored as null.
        data_fingerprint: identifier of the training data (e.g. a hash of the cohort manifest).
        extra: further JSON-able metadata (e.g. seed, epochs, timing).

    Returns the :class:`CheckpointMeta` as :func:`load_checkpoint` will read it back.
    """
    if len(tabular_names) != n_tabular:
        raise UsageError(path, f"{len(tabular_names)} tabular names for n_tabular={n_tabular}")
    if model.variant != variant:
        raise UsageError(path, f"model is variant {model.variant!r}, not {variant!r}")
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    w_sha = weights_sha256(state)
    meta = {
        "variant": variant,
        "n_tabular": int(n_tabular),
        "tabular_names": [str(n) for n in tabular_names],
        "config": config.to_dict(),
        "metrics": _jsonable(dict(metrics or {})),
        "data_fingerprint": str(data_fingerprint),
        "project_version": __version__,
        "weights_sha256": w_sha,
        "fingerprint": _fingerprint(w_sha, config, variant),
        "extra": _jsonable(dict(extra or {})),
    }
    meta_json = json.dumps(meta, sort_keys=True, allow_nan=False)
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "meta": meta_json,
        "sha256": _file_sha(w_sha, meta_json),
    }
    key = _model_key()
    if key is not None:
        header["hmac_sha256"] = _signature(key, w_sha, meta_json)
    write_bytes(path, safetensors_save(state, metadata=header))
    return _meta_from(Path(path), meta, header["sha256"], config)


# ---- load ---------------------------------------------------------------------------------


def _meta_from(path: Path, meta: dict[str, Any], sha: str, config: Config) -> CheckpointMeta:
    return CheckpointMeta(
        path=str(path),
        variant=meta["variant"],
        n_tabular=int(meta["n_tabular"]),
        tabular_names=list(meta["tabular_names"]),
        config=config,
        metrics=dict(meta["metrics"]),
        data_fingerprint=meta["data_fingerprint"],
        project_version=meta["project_version"],
        sha256=sha,
        weights_sha256=meta["weights_sha256"],
        fingerprint=meta["fingerprint"],
        extra=dict(meta.get("extra") or {}),
    )


_REQUIRED = {
    "variant": str,
    "n_tabular": int,
    "tabular_names": list,
    "config": dict,
    "metrics": dict,
    "data_fingerprint": str,
    "project_version": str,
    "weights_sha256": str,
    "fingerprint": str,
}


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str, Config]:
    if not path.is_file():
        raise CheckpointError(path, "no such checkpoint file")
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(path, f"{size:,} bytes: larger than any model of this project ({MAX_CHECKPOINT_BYTES:,} at most)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            state = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise CheckpointError(path, f"not a readable safetensors file (corrupt or truncated): {reason}") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(path, f"not an i2m2-med checkpoint (header format {header.get('format')!r})")
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(path, f"unsupported checkpoint format version {header.get('format_version')!r} (expected {FORMAT_VERSION})")
    meta_json, sha = header.get("meta"), header.get("sha256")
    if not isinstance(meta_json, str) or not isinstance(sha, str):
        raise CheckpointError(path, "checkpoint header lacks 'meta' or 'sha256'")
    try:
        meta = json.loads(meta_json)
    except json.JSONDecodeError as exc:
        raise CheckpointError(path, f"checkpoint metadata is not valid JSON: {exc.msg}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(path, "checkpoint metadata is not a JSON object")
    for key, kind in _REQUIRED.items():
        if not isinstance(meta.get(key), kind) or (kind is int and isinstance(meta.get(key), bool)):
            raise CheckpointError(path, f"checkpoint metadata key {key!r} is missing or not a {kind.__name__}")
    w_sha = weights_sha256(state)
    if w_sha != meta["weights_sha256"] or _file_sha(w_sha, meta_json) != sha:
        raise CheckpointError(path, "sha256 mismatch: the checkpoint is corrupt or was modified after it was written")
    key = _model_key()
    if key is not None:
        signed = header.get("hmac_sha256")
        if not isinstance(signed, str) or not hmac.compare_digest(signed, _signature(key, w_sha, meta_json)):
            raise CheckpointError(path, f"not signed with this deployment's key ({MODEL_KEY_ENV} is set): refused")
    try:
        config = config_from_dict(meta["config"], where=path)
    except ConfigError as exc:
        raise CheckpointError(path, f"invalid config in checkpoint: {exc.reason}") from None
    if len(meta["tabular_names"]) != meta["n_tabular"]:
        raise CheckpointError(path, f"{len(meta['tabular_names'])} tabular names for n_tabular={meta['n_tabular']}")
    return state, meta, sha, config


def read_checkpoint_meta(path: str | os.PathLike) -> CheckpointMeta:
    """Verify a checkpoint (structure and sha256) and return its metadata without building the model."""
    p = Path(path)
    _, meta, sha, config = _read(p)
    return _meta_from(p, meta, sha, config)


def load_checkpoint(
    path: str | os.PathLike,
    expected_variant: str | None = None,
    expected_n_tabular: int | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[I2M2Model, CheckpointMeta]:
    """Load a checkpoint written by :func:`save_checkpoint`: ``(model in eval mode, meta)``.

    Refuses, with CheckpointError(path, reason): a missing, truncated or corrupt file; a file that
    is not an i2m2-med checkpoint; a hash mismatch (tampered weights or metadata); an invalid
    config; weights whose names or shapes do not match the variant; a variant or tabular width
    other than ``expected_variant`` / ``expected_n_tabular`` when given.
    """
    p = Path(path)
    state, meta, sha, config = _read(p)
    variant = meta["variant"]
    if variant not in VARIANTS:
        raise CheckpointError(p, f"unknown variant {variant!r} in checkpoint")
    if expected_variant is not None and variant != expected_variant:
        raise CheckpointError(p, f"checkpoint is variant {variant!r}, expected {expected_variant!r}")
    if expected_n_tabular is not None and meta["n_tabular"] != expected_n_tabular:
        raise CheckpointError(p, f"checkpoint expects {meta['n_tabular']} tabular features, the data has {expected_n_tabular}")
    if not 0 <= meta["n_tabular"] <= MAX_WIDTH:
        raise CheckpointError(p, f"n_tabular={meta['n_tabular']} is out of range 0..{MAX_WIDTH}")
    # the structure is checked on the meta device (no memory) before the real model is built
    with torch.device("meta"):
        expected = dict(_build(p, variant, config, meta["n_tabular"], {}).state_dict())
    if "prior_offset" in state:  # the buffers fitted after training, when the file has them
        expected["prior_offset"] = torch.empty(len(HEADS), device="meta")
    if "study_calibration" in state:
        expected["study_calibration"] = torch.empty((len(HEADS), 2), device="meta")
    shift_names = sorted(n for n in state if n.startswith(I2M2Model.SHIFT_PREFIX))
    if shift_names:  # the distribution-shift statistics fitted after training, when the file has them
        experts = tuple(n[len(I2M2Model.SHIFT_PREFIX):-len("_mean")] for n in shift_names if n.endswith("_mean"))
        with torch.device("meta"):
            try:
                shapes = _build(p, variant, config, meta["n_tabular"], {}).shift_buffer_shapes(experts)
            except UsageError as exc:
                raise CheckpointError(p, f"invalid shift statistics: {exc.reason}") from None
        for name, shape in shapes.items():
            expected[name] = torch.empty(shape, device="meta")
    _check_structure(p, variant, expected, state)
    model = _build(p, variant, config, meta["n_tabular"], state)
    model.load_state_dict(state, strict=True)
    model.to(map_location)
    model.eval()
    return model, _meta_from(p, meta, sha, config)


def _build(p: Path, variant: str, config: Config, n_tabular: int, state: Mapping[str, torch.Tensor]) -> I2M2Model:
    try:
        model = build_model(variant, config, n_tabular)
    except (UsageError, ValueError) as exc:
        raise CheckpointError(p, f"cannot build variant {variant!r} from the checkpoint's config: {exc}") from None
    if "prior_offset" in state:
        model.set_prior_offset(torch.zeros(len(HEADS)))  # value loaded afterwards
    if "study_calibration" in state:
        model.set_study_calibration(torch.tensor([[1.0, 0.0]] * len(HEADS)))  # likewise
    shift = {n: torch.zeros(tuple(t.shape)) for n, t in state.items() if n.startswith(I2M2Model.SHIFT_PREFIX)}
    if shift:
        try:
            model.set_shift_statistics(shift)  # values loaded afterwards
        except UsageError as exc:
            raise CheckpointError(p, f"invalid shift statistics: {exc.reason}") from None
    return model


def _check_structure(p: Path, variant: str, expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise CheckpointError(p, f"weights do not match variant {variant!r}: {', '.join(parts)} tensor names")
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape) or state[name].dtype != tensor.dtype:
            raise CheckpointError(
                p,
                f"weights do not match variant {variant!r}: {name} is {tuple(state[name].shape)} {state[name].dtype}, "
                f"expected {tuple(tensor.shape)} {tensor.dtype}",
            )
