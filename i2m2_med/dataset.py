"""A labelled cohort of studies and the slice dataset that feeds the models.

A :class:`Cohort` is what a training run sees of a data folder::

    DIR/                     studies: fastMRI h5, DICOM series, NIfTI (found by ``discover``)
    DIR/annotations/knee.csv fastMRI+ labels (+ knee_file_list.csv beside it: reviewed volumes)
    DIR/tabular.csv          clinical table joined by study id (optional)
    DIR/splits.csv           subject-level train / val / test split (optional)
    DIR/manifest.json        what the synthetic generator wrote (optional; oracle ceiling)
    DIR/episodes.csv         the synthetic generator's episodes (optional; where each head's
                             anatomy is in view, for the in-view AUROC)

Only studies with known labels take part: a volume the annotations do not list has unknown
labels (not negative ones) and is reported in ``Cohort.problems``.

The split: ``splits.csv`` when present, else the sha256 ranking of subjects of
:func:`i2m2_med.splits.split_by_hash` (independent of PYTHONHASHSEED, of the file order and of
the training seed; subjects never straddle two splits).

:class:`SliceDataset` yields one transformed slice per item (the sample contract)::

    "magnitude"  float32 [1, H, W]        (absent when the study has no magnitude)
    "phase"      float32 [1, H, W] rad    (absent when the study has no phase)
    "tabular"    float32 [F]
    "labels"     float32 [4] in HEADS order
    "present"    {"magnitude": bool, "phase": bool, "tabular": bool}
    "study_id"   str;  "slice" int;  "index" int (the item's position in the dataset)

Slices are read lazily through ``Study.read_slice`` and transformed by the modality pipeline of
:mod:`i2m2_med.transforms`. A bounded LRU cache of transformed samples (``cache_size`` items per
process; at 64 x 64 one sample is about 33 kB, so 4096 items are about 135 MB) makes later epochs
cheap while memory stays bounded by the cache, not by the cohort.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from i2m2_med.errors import AnnotationError, TransformError, UsageError
from i2m2_med.heads import HEADS
from i2m2_med.io.study import IMAGE_MODALITIES, Study
from i2m2_med.splits import (
    SPLITS,
    read_splits_csv,
    split_by_hash,
    study_key,
    subject_of,
)

SAMPLE_MODALITIES: tuple[str, ...] = ("magnitude", "phase", "tabular")
DEFAULT_CACHE_SIZE = 4096
"""Transformed slices kept per process by default (about 135 MB at 64 x 64)."""

ANNOTATIONS_CSV = Path("annotations") / "knee.csv"
FILE_LIST_NAME = "knee_file_list.csv"
CLINICAL_CSV = "tabular.csv"
SPLITS_CSV = "splits.csv"
MANIFEST_JSON = "manifest.json"
EPISODES_CSV = "episodes.csv"

# ---- the cohort -----------------------------------------------------------------------------


@dataclass
class Cohort:
    """Labelled studies of a data folder with their tabular vectors and split.

    Attributes:
        root: the data folder.
        studies: labelled studies, sorted by study id.
        labels: study id -> (S, 4) float32 slice labels in :data:`HEADS` order.
        tabular: study id -> (F,) float32 tabular vector (the same F and order for every study).
        tabular_names: the F feature names.
        split: study id -> "train" | "val" | "test".
        subjects: study id -> subject id (what the split keeps together).
        split_source: ``"splits.csv"`` or ``"sha256(subject)"``.
        label_source: the annotation file the labels came from (or ``"study"``).
        problems: (path or id, reason) for studies left out or files that failed.
        manifest: the synthetic cohort's ``manifest.json`` when present (else None).
        in_view: study id -> (S, 4) bool, the slices where each head's anatomy is in view (inside
            an episode of ``episodes.csv``, finding or mimic), when the cohort has that table.
    """

    root: Path
    studies: list[Study]
    labels: dict[str, np.ndarray]
    tabular: dict[str, np.ndarray]
    tabular_names: list[str]
    split: dict[str, str]
    subjects: dict[str, str]
    split_source: str
    label_source: str
    problems: list[tuple[str, str]] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    in_view: dict[str, np.ndarray] | None = None

    @property
    def n_tabular(self) -> int:
        return len(self.tabular_names)

    def studies_in(self, split: str | None) -> list[Study]:
        """The studies of one split (all of them for ``None``)."""
        if split is not None and split not in SPLITS:
            raise UsageError(f"split {split!r}", f"unknown split; expected one of {', '.join(SPLITS)}")
        return [s for s in self.studies if split is None or self.split[s.study_id] == split]

    def n_slices(self, split: str | None = None) -> int:
        return sum(s.n_slices for s in self.studies_in(split))

    def summary(self) -> dict[str, Any]:
        """JSON-ready counts per split: studies, subjects, slices and positive slices per head."""
        out: dict[str, Any] = {
            "root": str(self.root),
            "split_source": self.split_source,
            "label_source": self.label_source,
            "n_tabular": self.n_tabular,
            "problems": len(self.problems),
        }
        for name in SPLITS:
            studies = self.studies_in(name)
            pos = np.zeros(len(HEADS), dtype=np.int64)
            for s in studies:
                pos += (self.labels[s.study_id] > 0.5).sum(axis=0)
            out[name] = {
                "studies": len(studies),
                "subjects": len({self.subjects[s.study_id] for s in studies}),
                "slices": sum(s.n_slices for s in studies),
                "positive_slices": dict(zip(HEADS, pos.tolist())),
            }
        return out


def _annotation_paths(root: Path, labels: str | os.PathLike | None) -> tuple[Path | None, Path | None]:
    if labels is not None:
        csv = Path(labels)
        if not csv.is_file():
            raise AnnotationError(csv, "no such annotation file")
    else:
        csv = root / ANNOTATIONS_CSV
        if not csv.is_file():
            return None, None
    listing = csv.with_name(FILE_LIST_NAME)
    return csv, (listing if listing.is_file() else None)


def _read_clinical(path: Path) -> Any:
    from i2m2_med.tabular import read_clinical_csv

    return read_clinical_csv(path)


def _clinical_row(table: Mapping[str, Mapping[str, Any]] | None, study: Study) -> Mapping[str, Any] | None:
    """The clinical row of a study (:func:`i2m2_med.tabular.read_clinical_csv` table), looked up
    by study id, then by the name of its file, then by patient id; None when absent."""
    if not table:
        return None
    for key in (study.study_id, study_key(study.source), study.patient_id):
        if key is not None and key in table:
            return table[key]
    return None


def tabular_vectors(
    studies: Sequence[Study],
    clinical: Mapping[str, Mapping[str, Any]] | None = None,
    columns: Sequence[str] | Mapping[str, float] | None = None,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The tabular vector of each study (study id -> (F,) float32) and the feature names.

    Built by :func:`i2m2_med.tabular.tabular_features` from the study's tags and its clinical
    row; ``columns`` names extra clinical columns appended to the standard features (see there).
    """
    from i2m2_med.tabular import tabular_features

    vectors: dict[str, np.ndarray] = {}
    names: list[str] | None = None
    for study in studies:
        vec, got = tabular_features(study.tags, _clinical_row(clinical, study), columns=columns)
        got = list(got)
        if names is None:
            names = got
        elif got != names:
            raise TransformError(study.source, f"tabular features {got} differ from the cohort's {names}")
        vec = np.asarray(vec, dtype=np.float32).reshape(-1)
        if not np.isfinite(vec).all():
            raise TransformError(study.source, "tabular vector has NaN/Inf values")
        vectors[study.study_id] = vec
    return vectors, (names or [])


