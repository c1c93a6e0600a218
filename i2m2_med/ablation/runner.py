"""The ablation end to end: train (or reuse) the grid, predict, compute every statistic, run the
regime study, and write ``results.json`` and the CSV tables into the report folder.

:func:`run_ablation` is the library entry point; the command line (``i2m2-med ablate``) and the
HTML report (``pipelines/report``) are thin layers over it. Nothing here prints: progress goes
to the optional ``progress`` callback.

Where things go (``cache_dir`` defaults to the report folder)::

    REPORT_DIR/results.json         everything the report shows, JSON (no NaN; undefined -> null + reason)
    REPORT_DIR/tables/*.csv         the tables of the report, one file each
    CACHE_DIR/runs/<variant>-s<seed>-<key>/    training runs (see i2m2_med.ablation.runs),
                                               with their predictions under ablation_eval/
    CACHE_DIR/cohorts/<regime>-v<n>-s<seed>-ln<noise>/   the regime study's synthetic cohorts

Seed ensembles. Each variant is trained with every seed; the report's AUROC confidence
intervals, paired tests, ROC curves, calibration and operating points are computed on the *seed
ensemble* (the mean of the seeds' p(y=1) per slice), and the spread of single models is given
beside them as mean +- sd of the per-seed AUROCs.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from i2m2_med.ablation import conditions as cond
from i2m2_med.ablation import regimes as reg
from i2m2_med.ablation import stats
from i2m2_med.ablation.card import model_card
from i2m2_med.ablation.predict import (
    Predictions,
    ensemble,
    error_reason,
    predict_models,
    try_load,
)
from i2m2_med.ablation.runs import RunRecord, train_or_reuse
from i2m2_med.ablation.settings import (
    REFERENCE_VARIANT,
    REGIME_VARIANTS,
    AblationSettings,
)
from i2m2_med.ablation.tables import tables, write_tables
from i2m2_med.atomic import write_json
from i2m2_med.errors import CheckpointError, UsageError
from i2m2_med.heads import HEADS

RESULTS_SCHEMA = "i2m2-med-ablation/1"
EVAL_DIR = "ablation_eval"
EVAL_VERSION = "e2"
"""Part of the cached prediction file names: changes when what a condition does changes."""
Progress = Callable[[str], None]


# ---- grid: train, load, predict ----------------------------------------------------------------


class GridResult:
    """The runs of one grid on one cohort and their predictions.

    ``records``: (variant, seed) -> :class:`RunRecord`; ``preds``: (variant, seed, split,
    condition name) -> :class:`Predictions`; ``notes``: condition name -> what it left out.
    """

    def __init__(self) -> None:
        self.records: dict[tuple[str, int], RunRecord] = {}
        self.preds: dict[tuple[str, int, str, str], Predictions] = {}
        self.notes: dict[str, str] = {}
        self.eval_seconds = 0.0
        self.train_seconds = 0.0

    def ok_seeds(self, variant: str) -> list[int]:
        return sorted(s for (v, s), r in self.records.items() if v == variant and r.ok)

    def get(self, variant: str, seed: int, split: str, condition: str = "clean") -> Predictions | None:
        return self.preds.get((variant, seed, split, condition))


def _eval_path(record: RunRecord, split: str, condition: str, condition_seed: int) -> Path:
    safe = condition.replace(":", "_").replace(".", "p")
    return Path(record.run_dir) / EVAL_DIR / f"{split}__{safe}__c{int(condition_seed)}__{EVAL_VERSION}.npz"


def run_grid(
    cohort: Any,
    data_dir: Path,
    runs_dir: Path,
    variants: Sequence[str],
    seeds: Sequence[int],
    base_config: Any,
    epochs: int | None,
    fingerprint: str,
    settings: AblationSettings,
    *,
    robustness: Sequence[cond.Condition] = (),
    robustness_seeds: Sequence[int] = (),
    progress: Progress | None = None,
) -> GridResult:
    """Train or reuse every (variant, seed), then predict validation and test (clean) and, for
    the runs of ``robustness_seeds``, the test split under each ``robustness`` condition."""
    from i2m2_med.checkpoint import load_checkpoint
    from i2m2_med.data.dataset import SliceDataset
    from i2m2_med.training.fit import resolve_config

    grid = GridResult()
    t0 = time.perf_counter()
    image_size = int(base_config.image_size)
    cache_size = int(base_config.training.cache_size)
    shared = {split: SliceDataset(cohort, split, image_size=image_size, cache_size=cache_size) for split in ("train", "val", "test")}
    for variant in variants:
        for seed in seeds:
            try:
                cfg = resolve_config(base_config, epochs, seed, None)
            except Exception as exc:  # a config that cannot be resolved fails this run only
                grid.records[(variant, seed)] = RunRecord(variant, seed, "", "", "failed", error_reason(exc))
                continue
            grid.records[(variant, seed)] = train_or_reuse(
                data_dir, runs_dir, variant, seed, cfg, fingerprint, cohort=cohort, datasets=shared,
                train_n_boot=settings.train_n_boot, progress=progress,
            )
    grid.train_seconds = time.perf_counter() - t0

    t1 = time.perf_counter()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    models: dict[str, Any] = {}
    rid_of: dict[str, tuple[str, int]] = {}
    for (variant, seed), record in grid.records.items():
        if not record.ok:
            continue
        try:
            model, _ = load_checkpoint(record.checkpoint, expected_variant=variant, map_location=device)
        except CheckpointError as exc:
            record.status, record.reason = "failed", f"checkpoint unusable: {exc.one_line()}"
            continue
        rid = f"{variant}#{seed}"
        models[rid] = model
        rid_of[rid] = (variant, seed)

    robust_rids = {rid for rid, (v, s) in rid_of.items() if s in set(robustness_seeds)}
    drop_views = [c for c in robustness if c.kind == "drop"]
    data_conditions = [c for c in robustness if c.needs_own_data]
    jobs: list[tuple[str, cond.Condition, list[cond.Condition], set[str]]] = [
        ("val", cond.CLEAN, [cond.CLEAN], set(models)),
        ("test", cond.CLEAN, [cond.CLEAN, *drop_views], set(models)),
        *[("test", c, [c], robust_rids) for c in data_conditions],
    ]
    for split, condition, views, rids in jobs:
        if not rids:
            continue
        needed: dict[str, set[str]] = {}
        for view in views:
            wanted = rids if view.name == "clean" else (rids & robust_rids)
            for rid in wanted:
                record = grid.records[rid_of[rid]]
                cached = try_load(_eval_path(record, split, view.name, settings.condition_seed))
                if cached is not None:
                    v, s = rid_of[rid]
                    grid.preds[(v, s, split, view.name)] = cached
                    if cached.note:
                        grid.notes[view.name] = cached.note
                else:
                    needed.setdefault(view.name, set()).add(rid)
        if not needed:
            continue
        if progress:
            progress(f"predicting {split} ({condition.label}) with {len({r for s in needed.values() for r in s})} model(s)")
        try:
            if condition.kind == "clean":
                dataset, note = shared[split], None
            else:
                dataset, note = cond.condition_dataset(cohort, split, image_size, condition, settings.condition_seed)
        except Exception as exc:  # the condition cannot be built for this data: say so for each model
            reason = f"not evaluated: {error_reason(exc)}"
            for view_name, rids_here in needed.items():
                for rid in rids_here:
                    v, s = rid_of[rid]
                    grid.preds[(v, s, split, view_name)] = Predictions.empty(reason)
            continue
        if note:
            grid.notes[condition.name] = note
        run_views = [v for v in views if v.name in needed]
        union = sorted(set().union(*needed.values()))
        if len(dataset) == 0 and condition.kind == "undersample":
            out = {(rid, v.name): Predictions.empty("not applicable: no k-space study in the test split", note) for rid in union for v in run_views}
        else:
            try:
                out = predict_models({rid: models[rid] for rid in union}, dataset, run_views, settings.eval_batch_size, note=note,
                                     view_models=needed, device=device)
            except Exception as exc:
                reason = f"not evaluated: {error_reason(exc)}"
                out = {(rid, v.name): Predictions.empty(reason, note) for rid in union for v in run_views}
        for (rid, view_name), pred in out.items():
            if rid not in needed.get(view_name, set()):
                continue
            v, s = rid_of[rid]
            grid.preds[(v, s, split, view_name)] = pred
            if not pred.reason or pred.reason.startswith("not applicable"):
                try:
                    pred.save(_eval_path(grid.records[(v, s)], split, view_name, settings.condition_seed))
                except OSError:
                    pass
    grid.eval_seconds = time.perf_counter() - t1
    return grid


# ---- analysis of a grid -------------------------------------------------------------------------


def _variant_status(grid: GridResult, variant: str, seeds: Sequence[int]) -> dict[str, Any]:
    recs = [grid.records[(variant, s)] for s in seeds if (variant, s) in grid.records]
    failed = [{"seed": r.seed, "reason": r.reason} for r in recs if not r.ok]
    ok = [r.seed for r in recs if r.ok]
    status = "ok" if not failed else ("failed" if not ok else "partial")
    out: dict[str, Any] = {"status": status, "seeds": ok, "failed": failed}
    if status == "failed":
        reasons = sorted({f["reason"] for f in failed})
        out["reason"] = f"failed to train: {reasons[0]}" if len(reasons) == 1 else "failed to train: " + "; ".join(reasons)
    elif status == "partial":
        out["note"] = f"{len(ok)} of {len(recs)} seeds trained; the others failed"
    return out


def _training_stats(grid: GridResult, variant: str) -> dict[str, Any]:
    recs = [r for (v, _), r in grid.records.items() if v == variant and r.ok]
    def mean_of(key: str) -> float | None:
        vals = [r.training.get(key) for r in recs if isinstance(r.training.get(key), (int, float))]
        return float(np.mean(vals)) if vals else None
    return {
        "runs": len(recs),
        "epochs_run_mean": mean_of("epochs_run"),
        "best_val_auroc_mean": mean_of("best_val_auroc_mean"),
        "train_time_s_mean": mean_of("time_s"),
        "samples_per_s_mean": mean_of("samples_per_s"),
        "trained_now": sum(r.status == "trained" for r in recs),
        "reused_from_cache": sum(r.status == "cached" for r in recs),
    }


def analyse_grid(
    grid: GridResult,
    variants: Sequence[str],
    seeds: Sequence[int],
    settings: AblationSettings,
    agg_rule: str,
    k: int,
    *,
    robustness: Sequence[cond.Condition] = (),
    robustness_seeds: Sequence[int] = (),
    with_tables: bool = True,
) -> dict[str, Any]:
    """Every statistic of one grid (see the module docstring for the seed ensembles)."""
    from i2m2_med.models import VARIANT_TITLES, VARIANTS

    out: dict[str, Any] = {"variants": {}, "comparisons": {}, "roc": {}}
    ens_test: dict[str, Predictions] = {}
    for variant in variants:
        status = _variant_status(grid, variant, seeds)
        entry: dict[str, Any] = {
            "title": VARIANT_TITLES.get(variant, variant),
            "experts": list(VARIANTS.get(variant, ())),
            **status,
            "training": _training_stats(grid, variant),
        }
        ok = status["seeds"]
        per_seed: dict[str, Any] = {}
        tests, vals = [], []
        for s in ok:
            t = grid.get(variant, s, "test") or Predictions.empty("no test predictions")
            vpred = grid.get(variant, s, "val") or Predictions.empty("no validation predictions")
            tests.append(t)
            vals.append(vpred)
            per_seed[str(s)] = stats.point_aurocs(t, agg_rule, k)
        entry["per_seed"] = per_seed
        entry["seed_summary"] = stats.seed_summary(list(per_seed.values())) if per_seed else None
        if ok:
            et, ev = ensemble(tests), ensemble(vals)
            ens_test[variant] = et
            entry["ensemble_of"] = len([t for t in tests if t.ok])
            entry["test_slices"] = et.n
            if with_tables:
                entry["table"] = stats.variant_table(
                    et, ev, agg_rule=agg_rule, k=k, operating_rule=settings.operating_rule,
                    n_boot=settings.n_boot, alpha=settings.alpha, seed=settings.stat_seed, n_bins=settings.n_bins,
                )
            out["roc"][variant] = stats.roc_curves(et, agg_rule, k)
        else:
            entry["table"] = {"value": None, "reason": status.get("reason")}
            out["roc"][variant] = {"value": None, "reason": status.get("reason")}
        out["variants"][variant] = entry

    ref = REFERENCE_VARIANT
    for variant in variants:
        if variant == ref:
            continue
        if ref not in ens_test:
            why = out["variants"].get(ref, {}).get("reason") if ref in out["variants"] else f"the reference variant {ref} is not in the grid"
            out["comparisons"][variant] = {"value": None, "reason": f"no reference: {why}"}
        elif variant not in ens_test:
            out["comparisons"][variant] = {"value": None, "reason": out["variants"][variant].get("reason") or "no predictions"}
        else:
            out["comparisons"][variant] = stats.compare_to_reference(
                ens_test[ref], ens_test[variant], agg_rule=agg_rule, k=k, n_boot=settings.n_boot,
                alpha=settings.alpha, seed=settings.stat_seed,
            )

    if ref in variants:
        ref_preds = [grid.get(ref, s, "test") or Predictions.empty("no test predictions") for s in grid.ok_seeds(ref)]
        if ref_preds:
            out["evidence"] = stats.evidence_summary(ref_preds)
        else:
            out["evidence"] = {"value": None, "reason": out["variants"][ref].get("reason") or "the reference variant has no model"}
    else:
        out["evidence"] = {"value": None, "reason": f"the reference variant {ref} is not in the grid"}

    if robustness:
        rob: dict[str, Any] = {"conditions": [c.to_dict() for c in robustness], "notes": dict(grid.notes),
                               "seeds": list(robustness_seeds), "variants": {}}
        for variant in variants:
            seeds_here = [s for s in grid.ok_seeds(variant) if s in set(robustness_seeds)]
            if not seeds_here:
                rob["variants"][variant] = {"value": None, "reason": out["variants"][variant].get("reason") or "no trained seed in the robustness seeds"}
                continue
            clean = [stats.point_aurocs(grid.get(variant, s, "test") or Predictions.empty("no test predictions"), agg_rule, k) for s in seeds_here]
            per_condition: dict[str, list[dict[str, Any]]] = {}
            for c in robustness:
                results = []
                for s in seeds_here:
                    pred = grid.get(variant, s, "test", c.name)
                    if pred is None:
                        results.append({"reason": "not evaluated"})
                    elif not pred.ok:
                        results.append({"reason": pred.reason})
                    else:
                        results.append(stats.point_aurocs(pred, agg_rule, k))
                per_condition[c.name] = results
            rob["variants"][variant] = stats.robustness_summary(per_condition, clean)
        out["robustness"] = rob
    return out


# ---- data description ---------------------------------------------------------------------------


def describe_data(cohort: Any, data_dir: Path, agg_rule: str, k: int) -> dict[str, Any]:
    """Source, formats, splits, prevalence (slice and study level) and problems of the cohort."""
    from collections import Counter

    summary = cohort.summary()
    splits: dict[str, Any] = {}
    problems: list[dict[str, str]] = []
    for split in ("train", "val", "test"):
        studies = cohort.studies_in(split)
        n_slices = sum(s.n_slices for s in studies)
        slice_pos = np.zeros(len(HEADS), dtype=np.int64)
        study_pos = np.zeros(len(HEADS), dtype=np.int64)
        for s in studies:
            lab = cohort.labels[s.study_id] > 0.5
            slice_pos += lab.sum(axis=0)
            study_pos += lab.any(axis=0)
        block = {
            "studies": len(studies),
            "subjects": len({cohort.subjects[s.study_id] for s in studies}),
            "slices": int(n_slices),
            "positive_slices": dict(zip(HEADS, slice_pos.tolist())),
            "positive_studies": dict(zip(HEADS, study_pos.tolist())),
            "slice_prevalence": {h: (float(slice_pos[i] / n_slices) if n_slices else None) for i, h in enumerate(HEADS)},
            "study_prevalence": {h: (float(study_pos[i] / len(studies)) if studies else None) for i, h in enumerate(HEADS)},
        }
        splits[split] = block
        if not studies:
            problems.append({"where": f"{split} split", "reason": f"empty {split} split: no study"})
        elif split in ("val", "test"):
            for i, h in enumerate(HEADS):
                if study_pos[i] == 0:
                    problems.append({"where": f"{split} split, {h.upper()}", "reason": f"no positives for {h.upper()} in the {split} split (0 of {len(studies)} studies): its {split} metrics are undefined"})
    manifest = cohort.manifest
    formats = Counter(s.format for s in cohort.studies)
    domains = Counter(s.domain for s in cohort.studies)
    out = {
        "root": str(data_dir),
        "synthetic": manifest is not None and str(manifest.get("generator", "")).startswith("i2m2_med.synth"),
        "formats": dict(formats),
        "domains": dict(domains),
        "studies": len(cohort.studies),
        "subjects": len(set(cohort.subjects.values())),
        "tabular_features": list(cohort.tabular_names),
        "label_source": summary.get("label_source"),
        "split_source": summary.get("split_source"),
        "splits": splits,
        "aggregation": {"rule": agg_rule, "k": k},
        "left_out": [{"where": str(p), "reason": r} for p, r in cohort.problems],
        "problems": problems,
    }
    if manifest is not None:
        keep = ("generator", "generator_version", "seed", "regime", "label_noise", "multicoil", "counts", "oracle_ceiling_auroc",
                "episode_bayes_auroc")
        out["manifest"] = {k2: manifest.get(k2) for k2 in keep if k2 in manifest}
    return out


# ---- the regime study ----------------------------------------------------------------------------


def regime_block(
    cohort: Any,
    path: Path,
    grid: GridResult,
    seeds: Sequence[int],
    settings: AblationSettings,
    agg_rule: str,
    k: int,
    source: str,
) -> dict[str, Any]:
    """One regime's results from a grid that trained the regime variants on its cohort."""
    analysis = analyse_grid(grid, REGIME_VARIANTS, seeds, settings, agg_rule, k, with_tables=False)
    block: dict[str, Any] = {
        "source": source,
        "cohort": str(path),
        "volumes": len(cohort.studies),
        "test_studies": len(cohort.studies_in("test")),
        "test_slices": cohort.n_slices("test"),
        "seeds": list(seeds),
        "variants": {v: {key: analysis["variants"][v].get(key) for key in ("title", "status", "seeds", "failed", "reason", "seed_summary", "training")}
                     for v in REGIME_VARIANTS},
        "train_seconds": grid.train_seconds,
        "eval_seconds": grid.eval_seconds,
    }
    test_ids = [s.study_id for s in cohort.studies_in("test")]
    block["oracle"] = reg.oracle_ceiling(path, test_ids)
    if cohort.manifest:
        block["episode_bayes_auroc"] = cohort.manifest.get("episode_bayes_auroc")
        block["label_noise"] = cohort.manifest.get("label_noise")
    margins: dict[str, Any] = {}
    ens = {v: ensemble([grid.get(v, s, "test") or Predictions.empty("no test predictions") for s in grid.ok_seeds(v) if s in seeds])
           for v in REGIME_VARIANTS if any(s in seeds for s in grid.ok_seeds(v))}
    for other in ("intra", "inter"):
        if "i2m2" not in ens or other not in ens or not ens["i2m2"].ok or not ens[other].ok:
            missing = "i2m2" if "i2m2" not in ens or not ens["i2m2"].ok else other
            why = analysis["variants"][missing].get("reason") or (ens[missing].reason if missing in ens else None) or "no predictions"
            margins[other] = {"value": None, "reason": f"{missing}: {why}"}
            continue
        margins[other] = {}
        for level in stats.LEVELS:
            y, pa, groups = stats.level_arrays(ens["i2m2"], level, agg_rule, k)
            _, pb, _ = stats.level_arrays(ens[other], level, agg_rule, k)
            margins[other][level] = stats.paired_mean_auroc_difference(
                y[:, stats.PATHOLOGY_IDX], pa[:, stats.PATHOLOGY_IDX], pb[:, stats.PATHOLOGY_IDX], groups=groups,
                n_boot=settings.n_boot, alpha=settings.alpha, seed=settings.stat_seed + 7, names=stats.PATHOLOGY_HEADS,
            )
    block["margins"] = margins
    block["test_study_classes"] = None
    for v in ("i2m2", "intra", "inter"):
        if v in ens and ens[v].ok:
            y, _, _ = stats.level_arrays(ens[v], "study", agg_rule, k)
            y = np.asarray(y, dtype=bool)
            block["test_study_classes"] = {h: {"positive": int(y[:, i].sum()), "negative": int((~y[:, i]).sum())}
                                           for h, i in zip(stats.PATHOLOGY_HEADS, stats.PATHOLOGY_IDX)}
            break
    block["ensemble_of"] = {v: len([s for s in grid.ok_seeds(v) if s in seeds]) for v in REGIME_VARIANTS}
    block["in_view"] = reg.in_view_block(ens, cohort.in_view, settings.n_boot, settings.alpha, settings.stat_seed + 11)
    return block


