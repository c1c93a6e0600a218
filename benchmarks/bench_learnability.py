"""Can an image expert learn the cue? The magnitude expert alone, trained long, at two data sizes.

The claim study's runs barely tell findings from their mimics. This section asks why, on the
simplest case: the intra regime, where a finding shows a magnitude cue on 75 % of its episodes
and a mimic on 20 % (episode Bayes AUROC from magnitude alone 0.775; the separability probe of
:mod:`i2m2_med.synth.probe`, which knows where the lesion sites are, reaches about 0.76 at
64 px). The ``mag`` variant (the magnitude expert alone, the ``demo`` config's architecture and
sampling, no warm start) is trained on the intra training pool (seed 71001, 1,000 volumes) with
40 validation volumes and 200 or 900 training volumes (nested subject-hash subsets), 30 epochs
of 4,096 draws and no early stopping; the best epoch is chosen on the validation in-view AUROC
as in every run. Reported per size: the per-epoch training loss and validation in-view AUROC
(memorisation shows as a falling loss with a flat or falling validation score), and on the
held-out intra cohort (seed 90001, 160 volumes, never trained or tuned on) the in-view AUROC
per head and the cue response (:mod:`i2m2_med.metrics.cues`): the AUROC of the expert's score
between slices whose episode shows the magnitude cue and slices whose episode does not, among
the mimics and among the findings apart. Seed 0, one run per size. ``I2M2_CLAIM_DIR`` and
``I2M2_HELDOUT_DIR`` reuse the claim study's folders (pool and held-out cohort).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Context

TITLE = "Learnability: does the magnitude expert learn the cue (intra regime, 200 vs 900 volumes)?"
CLAIM_DIR_ENV = "I2M2_CLAIM_DIR"
HELDOUT_DIR_ENV = "I2M2_HELDOUT_DIR"
FULL = {"pool": 1000, "sizes": (200, 900), "val": 40, "heldout": 160, "epochs": 30, "draws": 4096}
QUICK = {"pool": 24, "sizes": (8,), "val": 6, "heldout": 8, "epochs": 2, "draws": 64}
PATHOLOGY = ("acl", "mtear", "cart")


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
    from i2m2_med.data.cohort import data_fingerprint, read_evidence
    from i2m2_med.data.layout import EPISODES_CSV
    from i2m2_med.heads import HEADS
    from i2m2_med.metrics.cues import cue_response
    from i2m2_med.training.options import resolve_config

    plan = QUICK if ctx.quick else FULL
    regime = "intra"
    work = Path(os.environ.get(CLAIM_DIR_ENV) or (ctx.workdir / "claim"))
    heldout_base = Path(os.environ.get(HELDOUT_DIR_ENV) or work)
    overrides = {"training.warm_start": False, "training.max_epochs": plan["epochs"], "training.epoch_slices": plan["draws"],
                 "training.early_stopping.patience": plan["epochs"]}
    base = load_config("demo").with_updates(**overrides)
    size = int(base.image_size)
    pool_dir, pool = ensure_pool(work, regime, plan["pool"], size, 2, ctx.log)
    heldout, cache = ensure_heldout(heldout_base, regime, plan["heldout"], size, 2, ctx.log)
    fp = data_fingerprint(heldout)
    states_by_study = read_evidence(Path(heldout.root) / EPISODES_CSV, {s.study_id: s.n_slices for s in heldout.studies})
    rows = []
    for n_train in plan["sizes"]:
        cohort = subset_cohort(pool, n_train, plan["val"])
        cfg = resolve_config(base, None, 0, None)
        ctx.log(f"mag on {n_train} intra training volumes")
        record = train_or_reuse(pool_dir, work / "runs", "mag", 0, cfg, data_fingerprint(cohort), cohort=cohort,
                                train_n_boot=20, progress=ctx.log)
        if not record.ok:
            rows.append({"train_volumes": n_train, "reason": record.reason})
            continue
        metrics = json.loads((Path(record.run_dir) / "metrics.json").read_text(encoding="utf-8"))
        stage = metrics["training"]["stages"][-1]
        pred = heldout_predictions(record, heldout, cache, fp)
        p = pred["p"]["combined"]
        in_view = heldout_in_view(pred, heldout)
        states = np.stack([states_by_study[str(sid)][int(k)] for sid, k in zip(pred["study_id"], pred["slice"])])
        cues = cue_response(p, states, pred["labels"])
        defined = [in_view[h] for h in PATHOLOGY if in_view[h] is not None]
        rows.append({
            "train_volumes": n_train,
            "train_subjects": len({cohort.subjects[s] for s, split in cohort.split.items() if split == "train"}),
            "best_epoch": stage["best_epoch"], "epochs_run": stage["epochs_run"],
            "train_loss": [h.get("train_loss") for h in stage["history"]],
            "val_in_view": [h.get("val_in_view_auroc_mean") for h in stage["history"]],
            "heldout_in_view": in_view, "heldout_in_view_mean3": float(np.mean(defined)) if defined else None,
            "cue_response": {head: cues[head]["magnitude"] for head in HEADS},
            "seconds": record.seconds,
        })
    figures = []
    for r in rows:
        if "reason" in r:
            continue
        n = r["train_volumes"]
        figures.append({"key": f"in_view_{n}", "label": f"{n} training volumes: held-out in-view AUROC, mean ACL/MTEAR/CART",
                        "unit": "", "values": [r["heldout_in_view_mean3"]] if r["heldout_in_view_mean3"] is not None else []})
        mims = [r["cue_response"][h]["mimics"]["auroc"] for h in PATHOLOGY if r["cue_response"][h]["mimics"]["auroc"] is not None]
        figures.append({"key": f"cue_mimics_{n}", "label": f"{n} training volumes: cue response among mimics, mean ACL/MTEAR/CART",
                        "unit": "", "values": [float(np.mean(mims))] if mims else []})
    return {
        "description": __doc__.split("\n\n", 1)[1].strip(),
        "repeats": 1,
        "params": {**{k: list(v) if isinstance(v, tuple) else v for k, v in plan.items()}, "regime": regime,
                   "pool_seed": POOL_SEEDS[regime], "overrides": overrides, "variant": "mag", "config": "demo"},
        "figures": figures,
        "ratios": [],
        "notes": [_note(r) for r in rows],
        "learnability": {"rows": rows},
    }


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _note(r: dict[str, Any]) -> str:
    if "reason" in r:
        return f"{r['train_volumes']} training volumes: failed ({r['reason']})"
    loss = [v for v in r["train_loss"] if v is not None]
    val = [v for v in r["val_in_view"] if v is not None]
    cues = "; ".join(f"{h} mimics {_fmt(c['mimics']['auroc'])} ({c['mimics']['n_cue']} vs {c['mimics']['n_without']} slices), "
                     f"findings {_fmt(c['findings']['auroc'])}" for h, c in r["cue_response"].items() if h in PATHOLOGY)
    return (f"{r['train_volumes']} training volumes ({r['train_subjects']} subjects): best epoch {r['best_epoch']} of "
            f"{r['epochs_run']}; training loss {_fmt(loss[0] if loss else None)} -> {_fmt(loss[-1] if loss else None)}; "
            f"validation in view per epoch {', '.join(_fmt(v) for v in val)}; held-out in view "
            f"{', '.join(f'{h} {_fmt(v)}' for h, v in r['heldout_in_view'].items())} (mean3 {_fmt(r['heldout_in_view_mean3'])}); "
            f"cue response (magnitude): {cues}")
