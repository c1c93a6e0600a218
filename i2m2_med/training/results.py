"""What a run is evaluated on and what it gives back: the predictions of a split, their slice-,
study- and in-view metrics (:func:`i2m2_med.metrics.tables.metrics_table`), the label-noise
ceiling read from a synthetic cohort's manifest, the file names of a run folder and
:class:`TrainResult`, the typed result of :func:`i2m2_med.training.fit.train`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from i2m2_med.atomic import atomic_path, json_safe
from i2m2_med.data.cohort import in_view_rows
from i2m2_med.data.dataset import SliceDataset, collate_samples
from i2m2_med.heads import HEADS, PATHOLOGY_HEADS
from i2m2_med.metrics.aggregation import aggregation_rule, study_level
from i2m2_med.metrics.baselines import (
    fit_position_prior,
    position_scores,
    relative_position,
)
from i2m2_med.metrics.calibration import fit_study_calibration
from i2m2_med.metrics.tables import in_view_metrics, metrics_table
from i2m2_med.models import I2M2Model

CHECKPOINT_NAME = "model.safetensors"
METRICS_NAME = "metrics.json"


PREDICTIONS_NAME = "predictions.csv"
CONFIG_NAME = "config.yaml"


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class StageResult:
    """One fitting stage of a run: an entry of ``training.stages`` in ``metrics.json``.

    ``objective``: ``"experts"`` (the warm start) or ``"product"``; ``best_epoch`` and
    ``best_val_auroc_mean``: the epoch whose weights were kept and its validation mean AUROC (None
    when no validation ran); ``seconds``: the whole stage, ``train_seconds`` / ``val_seconds`` its
    training and validation loops; ``train_samples``: slices seen in training over all processes;
    ``history``: one record per validation epoch.
    """

    objective: str
    epochs_run: int
    best_epoch: int | None
    best_val_auroc_mean: float | None
    stopped_early: bool
    seconds: float
    train_seconds: float
    val_seconds: float
    train_samples: int
    history: tuple[Mapping[str, Any], ...]

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> "StageResult":
        return cls(
            objective=str(record["objective"]),
            epochs_run=int(record["epochs_run"]),
            best_epoch=None if record["best_epoch"] is None else int(record["best_epoch"]),
            best_val_auroc_mean=_float_or_none(record["best_val_auroc_mean"]),
            stopped_early=bool(record["stopped_early"]),
            seconds=float(record["seconds"]),
            train_seconds=float(record["train_seconds"]),
            val_seconds=float(record["val_seconds"]),
            train_samples=int(record["train_samples"]),
            history=tuple(record["history"]),
        )


@dataclass(frozen=True)
class TrainResult:
    """What :func:`~i2m2_med.training.fit.train` gives back on the process that evaluates.

    ``metrics`` is exactly the content of ``RUN_DIR/metrics.json`` (:meth:`to_json` returns a
    copy); the other fields are the parts of it that callers read, typed. Field names follow the
    JSON keys: ``epochs_run`` ... ``samples_per_s`` are those of ``training``;
    ``test_mean_pathologies`` maps a level (``slice``, ``study``, ``in_view``) to the combined
    test AUROC over ACL/MTEAR/CART; ``calibration`` is the record of the prior refitted after
    training (offsets None when nothing was fitted).
    """

    run_dir: Path
    metrics: Mapping[str, Any]
    variant: str
    experts: tuple[str, ...]
    seed: int
    data_fingerprint: str
    stages: tuple[StageResult, ...]
    epochs_run: int
    best_epoch: int | None
    best_val_auroc_mean: float | None
    time_s: float
    train_time_s: float
    train_slices: int
    samples_per_s: float | None
    label_noise_ceiling_mean: float | None
    test_mean_pathologies: Mapping[str, float | None]
    calibration: Mapping[str, Any]

    @classmethod
    def from_metrics(cls, run_dir: str | Path, metrics: Mapping[str, Any]) -> "TrainResult":
        """The result of the run in ``run_dir`` from its (JSON-ready) ``metrics.json`` content."""
        t = metrics["training"]
        return cls(
            run_dir=Path(run_dir),
            metrics=metrics,
            variant=str(metrics["variant"]),
            experts=tuple(metrics["experts"]),
            seed=int(metrics["seed"]),
            data_fingerprint=str(metrics["data_fingerprint"]),
            stages=tuple(StageResult.from_json(s) for s in t["stages"]),
            epochs_run=int(t["epochs_run"]),
            best_epoch=None if t["best_epoch"] is None else int(t["best_epoch"]),
            best_val_auroc_mean=_float_or_none(t["best_val_auroc_mean"]),
            time_s=float(t["time_s"]),
            train_time_s=float(t["train_time_s"]),
            train_slices=int(t["train_slices"]),
            samples_per_s=_float_or_none(t["samples_per_s"]),
            label_noise_ceiling_mean=_float_or_none(metrics["label_noise_ceiling_mean"]),
            test_mean_pathologies={k: _float_or_none(v) for k, v in metrics["test_mean_pathologies"].items()},
            calibration=metrics["calibration"],
        )

    @property
    def checkpoint(self) -> Path:
        """``RUN_DIR/model.safetensors``."""
        return self.run_dir / CHECKPOINT_NAME

    def summary(self, split: str, term: str = "combined", level: str = "slice") -> Mapping[str, Any] | None:
        """The AUROC row of ``term`` (``combined`` or an expert) on ``split`` at ``level``: each
        head, ``mean_pathologies`` (with ``_ci``) and ``mean_all``; None when the split is empty
        or the level undefined."""
        block = self.metrics.get(split) or {}
        return ((block.get("summary") or {}).get(term) or {}).get(level)

    def to_json(self) -> dict[str, Any]:
        """The content of ``metrics.json`` (a copy)."""
        return copy.deepcopy(dict(self.metrics))


@torch.no_grad()
def predict_dataset(
    model: I2M2Model,
    dataset: SliceDataset,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Run ``model`` over every slice of ``dataset`` (eval mode, no gradients).

    Returns ``study_id`` (N,) object, ``slice`` (N,) int64, ``labels`` (N, 4) float32,
    ``p`` {"combined" and each expert name -> (N, 4) float64 p(y=1); NaN where that expert did
    not count for a slice}, ``log_odds`` (N, 4) float64 (combined log p(1) - log p(0)),
    ``dropped`` (experts dropped for a whole batch, with counts), ``seconds`` and
    ``slices_per_s`` (reading, transforming and the forward pass).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    names = list(model.expert_names)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_samples)
    ids: list[str] = []
    slices: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    probs: dict[str, list[np.ndarray]] = {"combined": [], **{n: [] for n in names}}
    log_odds: list[np.ndarray] = []
    dropped: dict[str, int] = {}
    t0 = time.perf_counter()
    try:
        for batch in loader:
            moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}
            moved["present"] = {k: v.to(device) for k, v in batch["present"].items()}
            out = model(moved)
            b = out.combined.shape[0]
            probs["combined"].append(out.p1().double().cpu().numpy())
            combined = out.combined.double().cpu()
            log_odds.append((combined[..., 1] - combined[..., 0]).numpy())
            for name in names:
                if name in out.terms:
                    p = out.expert_p1(name).double().cpu().numpy()
                    keep = out.mask.get(name)
                    if keep is not None:
                        p[~keep.cpu().numpy()] = np.nan
                else:
                    p = np.full((b, len(HEADS)), np.nan)
                    dropped[name] = dropped.get(name, 0) + b
                probs[name].append(p)
            ids.extend(batch["study_id"])
            slices.append(batch["slice"].numpy())
            labels.append(batch["labels"].numpy() if "labels" in batch else np.full((b, len(HEADS)), np.nan, np.float32))
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - t0
    n = len(ids)
    empty = np.zeros((0, len(HEADS)))
    return {
        "study_id": np.array(ids, dtype=object),
        "slice": np.concatenate(slices) if slices else np.zeros(0, np.int64),
        "labels": np.concatenate(labels) if labels else empty.astype(np.float32),
        "p": {k: (np.concatenate(v) if v else empty) for k, v in probs.items()},
        "log_odds": np.concatenate(log_odds) if log_odds else empty,
        "dropped": dropped,
        "seconds": seconds,
        "slices_per_s": (n / seconds) if seconds > 0 else None,
    }


def position_prior_of(dataset: SliceDataset) -> np.ndarray:
    """The position-only baseline fitted on a (training) dataset's slices: (n_bins, 4) positive
    rates by relative slice position (:func:`i2m2_med.metrics.baselines.fit_position_prior`)."""
    study, k = dataset.items[:, 0], dataset.items[:, 1]
    n = np.asarray([dataset.studies[int(i)].n_slices for i in study], dtype=np.int64)
    return fit_position_prior(relative_position(k, n), dataset.label_matrix())


def study_calibration_of(pred: Mapping[str, Any] | None, rule: str) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The study-level calibration map fitted on a validation split's predictions
    (:func:`predict_dataset` output): the combined slice probabilities aggregated by ``rule``
    (a config's rule name), then :func:`~i2m2_med.metrics.calibration.fit_study_calibration`.
    Returns ``((4, 2) [slope, intercept] per head, report)``, or ``(None, report)`` without
    validation predictions."""
    if pred is None or len(pred["study_id"]) == 0:
        return None, {"note": "no validation slices: study-level probabilities left uncalibrated"}
    rule_name, k = aggregation_rule(rule)
    y = np.asarray(pred["labels"], dtype=np.float64)
    ok = np.isfinite(y).all(axis=1)
    studies = study_level(np.asarray(pred["study_id"]).astype(str)[ok], np.clip(pred["p"]["combined"][ok], 0.0, 1.0),
                          y[ok] > 0.5, rule=rule_name, k=k)
    params, report = fit_study_calibration(studies.p, studies.y)
    return params, report


