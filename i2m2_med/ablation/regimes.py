"""The regime study: I2M2 against the intra- and inter-modality models where the evidence lives
within modalities (``intra``), across them (``inter``), or both (``mixed``).

For each regime one synthetic cohort is generated (:func:`i2m2_med.synth.generate_cohort`, the
same seed and size for all three, so the subjects and anatomy are the same and only the placement
of the evidence differs), the variants of :data:`~i2m2_med.ablation.settings.REGIME_VARIANTS` are
trained over the seeds (cached like the main grid), and their test predictions are compared:

* per variant, the slice- and study-level mean AUROC over ACL/MTEAR/CART, mean and sd over seeds;
* I2M2's margin over ``intra`` and over ``inter`` (difference of the seed-ensemble mean AUROCs)
  with a paired bootstrap CI that resamples whole subjects at slice and study level;
* the cohort's label-noise ceiling on the same test slices: the AUROC of a perfect predictor of the
  true findings against the annotated labels (from ``slice_labels.csv``; 1.0 without label
  noise), and the generator's episode-level Bayes AUROCs of the regime's design;
* the target ``I2M2 >= max(intra, inter) - tolerance`` on the seed means;
* per variant, the in-view AUROC of the seed ensemble (each head on the slices where its
  anatomy is in view, from the cohort's ``episodes.csv``): findings against their mimics, where
  the slice position, which every variant learns, helps nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from i2m2_med.ablation.predict import Predictions
from i2m2_med.ablation.stats import MIN_UNITS_PER_CLASS
from i2m2_med.data.cohort import in_view_rows
from i2m2_med.errors import I2M2Error, UsageError
from i2m2_med.heads import HEADS, PATHOLOGY_HEADS
from i2m2_med.metrics.ranking import auroc_result
from i2m2_med.metrics.tables import in_view_metrics
from i2m2_med.synth import generate_cohort

REGIMES: tuple[str, ...] = ("intra", "inter", "mixed")
TARGET_TOLERANCE = 0.01

Progress = Callable[[str], None]


def regime_cohort_dir(root: str | os.PathLike, regime: str, n_volumes: int, seed: int, label_noise: float,
                      n_slices: int | None = None) -> Path:
    fixed = "" if n_slices is None else f"-k{int(n_slices)}"
    return Path(root) / f"{regime}-v{int(n_volumes)}-s{int(seed)}-ln{float(label_noise):g}{fixed}"


def cohort_is_complete(path: Path, regime: str, n_volumes: int, seed: int, label_noise: float) -> bool:
    """True when ``path`` holds a finished cohort with these generator parameters (its manifest
    is written last)."""
    manifest = path / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    counts = data.get("counts") or {}
    return (
        data.get("regime") == regime
        and int(data.get("seed", -1)) == int(seed)
        and int(counts.get("volumes", -1)) == int(n_volumes)
        and abs(float(data.get("label_noise", -1.0)) - float(label_noise)) < 1e-12
    )


def ensure_regime_cohort(root: str | os.PathLike, regime: str, n_volumes: int, seed: int, label_noise: float,
                         progress: Progress | None = None, n_slices: int | None = None) -> Path:
    """The folder of the regime's cohort, generated unless a complete one is already there
    (``n_slices``: a fixed number of slices per volume, None for the generator's default)."""
    path = regime_cohort_dir(root, regime, n_volumes, seed, label_noise, n_slices)
    if cohort_is_complete(path, regime, n_volumes, seed, label_noise):
        return path
    if progress:
        progress(f"generating the {regime}-regime cohort ({n_volumes} volumes)")
    workers = max(1, min(os.cpu_count() or 1, int(n_volumes), 8))  # the cohort does not depend on it
    # into a folder of its own, then renamed: the shards of a sharded ablation may generate the
    # same cohort at once (the same bytes), and an interrupted generation leaves no half cohort
    path.parent.mkdir(parents=True, exist_ok=True)
    part = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        generate_cohort(part, int(n_volumes), int(seed), regime=regime, label_noise=float(label_noise), n_slices=n_slices,
                        workers=workers)
        if path.exists() and not cohort_is_complete(path, regime, n_volumes, seed, label_noise):
            shutil.rmtree(path)  # an incomplete cohort of an earlier version
        try:
            os.rename(part, path)
        except OSError:
            if not cohort_is_complete(path, regime, n_volumes, seed, label_noise):
                raise
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return path


def label_noise_ceiling(cohort_dir: str | os.PathLike, study_ids: Sequence[str] | np.ndarray, split: str = "test") -> dict[str, Any]:
    """The label-noise ceiling on the slices of ``study_ids``: per head, the AUROC of the true
    findings (``<head>_true`` of ``slice_labels.csv``) as scores against the annotated labels
    (``<head>``), and their mean over ACL/MTEAR/CART. ``{"value": None, "reason"}`` without
    ``slice_labels.csv``."""
    path = Path(cohort_dir) / "slice_labels.csv"
    if not path.is_file():
        return {"value": None, "reason": f"no slice_labels.csv in {cohort_dir}: the true findings are unknown"}
    table = pd.read_csv(path, dtype={"study_id": str})
    wanted = set(str(s) for s in np.asarray(study_ids).astype(str))
    table = table[table["study_id"].isin(wanted)]
    per: dict[str, Any] = {}
    for head in HEADS:
        res = auroc_result(table[head].to_numpy() > 0, table[f"{head}_true"].to_numpy(dtype=float), split=split, unit="slices")
        per[head] = res.to_dict()
    vals = [per[h]["value"] for h in PATHOLOGY_HEADS if per[h]["value"] is not None]
    return {
        "per_head": per,
        "mean_pathologies": float(np.mean(vals)) if vals else None,
        "slices": int(len(table)),
        "what": "AUROC of the true findings against the annotated labels on the test slices",
    }


def in_view_block(ensembles: Mapping[str, Predictions], in_view: Mapping[str, np.ndarray] | None, n_boot: int, alpha: float,
                  seed: int, subjects: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Per variant, the in-view mean AUROC over ACL/MTEAR/CART of its seed ensemble's test
    predictions (:func:`i2m2_med.metrics.tables.in_view_metrics`: each head on the slices where its
    anatomy is in view, so a finding must beat its mimics and the slice position gives nothing),
    with a CI that resamples whole subjects (studies without ``subjects``). ``{"value": None,
    "reason"}`` without the cohort's episode table."""
    if in_view is None:
        return {"value": None, "reason": "the cohort has no episodes.csv (where each head's anatomy is in view)"}
    out: dict[str, Any] = {}
    for variant, pred in ensembles.items():
        if not pred.ok or pred.n == 0:
            out[variant] = {"value": None, "reason": pred.reason or "no test predictions"}
            continue
        known = np.isfinite(pred.labels).all(axis=1)
        ids = pred.study_id.astype(str)[known]
        try:
            view = in_view_rows(in_view, ids, pred.slice[known])
            clusters = ids if subjects is None else np.asarray([subjects.get(s, s) for s in ids.tolist()])
            table = in_view_metrics(pred.labels[known], pred.p[known], view, clusters, split="test", n_boot=n_boot,
                                    alpha=alpha, seed=seed)
        except (KeyError, IndexError):
            out[variant] = {"value": None, "reason": "test slices missing from the episode table"}
            continue
        except I2M2Error as exc:
            out[variant] = {"value": None, "reason": str(exc)}
            continue
        mean = table["mean_pathologies"]
        out[variant] = {"value": mean["auroc"], "ci": mean["ci"], "reason": mean.get("reason"),
                        "per_head": {h: table["per_head"][h]["auroc"] for h in HEADS}}
    return out


MIN_STUDY_LEVEL_STUDIES = 2 * MIN_UNITS_PER_CLASS
"""Fewest test studies for a study-level verdict on the claim: with fewer, the AUROC over a
pair of studies is 0, 0.5 or 1 and says nothing about the models."""


def regime_targets(per_regime: Mapping[str, Mapping[str, Any]], tolerance: float = TARGET_TOLERANCE, level: str = "slice") -> dict[str, Any]:
    """The paper's claim per regime on the seed means of the mean AUROC over ACL/MTEAR/CART:
    ``i2m2 >= max(intra, inter) - tolerance``. A regime where a value is missing says why."""
    out: dict[str, Any] = {"tolerance": tolerance, "level": level, "per_regime": {}}
    for regime, block in per_regime.items():
        if block.get("value", 0) is None:
            out["per_regime"][regime] = {"met": None, "reason": block.get("reason")}
            continue
        means = {}
        missing = []
        for v in ("i2m2", "intra", "inter"):
            cell = ((block.get("variants") or {}).get(v) or {}).get("seed_summary", {}).get(level, {}).get("mean_pathologies", {})
            means[v] = cell.get("mean")
            if means[v] is None:
                missing.append(f"{v}: {cell.get('reason') or (block.get('variants') or {}).get(v, {}).get('reason') or 'no result'}")
        if missing:
            out["per_regime"][regime] = {"met": None, "reason": "; ".join(missing), **means}
            continue
        n_studies = block.get("test_studies")
        if level == "study" and n_studies is not None and int(n_studies) < MIN_STUDY_LEVEL_STUDIES:
            out["per_regime"][regime] = {
                "met": None, **means,
                "reason": f"only {int(n_studies)} test studies: a study-level AUROC needs at least "
                          f"{MIN_STUDY_LEVEL_STUDIES} to say anything (use more regime volumes)",
            }
            continue
        # a head with no study of a class has no AUROC and is left out of the mean; one with a
        # single study of a class is in the mean with an AUROC that is that study's rank
        classes = block.get("test_study_classes") or {}
        thin = [f"{h.upper()} {c['positive']} positive / {c['negative']} negative" for h, c in classes.items()
                if 0 < min(int(c["positive"]), int(c["negative"])) < MIN_UNITS_PER_CLASS]
        if level == "study" and thin:
            out["per_regime"][regime] = {
                "met": None, **means,
                "reason": f"too few test studies of a class ({'; '.join(thin)}): a head's study-level AUROC then "
                          f"rests on one study; at least {MIN_UNITS_PER_CLASS} of each are needed (use more regime volumes)",
            }
            continue
        best = max(means["intra"], means["inter"])
        out["per_regime"][regime] = {
            **means,
            "best_other": best,
            "margin_over_best": means["i2m2"] - best,
            "met": bool(means["i2m2"] >= best - tolerance),
        }
    defined = [r["met"] for r in out["per_regime"].values() if r.get("met") is not None]
    out["all_met"] = (all(defined) if len(defined) == len(out["per_regime"]) and defined else None)
    if out["all_met"] is None:
        out["all_met_reason"] = "not every regime has a result"
    return out


def check_regimes(regimes: Iterable[str]) -> tuple[str, ...]:
    out = tuple(regimes)
    bad = [r for r in out if r not in REGIMES]
    if bad:
        raise UsageError("regimes", f"unknown regime {bad[0]!r}; use {', '.join(REGIMES)}")
    return out
