"""The slice dataset that feeds the models, and the collation of its samples into batches.

:class:`SliceDataset` yields one transformed slice per item (the sample contract)::

    "magnitude"  float32 [1, H, W]        (absent when the study has no magnitude)
    "phase"      float32 [1, H, W] rad    (absent when the study has no phase)
    "tabular"    float32 [F]
    "labels"     float32 [4] in HEADS order
    "present"    {"magnitude": bool, "phase": bool, "tabular": bool}
    "study_id"   str;  "slice" int;  "index" int (the item's position in the dataset)

The images of a sample are built by :func:`i2m2_med.data.sample.image_sample`, the same function
inference uses. A bounded LRU cache of transformed samples (``cache_size`` items per process; at
64 x 64 one sample is about 33 kB, so 4096 items are about 135 MB) makes later epochs cheap while
memory stays bounded by the cache, not by the cohort.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from i2m2_med.data.cache import TensorCache
from i2m2_med.data.cohort import Cohort
from i2m2_med.data.sample import image_sample
from i2m2_med.errors import TransformError, UsageError
from i2m2_med.heads import HEADS
from i2m2_med.io.study import Study
from i2m2_med.transforms.dictionary import build_modality_pipeline

SAMPLE_MODALITIES: tuple[str, ...] = ("magnitude", "phase", "tabular")
DEFAULT_CACHE_SIZE = 4096
"""Transformed slices kept per process by default (about 135 MB at 64 x 64)."""


def _default_pipeline(image_size: int, undersample: Any, seed: int | None) -> Callable[[dict], dict]:
    return build_modality_pipeline(image_size, undersample=undersample, seed=seed)


class SliceDataset(Dataset):
    """The (study, slice) pairs of a cohort split, read and transformed on demand.

    Args:
        cohort: the :class:`Cohort`.
        split: "train" / "val" / "test", or None for every study.
        image_size: side of the square magnitude / phase images (pixels).
        cache_size: transformed samples kept per process (LRU); 0 disables the cache.
        undersample, seed: passed to :func:`i2m2_med.transforms.build_modality_pipeline`. A
            random undersampling without a seed would be frozen by the cache, so the cache is
            off in that case.
        studies: optional explicit list of studies (of the cohort) instead of ``split``.
        tensor_cache: optional :class:`~i2m2_med.data.cache.TensorCache` at ``image_size``: the
            images then come from its memory-mapped entries (built on first use) instead of the
            files, and the in-memory cache is not used. Ignored with ``undersample``.

    Picklable (DataLoader workers, spawn): the cache and the pipeline are not pickled; each
    process builds its own.
    """

    def __init__(
        self,
        cohort: Cohort,
        split: str | None = None,
        image_size: int = 64,
        cache_size: int = DEFAULT_CACHE_SIZE,
        undersample: Any = None,
        seed: int | None = None,
        studies: Sequence[Study] | None = None,
        tensor_cache: TensorCache | None = None,
    ):
        if int(cache_size) < 0:
            raise UsageError("cache_size", f"must be >= 0, got {cache_size}")
        if int(image_size) < 1:
            raise UsageError("image_size", f"must be >= 1, got {image_size}")
        self.split = split
        self.image_size = int(image_size)
        self.undersample = undersample
        self.seed = seed
        if tensor_cache is not None and tensor_cache.image_size != self.image_size:
            raise UsageError("tensor_cache", f"holds {tensor_cache.image_size} px images, the dataset needs {self.image_size}")
        self.tensor_cache = tensor_cache if undersample is None else None
        self.cache_size = int(cache_size) if (undersample is None or seed is not None) and self.tensor_cache is None else 0
        chosen = list(studies) if studies is not None else cohort.studies_in(split)
        self.studies: list[Study] = chosen
        self.labels = [np.asarray(cohort.labels[s.study_id], dtype=np.float32) for s in chosen]
        self.tabular = [np.asarray(cohort.tabular[s.study_id], dtype=np.float32) for s in chosen]
        self.tabular_names = list(cohort.tabular_names)
        counts = np.array([s.n_slices for s in chosen], dtype=np.int64)
        self.items = np.stack(
            [np.repeat(np.arange(len(chosen), dtype=np.int64), counts),
             np.concatenate([np.arange(n, dtype=np.int64) for n in counts]) if len(counts) else np.zeros(0, np.int64)],
            axis=1,
        ) if len(chosen) else np.zeros((0, 2), dtype=np.int64)
        self._cache: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._pipeline: Callable[[dict], dict] | None = None
        self.hits = 0
        self.misses = 0

    # -- pickling: drop per-process state ---------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        state["_pipeline"] = None
        state["hits"] = state["misses"] = 0
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # -- sizes and labels ---------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.items.shape[0])

    def item(self, index: int) -> tuple[Study, int]:
        """(study, slice number) of item ``index``."""
        s, k = self.items[index]
        return self.studies[int(s)], int(k)

    def label_matrix(self) -> np.ndarray:
        """(N, 4) float32 labels of every item, without reading any image."""
        if not self.labels:
            return np.zeros((0, len(HEADS)), dtype=np.float32)
        return np.concatenate(self.labels, axis=0)

    def study_ids(self) -> np.ndarray:
        """(N,) study id of every item."""
        return np.array([self.studies[int(s)].study_id for s in self.items[:, 0]], dtype=object)

    # -- reading ------------------------------------------------------------------------------
    @property
    def pipeline(self) -> Callable[[dict], dict]:
        if self._pipeline is None:
            self._pipeline = _default_pipeline(self.image_size, self.undersample, self.seed)
        return self._pipeline

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range 0..{len(self) - 1}")
        cached = self._cache.get(index)
        if cached is not None:
            self._cache.move_to_end(index)
            self.hits += 1
            return _shallow_copy(cached)
        self.misses += 1
        sample = self._load(index)
        if self.cache_size > 0:
            self._cache[index] = sample
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return _shallow_copy(sample)

    def _load(self, index: int) -> dict[str, Any]:
        s, k = (int(v) for v in self.items[index])
        study = self.studies[s]
        if self.tensor_cache is not None:
            sample = self.tensor_cache.sample(study, k)
        else:
            sample = image_sample(study, k, self.pipeline)
        present = sample["present"]
        sample["tabular"] = torch.from_numpy(self.tabular[s].copy())
        present["tabular"] = bool(self.tabular[s].size > 0)
        sample["labels"] = torch.from_numpy(self.labels[s][k].copy())
        sample["present"] = present
        sample["study_id"] = study.study_id
        sample["slice"] = k
        sample["index"] = index
        return sample

    def cache_info(self) -> dict[str, int]:
        """Hits, misses, entries and capacity of this process's cache."""
        return {"hits": self.hits, "misses": self.misses, "entries": len(self._cache), "capacity": self.cache_size}


