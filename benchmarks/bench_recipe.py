"""Training recipe and the phase cue: shifts, class weights and hard-case sampling.

Part A, the phase expert alone. In the intra regime a finding shows a phase cue on most of its
episodes and a mimic rarely: at the box, the high-pass phase separates findings from mimics with
an AUROC of 0.93 or more at 64 px, and the episode Bayes AUROC from phase alone is 0.775. The
``phase`` variant (the phase expert alone, the ``demo`` config's architecture, no warm start) is
trained on the intra training pool of the claim study (seed 71001) with 200 training and 40
validation volumes (subject-hash subsets), 6 epochs of 4,096 draws, under the demo recipe
(shifts of up to 4 px with the edge pixels repeated into the vacated band, the class-weighted
loss, hard-case sampling: half the draws from the slices of a finding's or a mimic's episode)
and with each of its three parts taken out, and all three. Three training seeds each.

Part B, the bundled model's recipe. The ``i2m2`` variant with the ``demo`` config (warm start,
its epochs and early stopping) on the demo cohort (400 mixed-regime volumes, seed 0, the one
``i2m2-med demo`` trains on), seed 0, under the demo recipe and without its three parts.

The best epoch is chosen on the validation in-view AUROC as in every run, and a recipe is chosen
on its validation in-view AUROC (mean over the four heads; the median over seeds in part A).
Reported beside it, never used to choose: the in-view AUROC (mean ACL/MTEAR/CART) on the held-out
cohort of the regime (intra seed 90001 in part A, mixed seed 90003 in part B; 160 volumes each,
never trained or tuned on), and in part B the held-out study AUROC and study-level calibration
error. ``I2M2_CLAIM_DIR`` and ``I2M2_HELDOUT_DIR`` reuse the claim study's folders (pool and
held-out cohorts); ``I2M2_DEMO_COHORT`` a demo cohort (``demo_out/cohort``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Context

TITLE = "Training recipe and the phase cue: shifts, class weights and hard-case sampling"
CLAIM_DIR_ENV = "I2M2_CLAIM_DIR"
HELDOUT_DIR_ENV = "I2M2_HELDOUT_DIR"
DEMO_COHORT_ENV = "I2M2_DEMO_COHORT"
FULL = {"pool": 1000, "train": 200, "val": 40, "heldout": 160, "epochs": 6, "draws": 4096, "seeds": (0, 1, 2),
        "demo_volumes": 400}
QUICK = {"pool": 24, "train": 8, "val": 6, "heldout": 8, "epochs": 1, "draws": 64, "seeds": (0,), "demo_volumes": 8}
PATHOLOGY = ("acl", "mtear", "cart")
DEMO_RECIPE = "demo recipe (shifts up to 4 px, class-weighted loss, hard-case sampling)"
WITHOUT_ALL = "without all three (no shift, unweighted loss, uniform draws)"
RECIPES: dict[str, dict[str, Any]] = {
    DEMO_RECIPE: {},
    "without shifts": {"training.augment.max_shift": 0},
    "without class weights": {"training.class_weighting": "none"},
    "without hard-case sampling": {"training.sampling": "uniform"},
    WITHOUT_ALL: {"training.augment.max_shift": 0, "training.class_weighting": "none", "training.sampling": "uniform"},
}
I2M2_RECIPES = (DEMO_RECIPE, WITHOUT_ALL)


def run(ctx: Context) -> dict[str, Any]:
    from i2m2_med.ablation.claim import (
        POOL_SEEDS,
        ensure_pool,
        heldout_in_view,
        heldout_predictions,
        subset_cohort,
    )
    from i2m2_med.ablation.heldout import ensure_heldout
    from i2m2_med.ablation.runs import train_or_reuse
    from i2m2_med.config import load_config
    from i2m2_med.data.cohort import data_fingerprint
    from i2m2_med.training.options import resolve_config

    plan = QUICK if ctx.quick else FULL
    work = Path(os.environ.get(CLAIM_DIR_ENV) or (ctx.workdir / "claim"))
    heldout_base = Path(os.environ.get(HELDOUT_DIR_ENV) or work)
    overrides = {"training.warm_start": False, "training.max_epochs": plan["epochs"], "training.epoch_slices": plan["draws"],
                 "training.early_stopping.patience": plan["epochs"]}
    base = load_config("demo").with_updates(**overrides)
    size = int(base.image_size)

    # part A: the phase expert alone, intra regime
    pool_dir, pool = ensure_pool(work, "intra", plan["pool"], size, 2, ctx.log)
    heldout, cache = ensure_heldout(heldout_base, "intra", plan["heldout"], size, 2, ctx.log)
    fp = data_fingerprint(heldout)
    cohort = subset_cohort(pool, plan["train"], plan["val"])
    rows = []
    for name, changes in RECIPES.items():
        for seed in plan["seeds"]:
            cfg = resolve_config(base.with_updates(**changes), None, seed, None)
            ctx.log(f"phase, {name}, seed {seed}")
            record = train_or_reuse(pool_dir, work / "runs", "phase", seed, cfg, data_fingerprint(cohort), cohort=cohort,
                                    train_n_boot=20, progress=ctx.log)
            if not record.ok:
                rows.append({"recipe": name, "seed": seed, "reason": record.reason})
                continue
            in_view = heldout_in_view(heldout_predictions(record, heldout, cache, fp), heldout)
            defined = [in_view[h] for h in PATHOLOGY if in_view[h] is not None]
            rows.append({"recipe": name, "seed": seed, "changes": changes, **_selected(Path(record.run_dir)),
                         "heldout_in_view": in_view, "heldout_in_view_mean3": float(np.mean(defined)) if defined else None,
                         "seconds": record.seconds})

    # part B: the bundled model's recipe, i2m2 on the demo cohort
    i2m2_rows = _demo_recipes(ctx, plan, heldout_base, size)

    figures = []
    for name in RECIPES:
        done = [r for r in rows if r["recipe"] == name and "reason" not in r]
        for key, label, field in (("val", "validation in-view AUROC mean4 (chosen epoch)", "val_in_view"),
                                  ("heldout", "held-out in-view AUROC mean ACL/MTEAR/CART", "heldout_in_view_mean3")):
            figures.append({"key": f"phase:{key}:{name}", "label": f"phase expert, {name}: {label}", "unit": "",
                            "values": [r[field] for r in done if r[field] is not None]})
    for r in i2m2_rows:
        for key, label in (("val_in_view", "validation in-view AUROC mean4"), ("heldout_in_view_mean3", "held-out in-view AUROC mean3"),
                           ("heldout_study_mean3", "held-out study AUROC mean3"), ("heldout_study_ece", "held-out study ECE mean4")):
            figures.append({"key": f"i2m2:{key}:{r['recipe']}", "label": f"i2m2 on the demo cohort, {r['recipe']}: {label}",
                            "unit": "", "values": [r[key]] if r.get(key) is not None else []})
    chosen = _chosen(rows)
    chosen_i2m2 = _chosen(i2m2_rows)
    return {
        "description": __doc__.split("\n\n", 1)[1].strip(),
        "repeats": len(plan["seeds"]),
        "params": {**{k: list(v) if isinstance(v, tuple) else v for k, v in plan.items()}, "pool_seed": POOL_SEEDS["intra"],
                   "overrides_part_a": overrides, "config": "demo", "recipes": RECIPES},
        "figures": figures,
        "ratios": [],
        "notes": [_note(f"phase expert, {name}", [r for r in rows if r["recipe"] == name]) for name in RECIPES]
                 + [f"Phase expert alone, chosen on validation (median over seeds): {chosen}."]
                 + [_note(f"i2m2 on the demo cohort, {r['recipe']}", [r]) for r in i2m2_rows]
                 + [(f"i2m2 on the demo cohort, chosen on validation: {chosen_i2m2}; the shipped demo config uses "
                     f"{_shipped_recipe()}.")],
        "recipe": {"rows": rows, "chosen": chosen, "i2m2_rows": i2m2_rows, "chosen_i2m2": chosen_i2m2},
    }


def _demo_recipes(ctx: Context, plan: dict[str, Any], heldout_base: Path, size: int) -> list[dict[str, Any]]:
    """Part B: i2m2 with the demo config under the demo recipe and without its three parts."""
    from i2m2_med.ablation.heldout import ensure_heldout, evaluate_checkpoint
    from i2m2_med.config import load_config
    from i2m2_med.training.fit import TrainerOptions, train
    from pipelines.demo import DEMO_SEED, ensure_cohort

    demo_dir = Path(os.environ.get(DEMO_COHORT_ENV) or (ctx.workdir / "demo-cohort"))
    ensure_cohort(demo_dir, plan["demo_volumes"], DEMO_SEED, ctx.log)
    heldout, cache = ensure_heldout(heldout_base, "mixed", plan["heldout"], size, 2, ctx.log)
    rows = []
    for name in I2M2_RECIPES:
        cfg = load_config("demo").with_updates(**RECIPES[name])
        if ctx.quick:
            cfg = cfg.with_updates(**{"training.warm_start_epochs": 1, "training.warm_start_joint_epochs": None,
                                      "training.max_epochs": 1, "training.epoch_slices": 64})
        run_dir = ctx.workdir / "recipe-i2m2" / name.split(" (")[0].replace(" ", "-")
        ctx.log(f"i2m2 on the demo cohort, {name}")
        train(demo_dir, run_dir, variant="i2m2", config=cfg, seed=DEMO_SEED, n_boot=20,
              options=TrainerOptions(progress=False))
        out = evaluate_checkpoint(run_dir, heldout, cache, n_boot=200)
        summary = out["summary"]["combined"]
        eces = [out["combined"]["study"]["per_head"][h].get("ece") for h in out["combined"]["study"]["per_head"]]
        eces = [e for e in eces if e is not None]
        rows.append({"recipe": name, "seed": DEMO_SEED, "changes": RECIPES[name], **_selected(run_dir),
                     "heldout_in_view_mean3": (summary.get("in_view") or {}).get("mean_pathologies"),
                     "heldout_study_mean3": (summary.get("study") or {}).get("mean_pathologies"),
                     "heldout_study_ece": float(np.mean(eces)) if eces else None})
    return rows


def _selected(run_dir: Path) -> dict[str, Any]:
    """The last stage's chosen epoch and its validation in-view AUROC, from a run's metrics."""
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    stage = metrics["training"]["stages"][-1]
    val = [h.get("val_in_view_auroc_mean") for h in stage["history"]]
    best = stage["best_epoch"]
    return {"best_epoch": best, "epochs_run": stage["epochs_run"],
            "val_in_view": val[best] if best is not None and best < len(val) else None}


def _shipped_recipe() -> str:
    from i2m2_med.config import load_config

    t = load_config("demo").training
    return (f"shifts up to {t.augment.max_shift} px, class weighting {t.class_weighting!r}, "
            f"sampling {t.sampling!r}")


def _chosen(rows: list[dict[str, Any]]) -> str | None:
    """The recipe with the highest median validation in-view AUROC over its seeds."""
    medians = {}
    for name in RECIPES:
        vals = [r["val_in_view"] for r in rows if r["recipe"] == name and r.get("val_in_view") is not None]
        if vals:
            medians[name] = float(np.median(vals))
    return max(medians, key=medians.get) if medians else None


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _note(name: str, rows: list[dict[str, Any]]) -> str:
    parts = []
    for r in rows:
        if "reason" in r:
            parts.append(f"seed {r['seed']} failed ({r['reason']})")
            continue
        extra = ""
        if "heldout_study_mean3" in r:
            extra = f", held-out study {_fmt(r['heldout_study_mean3'])}, study ECE {_fmt(r['heldout_study_ece'])}"
        parts.append(f"seed {r['seed']}: validation {_fmt(r['val_in_view'])}, held-out in view "
                     f"{_fmt(r['heldout_in_view_mean3'])}{extra} (best epoch {r['best_epoch']} of {r['epochs_run']})")
    return f"{name}: " + "; ".join(parts)