OPERATING_RULE = "youden"
"""How a head's study-level operating point is chosen on validation (:func:`study_operating_points`)."""


def study_operating_points(pred: Mapping[str, Any] | None, rule: str, study_map: np.ndarray | None,
                           choice: str = OPERATING_RULE) -> dict[str, Any]:
    """Per head, the threshold on the study probability that ``diagnose`` reports (the combined
    slice probabilities aggregated by the config's ``rule``, then the study-level map) at which a
    study is called positive, chosen on the validation studies by ``choice``
    (:func:`i2m2_med.metrics.thresholds.operating_point`), with the validation sensitivity and
    specificity it gives (Wilson CIs). A head whose validation studies lack a class has no
    threshold and says why. Ships in the checkpoint, so that a user's batch with ground truth can
    be scored at the point the model was validated at, not at one tuned on that batch."""
    from i2m2_med.errors import UndefinedMetricError
    from i2m2_med.metrics.calibration import apply_study_map
    from i2m2_med.metrics.thresholds import operating_point, sens_spec

    out: dict[str, Any] = {"rule": choice, "level": "study", "score": "the calibrated study probability p_<head>",
                           "fitted_on": "val", "per_head": {}}
    if pred is None or len(pred["study_id"]) == 0:
        out.update(fitted_on=None, per_head={h: {"threshold": None, "reason": "no validation split"} for h in HEADS})
        return out
    rule_name, k = aggregation_rule(rule)
    y = np.asarray(pred["labels"], dtype=np.float64)
    ok = np.isfinite(y).all(axis=1)
    studies = study_level(np.asarray(pred["study_id"]).astype(str)[ok], np.clip(pred["p"]["combined"][ok], 0.0, 1.0),
                          y[ok] > 0.5, rule=rule_name, k=k)
    p = np.asarray(studies.p, dtype=np.float64)
    if study_map is not None:
        p = apply_study_map(p, study_map[:, 0], study_map[:, 1])
    labels = np.asarray(studies.y, dtype=bool)
    for h, head in enumerate(HEADS):
        n_pos, n_neg = int(labels[:, h].sum()), int((~labels[:, h]).sum())
        try:
            threshold = operating_point(labels[:, h], p[:, h], choice)
        except UndefinedMetricError:
            missing = "positive" if n_pos == 0 else "negative"
            out["per_head"][head] = {"threshold": None, "reason": f"no {missing} study in the validation split",
                                     "n_pos": n_pos, "n_neg": n_neg}
            continue
        at = sens_spec(labels[:, h], p[:, h], threshold)
        out["per_head"][head] = {"threshold": float(threshold), "val_sensitivity": at.sensitivity.value,
                                 "val_specificity": at.specificity.value, "n_pos": n_pos, "n_neg": n_neg}
    return out