FORMAT_PREFERENCE: tuple[str, ...] = ("fastmri_h5", "dicom", "nifti")
"""When one study id is found in several formats (a synthetic cohort written as h5, DICOM and
NIfTI), the raw k-space is preferred, then DICOM, then NIfTI."""


def _one_per_id(studies: Sequence[Study], problems: list[tuple[str, str]]) -> list[Study]:
    by_id: dict[str, list[Study]] = {}
    for study in studies:
        by_id.setdefault(study.study_id, []).append(study)
    chosen = []
    for sid, group in by_id.items():
        rank = {f: i for i, f in enumerate(FORMAT_PREFERENCE)}
        group = sorted(group, key=lambda s: (rank.get(s.format, len(rank)), str(s.source)))
        chosen.append(group[0])
        for other in group[1:]:
            problems.append((str(other.source), f"study {sid} also read from {group[0].source}: this copy left out"))
    return chosen


def load_cohort(
    data_dir: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    clinical: str | os.PathLike | None = None,
    splits: str | os.PathLike | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> Cohort:
    """Find, label and split the studies under ``data_dir``.

    Args:
        data_dir: folder of studies (any mix of formats :func:`i2m2_med.io.discover.discover` reads).
        labels: a fastMRI+ ``knee.csv`` (``knee_file_list.csv`` beside it is used when present);
            default ``DIR/annotations/knee.csv``. Without annotations, the labels the readers put
            in ``Study.labels`` are used.
        clinical: clinical CSV joined by study id; default ``DIR/tabular.csv`` when present.
        splits: split table; default ``DIR/splits.csv`` when present, else :func:`split_by_hash`.
        val_fraction, test_fraction: fractions of subjects for the hash split.

    Raises:
        UsageError: the folder does not exist, or no labelled study is found.
        AnnotationError: a label, clinical or split file is malformed.
    """
    from i2m2_med.io.annotations import read_fastmri_plus, slice_labels
    from i2m2_med.io.discover import discover

    root = Path(data_dir)
    if not root.is_dir():
        raise UsageError(root, "no such data folder")
    found = discover(root)
    problems: list[tuple[str, str]] = [(str(p), r) for p, r in found.problems]

    csv, listing = _annotation_paths(root, labels)
    table = read_fastmri_plus(csv, listing) if csv is not None else None
    label_source = str(csv) if csv is not None else "study"

    studies: list[Study] = []
    label_map: dict[str, np.ndarray] = {}
    for study in _one_per_id(found.studies, problems):
        try:
            if table is not None:
                lab = slice_labels(table, study.source if study.format == "fastmri_h5" else study.study_id, study.n_slices)
            elif study.labels is not None:
                lab = np.asarray(study.labels)
            else:
                problems.append((str(study.source), "labels unknown (no annotation file): left out"))
                continue
        except AnnotationError as exc:
            problems.append((str(study.source), f"{exc.reason}: left out"))
            continue
        lab = np.asarray(lab, dtype=np.float32)
        if lab.shape != (study.n_slices, len(HEADS)):
            problems.append((str(study.source), f"labels of shape {lab.shape}, expected ({study.n_slices}, 4): left out"))
            continue
        studies.append(study)
        label_map[study.study_id] = lab
    if not studies:
        detail = f" ({problems[0][0]}: {problems[0][1]})" if problems else ""
        raise UsageError(root, f"no labelled study found{detail}")
    studies.sort(key=lambda s: s.study_id)

    clinical_path = Path(clinical) if clinical is not None else root / CLINICAL_CSV
    if clinical is not None and not clinical_path.is_file():
        raise AnnotationError(clinical_path, "no such clinical table")
    clinical_table = _read_clinical(clinical_path) if clinical_path.is_file() else None
    tabular, names = tabular_vectors(studies, clinical_table)

    subjects = {s.study_id: subject_of(s) for s in studies}
    split_path = Path(splits) if splits is not None else root / SPLITS_CSV
    if splits is not None and not split_path.is_file():
        raise AnnotationError(split_path, "no such split table")
    if split_path.is_file():
        listed = read_splits_csv(split_path)
        split: dict[str, str] = {}
        for s in studies:
            key = listed.get(s.study_id, listed.get(study_key(s.source)))
            if key is None:
                raise AnnotationError(split_path, f"study {s.study_id} is not in the split table")
            split[s.study_id] = key
        by_subject: dict[str, set[str]] = {}
        for sid, name in split.items():
            by_subject.setdefault(subjects[sid], set()).add(name)
        leaking = sorted(k for k, v in by_subject.items() if len(v) > 1)
        if leaking:
            raise AnnotationError(split_path, f"subject {leaking[0]} has studies in more than one split")
        split_source = str(split_path)
    else:
        by_hash = split_by_hash(subjects.values(), val_fraction, test_fraction)
        split = {sid: by_hash[subjects[sid]] for sid in subjects}
        split_source = "sha256(subject)"

    manifest = None
    manifest_path = root / MANIFEST_JSON
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            problems.append((str(manifest_path), f"unreadable manifest ignored ({' '.join(str(exc).split())})"))
    in_view = None
    episodes_path = root / EPISODES_CSV
    if episodes_path.is_file():
        try:
            in_view = read_in_view(episodes_path, {s.study_id: s.n_slices for s in studies})
        except AnnotationError as exc:
            problems.append((str(episodes_path), f"{exc.reason}: in-view metrics left out"))
    return Cohort(
        root=root,
        studies=studies,
        labels=label_map,
        tabular=tabular,
        tabular_names=names,
        split=split,
        subjects=subjects,
        split_source=split_source,
        label_source=label_source,
        problems=problems,
        manifest=manifest,
        in_view=in_view,
    )


def read_in_view(path: Path, n_slices: Mapping[str, int]) -> dict[str, np.ndarray]:
    """From a synthetic cohort's ``episodes.csv``: study id -> (S, 4) bool, True on the slices of
    every episode of a head. Studies not in ``n_slices`` are skipped; raises
    :class:`AnnotationError` for a table without the needed columns or with a bad row."""
    import csv

    out = {sid: np.zeros((n, len(HEADS)), dtype=bool) for sid, n in n_slices.items()}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            need = {"study_id", "head", "first_slice", "last_slice"}
            if not need <= set(reader.fieldnames or ()):
                raise AnnotationError(path, f"needs the columns {', '.join(sorted(need))}")
            for line, row in enumerate(reader, start=2):
                sid = row["study_id"]
                if sid not in out:
                    continue
                try:
                    h = HEADS.index(row["head"])
                    a, b = int(row["first_slice"]), int(row["last_slice"])
                except ValueError:
                    raise AnnotationError(path, f"line {line}: bad head or slice numbers") from None
                if not 0 <= a <= b < out[sid].shape[0]:
                    raise AnnotationError(path, f"line {line}: slices {a}..{b} outside study {sid}")
                out[sid][a:b + 1, h] = True
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise AnnotationError(path, f"unreadable ({' '.join(str(exc).split())})") from None
    return out


def in_view_rows(in_view: Mapping[str, np.ndarray], study_ids: Sequence[str], slices: Sequence[int]) -> np.ndarray:
    """(N, 4) bool: the in-view rows of N slices given by study id and slice number (KeyError for
    a study the table does not cover, IndexError for a slice outside it)."""
    if len(study_ids) == 0:
        return np.zeros((0, len(HEADS)), dtype=bool)
    return np.stack([in_view[str(sid)][int(k)] for sid, k in zip(study_ids, slices)])


def data_fingerprint(cohort: Cohort) -> str:
    """SHA-256 (hex) of the training data: every study's file name, file size (bytes), split and
    slice labels, in study-id order. Equal cohorts give equal fingerprints on any machine."""
    digest = hashlib.sha256()
    for study in cohort.studies:
        source = Path(study.source)
        try:
            size = source.stat().st_size if source.is_file() else sum(
                p.stat().st_size for p in sorted(source.rglob("*")) if p.is_file()
            )
        except OSError:
            size = -1
        lab = np.ascontiguousarray(cohort.labels[study.study_id] > 0.5, dtype=np.uint8)
        digest.update(f"{study.study_id}|{source.name}|{size}|{cohort.split[study.study_id]}|{lab.shape}\n".encode())
        digest.update(lab.tobytes())
    return digest.hexdigest()


# ---- the slice dataset ------------------------------------------------------------------------


def _default_pipeline(image_size: int, undersample: Any, seed: int | None) -> Callable[[dict], dict]:
    from i2m2_med.transforms.dictionary import build_modality_pipeline

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
    ):
        if int(cache_size) < 0:
            raise UsageError("cache_size", f"must be >= 0, got {cache_size}")
        if int(image_size) < 1:
            raise UsageError("image_size", f"must be >= 1, got {image_size}")
        self.split = split
        self.image_size = int(image_size)
        self.undersample = undersample
        self.seed = seed
        self.cache_size = int(cache_size) if (undersample is None or seed is not None) else 0
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
        raw = study.read_slice(k)
        out = self.pipeline(dict(raw))
        sample: dict[str, Any] = {}
        present: dict[str, bool] = {}
        for m in IMAGE_MODALITIES:
            x = out.get(m)
            if x is None:
                present[m] = False
                continue
            x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float()
            if x.ndim == 2:
                x = x[None]
            if x.ndim != 3 or x.shape[0] != 1:
                raise TransformError(study.source, f"slice {k}: {m} has shape {tuple(x.shape)}, expected [1, H, W]")
            sample[m] = x.contiguous()
            present[m] = True
        given = out.get("present")
        if isinstance(given, Mapping):
            for m in IMAGE_MODALITIES:
                if m in given and not bool(given[m]):
                    present[m] = False
                    sample.pop(m, None)
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


