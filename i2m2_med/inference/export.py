"""Export a trained model as a graph other runtimes can run: ONNX, TorchScript or a
``torch.export`` ExportedProgram.

The exported graph takes plain tensors, no dicts:

* one input per modality the model reads, in :data:`~i2m2_med.models.registry.MODALITIES` order:
  ``magnitude`` and ``phase`` ``[B, 1, S, S]`` float32 (``S`` the model's image size, the output
  of the modality transforms), ``tabular`` ``[B, F]`` float32 (the encoded clinical vector);
* ``present`` ``[B, M]`` float32, 1 where modality ``m`` (the inputs' order) is there and 0 where
  it is missing (its input then holds anything, e.g. zeros).

It returns ``logp_combined`` (the normalised product) and then every term of the product
(``logp_magnitude``, ``logp_phase``, ...), each
``[B, 4, 2]`` log-probabilities over the heads of :data:`i2m2_med.heads.HEADS` and the classes
(absent, present): the experts in the model's order, then ``prior`` when the model has one. A
missing modality works as in PyTorch: every expert that needs it leaves the product for that
sample (its term is still computed and returned, but it does not count); the joint model fuses the
tabular vector only where it is present. A sample with no usable expert gets the uniform
distribution (PyTorch refuses such a batch).

:func:`export_model` writes the file atomically, loads it back with its own runtime (onnxruntime
for ONNX), checks its outputs against the PyTorch model on a random batch with every modality
and with each modality missing in turn, and writes ``FILE.json`` beside it: the inputs and
outputs, the heads, the tabular features, the model's fingerprint and the largest difference
measured.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from i2m2_med.atomic import write_json
from i2m2_med.checkpoint import CheckpointMeta, load_checkpoint
from i2m2_med.errors import UsageError
from i2m2_med.heads import HEADS
from i2m2_med.inference.loading import resolve_checkpoint
from i2m2_med.models.phase_filter import FixedSizePhaseHighPass, PhaseHighPass
from i2m2_med.models.product import combine
from i2m2_med.models.registry import I2M2Model

FORMATS: tuple[str, ...] = ("onnx", "torchscript", "exported-program")
"""The export formats, as ``--format`` names them."""

SUFFIXES: dict[str, str] = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}
"""The usual file suffix of each format."""

TOLERANCE = 1e-4
"""Largest absolute difference in log-probability allowed between the export and PyTorch."""

ONNX_OPSET = 18


class ExportableModel(nn.Module):
    """An :class:`I2M2Model` behind plain tensor inputs and outputs (see the module text).

    ``forward(*inputs, present) -> (combined, *terms)``; the inputs are those of
    :attr:`input_names` in order. It wraps a copy of ``model`` whose phase high-pass filters are
    fixed-size copies for the model's image size, so no Python state is touched at call time and
    the caller's model stays as it was (the reference the export is checked against).
    """

    def __init__(self, model: I2M2Model, image_size: int):
        super().__init__()
        self.model = model = copy.deepcopy(model)
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, PhaseHighPass) and not isinstance(child, FixedSizePhaseHighPass):
                    setattr(parent, name, FixedSizePhaseHighPass(child.sigma, image_size, image_size))
        self.modalities: tuple[str, ...] = tuple(model.modalities)
        self.experts: tuple[str, ...] = tuple(model.expert_names)
        self.needs = {e: tuple(model.required_modalities(e)) for e in self.experts}

    @property
    def input_names(self) -> list[str]:
        return [*self.modalities, "present"]

    @property
    def terms(self) -> list[str]:
        """The product's terms in output order (after ``combined``)."""
        return [*self.experts, *(["prior"] if self.model.has_prior else [])]

    @property
    def output_names(self) -> list[str]:
        """``logp_combined`` then ``logp_<term>`` (an ONNX name may not be both input and output)."""
        return [f"logp_{n}" for n in ("combined", *self.terms)]

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        *tensors, present = inputs
        batch = dict(zip(self.modalities, tensors))
        flags = {m: present[:, i] > 0.5 for i, m in enumerate(self.modalities)}
        terms: dict[str, Tensor] = {}
        mask: dict[str, Tensor] = {}
        for name in self.experts:
            z = self.model.expert_logits(name, batch, flags)
            terms[name] = torch.log_softmax(z, dim=-1)
            usable = flags[self.needs[name][0]]
            for m in self.needs[name][1:]:
                usable = usable & flags[m]
            mask[name] = usable
        if self.model.has_prior:
            terms["prior"] = self.model._prior_term(present.shape[0])
        return (combine(terms, mask), *terms.values())


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and measured."""

    path: Path
    metadata_path: Path
    format: str
    max_abs_diff: float
    checks: int
    metadata: dict[str, Any]


def example_inputs(wrapper: ExportableModel, n_tabular: int, image_size: int, batch: int = 3,
                   seed: int = 0, missing: str | None = None) -> tuple[Tensor, ...]:
    """A random batch for ``wrapper`` (images around the transforms' range, a tabular vector in
    [0, 1]); ``missing`` names a modality marked absent on every sample but the first."""
    g = torch.Generator().manual_seed(seed)
    out: list[Tensor] = []
    for m in wrapper.modalities:
        if m == "tabular":
            out.append(torch.rand(batch, n_tabular, generator=g))
        elif m == "phase":
            out.append((torch.rand(batch, 1, image_size, image_size, generator=g) * 2 - 1) * np.pi)
        else:
            out.append(torch.rand(batch, 1, image_size, image_size, generator=g))
    present = torch.ones(batch, len(wrapper.modalities))
    if missing is not None:
        present[1:, wrapper.modalities.index(missing)] = 0.0
    return (*out, present)


def reference_outputs(model: I2M2Model, wrapper: ExportableModel, inputs: tuple[Tensor, ...]) -> dict[str, np.ndarray]:
    """The PyTorch model's own answer on ``inputs``, sample by sample (each with its modalities
    dropped from the batch as :meth:`I2M2Model.forward` expects): name -> ``[B, 4, 2]``."""
    *tensors, present = inputs
    rows: dict[str, list[np.ndarray]] = {n: [] for n in ("combined", *wrapper.terms)}
    with torch.no_grad():
        for b in range(present.shape[0]):
            batch = {m: t[b:b + 1] for m, t, on in zip(wrapper.modalities, tensors, present[b]) if on > 0.5}
            out = model(batch)
            rows["combined"].append(out.combined.numpy())
            for name in wrapper.terms:
                term = out.terms.get(name)
                if term is None:  # the expert left the product: compare the term the export computes
                    z = model.expert_logits(name, {m: t[b:b + 1] for m, t in zip(wrapper.modalities, tensors)},
                                            {m: torch.ones(1, dtype=torch.bool) for m in wrapper.modalities})
                    term = torch.log_softmax(z, dim=-1)
                rows[name].append(term.numpy())
    return {k: np.concatenate(v) for k, v in rows.items()}


def _runner(fmt: str, path: Path, names: list[str]) -> Callable[[tuple[Tensor, ...]], list[np.ndarray]]:
    """Load an exported file back with its own runtime: inputs -> outputs as arrays."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda xs: session.run(None, {n: x.numpy() for n, x in zip(names, xs)})
    if fmt == "torchscript":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in favour of torch.export
            module = torch.jit.load(str(path), map_location="cpu")
    else:
        module = torch.export.load(str(path)).module()

    def run(xs: tuple[Tensor, ...]) -> list[np.ndarray]:
        with torch.no_grad():
            return [o.numpy() for o in module(*xs)]

    return run


