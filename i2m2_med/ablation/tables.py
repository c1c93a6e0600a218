"""The CSV tables of the ablation report, flattened from the results dict (one row per variant,
level, head, ...; undefined values empty with their reason in a ``reason`` column)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from i2m2_med.atomic import atomic_path
from i2m2_med.heads import HEADS

LEVELS = ("slice", "study")


def _ci(cell: Any) -> tuple[Any, Any]:
    if isinstance(cell, (list, tuple)) and len(cell) == 2:
        return cell[0], cell[1]
    return None, None


def tables(results: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The CSV tables of the report as lists of rows (dicts)."""
    out: dict[str, list[dict[str, Any]]] = {}
    out["runs"] = [
        {"variant": r["variant"], "seed": r["seed"], "status": r["status"], "reason": r.get("reason"),
         "seconds": r.get("seconds"), **{k: (r.get("training") or {}).get(k) for k in ("epochs_run", "best_epoch", "best_val_auroc_mean", "samples_per_s")},
         "run_dir": r.get("run_dir")}
        for r in results.get("runs", [])
    ]
    auroc_rows, cal_rows, op_rows, seed_rows = [], [], [], []
    for variant, entry in (results.get("variants") or {}).items():
        table = entry.get("table") or {}
        summary = entry.get("seed_summary") or {}
        for level in LEVELS:
            block = table.get(level) if isinstance(table, Mapping) else None
            for key in (*HEADS, "mean_pathologies", "mean_all"):
                if block:
                    cell = block["per_head"][key] if key in HEADS else block[key]
                    low, high = _ci(cell.get("ci"))
                    value = cell.get("auroc")
                    reason = cell.get("reason") or (f"no CI: {cell['ci_reason']}" if cell.get("ci_reason") else None)
                    n, n_pos = (cell.get("n"), cell.get("n_pos")) if key in HEADS else (block.get("n"), None)
                else:
                    low = high = value = n = n_pos = None
                    reason = entry.get("reason") or (table.get("reason") if isinstance(table, Mapping) else None)
                s = (summary.get(level) or {}).get(key) or {}
                auroc_rows.append({"variant": variant, "level": level, "head": key, "n": n, "n_pos": n_pos,
                                   "auroc_ensemble": value, "ci_low": low, "ci_high": high,
                                   "seed_mean": s.get("mean"), "seed_sd": s.get("sd"), "n_seeds": s.get("n"),
                                   "reason": reason or s.get("reason")})
                if block and key in HEADS:
                    cal_rows.append({"variant": variant, "level": level, "head": key, "ece": cell.get("ece"), "n": cell.get("n"),
                                     "reason": None if cell.get("ece") is not None else (cell.get("reason") or "empty split")})
                    ss = cell.get("sens_spec") or {}
                    sens, spec = ss.get("sensitivity") or {}, ss.get("specificity") or {}
                    op_rows.append({"variant": variant, "level": level, "head": key, "threshold": cell.get("threshold"),
                                    "sensitivity": sens.get("value"), "sens_low": sens.get("low"), "sens_high": sens.get("high"),
                                    "specificity": spec.get("value"), "spec_low": spec.get("low"), "spec_high": spec.get("high"),
                                    "reason": cell.get("threshold_reason")})
        for seed, res in (entry.get("per_seed") or {}).items():
            for level in LEVELS:
                for key in (*HEADS, "mean_pathologies", "mean_all"):
                    cell = res[level]["per_head"][key] if key in HEADS else res[level][key]
                    seed_rows.append({"variant": variant, "seed": seed, "level": level, "head": key,
                                      "auroc": cell.get("value"), "reason": cell.get("reason")})
    out["auroc"] = auroc_rows
    out["calibration"] = cal_rows
    out["operating_points"] = op_rows
    out["per_seed_auroc"] = seed_rows
    comp_rows = []
    for variant, comp in (results.get("comparisons") or {}).items():
        for level in LEVELS:
            block = comp.get(level) if isinstance(comp, Mapping) else None
            if not block:
                comp_rows.append({"variant": variant, "level": level, "head": None, "reason": comp.get("reason")})
                continue
            for key in (*HEADS, "mean_pathologies"):
                c = block["per_head"][key] if key in HEADS else block[key]
                low, high = _ci(c.get("diff_ci") or c.get("ci"))
                comp_rows.append({"variant": variant, "level": level, "head": key,
                                  "method": c.get("method") or block.get("method"),
                                  "auroc_i2m2": c.get("auc_a"), "auroc_variant": c.get("auc_b"), "diff_i2m2_minus_variant": c.get("diff"),
                                  "ci_low": low, "ci_high": high, "p": c.get("p"), "reason": c.get("reason")})
    out["comparisons"] = comp_rows
    rob_rows = []
    rob = results.get("robustness") or {}
    labels = {c["name"]: c for c in rob.get("conditions", [])}
    for variant, per in (rob.get("variants") or {}).items():
        if per.get("value", 0) is None:
            rob_rows.append({"variant": variant, "condition": None, "reason": per.get("reason")})
            continue
        for name, entry in per.items():
            if name not in labels:
                continue
            if entry.get("value", 0) is None:
                rob_rows.append({"variant": variant, "condition": name, "group": labels[name]["group"], "reason": entry.get("reason")})
                continue
            for level in LEVELS:
                for key in ("mean_pathologies", *HEADS):
                    cell = entry[level][key]
                    rob_rows.append({"variant": variant, "condition": name, "group": labels[name]["group"], "level": level,
                                     "head": key, "auroc": cell.get("mean"), "delta_vs_clean": cell.get("delta"),
                                     "n_seeds": cell.get("n"), "reason": cell.get("reason") or entry.get("partial_reason")})
    out["robustness"] = rob_rows
    ev = results.get("evidence") or {}
    drive_rows, agree_rows = [], []
    if ev.get("value", 0) is not None and "driving" in ev:
        for head in HEADS:
            for name in (*ev["experts"], "none"):
                drive_rows.append({"head": head, "expert": name, "drives_all": ev["driving"][head].get(name),
                                   "drives_positive": ev["driving_positive"][head].get(name),
                                   "mean_abs_contribution": ev["mean_abs_contribution"][head].get(name)})
            names = ev["agreement_experts"]
            for i, a in enumerate(names):
                for j, b in enumerate(names):
                    agree_rows.append({"head": head, "expert_a": a, "expert_b": b, "agreement": ev["agreement"][head][i][j]})
    out["evidence_driving"] = drive_rows
    out["evidence_agreement"] = agree_rows
    reg_rows = []
    study = results.get("regime_study") or {}
    for regime, block in (study.get("regimes") or {}).items():
        if block.get("value", 0) is None:
            reg_rows.append({"regime": regime, "reason": block.get("reason")})
            continue
        ceiling = (block.get("label_noise_ceiling") or {}).get("mean_pathologies")
        for variant, entry in block["variants"].items():
            for level in LEVELS:
                cell = ((entry.get("seed_summary") or {}).get(level) or {}).get("mean_pathologies") or {}
                reg_rows.append({"regime": regime, "variant": variant, "level": level, "mean_auroc": cell.get("mean"),
                                 "sd": cell.get("sd"), "n_seeds": cell.get("n"), "label_noise_ceiling": ceiling,
                                 "reason": cell.get("reason") or entry.get("reason")})
        for other, m in (block.get("margins") or {}).items():
            for level in LEVELS:
                c = m.get(level) if isinstance(m, Mapping) and level in m else m
                low, high = _ci(c.get("ci"))
                reg_rows.append({"regime": regime, "variant": f"i2m2 - {other}", "level": level, "mean_auroc": c.get("diff"),
                                 "ci_low": low, "ci_high": high, "p": c.get("p"), "reason": c.get("reason")})
    out["regime_study"] = reg_rows
    return out


def write_tables(folder: Path, rows_by_name: Mapping[str, list[dict[str, Any]]]) -> list[str]:
    """One CSV per table (atomic); returns the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for name, rows in rows_by_name.items():
        frame = pd.DataFrame(rows)
        with atomic_path(folder / f"{name}.csv") as tmp:
            frame.to_csv(tmp, index=False, float_format="%.6g")
        names.append(f"{name}.csv")
    return names
