"""Training with PyTorch Lightning: the DataModule (cohort, splits, loaders, class balance), the
LightningModule (loss, optimiser, validation AUROC) and :func:`train`, the library entry point.

The loss is the joint end-to-end negative log-likelihood of the normalised product of experts,
per head, class-weighted and averaged over the four heads (the knee reference trains the product
the same way, with the sum over heads; the mean only rescales the loss)::

    loss = 1/4 * sum_h  NLL_w( log p(y_h | x) ),   log p(y|x) = sum_e log_softmax(z_e) - logsumexp_y(...)

Warm start (``warm_start=True``, the paper's AV-MNIST recipe): first every expert of the variant
is trained alone -- the loss is the mean of each expert's own NLL; the experts share no
parameters, so this is exactly training each one separately, in one pass -- for
``training.warm_start_epochs`` epochs; then the product is fine-tuned end to end from those
weights with a fresh optimiser (learning rates times ``training.finetune_lr_scale``) and early
stopping.

Validation after every epoch: slice-level AUROC of p(y=1) per head for the combined prediction
and for each expert; early stopping and the choice of the best epoch use ``val_auroc_mean``, the
mean over the heads whose AUROC is defined (0.5 when none is). The best epoch's weights are kept
in memory (no pickled Lightning checkpoint) and restored at the end of fitting.

After fitting, rank 0 refits the product's prior on the validation slices
(``training.calibration: prior``, :mod:`i2m2_med.metrics.calibration`: class-weighted training leaves the
product with the probabilities of a balanced cohort; one log-odds offset per head restores the
cohort's prevalence without changing any slice-level ranking), then evaluates the best weights
on the validation and test splits (slice- and study-level AUROC with bootstrap CIs, per head,
per expert and combined; see :func:`i2m2_med.metrics.tables.metrics_table`) and writes
``RUN_DIR/model.safetensors`` (through :mod:`i2m2_med.checkpoint`), ``RUN_DIR/metrics.json``,
``RUN_DIR/predictions.csv`` and ``RUN_DIR/config.yaml``; Lightning's CSV logs go to
``RUN_DIR/logs/``.

Scale-out: ``devices``, ``num_nodes`` and ``strategy`` go to the Lightning Trainer. ``ddp``
(one process per device, launched by re-running the command) is the recommended multi-device
strategy; validation predictions are gathered across processes (``all_gather``) so every rank
sees the same AUROC and stops at the same epoch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, WeightedRandomSampler

from i2m2_med.atomic import json_safe
from i2m2_med.augment import BatchAugment
from i2m2_med.config import Config, load_config
from i2m2_med.dataset import (
    Cohort,
    SliceDataset,
    class_weights,
    collate_samples,
    data_fingerprint,
    in_view_rows,
    load_cohort,
    positive_fraction,
    sampler_weights,
)
from i2m2_med.errors import UsageError
from i2m2_med.heads import HEADS, PATHOLOGY_HEADS
from i2m2_med.metrics.aggregation import aggregation_rule
from i2m2_med.metrics.calibration import calibration_errors, fit_prior_offset
from i2m2_med.models import (
    I2M2Model,
    build_model,
    nll,
    per_expert_param_groups,
    variant_experts,
)

CHECKPOINT_NAME = "model.safetensors"
METRICS_NAME = "metrics.json"
PREDICTIONS_NAME = "predictions.csv"
CONFIG_NAME = "config.yaml"
OBJECTIVES: tuple[str, ...] = ("product", "experts")
ACCELERATORS: tuple[str, ...] = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")

# ---- data ----------------------------------------------------------------------------------------


class I2M2DataModule(pl.LightningDataModule):
    """Owns the cohort, its subject-level splits and the loaders.

    Args:
        cohort: a loaded :class:`~i2m2_med.dataset.Cohort`, or ``data_dir`` to load one.
        config: the :class:`~i2m2_med.config.Config` (image size, batch size, workers, cache,
            class weighting, split fractions).
        seed: seeds the training shuffle / weighted sampler.
        batch_size, num_workers, cache_size: override the config's.

    ``class_weights`` (``[4, 2]`` or None) is for the loss, computed from the training labels when
    ``training.class_weighting`` is ``loss`` or ``both``; the training loader draws with a
    :class:`~torch.utils.data.WeightedRandomSampler` (:func:`~i2m2_med.dataset.sampler_weights`,
    with replacement, one epoch = as many draws as training slices) when it is ``sampler`` or
    ``both``, and shuffles otherwise.
    """

    def __init__(
        self,
        config: Config,
        cohort: Cohort | None = None,
        data_dir: str | os.PathLike | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        num_workers: int | None = None,
        cache_size: int | None = None,
        labels: str | os.PathLike | None = None,
        clinical: str | os.PathLike | None = None,
        splits: str | os.PathLike | None = None,
        datasets: Mapping[str, SliceDataset] | None = None,
    ):
        super().__init__()
        if cohort is None:
            if data_dir is None:
                raise UsageError("I2M2DataModule", "give a cohort or a data_dir")
            cohort = load_cohort(
                data_dir,
                labels=labels,
                clinical=clinical,
                splits=splits,
                val_fraction=config.training.val_fraction,
                test_fraction=config.training.test_fraction,
            )
        self.cohort = cohort
        self.config = config
        self.seed = int(seed)
        t = config.training
        self.batch_size = int(batch_size if batch_size is not None else t.batch_size)
        self.num_workers = int(num_workers if num_workers is not None else t.num_workers)
        self.cache_size = int(cache_size if cache_size is not None else t.cache_size)
        if self.batch_size < 1 or self.num_workers < 0 or self.cache_size < 0:
            raise UsageError("I2M2DataModule", "batch_size must be >= 1, num_workers and cache_size >= 0")
        self.datasets: dict[str, SliceDataset] = {
            name: SliceDataset(cohort, name, image_size=config.image_size, cache_size=self.cache_size)
            for name in ("train", "val", "test") if datasets is None or name not in datasets
        }
        if datasets is not None:  # shared across runs (e.g. an ablation grid): their caches are reused
            self.datasets.update({name: datasets[name] for name in ("train", "val", "test") if name in datasets})
        for name in ("train", "val"):
            if len(self.datasets[name]) == 0:
                raise UsageError(
                    cohort.root,
                    f"the {name} split has no slices ({len(cohort.studies)} labelled studies; "
                    "a cohort needs at least 3 subjects)",
                )
        train_labels = self.datasets["train"].label_matrix()
        weighting = t.class_weighting
        self.class_weights: Tensor | None = class_weights(train_labels) if weighting in ("loss", "both") else None
        self.sample_weights: Tensor | None = sampler_weights(train_labels) if weighting in ("sampler", "both") else None
        self.train_positive_fraction = positive_fraction(train_labels)

    @property
    def n_tabular(self) -> int:
        return self.cohort.n_tabular

    def _loader(self, dataset: SliceDataset, train: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        sampler = None
        shuffle = False
        if train and self.sample_weights is not None:
            sampler = WeightedRandomSampler(self.sample_weights, num_samples=len(dataset), replacement=True, generator=generator)
        elif train:
            shuffle = True
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_samples,
            generator=generator if shuffle else None,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["train"], train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["val"], train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["test"], train=False)


# ---- the loop ------------------------------------------------------------------------------------


def product_loss(out: Any, labels: Tensor, weights: Tensor | None) -> Tensor:
    """Class-weighted NLL of the normalised product, averaged over the heads (scalar)."""
    return nll(out.combined, labels, weights) / labels.shape[1]


def experts_loss(out: Any, labels: Tensor, weights: Tensor | None) -> Tensor:
    """Mean over the terms of each term's own class-weighted NLL (averaged over heads); a term
    masked out for some samples (absent modality) counts only on the others."""
    losses = []
    for name, term in out.terms.items():
        keep = out.mask.get(name)
        if keep is not None:
            if not bool(keep.any()):
                continue
            term, y = term[keep], labels[keep]
        else:
            y = labels
        losses.append(nll(term, y, weights) / labels.shape[1])
    if not losses:
        raise UsageError("experts_loss", "no expert term to train in this batch")
    return torch.stack(losses).mean()


def _mean_auroc(y: np.ndarray, p: np.ndarray, heads: Sequence[int]) -> tuple[float | None, list[float | None]]:
    """Per-head slice AUROC (None where undefined or where p has NaN) and their mean."""
    from i2m2_med.metrics.ranking import auroc_result

    per: list[float | None] = []
    for h in range(y.shape[1]):
        ok = np.isfinite(p[:, h])
        if not ok.any():
            per.append(None)
            continue
        value = auroc_result(y[ok, h] > 0.5, p[ok, h]).value
        per.append(value)
    chosen = [per[h] for h in heads if per[h] is not None]
    return (float(np.mean(chosen)) if chosen else None), per


class I2M2Module(pl.LightningModule):
    """The training loop around an :class:`~i2m2_med.models.I2M2Model` (which knows nothing of it).

    Args:
        model: the model of a variant.
        config: its configuration (optimiser settings, scheduler, epochs).
        class_weights: ``[4, 2]`` loss weights or None.
        objective: ``"product"`` (end-to-end NLL of the product) or ``"experts"`` (each expert's
            own NLL: the first stage of the warm start).
        max_epochs: horizon of the cosine schedule (default ``config.training.max_epochs``).
        lr_scale: multiplies every parameter group's learning rate (the fine-tuning stage of the
            warm start uses ``config.training.finetune_lr_scale``).

    Logged: ``train_loss`` (step and epoch), ``val_auroc_mean``, ``val_auroc_<head>``,
    ``val_auroc_mean_<expert>``, ``best_val_auroc_mean``, ``best_epoch``. ``history`` holds one
    dict per validation epoch; ``best_state`` the best epoch's weights (CPU copies).
    """

    def __init__(
        self,
        model: I2M2Model,
        config: Config,
        class_weights: Tensor | None = None,
        objective: str = "product",
        max_epochs: int | None = None,
        lr_scale: float = 1.0,
    ):
        super().__init__()
        if objective not in OBJECTIVES:
            raise UsageError("objective", f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
        self.model = model
        self.config = config
        self.objective = objective
        self.max_epochs = int(max_epochs or config.training.max_epochs)
        self.lr_scale = float(lr_scale)
        self.register_buffer("class_weights", class_weights.float() if class_weights is not None else None, persistent=False)
        self.term_names: list[str] = list(model.expert_names)
        self.history: list[dict[str, Any]] = []
        self.best_score: float = -math.inf
        self.best_epoch: int | None = None
        self.best_state: dict[str, Tensor] | None = None
        self.train_samples = 0
        self.train_seconds = 0.0
        self.val_seconds = 0.0
        self._val: list[tuple[Tensor, Tensor, Tensor]] = []
        self._loss_sum = 0.0
        self._loss_n = 0
        self._t_epoch = 0.0
        self._t_val = 0.0
        aug = config.training.augment
        self.augment = BatchAugment(aug.flip_p, aug.max_shift, seed=config.training.seed)

    def forward(self, batch: Mapping[str, Any]) -> Any:
        return self.model(batch)

    # -- training --
    def _loss(self, out: Any, labels: Tensor) -> Tensor:
        if self.objective == "product":
            return product_loss(out, labels, self.class_weights)
        return experts_loss(out, labels, self.class_weights)

    def on_train_start(self) -> None:
        # each DDP process draws its own augmentations (reproducibly)
        self.augment.generator.manual_seed(int(self.config.training.seed) + 1_000_003 * int(self.global_rank))

    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._loss_n = 0.0, 0
        self._t_epoch = time.perf_counter()
        self._val_in_epoch = 0.0

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        labels = batch["labels"]
        if self.augment.active:
            batch = self.augment(batch)
        out = self.model(batch)
        loss = self._loss(out, labels)
        n = int(labels.shape[0])
        self._loss_sum += float(loss.detach()) * n
        self._loss_n += n
        self.train_samples += n
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.train_seconds += time.perf_counter() - self._t_epoch - self._val_in_epoch

    # -- validation --
    def on_validation_epoch_start(self) -> None:
        self._val = []
        self._t_val = time.perf_counter()

    def _probabilities(self, out: Any) -> Tensor:
        """[B, 1 + E, 4]: combined p(y=1), then each expert's own (NaN where it did not count)."""
        b = out.combined.shape[0]
        cols = [out.p1().float()]
        for name in self.term_names:
            if name in out.terms:
                p = out.expert_p1(name).float()
                keep = out.mask.get(name)
                if keep is not None:
                    p = torch.where(keep[:, None], p, torch.full_like(p, float("nan")))
            else:
                p = torch.full((b, len(HEADS)), float("nan"), device=out.combined.device)
            cols.append(p)
        return torch.stack(cols, dim=1)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        out = self.model(batch)
        self._val.append((self._probabilities(out).detach(), batch["labels"].detach().float(), batch["index"].detach()))

    def _gathered(self) -> tuple[np.ndarray, np.ndarray]:
        if self._val:
            p = torch.cat([v[0] for v in self._val])
            y = torch.cat([v[1] for v in self._val])
            idx = torch.cat([v[2] for v in self._val])
        else:
            p = torch.zeros((0, 1 + len(self.term_names), len(HEADS)), device=self.device)
            y = torch.zeros((0, len(HEADS)), device=self.device)
            idx = torch.zeros((0,), dtype=torch.int64, device=self.device)
        if self.trainer is not None and self.trainer.world_size > 1:
            p = self.all_gather(p).reshape(-1, *p.shape[1:])
            y = self.all_gather(y).reshape(-1, y.shape[-1])
            idx = self.all_gather(idx).reshape(-1)
        idx_np = idx.cpu().numpy()
        _, first = np.unique(idx_np, return_index=True)  # the distributed sampler pads with repeats
        return p.cpu().numpy()[first], y.cpu().numpy()[first]

    def on_validation_epoch_end(self) -> None:
        p, y = self._gathered()
        self._val = []
        all_heads = range(len(HEADS))
        mean, per_head = _mean_auroc(y, p[:, 0], all_heads)
        score = 0.5 if mean is None else mean
        record: dict[str, Any] = {
            "epoch": int(self.current_epoch),
            "objective": self.objective,
            "train_loss": (self._loss_sum / self._loss_n) if self._loss_n else None,
            "val_auroc_mean": mean,
            "val_auroc": dict(zip(HEADS, per_head)),
            "experts": {},
        }
        self.log("val_auroc_mean", score, prog_bar=True, sync_dist=True)
        for head, value in zip(HEADS, per_head):
            if value is not None:
                self.log(f"val_auroc_{head}", value, sync_dist=True)
        for j, name in enumerate(self.term_names, start=1):
            e_mean, e_per = _mean_auroc(y, p[:, j], all_heads)
            record["experts"][name] = {"mean": e_mean, **dict(zip(HEADS, e_per))}
            if e_mean is not None:
                self.log(f"val_auroc_mean_{name}", e_mean, sync_dist=True)
        if not self.trainer.sanity_checking:
            if score > self.best_score:
                self.best_score = score
                self.best_epoch = int(self.current_epoch)
                self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            self.history.append(record)
            self.log("best_val_auroc_mean", self.best_score, sync_dist=True)
            self.log("best_epoch", float(self.best_epoch), sync_dist=True)
        elapsed = time.perf_counter() - self._t_val
        self.val_seconds += elapsed
        self._val_in_epoch = getattr(self, "_val_in_epoch", 0.0) + elapsed

    def on_fit_end(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)

    # -- optimiser --
    def configure_optimizers(self) -> Any:
        optim = self.config.optim
        groups = per_expert_param_groups(self.model, self.config)
        for group in groups:
            group["lr"] *= self.lr_scale
        opt = torch.optim.AdamW(groups, betas=tuple(optim.betas))
        if optim.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(self.max_epochs, 1))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        return opt


