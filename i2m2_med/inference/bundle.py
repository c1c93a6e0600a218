"""A model as a MONAI Bundle: ``configs/metadata.json``, ``configs/inference.json``, ``models/`` and
``docs/README.md`` (the model card).

``python -m monai.bundle run --config_file configs/inference.json --bundle_root B --dataset_dir IN
--output_dir OUT`` runs ``i2m2-med diagnose IN --out OUT --model B/models/model.safetensors``
(:func:`pipelines.diagnose.run`): the same predictions, files and statuses as the command, with
nothing downloaded. It needs i2m2-med installed (``required_packages_version``). The weights are
the project's safetensors checkpoint, which loads without unpickling anything; the MONAI
convention of a pickled ``model.pt`` is not followed for that reason.

``network_data_format`` describes the exported graph of :mod:`i2m2_med.inference.export` (its
inputs are the model-resolution images, the tabular vector and the presence flags; its outputs
the log-probabilities), the interface a MONAI pipeline would call; the inference config itself
starts from the raw files.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from i2m2_med import __version__
from i2m2_med.atomic import write_json, write_text
from i2m2_med.checkpoint import CheckpointMeta, load_checkpoint, read_checkpoint_meta
from i2m2_med.errors import UsageError
from i2m2_med.heads import HEADS, head_title
from i2m2_med.inference.loading import resolve_checkpoint
from i2m2_med.models import I2M2Model

MODEL_FILE = "model.safetensors"

REQUIRED_METADATA = ("version", "changelog", "monai_version", "pytorch_version", "numpy_version",
                     "required_packages_version", "task", "description", "authors", "copyright",
                     "network_data_format")
"""The keys the MONAI Bundle specification makes mandatory (MONAI reads the specification's
``optional_packages_version`` as ``required_packages_version`` now)."""

REQUIRED_PACKAGES = ("i2m2-med", "safetensors", "fastmri", "h5py", "pydicom", "nibabel", "highdicom")
"""The packages running the bundle needs, with the versions it was written with."""

TENSOR_KEYS = ("type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range",
               "is_patch_data", "channel_def")
"""The keys of a tensor format specifier in ``network_data_format``."""

INTENDED_USE = ("Research only. Not a medical device: no output may be used for the diagnosis or treatment of a "
                "patient.")


def _tensor(type_: str, fmt: str, channels: int, shape: list, value_range: list, channel_def: Mapping[int, str],
            modality: str = "MR") -> dict[str, Any]:
    return {"type": type_, "format": fmt, "modality": modality, "num_channels": channels, "spatial_shape": shape,
            "dtype": "float32", "value_range": value_range, "is_patch_data": False,
            "channel_def": {str(k): v for k, v in channel_def.items()}}


def network_data_format(meta: CheckpointMeta, model: I2M2Model) -> dict[str, Any]:
    """Inputs and outputs of the exported graph of ``model`` (loaded from the checkpoint of
    ``meta``), as MONAI tensor format specifiers."""
    size = int(meta.config.image_size)
    inputs: dict[str, Any] = {}
    if "magnitude" in model.modalities:
        inputs["magnitude"] = _tensor("image", "magnitude", 1, [size, size], [],
                                      {0: "magnitude of the coil-combined image, intensity-normalised per slice"})
    if "phase" in model.modalities:
        inputs["phase"] = _tensor("image", "phase", 1, [size, size], [-float(np.pi), float(np.pi)],
                                  {0: "phase of the complex image, radians"})
    if "tabular" in model.modalities:
        inputs["tabular"] = _tensor("series", "tabular", int(meta.n_tabular), [], [],
                                    dict(enumerate(meta.tabular_names)), modality="n/a")
    inputs["present"] = _tensor("series", "flags", len(model.modalities), [], [0, 1],
                                dict(enumerate(model.modalities)), modality="n/a")
    classes = {2 * h + c: f"log p({head_title(head)} {'present' if c else 'absent'})"
               for h, head in enumerate(HEADS) for c in (0, 1)}
    terms = [*model.expert_names, *(["prior"] if model.has_prior else [])]
    outputs = {f"logp_{name}": _tensor("probabilities", "classes", 2 * len(HEADS), [len(HEADS), 2], [], classes,
                                       modality="n/a") for name in ("combined", *terms)}
    return {"inputs": inputs, "outputs": outputs}


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def bundle_metadata(meta: CheckpointMeta, model: I2M2Model, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``configs/metadata.json`` of ``model`` and its checkpoint's ``meta`` (``metrics``: :func:`run_metrics`)."""
    test = metrics["test"].get("combined") or {}
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": __version__,
        "changelog": {__version__: f"i2m2-med {__version__}: model {meta.fingerprint} ({meta.variant})"},
        "monai_version": _version("monai"),
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {name: _version(name) for name in REQUIRED_PACKAGES},
        "name": f"i2m2-med knee MRI {meta.variant}",
        "task": "Knee MRI: ACL tear, meniscus tear, cartilage defect and other abnormality per slice and per study, "
                "from raw k-space (or DICOM / NIfTI images) as magnitude, phase and a tabular vector",
        "description": ("I2M2 (Madaan et al., NeurIPS 2024): one expert per modality (magnitude, phase, tabular) and a "
                        "joint model of all of them, combined as a normalised product of experts, four binary heads. "
                        "Variant " + meta.variant + f", image size {int(meta.config.image_size)} px. See docs/README.md."),
        "authors": "i2m2-med",
        "copyright": "i2m2-med contributors, MIT licence",
        "intended_use": INTENDED_USE,
        "data_source": ("synthetic knee k-space in the fastMRI format (i2m2_med.synth)" if metrics["synthetic"]
                        else "the user's own cohort (not described by the checkpoint)"),
        "data_type": "fastMRI h5 (k-space); DICOM and NIfTI images through the same transforms",
        "eval_metrics": {level: test[level].get("mean_pathologies") for level in ("in_view", "study", "slice")
                         if isinstance(test.get(level), Mapping)},
        "references": ["Madaan, Makino, Chopra, Cho. Jointly Modeling Inter- & Intra-Modality Dependencies for "
                       "Multi-modal Learning. NeurIPS 2024."],
        "model_fingerprint": meta.fingerprint,
        "weights_sha256": meta.weights_sha256,
        "heads": list(HEADS),
        "network_data_format": network_data_format(meta, model),
    }


