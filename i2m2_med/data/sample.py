"""One slice of a study -> the model's image inputs: the single builder of training and inference.

:class:`~i2m2_med.data.dataset.SliceDataset` (training, evaluation, the ablation) and the
inference stream (``diagnose``, the app) both call :func:`image_sample`, so a slice reaches the
model the same way whichever path reads it: the same modality pipeline output, the same tensor
shapes and dtype, and the same rule for a missing modality -- absent from the sample and marked
False in ``present``, never zero-filled.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from i2m2_med.errors import TransformError
from i2m2_med.io.study import IMAGE_MODALITIES, Study


def image_sample(study: Study, index: int, pipeline: Callable[[dict], dict], exclude: Iterable[str] = ()) -> dict[str, Any]:
    """Read slice ``index`` of ``study`` and transform it with ``pipeline`` (a modality pipeline of
    :func:`i2m2_med.transforms.dictionary.build_modality_pipeline`).

    Returns ``{"magnitude": [1, H, W], "phase": [1, H, W], "present": {modality: bool}, "slice":
    index}`` with float32 contiguous tensors. A modality the study lacks, one the pipeline marks
    absent, or one named in ``exclude`` is left out and marked False in ``present``. Raises
    :class:`TransformError` (naming the study) for an image that is not ``[1, H, W]``.
    """
    exclude = frozenset(exclude)
    out = pipeline(dict(study.read_slice(index)))
    given = out.get("present") if isinstance(out.get("present"), Mapping) else {}
    sample: dict[str, Any] = {}
    present: dict[str, bool] = {}
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
