"""Predictions of many trained models on the same slices, with every expert's terms.

The slices of a condition are read and transformed once; every model then runs on the same
batches (a modality withheld is removed from the batch per *view*), so the transform cost of a
condition does not grow with the number of variants and seeds, and every model of a paired
comparison sees exactly the same inputs.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from i2m2_med.ablation.conditions import Condition, drop_from_batch
from i2m2_med.atomic import atomic_path
from i2m2_med.data.dataset import SliceDataset, collate_samples
from i2m2_med.errors import I2M2Error, UsageError
from i2m2_med.heads import HEADS
from i2m2_med.models import I2M2Model, I2M2Output

H = len(HEADS)


@dataclass
class Predictions:
    """One model's predictions on one split under one condition.

    Arrays over the N slices, in loader order: ``study_id`` (N,) str; ``slice`` (N,) int64;
    ``labels`` (N, 4) float32 (0/1; NaN when unknown); ``p`` (N, 4) float64, the combined
    p(y=1); ``combined`` (N, 4, 2) float64 log-probabilities; ``terms`` expert -> (N, 4, 2)
    float64 log-probabilities, 0 where the expert did not count; ``mask`` expert -> (N,) bool,
    where it counted. ``reason`` is set (and the arrays are empty) when the model cannot run
    under the condition (e.g. no expert left without the withheld modality); ``note`` says what
    the condition left out.
    """

    study_id: np.ndarray
    slice: np.ndarray
    labels: np.ndarray
    p: np.ndarray
    combined: np.ndarray
    terms: dict[str, np.ndarray] = field(default_factory=dict)
    mask: dict[str, np.ndarray] = field(default_factory=dict)
    reason: str | None = None
    note: str | None = None

    @property
    def n(self) -> int:
        return int(self.p.shape[0])

    @property
    def ok(self) -> bool:
        return self.reason is None

    def output(self) -> SimpleNamespace:
        """The model-output view that :mod:`i2m2_med.evidence` reads (terms, combined, mask)."""
        return SimpleNamespace(terms=self.terms, combined=self.combined, mask=self.mask)

    def expert_p(self, name: str) -> np.ndarray:
        """(N, 4) the expert's own p(y=1), NaN where it did not count."""
        p = np.exp(self.terms[name][..., 1])
        return np.where(self.mask[name][:, None], p, np.nan)

    @classmethod
    def empty(cls, reason: str | None = None, note: str | None = None) -> "Predictions":
        return cls(
            np.zeros(0, dtype=object), np.zeros(0, np.int64), np.zeros((0, H), np.float32), np.zeros((0, H)),
            np.zeros((0, H, 2)), {}, {}, reason, note,
        )

    # -- persistence (npz, no pickles) --
    def save(self, path: str | Path) -> None:
        arrays: dict[str, np.ndarray] = {
            "study_id": np.asarray(self.study_id, dtype=str),
            "slice": self.slice,
            "labels": self.labels,
            "p": self.p,
            "combined": self.combined,
            "reason": np.asarray("" if self.reason is None else self.reason),
            "note": np.asarray("" if self.note is None else self.note),
            "experts": np.asarray(list(self.terms), dtype=str),
        }
        for name in self.terms:
            arrays[f"term__{name}"] = self.terms[name]
            arrays[f"mask__{name}"] = self.mask[name]
        target = Path(path)
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "Predictions":
        with np.load(Path(path), allow_pickle=False) as z:
            experts = [str(e) for e in z["experts"]]
            reason = str(z["reason"]) or None
            note = str(z["note"]) or None
            return cls(
                z["study_id"].astype(object), z["slice"], z["labels"], z["p"], z["combined"],
                {e: z[f"term__{e}"] for e in experts}, {e: z[f"mask__{e}"].astype(bool) for e in experts}, reason, note,
            )


