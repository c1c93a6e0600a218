"""The LightningModule of I2M2: loss, optimiser and validation AUROC (the model itself,
:class:`~i2m2_med.models.I2M2Model`, knows nothing of training).

The loss is the joint end-to-end negative log-likelihood of the normalised product of experts,
per head, class-weighted and averaged over the four heads (the knee reference trains the product
the same way, with the sum over heads; the mean only rescales the loss)::

    loss = 1/4 * sum_h  NLL_w( log p(y_h | x) ),   log p(y|x) = sum_e log_softmax(z_e) - logsumexp_y(...)

With the ``experts`` objective (the first stage of a warm start) the loss is the mean of each
expert's own NLL; the experts share no parameters, so this is exactly training each one
separately, in one pass.

Validation after every epoch: slice-level AUROC of p(y=1) per head for the combined prediction
and for each expert; early stopping and the choice of the best epoch use ``val_auroc_mean``, the
mean over the heads whose AUROC is defined (0.5 when none is). The best epoch's weights are kept
in memory (no pickled Lightning checkpoint) and restored at the end of fitting. Validation
predictions are gathered across processes (``all_gather``) so every rank sees the same AUROC and
stops at the same epoch.
"""

from __future__ import annotations

import math
import time
from typing import Any, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from i2m2_med.config import Config
from i2m2_med.data.augment import BatchAugment
from i2m2_med.errors import UsageError
from i2m2_med.heads import HEADS
from i2m2_med.metrics.ranking import auroc_result
from i2m2_med.models import I2M2Model, I2M2Output, nll, per_expert_param_groups
from i2m2_med.training.resume import random_states, set_random_states

OBJECTIVES: tuple[str, ...] = ("product", "experts")


def product_loss(out: I2M2Output, labels: Tensor, weights: Tensor | None) -> Tensor:
    """Class-weighted NLL of the normalised product, averaged over the heads (scalar)."""
    return nll(out.combined, labels, weights) / labels.shape[1]