def inference_config() -> dict[str, Any]:
    """``configs/inference.json``: diagnose ``dataset_dir`` into ``output_dir`` with the bundle's model."""
    return {
        "imports": ["$import sys", "$import importlib"],
        "bundle_root": ".",
        "dataset_dir": "$@bundle_root + '/data'",
        "output_dir": "$@bundle_root + '/eval'",
        "model_path": f"$@bundle_root + '/models/{MODEL_FILE}'",
        "device": "auto",
        "pipeline": "$importlib.import_module('i2m2_med_pipelines.diagnose')",
        "diagnose": "$@pipeline.run(@dataset_dir, @output_dir, model=@model_path, device=@device, progress=False)",
        "run": "$sys.exit(@diagnose)",
    }


def run_metrics(checkpoint: Path, meta: CheckpointMeta) -> dict[str, Any]:
    """The run's ``metrics.json`` beside the checkpoint when it is there (and belongs to this
    model), else the summary the checkpoint carries: ``{"test": summary, "cohort": ..., "synthetic": bool}``."""
    full: dict[str, Any] = {}
    path = Path(checkpoint).parent / "metrics.json"
    if path.is_file() and path.stat().st_size < 64 << 20:
        try:
            full = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            full = {}
        if full.get("variant") != meta.variant:
            full = {}
    carried = meta.metrics or {}
    test = ((full.get("test") or {}).get("summary") or (carried.get("summary") or {}).get("test") or {})
    if full:  # a generator manifest gave the learnable ceiling; real cohorts have none
        synthetic = (full.get("ceilings") or {}).get("learnable") is not None
    else:
        synthetic = carried.get("label_noise_ceiling_mean") is not None
    return {"test": test, "cohort": full.get("cohort") or {}, "synthetic": synthetic}


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def model_card(meta: CheckpointMeta, metrics: Mapping[str, Any]) -> str:
    """``docs/README.md``: intended use, training data, metrics with CIs, limitations, out-of-scope
    inputs (``metrics``: :func:`run_metrics`)."""
    summary = metrics["test"]
    cohort = metrics["cohort"]
    rows = []
    for name, label in (("combined", f"I2M2 ({meta.variant})"), ("position_baseline", "position only (which slice this is)")):
        block = summary.get(name) or {}
        cells = []
        for level in ("in_view", "study", "slice"):
            b = block.get(level) or {}
            ci = b.get("mean_pathologies_ci")
            cells.append(_fmt(b.get("mean_pathologies")) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else ""))
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    data = ("Synthetic: knee k-space in the exact fastMRI format from i2m2-med's generator (lesion sizes, positions\n"
            "and prevalences from the real fastMRI+ statistics; findings and their mimics placed by a regime). No real\n"
            "patient data was used; performance on real scanner data is unknown." if metrics["synthetic"]
            else "The user's own cohort; the checkpoint does not describe it beyond the split sizes below.")
    synthetic_limit = ("- Trained and tested on synthetic data only; the phase cues of the generator are a controlled knob, not\n"
                       "  a claim about clinical phase contrast.\n" if metrics["synthetic"] else "")
    splits = "; ".join(f"{s}: {(cohort.get(s) or {}).get('studies')} studies of {(cohort.get(s) or {}).get('subjects')} subjects"
                       for s in ("train", "val", "test") if cohort.get(s))
    return f"""# i2m2-med knee MRI model {meta.fingerprint} ({meta.variant})

**{INTENDED_USE}**

## What it does
Per slice and per study, the probability of four findings on a coronal PD / PD-FS knee MRI: ACL tear or
sprain, meniscus tear, cartilage defect, other abnormality (bone, cyst, effusion; the fastMRI+ label
mapping of i2m2-med). It reads the magnitude and the phase of the complex image (from raw fastMRI
k-space, or DICOM / NIfTI images with a phase series) and a tabular vector (age, sex, BMI, field
strength, acquisition), combined as I2M2's normalised product of per-modality experts and a joint model.

## Use
    python -m monai.bundle run --config_file configs/inference.json --bundle_root . \\
        --dataset_dir IN --output_dir OUT

runs `i2m2-med diagnose IN --out OUT --model models/{MODEL_FILE}` (i2m2-med {__version__} must be
installed): `predictions.csv`, one JSON per study with every expert's per-slice log-probabilities, a DICOM
SR per DICOM study. Nothing is downloaded. `i2m2-med export` writes the same model as an ONNX,
TorchScript or ExportedProgram graph (the interface in `network_data_format`).

## Training data
{data}
{splits + "." if splits else ""}

## Metrics (the run's own test split; 95% CIs, bootstrap over whole subjects)
Mean over ACL / MTEAR / CART. *In view*: each head on the slices where its anatomy is in view
(findings against their mimics); *study*: one score per study; *slice*: every slice.

| model | in view | study | slice |
| --- | --- | --- | --- |
{chr(10).join(rows)}

The held-out benchmark of the bundled demo model (a cohort nothing was trained or chosen on) is in the
project's BENCHMARKS.md, with the targets it misses.

## Limitations
{synthetic_limit}- Tells findings from their mimics only partly (see the in-view AUROC); much of the slice AUROC is
  the anatomy prior (compare the position-only row).
- Study-level probabilities are calibrated on the run's validation studies; they mean what they say
  only for data like the training data.

## Out-of-scope inputs
Other body parts, other contrasts and series orientations than coronal PD / PD-FS, and images unlike the
training data (a distribution-shift score above its threshold) are reported as `skipped` or
`out_of_scope` by diagnose, with the reason and no probabilities.
"""