# ---- collation ---------------------------------------------------------------------------------


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


# ---- class balance -----------------------------------------------------------------------------


def class_weights(labels: np.ndarray) -> torch.Tensor:
    """Per-head class weights ``[4, 2]`` float32 from (N, 4) training labels: inverse class
    frequency, ``w[h, c] = N / (2 * n[h, c])``, so each class contributes equally to a head's
    weighted NLL; a class with no training sample gets weight 1 (it never occurs in the loss)."""
    y = np.asarray(labels) > 0.5
    n = max(int(y.shape[0]), 1)
    pos = y.sum(axis=0).astype(np.float64)
    neg = y.shape[0] - pos
    counts = np.stack([neg, pos], axis=1)
    w = np.where(counts > 0, n / (2.0 * np.maximum(counts, 1.0)), 1.0)
    return torch.tensor(w, dtype=torch.float32)


def sampler_weights(labels: np.ndarray) -> torch.Tensor:
    """Per-sample weights ``[N]`` for a ``WeightedRandomSampler``: the mean over heads of the
    sample's class weight (:func:`class_weights`), so slices with rare findings are drawn more
    often; the weights sum to N."""
    y = (np.asarray(labels) > 0.5).astype(np.int64)
    if y.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64)
    w = class_weights(y).numpy().astype(np.float64)
    per = w[np.arange(y.shape[1])[None, :], y].mean(axis=1)
    per = per * (y.shape[0] / per.sum())
    return torch.tensor(per, dtype=torch.float64)


def sample_nbytes(image_size: int, n_tabular: int) -> int:
    """Approximate bytes of one cached sample (two float32 images + tabular + labels)."""
    return 2 * 4 * image_size * image_size + 4 * (n_tabular + len(HEADS)) + 512


def cache_megabytes(cache_size: int, image_size: int, n_tabular: int) -> float:
    """Upper bound of the cache's memory (MB) per process."""
    return cache_size * sample_nbytes(image_size, n_tabular) / 1e6


def positive_fraction(labels: np.ndarray) -> np.ndarray:
    """(4,) fraction of positive slices per head (NaN-free; 0 for an empty set)."""
    y = np.asarray(labels) > 0.5
    return y.mean(axis=0) if y.shape[0] else np.zeros(len(HEADS))


__all__ = [
    "Cohort",
    "SliceDataset",
    "SPLITS",
    "cache_megabytes",
    "class_weights",
    "collate_samples",
    "data_fingerprint",
    "load_cohort",
    "read_splits_csv",
    "sampler_weights",
    "split_by_hash",
    "subject_of",
    "tabular_vectors",
]