def _require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UsageError("--format onnx", f"needs the {', '.join(missing)} package(s): pip install 'i2m2-med[export]'")


def _write(fmt: str, wrapper: ExportableModel, inputs: tuple[Tensor, ...], tmp: Path) -> None:
    import warnings

    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = (tuple({0: batch} for _ in inputs),)  # one entry: the *inputs of forward
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracers' notes on constants (the fixed image size)
        if fmt == "torchscript":
            with torch.no_grad():
                traced = torch.jit.trace(wrapper, inputs, check_trace=False)
            torch.jit.save(traced, str(tmp))
        elif fmt == "exported-program":
            program = torch.export.export(wrapper, inputs, dynamic_shapes=dynamic)
            torch.export.save(program, str(tmp))
        else:
            program = torch.onnx.export(
                wrapper, inputs, dynamo=True, input_names=wrapper.input_names, output_names=wrapper.output_names,
                dynamic_shapes=dynamic, opset_version=ONNX_OPSET, verbose=False, report=False,
            )
            program.save(str(tmp), external_data=False)


def export_metadata(meta: CheckpointMeta, wrapper: ExportableModel, fmt: str, image_size: int) -> dict[str, Any]:
    """The sidecar JSON: what the graph takes and returns, and which model it is."""
    shapes = {"magnitude": ["batch", 1, image_size, image_size], "phase": ["batch", 1, image_size, image_size],
              "tabular": ["batch", int(meta.n_tabular)]}
    return {
        "format": fmt,
        "variant": meta.variant,
        "fingerprint": meta.fingerprint,
        "project_version": meta.project_version,
        "torch_version": torch.__version__,
        "image_size": image_size,
        "inputs": [{"name": m, "shape": shapes[m], "dtype": "float32"} for m in wrapper.modalities]
        + [{"name": "present", "shape": ["batch", len(wrapper.modalities)], "dtype": "float32",
            "columns": list(wrapper.modalities), "meaning": "1 where the modality is there, 0 where it is missing"}],
        "outputs": [{"name": n, "shape": ["batch", len(HEADS), 2], "dtype": "float32",
                     "meaning": "log-probabilities, classes (absent, present)"} for n in wrapper.output_names],
        "heads": list(HEADS),
        "tabular_features": list(meta.tabular_names),
        "image_inputs": "magnitude and phase as the modality transforms make them (i2m2_med.transforms)",
    }


