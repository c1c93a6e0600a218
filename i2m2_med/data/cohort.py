"""A labelled cohort of studies: what a training run sees of a data folder (:mod:`.layout`).

Only studies with known labels take part: a volume the annotations do not list has unknown
labels (not negative ones) and is reported in ``Cohort.problems``.

The split: ``splits.csv`` when present, else the sha256 ranking of subjects of
:func:`i2m2_med.data.splits.split_by_hash` (independent of PYTHONHASHSEED, of the file order and
of the training seed; subjects never straddle two splits).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from i2m2_med.data.cache import TensorCache
from i2m2_med.data.layout import (
    CLINICAL_CSV,
    EPISODES_CSV,
    MANIFEST_JSON,
    SPLITS_CSV,
    annotation_paths,
    clinical_row,
)
from i2m2_med.data.splits import (
    SPLITS,
    read_splits_csv,
    split_by_hash,
    study_key,
    subject_of,
)
from i2m2_med.data.tabular import read_clinical_csv, tabular_features
from i2m2_med.errors import AnnotationError, TransformError, UsageError
from i2m2_med.heads import HEADS
from i2m2_med.io.annotations import read_fastmri_plus, slice_labels
from i2m2_med.io.discover import discover
from i2m2_med.io.study import Study


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

    def split_problems(self, heads: Sequence[str] = HEADS) -> list[str]:
        """What makes this cohort's split unfit for training and evaluation, in words, found
        before any training: an empty split, and per head a split with no positive study or no
        negative one (its AUROC, early stopping or calibration would be undefined). Empty when
        the split is fit. Checked on studies (a study is positive when any slice is)."""
        problems: list[str] = []
        for name in SPLITS:
            studies = self.studies_in(name)
            if not studies:
                problems.append(f"the {name} split has no study")
                continue
            positive = np.stack([(self.labels[s.study_id] > 0.5).any(axis=0) for s in studies])
            for h, head in enumerate(HEADS):
                if head not in heads:
                    continue
                n_pos = int(positive[:, h].sum())
                if n_pos == 0:
                    problems.append(f"{head}: no positive study in the {name} split ({len(studies)} studies)")
                elif n_pos == len(studies):
                    problems.append(f"{head}: no negative study in the {name} split ({len(studies)} studies)")
        return problems

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


def tabular_vectors(
    studies: Sequence[Study],
    clinical: Mapping[str, Mapping[str, Any]] | None = None,
    columns: Sequence[str] | Mapping[str, float] | None = None,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The tabular vector of each study (study id -> (F,) float32) and the feature names.

    Built by :func:`i2m2_med.data.tabular.tabular_features` from the study's tags and its clinical
    row; ``columns`` names extra clinical columns appended to the standard features (see there).
    """

    vectors: dict[str, np.ndarray] = {}
    names: list[str] | None = None
    for study in studies:
        vec, got = tabular_features(study.tags, clinical_row(clinical, study), columns=columns)
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
    tensor_cache: TensorCache | None = None,
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
        tensor_cache: a :class:`~i2m2_med.data.cache.TensorCache` whose cache-only studies (files
            dropped after caching, :func:`~i2m2_med.data.cache.cache_then_drop`) join the studies
            found in the folder; train with the same cache.

    Raises:
        UsageError: the folder does not exist, or no labelled study is found.
        AnnotationError: a label, clinical or split file is malformed.
    """

    root = Path(data_dir)
    if not root.is_dir():
        raise UsageError(root, "no such data folder")
    found = discover(root)
    problems: list[tuple[str, str]] = [(str(p), r) for p, r in found.problems]
    candidates = list(found.studies)
    if tensor_cache is not None:
        on_disk = {s.study_id for s in candidates}
        candidates += [s for s in tensor_cache.cached_studies() if s.study_id not in on_disk]

    csv, listing = annotation_paths(root, labels)
    table = read_fastmri_plus(csv, listing) if csv is not None else None
    label_source = str(csv) if csv is not None else "study"

    studies: list[Study] = []
    label_map: dict[str, np.ndarray] = {}
    for study in _one_per_id(candidates, problems):
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
    clinical_table = read_clinical_csv(clinical_path) if clinical_path.is_file() else None
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
    return {sid: states != "" for sid, states in _episode_table(path, n_slices, None).items()}


def read_evidence(path: Path, n_slices: Mapping[str, int]) -> dict[str, np.ndarray]:
    """From a synthetic cohort's ``episodes.csv``: study id -> (S, 4) str, per slice and head the
    cues its episode shows (the ``evidence`` column: none, mag, phase, together or apart; see
    :data:`i2m2_med.synth.regimes.EVIDENCE_STATES`), "" outside every episode of the head. Same
    reading rules as :func:`read_in_view`. ACL, MTEAR and CART have one lesion class each, whose
    episodes do not overlap; ABNORMAL gathers three classes, and where their episodes overlap
    the later row of the table wins."""
    return _episode_table(path, n_slices, "evidence")


def _episode_table(path: Path, n_slices: Mapping[str, int], column: str | None) -> dict[str, np.ndarray]:
    """study id -> (S, 4) object array: ``column``'s value (or "1" without a column) on the slices
    of every episode of a head, "" elsewhere."""
    import csv

    out = {sid: np.full((n, len(HEADS)), "", dtype=object) for sid, n in n_slices.items()}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            need = {"study_id", "head", "first_slice", "last_slice"} | ({column} if column else set())
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
                out[sid][a:b + 1, h] = row[column] if column else "1"
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
