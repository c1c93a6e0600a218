"""The product stage's fine-tuning learning rate, chosen on validation.

After the warm start (each expert trained alone), the product is fine-tuned end to end with the
experts' learning rates times ``training.finetune_lr_scale``. This section trains i2m2 with the
claim study's recipe (:data:`i2m2_med.ablation.claim.FULL_OVERRIDES` on the ``demo`` config) on
the mixed-regime training pool of the claim study (seed 71003; 200 training and 40 validation
volumes, the same split as the claim study's runs) at three scales, seed 0, and reports for each
the validation in-view AUROC of the selected epoch (the model-selection score: findings against
their mimics, mean over the four heads), the product stage's best epoch and the validation study
AUROC. The scale with the highest validation in-view AUROC is the choice; no test or held-out
cohort is read. ``I2M2_CLAIM_DIR`` reuses the claim study's pool and runs (the scale 1.0 run is
the claim study's i2m2 seed 0).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from benchmarks.common import Context

TITLE = "Fine-tuning learning rate of the product stage, chosen on validation"
SCALES = (0.1, 0.3, 1.0)
CLAIM_DIR_ENV = "I2M2_CLAIM_DIR"


def run(ctx: Context) -> dict[str, Any]:
    from i2m2_med.ablation.claim import POOL_SEEDS, claim_settings, ensure_pool, subset_cohort
    from i2m2_med.ablation.runs import train_or_reuse
    from i2m2_med.config import load_config
    from i2m2_med.data.cohort import data_fingerprint
    from i2m2_med.training.options import resolve_config

    settings = claim_settings(ctx.quick)
    regime = "inter" if ctx.quick else "mixed"
    work = Path(os.environ.get(CLAIM_DIR_ENV) or (ctx.workdir / "claim"))
    base = load_config(settings.config).with_updates(**settings.overrides)
    pool_dir, pool = ensure_pool(work, regime, settings.pool_volumes(regime), int(base.image_size), settings.workers, ctx.log)
    cohort = subset_cohort(pool, settings.train_volumes, settings.val_volumes)
    rows = []
    for scale in SCALES:
        cfg = resolve_config(base.with_updates(**{"training.finetune_lr_scale": scale}), None, 0, None)
        ctx.log(f"i2m2 with finetune_lr_scale {scale}")
        record = train_or_reuse(pool_dir, work / "runs", "i2m2", 0, cfg, data_fingerprint(cohort), cohort=cohort,
                                train_n_boot=settings.train_n_boot, progress=ctx.log)
        if not record.ok:
            rows.append({"scale": scale, "reason": record.reason})
            continue
        import json

        metrics = json.loads((Path(record.run_dir) / "metrics.json").read_text(encoding="utf-8"))
        product = [s for s in metrics["training"]["stages"] if s["objective"] == "product"][0]
        best = product["history"][product["best_epoch"]]
        val = (metrics.get("val") or {}).get("summary", {}).get("combined", {})
        rows.append({"scale": scale, "val_in_view_mean4": best.get("val_selection"), "best_epoch": product["best_epoch"],
                     "epochs_run": product["epochs_run"], "val_study_mean3": (val.get("study") or {}).get("mean_pathologies"),
                     "history": [h.get("val_selection") for h in product["history"]], "seconds": record.seconds})
    scored = [r for r in rows if r.get("val_in_view_mean4") is not None]
    chosen = max(scored, key=lambda r: r["val_in_view_mean4"])["scale"] if scored else None
    figures = [{"key": f"val_in_view_{r['scale']}", "label": f"finetune_lr_scale {r['scale']}: validation in-view AUROC mean4 (selected epoch)",
                "unit": "", "values": [r["val_in_view_mean4"]] if r.get("val_in_view_mean4") is not None else []} for r in rows]
    notes = [f"scale {r['scale']}: " + (r["reason"] if "reason" in r else
             f"val in view {r['val_in_view_mean4']:.3f}, val study mean3 {r['val_study_mean3']:.3f}, best product epoch "
             f"{r['best_epoch']} of {r['epochs_run']} (per-epoch val in view {', '.join(f'{v:.3f}' for v in r['history'] if v is not None)})")
             for r in rows]
    notes.append(f"Chosen on validation: finetune_lr_scale {chosen}; the shipped configs use "
                 f"{load_config('demo').training.finetune_lr_scale} (demo) and {load_config('cpu').training.finetune_lr_scale} (cpu).")
    return {
        "description": __doc__.split("\n\n", 1)[1].strip(),
        "repeats": 1,
        "params": {"scales": list(SCALES), "regime": regime, "pool_seed": POOL_SEEDS[regime], "overrides": settings.overrides},
        "figures": figures,
        "ratios": [],
        "notes": notes,
        "finetune": {"rows": rows, "chosen": chosen},
    }