def export_model(run: str | os.PathLike | None, fmt: str, out: str | os.PathLike) -> ExportResult:
    """Export the model of ``run`` (a run folder, a checkpoint file, or None for the bundled demo
    model) as ``fmt`` (one of :data:`FORMATS`) to ``out``, verified against PyTorch.

    Raises :class:`UsageError` for an unknown format, a missing ONNX package or an export whose
    outputs differ from PyTorch's by more than :data:`TOLERANCE` (nothing is left at ``out``
    then); :class:`~i2m2_med.errors.CheckpointError` for a bad checkpoint.
    """
    if fmt not in FORMATS:
        raise UsageError("--format", f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        _require_onnx()
    out = Path(out)
    if fmt == "exported-program" and out.suffix != SUFFIXES[fmt]:
        raise UsageError(out, f"an ExportedProgram file must end in {SUFFIXES[fmt]} (torch.export.load reads no other name)")
    if out.is_dir():
        raise UsageError(out, "is a folder; name the file to write")
    if not out.parent.is_dir():
        raise UsageError(out, "its folder does not exist")
    model, meta = load_checkpoint(resolve_checkpoint(run), map_location="cpu")
    model.eval()
    image_size = int(meta.config.image_size)
    wrapper = ExportableModel(model, image_size).eval()
    inputs = example_inputs(wrapper, meta.n_tabular, image_size)
    tmp = out.with_name(f".{out.stem}.tmp{os.getpid()}{SUFFIXES[fmt]}")
    try:
        _write(fmt, wrapper, inputs, tmp)
        run_export = _runner(fmt, tmp, wrapper.input_names)
        worst, checks = 0.0, 0
        for missing in (None, *wrapper.modalities):
            if missing is not None and len(wrapper.modalities) == 1:
                continue
            xs = example_inputs(wrapper, meta.n_tabular, image_size, batch=3, seed=1 + checks, missing=missing)
            got = run_export(xs)
            want = reference_outputs(model, wrapper, xs)
            for name, value in zip(("combined", *wrapper.terms), got):
                worst = max(worst, float(np.max(np.abs(np.asarray(value) - want[name]))))
            checks += 1
        if not worst <= TOLERANCE:
            raise UsageError(out, f"the {fmt} export differs from PyTorch by {worst:.2e} (allowed {TOLERANCE:g}); nothing written")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    metadata = export_metadata(meta, wrapper, fmt, image_size)
    metadata["max_abs_diff"] = worst
    metadata["checks"] = checks
    sidecar = out.with_name(out.name + ".json")
    write_json(sidecar, metadata)
    return ExportResult(out, sidecar, fmt, worst, checks, metadata)


__all__ = ["ExportResult", "ExportableModel", "FORMATS", "SUFFIXES", "TOLERANCE", "export_model"]
