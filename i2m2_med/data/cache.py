"""The model-resolution images of a cohort, computed once and kept on disk (memory-mapped).

Reading a fastMRI slice and turning its k-space into the 64 x 64 magnitude and phase the cpu
config trains on costs milliseconds; an epoch over hundreds of volumes pays it for every slice,
every epoch. The result depends only on the file and on the transform settings, so it is written
once per study and read back as a memory map afterwards.

One entry per study, in the cache folder::

    <id>.<key>.npy    (S, 2, H, W) float32: magnitude and phase of every slice
    <id>.<key>.json   what the entry was made from, and the slices' ``present`` flags

``id`` is a digest of the study id (no id or name appears in the folder).

``key`` is a digest of the transform settings (:func:`transform_key`: image size, the modality
pipeline's options, :data:`TRANSFORM_VERSION`) and of the study's file (:func:`source_signature`:
its name, size, modification time and its first and last 64 KiB), so a changed file or changed
settings never meet an old entry: they look for another name, and the old entry is left for
:meth:`TensorCache.prune`. An absent modality is stored as zeros and marked False in ``present``,
and the sample built from the entry leaves it out exactly as :func:`i2m2_med.data.sample.image_sample`
does, so a cached sample equals the sample built from the file bit for bit (a test holds it to that).

Only the deterministic, fully sampled pipeline is cached: undersampling and noise conditions are
random per draw and go through the file every time.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from i2m2_med.atomic import atomic_path, json_safe, write_json
from i2m2_med.data.sample import image_sample
from i2m2_med.errors import StudyReadError, UsageError
from i2m2_med.io.fastmri_h5 import read_fastmri_h5
from i2m2_med.io.study import IMAGE_MODALITIES, Study

TRANSFORM_VERSION = 1
"""Raise when the numbers of the modality pipeline change: every existing entry is then stale."""
SIGNATURE_BYTES = 64 * 1024
"""Bytes read from each end of a study's file for its signature."""


