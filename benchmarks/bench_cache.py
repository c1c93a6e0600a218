"""The training data path: an epoch of slices from the files, from the tensor cache, and from
MONAI's PersistentDataset.

What training reads per epoch is every slice of the training split at the model's resolution.
Three ways, on the same synthetic cohort (fastMRI-shaped singlecoil volumes, 64 x 64 output):

* files: ``SliceDataset`` without a cache: each slice read from its h5 file and transformed
  (inverse FFT, crop, normalisation, resize), every epoch;
* tensor cache: ``SliceDataset`` over :class:`i2m2_med.data.cache.TensorCache` -- each study's
  images computed once, then memory-mapped;
* PersistentDataset: MONAI's disk cache of the same deterministic pipeline (one pickled file
  per slice, written by ``torch.save`` and read back with ``torch.load``).

Each cached way is timed twice: the first epoch (building its cache) and a later epoch read by a
fresh dataset object (a new process would see the same; the page cache is warm in both).
Figures are seconds per epoch; ratios are later-epoch speed-ups over the files.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from benchmarks.common import Context

TITLE = "Training data path: an epoch from the files, the tensor cache, PersistentDataset"

FULL = {"volumes": 12, "slices": None}
QUICK = {"volumes": 2, "slices": 8}
IMAGE_SIZE = 64


def _epoch(dataset: Any) -> float:
    """Seconds to read every item of ``dataset`` once."""
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return time.perf_counter() - start


def run(ctx: Context) -> dict[str, Any]:
    from monai.data import PersistentDataset
    from monai.transforms import MapTransform

    from i2m2_med.data.cache import TensorCache
    from i2m2_med.data.cohort import load_cohort
    from i2m2_med.data.dataset import SliceDataset
    from i2m2_med.synth import generate_cohort
    from i2m2_med.transforms.dictionary import build_modality_pipeline

    size = QUICK if ctx.quick else FULL
    root = ctx.workdir / "cache_cohort"
    generate_cohort(root, size["volumes"], ctx.seed, workers=1, n_slices=size["slices"])
    cohort = load_cohort(root)
    files = SliceDataset(cohort, None, image_size=IMAGE_SIZE, cache_size=0)
    n = len(files)

    class LoadSlice(MapTransform):
        """Item ``{"item": i}`` -> the dataset's sample of slice i (deterministic)."""

        def __call__(self, data: dict) -> dict:
            return files[int(data["item"])]

    figures: dict[str, list[float]] = {k: [] for k in ("files", "cache_first", "cache_later", "persistent_first", "persistent_later")}
    for _ in range(ctx.repeats):
        figures["files"].append(_epoch(files))
        tc_dir, pd_dir = ctx.workdir / "tensor_cache", ctx.workdir / "persistent"
        shutil.rmtree(tc_dir, ignore_errors=True)
        shutil.rmtree(pd_dir, ignore_errors=True)
        pipe = build_modality_pipeline(IMAGE_SIZE)
        first = SliceDataset(cohort, None, image_size=IMAGE_SIZE, tensor_cache=TensorCache(tc_dir, IMAGE_SIZE, pipe))
        figures["cache_first"].append(_epoch(first))
        later = SliceDataset(cohort, None, image_size=IMAGE_SIZE, tensor_cache=TensorCache(tc_dir, IMAGE_SIZE, pipe))
        figures["cache_later"].append(_epoch(later))
        items = [{"item": i} for i in range(n)]
        pd_first = PersistentDataset(items, transform=LoadSlice(keys="item"), cache_dir=pd_dir)
        figures["persistent_first"].append(_epoch(pd_first))
        pd_later = PersistentDataset(items, transform=LoadSlice(keys="item"), cache_dir=pd_dir)
        figures["persistent_later"].append(_epoch(pd_later))
    disk_tc = sum(p.stat().st_size for p in (ctx.workdir / "tensor_cache").iterdir()) / 2**20
    disk_pd = sum(p.stat().st_size for p in (ctx.workdir / "persistent").rglob("*") if p.is_file()) / 2**20
    labels = {
        "files": "epoch from the files (read + transform every slice)",
        "cache_first": "tensor cache, first epoch (builds it)",
        "cache_later": "tensor cache, later epoch (memory-mapped)",
        "persistent_first": "PersistentDataset, first epoch (builds it)",
        "persistent_later": "PersistentDataset, later epoch (torch.load per slice)",
    }
    return {
        "description": __doc__.split("\n\n", 1)[1].strip(),
        "params": {"volumes": size["volumes"], "slices": n, "image_size": IMAGE_SIZE},
        "figures": [{"key": k, "label": labels[k], "unit": "s", "values": v} for k, v in figures.items()],
        "ratios": [
            {"key": "cache_speedup", "label": "files / tensor cache (later epoch)",
             "values": [a / b for a, b in zip(figures["files"], figures["cache_later"])], "target": None},
            {"key": "persistent_speedup", "label": "files / PersistentDataset (later epoch)",
             "values": [a / b for a, b in zip(figures["files"], figures["persistent_later"])], "target": None},
        ],
        "notes": [
            f"{n} slices; on disk: tensor cache {disk_tc:.1f} MiB, PersistentDataset {disk_pd:.1f} MiB.",
            "PersistentDataset's files are pickles: reading them runs torch.load, which the project avoids for "
            "anything it did not write in the same run; the tensor cache holds plain .npy arrays and JSON.",
        ],
    }
