"""Everything the app computes, through :mod:`i2m2_med` only, and cached so that moving a slider
never reruns the model.

* the model: loaded once per checkpoint file (``st.cache_resource``);
* a study's prediction: once per (study, model fingerprint, withheld modalities)
  (``st.cache_resource``: the arrays are shared, never copied);
* the display planes of a slice (magnitude, phase, k-space), the saliency maps and the tabular
  attributions: ``st.cache_data`` per (study, slice, ...).

:data:`COUNTS` counts what really ran (model forward passes, predictions, saliency maps), so the
tests can check that a rerun served everything from the caches.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import streamlit as st

from viewer.sources import StudyRef, clinical_row, open_study

COUNTS: Counter = Counter()
"""``forward``: forward passes of the loaded model; ``predict``: studies predicted;
``saliency``: saliency maps computed; ``attributions``: tabular attributions computed;
``planes``: slices read for display."""
_COUNT_LOCK = threading.Lock()
DISPLAY_SIZE = 320


def _count(name: str, n: int = 1) -> None:
    with _COUNT_LOCK:
        COUNTS[name] += n


# ---- the model ----------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A loaded checkpoint: the model (eval mode), its metadata and fingerprint."""

    model: Any
    meta: Any
    path: str
    fingerprint: str
    bundled: bool

    @property
    def key(self) -> str:
        return f"{self.path}|{self.fingerprint}"

    @property
    def experts(self) -> tuple[str, ...]:
        return tuple(self.model.expert_names)


def phase_filter_of(lm: LoadedModel) -> tuple[float, int] | None:
    """``(sigma in pixels of the model input, model input size)`` when the model's phase expert and
    joint model see the high-pass phase, else None."""
    cfg = lm.meta.config
    if cfg.model.phase_input.filter != "highpass":
        return None
    return float(cfg.model.phase_input.sigma_px), int(cfg.image_size)


@st.cache_data(show_spinner=False, max_entries=160)
def highpass_phase(ref_key: str, index: int, sigma_px: float, model_size: int, _phase: np.ndarray) -> np.ndarray:
    """The displayed slice's phase as the model's phase input filter leaves it (cached per slice)."""
    from i2m2_med.models.phase_filter import highpass_phase_image

    return highpass_phase_image(_phase, sigma_px, model_size)


def model_location(path: Path | None) -> tuple[str, str]:
    """``(checkpoint file, size-mtime stamp)`` of the configured model (None: the bundled one).
    Raises :class:`~i2m2_med.errors.CheckpointError` when there is none."""
    from i2m2_med.inference.loading import resolve_checkpoint

    file = resolve_checkpoint(path)
    st_ = Path(file).stat()
    return str(Path(file).resolve()), f"{st_.st_size}-{st_.st_mtime_ns}"


@st.cache_resource(show_spinner="Loading the model...", max_entries=4)
def load_model(checkpoint: str, stamp: str, bundled: bool, device: str = "auto") -> LoadedModel:
    """Load a checkpoint once per file version onto ``device`` (``I2M2_DEVICE``; UsageError for a
    GPU that is not there); every forward pass is counted in :data:`COUNTS`."""
    from i2m2_med.inference.loading import load_model as load
    from i2m2_med.inference.loading import resolve_device

    model, meta = load(checkpoint, map_location=resolve_device(device, "I2M2_DEVICE"))
    model.register_forward_hook(lambda module, args, output: _count("forward"))
    return LoadedModel(model=model, meta=meta, path=checkpoint, fingerprint=str(meta.fingerprint), bundled=bundled)


@st.cache_resource(show_spinner="Preparing the saliency tools (first use only)...")
def warm_monai() -> bool:
    """Import MONAI's visualisation module once (it is slow to import)."""
    import monai.visualize  # noqa: F401

    return True


# ---- predictions -------------------------------------------------------------------------------------


def _predict(lm: LoadedModel, ref: StudyRef, drop: tuple[str, ...]) -> Any:
    from i2m2_med.inference.predict import predict_study

    study = open_study(ref)
    row = clinical_row(ref, study)
    _count("predict")
    return predict_study(lm.model, lm.meta, study, clinical_row=row, drop_modalities=drop)