def experts_loss(out: I2M2Output, labels: Tensor, weights: Tensor | None) -> Tensor:
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
        val_in_view: (N_val, 4) bool, the validation slices where each head's anatomy is in view
            (row i: item i of the validation dataset). With it the best epoch and early stopping
            follow the combined in-view AUROC (findings against their mimics, mean over the heads
            where it is defined) instead of the slice AUROC, which the slice position alone
            mostly explains.

    Logged: ``train_loss`` (step and epoch), ``val_auroc_mean``, ``val_auroc_<head>``,
    ``val_auroc_mean_<expert>``, ``val_in_view_auroc_mean`` (with ``val_in_view``),
    ``val_selection`` (what chooses the best epoch and stops early), ``best_val_auroc_mean`` (the
    best ``val_selection``), ``best_epoch``. ``history`` holds one
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
        val_in_view: np.ndarray | None = None,
        expert_epochs: Mapping[str, int] | None = None,
    ):
        super().__init__()
        if objective not in OBJECTIVES:
            raise UsageError("objective", f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
        self.model = model
        self.config = config
        self.objective = objective
        self.max_epochs = int(max_epochs or config.training.max_epochs)
        self.lr_scale = float(lr_scale)
        # per expert, the epochs it trains in this stage (the others: all of max_epochs)
        self.expert_epochs = {str(k): int(v) for k, v in (expert_epochs or {}).items()}
        self.val_in_view = None if val_in_view is None else np.asarray(val_in_view, dtype=bool)
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
        # finished expert -> validation batch -> (its sample indices, its logits there)
        self._val_logits: dict[str, dict[int, tuple[Tensor, Tensor]]] = {}
        self._loss_sum = 0.0
        self._loss_n = 0
        self._t_epoch = 0.0
        self._t_val = 0.0
        self._val_in_epoch = 0.0
        aug = config.training.augment
        self.augment = BatchAugment(aug.flip_p, aug.max_shift, seed=config.training.seed)
        self.resumed_seconds = 0.0  # wall time of this stage before the process that resumed it
        self.resumed_cpu_seconds = 0.0  # and its CPU time there
        self._t_fit = time.perf_counter()
        self._cpu_fit = time.process_time()
        self._restored: dict[str, Any] | None = None

    def forward(self, batch: Mapping[str, Any]) -> I2M2Output:
        return self.model(batch)

    # -- training --
    def _loss(self, out: I2M2Output, labels: Tensor) -> Tensor:
        if self.objective == "product":
            return product_loss(out, labels, self.class_weights)
        return experts_loss(out, labels, self.class_weights)

    def on_fit_start(self) -> None:
        self._t_fit = time.perf_counter()
        self._cpu_fit = time.process_time()

    def on_train_start(self) -> None:
        # each DDP process draws its own augmentations (reproducibly)
        self.augment.generator.manual_seed(int(self.config.training.seed) + 1_000_003 * int(self.global_rank))
        if self._restored is not None:  # resumed: continue the random streams where the epoch left them
            self.augment.generator.set_state(self._restored["augment_rng"])
            set_random_states(self._restored["rng"])
            self._restored = None

    @property
    def fit_cpu_seconds(self) -> float:
        """CPU time of this process during this stage so far, including that before a resume."""
        return self.resumed_cpu_seconds + time.process_time() - self._cpu_fit

    @property
    def fit_seconds(self) -> float:
        """Wall time of this stage so far, including the time before a resume."""
        return self.resumed_seconds + time.perf_counter() - self._t_fit

    # -- resumable state (:mod:`.resume`): what Lightning's checkpoint does not hold of its own --
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["i2m2"] = {
            "objective": self.objective,
            "history": self.history,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "train_samples": self.train_samples,
            "train_seconds": self.train_seconds,
            "val_seconds": self.val_seconds,
            "fit_seconds": self.fit_seconds,
            "fit_cpu_seconds": self.fit_cpu_seconds,
            "augment_rng": self.augment.generator.get_state(),
            "rng": random_states(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("i2m2")
        if not isinstance(state, dict) or state.get("objective") != self.objective:
            raise UsageError("--resume", f"the saved stage is not a {self.objective!r} stage")
        self.history = list(state["history"])
        self.best_score = float(state["best_score"])
        self.best_epoch = state["best_epoch"]
        self.best_state = state["best_state"]
        self.train_samples = int(state["train_samples"])
        self.train_seconds = float(state["train_seconds"])
        self.val_seconds = float(state["val_seconds"])
        self.resumed_seconds = float(state["fit_seconds"])
        self.resumed_cpu_seconds = float(state.get("fit_cpu_seconds", 0.0))  # states written before it was kept: 0
        self._restored = {"augment_rng": state["augment_rng"], "rng": state["rng"]}
        # now, for a finished stage (its fit starts no epoch), and again at on_train_start otherwise
        set_random_states(state["rng"])

    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._loss_n = 0.0, 0
        self._t_epoch = time.perf_counter()
        self._val_in_epoch = 0.0

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        labels = batch["labels"]
        if self.augment.active:
            batch = self.augment(batch)
        out = self.model(batch, only=self.active_experts(int(self.current_epoch)))
        loss = self._loss(out, labels)
        n = int(labels.shape[0])
        self._loss_sum += float(loss.detach()) * n
        self._loss_n += n
        self.train_samples += n
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        return loss

    def epochs_of(self, name: str) -> int:
        """Epochs that expert ``name`` (or the prior) trains in this stage."""
        return min(self.expert_epochs.get(name, self.max_epochs), self.max_epochs)

    def active_experts(self, epoch: int) -> tuple[str, ...] | None:
        """The experts trained in ``epoch`` (None: all of them)."""
        if not self.expert_epochs:
            return None
        return tuple(n for n in self.model.expert_names if epoch < self.epochs_of(n))

    def on_train_epoch_end(self) -> None:
        self.train_seconds += time.perf_counter() - self._t_epoch - self._val_in_epoch

    # -- validation --
    def on_validation_epoch_start(self) -> None:
        self._val = []
        self._t_val = time.perf_counter()

    def _probabilities(self, out: I2M2Output) -> Tensor:
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

    def _finished_experts(self, epoch: int) -> tuple[str, ...]:
        """The experts whose own epochs of this stage ended before ``epoch`` (not active in it)."""
        active = self.active_experts(epoch)
        return () if active is None else tuple(n for n in self.model.expert_names if n not in active)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        # A finished expert is no longer updated, so its validation logits are those of its last
        # epoch: they are kept then and reused, instead of running it again every epoch. A batch
        # whose samples differ from the kept ones (or a stage resumed after that epoch) runs it.
        index = batch["index"].detach()
        epoch = int(self.current_epoch)
        known = {}
        for name in self._finished_experts(epoch):
            kept = self._val_logits.get(name, {}).get(batch_idx)
            if kept is not None and torch.equal(kept[0], index):
                known[name] = kept[1]
        out = self.model(batch, known=known)
        if epoch + 1 < self.max_epochs and not self.trainer.sanity_checking:
            finishing = set(self._finished_experts(epoch + 1)) - set(self._finished_experts(epoch))
            for name in finishing & set(out.logits):
                self._val_logits.setdefault(name, {})[batch_idx] = (index, out.logits[name].detach())
        self._val.append((self._probabilities(out).detach(), batch["labels"].detach().float(), index))

    def _gathered(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
        index, first = np.unique(idx_np, return_index=True)  # the distributed sampler pads with repeats
        return p.cpu().numpy()[first], y.cpu().numpy()[first], index

    def on_validation_epoch_end(self) -> None:
        p, y, index = self._gathered()
        self._val = []
        all_heads = range(len(HEADS))
        mean, per_head = _mean_auroc(y, p[:, 0], all_heads)
        score = 0.5 if mean is None else mean
        in_view_mean = None
        if self.val_in_view is not None and len(index):
            view = self.val_in_view[index]
            per_view = [
                auroc_result(y[view[:, h], h] > 0.5, p[view[:, h], 0, h]).value if view[:, h].any() else None
                for h in all_heads
            ]
            defined = [v for v in per_view if v is not None]
            in_view_mean = float(np.mean(defined)) if defined else None
            score = 0.5 if in_view_mean is None else in_view_mean
        record: dict[str, Any] = {
            "epoch": int(self.current_epoch),
            "objective": self.objective,
            "train_loss": (self._loss_sum / self._loss_n) if self._loss_n else None,
            "val_auroc_mean": mean,
            "val_auroc": dict(zip(HEADS, per_head)),
            "val_in_view_auroc_mean": in_view_mean,
            "val_selection": score,
            "experts": {},
        }
        self.log("val_auroc_mean", 0.5 if mean is None else mean, prog_bar=True, sync_dist=True)
        self.log("val_selection", score, sync_dist=True)
        if in_view_mean is not None:
            self.log("val_in_view_auroc_mean", in_view_mean, prog_bar=True, sync_dist=True)
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
        self._val_in_epoch += elapsed

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
        if optim.scheduler == "cosine" and self.expert_epochs:
            # each expert's own cosine over its own epochs (CosineAnnealingLR's closed form)
            spans = [max(self.epochs_of(g["name"]), 1) for g in groups]
            lambdas = [lambda e, t=t: 0.5 * (1.0 + math.cos(math.pi * min(e, t) / t)) for t in spans]
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambdas)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        if optim.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(self.max_epochs, 1))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        return opt