BASELINE = "position_baseline"
"""The name of the position-only baseline among a split's summaries."""


def _summary_of(table: dict[str, Any]) -> dict[str, Any]:
    """{level: {head: auroc, mean_pathologies, mean_all}} of a metrics_table."""
    out: dict[str, Any] = {}
    for level in ("slice", "study", "in_view"):
        if level == "in_view" and level not in table:
            continue
        lv = table.get(level)
        if lv is None:
            out[level] = None
            continue
        row = {h: lv["per_head"][h]["auroc"] for h in HEADS}
        row["mean_pathologies"] = lv["mean_pathologies"]["auroc"]
        row["mean_pathologies_ci"] = lv["mean_pathologies"]["ci"]
        row["mean_all"] = lv["mean_all"]["auroc"]
        row["mean_all_ci"] = lv["mean_all"]["ci"]
        out[level] = row
    return out


def prediction_metrics(
    pred: Mapping[str, Any],
    split: str,
    rule: str = "top3_mean",
    n_boot: int = 1000,
    seed: int = 0,
    in_view: Mapping[str, np.ndarray] | None = None,
    subjects: Mapping[str, str] | None = None,
    position_prior: np.ndarray | None = None,
    n_slices: Mapping[str, int] | None = None,
    study_calibration: np.ndarray | None = None,
) -> dict[str, Any]:
    """Slice- and study-level metrics (:func:`i2m2_med.metrics.tables.metrics_table`) of the
    combined prediction and of every expert, from :func:`predict_dataset` output.

    ``in_view`` (study id -> (S, 4) bool, :attr:`i2m2_med.data.cohort.Cohort.in_view`) adds the
    level ``"in_view"``: each head scored only on the slices where its anatomy is in view
    (:func:`i2m2_med.metrics.tables.in_view_metrics`), i.e. findings against their mimics.
    ``subjects`` (study id -> subject id) makes every bootstrap resample whole subjects (the PD
    and PD-FS studies of a knee together); without it, whole studies. ``position_prior``
    ((n_bins, 4), :func:`i2m2_med.metrics.baselines.fit_position_prior` on the training split)
    with ``n_slices`` (study id -> slices) adds ``"position_baseline"``: the same tables for the
    score that knows only the slice's relative position. ``study_calibration`` ((4, 2), fitted on
    validation by :func:`study_calibration_of`) calibrates the combined prediction's study level.

    Returns ``{"combined": table, "experts": {name: table}, "position_baseline": table | None,
    "summary": {name: {...}}}`` (the baseline's summary under ``"position_baseline"``); an expert
    that did not count for some slices is scored on the others (``n`` says how many).
    """
    rule_name, k = aggregation_rule(rule)
    y = np.asarray(pred["labels"], dtype=np.float64)
    ids = np.asarray(pred["study_id"]).astype(str)
    view = None
    if in_view is not None and len(ids) and all(sid in in_view for sid in ids):
        view = in_view_rows(in_view, ids, pred["slice"])
    clusters = ids if subjects is None else np.asarray([subjects[s] for s in ids.tolist()])
    scores: dict[str, np.ndarray] = dict(pred["p"])
    if position_prior is not None and n_slices is not None and len(ids):
        position = relative_position(pred["slice"], [n_slices[s] for s in ids.tolist()])
        scores[BASELINE] = position_scores(position_prior, position)
    out: dict[str, Any] = {"combined": None, "experts": {}, "position_baseline": None, "summary": {}}
    for name, p in scores.items():
        ok = np.isfinite(p).all(axis=1) & np.isfinite(y).all(axis=1)
        table = metrics_table(
            y[ok], np.clip(p[ok], 0.0, 1.0), ids[ok], subject_ids=clusters[ok] if subjects is not None else None,
            study_calibration=study_calibration if name == "combined" else None,
            rule=rule_name, k=k, split=split, n_boot=n_boot, seed=seed,
        )
        if view is not None:
            table["in_view"] = in_view_metrics(
                y[ok], np.clip(p[ok], 0.0, 1.0), view[ok], clusters[ok], split=split, n_boot=n_boot, seed=seed
            )
        if name == "combined":
            out["combined"] = table
        elif name == BASELINE:
            out["position_baseline"] = table
        else:
            out["experts"][name] = table
        out["summary"][name] = _summary_of(table)
    return out


