"""The distribution-shift score: does a study look like the data the model was trained on?

A model answers every input with probabilities, a knee or not. This score says when a study is
out of the model's scope by its content, whatever its tags say (noise, another body part, another
contrast), so that its probabilities are not reported as findings.

Method. For each expert of the model that reads the images alone
(:meth:`~i2m2_med.models.registry.I2M2Model.shift_experts`: the magnitude and phase experts, and
the joint model only when it fuses no tabular vector -- the FiLM-modulated features of the
bundled model's joint model move with the clinical values, so a knee without a clinical table
would look shifted), its penultimate features -- the pooled backbone features that enter its
heads layer, ``D`` numbers per slice -- are modelled by one Gaussian fitted on the training split's slices:
the mean and a shrunk covariance (Ledoit-Wolf, :class:`sklearn.covariance.LedoitWolf`, so the
``D x D`` covariance of a few thousand slices is well conditioned). A slice's score for an expert
is its squared Mahalanobis distance divided by ``D`` (about 1 for a typical training slice, so
the experts' scores share a scale); the expert's study score is the **median** over the study's
slices (a few unusual slices -- the edges of the volume, a motion artefact -- do not move it, a
study whose slices are mostly unlike the training data does); the study's ``shift_score`` is the
**largest** over the experts that ran (a shift seen by any one expert counts). A study without a
phase image is scored by its magnitude expert alone, which can only lower its score: missing
phase never makes a study out of scope by itself.

Why this and not an energy score: the energy (log-sum-exp of the logits) is read from the heads,
two logits per finding, trained to tell findings apart and never shown anything but knees; the
Mahalanobis distance reads the whole feature vector the heads see, is cheap (one ``D x D``
product per slice and expert, ``D`` = 384 for the demo model) and needs no data beyond the
training split. BENCHMARKS.md (section ``shift``) records its cost and how well it separates
in-distribution studies from noise, other body parts and other contrasts.

Threshold: the 99th percentile (:data:`QUANTILE`) of a log-normal fitted to the validation
studies' ``shift_score`` (studies the statistics were not fitted on), so about 1 % of
in-distribution studies are expected above it. Not the empirical percentile: a validation split
holds tens of studies, so its 99th percentile is in effect its largest score, which new
in-distribution studies cross far more often than 1 % of the time (BENCHMARKS.md, section
``shift``, measures the rate on held-out knees). The scores are positive and right-skewed (a
squared distance over ``D``), so their logarithm is modelled as normal. Above it, ``diagnose`` reports the study as ``out_of_scope`` with the score,
the threshold and the reason, and no probabilities.

Storage: the means, precisions (inverse covariances) and the threshold are persistent buffers of
the model (:meth:`i2m2_med.models.registry.I2M2Model.set_shift_statistics`), so the checkpoint's
sha256, HMAC and fingerprint cover them. A model without them, or a variant without such an
expert (``tab``, ``inter`` with tabular fusion), keeps working: its studies are never out of
scope by content and their ``shift`` block says the score is unavailable. ``train`` fits them at
the end of training (:func:`fit_shift`, one pass over the training and validation slices);
``i2m2-med fit-shift RUN --data COHORT`` adds them to an existing run (:func:`fit_shift_run`).
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from statistics import NormalDist
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor

from i2m2_med.models import I2M2Model

QUANTILE = 0.99
"""The threshold: this quantile of the log-normal fitted to the validation studies' shift scores."""

STUDY_RULE = "median"
METHOD = ("Mahalanobis distance of each image expert's penultimate features to the training slices "
          "(Ledoit-Wolf shrunk covariance), squared and divided by the feature width; median over a study's "
          "slices; largest over the experts that ran")
UNAVAILABLE = "distribution-shift score unavailable: the model carries no shift statistics (i2m2-med fit-shift adds them)"


# ---- features ---------------------------------------------------------------------------------


