"""A trained model measured on a held-out cohort (:mod:`i2m2_med.synth.heldout`).

The same tables as a run's own test split (:func:`i2m2_med.training.results.prediction_metrics`:
slice, study and in-view AUROC with subject-clustered CIs, the position-only baseline the model's
training split gave, the study-level calibration the model carries), over every study of a cohort
that nothing of the model was trained, stopped, chosen or calibrated on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from i2m2_med.data.cache import TensorCache
from i2m2_med.data.cohort import Cohort, load_cohort
from i2m2_med.data.dataset import SliceDataset
from i2m2_med.errors import UsageError
from i2m2_med.inference.loading import load_model
from i2m2_med.synth.heldout import generate_heldout
from i2m2_med.training.results import predict_dataset, prediction_metrics


def ensure_heldout(base: str | os.PathLike, regime: str, volumes: int, image_size: int = 64, workers: int = 2,
                   progress: Callable[[str], None] | None = None) -> tuple[Cohort, TensorCache]:
    """The held-out cohort of ``regime`` in ``base/heldout_<regime>_<volumes>`` with its tensor
    cache, generated there on first use (its manifest, written last, marks it complete)."""
    root = Path(base) / f"heldout_{regime}_{volumes}"
    cache = TensorCache.of_cohort(root, image_size)
    if not (root / "manifest.json").is_file():
        if progress:
            progress(f"generating the held-out {regime} cohort ({volumes} volumes) into {root}")
        generate_heldout(regime, root, cache, workers=workers, volumes=volumes)
    return load_cohort(root, tensor_cache=cache), cache


def evaluate_checkpoint(
    checkpoint: str | os.PathLike | None,
    cohort: Cohort,
    tensor_cache: TensorCache | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 128,
    split: str = "heldout",
) -> dict[str, Any]:
    """Predict every slice of ``cohort`` with the model of ``checkpoint`` (a file, a run folder,
    or None for the bundled model) and measure it; returns ``prediction_metrics`` output plus
    ``"model"`` (variant, fingerprint) and ``"slices_per_s"``."""
    model, meta = load_model(checkpoint)
    if list(meta.tabular_names) != list(cohort.tabular_names):
        raise UsageError(cohort.root, f"the cohort's tabular features {cohort.tabular_names} are not the model's {meta.tabular_names}")
    prior = (meta.metrics or {}).get("position_prior")
    position_prior = None if not prior else np.asarray(prior["rates"], dtype=np.float64)
    dataset = SliceDataset(cohort, None, image_size=meta.config.image_size, cache_size=0, tensor_cache=tensor_cache)
    pred = predict_dataset(model, dataset, batch_size=batch_size)
    out = prediction_metrics(
        pred, split, meta.config.training.aggregation, n_boot=n_boot, seed=seed, in_view=cohort.in_view,
        subjects=cohort.subjects, position_prior=position_prior,
        n_slices={s.study_id: s.n_slices for s in cohort.studies},
        study_calibration=model.study_calibration_map(),
    )
    out["model"] = {"variant": meta.variant, "fingerprint": meta.fingerprint, "checkpoint": str(meta.path)}
    out["slices_per_s"] = pred["slices_per_s"]
    return out
