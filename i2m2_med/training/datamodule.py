"""The LightningDataModule: the cohort, its subject-level splits, the loaders and the class
balance (loss weights or a weighted sampler, :mod:`i2m2_med.data.sampling`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler

from i2m2_med.config import Config
from i2m2_med.data.cache import TensorCache
from i2m2_med.data.cohort import Cohort, in_view_rows, load_cohort
from i2m2_med.data.dataset import SliceDataset, collate_samples
from i2m2_med.data.sampling import (
    class_weights,
    hard_case_weights,
    positive_fraction,
    sampler_weights,
)
from i2m2_med.errors import UsageError


class I2M2DataModule(pl.LightningDataModule):
    """Owns the cohort, its subject-level splits and the loaders.

    Args:
        cohort: a loaded :class:`~i2m2_med.data.cohort.Cohort`, or ``data_dir`` to load one.
        config: the :class:`~i2m2_med.config.Config` (image size, batch size, workers, cache,
            class weighting, split fractions).
        seed: seeds the training shuffle / weighted sampler.
        batch_size, num_workers, cache_size: override the config's.

    ``class_weights`` (``[4, 2]`` or None) is for the loss, computed from the training labels when
    ``training.class_weighting`` is ``loss`` or ``both``; the training loader draws with a
    :class:`~torch.utils.data.WeightedRandomSampler` (:func:`~i2m2_med.data.sampling.sampler_weights`,
    with replacement) when it is ``sampler`` or ``both``; with ``training.sampling: hard_cases``
    the draws are also weighted by :func:`~i2m2_med.data.sampling.hard_case_weights` (the slices
    inside a finding's or a mimic's episode get ``training.hard_share`` of them); otherwise it
    shuffles. An epoch is ``training.epoch_slices`` draws (all training slices when unset).
    ``tensor_cache``: the images come from this :class:`~i2m2_med.data.cache.TensorCache`
    (and its cache-only studies join the cohort).
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
        tensor_cache: TensorCache | None = None,
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
                tensor_cache=tensor_cache,
            )
        self.cohort = cohort
        self.config = config
        self.seed = int(seed)
        self._train_generator: torch.Generator | None = None
        self._pending_generator_state: Tensor | None = None
        t = config.training
        self.batch_size = int(batch_size if batch_size is not None else t.batch_size)
        self.num_workers = int(num_workers if num_workers is not None else t.num_workers)
        self.cache_size = int(cache_size if cache_size is not None else t.cache_size)
        if self.batch_size < 1 or self.num_workers < 0 or self.cache_size < 0:
            raise UsageError("I2M2DataModule", "batch_size must be >= 1, num_workers and cache_size >= 0")
        self.datasets: dict[str, SliceDataset] = {
            name: SliceDataset(cohort, name, image_size=config.image_size, cache_size=self.cache_size,
                               tensor_cache=tensor_cache)
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
        self.hard_slices: np.ndarray | None = None
        if t.sampling == "hard_cases":
            self.hard_slices = self.in_view_of("train").any(axis=1) if cohort.in_view is not None else None
            if self.hard_slices is not None:
                hard = hard_case_weights(self.hard_slices, t.hard_share)
                self.sample_weights = hard if self.sample_weights is None else self.sample_weights * hard
        self.epoch_slices = int(t.epoch_slices) if t.epoch_slices else len(self.datasets["train"])
        self.train_positive_fraction = positive_fraction(train_labels)

    def in_view_of(self, split: str) -> np.ndarray | None:
        """(N, 4) bool: the in-view rows of a split's slices (None without ``episodes.csv``)."""
        if self.cohort.in_view is None:
            return None
        ds = self.datasets[split]
        ids = [ds.studies[int(i)].study_id for i in ds.items[:, 0]]
        return in_view_rows(self.cohort.in_view, ids, ds.items[:, 1])

    @property
    def n_tabular(self) -> int:
        return self.cohort.n_tabular

    # -- resumable state (:mod:`.resume`): where the training draws are in their random stream --
    def state_dict(self) -> dict[str, Any]:
        return {} if self._train_generator is None else {"train_generator": self._train_generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_generator_state = state_dict.get("train_generator")

    def new_stage(self) -> None:
        """Forget a restored draw state that no loader used (a finished stage resumed as a no-op)."""
        self._pending_generator_state = None

    def _loader(self, dataset: SliceDataset, train: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        if train:  # each fit (stage) starts the stream at the seed, or where a resumed stage left it
            if self._pending_generator_state is not None:
                generator.set_state(self._pending_generator_state)
                self._pending_generator_state = None
            self._train_generator = generator
        sampler = None
        shuffle = False
        if train and self.sample_weights is not None:
            sampler = WeightedRandomSampler(self.sample_weights, num_samples=self.epoch_slices, replacement=True, generator=generator)
        elif train and self.epoch_slices != len(dataset):
            sampler = RandomSampler(dataset, replacement=self.epoch_slices > len(dataset), num_samples=self.epoch_slices,
                                    generator=generator)
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