def ceilings_from_manifest(manifest: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What a synthetic cohort's manifest says about the reach of any model, or None without one.

    Two different ceilings, not to be confused:

    * ``label_noise``: per head, the AUROC of a perfect predictor of the *true* findings against
      the annotated (noisy) labels (``label_noise_ceiling_auroc``: "empirical" on this cohort,
      else "expected"), and ``mean_pathologies`` over ACL/MTEAR/CART. It is 1.0 at zero label
      noise and says nothing about what can be learnt from the images.
    * ``learnable``: what the images allow. ``slice_evidence_auroc`` per head (the Bayes score of
      the cues every slice shows, knowing where each class's sites are) with its
      ``mean_pathologies``, and ``episode_bayes_auroc`` (the best AUROC of one finding-vs-mimic
      episode from magnitude alone, phase alone and both: the regime's design).

    Also ``slice_position_auroc`` (what the slice position alone predicts, on the whole cohort),
    ``regime`` and ``label_noise_rate`` (the fraction of flipped labels) when present.
    """
    if not manifest:
        return None
    out: dict[str, Any] = {}
    ceiling = manifest.get("label_noise_ceiling_auroc")
    if isinstance(ceiling, Mapping):
        per_head: dict[str, float | None] = {}
        for head in HEADS:
            node = ceiling.get(head)
            value = None
            if isinstance(node, Mapping):
                value = node.get("empirical") if node.get("empirical") is not None else node.get("expected")
            elif isinstance(node, (int, float)):
                value = node
            per_head[head] = None if value is None else float(value)
        out["label_noise"] = {"auroc": per_head, "mean_pathologies": _mean3(per_head),
                              "note": manifest.get("label_noise_ceiling_note")}
    evidence = manifest.get("slice_evidence_auroc")
    if isinstance(evidence, Mapping) or "episode_bayes_auroc" in manifest:
        learnable: dict[str, Any] = {}
        if isinstance(evidence, Mapping):
            learnable["slice_evidence_auroc"] = dict(evidence)
            learnable["mean_pathologies"] = _mean3(evidence)
        if "episode_bayes_auroc" in manifest:
            learnable["episode_bayes_auroc"] = manifest["episode_bayes_auroc"]
        out["learnable"] = learnable
    for key in ("slice_position_auroc", "regime"):
        if key in manifest:
            out[key] = manifest[key]
    if "label_noise" in manifest:
        out["label_noise_rate"] = manifest["label_noise"]
    return out or None


def _mean3(per_head: Mapping[str, Any]) -> float | None:
    defined = [float(per_head[h]) for h in PATHOLOGY_HEADS if per_head.get(h) is not None]
    return float(np.mean(defined)) if defined else None


def label_noise_ceiling_mean(ceilings: Mapping[str, Any] | None) -> float | None:
    """The label-noise ceiling's mean AUROC over ACL/MTEAR/CART (None when unknown)."""
    value = ((ceilings or {}).get("label_noise") or {}).get("mean_pathologies")
    return None if value is None else float(value)


def learnable_ceiling_mean(ceilings: Mapping[str, Any] | None) -> float | None:
    """The learnable ceiling's (slice evidence) mean AUROC over ACL/MTEAR/CART (None when unknown)."""
    value = ((ceilings or {}).get("learnable") or {}).get("mean_pathologies")
    return None if value is None else float(value)


def _checkpoint_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The compact part of the metrics that travels inside the checkpoint."""
    keep = {k: metrics[k] for k in ("variant", "seed", "aggregation", "label_noise_ceiling_mean", "test_mean_pathologies",
                                    "position_prior")}
    if metrics.get("operating_points") is not None:
        keep["operating_points"] = metrics["operating_points"]
    keep["training"] = {k: v for k, v in metrics["training"].items() if k != "stages"}
    keep["summary"] = {
        split: (metrics[split] or {}).get("summary") for split in ("val", "test")
    }
    if metrics.get("shift") is not None:
        keep["shift"] = metrics["shift"]
    return json_safe(keep)


def _write_predictions(path: Path, predictions: Mapping[str, Mapping[str, Any]]) -> None:
    """One row per slice of val and test: split, study_id, slice, y_<head>, p_<head> (combined)
    and p_<expert>_<head>."""
    frames = []
    for split, pred in predictions.items():
        data: dict[str, Any] = {"split": split, "study_id": pred["study_id"].astype(str), "slice": pred["slice"]}
        for h, head in enumerate(HEADS):
            data[f"y_{head}"] = pred["labels"][:, h].astype(np.int64)
        for name, p in pred["p"].items():
            prefix = "p" if name == "combined" else f"p_{name}"
            for h, head in enumerate(HEADS):
                data[f"{prefix}_{head}"] = np.round(p[:, h], 6)
        frames.append(pd.DataFrame(data))
    if not frames:
        return
    with atomic_path(path) as tmp:
        pd.concat(frames, ignore_index=True).to_csv(tmp, index=False)
