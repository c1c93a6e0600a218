"""Clinical ablation report: wall time of ``i2m2-med ablate --quick`` (target: at most 5 minutes
on 2 cores) and what it concluded; :mod:`benchmarks.bench_ablation_full` times the full default
ablation the same way (target: at most 30 minutes).

Full run: a 60-volume mixed-regime synthetic cohort (seed 0, the generator's defaults; its
synthesis is timed apart, it is not part of the ablation) and one ``ablate --quick`` run on it in
a fresh report folder, so nothing is reused from a cache: the seven variants trained for 3 epochs,
validation and test predictions, the robustness conditions (modality dropped, random undersampling
x2/4/8, one noise level), the statistics, the regime study (two further cohorts of 28 volumes of
16 slices generated and three variants trained on each) and the report. Quick run: a 6-volume,
8-slice cohort, one variant, one epoch, no regime study. The run is deterministic, so it is timed
once; the regime-study AUROCs and the mixed-regime margins are reported with the report's CIs.
"""

from __future__ import annotations

import json
import time
from typing import Any, Mapping

from benchmarks.common import Context
from pipelines.report.ablation import below_chance

TITLE = "Clinical ablation report: `i2m2-med ablate --quick` wall time (ablation-issue target)"
TARGET_MINUTES = 5.0
FULL_TARGET_MINUTES = 30.0
FULL = {"volumes": 60, "slices": None}
QUICK = {"volumes": 6, "slices": 8}


def regime_notes(results: Mapping[str, Any]) -> list[str]:
    """The regime study of an ablation report's ``results.json`` as note lines: per regime and
    level the paper's claim on the seed means, the in-view AUROC of each variant's seed ensemble
    (findings against their mimics, where the slice position gives nothing), and the paired
    slice-level margins of I2M2."""
    notes: list[str] = []
    regime = results.get("regime_study") or {}
    for level, target in ((regime.get("targets") or {}).items()):
        for name, r in (target.get("per_regime") or {}).items():
            if any(r.get(v) is None for v in ("i2m2", "intra", "inter")):
                notes.append(f"Regime {name}, {level} level: no result ({r.get('reason')}).")
                continue
            below = max(r["i2m2"], r["intra"], r["inter"]) < 0.5 and r.get("met") is not None
            notes.append(
                f"Regime {name}, {level} level, mean AUROC ACL/MTEAR/CART: i2m2 {r['i2m2']:.3f}, intra {r['intra']:.3f},"
                f" inter {r['inter']:.3f}; claim (i2m2 >= max(intra, inter) - {target.get('tolerance', 0.01)}):"
                f" {'met' if r.get('met') else ('not met' if r.get('met') is False else 'no verdict: ' + str(r.get('reason')))}."
                + (" Every variant is below chance (0.5): these models rank negatives above positives, so the"
                   " claim compares models that have not learned the task." if below else "")
            )
    for regime_name, entry in (regime.get("regimes") or {}).items():
        for other, m in ((entry or {}).get("margins") or {}).items():
            sl = (m or {}).get("slice") or {}
            if sl.get("diff") is not None and sl.get("ci"):
                notes.append(f"Regime {regime_name}, slice level: i2m2 − {other} = {sl['diff']:+.3f} (95% CI {sl['ci'][0]:+.3f}"
                             f" to {sl['ci'][1]:+.3f}, p = {sl.get('p', float('nan')):.2f}; {sl.get('method', '')};"
                             f" {entry.get('test_studies')} test studies).")
    for regime_name, entry in (regime.get("regimes") or {}).items():
        view = (entry or {}).get("in_view") or {}
        if not view:
            continue
        if view.get("value", 0) is None and "reason" in view:
            notes.append(f"Regime {regime_name}, in view: no result ({view['reason']}).")
            continue
        cells = []
        flagged = False
        for variant in ("i2m2", "intra", "inter"):
            cell = view.get(variant) or {}
            if cell.get("value") is None:
                cells.append(f"{variant} – ({cell.get('reason') or 'no result'})")
            else:
                ci = cell.get("ci")
                below = below_chance(ci)
                flagged |= below
                cells.append(f"{variant} {cell['value']:.3f}" + (f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else "")
                             + (" [below chance]" if below else ""))
        notes.append(f"Regime {regime_name}, in view (each head on the slices where its anatomy is in view: findings "
                     f"against their mimics), seed-ensemble mean AUROC ACL/MTEAR/CART: {', '.join(cells)}."
                     + (" [below chance]: the whole 95% CI lies under 0.5, so the model ranks the mimics above the"
                        " findings." if flagged else ""))
    return notes