def transform_key(image_size: int, **pipeline_options: Any) -> str:
    """Digest (16 hex) of the settings that make the cached images: the image size and the
    modality pipeline's options (normalisation, crop / resize modes), with the transform version."""
    settings = {"version": TRANSFORM_VERSION, "image_size": int(image_size), **pipeline_options}
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _file_signature(path: Path, digest: "hashlib._Hash") -> None:
    stat = path.stat()
    digest.update(f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    with path.open("rb") as f:
        digest.update(f.read(SIGNATURE_BYTES))
        if stat.st_size > SIGNATURE_BYTES:
            f.seek(max(SIGNATURE_BYTES, stat.st_size - SIGNATURE_BYTES))
            digest.update(f.read(SIGNATURE_BYTES))


def source_signature(study: Study) -> str:
    """Digest (16 hex) of the study's file (or of every file of a DICOM series folder): name,
    size, modification time and the first and last 64 KiB of each file."""
    digest = hashlib.sha256(f"{study.study_id}|{study.format}|{study.n_slices}\n".encode())
    source = Path(study.source)
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    for path in files:
        _file_signature(path, digest)
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class CacheEntry:
    """One study's cached images: ``images`` (S, 2, H, W) float32 (a read-only memory map) and
    ``present`` (S, 2) bool, columns in :data:`IMAGE_MODALITIES` order."""

    images: np.ndarray
    present: np.ndarray

    def sample(self, index: int) -> dict[str, Any]:
        """The sample of slice ``index``, as :func:`i2m2_med.data.sample.image_sample` builds it."""
        sample: dict[str, Any] = {}
        present: dict[str, bool] = {}
        for c, m in enumerate(IMAGE_MODALITIES):
            if not bool(self.present[index, c]):
                present[m] = False
                continue
            sample[m] = torch.from_numpy(np.array(self.images[index, c : c + 1], dtype=np.float32))
            present[m] = True
        sample["present"] = present
        sample["slice"] = index
        return sample


class TensorCache:
    """The cache folder of one transform setting (see the module docstring).

    Args:
        root: the cache folder (created when needed).
        image_size: side of the cached images (pixels).
        pipeline: the deterministic modality pipeline that makes them (built by the caller, e.g.
            :func:`i2m2_med.transforms.dictionary.build_modality_pipeline` at ``image_size``).
        key_options: the pipeline's options, for the key (the defaults of
            ``build_modality_pipeline`` when the caller uses them).

    Entries are opened once per process and kept (memory maps cost no memory until read);
    pickling (DataLoader workers) drops them.
    """

    def __init__(self, root: str | os.PathLike, image_size: int, pipeline: Callable[[dict], dict], **key_options: Any):
        if int(image_size) < 1:
            raise UsageError("image_size", f"must be >= 1, got {image_size}")
        self.root = Path(root)
        self.image_size = int(image_size)
        self.pipeline = pipeline
        self.key = transform_key(image_size, **key_options)
        self._open: dict[str, CacheEntry] = {}
        self._cache_only: dict[str, str] = {}
        self.built = 0

    @classmethod
    def of_cohort(cls, cohort_dir: str | os.PathLike, image_size: int) -> "TensorCache":
        """The tensor cache of a cohort folder (``DIR/.i2m2_cache``) under the default modality
        pipeline at ``image_size``: the one training, the demo and the held-out cohorts share."""
        from i2m2_med.data.layout import TENSOR_CACHE_DIR
        from i2m2_med.transforms.dictionary import build_modality_pipeline  # MONAI: imported on use

        return cls(Path(cohort_dir) / TENSOR_CACHE_DIR, image_size, build_modality_pipeline(image_size))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = {}
        return state

    def _paths(self, study: Study) -> tuple[Path, Path, str]:
        name = hashlib.sha256(study.study_id.encode("utf-8")).hexdigest()[:16]
        kept = self._cache_only.get(study.study_id)
        if kept is None and not Path(study.source).exists():
            # a cache-only study listed by another instance of this cache (same folder, same key)
            found = sorted(self.root.glob(f"{name}.{self.key}*.json"))
            kept = found[0].stem if len(found) == 1 else None
        if kept is not None and not Path(study.source).exists():
            return self.root / f"{kept}.npy", self.root / f"{kept}.json", kept[-16:]
        signature = source_signature(study)
        stem = f"{name}.{self.key}{signature}"
        return self.root / f"{stem}.npy", self.root / f"{stem}.json", signature

    def entry(self, study: Study) -> CacheEntry:
        """The study's entry, built from its file on first use (every slice read and transformed
        once) and memory-mapped afterwards."""
        got = self._open.get(study.study_id)
        if got is not None:
            return got
        images_path, meta_path, signature = self._paths(study)
        if not (images_path.is_file() and meta_path.is_file()):
            self._build(study, images_path, meta_path, signature)
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        images = np.load(images_path, mmap_mode="r")
        present = np.asarray(meta["present"], dtype=bool).reshape(-1, len(IMAGE_MODALITIES))
        if images.shape[0] != study.n_slices or present.shape[0] != study.n_slices:
            raise UsageError(images_path, f"cache entry holds {images.shape[0]} slices, the study {study.n_slices}")
        entry = self._open[study.study_id] = CacheEntry(images, present)
        return entry

    def _build(self, study: Study, images_path: Path, meta_path: Path, signature: str) -> None:
        side = self.image_size
        images = np.zeros((study.n_slices, len(IMAGE_MODALITIES), side, side), dtype=np.float32)
        present = np.zeros((study.n_slices, len(IMAGE_MODALITIES)), dtype=bool)
        for k in range(study.n_slices):
            sample = image_sample(study, k, self.pipeline)
            for c, m in enumerate(IMAGE_MODALITIES):
                if sample["present"].get(m):
                    x = sample[m].numpy()
                    if x.shape != (1, side, side):
                        raise UsageError(study.source, f"slice {k}: {m} is {x.shape}, the cache holds (1, {side}, {side})")
                    images[k, c] = x[0]
                    present[k, c] = True
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_path(images_path) as tmp:
            with tmp.open("wb") as f:
                np.save(f, images)
        write_json(meta_path, {
            "study_id": study.study_id,
            "source": Path(study.source).name,
            "signature": signature,
            "transform_key": self.key,
            "image_size": side,
            "n_slices": study.n_slices,
            "present": present.astype(int).tolist(),
            "study": {
                "format": study.format,
                "domain": study.domain,
                "modalities": list(study.modalities),
                "patient_id": study.patient_id,
                "tags": json_safe(study.tags),
            },
        })
        self.built += 1

    def sample(self, study: Study, index: int) -> dict[str, Any]:
        """The image sample of slice ``index`` of ``study`` (see :meth:`CacheEntry.sample`)."""
        if not 0 <= index < study.n_slices:
            raise IndexError(f"{study.source}: slice {index} out of range 0..{study.n_slices - 1}")
        return self.entry(study).sample(index)

    def cached_studies(self) -> list[Study]:
        """The studies of this folder's entries under this transform setting, as
        :class:`~i2m2_med.io.study.Study` objects whose images come from the cache only: their
        files need not exist (a cohort whose k-space was dropped after caching, see
        :func:`cache_then_drop`). Reading their k-space raises :class:`StudyReadError`."""
        out: list[Study] = []
        if not self.root.is_dir():
            return out
        for meta_path in sorted(self.root.glob(f"*.{self.key}*.json")):
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                info = meta["study"]
                source = self.root / str(meta["source"])
                study = Study(
                    study_id=str(meta["study_id"]),
                    source=source,
                    format=info["format"],
                    domain=info["domain"],
                    n_slices=int(meta["n_slices"]),
                    modalities=tuple(info["modalities"]),
                    slice_reader=_DroppedReader(source),
                    tags=dict(info["tags"]),
                    patient_id=info["patient_id"],
                )
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not an entry of this project (or half a stale one): not a study
            if not (meta_path.with_suffix(".npy")).is_file():
                continue
            self._cache_only[study.study_id] = meta_path.stem
            out.append(study)
        return out

    def prune(self, keep: list[Study]) -> int:
        """Delete the entries of this folder that none of ``keep`` would read under this
        transform setting (stale files, changed settings); returns how many files went."""
        wanted: set[str] = set()
        for study in keep:
            images_path, meta_path, _ = self._paths(study)
            wanted.update({images_path.name, meta_path.name})
        removed = 0
        if self.root.is_dir():
            for path in self.root.iterdir():
                if path.suffix in {".npy", ".json"} and path.name not in wanted:
                    path.unlink()
                    removed += 1
        return removed


class _DroppedReader:
    """The slice reader of a study whose file was dropped after caching."""

    def __init__(self, source: Path):
        self.source = source

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        raise StudyReadError(self.source, "only the cached model-resolution images of this study were kept, not its k-space")


def cache_then_drop(cache: TensorCache, keep: Callable[[str], bool] = lambda study_id: False) -> Callable[[list[Path]], None]:
    """A callback for :func:`i2m2_med.synth.generate_cohort`'s ``on_written``: cache each new
    fastMRI file's images, then delete the file unless ``keep(study_id)``. A large synthetic
    cohort then costs the disk its cached images (about 1.2 MB a volume at 64 px) instead of its
    k-space (about 65 MB a volume); ``load_cohort(..., tensor_cache=cache)`` finds the dropped
    studies in the cache. The images are built with one intra-op thread: the callback runs beside
    the generator's worker processes, and more threads there only contend with them."""

    def on_written(paths: list[Path]) -> None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for path in paths:
                study = read_fastmri_h5(path)
                try:
                    cache.entry(study)
                finally:
                    study.close()
                if not keep(study.study_id):
                    Path(path).unlink()
        finally:
            torch.set_num_threads(threads)

    return on_written
