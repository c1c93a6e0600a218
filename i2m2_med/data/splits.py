"""Subject-level train / validation / test splits: read from a table, or derived from sha256.

Without a split table, subjects are ranked by ``sha256(SPLIT_SALT + subject id)``; the first
``round(test_fraction * n)`` go to test, the next ``round(val_fraction * n)`` to validation and
the rest to training (at least one subject each when there are three or more). The split depends
only on the subject ids -- not on Python's ``hash()`` (salted per process by PYTHONHASHSEED),
not on the order of the files, not on the training seed -- and never puts two studies of one
subject on both sides. This module imports nothing heavy (no torch).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from i2m2_med.errors import AnnotationError, UsageError

SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_SALT = "i2m2-med-split:"

STUDY_COLUMNS = ("study_id", "file", "volume", "study", "filename")
_SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}


def subject_of(study: Any) -> str:
    """The subject a study belongs to: its patient id, or its study id when it names none."""
    pid = study.patient_id
    return str(pid) if pid not in (None, "") else str(study.study_id)


def split_by_hash(
    subjects: Iterable[str], val_fraction: float = 0.15, test_fraction: float = 0.15
) -> dict[str, str]:
    """Deterministic subject-level split: subject -> "train" | "val" | "test".

    Subjects are ranked by ``sha256(SPLIT_SALT + subject)``; the first ``round(test_fraction*n)``
    are test, the next ``round(val_fraction*n)`` validation, the rest training. With three or more
    subjects every split gets at least one. Independent of PYTHONHASHSEED and of input order.
    """
    if not (0.0 < val_fraction < 1.0 and 0.0 < test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise UsageError(
            "split", f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in (0, 1) with sum < 1"
        )
    unique = sorted(set(str(s) for s in subjects))
    n = len(unique)
    ranked = sorted(unique, key=lambda s: hashlib.sha256((SPLIT_SALT + s).encode("utf-8")).hexdigest())
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * n))
    if n >= 3:
        n_test = min(max(n_test, 1), n - 2)
        n_val = min(max(n_val, 1), n - 1 - n_test)
    else:
        n_test, n_val = 0, 0
    out = {}
    for rank, subject in enumerate(ranked):
        out[subject] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return out


def _pick_column(columns: Sequence[str], candidates: Sequence[str]) -> str | None:
    lowered = {c.strip().lower(): c for c in columns}
    for name in candidates:
        if name in lowered:
            return lowered[name]
    return None


def read_splits_csv(path: str | os.PathLike) -> dict[str, str]:
    """A split table: study (``study_id`` / ``file`` / ``volume``) -> "train" | "val" | "test".

    Accepted split values: train/training, val/valid/validation, test/testing (any case). A file
    name with ``.h5`` is reduced to its stem. Raises :class:`AnnotationError` on a missing column,
    an unknown split value or a study listed twice with different splits.
    """
    import pandas as pd

    p = Path(path)
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise AnnotationError(p, f"cannot read the split table ({' '.join(str(exc).split())})") from None
    study_col = _pick_column(list(df.columns), STUDY_COLUMNS)
    split_col = _pick_column(list(df.columns), ("split", "set", "partition"))
    if study_col is None or split_col is None:
        raise AnnotationError(
            p, f"needs a study column ({'/'.join(STUDY_COLUMNS)}) and a 'split' column; has {', '.join(df.columns)}"
        )
    out: dict[str, str] = {}
    for line, (study, value) in enumerate(zip(df[study_col], df[split_col]), start=2):
        key = study_key(study)
        split = _SPLIT_ALIASES.get(str(value).strip().lower())
        if split is None:
            raise AnnotationError(p, f"line {line}: split {value!r} is not train/val/test")
        if key in out and out[key] != split:
            raise AnnotationError(p, f"line {line}: study {key} is in both {out[key]} and {split}")
        out[key] = split
    return out


def study_key(name: Any) -> str:
    """The study id a file name or path stands for: its name without ``.h5`` / ``.nii[.gz]``."""
    text = Path(str(name).strip()).name
    for suffix in (".h5", ".hdf5", ".nii.gz", ".nii"):
        if text.lower().endswith(suffix):
            return text[: -len(suffix)]
    return text
