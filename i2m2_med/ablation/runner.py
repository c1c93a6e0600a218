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
from i2m2_med.ablation.analysis import analyse_grid, describe_data
from i2m2_med.ablation.card import model_card
from i2m2_med.ablation.crossval import cv_folds, fold_notes, pool_folds
from i2m2_med.ablation.grid import GridResult, run_grid
from i2m2_med.ablation.predict import Predictions, ensemble, error_reason
from i2m2_med.ablation.runs import Shard
from i2m2_med.ablation.settings import (
    REFERENCE_VARIANT,
    REGIME_VARIANTS,
    AblationSettings,
)
from i2m2_med.ablation.tables import tables, write_tables
from i2m2_med.atomic import write_json
from i2m2_med.config import Config, load_config
from i2m2_med.data.cohort import Cohort, data_fingerprint, load_cohort
from i2m2_med.errors import UsageError
from i2m2_med.heads import HEADS
from i2m2_med.metrics.aggregation import aggregation_rule

RESULTS_SCHEMA = "i2m2-med-ablation/1"
Progress = Callable[[str], None]


# ---- the regime study ----------------------------------------------------------------------------


def regime_block(
    cohort: Cohort,
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
    block["label_noise_ceiling"] = reg.label_noise_ceiling(path, test_ids)
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
            y, pa, groups = stats.level_arrays(ens["i2m2"], level, agg_rule, k, grid.subjects or None)
            _, pb, _ = stats.level_arrays(ens[other], level, agg_rule, k, grid.subjects or None)
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
    block["in_view"] = reg.in_view_block(ens, cohort.in_view, settings.n_boot, settings.alpha, settings.stat_seed + 11,
                                         subjects=cohort.subjects)
    return block


def run_regime_study(
    settings: AblationSettings,
    base_config: Config,
    cohorts_dir: Path,
    runs_dir: Path,
    agg_rule: str,
    k: int,
    progress: Progress | None = None,
    reuse: Mapping[str, tuple[Cohort, Path, GridResult, Sequence[int]]] | None = None,
) -> dict[str, Any]:
    """Generate (or reuse) the regime cohorts, train the regime variants on each, and compare
    them (see :mod:`i2m2_med.ablation.regimes`). ``reuse``: regime -> (cohort, folder, grid,
    seeds) of a grid already trained on a cohort of that regime (the ablated cohort itself when
    it is synthetic), used instead of generating one."""
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
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Run the ablation of ``settings`` on the cohort in ``data_dir``; write
    ``REPORT_DIR/results.json`` and ``REPORT_DIR/tables/*.csv``; return the results dict.

    With ``shard`` (:class:`~i2m2_med.ablation.runs.Shard`): train only this shard's runs of the
    main grid and of the regime study into the cache, write ``REPORT_DIR/shards/shard-I-of-N.json``
    and return its record (no statistics, no report). The merge is the same call without
    ``shard``: it reuses every finished run (the cache is keyed by data, variant, seed, config and
    version) and trains only what no shard finished. The claim study is not sharded: it runs in
    the merge.

    Raises UsageError / ConfigError / AnnotationError only for what stops everything (no such
    folder, no labelled study, an unreadable config); a variant that fails to train, an empty
    split or a head without positives are reported in the results with their reasons.
    """
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
    folds = cv_folds(cohort, settings.cv, base_config.training.val_fraction) if settings.cv else None
    split_problems = fold_notes(folds) if folds else cohort.split_problems()
    for problem in split_problems:  # before any training
        if progress:
            progress(f"split check: {problem}" + ("" if folds else " (--cv K cross-validates a cohort too small for a held-out test)"))
    data = describe_data(cohort, data_dir, agg_rule, k)
    data["fingerprint"] = fingerprint
    data["split_problems"] = split_problems

    seeds = settings.seed_list
    if shard is not None:
        return _run_shard(shard, cohort, folds, data, data_dir, report_dir, runs_dir, cohorts_dir, base_config, settings,
                          fingerprint, progress, t_start)
    if folds:
        if progress:
            progress(f"{settings.cv}-fold cross-validation by subject: every study is tested once")
        data["cv"] = cross_validation_data(cohort, folds, data_dir, agg_rule, k)
        data["splits"]["test"] = data["cv"]["pooled_test"]
        conditions, rseeds = [], []
        grid = pool_folds([
            run_grid(fold, data_dir, runs_dir, settings.variants, seeds, base_config, settings.epochs, data_fingerprint(fold),
                     settings, progress=progress, report_split=False)
            for fold in folds
        ])
    else:
        conditions = cond.robustness_conditions(settings.accelerations, settings.mask_types, settings.noise_levels)[1:] if settings.robustness else []
        rseeds = seeds if settings.robustness_seeds is None else seeds[: settings.robustness_seeds]
        grid = run_grid(cohort, data_dir, runs_dir, settings.variants, seeds, base_config, settings.epochs, fingerprint, settings,
                        robustness=conditions, robustness_seeds=rseeds, progress=progress, report_split=False)
    if progress:
        progress("computing statistics")
    t_stats = time.perf_counter()
    analysis = analyse_grid(grid, settings.variants, seeds, settings, agg_rule, k, robustness=conditions, robustness_seeds=rseeds)
    stats_seconds = time.perf_counter() - t_stats

    do_regimes = settings.regime_study if settings.regime_study is not None else bool(data["synthetic"])
    if do_regimes:
        reuse = {}
        own = str((cohort.manifest or {}).get("regime", "")) if data["synthetic"] else ""
        if own in reg.REGIMES and all(grid.ok_seeds(v) for v in REGIME_VARIANTS) and settings.regime_reuse_data and not settings.cv:
            reuse[own] = (cohort, data_dir, grid, seeds)
        regime = run_regime_study(settings, base_config, cohorts_dir, runs_dir, agg_rule, k, progress, reuse=reuse)
    else:
        why = "turned off (--no-regime-study)" if settings.regime_study is False else "the data is not a synthetic cohort (no i2m2_med.synth manifest.json)"
        regime = {"value": None, "reason": f"regime study not run: {why}"}

    if settings.claim_study:
        from i2m2_med.ablation.claim import claim_settings, run_claim_study

        claim = run_claim_study(cache_root / "claim", claim_settings(settings.quick), progress=progress)
    else:
        claim = {"value": None, "reason": "not run: --claim-study trains i2m2, intra and inter over three seeds per regime "
                                          "and tests them on held-out cohorts (about two hours on two cores)"}

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
        "claim_study": claim,
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


def _run_shard(
    shard: Shard,
    cohort: Cohort,
    folds: Sequence[Cohort] | None,
    data: Mapping[str, Any],
    data_dir: Path,
    report_dir: Path,
    runs_dir: Path,
    cohorts_dir: Path,
    base_config: Config,
    settings: AblationSettings,
    fingerprint: str,
    progress: Progress | None,
    t_start: float,
) -> dict[str, Any]:
    """The training of one shard (see :func:`run_ablation`): the runs it claims, in the order every
    shard considers them, then its record in ``REPORT_DIR/shards/``."""
    if progress:
        progress(f"shard {shard.label}: training this shard's runs")
    seeds = settings.seed_list
    grids = [run_grid(fold, data_dir, runs_dir, settings.variants, seeds, base_config, settings.epochs, data_fingerprint(fold),
                      settings, progress=progress, shard=shard, report_split=False) for fold in folds] if folds else [
        run_grid(cohort, data_dir, runs_dir, settings.variants, seeds, base_config, settings.epochs, fingerprint, settings,
                 progress=progress, shard=shard, report_split=False)]
    do_regimes = settings.regime_study if settings.regime_study is not None else bool(data["synthetic"])
    if do_regimes:
        own = str((cohort.manifest or {}).get("regime", "")) if data["synthetic"] else ""
        # as the merge decides it, from the settings alone (a run that then fails is retrained there)
        reused = own if (own in reg.REGIMES and set(REGIME_VARIANTS) <= set(settings.variants)
                         and settings.regime_reuse_data and not settings.cv) else None
        for regime in reg.REGIMES:
            if regime == reused:
                continue
            path = reg.ensure_regime_cohort(cohorts_dir, regime, settings.regime_volumes, settings.regime_cohort_seed,
                                            settings.regime_label_noise, progress, n_slices=settings.regime_slices)
            regime_cohort = load_cohort(path, val_fraction=base_config.training.val_fraction,
                                        test_fraction=base_config.training.test_fraction)
            grids.append(run_grid(regime_cohort, path, runs_dir, REGIME_VARIANTS, list(range(settings.regime_seeds)),
                                  base_config, settings.regime_epochs, data_fingerprint(regime_cohort), settings,
                                  progress=progress, shard=shard))
    runs = [r.to_dict() for g in grids for r in g.records.values()]
    counts = {status: sum(r["status"] == status for r in runs) for status in ("trained", "cached", "pending", "failed")}
    record = {
        "schema": RESULTS_SCHEMA,
        "shard": shard.label,
        "runs_considered": shard.considered,
        "counts": counts,
        "runs": runs,
        "seconds": time.perf_counter() - t_start,
        "merge": "rerun the same command without --shard once every shard has finished: it reuses the finished "
                 "runs, trains what no shard finished, and writes the report",
    }
    clean = _sanitise(record, "shard", [])
    write_json(report_dir / "shards" / f"shard-{shard.index}-of-{shard.count}.json", clean)
    return clean


def cross_validation_data(cohort: Cohort, folds: Sequence[Cohort], data_dir: Path, agg_rule: str, k: int) -> dict[str, Any]:
    """What the report says about a cross-validation: the folds' split sizes and the pooled test
    split (every study of the cohort)."""
    from dataclasses import replace

    per_fold = [{name: {"studies": len(f.studies_in(name)), "subjects": len({f.subjects[s.study_id] for s in f.studies_in(name)})}
                 for name in ("train", "val", "test")} for f in folds]
    pooled = describe_data(replace(cohort, split={sid: "test" for sid in cohort.split}), data_dir, agg_rule, k)["splits"]["test"]
    return {"folds": len(folds), "per_fold": per_fold, "pooled_test": pooled,
            "what": "subject-level K-fold: each fold tests its subjects with models trained on the other folds; the "
                    "report's test statistics are on the pooled out-of-fold predictions (every study once)"}


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


__all__ = ["regime_block", "run_ablation", "run_regime_study"]