# ---- prediction and metrics -------------------------------------------------------------------


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
) -> dict[str, Any]:
    """Slice- and study-level metrics (:func:`i2m2_med.metrics.tables.metrics_table`) of the
    combined prediction and of every expert, from :func:`predict_dataset` output.

    ``in_view`` (study id -> (S, 4) bool, :attr:`i2m2_med.dataset.Cohort.in_view`) adds the
    level ``"in_view"``: each head scored only on the slices where its anatomy is in view
    (:func:`i2m2_med.metrics.tables.in_view_metrics`), i.e. findings against their mimics.

    Returns ``{"combined": table, "experts": {name: table}, "summary": {name: {...}}}``; an
    expert that did not count for some slices is scored on the others (``n`` says how many).
    """
    from i2m2_med.metrics.tables import in_view_metrics, metrics_table

    rule_name, k = aggregation_rule(rule)
    y = np.asarray(pred["labels"], dtype=np.float64)
    ids = np.asarray(pred["study_id"]).astype(str)
    view = None
    if in_view is not None and len(ids) and all(sid in in_view for sid in ids):
        view = in_view_rows(in_view, ids, pred["slice"])
    out: dict[str, Any] = {"combined": None, "experts": {}, "summary": {}}
    for name, p in pred["p"].items():
        ok = np.isfinite(p).all(axis=1) & np.isfinite(y).all(axis=1)
        table = metrics_table(
            y[ok], np.clip(p[ok], 0.0, 1.0), ids[ok], rule=rule_name, k=k, split=split, n_boot=n_boot, seed=seed
        )
        if view is not None:
            table["in_view"] = in_view_metrics(
                y[ok], np.clip(p[ok], 0.0, 1.0), view[ok], ids[ok], split=split, n_boot=n_boot, seed=seed
            )
        if name == "combined":
            out["combined"] = table
        else:
            out["experts"][name] = table
        out["summary"][name] = _summary_of(table)
    return out


