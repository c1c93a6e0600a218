"""Study-level inference: a :class:`~i2m2_med.io.study.Study` and a loaded model -> a
:class:`~i2m2_med.inference.prediction.StudyPrediction`.

This is the one place that turns a study into numbers; ``i2m2-med diagnose`` and the app both
call :func:`predict_study`, so a batch result and the viewer always agree.

What happens, per study:

1. The tabular vector is built once (:func:`i2m2_med.data.tabular.tabular_features`, in the feature
   order the checkpoint was trained with, from the study's tags and an optional clinical row).
2. Slices are read and transformed one at a time (``Study.read_slice`` then the modality
   pipeline of :mod:`i2m2_med.transforms` at the model's ``image_size``), optionally by a small
   thread pool running ahead of the model, and grouped into batches of ``batch_size``. At most
   ``max(2 * batch_size, 4 * workers)`` transformed slices exist at any time: memory is bounded
   by the batch size, not by the study or the cohort.
3. Each batch runs through the model under ``torch.inference_mode``. A modality the study lacks
   (or the caller drops) is absent from the batch, so the experts that need it are dropped from
   the product by the model (never zero-filled); they are reported in ``dropped_experts``.
4. Slice scores aggregate to the study by the rule the model was trained with
   (``config.training.aggregation``, see :func:`i2m2_med.metrics.aggregation.aggregation_rule` and
   :func:`i2m2_med.metrics.aggregation.aggregate_study`); the top slice per head is the slice with the
   highest combined p(y=1).

Study-level contribution of an expert (``StudyPrediction.contributions``): the mean, over the
slices the aggregation rule reads for that head, of the expert's log-odds
``log p_e(1) - log p_e(0)`` (its additive share of the product's log-odds, see
:mod:`i2m2_med.evidence`): the top slice for ``max``, the top k slices for ``mean_top_k``
(``top3_mean``), every slice for ``mean`` and ``noisy_or``. The contributions of all terms add up
to the mean combined log-odds of those slices -- for ``max`` exactly ``logit(study_score)``.

A model trained with the study-level calibration (``training.calibration: prior``) carries a map
fitted on its validation studies; ``p_study`` is then the aggregated score mapped through it (a
probability that the study holds the finding), ``study_score`` the score before it.

A model that carries distribution-shift statistics also scores every slice's image features
against its training data (:mod:`i2m2_med.inference.shift`) in the same forward passes;
``StudyPrediction.shift`` holds the study's score, the threshold and whether the study is out of
scope by content (or, without statistics, a note that the score is unavailable).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from i2m2_med.checkpoint import CheckpointMeta
from i2m2_med.data.tabular import tabular_features
from i2m2_med.errors import TransformError, UsageError
from i2m2_med.heads import HEADS
from i2m2_med.inference.loading import channels_last, model_info, tabular_columns
from i2m2_med.inference.prediction import StudyPrediction
from i2m2_med.inference.shift import feature_tap, fitted_experts, slice_scores, study_shift
from i2m2_med.inference.streaming import iter_slice_samples, modality_pipeline
from i2m2_med.io.study import IMAGE_MODALITIES, Study
from i2m2_med.metrics.aggregation import aggregate_study, aggregation_rule, top_slice
from i2m2_med.metrics.calibration import apply_study_map
from i2m2_med.models import I2M2Model

DEFAULT_BATCH_SIZE = 32


#: Modalities a caller may drop (``drop_modalities``).
DROPPABLE: tuple[str, ...] = ("magnitude", "phase", "tabular")


#: Canonical order of the terms of the product in every output.
TERM_ORDER: tuple[str, ...] = ("magnitude", "phase", "tabular", "joint", "prior")


def study_tabular(
    study: Study, meta: CheckpointMeta, clinical_row: Mapping[str, Any] | None = None
) -> tuple[np.ndarray | None, dict[str, float]]:
    """The study's tabular vector ``(F,)`` float32 in the checkpoint's feature order (None when
    the model takes no tabular input) and the same as a name -> value dict."""
    names = list(meta.tabular_names)
    if not names:
        return None, {}
    vec, got = tabular_features(study.tags, clinical_row, columns=tabular_columns(meta))
    vec = np.asarray(vec, dtype=np.float32).reshape(-1)
    got = list(got)
    if got != names or vec.shape[0] != len(names):
        raise TransformError(study.source, f"tabular features {got} do not match the model's {names}")
    if not np.isfinite(vec).all():
        raise TransformError(study.source, "tabular vector has NaN/Inf values")
    return vec, {n: float(v) for n, v in zip(names, vec)}


def _batch(samples: list[dict[str, Any]], tabular: np.ndarray | None, device: torch.device,
           memory_format: torch.memory_format = torch.contiguous_format) -> dict[str, Any]:
    batch: dict[str, Any] = {}
    n = len(samples)
    present: dict[str, torch.Tensor] = {}
    for m in IMAGE_MODALITIES:
        flags = [bool(s["present"].get(m)) for s in samples]
        present[m] = torch.tensor(flags, dtype=torch.bool, device=device)
        if any(flags):
            if not all(flags):
                raise TransformError("batch", f"{m} present for only some slices of the study")
            batch[m] = torch.stack([s[m] for s in samples]).to(device).contiguous(memory_format=memory_format)
    if tabular is not None:
        batch["tabular"] = torch.from_numpy(tabular).to(device).unsqueeze(0).expand(n, -1).contiguous()
        present["tabular"] = torch.ones(n, dtype=torch.bool, device=device)
    batch["present"] = present
    return batch


def _ordered(terms: Mapping[str, Any]) -> list[str]:
    return sorted(terms, key=lambda t: (TERM_ORDER.index(t) if t in TERM_ORDER else len(TERM_ORDER), t))


def _selected_slices(p: np.ndarray, rule: str, k: int) -> list[np.ndarray]:
    """Per head, the slice positions the aggregation rule reads (for the contributions)."""
    out = []
    for j in range(p.shape[1]):
        order = np.argsort(-p[:, j], kind="stable")
        if rule == "max":
            out.append(order[:1])
        elif rule == "mean_top_k":
            out.append(order[: max(1, min(k, p.shape[0]))])
        else:
            out.append(np.arange(p.shape[0]))
    return out


def predict_study(
    model: I2M2Model,
    meta: CheckpointMeta,
    study: Study,
    clinical_row: Mapping[str, Any] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    drop_modalities: Iterable[str] = (),
    workers: int = 0,
    slices: Sequence[int] | None = None,
    on_batch: Callable[[int], None] | None = None,
    samples: Iterable[dict[str, Any]] | None = None,
) -> StudyPrediction:
    """Run ``model`` over the slices of ``study``, batch by batch, and aggregate.

    Args:
        model: an :class:`~i2m2_med.models.registry.I2M2Model` (from :func:`load_model`).
        meta: its :class:`~i2m2_med.checkpoint.CheckpointMeta` (image size, tabular features,
            aggregation rule, fingerprint).
        study: the study (slices read lazily).
        clinical_row: the study's row of a clinical table (mapping / pandas Series), or None.
        batch_size: slices per forward pass (memory scales with it, not with the study).
        drop_modalities: modalities to withhold from the model (``magnitude``, ``phase``,
            ``tabular``): their experts drop out of the product, as for a missing modality.
        workers: loading threads running ahead of the model (0: load in this thread).
        slices: slice indices to run (default: all, in order).
        on_batch: called with the number of slices of each finished batch (progress bars).
        samples: the study's slice samples already being read (e.g. :meth:`ReadAhead.samples`),
            in the order of ``slices``; default: read them here (with ``workers`` threads).

    Returns a :class:`StudyPrediction`. Raises the reader's / transforms' typed errors
    (:class:`~i2m2_med.errors.StudyReadError`, :class:`~i2m2_med.errors.TransformError`), and
    :class:`~i2m2_med.errors.UsageError` when no expert of the model can run on what is left.
    """
    t0 = time.perf_counter()
    if int(batch_size) < 1:
        raise UsageError("batch_size", f"must be >= 1, got {batch_size}")
    drop = [m for m in dict.fromkeys(drop_modalities)]
    unknown = [m for m in drop if m not in DROPPABLE]
    if unknown:
        raise UsageError("drop_modalities", f"unknown modality {unknown[0]!r}; expected one of {', '.join(DROPPABLE)}")
    indices = list(range(study.n_slices)) if slices is None else [int(i) for i in slices]
    if not indices:
        raise UsageError(study.source, "no slices to predict")
    rule, k = aggregation_rule(meta.config.training.aggregation)
    image_size = int(meta.config.image_size)
    pipeline = modality_pipeline(image_size)
    tabular, tabular_named = (None, {}) if "tabular" in drop else study_tabular(study, meta, clinical_row)
    device = next(model.parameters()).device
    memory_format = torch.channels_last if channels_last(model) else torch.contiguous_format

    term_chunks: dict[str, list[np.ndarray]] = {}
    combined_chunks: list[np.ndarray] = []
    dropped: list[str] | None = None
    seen_modalities: set[str] = set()
    shift_chunks: dict[str, list[np.ndarray]] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), feature_tap(model, fitted_experts(model)) as features:
            pending: list[dict[str, Any]] = []

            def run(samples: list[dict[str, Any]]) -> None:
                nonlocal dropped
                batch = _batch(samples, tabular, device, memory_format)
                seen_modalities.update(m for m in ("magnitude", "phase", "tabular") if m in batch)
                features.clear()
                out = model(batch)
                if out.mask:
                    raise TransformError(study.source, "modalities differ between slices of the study")
                for name, value in slice_scores(model, features).items():
                    shift_chunks.setdefault(name, []).append(value)
                for name, value in out.terms.items():
                    term_chunks.setdefault(name, []).append(value.float().cpu().numpy())
                combined_chunks.append(out.combined.float().cpu().numpy())
                if dropped is None:
                    dropped = list(out.dropped)
                if on_batch is not None:
                    on_batch(len(samples))

            stream = samples if samples is not None else iter_slice_samples(
                study, pipeline, indices, workers=workers, exclude=drop,
                lookahead=max(2 * int(batch_size), 4 * int(workers)))
            count = 0
            for sample in stream:
                if count >= len(indices) or int(sample.get("slice", -1)) != indices[count]:
                    raise UsageError(study.source, f"the sample stream is out of step at slice {sample.get('slice')}")
                for m in drop:  # withheld whatever the stream was told
                    sample.pop(m, None)
                    sample["present"][m] = False
                pending.append(sample)
                count += 1
                if len(pending) == batch_size:
                    run(pending)
                    pending = []
            if pending:
                run(pending)
            if count != len(indices):
                raise UsageError(study.source, f"the sample stream gave {count} slices for {len(indices)}")
    finally:
        model.train(was_training)
        study.close()

    names = _ordered(term_chunks)
    terms = {t: np.concatenate(term_chunks[t], axis=0).astype(np.float32) for t in names}
    combined = np.concatenate(combined_chunks, axis=0).astype(np.float32)
    p = np.exp(combined[..., 1]).astype(np.float32)
    score = np.asarray(aggregate_study(p, rule, k) if rule == "mean_top_k" else aggregate_study(p, rule), dtype=np.float64)
    study_map = model.study_calibration_map()
    p_study = score if study_map is None else apply_study_map(score, study_map[:, 0], study_map[:, 1])
    aggregation: dict[str, Any] = {"rule": rule, "k": k} if rule == "mean_top_k" else {"rule": rule}
    if study_map is not None:
        aggregation["calibration"] = {
            "rule": "p = sigmoid(slope * logit(score) + intercept), fitted on validation studies",
            "slope": {h: float(study_map[j, 0]) for j, h in enumerate(HEADS)},
            "intercept": {h: float(study_map[j, 1]) for j, h in enumerate(HEADS)},
        }
    top = np.asarray(top_slice(p), dtype=np.int64)
    chosen = _selected_slices(p, rule, k)
    contributions = {}
    for t, v in terms.items():
        lo = v[..., 1].astype(np.float64) - v[..., 0].astype(np.float64)
        contributions[t] = np.array([lo[chosen[j], j].mean() for j in range(len(HEADS))], dtype=np.float64)

    missing = [m for m in study.missing_modalities]
    excluded = [m for m in drop if m not in missing]
    modalities = [m for m in ("magnitude", "phase", "tabular") if m in seen_modalities]
    return StudyPrediction(
        study_id=study.study_id,
        source=str(study.source),
        format=str(study.format),
        model=model_info(meta),
        n_slices=len(indices),
        modalities=modalities,
        missing_modalities=missing,
        excluded_modalities=excluded,
        dropped_experts=list(dropped or []),
        aggregation=aggregation,
        slices=np.asarray(indices, dtype=np.int64),
        terms=terms,
        combined=combined,
        p=p,
        p_study=p_study,
        top_slice=top,
        contributions=contributions,
        tabular=tabular_named,
        notes=list(study.notes),
        seconds=time.perf_counter() - t0,
        study_score=score,
        shift=study_shift(model, {e: np.concatenate(v) for e, v in shift_chunks.items()}),
    )