def try_load(path: str | Path) -> Predictions | None:
    """A saved :class:`Predictions`, or None when the file is missing or unreadable."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        return Predictions.load(p)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


class _Accumulator:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.slices: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.p: list[np.ndarray] = []
        self.combined: list[np.ndarray] = []
        self.terms: dict[str, list[np.ndarray]] = {}
        self.mask: dict[str, list[np.ndarray]] = {}
        self.batches = 0
        self.reason: str | None = None

    def add(self, batch: Mapping[str, Any], out: I2M2Output) -> None:
        b = int(out.combined.shape[0])
        combined = out.combined.detach().double().cpu().numpy()
        for name in list(self.terms) + [n for n in out.terms if n not in self.terms]:
            if name not in self.terms:  # an expert seen for the first time: pad the earlier batches
                done = sum(len(x) for x in self.p)
                self.terms[name] = [np.zeros((done, H, 2))]
                self.mask[name] = [np.zeros(done, dtype=bool)]
            if name in out.terms:
                t = out.terms[name].detach().double().cpu().numpy()
                keep = out.mask.get(name)
                m = np.ones(b, dtype=bool) if keep is None else keep.detach().cpu().numpy().astype(bool)
                t = np.where(m[:, None, None], t, 0.0)
            else:
                t = np.zeros((b, H, 2))
                m = np.zeros(b, dtype=bool)
            self.terms[name].append(t)
            self.mask[name].append(m)
        self.ids.extend(str(s) for s in batch["study_id"])
        self.slices.append(batch["slice"].cpu().numpy().astype(np.int64))
        labels = batch.get("labels")
        self.labels.append(labels.cpu().numpy().astype(np.float32) if labels is not None else np.full((b, H), np.nan, np.float32))
        self.combined.append(combined)
        self.p.append(np.exp(combined[..., 1]))
        self.batches += 1

    def result(self, note: str | None) -> Predictions:
        if self.reason is not None:
            return Predictions.empty(self.reason, note)
        if not self.p:
            return Predictions.empty(None, note)
        return Predictions(
            np.asarray(self.ids, dtype=object),
            np.concatenate(self.slices),
            np.concatenate(self.labels),
            np.concatenate(self.p),
            np.concatenate(self.combined),
            {k: np.concatenate(v) for k, v in self.terms.items()},
            {k: np.concatenate(v) for k, v in self.mask.items()},
            None,
            note,
        )


@torch.no_grad()
def predict_models(
    models: Mapping[str, I2M2Model],
    dataset: SliceDataset,
    views: Sequence[Condition],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    note: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    view_models: Mapping[str, Iterable[str]] | None = None,
) -> dict[tuple[str, str], Predictions]:
    """Run every model on every slice of ``dataset`` under each view.

    ``models``: run id -> model (eval mode). ``views``: conditions applied to each batch (the
    clean one and ``drop:`` conditions; a condition that changes the data has its own dataset
    and one view); ``view_models``: view name -> the run ids to run under it (default: all).
    Returns ``(run id, view name) -> Predictions``. A model that cannot run a
    view (a :class:`~i2m2_med.errors.UsageError`, e.g. every expert needs the withheld
    modality) gets empty predictions with the reason; other errors propagate.
    """
    device = torch.device(device)
    wanted = {v.name: (set(models) if view_models is None or v.name not in view_models else set(view_models[v.name]) & set(models))
              for v in views}
    acc = {(rid, v.name): _Accumulator() for v in views for rid in models if rid in wanted[v.name]}
    if len(dataset) > 0:
        loader = DataLoader(dataset, batch_size=int(batch_size), shuffle=False, num_workers=0, collate_fn=collate_samples)
        total = len(loader)
        for i, batch in enumerate(loader):
            moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            moved["present"] = {k: v.to(device) for k, v in batch["present"].items()}
            for view in views:
                vb = drop_from_batch(moved, view.drop) if view.drop else moved
                for rid, model in models.items():
                    a = acc.get((rid, view.name))
                    if a is None or a.reason is not None:
                        continue
                    try:
                        out = model.predict(vb)
                    except UsageError as exc:
                        a.reason = f"not applicable: {exc.reason}"
                        continue
                    a.add(batch, out)
            if progress:
                progress(i + 1, total)
    return {key: a.result(note) for key, a in acc.items()}


def ensemble(preds: Sequence[Predictions]) -> Predictions:
    """The seed ensemble: mean combined p(y=1) over models that predicted the same slices (same
    study ids and slice numbers, same order). Terms are averaged as log-probabilities of the
    mean probabilities, the mask is the AND. One input is returned as it is."""
    usable = [p for p in preds if p.ok]
    if not usable:
        reasons = sorted({p.reason for p in preds if p.reason})
        return Predictions.empty("; ".join(reasons) if reasons else "no predictions")
    if len(usable) == 1:
        return usable[0]
    ref = usable[0]
    for p in usable[1:]:
        if p.n != ref.n or not np.array_equal(p.slice, ref.slice) or not np.array_equal(p.study_id.astype(str), ref.study_id.astype(str)):
            raise UsageError("ensemble", "seed predictions cover different slices; they cannot be averaged")
    p1 = np.mean([p.p for p in usable], axis=0)
    eps = 1e-12
    combined = np.stack([np.log(np.clip(1.0 - p1, eps, 1.0)), np.log(np.clip(p1, eps, 1.0))], axis=-1)
    terms: dict[str, np.ndarray] = {}
    mask: dict[str, np.ndarray] = {}
    for name in ref.terms:
        if not all(name in p.terms for p in usable):
            continue
        m = np.logical_and.reduce([p.mask[name] for p in usable])
        pe = np.mean([np.exp(p.terms[name][..., 1]) for p in usable], axis=0)
        t = np.stack([np.log(np.clip(1.0 - pe, eps, 1.0)), np.log(np.clip(pe, eps, 1.0))], axis=-1)
        terms[name] = np.where(m[:, None, None], t, 0.0)
        mask[name] = m
    return Predictions(ref.study_id, ref.slice, ref.labels, p1, combined, terms, mask, None, ref.note)


def error_reason(exc: BaseException) -> str:
    return exc.one_line() if isinstance(exc, I2M2Error) else f"{type(exc).__name__}: {' '.join(str(exc).split())}"