def _shallow_copy(sample: dict[str, Any]) -> dict[str, Any]:
    out = dict(sample)
    out["present"] = dict(sample["present"])
    return out


def collate_samples(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack samples into a batch that keeps the modality-presence contract.

    Returns ``present``: modality -> bool tensor ``[B]`` (every modality of
    :data:`SAMPLE_MODALITIES`). A modality present in every sample is stacked (``[B, 1, H, W]``
    or ``[B, F]``); present in none, it is absent from the batch; present in some, it is stacked
    with a zero placeholder for the others, whose ``present`` entry is False, so the model
    excludes that expert's term for exactly those samples (see ``I2M2Model``). ``labels`` is
    ``[B, 4]`` when every sample has labels; ``study_id`` a list of str; ``slice`` and ``index``
    int64 ``[B]``.
    """
    if not samples:
        raise UsageError("collate", "empty batch")
    batch: dict[str, Any] = {}
    present: dict[str, torch.Tensor] = {}
    for m in SAMPLE_MODALITIES:
        flags = [bool(s.get("present", {}).get(m, m in s)) and s.get(m) is not None for s in samples]
        present[m] = torch.tensor(flags, dtype=torch.bool)
        if not any(flags):
            continue
        ref = next(s[m] for s, f in zip(samples, flags) if f)
        shapes = {tuple(s[m].shape) for s, f in zip(samples, flags) if f}
        if len(shapes) > 1:
            raise TransformError("collate", f"{m} shapes differ within the batch: {sorted(shapes)}")
        batch[m] = torch.stack([s[m] if f else torch.zeros_like(ref) for s, f in zip(samples, flags)])
    batch["present"] = present
    if all(s.get("labels") is not None for s in samples):
        batch["labels"] = torch.stack([torch.as_tensor(s["labels"], dtype=torch.float32) for s in samples])
    batch["study_id"] = [str(s.get("study_id", "")) for s in samples]
    batch["slice"] = torch.tensor([int(s.get("slice", -1)) for s in samples], dtype=torch.int64)
    batch["index"] = torch.tensor([int(s.get("index", -1)) for s in samples], dtype=torch.int64)
    return batch


def sample_nbytes(image_size: int, n_tabular: int) -> int:
    """Approximate bytes of one cached sample (two float32 images + tabular + labels)."""
    return 2 * 4 * image_size * image_size + 4 * (n_tabular + len(HEADS)) + 512


def cache_megabytes(cache_size: int, image_size: int, n_tabular: int) -> float:
    """Upper bound of the cache's memory (MB) per process."""
    return cache_size * sample_nbytes(image_size, n_tabular) / 1e6
