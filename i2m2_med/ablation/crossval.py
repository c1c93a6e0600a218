"""Subject-level K-fold cross-validation for cohorts too small for a held-out test split
(``i2m2-med ablate --cv K``).

Subjects are ranked by a hash of their id and dealt to K folds in turn (both studies of a knee in
one fold). Fold ``f`` tests on its own subjects; of the others, the first ``val_fraction`` in the
same ranking (at least one subject) are its validation split and the rest its training split.
Every (variant, seed) is trained once per fold; the folds' test predictions are pooled, so every
study is tested exactly once, by a model that never saw its subject, and the ablation's statistics
run on the pooled out-of-fold predictions. The validation predictions are pooled the same way
(operating points chosen on validation use them).

A cohort too small even for that -- a fold with an empty split, or whose training split has no
positive or no negative study for a head (that fold's model could not learn it) -- is refused
before any training, with the fold and the reason in one line. A head missing a class in a fold's
validation or test split is reported (:func:`fold_notes`), not refused: the test is pooled.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Sequence

import numpy as np

from i2m2_med.ablation.grid import GridResult
from i2m2_med.ablation.predict import Predictions
from i2m2_med.ablation.runs import RunRecord
from i2m2_med.data.cohort import Cohort
from i2m2_med.errors import UsageError

MIN_FOLDS = 2


def _rank(subject: str) -> str:
    return hashlib.sha256(("cv-fold:" + subject).encode("utf-8")).hexdigest()


def cv_folds(cohort: Cohort, k: int, val_fraction: float = 0.15) -> list[Cohort]:
    """The K fold cohorts (the same studies, each with its own split); raises UsageError when
    ``k`` is out of range or a fold cannot be trained and tested (see the module docstring)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < MIN_FOLDS:
        raise UsageError("--cv", f"needs a whole number of folds >= {MIN_FOLDS}, got {k!r}")
    subjects = sorted(set(cohort.subjects.values()), key=_rank)
    if len(subjects) < 2 * k:
        raise UsageError(cohort.root, f"{len(subjects)} subjects: too few for {k}-fold cross-validation "
                                      f"(each fold needs test subjects, validation subjects and training subjects)")
    fold_of = {s: i % k for i, s in enumerate(subjects)}
    folds: list[Cohort] = []
    for f in range(k):
        rest = [s for s in subjects if fold_of[s] != f]
        n_val = max(1, int(round(val_fraction * len(rest))))
        role = {s: "test" for s in subjects if fold_of[s] == f}
        role.update({s: ("val" if i < n_val else "train") for i, s in enumerate(rest)})
        fold = replace(cohort, split={sid: role[subj] for sid, subj in cohort.subjects.items()},
                       split_source=f"fold {f + 1} of {k}: subject hash")
        fatal = [p for p in fold.split_problems() if "train split" in p or "has no study" in p]
        if fatal:
            raise UsageError(cohort.root, f"too small for {k}-fold cross-validation: fold {f + 1}: {fatal[0]}"
                                          + (f" (and {len(fatal) - 1} more)" if len(fatal) > 1 else "")
                                          + "; use fewer folds or more studies")
        folds.append(fold)
    return folds


def fold_notes(folds: Sequence[Cohort]) -> list[str]:
    """What the folds lack that does not stop them: a head without a positive or a negative study
    in a fold's validation split (its early stopping and calibration leave that head out) or test
    split (the pooled test still scores it)."""
    return [f"fold {f + 1}: {p}" for f, fold in enumerate(folds) for p in fold.split_problems() if "train split" not in p]


def _concat(parts: Sequence[Predictions]) -> Predictions:
    if any(not p.ok for p in parts):
        bad = next(p for p in parts if not p.ok)
        return Predictions.empty(bad.reason, bad.note)
    experts = [e for e in parts[0].terms if all(e in p.terms for p in parts)]
    return Predictions(
        np.concatenate([p.study_id for p in parts]), np.concatenate([p.slice for p in parts]),
        np.concatenate([p.labels for p in parts]), np.concatenate([p.p for p in parts]),
        np.concatenate([p.combined for p in parts]),
        {e: np.concatenate([p.terms[e] for p in parts]) for e in experts},
        {e: np.concatenate([p.mask[e] for p in parts]) for e in experts},
        None, parts[0].note,
    )


def pool_folds(grids: Sequence[GridResult]) -> GridResult:
    """One grid whose predictions are the folds' pooled validation and test predictions (clean
    only). A (variant, seed) is ok when it trained in every fold; its record is the first fold's,
    with the seconds of all folds and each fold's training summary under ``training["folds"]``."""
    out = GridResult()
    out.subjects = {sid: subj for g in grids for sid, subj in g.subjects.items()}
    keys = sorted({key for g in grids for key in g.records})
    for key in keys:
        records = [g.records.get(key) for g in grids]
        failed = [f"fold {i + 1}: {r.reason if r else 'not run'}" for i, r in enumerate(records) if r is None or not r.ok]
        first = records[0] or RunRecord(key[0], key[1], "", "", "failed", "not run")
        merged = RunRecord(first.variant, first.seed, first.key, first.run_dir, first.status if not failed else "failed",
                           "; ".join(failed) or None, sum(r.seconds for r in records if r),
                           {**(first.training or {}), "folds": [r.training if r else {} for r in records]})
        out.records[key] = merged
        if failed:
            continue
        for split in ("val", "test"):
            parts = [g.get(key[0], key[1], split) for g in grids]
            if all(p is not None for p in parts):
                out.preds[(key[0], key[1], split, "clean")] = _concat(parts)  # type: ignore[arg-type]
    out.in_view = grids[0].in_view if grids else None
    if grids and all(split in g.position for g in grids for split in ("val", "test")):
        out.position = {split: _concat([g.position[split] for g in grids]) for split in ("val", "test")}
    out.train_seconds = sum(g.train_seconds for g in grids)
    out.eval_seconds = sum(g.eval_seconds for g in grids)
    return out


__all__ = ["cv_folds", "fold_notes", "pool_folds"]