@st.cache_resource(show_spinner=False, max_entries=48)
def prediction(ref_key: str, model_key: str, drop: tuple[str, ...], _ref: StudyRef, _lm: LoadedModel) -> Any:
    """The :class:`~i2m2_med.inference.prediction.StudyPrediction` of a study (``drop``: withheld modalities)."""
    return _predict(_lm, _ref, tuple(drop))


# ---- display planes ------------------------------------------------------------------------------------


@dataclass
class Planes:
    """One slice for display, all at the model's 320 x 320 geometry (row 0 at the top).

    ``magnitude`` (320, 320) float32, normalised as the model sees it (1.0 ~ the 99th
    percentile); ``phase`` (320, 320) float32 radians or None when missing; ``kspace`` (R, W)
    float32 log magnitude (natural log); ``kspace_derived``: True when the k-space is the Fourier
    transform of the image (DICOM / NIfTI store no raw k-space)."""

    magnitude: np.ndarray | None
    phase: np.ndarray | None
    kspace: np.ndarray | None
    kspace_derived: bool


def compute_planes(ref: StudyRef, index: int) -> Planes:
    from i2m2_med.inference.streaming import modality_pipeline

    study = open_study(ref)
    try:
        raw = study.read_slice(int(index))
    finally:
        study.close()
    _count("planes")
    out = modality_pipeline(DISPLAY_SIZE)(dict(raw))
    present = out.get("present") or {}

    def plane(name: str) -> np.ndarray | None:
        x = out.get(name)
        if x is None or not present.get(name, True):
            return None
        return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32).reshape(DISPLAY_SIZE, DISPLAY_SIZE)

    magnitude, phase = plane("magnitude"), plane("phase")
    if "kspace" in raw:
        k = np.asarray(raw["kspace"])
        amplitude = np.sqrt((np.abs(k) ** 2).sum(axis=0)) if k.ndim == 3 else np.abs(k)
        derived = False
    else:
        base = magnitude if magnitude is not None else np.zeros((DISPLAY_SIZE, DISPLAY_SIZE), np.float32)
        image = base * np.exp(1j * phase) if phase is not None else base.astype(np.complex64)
        amplitude = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image), norm="ortho")))
        derived = True
    floor = max(float(np.percentile(amplitude, 1)), 1e-12)
    kspace = np.log(np.maximum(amplitude, floor)).astype(np.float32)
    return Planes(magnitude, phase, kspace, derived)


@st.cache_data(show_spinner=False, max_entries=160)
def planes(ref_key: str, index: int, _ref: StudyRef) -> Planes:
    return compute_planes(_ref, index)


# ---- saliency and attributions -------------------------------------------------------------------------


def model_sample(lm: LoadedModel, ref: StudyRef, index: int) -> dict[str, Any]:
    """The transformed slice as the model sees it, with the study's tabular vector."""
    import torch

    from i2m2_med.data.sample import image_sample
    from i2m2_med.inference.predict import study_tabular
    from i2m2_med.inference.streaming import modality_pipeline

    _count("samples")
    study = open_study(ref)
    try:
        sample = image_sample(study, int(index), modality_pipeline(int(lm.meta.config.image_size)))
        vec, _ = study_tabular(study, lm.meta, clinical_row(ref, study))
    finally:
        study.close()
    if vec is not None:
        sample["tabular"] = torch.from_numpy(vec)
    return sample


@st.cache_data(show_spinner=False, max_entries=32)
def slice_sample(ref_key: str, model_key: str, index: int, _ref: StudyRef, _lm: LoadedModel) -> dict[str, Any]:
    """:func:`model_sample`, read and transformed once per slice for all the experts' maps."""
    return model_sample(_lm, _ref, index)


def compute_saliency(lm: LoadedModel, ref: StudyRef, index: int, expert: str, head: str, method: str,
                     sample: dict[str, Any] | None = None) -> np.ndarray:
    from i2m2_med.evidence import saliency

    if sample is None:
        sample = model_sample(lm, ref, index)
    _count("saliency")
    return saliency(lm.model, sample, expert, head, method=method)