def check_bundle_folder(out: str | os.PathLike) -> Path:
    """``out`` as a folder a bundle may be written to: new or empty, in an existing folder
    (:class:`UsageError` otherwise)."""
    root = Path(out)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UsageError(root, "exists and is not an empty folder; name a new folder for the bundle")
    if not root.parent.is_dir():
        raise UsageError(root, "its parent folder does not exist")
    return root


def write_bundle(run: str | os.PathLike | None, out: str | os.PathLike) -> Path:
    """Write the MONAI Bundle of the model of ``run`` (a run folder, a checkpoint, or None for the
    bundled demo model) into the folder ``out`` (created; refused when it exists and is not
    empty). Returns ``out``."""
    root = check_bundle_folder(out)
    source = resolve_checkpoint(run)
    model, meta = load_checkpoint(source)
    tmp = root.with_name(f".{root.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "configs").mkdir(parents=True)
        (tmp / "models").mkdir()
        (tmp / "docs").mkdir()
        shutil.copyfile(source, tmp / "models" / MODEL_FILE)
        if read_checkpoint_meta(tmp / "models" / MODEL_FILE).sha256 != meta.sha256:
            raise UsageError(source, "the copied checkpoint does not match the original")
        metrics = run_metrics(source, meta)
        write_json(tmp / "configs" / "metadata.json", bundle_metadata(meta, model, metrics))
        write_json(tmp / "configs" / "inference.json", inference_config())
        write_text(tmp / "docs" / "README.md", model_card(meta, metrics))
        if root.exists():
            root.rmdir()
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