def run_regime_study(
    settings: AblationSettings,
    base_config: Any,
    cohorts_dir: Path,
    runs_dir: Path,
    agg_rule: str,
    k: int,
    progress: Progress | None = None,
    reuse: Mapping[str, tuple[Any, Path, GridResult, Sequence[int]]] | None = None,
) -> dict[str, Any]:
    """Generate (or reuse) the regime cohorts, train the regime variants on each, and compare
    them (see :mod:`i2m2_med.ablation.regimes`). ``reuse``: regime -> (cohort, folder, grid,
    seeds) of a grid already trained on a cohort of that regime (the ablated cohort itself when
    it is synthetic), used instead of generating one."""
    from i2m2_med.data.cohort import data_fingerprint, load_cohort

    t0 = time.perf_counter()
    seeds = list(range(settings.regime_seeds))
    per_regime: dict[str, Any] = {}
    for regime in reg.REGIMES:
        if reuse and regime in reuse:
            cohort, path, grid, used = reuse[regime]
            per_regime[regime] = regime_block(cohort, path, grid, used, settings, agg_rule, k, "the ablated cohort (main grid)")
            continue
        try:
            path = reg.ensure_regime_cohort(cohorts_dir, regime, settings.regime_volumes, settings.regime_cohort_seed,
                                            settings.regime_label_noise, progress, n_slices=settings.regime_slices)
            cohort = load_cohort(path, val_fraction=base_config.training.val_fraction, test_fraction=base_config.training.test_fraction)
        except Exception as exc:
            per_regime[regime] = {"value": None, "reason": f"cohort not available: {error_reason(exc)}"}
            continue
        fingerprint = data_fingerprint(cohort)
        grid = run_grid(cohort, path, runs_dir, REGIME_VARIANTS, seeds, base_config, settings.regime_epochs, fingerprint,
                        settings, progress=progress)
        per_regime[regime] = regime_block(cohort, path, grid, seeds, settings, agg_rule, k, "generated for the regime study")
    return {
        "regimes": per_regime,
        "variants": list(REGIME_VARIANTS),
        "seeds": seeds,
        "volumes": settings.regime_volumes,
        "epochs": settings.regime_epochs,
        "cohort_seed": settings.regime_cohort_seed,
        "label_noise": settings.regime_label_noise,
        "targets": {level: reg.regime_targets(per_regime, level=level) for level in stats.LEVELS},
        "seconds": time.perf_counter() - t0,
    }