@st.cache_data(show_spinner=False, max_entries=512)
def saliency_map(ref_key: str, model_key: str, index: int, expert: str, head: str, method: str,
                 _ref: StudyRef, _lm: LoadedModel) -> np.ndarray:
    """(h, w) saliency at the model's image size (see :func:`i2m2_med.evidence.saliency`)."""
    sample = slice_sample(ref_key, model_key, index, _ref, _lm)
    return compute_saliency(_lm, _ref, index, expert, head, method, sample)


def compute_tabular(lm: LoadedModel, ref: StudyRef) -> Any:
    from i2m2_med.evidence import tabular_attributions
    from i2m2_med.inference.predict import study_tabular

    if "tabular" not in lm.experts:
        return None
    study = open_study(ref)
    vec, _ = study_tabular(study, lm.meta, clinical_row(ref, study))
    if vec is None:
        return None
    _count("attributions")
    return tabular_attributions(lm.model, vec, names=list(lm.meta.tabular_names))


@st.cache_data(show_spinner=False, max_entries=64)
def tabular_attribution(ref_key: str, model_key: str, _ref: StudyRef, _lm: LoadedModel) -> Any:
    return compute_tabular(_lm, _ref)


# ---- evidence from a prediction (no model run) ------------------------------------------------------


def slice_output(pred: Any, position: int) -> SimpleNamespace:
    """The terms and product of one slice, shaped like a model output ``[1, 4, 2]``."""
    return SimpleNamespace(
        terms={t: v[position:position + 1] for t, v in pred.terms.items()},
        combined=pred.combined[position:position + 1],
    )


def study_output(pred: Any) -> SimpleNamespace:
    """The study-level contributions as a one-sample output: each term's log-probabilities
    ``[0, c]`` have log-odds ``c`` (its contribution), and their product has the summed log-odds."""
    terms = {}
    total = np.zeros(4)
    for t, c in pred.contributions.items():
        c = np.asarray(c, dtype=np.float64)
        terms[t] = np.stack([np.zeros(4), c], axis=-1)[None]
        total = total + c
    combined = np.stack([-np.logaddexp(0.0, total), total - np.logaddexp(0.0, total)], axis=-1)[None]
    return SimpleNamespace(terms=terms, combined=combined)


def expert_p(pred: Any) -> dict[str, np.ndarray]:
    """Each term's own p(y=1) per slice: term -> (S, 4)."""
    return {t: np.exp(v[..., 1].astype(np.float64)) for t, v in pred.terms.items()}


class OutOfScopeRecord(ValueError):
    """A ``diagnose`` record of a study out of the model's scope: ``reason`` and ``shift`` (the
    record's shift block, or None when the tags decided)."""

    def __init__(self, reason: str, shift: dict[str, Any] | None):
        super().__init__(reason)
        self.reason = reason
        self.shift = shift


def read_record(path: str) -> dict[str, Any]:
    """A ``diagnose`` per-study JSON; ValueError with one line when it is not one,
    :class:`OutOfScopeRecord` when it is an out-of-scope study's."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{Path(path).name}: not a readable JSON file ({exc.__class__.__name__})") from None
    if isinstance(doc, dict) and doc.get("status") == "out_of_scope":
        raise OutOfScopeRecord(str(doc.get("error") or "out of scope"), doc.get("shift"))
    if not isinstance(doc, dict) or doc.get("status") not in (None, "ok") or not doc.get("slices"):
        reason = doc.get("error") if isinstance(doc, dict) else None
        raise ValueError(f"{Path(path).name}: no prediction in this record" + (f" ({reason})" if reason else ""))
    return doc


@st.cache_data(show_spinner=False, max_entries=64)
def record_prediction(ref_key: str, _ref: StudyRef) -> tuple[Any, dict[str, Any]]:
    """The prediction and summary of a study opened from a ``diagnose`` JSON (no images)."""
    from i2m2_med.inference.prediction import StudyPrediction

    doc = read_record(_ref.record or _ref.path)
    pred = StudyPrediction.from_json(doc)
    summary = {
        "study_id": pred.study_id, "patient_id": None, "format": pred.format, "n_slices": pred.n_slices,
        "modalities": list(pred.modalities), "missing": list(pred.missing_modalities), "labels": None,
        "boxes": [], "notes": [], "tags": {}, "row0_inferior": False, "directions": None,
    }
    return pred, summary
