"""Training budget: does the joint model tell findings from mimics better with more volumes and
more epochs?

The bundled model misses its in-view target (BENCHMARKS.md, the held-out section). This section
asks whether the recipe is limited by what it is given to learn from -- training volumes and
passes over them -- on the model that must read both modalities together: the ``inter`` variant
(the joint model alone, the ``demo`` config's architecture, draws and loss, no warm start, no
early stopping; the best epoch chosen on the validation in-view AUROC as in every run), trained
on the mixed-regime pool (seed 71003) with 60 validation volumes and (a) 400 training volumes for
12 epochs of 6,144 draws (the demo cohort's size and the product epochs of the demo recipe when
this section was added), (b) 900 volumes for 12 epochs (the same number of draws over more
subjects), (c) 900 volumes for 30 epochs, (d) 400 volumes for 48 epochs and (e) 900 volumes for
60 epochs (how far more passes go). Reported per run,
on the held-out mixed cohort (seed 90003, 160 volumes, never trained or tuned on): the in-view
AUROC per head; the co-location response (:func:`i2m2_med.metrics.cues.colocation_response`:
findings whose episode shows both cues on one site against mimics showing them apart, which
only a model reading both modalities together can separate); the cue response among mimics
(:func:`i2m2_med.metrics.cues.cue_response`) for each modality's cue; the training loss and
validation in-view AUROC per epoch; the wall time. Seed 0, one run each. ``I2M2_CLAIM_DIR``
keeps the pool and runs, ``I2M2_HELDOUT_DIR`` the held-out cohort, between runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Context

TITLE = "Training budget: the joint model with more volumes and more epochs (mixed regime)"
CLAIM_DIR_ENV = "I2M2_CLAIM_DIR"
HELDOUT_DIR_ENV = "I2M2_HELDOUT_DIR"
FULL = {"pool": 1000, "val": 60, "heldout": 160, "draws": 6144, "runs": ((400, 12), (900, 12), (900, 30), (400, 48), (900, 60))}
QUICK = {"pool": 24, "val": 6, "heldout": 8, "draws": 64, "runs": ((8, 1), (14, 2))}
PATHOLOGY = ("acl", "mtear", "cart")
VARIANT = "inter"
REGIME = "mixed"


def _mean3(values: dict[str, float | None]) -> float | None:
    defined = [values[h] for h in PATHOLOGY if values.get(h) is not None]
    return float(np.mean(defined)) if defined else None


def run(ctx: Context) -> dict[str, Any]:
    from i2m2_med.ablation.claim import POOL_SEEDS, ensure_pool, heldout_in_view, heldout_predictions, subset_cohort
    from i2m2_med.ablation.heldout import ensure_heldout
    from i2m2_med.ablation.runs import train_or_reuse
    from i2m2_med.config import load_config
    from i2m2_med.data.cohort import data_fingerprint, read_evidence
    from i2m2_med.data.layout import EPISODES_CSV
    from i2m2_med.metrics.cues import colocation_response, cue_response
    from i2m2_med.training.options import resolve_config

    plan = QUICK if ctx.quick else FULL
    work = Path(os.environ.get(CLAIM_DIR_ENV) or (ctx.workdir / "claim"))
    heldout_base = Path(os.environ.get(HELDOUT_DIR_ENV) or work)
    size = int(load_config("demo").image_size)
    pool_dir, pool = ensure_pool(work, REGIME, plan["pool"], size, 2, ctx.log)
    heldout, cache = ensure_heldout(heldout_base, REGIME, plan["heldout"], size, 2, ctx.log)
    fp = data_fingerprint(heldout)
    states_by_study = read_evidence(Path(heldout.root) / EPISODES_CSV, {s.study_id: s.n_slices for s in heldout.studies})
    rows = []
    for n_train, epochs in plan["runs"]:
        overrides = {"training.warm_start": False, "training.max_epochs": epochs, "training.epoch_slices": plan["draws"],
                     "training.early_stopping.patience": epochs}
        cfg = resolve_config(load_config("demo").with_updates(**overrides), None, 0, None)
        cohort = subset_cohort(pool, n_train, plan["val"])
        ctx.log(f"{VARIANT} on {n_train} {REGIME} training volumes, {epochs} epochs")
        record = train_or_reuse(pool_dir, work / "runs", VARIANT, 0, cfg, data_fingerprint(cohort), cohort=cohort,
                                train_n_boot=20, progress=ctx.log)
        row: dict[str, Any] = {"train_volumes": n_train, "epochs": epochs, "draws": epochs * plan["draws"]}
        if not record.ok:
            rows.append({**row, "reason": record.reason})
            continue
        metrics = json.loads((Path(record.run_dir) / "metrics.json").read_text(encoding="utf-8"))
        stage = metrics["training"]["stages"][-1]
        pred = heldout_predictions(record, heldout, cache, fp)
        p = pred["p"]["combined"]
        states = np.stack([states_by_study[str(sid)][int(k)] for sid, k in zip(pred["study_id"], pred["slice"])])
        in_view = heldout_in_view(pred, heldout)
        coloc = colocation_response(p, states, pred["labels"])
        cues = cue_response(p, states, pred["labels"])
        rows.append({
            **row,
            "train_subjects": len({cohort.subjects[s] for s, split in cohort.split.items() if split == "train"}),
            "best_epoch": stage["best_epoch"], "epochs_run": stage["epochs_run"],
            "train_loss": [h.get("train_loss") for h in stage["history"]],
            "val_in_view": [h.get("val_in_view_auroc_mean") for h in stage["history"]],
            "heldout_in_view": in_view, "heldout_in_view_mean3": _mean3(in_view),
            "colocation": coloc, "colocation_mean3": _mean3({h: coloc[h]["auroc"] for h in coloc}),
            "cue_mimics_mean3": {m: _mean3({h: cues[h][m]["mimics"]["auroc"] for h in cues}) for m in ("magnitude", "phase")},
            "seconds": metrics["training"]["time_s"],  # the run's own fitting time, also when reused from the cache
        })
    figures = []
    for r in rows:
        if "reason" in r:
            continue
        tag, label = f"{r['train_volumes']}v_{r['epochs']}e", f"{r['train_volumes']} volumes, {r['epochs']} epochs"
        for key, name, value in (("in_view", "held-out in-view AUROC, mean ACL/MTEAR/CART", r["heldout_in_view_mean3"]),
                                 ("abnormal", "held-out ABNORMAL in-view AUROC", r["heldout_in_view"].get("abnormal")),
                                 ("coloc", "co-location response (findings together vs mimics apart), mean3", r["colocation_mean3"]),
                                 ("mag_cue", "magnitude cue response among mimics, mean3", r["cue_mimics_mean3"]["magnitude"]),
                                 ("train_min", "training wall time", r["seconds"] / 60.0)):
            figures.append({"key": f"{key}_{tag}", "label": f"{label}: {name}", "unit": "min" if key == "train_min" else "",
                            "values": [value] if value is not None else []})
    return {
        "description": __doc__.split("\n\n", 1)[1].strip(),
        "repeats": 1,
        "params": {"pool": plan["pool"], "val": plan["val"], "heldout": plan["heldout"], "draws": plan["draws"],
                   "runs": [list(r) for r in plan["runs"]], "regime": REGIME, "pool_seed": POOL_SEEDS[REGIME],
                   "variant": VARIANT, "config": "demo"},
        "figures": figures,
        "ratios": [],
        "notes": [_note(r) for r in rows],
        "budget": {"rows": rows},
    }


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _note(r: dict[str, Any]) -> str:
    head = f"{r['train_volumes']} volumes, {r['epochs']} epochs ({r['draws']} draws)"
    if "reason" in r:
        return f"{head}: failed ({r['reason']})"
    loss = [v for v in r["train_loss"] if v is not None]
    val = [v for v in r["val_in_view"] if v is not None]
    coloc = ", ".join(f"{h} {_fmt(c['auroc'])}" for h, c in r["colocation"].items() if h in PATHOLOGY)
    return (f"{head}, {r['train_subjects']} training subjects: best epoch {r['best_epoch']} of {r['epochs_run']}; training "
            f"loss {_fmt(loss[0] if loss else None)} -> {_fmt(loss[-1] if loss else None)}; validation in view per epoch "
            f"{', '.join(_fmt(v) for v in val)}; held-out in view "
            f"{', '.join(f'{h} {_fmt(v)}' for h, v in r['heldout_in_view'].items())}; co-location response "
            f"{coloc}; cue response "
            f"among mimics (mean3) magnitude {_fmt(r['cue_mimics_mean3']['magnitude'])}, phase "
            f"{_fmt(r['cue_mimics_mean3']['phase'])}; {r['seconds'] / 60.0:.1f} min")