def oracle_from_manifest(manifest: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What the synthetic generator's manifest says a model can reach, or None without a manifest.

    ``ceiling_auroc``: per head, the AUROC of a perfect predictor of the true findings against the
    annotated labels (``oracle_ceiling_auroc``: "empirical" on this cohort, else "expected"; 1.0
    without label noise); ``mean_pathologies``: its mean over ACL/MTEAR/CART (the heads where it
    is defined). Also copied when present: ``episode_bayes_auroc`` (the best AUROC of one
    finding-vs-mimic episode from magnitude, phase and both: the regime's design) and
    ``slice_position_auroc`` (what the slice position alone predicts) and
    ``slice_evidence_auroc`` (the Bayes score of the cues every slice shows: what the images allow).
    """
    if not manifest:
        return None
    ceiling = manifest.get("oracle_ceiling_auroc")
    out: dict[str, Any] = {}
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
        out["ceiling_auroc"] = per_head
        defined = [per_head[h] for h in PATHOLOGY_HEADS if per_head.get(h) is not None]
        out["mean_pathologies"] = float(np.mean(defined)) if defined else None
        if manifest.get("oracle_ceiling_note"):
            out["note"] = manifest["oracle_ceiling_note"]
    for key in ("episode_bayes_auroc", "slice_position_auroc", "slice_evidence_auroc", "regime", "label_noise"):
        if key in manifest:
            out[key] = manifest[key]
    return out or None


def oracle_mean_pathologies(oracle: Mapping[str, Any] | None) -> float | None:
    """The oracle ceiling's mean AUROC over ACL/MTEAR/CART (None when unknown)."""
    if not oracle:
        return None
    value = oracle.get("mean_pathologies")
    return None if value is None else float(value)


# ---- the entry point ---------------------------------------------------------------------------


def _check_args(epochs: int | None, devices: int | str, num_nodes: int, strategy: str, seed: int, accelerator: str) -> None:
    if epochs is not None and (isinstance(epochs, bool) or int(epochs) < 1):
        raise UsageError("--epochs", f"must be a positive integer, got {epochs}")
    if isinstance(devices, str):
        if devices != "auto":
            raise UsageError("--devices", f"must be a positive integer or 'auto', got {devices!r}")
    elif int(devices) < 1:
        raise UsageError("--devices", f"must be a positive integer, got {devices}")
    if int(num_nodes) < 1:
        raise UsageError("--num-nodes", f"must be a positive integer, got {num_nodes}")
    if int(seed) < 0:
        raise UsageError("--seed", f"must be a non-negative integer, got {seed}")
    if accelerator not in ACCELERATORS:
        raise UsageError("--accelerator", f"unknown accelerator {accelerator!r}; expected one of {', '.join(ACCELERATORS)}")
    from pytorch_lightning.strategies import StrategyRegistry

    if strategy != "auto" and strategy not in StrategyRegistry.available_strategies():
        known = ", ".join(["auto", "ddp", "ddp_spawn", "ddp_fork", "fsdp", "deepspeed"])
        raise UsageError("--strategy", f"unknown strategy {strategy!r}; e.g. {known}")


def _precision(config: Config) -> str:
    """The config's precision on a GPU; full precision on a CPU (mixed precision is a GPU feature here)."""
    return config.training.precision if torch.cuda.is_available() else "32-true"


@contextlib.contextmanager
def _quiet_lightning(progress: bool) -> Iterator[None]:
    """Silence Lightning's informational logs and advice warnings around a fit (the caller
    decides what the user sees; errors still propagate), and restore torch's deterministic-
    algorithms setting afterwards (the Trainer turns it on for the whole process)."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    names = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING if progress else logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*number of training batches.*")
            warnings.filterwarnings("ignore", message=r".*log_every_n_steps.*")
            warnings.filterwarnings("ignore", message=r".*GPU available but not used.*")
            warnings.filterwarnings("ignore", message=r".*Checkpoint directory.*")
            warnings.filterwarnings("ignore", message=r".*Experiment logs directory.*")
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _trainer(
    out_dir: Path,
    config: Config,
    max_epochs: int,
    devices: int | str,
    num_nodes: int,
    strategy: str,
    progress: bool,
    early_stopping: bool,
    n_train_batches: int,
    name: str,
    tensorboard: bool,
    accelerator: str,
    limit_train_batches: int | float | None = None,
) -> pl.Trainer:
    from pytorch_lightning.callbacks import EarlyStopping, TQDMProgressBar
    from pytorch_lightning.loggers import CSVLogger

    loggers: list[Any] = [
        CSVLogger(str(out_dir), name="logs", version=name, flush_logs_every_n_steps=max(1, n_train_batches))
    ]
    if tensorboard:
        try:
            from pytorch_lightning.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(str(out_dir), name="tensorboard", version=name))
        except ModuleNotFoundError as exc:
            raise UsageError("--tensorboard", f"TensorBoard is not installed ({exc.name})") from None
    callbacks: list[Any] = []
    if early_stopping:
        es = config.training.early_stopping
        callbacks.append(EarlyStopping(monitor=es.monitor, mode=es.mode, patience=es.patience, check_finite=True))
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, n_train_batches // 20)))
    return pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        max_epochs=max_epochs,
        precision=_precision(config),
        logger=loggers,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, n_train_batches)),
        gradient_clip_val=config.optim.gradient_clip_val,
        deterministic=True if not torch.cuda.is_available() else "warn",
        default_root_dir=str(out_dir),
        limit_train_batches=limit_train_batches,
    )


def resolve_config(config: str | os.PathLike | Config, epochs: int | None, seed: int, warm_start: bool | None) -> Config:
    """The config with the command line's epochs, seed and warm-start applied (and re-validated)."""
    cfg = config if isinstance(config, Config) else load_config(config)
    updates: dict[str, Any] = {"training.seed": int(seed)}
    if epochs is not None:
        updates["training.max_epochs"] = int(epochs)
    if warm_start is not None:
        updates["training.warm_start"] = bool(warm_start)
    return cfg.with_updates(**updates)


def train(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    variant: str = "i2m2",
    config: str | os.PathLike | Config = "cpu",
    epochs: int | None = None,
    seed: int = 0,
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    warm_start: bool | None = None,
    progress: bool = True,
    *,
    labels: str | os.PathLike | None = None,
    clinical: str | os.PathLike | None = None,
    splits: str | os.PathLike | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    cache_size: int | None = None,
    n_boot: int = 1000,
    tensorboard: bool = False,
    accelerator: str = "auto",
    cohort: Cohort | None = None,
    extra: Mapping[str, Any] | None = None,
    limit_train_batches: int | float | None = None,
    datasets: Mapping[str, SliceDataset] | None = None,
) -> dict[str, Any]:
    """Train ``variant`` on the cohort under ``data_dir``; write the run to ``out_dir``.

    Args:
        data_dir: folder of studies with ``annotations/knee.csv`` (or ``labels``), optionally
            ``tabular.csv``, ``splits.csv`` and ``manifest.json`` (see :mod:`i2m2_med.dataset`).
        out_dir: run folder: ``model.safetensors``, ``metrics.json``, ``predictions.csv``,
            ``config.yaml``, ``logs/``.
        variant: ``mag``, ``phase``, ``tab``, ``intra``, ``inter``, ``i2m2``, ``i2m2-notab``.
        config: ``"cpu"``, ``"paper"``, a YAML path or a Config.
        epochs: overrides ``training.max_epochs``; seed: ``seed_everything`` and the shuffle.
        devices, num_nodes, strategy: Lightning's (``strategy="ddp"`` for several devices).
        warm_start: train the experts alone first, then the product (None: the config's choice).
        progress: progress bars (Lightning's, via tqdm).
        n_boot: bootstrap replicates of the confidence intervals.
        limit_train_batches: Lightning's, to shorten epochs (smoke tests, quick checks).
        cohort: an already loaded cohort (then ``data_dir`` only names it).
        datasets: already built :class:`~i2m2_med.dataset.SliceDataset` of ``cohort`` by split
            name (same ``image_size``), used instead of new ones -- with their caches, so runs that
            share them (an ablation grid) transform each slice once.

    Returns the metrics dict written to ``metrics.json`` on the global rank 0 process; other
    ranks of a multi-process run return ``{"rank": r}``.

    Raises UsageError / ConfigError for bad arguments (one line), and the data layer's errors for
    unreadable data.
    """
    from i2m2_med.atomic import write_json, write_text
    from i2m2_med.checkpoint import save_checkpoint

    _check_args(epochs, devices, num_nodes, strategy, seed, accelerator)
    variant_experts(variant)
    cfg = resolve_config(config, epochs, seed, warm_start)
    config_label = config if isinstance(config, str) else (str(config) if not isinstance(config, Config) else cfg.name)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(out, "the run folder is a file")
    data_dir = Path(data_dir)

    pl.seed_everything(int(seed), workers=True, verbose=False)
    dm = I2M2DataModule(
        cfg,
        cohort=cohort,
        data_dir=data_dir,
        seed=seed,
        batch_size=batch_size,
        num_workers=num_workers,
        cache_size=cache_size,
        labels=labels,
        clinical=clinical,
        splits=splits,
        datasets=datasets,
    )
    model = build_model(variant, cfg, dm.n_tabular)
    if model.prior is not None and cfg.training.class_weighting == "none":
        model.prior.set_frequencies(torch.as_tensor(dm.train_positive_fraction, dtype=torch.float32))
    n_train_batches = max(1, math.ceil(len(dm.datasets["train"]) / dm.batch_size))
    out.mkdir(parents=True, exist_ok=True)

    t_start = time.perf_counter()
    cpu_start = time.process_time()
    stages: list[dict[str, Any]] = []
    with _quiet_lightning(progress):
        if cfg.training.warm_start:
            ws_epochs = cfg.training.warm_start_epochs
            module = I2M2Module(model, cfg, dm.class_weights, objective="experts", max_epochs=ws_epochs)
            trainer = _trainer(out, cfg, ws_epochs, devices, num_nodes, strategy, progress, False,
                               n_train_batches, "warm_start", tensorboard, accelerator, limit_train_batches)
            t0 = time.perf_counter()
            trainer.fit(module, datamodule=dm)
            stages.append(_stage_record("experts", module, trainer, time.perf_counter() - t0))
            model = module.model
        module = I2M2Module(model, cfg, dm.class_weights, objective="product",
                            lr_scale=cfg.training.finetune_lr_scale if cfg.training.warm_start else 1.0)
        trainer = _trainer(out, cfg, cfg.training.max_epochs, devices, num_nodes, strategy, progress, True,
                           n_train_batches, "product", tensorboard, accelerator, limit_train_batches)
        t0 = time.perf_counter()
        trainer.fit(module, datamodule=dm)
        stages.append(_stage_record("product", module, trainer, time.perf_counter() - t0))
    fit_seconds = time.perf_counter() - t_start
    fit_cpu_seconds = time.process_time() - cpu_start
    model = module.model

    if trainer.global_rank != 0:
        return {"rank": int(trainer.global_rank)}

    device = torch.device("cuda") if (torch.cuda.is_available() and accelerator != "cpu") else torch.device("cpu")
    model = model.to(device).eval()
    eval_batch = max(dm.batch_size, 64)
    calibration = _refit_prior(model, cfg, dm, eval_batch, device)
    splits_out: dict[str, Any] = {}
    predictions: dict[str, Any] = {}
    for split in ("val", "test"):
        ds = dm.datasets[split]
        if len(ds) == 0:
            splits_out[split] = None
            continue
        pred = predict_dataset(model, ds, batch_size=eval_batch, num_workers=0, device=device)
        predictions[split] = pred
        splits_out[split] = prediction_metrics(
            pred, split, cfg.training.aggregation, n_boot=n_boot, seed=seed, in_view=dm.cohort.in_view
        )
    model = model.cpu()
    if calibration.get("offsets") is not None:
        offsets = [calibration["offsets"][h] for h in HEADS]
        calibration["ece_slice"] = {
            split: calibration_errors(pred["log_odds"], pred["labels"], offsets) for split, pred in predictions.items()
        }

    train_slices = sum(s["train_samples"] for s in stages)
    train_seconds = sum(s["train_seconds"] for s in stages)
    oracle = oracle_from_manifest(dm.cohort.manifest)
    test_summary = (splits_out.get("test") or {}).get("summary", {}).get("combined") or {}
    oracle_mean = oracle_mean_pathologies(oracle)
    metrics: dict[str, Any] = {
        "variant": variant,
        "experts": list(model.expert_names),
        "config": config_label,
        "seed": int(seed),
        "data_dir": str(data_dir),
        "data_fingerprint": data_fingerprint(dm.cohort),
        "cohort": dm.cohort.summary(),
        "heads": list(HEADS),
        "aggregation": {"name": cfg.training.aggregation, "rule": aggregation_rule(cfg.training.aggregation)[0],
                        "k": aggregation_rule(cfg.training.aggregation)[1]},
        "score": "p(y=1) of each head (combined: the normalised product; experts: their own softmax)",
        "oracle": oracle,
        "oracle_mean_pathologies": oracle_mean,
        "test_mean_pathologies": {
            "slice": (test_summary.get("slice") or {}).get("mean_pathologies"),
            "study": (test_summary.get("study") or {}).get("mean_pathologies"),
            "in_view": (test_summary.get("in_view") or {}).get("mean_pathologies"),
        },
        "training": {
            "warm_start": bool(cfg.training.warm_start),
            "stages": stages,
            "epochs_run": sum(s["epochs_run"] for s in stages),
            "best_epoch": stages[-1]["best_epoch"],
            "best_val_auroc_mean": stages[-1]["best_val_auroc_mean"],
            "time_s": fit_seconds,
            "cpu_time_s": fit_cpu_seconds,
            "cpu_time_note": "CPU seconds of this process (all its threads) during fitting: on a busy "
            "machine, cpu_time_s / cores estimates the wall time an idle machine would take",
            "train_time_s": train_seconds,
            "train_slices": train_slices,
            "samples_per_s": (train_slices / train_seconds) if train_seconds > 0 else None,
            "world_size": int(trainer.world_size),
            "devices": devices,
            "num_nodes": int(num_nodes),
            "strategy": strategy,
            "accelerator": type(trainer.accelerator).__name__,
            "precision": _precision(cfg),
            "batch_size": dm.batch_size,
            "class_weighting": cfg.training.class_weighting,
            "class_weights": None if dm.class_weights is None else dm.class_weights.tolist(),
            "torch_threads": torch.get_num_threads(),
        },
        "inference": {
            split: {"slices": int(len(p["study_id"])), "seconds": p["seconds"], "slices_per_s": p["slices_per_s"],
                    "note": "reading + transforms + forward, batch %d, %s" % (eval_batch, device.type)}
            for split, p in predictions.items()
        },
        "calibration": calibration,
        "val": splits_out.get("val"),
        "test": splits_out.get("test"),
    }
    if extra:
        metrics["extra"] = dict(extra)
    save_checkpoint(
        out / CHECKPOINT_NAME,
        model,
        cfg,
        variant,
        dm.n_tabular,
        dm.cohort.tabular_names,
        metrics=_checkpoint_metrics(metrics),
        data_fingerprint=metrics["data_fingerprint"],
        extra={"seed": int(seed), "epochs_run": metrics["training"]["epochs_run"], "data_dir": str(data_dir),
               "warm_start": bool(cfg.training.warm_start)},
    )
    metrics["checkpoint"] = str(out / CHECKPOINT_NAME)
    write_text(out / CONFIG_NAME, cfg.to_yaml())
    _write_predictions(out / PREDICTIONS_NAME, predictions)
    metrics = json_safe(metrics)
    write_json(out / METRICS_NAME, metrics)
    return metrics


def _refit_prior(model: I2M2Model, cfg: Config, dm: "I2M2DataModule", batch_size: int, device: torch.device) -> dict[str, Any]:
    """``training.calibration: prior``: fit the prior offset of the trained product on the
    validation slices (:func:`i2m2_med.metrics.calibration.fit_prior_offset`) and set it on ``model``.
    Returns the JSON-ready record for ``metrics.json`` (offsets None when nothing was fitted)."""
    record: dict[str, Any] = {"method": cfg.training.calibration, "fitted_on": None, "offsets": None}
    if cfg.training.calibration == "none":
        record["note"] = "the product as trained (training.calibration: none)"
        return record
    ds = dm.datasets["val"]
    if len(ds) == 0:
        record["note"] = "not fitted: the validation split is empty"
        return record
    pred = predict_dataset(model, ds, batch_size=batch_size, num_workers=0, device=device)
    offsets, report = fit_prior_offset(pred["log_odds"], pred["labels"])
    record.update(report)
    if not any(report["per_head"][h]["fitted"] for h in HEADS):
        record["note"] = "not fitted: no head has both classes on the validation slices"
        return record
    model.set_prior_offset(torch.from_numpy(offsets))
    record.update(
        fitted_on="val",
        offsets={h: float(offsets[i]) for i, h in enumerate(HEADS)},
        note="one log-odds offset per head added to the product's prior term, fitted by maximum likelihood "
        "on the validation slices with every expert frozen; slice-level AUROC is unchanged. The validation "
        "figures after the fit are in-sample for the offset; test is the honest check.",
    )
    return record


def _stage_record(objective: str, module: I2M2Module, trainer: pl.Trainer, seconds: float) -> dict[str, Any]:
    cb = trainer.callback_metrics
    best = module.best_score if module.best_epoch is not None else (float(cb["best_val_auroc_mean"]) if "best_val_auroc_mean" in cb else None)
    best_epoch = module.best_epoch if module.best_epoch is not None else (int(cb["best_epoch"]) if "best_epoch" in cb else None)
    return {
        "objective": objective,
        "epochs_run": int(trainer.current_epoch),
        "best_epoch": best_epoch,
        "best_val_auroc_mean": best,
        "stopped_early": bool(getattr(trainer, "should_stop", False)) and int(trainer.current_epoch) < int(trainer.max_epochs or 0),
        "seconds": seconds,
        "train_seconds": module.train_seconds,
        "val_seconds": module.val_seconds,
        "train_samples": int(module.train_samples) * int(trainer.world_size),
        "history": module.history,
    }


def _checkpoint_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The compact part of the metrics that travels inside the checkpoint."""
    keep = {k: metrics[k] for k in ("variant", "seed", "aggregation", "oracle_mean_pathologies", "test_mean_pathologies")}
    keep["training"] = {k: v for k, v in metrics["training"].items() if k != "stages"}
    keep["summary"] = {
        split: (metrics[split] or {}).get("summary") for split in ("val", "test")
    }
    return json_safe(keep)


def _write_predictions(path: Path, predictions: Mapping[str, Mapping[str, Any]]) -> None:
    """One row per slice of val and test: split, study_id, slice, y_<head>, p_<head> (combined)
    and p_<expert>_<head>."""
    import pandas as pd

    from i2m2_med.atomic import atomic_path

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


__all__ = [
    "I2M2DataModule",
    "I2M2Module",
    "experts_loss",
    "oracle_from_manifest",
    "predict_dataset",
    "prediction_metrics",
    "product_loss",
    "resolve_config",
    "train",
]

