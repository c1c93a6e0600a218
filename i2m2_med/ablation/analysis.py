"""What a trained grid says: per variant its training, per-seed AUROCs, the seed ensemble's
table and ROC curves; the paired comparisons with the reference variant; the evidence summary;
the robustness study; and the description of the cohort the grid was trained on.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from i2m2_med.ablation import conditions as cond
from i2m2_med.ablation import stats
from i2m2_med.ablation.grid import GridResult
from i2m2_med.ablation.predict import Predictions, ensemble
from i2m2_med.ablation.settings import REFERENCE_VARIANT, AblationSettings
from i2m2_med.data.cohort import Cohort
from i2m2_med.heads import HEADS
from i2m2_med.models import VARIANT_TITLES, VARIANTS


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
    """Every statistic of one grid (see :mod:`i2m2_med.ablation.runner` for the seed ensembles)."""
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
                    subjects=grid.subjects or None, in_view=grid.in_view,
                )
            out["roc"][variant] = stats.roc_curves(et, agg_rule, k)
        else:
            entry["table"] = {"value": None, "reason": status.get("reason")}
            out["roc"][variant] = {"value": None, "reason": status.get("reason")}
        out["variants"][variant] = entry

    base = grid.position.get("test")
    if with_tables and base is not None and base.n:
        out["position_baseline"] = stats.variant_table(
            base, None, agg_rule=agg_rule, k=k, operating_rule=settings.operating_rule, n_boot=settings.n_boot,
            alpha=settings.alpha, seed=settings.stat_seed, n_bins=settings.n_bins, subjects=grid.subjects or None,
            in_view=grid.in_view,
        )
    else:
        out["position_baseline"] = {"value": None, "reason": "no training split to fit the slice-position rates on"}

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
                alpha=settings.alpha, seed=settings.stat_seed, subjects=grid.subjects or None,
            )

    if ref in variants:
        ref_preds = [grid.get(ref, s, "test") or Predictions.empty("no test predictions") for s in grid.ok_seeds(ref)]
        if ref_preds:
            out["evidence"] = stats.evidence_summary(ref_preds)
        else:
            out["evidence"] = {"value": None, "reason": out["variants"][ref].get("reason") or "the reference variant has no model"}
    else:
        out["evidence"] = {"value": None, "reason": f"the reference variant {ref} is not in the grid"}

    out["selective"] = selective_prediction(ens_test, variants, out["variants"], agg_rule, k)

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


SELECTIVE_VARIANTS: tuple[str, ...] = ("i2m2", "intra")
"""Variants whose coverage curve the report draws (see :mod:`i2m2_med.metrics.selective`)."""


def selective_prediction(ens_test: dict[str, Predictions], variants: Sequence[str], entries: dict[str, Any],
                         agg_rule: str, k: int) -> dict[str, Any]:
    """Coverage against study-level AUROC on the test split when the studies whose experts
    disagree most are set aside, for the seed ensembles of :data:`SELECTIVE_VARIANTS`."""
    from i2m2_med.metrics import selective

    block: dict[str, Any] = {"split": "test", "measure": selective.MEASURE, "coverages": list(selective.DEFAULT_COVERAGES),
                             "variants": {}}
    for v in SELECTIVE_VARIANTS:
        if v not in variants:
            continue
        pred = ens_test.get(v)
        if pred is None or not pred.ok or pred.n == 0:
            why = (entries.get(v) or {}).get("reason") or (pred.reason if pred is not None else None) or "no test predictions"
            block["variants"][v] = {"value": None, "reason": why}
            continue
        experts = selective.expert_names(list(pred.terms))
        if len(experts) < 2:
            block["variants"][v] = {"value": None, "reason": f"undefined: one expert ({', '.join(experts) or 'none'}), nobody to disagree with"}
            continue
        ids, y, p = stats.study_arrays(pred, agg_rule, k)
        d_ids, per_head = selective.slices_to_studies(pred.study_id, {e: pred.expert_p(e) for e in experts}, agg_rule, k)
        if [str(i) for i in ids.tolist()] != d_ids.tolist():
            raise RuntimeError("studies out of order between the product and its experts")
        d = selective.overall(per_head)
        if not np.isfinite(d).all():
            block["variants"][v] = {"value": None, "reason": "undefined for some test studies: fewer than two experts ran on them"}
            continue
        block["variants"][v] = selective.coverage_curve(y, p, d)
    return block


def describe_data(cohort: Cohort, data_dir: Path, agg_rule: str, k: int) -> dict[str, Any]:
    """Source, formats, splits, prevalence (slice and study level) and problems of the cohort."""
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
        keep = ("generator", "generator_version", "seed", "regime", "label_noise", "multicoil", "counts", "label_noise_ceiling_auroc",
                "episode_bayes_auroc")
        out["manifest"] = {k2: manifest.get(k2) for k2 in keep if k2 in manifest}
    return out