def _sanitise(obj: Any, path: str, problems: list[dict[str, str]]) -> Any:
    """JSON-safe copy; a NaN or inf that slipped through becomes null and is listed in ``problems``."""
    if isinstance(obj, Mapping):
        return {str(k): _sanitise(v, f"{path}.{k}", problems) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitise(v, f"{path}[{i}]", problems) for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return _sanitise(obj.tolist(), path, problems)
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        problems.append({"where": path, "reason": f"non-finite value ({obj}) reported as null"})
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ---- the entry point ----------------------------------------------------------------------------


def run_ablation(
    data_dir: str | os.PathLike,
    report_dir: str | os.PathLike,
    settings: AblationSettings | None = None,
    *,
    command: str = "",
    cache_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the ablation of ``settings`` on the cohort in ``data_dir``; write
    ``REPORT_DIR/results.json`` and ``REPORT_DIR/tables/*.csv``; return the results dict.

    Raises UsageError / ConfigError / AnnotationError only for what stops everything (no such
    folder, no labelled study, an unreadable config); a variant that fails to train, an empty
    split or a head without positives are reported in the results with their reasons.
    """
    from i2m2_med.config import load_config
    from i2m2_med.data.cohort import data_fingerprint, load_cohort
    from i2m2_med.metrics.aggregation import aggregation_rule

    settings = settings or AblationSettings()
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    load_start = _load_average()
    started = _dt.datetime.now(_dt.timezone.utc)
    data_dir = Path(data_dir)
    report_dir = Path(report_dir)
    if report_dir.exists() and not report_dir.is_dir():
        raise UsageError(report_dir, "the report folder is a file")
    report_dir.mkdir(parents=True, exist_ok=True)
    cache_root = Path(cache_dir) if cache_dir is not None else report_dir
    runs_dir, cohorts_dir = cache_root / "runs", cache_root / "cohorts"

    base_config = load_config(settings.config)
    agg_rule, k = aggregation_rule(base_config.training.aggregation)
    if progress:
        progress(f"reading the cohort in {data_dir}")
    cohort = load_cohort(data_dir, val_fraction=base_config.training.val_fraction, test_fraction=base_config.training.test_fraction)
    fingerprint = data_fingerprint(cohort)
    data = describe_data(cohort, data_dir, agg_rule, k)
    data["fingerprint"] = fingerprint

    conditions = cond.robustness_conditions(settings.accelerations, settings.mask_types, settings.noise_levels)[1:] if settings.robustness else []
    seeds = settings.seed_list
    rseeds = seeds if settings.robustness_seeds is None else seeds[: settings.robustness_seeds]
    grid = run_grid(cohort, data_dir, runs_dir, settings.variants, seeds, base_config, settings.epochs, fingerprint, settings,
                    robustness=conditions, robustness_seeds=rseeds, progress=progress)
    if progress:
        progress("computing statistics")
    t_stats = time.perf_counter()
    analysis = analyse_grid(grid, settings.variants, seeds, settings, agg_rule, k, robustness=conditions, robustness_seeds=rseeds)
    stats_seconds = time.perf_counter() - t_stats

    do_regimes = settings.regime_study if settings.regime_study is not None else bool(data["synthetic"])
    if do_regimes:
        reuse = {}
        own = str((cohort.manifest or {}).get("regime", "")) if data["synthetic"] else ""
        if own in reg.REGIMES and all(grid.ok_seeds(v) for v in REGIME_VARIANTS) and settings.regime_reuse_data:
            reuse[own] = (cohort, data_dir, grid, seeds)
        regime = run_regime_study(settings, base_config, cohorts_dir, runs_dir, agg_rule, k, progress, reuse=reuse)
    else:
        why = "turned off (--no-regime-study)" if settings.regime_study is False else "the data is not a synthetic cohort (no i2m2_med.synth manifest.json)"
        regime = {"value": None, "reason": f"regime study not run: {why}"}

    runs = [r.to_dict() for r in grid.records.values()]
    results: dict[str, Any] = {
        "schema": RESULTS_SCHEMA,
        "created": started.isoformat(timespec="seconds"),
        "command": command,
        "settings": settings.to_dict(),
        "config": {"name": base_config.name, "image_size": base_config.image_size, "aggregation": base_config.training.aggregation},
        "heads": list(HEADS),
        "reference": REFERENCE_VARIANT,
        "data": data,
        "runs": runs,
        **analysis,
        "regime_study": regime,
        "model_card": model_card(data, settings, base_config, command, list(grid.records.values())),
    }
    results["targets"] = _targets(results)
    results["timing"] = {
        "total_s": time.perf_counter() - t_start,
        "train_s": grid.train_seconds,
        "eval_s": grid.eval_seconds,
        "stats_s": stats_seconds,
        "regime_study_s": regime.get("seconds") if isinstance(regime, Mapping) else None,
        "runs_trained": sum(r["status"] == "trained" for r in runs),
        "runs_cached": sum(r["status"] == "cached" for r in runs),
        "runs_failed": sum(r["status"] == "failed" for r in runs),
        "cpu_s": time.process_time() - cpu_start,
        "cpu_count": os.cpu_count(),
        "load_average_start": load_start,
        "load_average_end": _load_average(),
        "note": "wall-clock seconds on this machine, including any wait for a shared CPU; cpu_s is this "
                "process's CPU time over all its threads",
    }
    problems: list[dict[str, str]] = []
    clean = _sanitise(results, "results", problems)
    clean.setdefault("data", {}).setdefault("problems", []).extend(problems)
    write_tables(report_dir / "tables", tables(clean))
    write_json(report_dir / "results.json", clean)
    return clean


def _load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the platform has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _targets(results: Mapping[str, Any]) -> dict[str, Any]:
    """The benchmark targets as measured (never used to change the evaluation)."""
    out: dict[str, Any] = {}
    study = results.get("regime_study") or {}
    if study.get("value", 0) is None:
        out["regime_claim"] = {"value": None, "reason": study.get("reason")}
    else:
        out["regime_claim"] = study["targets"]["slice"]
        mixed = (study.get("regimes") or {}).get("mixed") or {}
        out["mixed_margins"] = {other: (m.get("slice") if isinstance(m, Mapping) and "slice" in m else m)
                                for other, m in (mixed.get("margins") or {}).items()}
    return out


__all__ = ["GridResult", "analyse_grid", "describe_data", "regime_block", "run_ablation", "run_grid", "run_regime_study"]
