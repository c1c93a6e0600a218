"""The bundled model on the held-out mixed-regime benchmark cohort: does it tell findings from
their mimics?

The cohort is :mod:`i2m2_med.synth.heldout`'s mixed regime (seed 90003, 160 volumes, 104
subjects), generated straight into a tensor cache; nothing of the bundled model was trained,
stopped, chosen or calibrated on it. Every study is a test study. The model is what ``diagnose``
and the app use when the user names none (``i2m2_med/assets/demo_model``).

Primary: the in-view AUROC (each head on the slices where its anatomy is in view: findings
against their mimics, mean over ACL / MTEAR / CART) and the study-level AUROC. Secondary: the
slice AUROC, beside the position-only baseline fitted on the model's own training split (the
score that knows only which slice this is). Study-level calibration error of the calibrated
study probabilities (the map the model carries, fitted on its validation split). Every CI is a
percentile bootstrap over whole subjects (the PD and PD-FS studies of a knee together).

Targets (issue text): in-view mean3 >= 0.85; study mean3 >= 0.90; slice mean3 at least 0.07
above the position-only baseline; study-level ECE <= 0.10 (mean over the four heads); ABNORMAL
in-view >= 0.75 (or left out of synthetic training, with the reason).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Context

TITLE = "Bundled model on the held-out mixed-regime cohort: in view, study level, against position"

QUICK_VOLUMES = 4
N_BOOT = 1000
TARGETS = {"in_view_mean3": 0.85, "study_mean3": 0.90, "slice_over_position": 0.07, "study_ece": 0.10,
           "abnormal_in_view": 0.75}
HELDOUT_DIR_ENV = "I2M2_HELDOUT_DIR"
"""A folder to keep the generated held-out cohorts in between runs (default: the scratch folder)."""


def heldout_cohort(regime: str, ctx: Context, volumes: int | None = None) -> tuple[Any, Any]:
    """The held-out cohort of ``regime`` and its tensor cache, generated on first use."""
    from i2m2_med.ablation.heldout import ensure_heldout
    from i2m2_med.synth.heldout import HELDOUT_VOLUMES

    base = Path(os.environ.get(HELDOUT_DIR_ENV) or ctx.workdir)
    return ensure_heldout(base, regime, volumes or HELDOUT_VOLUMES, progress=ctx.log)


def _mean3(summary: dict[str, Any], level: str) -> float | None:
    row = (summary or {}).get(level) or {}
    return row.get("mean_pathologies")


def run(ctx: Context) -> dict[str, Any]:
    from i2m2_med.ablation.heldout import evaluate_checkpoint
    from i2m2_med.heads import HEADS

    cohort, cache = heldout_cohort("mixed", ctx, QUICK_VOLUMES if ctx.quick else None)
    started = time.perf_counter()
    result = evaluate_checkpoint(None, cohort, cache, n_boot=50 if ctx.quick else N_BOOT, seed=ctx.seed)
    seconds = time.perf_counter() - started
    combined = result["combined"]
    summary = result["summary"]["combined"]
    baseline = result["summary"].get("position_baseline") or {}
    study = combined["study"]["per_head"]
    eces = [study[h]["ece"] for h in HEADS if study[h].get("ece") is not None]
    in_view = combined.get("in_view") or {}
    values = {
        "in_view_mean3": _mean3(summary, "in_view"),
        "study_mean3": _mean3(summary, "study"),
        "slice_mean3": _mean3(summary, "slice"),
        "position_slice_mean3": _mean3(baseline, "slice"),
        "position_in_view_mean3": _mean3(baseline, "in_view"),
        "position_study_mean3": _mean3(baseline, "study"),
        "study_ece": (sum(eces) / len(eces)) if eces else None,
        "abnormal_in_view": ((in_view.get("per_head") or {}).get("abnormal") or {}).get("auroc"),
    }
    gap = None if values["slice_mean3"] is None or values["position_slice_mean3"] is None else \
        values["slice_mean3"] - values["position_slice_mean3"]
    cis = {
        "in_view_mean3": (in_view.get("mean_pathologies") or {}).get("ci"),
        "study_mean3": combined["study"]["mean_pathologies"]["ci"],
        "slice_mean3": combined["slice"]["mean_pathologies"]["ci"],
    }
    labels = {
        "in_view_mean3": "in-view AUROC, mean ACL/MTEAR/CART (findings against mimics)",
        "study_mean3": "study-level AUROC, mean ACL/MTEAR/CART",
        "slice_mean3": "slice AUROC, mean ACL/MTEAR/CART",
        "position_slice_mean3": "position-only baseline: slice AUROC, mean3",
        "position_in_view_mean3": "position-only baseline: in-view AUROC, mean3",
        "position_study_mean3": "position-only baseline: study-level AUROC, mean3",
        "study_ece": "study-level ECE of the calibrated p, mean of four heads",
        "abnormal_in_view": "ABNORMAL in-view AUROC",
    }
    figures = [{"key": k, "label": labels[k], "unit": "", "values": [v] if v is not None else []} for k, v in values.items()]
    ratios = [
        {"key": "in_view_target", "label": "in-view mean3 (target >= 0.85)",
         "values": [values["in_view_mean3"]] if values["in_view_mean3"] is not None else [], "target": None},
        {"key": "slice_gap", "label": "slice mean3 minus the position-only baseline (target >= 0.07)",
         "values": [gap] if gap is not None else [], "target": None},
    ]
    met = {
        "in_view_mean3": values["in_view_mean3"] is not None and values["in_view_mean3"] >= TARGETS["in_view_mean3"],
        "study_mean3": values["study_mean3"] is not None and values["study_mean3"] >= TARGETS["study_mean3"],
        "slice_over_position": gap is not None and gap >= TARGETS["slice_over_position"],
        "study_ece": values["study_ece"] is not None and values["study_ece"] <= TARGETS["study_ece"],
        "abnormal_in_view": values["abnormal_in_view"] is not None and values["abnormal_in_view"] >= TARGETS["abnormal_in_view"],
    }
    notes = [
        f"{len(cohort.studies)} studies of {len(set(cohort.subjects.values()))} subjects, "
        f"{sum(s.n_slices for s in cohort.studies)} slices; model {result['model']['fingerprint']} "
        f"({result['model']['variant']}); prediction {seconds:.0f} s.",
        "95% CIs (subject bootstrap): " + "; ".join(
            f"{k} [{c[0]:.3f}, {c[1]:.3f}]" for k, c in cis.items() if c),
        "Targets: " + "; ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in met.items()) + ".",
    ]
    return {
        "description": __doc__.split("\n\n", 1)[1].strip(),
        "repeats": 1,
        "params": {"regime": "mixed", "volumes": len(cohort.studies), "n_boot": N_BOOT, "targets": TARGETS},
        "figures": figures,
        "ratios": ratios,
        "notes": notes,
        "heldout": {"values": values, "ci": cis, "met": met, "per_head": {
            level: {h: (combined[level]["per_head"][h] if level != "in_view" else in_view.get("per_head", {}).get(h, {})).get("auroc")
                    for h in HEADS}
            for level in ("slice", "study", "in_view")}},
    }