@contextlib.contextmanager
def feature_tap(model: I2M2Model, experts: tuple[str, ...] | None = None) -> Iterator[dict[str, Tensor]]:
    """Capture the penultimate features of ``experts`` (default: the model's image experts) on
    every forward pass inside the block: the yielded dict maps expert -> ``[B, D]`` of the last
    pass (an expert dropped from that pass is absent)."""
    experts = model.shift_experts() if experts is None else experts
    captured: dict[str, Tensor] = {}
    handles = []
    owner = threading.get_ident()  # a model shared between threads (the app's sessions) feeds each tap its own passes

    def hook(name: str):
        def grab(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            if threading.get_ident() == owner:
                captured[name] = args[0].detach()
        return grab

    for name in experts:
        handles.append(model.experts[name].head.register_forward_pre_hook(hook(name)))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def has_shift(model: I2M2Model) -> bool:
    """True when ``model`` carries fitted shift statistics."""
    return bool(model.shift_statistics())


def fitted_experts(model: I2M2Model) -> tuple[str, ...]:
    stats = model.shift_statistics()
    prefix = model.SHIFT_PREFIX
    return tuple(e for e in model.shift_experts() if f"{prefix}{e}_mean" in stats)


def threshold(model: I2M2Model) -> float | None:
    stats = model.shift_statistics()
    t = stats.get(f"{model.SHIFT_PREFIX}threshold")
    return None if t is None else float(t.reshape(-1)[0])


def slice_scores(model: I2M2Model, features: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
    """Per expert with statistics, the slices' squared Mahalanobis distance / D, ``(B,)`` float64."""
    stats = model.shift_statistics()
    prefix = model.SHIFT_PREFIX
    out: dict[str, np.ndarray] = {}
    for e, x in features.items():
        mean = stats.get(f"{prefix}{e}_mean")
        if mean is None:
            continue
        precision = stats[f"{prefix}{e}_precision"]
        z = x.float().reshape(x.shape[0], -1) - mean.to(x.device)
        d2 = ((z @ precision.to(x.device)) * z).sum(dim=1) / z.shape[1]
        out[e] = d2.double().cpu().numpy()
    return out


def study_shift(model: I2M2Model, per_expert: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The JSON-ready shift block of a study from its slices' scores per expert: ``available``,
    ``score``, ``threshold``, ``out_of_scope``, ``reason`` (words; None in scope), ``experts``
    (each expert's study score) and ``method``; or, for a model without statistics,
    ``available: false`` and a ``note``."""
    t = threshold(model)
    if t is None:
        return {"available": False, "note": UNAVAILABLE}
    experts = {e: float(np.median(v)) for e, v in per_expert.items() if len(v)}
    if not experts:
        return {"available": False, "note": "distribution-shift score unavailable: no image expert ran on this study"}
    worst = max(experts, key=experts.get)
    score = experts[worst]
    out = score > t
    reason = None
    if out:
        reason = (f"out of scope by content: distribution-shift score {score:.2f} above the threshold {t:.2f} (the "
                  f"{QUANTILE:.0%} point of a log-normal fitted to the validation studies' scores; the {worst} expert's "
                  "features are the farthest from the training data): the images do not look like the knee MRI the "
                  "model was trained on")
    return {"available": True, "score": score, "threshold": t, "out_of_scope": bool(out), "reason": reason,
            "experts": experts, "method": METHOD}


def out_of_scope_reason(block: Mapping[str, Any] | None) -> str | None:
    """The reason in words when a shift block says out of scope, else None."""
    if not block or not block.get("out_of_scope"):
        return None
    return str(block.get("reason") or "out of scope by content")


# ---- fitting ----------------------------------------------------------------------------------


def dataset_features(model: I2M2Model, dataset: Any, batch_size: int, device: torch.device) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every slice's features per image expert (float64 ``(N, D)``; rows where the expert did not
    run are NaN) and the slices' study ids."""
    from torch.utils.data import DataLoader

    from i2m2_med.data.dataset import collate_samples

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate_samples)
    experts = model.shift_experts()
    chunks: dict[str, list[np.ndarray]] = {e: [] for e in experts}
    ids: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), feature_tap(model, experts) as feats:
            for batch in loader:
                moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}
                moved["present"] = {k: v.to(device) for k, v in batch["present"].items()}
                feats.clear()
                out = model(moved)
                b = out.combined.shape[0]
                for e in experts:
                    if e not in feats:
                        chunks[e].append(np.full((b, model.shift_feature_dim(e)), np.nan))
                        continue
                    x = feats[e].double().cpu().numpy().reshape(b, -1)
                    keep = out.mask.get(e)
                    if keep is not None:
                        x[~keep.cpu().numpy()] = np.nan
                    chunks[e].append(x)
                ids.extend(batch["study_id"])
    finally:
        model.train(was_training)
    return {e: np.concatenate(v) if v else np.zeros((0, model.shift_feature_dim(e))) for e, v in chunks.items()}, np.asarray(ids, dtype=object)


def study_scores(model: I2M2Model, features: Mapping[str, np.ndarray], ids: np.ndarray) -> np.ndarray:
    """The shift score of every study of ``ids`` (in first-seen order) from its slices' features
    (:func:`dataset_features`) with the model's statistics: the same rule as :func:`study_shift`."""
    per_slice = {}
    for e, x in features.items():
        rows = np.isfinite(x).all(axis=1)
        s = np.full(len(x), np.nan)
        if rows.any():
            s[rows] = slice_scores(model, {e: torch.from_numpy(x[rows]).float()})[e]
        per_slice[e] = s
    scores = []
    for sid in dict.fromkeys(ids.tolist()):
        sel = ids == sid
        per_expert = [np.median(v[sel][np.isfinite(v[sel])]) for v in per_slice.values() if np.isfinite(v[sel]).any()]
        if per_expert:
            scores.append(max(per_expert))
    return np.asarray(scores, dtype=np.float64)


def lognormal_quantile(scores: Any) -> float:
    """The :data:`QUANTILE` point of the log-normal fitted to positive ``scores`` (mean and sample
    standard deviation of their logarithms); a single score is its own threshold."""
    logs = np.log(np.maximum(np.asarray(scores, dtype=float), 1e-12))
    spread = float(np.std(logs, ddof=1)) if logs.size > 1 else 0.0
    return float(np.exp(logs.mean() + NormalDist().inv_cdf(QUANTILE) * spread))


def fit_shift(model: I2M2Model, train: Any, val: Any, batch_size: int = 64,
              device: str | torch.device | None = None) -> dict[str, Any]:
    """Fit the shift statistics of ``model`` on the slices of ``train`` (a
    :class:`~i2m2_med.data.dataset.SliceDataset`, no augmentation) and the threshold on the studies
    of ``val``, and set them on the model. Returns the JSON-ready record for ``metrics.json``
    (``fitted`` False with a note when a split is empty or an expert never ran)."""
    from sklearn.covariance import LedoitWolf

    record: dict[str, Any] = {"method": METHOD, "study_rule": STUDY_RULE, "quantile": QUANTILE, "fitted": False}
    experts = model.shift_experts()
    if not experts:
        record["note"] = "not fitted: the variant has no image expert"
        return record
    if len(train) == 0 or len(val) == 0:
        record["note"] = "not fitted: the training or validation split is empty"
        return record
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    features, _ = dataset_features(model, train, batch_size, dev)
    stats: dict[str, Tensor] = {}
    shrinkage: dict[str, float] = {}
    for e in experts:
        x = features[e][np.isfinite(features[e]).all(axis=1)]
        if len(x) < 2:
            continue
        lw = LedoitWolf(assume_centered=False).fit(x)
        stats[f"{model.SHIFT_PREFIX}{e}_mean"] = torch.from_numpy(lw.location_).float()
        stats[f"{model.SHIFT_PREFIX}{e}_precision"] = torch.from_numpy(np.linalg.pinv(lw.covariance_, hermitian=True)).float()
        shrinkage[e] = float(lw.shrinkage_)
    if not shrinkage:
        record["note"] = "not fitted: no image expert ran on the training slices"
        return record
    stats[f"{model.SHIFT_PREFIX}threshold"] = torch.tensor([0.0])  # a placeholder: the scores do not read it
    model.set_shift_statistics(stats)
    vfeat, vids = dataset_features(model, val, batch_size, dev)
    scores = study_scores(model, vfeat, vids)
    if len(scores) == 0:
        model.set_shift_statistics(None)
        record["note"] = "not fitted: no validation study was scored"
        return record
    t = lognormal_quantile(scores)
    stats[f"{model.SHIFT_PREFIX}threshold"] = torch.tensor([t])
    model.set_shift_statistics(stats)
    n_train = {e: int(np.isfinite(features[e]).all(axis=1).sum()) for e in shrinkage}
    record.update(
        fitted=True, experts=list(shrinkage), threshold=t, train_slices=n_train, val_studies=int(len(scores)),
        shrinkage=shrinkage, feature_dims={e: model.shift_feature_dim(e) for e in shrinkage},
        val_scores={"median": float(np.median(scores)), "max": float(scores.max()),
                    "empirical_quantile": float(np.quantile(scores, QUANTILE))},
        note=f"threshold: the {QUANTILE:.0%} point of a log-normal fitted to the {len(scores)} validation studies' "
             "scores; above it a study is out of scope and its probabilities are not reported",
    )
    return record


def fit_shift_run(run: str | os.PathLike, data_dir: str | os.PathLike, *, batch_size: int = 64,
                  allow_other_data: bool = False) -> dict[str, Any]:
    """Add shift statistics to an existing run: load its checkpoint (a run folder or a checkpoint
    file), rebuild the training and validation splits of the cohort it was trained on, fit
    (:func:`fit_shift`), and write the checkpoint back in place (same weights, metadata and
    metrics, plus the statistics and ``metrics["shift"]``), and ``metrics.json`` beside it when
    there is one. Refuses a cohort whose data fingerprint is not the run's (the statistics must
    describe the model's own training data) unless ``allow_other_data``. Returns the record."""
    import json

    from i2m2_med.atomic import write_json
    from i2m2_med.checkpoint import load_checkpoint, save_checkpoint
    from i2m2_med.data.cache import TensorCache
    from i2m2_med.data.cohort import data_fingerprint
    from i2m2_med.errors import UsageError
    from i2m2_med.inference.loading import resolve_checkpoint
    from i2m2_med.training.datamodule import I2M2DataModule

    path = resolve_checkpoint(run)
    model, meta = load_checkpoint(path)
    cfg = meta.config
    data = Path(data_dir)
    if not data.is_dir():
        raise UsageError(data, "no such cohort folder")
    cache = TensorCache.of_cohort(data, cfg.image_size) if cfg.training.tensor_cache else None
    dm = I2M2DataModule(cfg, data_dir=data, seed=int(cfg.training.seed), tensor_cache=cache)
    got = data_fingerprint(dm.cohort)
    if got != meta.data_fingerprint and not allow_other_data:
        raise UsageError(data, f"data fingerprint {got[:12]} is not the run's training data ({meta.data_fingerprint[:12]}); "
                               "give the cohort the model was trained on")
    record = fit_shift(model, dm.datasets["train"], dm.datasets["val"], batch_size=batch_size)
    if not record["fitted"]:
        raise UsageError(data, record.get("note", "shift statistics not fitted"))
    metrics = dict(meta.metrics)
    metrics["shift"] = record
    mode = path.stat().st_mode & 0o777  # the rewritten files keep their permissions (a bundled model is world-readable)
    save_checkpoint(path, model, cfg, meta.variant, meta.n_tabular, meta.tabular_names, metrics,
                    meta.data_fingerprint, extra=meta.extra)
    metrics_json = path.parent / "metrics.json"
    if metrics_json.is_file():
        doc = json.loads(metrics_json.read_text(encoding="utf-8"))
        doc["shift"] = record
        json_mode = metrics_json.stat().st_mode & 0o777
        write_json(metrics_json, doc)
        metrics_json.chmod(json_mode)
    path.chmod(mode)
    return record


__all__ = ["METHOD", "QUANTILE", "UNAVAILABLE", "dataset_features", "feature_tap", "fit_shift", "fit_shift_run", "has_shift",
           "out_of_scope_reason", "slice_scores", "study_scores", "study_shift", "threshold"]
