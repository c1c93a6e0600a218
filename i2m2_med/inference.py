"""Study-level inference: a :class:`~i2m2_med.io.study.Study` and a loaded model -> predictions.

This is the one place that turns a study into numbers; ``i2m2-med diagnose`` and the app both
call :func:`predict_study`, so a batch result and the viewer always agree.

What happens, per study:

1. The tabular vector is built once (:func:`i2m2_med.tabular.tabular_features`, in the feature
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
to the mean combined log-odds of those slices -- for ``max`` exactly ``logit(p_study)``.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from i2m2_med import __version__
from i2m2_med.errors import CheckpointError, TransformError, UsageError
from i2m2_med.heads import HEADS
from i2m2_med.io.study import IMAGE_MODALITIES, Study
from i2m2_med.metrics.aggregation import aggregation_rule

DEFAULT_BATCH_SIZE = 32
#: Modalities a caller may drop (``drop_modalities``).
DROPPABLE: tuple[str, ...] = ("magnitude", "phase", "tabular")
#: Canonical order of the terms of the product in every output.
TERM_ORDER: tuple[str, ...] = ("magnitude", "phase", "tabular", "joint", "prior")
#: Checkpoint file names looked for, in order, when a run folder is given.
CHECKPOINT_NAMES: tuple[str, ...] = ("model.safetensors", "best.safetensors", "checkpoint.safetensors", "last.safetensors")


# ---- the model ----------------------------------------------------------------------------------


def resolve_checkpoint(path: str | os.PathLike | None = None) -> Path:
    """The checkpoint file of ``path``: the file itself, the checkpoint inside a run folder
    (``model.safetensors``, ``best.safetensors``, ... or the only ``*.safetensors`` there), or,
    for ``None``, the bundled demo model. Raises :class:`CheckpointError` when none is found."""
    if path is None:
        import i2m2_med

        finder = getattr(i2m2_med, "demo_model_path", None)
        if callable(finder):
            path = finder()
        else:
            path = Path(i2m2_med.__file__).parent / "assets" / "demo_model"
        if path is None or not Path(path).exists():
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


def load_model(path: str | os.PathLike | None = None, map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any]:
    """Load a checkpoint for inference: ``(model in eval mode, CheckpointMeta)``.

    ``path``: a checkpoint file, a training run folder holding one, or ``None`` for the bundled
    demo model. Refuses corrupt, tampered or mismatched checkpoints with
    :class:`~i2m2_med.errors.CheckpointError` (file and reason, one line). The weights are put in
    channels-last memory format (see :func:`channels_last`).
    """
    from i2m2_med.checkpoint import load_checkpoint

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


#: The config's slice -> study rule names as ``(rule, k)`` of
def model_info(meta: Any) -> dict[str, str]:
    """``{"fingerprint", "variant", "version"}`` of a checkpoint (version: the i2m2-med version
    that wrote it)."""
    return {
        "fingerprint": str(meta.fingerprint),
        "variant": str(meta.variant),
        "version": str(getattr(meta, "project_version", "") or ""),
    }


# ---- the prediction -------------------------------------------------------------------------------


@dataclass
class StudyPrediction:
    """The model's answer for one study.

    Per slice (S slices, 4 heads in :data:`HEADS` order, terms in :data:`TERM_ORDER`):

    * ``terms``: term -> log-probabilities ``(S, 4, 2)`` float32 (each expert that ran, and the
      prior when the model has one: learned, refitted on validation after training, or both);
    * ``combined``: the normalised product ``(S, 4, 2)`` float32 log-probabilities;
    * ``p``: combined p(y=1) ``(S, 4)`` float32 (``exp(combined[..., 1])``).

    Per study: ``p_study`` ``(4,)`` float64 by ``aggregation``; ``top_slice`` ``(4,)`` int64;
    ``contributions`` term -> ``(4,)`` float64 log-odds (see the module docstring).
    """

    study_id: str
    source: str
    format: str
    model: dict[str, str]
    n_slices: int
    modalities: list[str]
    missing_modalities: list[str]
    excluded_modalities: list[str]
    dropped_experts: list[str]
    aggregation: dict[str, Any]
    slices: np.ndarray
    terms: dict[str, np.ndarray]
    combined: np.ndarray
    p: np.ndarray
    p_study: np.ndarray
    top_slice: np.ndarray
    contributions: dict[str, np.ndarray]
    tabular: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def term_names(self) -> list[str]:
        return list(self.terms)

    def with_identity(self, study_id: str, source: str, notes: Sequence[str] | None = None) -> "StudyPrediction":
        """A copy under another study id / source (e.g. hashed for de-identified outputs)."""
        return replace(self, study_id=study_id, source=source, notes=list(self.notes if notes is None else notes))

    def study_p(self) -> dict[str, float]:
        return {h: float(self.p_study[j]) for j, h in enumerate(HEADS)}

    def study_top_slice(self) -> dict[str, int]:
        return {h: int(self.slices[int(self.top_slice[j])]) for j, h in enumerate(HEADS)}

    def study_contributions(self) -> dict[str, dict[str, float]]:
        return {t: {h: float(v[j]) for j, h in enumerate(HEADS)} for t, v in self.contributions.items()}

    def to_json(self) -> dict[str, Any]:
        """The per-study JSON of ``diagnose`` (``OUT_DIR/studies/<study_id>.json``).

        For every slice and head the product is checkable from the file alone::

            p1 = exp(sum_t logp[t][h][1]) / (exp(sum_t logp[t][h][0]) + exp(sum_t logp[t][h][1]))
        """
        slices = []
        for i, index in enumerate(self.slices):
            slices.append({
                "index": int(index),
                "p": {h: float(self.p[i, j]) for j, h in enumerate(HEADS)},
                "logp": {
                    t: {h: [float(v[i, j, 0]), float(v[i, j, 1])] for j, h in enumerate(HEADS)}
                    for t, v in self.terms.items()
                },
            })
        return {
            "study_id": self.study_id,
            "source": self.source,
            "format": self.format,
            "status": "ok",
            "error": None,
            "model": dict(self.model),
            "software": {"name": "i2m2-med", "version": __version__},
            "heads": list(HEADS),
            "n_slices": int(self.n_slices),
            "modalities": list(self.modalities),
            "missing_modalities": list(self.missing_modalities),
            "excluded_modalities": list(self.excluded_modalities),
            "dropped_experts": list(self.dropped_experts),
            "terms": list(self.terms),
            "aggregation": dict(self.aggregation),
            "slices": slices,
            "study": {
                "p": self.study_p(),
                "top_slice": self.study_top_slice(),
                "contributions": self.study_contributions(),
            },
            "notes": list(self.notes),
        }


# ---- slices -> samples ------------------------------------------------------------------------------

_PIPELINES: dict[int, Callable[[dict], dict]] = {}
_PIPELINE_LOCK = threading.Lock()


def modality_pipeline(image_size: int) -> Callable[[dict], dict]:
    """The (deterministic, fully sampled) modality pipeline at ``image_size``, built once per
    process and shared (it holds no random state)."""
    with _PIPELINE_LOCK:
        pipe = _PIPELINES.get(int(image_size))
        if pipe is None:
            from i2m2_med.transforms.dictionary import build_modality_pipeline

            pipe = _PIPELINES[int(image_size)] = build_modality_pipeline(int(image_size))
        return pipe


def tabular_columns(meta: Any) -> list[str] | dict[str, float] | None:
    """The ``columns`` argument of :func:`i2m2_med.tabular.tabular_features` that reproduces the
    checkpoint's feature vector: ``extra["tabular_columns"]`` when the checkpoint declares it,
    else the extra clinical columns named in ``tabular_names`` (divisor 1), else None (the
    standard features only)."""
    declared = (getattr(meta, "extra", None) or {}).get("tabular_columns")
    if declared:
        return dict(declared) if isinstance(declared, Mapping) else list(declared)
    from i2m2_med.tabular import TABULAR_FEATURES

    names = list(getattr(meta, "tabular_names", []) or [])
    extra = [n for n in names[::2] if n not in TABULAR_FEATURES]
    return extra or None


def study_tabular(study: Study, meta: Any, clinical_row: Any = None) -> tuple[np.ndarray | None, dict[str, float]]:
    """The study's tabular vector ``(F,)`` float32 in the checkpoint's feature order (None when
    the model takes no tabular input) and the same as a name -> value dict."""
    names = list(getattr(meta, "tabular_names", []) or [])
    if not names:
        return None, {}
    from i2m2_med.tabular import tabular_features

    vec, got = tabular_features(study.tags, clinical_row, columns=tabular_columns(meta))
    vec = np.asarray(vec, dtype=np.float32).reshape(-1)
    got = list(got)
    if got != names or vec.shape[0] != len(names):
        raise TransformError(study.source, f"tabular features {got} do not match the model's {names}")
    if not np.isfinite(vec).all():
        raise TransformError(study.source, "tabular vector has NaN/Inf values")
    return vec, {n: float(v) for n, v in zip(names, vec)}


def slice_sample(study: Study, index: int, pipeline: Callable[[dict], dict], exclude: Iterable[str] = ()) -> dict[str, Any]:
    """Read and transform slice ``index``: ``{"magnitude": [1, H, W], "phase": [1, H, W],
    "present": {...}, "slice": index}`` (float32 tensors; a missing or excluded modality is absent
    and marked False in ``present``)."""
    raw = study.read_slice(index)
    out = pipeline(dict(raw))
    sample: dict[str, Any] = {}
    present: dict[str, bool] = {}
    given = out.get("present") if isinstance(out.get("present"), Mapping) else {}
    for m in IMAGE_MODALITIES:
        x = out.get(m)
        if x is None or m in exclude or (m in given and not bool(given[m])):
            present[m] = False
            continue
        x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
        x = x.float()
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[0] != 1:
            raise TransformError(study.source, f"slice {index}: {m} has shape {tuple(x.shape)}, expected [1, H, W]")
        sample[m] = x.contiguous()
        present[m] = True
    sample["present"] = present
    sample["slice"] = index
    return sample


def iter_slice_samples(
    study: Study,
    pipeline: Callable[[dict], dict],
    indices: Sequence[int],
    workers: int = 0,
    exclude: Iterable[str] = (),
    lookahead: int = 64,
) -> Iterator[dict[str, Any]]:
    """Samples of ``indices`` in order. ``workers`` > 0 reads and transforms in that many threads
    with at most ``lookahead`` samples in flight (bounded memory); an error of any slice is raised
    when its turn comes, and pending reads are cancelled."""
    exclude = tuple(exclude)
    if workers <= 0:
        for i in indices:
            yield slice_sample(study, int(i), pipeline, exclude)
        return
    pool = ThreadPoolExecutor(max_workers=int(workers), thread_name_prefix="i2m2-load")
    window: deque[Future] = deque()
    it = iter(indices)
    try:
        for i in it:
            window.append(pool.submit(slice_sample, study, int(i), pipeline, exclude))
            if len(window) >= max(1, lookahead):
                break
        while window:
            fut = window.popleft()
            nxt = next(it, None)
            if nxt is not None:
                window.append(pool.submit(slice_sample, study, int(nxt), pipeline, exclude))
            yield fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class ReadAhead:
    """The slices of a sequence of studies, read and transformed by ``workers`` threads ahead of
    their use -- across study boundaries, so the model never waits for the first slices of the
    next study. At most ``lookahead`` samples are in flight or waiting (bounded memory).

    ``jobs``: ``(key, study, slice indices)`` in the order the studies will be consumed. Consume
    with :meth:`samples` (``key`` by ``key``, in that order); samples of a study that was not
    fully consumed (it failed) are discarded when the next one is asked for. Use as a context
    manager, or call :meth:`close` (cancels what is pending).
    """

    def __init__(self, jobs: Iterable[tuple[str, Study, Sequence[int]]], pipeline: Callable[[dict], dict],
                 workers: int, lookahead: int = 64, exclude: Iterable[str] = ()):
        if int(workers) < 1:
            raise UsageError("workers", f"read-ahead needs at least one thread, got {workers}")
        self._pool = ThreadPoolExecutor(max_workers=int(workers), thread_name_prefix="i2m2-load")
        self._tasks = ((key, study, int(i)) for key, study, indices in jobs for i in indices)
        self._window: deque[tuple[str, Future]] = deque()
        self._pipeline = pipeline
        self._exclude = tuple(exclude)
        self._lookahead = max(1, int(lookahead))
        self._fill()

    def _fill(self) -> None:
        while len(self._window) < self._lookahead:
            task = next(self._tasks, None)
            if task is None:
                return
            key, study, index = task
            self._window.append((key, self._pool.submit(slice_sample, study, index, self._pipeline, self._exclude)))

    def samples(self, key: str) -> Iterator[dict[str, Any]]:
        """The samples of study ``key`` in slice order (a slice's error is raised at its turn)."""
        while self._window and self._window[0][0] != key:
            _, stale = self._window.popleft()
            stale.cancel()
            self._fill()
        while self._window and self._window[0][0] == key:
            _, fut = self._window.popleft()
            self._fill()
            yield fut.result()

    def close(self) -> None:
        for _, fut in self._window:
            fut.cancel()
        self._window.clear()
        self._tasks = iter(())
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "ReadAhead":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


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
    model: torch.nn.Module,
    meta: Any,
    study: Study,
    clinical_row: Any = None,
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
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            pending: list[dict[str, Any]] = []

            def run(samples: list[dict[str, Any]]) -> None:
                nonlocal dropped
                batch = _batch(samples, tabular, device, memory_format)
                seen_modalities.update(m for m in ("magnitude", "phase", "tabular") if m in batch)
                out = model(batch)
                if out.mask:
                    raise TransformError(study.source, "modalities differ between slices of the study")
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
        closer = getattr(study.slice_reader, "close", None)
        if callable(closer):
            closer()

    names = _ordered(term_chunks)
    terms = {t: np.concatenate(term_chunks[t], axis=0).astype(np.float32) for t in names}
    combined = np.concatenate(combined_chunks, axis=0).astype(np.float32)
    p = np.exp(combined[..., 1]).astype(np.float32)
    from i2m2_med.metrics.aggregation import aggregate_study, top_slice

    p_study = np.asarray(aggregate_study(p, rule, k) if rule == "mean_top_k" else aggregate_study(p, rule), dtype=np.float64)
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
        aggregation={"rule": rule, "k": k} if rule == "mean_top_k" else {"rule": rule},
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
    )


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "ReadAhead",
    "StudyPrediction",
    "channels_last",
    "iter_slice_samples",
    "load_model",
    "model_info",
    "modality_pipeline",
    "predict_study",
    "resolve_checkpoint",
    "slice_sample",
    "study_tabular",
    "tabular_columns",
]