def run(ctx: Context) -> dict[str, Any]:
    return measure(ctx, full_ablation=False, doc=__doc__ or "")


def measure(ctx: Context, full_ablation: bool, doc: str) -> dict[str, Any]:
    """Synthesise the cohort, time one ``ablate`` run on it (``--quick``, or the full default
    with ``full_ablation``) and summarise what the report concluded; ``doc``: the section's
    docstring, whose paragraphs after the first describe what was run."""
    from i2m2_med.synth import generate_cohort
    from pipelines.ablation import run as ablate

    command = "ablate" if full_ablation else "ablate --quick"
    target_minutes = FULL_TARGET_MINUTES if full_ablation else TARGET_MINUTES
    size = QUICK if ctx.quick else FULL
    cohort = ctx.workdir / "cohort"
    ctx.log(f"synthesising a {size['volumes']}-volume mixed-regime cohort ...")
    started = time.perf_counter()
    generate_cohort(cohort, size["volumes"], ctx.seed, regime="mixed", n_slices=size["slices"], workers=2)
    synth_seconds = time.perf_counter() - started

    out = ctx.workdir / "report"
    argv = ["ablate", "--data", str(cohort), "--out", str(out)] + ([] if full_ablation else ["--quick"])
    kwargs: dict[str, Any] = {"quick": not full_ablation, "progress": False, "argv": argv}
    if ctx.quick:
        kwargs.update(variants=["mag"], seeds=1, epochs=1, n_boot=20, regime_study=False)
    ctx.log(f"{command} ...")
    started = time.perf_counter()
    rc = ablate(cohort, out, **kwargs)
    wall = time.perf_counter() - started
    if rc != 0:
        raise RuntimeError(f"ablate returned {rc}")
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    timing = results.get("timing", {})

    notes = [f"Cohort synthesis (not part of the ablation): {synth_seconds / 60:.1f} min for {size['volumes']} volumes."]
    stages = ", ".join(f"{k[:-2].replace('_', ' ')} {v:.0f} s" for k, v in timing.items()
                       if k.endswith("_s") and k not in ("total_s", "cpu_s") and isinstance(v, (int, float)))
    if stages:
        notes.append(f"Where the time goes: {stages}; process CPU time {timing.get('cpu_s', 0):.0f} s.")
    notes += regime_notes(results)
    key = "full" if full_ablation else "quick"
    figures = [{"key": f"ablate_{key}_min", "label": f"{command}, wall time (in process, after imports)",
                "unit": "min", "values": [wall / 60.0]}]
    ratios = [{"key": f"{key}_time", "label": f"{target_minutes:g} min / {command} wall time",
               "values": [target_minutes * 60.0 / wall], "target": 1.0}]
    return {
        "repeats": 1,
        "description": " ".join(" ".join(doc.split("\n\n")[1:]).split()),
        "params": {"volumes": size["volumes"], "slices_per_volume": size["slices"] or "30-46 (generator default)",
                   "timing": timing, "settings": {k: results.get("settings", {}).get(k) for k in
                                                  ("variants", "seeds", "epochs", "n_boot", "mask_types", "accelerations",
                                                   "noise_levels", "regime_volumes", "regime_slices", "regime_seeds",
                                                   "regime_epochs")}},
        "figures": figures,
        "ratios": ratios,
        "notes": notes,
    }
