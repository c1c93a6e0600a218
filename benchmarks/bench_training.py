"""Training to the models-issue quality target: wall time and test AUROC of the cpu config on the
demo cohort, for I2M2 (end to end, and with the warm start) and every single-expert variant.

The target (models issue): with the cpu config on a mixed-regime synthetic cohort of the demo
size, I2M2's mean test AUROC over ACL / MTEAR / CART within 0.05 of the cohort's label-noise ceiling
and at least that of every single-expert variant (mag, phase, tab), trained in at most 10 minutes
on 2 cores.

"i2m2" is the product trained end to end from scratch (the knee reference's recipe, the cpu
config's default); "warm start" trains each expert alone first (the paper's AV-MNIST recipe): the
``demo`` config, the cpu config with the warm start, which ``i2m2-med demo`` trains for the
bundled model. The cpu config departs from the reference in two ways, each measured here by a run
without it: the phase expert and the joint model see the homodyne high-pass phase
(``model.phase_input``), and training flips and shifts each slice (``training.augment``). The
spread of the demo's recipe over training seeds is the training-seeds section's subject; options
measured here before and removed since are listed under "Options measured and removed".

Full run: the demo cohort (``pipelines.demo``: 100 volumes, mixed regime, seed 0) is reused from
``demo_out/cohort`` when it is there and matches, else synthesised into the scratch folder (its
generation time is reported apart); each variant is trained once with ``i2m2_med.training.fit.train``
exactly as ``i2m2-med train`` does (seed 0, the config's epochs and early stopping; each run
builds its own data loaders and transform cache, so every run pays the k-space transforms of its
first epoch). Training is deterministic given the seed and the thread count, so one run per
variant is reported (repetitions would only repeat the same numbers) with the bootstrap CI of its
test AUROC over the test studies; a second training seed moves these figures by about as much as
the differences between the recipes, which is why the training-seeds section trains the
bundled model's recipe with three seeds. Quick run: a 6-volume, 8-slice cohort and
one epoch, to check the section runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.common import Context

TITLE = "Training: time and test AUROC of the cpu config on the demo cohort (models-issue target)"

REPO = Path(__file__).resolve().parents[1]
TARGET_MINUTES = 10.0
TARGET_GAP = 0.05
PATHOLOGIES = ("acl", "mtear", "cart")
RAW_PHASE = {"model.phase_input.filter": "none"}
NO_AUGMENT = {"training.augment.flip_p": 0.0, "training.augment.max_shift": 0}
#: (label, variant, shipped config, changes to it) of every run
RUNS_FULL: tuple[tuple[str, str, str, dict], ...] = (
    ("i2m2", "i2m2", "cpu", {}),
    ("i2m2 (warm start, the demo's recipe)", "i2m2", "demo", {}),
    ("i2m2 (warm start, raw phase)", "i2m2", "demo", RAW_PHASE),
    ("i2m2 (warm start, no augmentation)", "i2m2", "demo", NO_AUGMENT),
    ("mag", "mag", "cpu", {}),
    ("phase", "phase", "cpu", {}),
    ("tab", "tab", "cpu", {}),
)
RUNS_QUICK: tuple[tuple[str, str, str, dict], ...] = (("i2m2", "i2m2", "cpu", {}), ("mag", "mag", "cpu", NO_AUGMENT))


def _config(name: str, changes: dict) -> Any:
    """The shipped config ``name`` with ``changes`` (dotted keys), renamed after them."""
    from i2m2_med.config import load_config

    if not changes:
        return name
    return load_config(name).with_updates(name=f"{name} (" + ", ".join(f"{k}={v}" for k, v in changes.items()) + ")", **changes)


def _cohort(ctx: Context) -> tuple[Path, float | None, str]:
    from i2m2_med.synth import generate_cohort
    from pipelines.demo import DEMO_REGIME, DEMO_SEED, DEMO_VOLUMES, _cohort_matches

    if ctx.quick:
        target = ctx.workdir / "cohort"
        started = time.perf_counter()
        generate_cohort(target, 6, ctx.seed, regime=DEMO_REGIME, n_slices=8, workers=1)
        return target, time.perf_counter() - started, "6-volume, 8-slice quick cohort"
    existing = REPO / "demo_out" / "cohort"
    if _cohort_matches(existing, DEMO_VOLUMES, DEMO_SEED):
        return existing, None, f"the demo cohort reused from demo_out/cohort ({DEMO_VOLUMES} volumes)"
    target = ctx.workdir / "cohort"
    ctx.log(f"synthesising the demo cohort ({DEMO_VOLUMES} volumes) ...")
    started = time.perf_counter()
    generate_cohort(target, DEMO_VOLUMES, DEMO_SEED, regime=DEMO_REGIME, workers=2)
    return target, time.perf_counter() - started, f"the demo cohort ({DEMO_VOLUMES} volumes), synthesised for this run"


def training_episodes_note(cohort_dir: Path) -> str | None:
    """What the training split gives a learner to tell findings from mimics: per pathology head,
    the finding episodes of the training studies by regime rule (``episodes.csv`` joined with
    ``splits.csv``), with their slices, and the mimic episodes. None without those files."""
    import pandas as pd

    episodes, splits = Path(cohort_dir) / "episodes.csv", Path(cohort_dir) / "splits.csv"
    if not (episodes.is_file() and splits.is_file()):
        return None
    ep = pd.read_csv(episodes).merge(pd.read_csv(splits)[["study_id", "split"]], on="study_id")
    ep = ep[(ep["split"] == "train") & ep["head"].isin(PATHOLOGIES)]
    if ep.empty:
        return None
    ep = ep.assign(slices=ep["last_slice"] - ep["first_slice"] + 1)
    parts = []
    for head in PATHOLOGIES:
        rows = ep[ep["head"] == head]
        found = rows[rows["finding"] == 1]
        by_mode = ", ".join(
            f"{mode} {int((found['mode'] == mode).sum())} ({int(found.loc[found['mode'] == mode, 'slices'].sum())} slices)"
            for mode in ("inter", "intra")
        )
        parts.append(f"{head}: {len(found)} finding episodes ({by_mode}) against {int((rows['finding'] == 0).sum())} mimic episodes")
    return ("What the training split holds to learn findings from mimics (episodes.csv, training studies): "
            + "; ".join(parts) + ". An inter-regime finding differs from its mimics only in where its magnitude and phase "
            "cues lie, so the joint model learns co-location from the inter finding episodes alone.")


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def _mean_pathologies(metrics: dict[str, Any], term: str = "combined", level: str = "slice") -> tuple[float | None, list[float] | None]:
    row = metrics.get("test", {}).get("summary", {}).get(term, {}).get(level) or {}
    return row.get("mean_pathologies"), row.get("mean_pathologies_ci")


def run(ctx: Context) -> dict[str, Any]:
    import torch

    from i2m2_med.training.fit import TrainerOptions, train

    torch.set_num_threads(2)
    cohort, synth_seconds, cohort_note = _cohort(ctx)
    runs = RUNS_QUICK if ctx.quick else RUNS_FULL
    figures: list[dict[str, Any]] = []
    results: dict[str, dict[str, Any]] = {}
    ceiling = None
    for label, variant, config, changes in runs:
        ctx.log(f"training {label} ...")
        started = time.perf_counter()
        metrics = train(
            cohort,
            ctx.workdir / f"run-{len(results)}-{variant}",
            variant=variant,
            config=_config(config, changes),
            seed=0,
            options=TrainerOptions(progress=False),
            epochs=1 if ctx.quick else None,
            n_boot=200 if ctx.quick else 1000,
        ).metrics
        wall = time.perf_counter() - started
        stages = metrics["training"]["stages"]
        samples = sum(s["train_samples"] for s in stages)
        train_seconds = sum(s["train_seconds"] for s in stages)
        auroc, ci = _mean_pathologies(metrics)
        in_view, in_view_ci = _mean_pathologies(metrics, level="in_view")
        ceiling = metrics.get("label_noise_ceiling_mean", ceiling)
        oracle = metrics.get("oracle") or {}
        results[label] = {
            "variant": variant,
            "config": config,
            "warm_start": metrics["training"]["warm_start"],
            "config_changes": changes,
            "wall_seconds": round(wall, 1),
            "epochs": [s["epochs_run"] for s in stages],
            "best_epoch": [s["best_epoch"] for s in stages],
            "best_val_auroc_mean": [round(s["best_val_auroc_mean"], 4) for s in stages],
            "test_mean_auroc": auroc,
            "test_mean_auroc_ci": ci,
            "test_study_mean_auroc": metrics.get("test_mean_pathologies", {}).get("study"),
            "test_in_view_mean_auroc": in_view,
            "test_in_view_mean_auroc_ci": in_view_ci,
            "train_samples_per_s": round(samples / train_seconds, 1) if train_seconds > 0 else None,
        }
        if variant == "i2m2":
            results[label]["experts_inside"] = {
                term: _mean_pathologies(metrics, term)[0]
                for term in metrics.get("experts", []) if term != "combined"
            }
        figures.append({"key": f"wall_{label}", "label": f"{label}: training wall time (fit + evaluation)",
                        "unit": "min", "values": [wall / 60.0]})
        if results[label]["train_samples_per_s"] is not None:
            figures.append({"key": f"rate_{label}", "label": f"{label}: training samples/s (fit loop only)",
                            "unit": "samples/s", "values": [results[label]["train_samples_per_s"]]})
        if auroc is not None:
            figures.append({"key": f"auroc_{label}", "label": f"{label}: test slice-level mean AUROC (ACL/MTEAR/CART)",
                            "unit": "AUROC", "values": [auroc]})
        if in_view is not None:
            figures.append({"key": f"in_view_{label}", "label": f"{label}: test in-view mean AUROC (findings vs mimics)",
                            "unit": "AUROC", "values": [in_view]})

    ratios: list[dict[str, Any]] = []
    main = results.get("i2m2", {})
    singles = [results[k]["test_mean_auroc"] for k in results if results[k]["variant"] in ("mag", "phase", "tab")
               and results[k]["test_mean_auroc"] is not None]
    for label in [k for k in results if results[k]["variant"] == "i2m2"]:
        r = results[label]
        if r["test_mean_auroc"] is not None and ceiling is not None:
            ratios.append({"key": f"quality_{label}", "label": f"{label}: test AUROC / (label-noise ceiling − {TARGET_GAP})",
                           "values": [r["test_mean_auroc"] / (ceiling - TARGET_GAP)], "target": 1.0})
        if r["test_mean_auroc"] is not None and singles:
            ratios.append({"key": f"vs_single_{label}", "label": f"{label}: test AUROC / best single-expert variant",
                           "values": [r["test_mean_auroc"] / max(singles)], "target": 1.0})
        ratios.append({"key": f"time_{label}", "label": f"{label}: {TARGET_MINUTES:g} min / training wall time",
                       "values": [TARGET_MINUTES * 60.0 / r["wall_seconds"]], "target": 1.0})

    notes = [
        f"Cohort: {cohort_note}" + (f"; its synthesis took {synth_seconds / 60:.1f} min" if synth_seconds else "") + ".",
        f"Label-noise ceiling of the cohort (a perfect predictor of the true findings against the annotated labels): {ceiling}.",
    ]
    evidence = {h: v for h, v in (oracle.get("slice_evidence_auroc") or {}).items() if h in PATHOLOGIES}
    position = {h: v for h, v in (oracle.get("slice_position_auroc") or {}).items() if h in PATHOLOGIES}
    if evidence:
        notes.append(
            "What the images allow (manifest slice_evidence_auroc, the Bayes score of the cues each slice shows, "
            f"whole cohort): {', '.join(f'{h} {_num(v)}' for h, v in evidence.items())}; what the slice position alone "
            f"gives (slice_position_auroc): {', '.join(f'{h} {_num(v)}' for h, v in position.items())}. The in-view AUROC "
            "scores each head only on the slices where its anatomy is in view, so a model must tell a finding from "
            "its mimics there: 0.5 is a model that has learned only where findings can lie."
        )
    episodes_note = training_episodes_note(cohort)
    if episodes_note:
        notes.append(episodes_note)
    for label, r in results.items():
        ci = r["test_mean_auroc_ci"]
        ci_text = f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else ""
        auroc_text = "–" if r["test_mean_auroc"] is None else f"{r['test_mean_auroc']:.3f}"
        iv, iv_ci = r["test_in_view_mean_auroc"], r["test_in_view_mean_auroc_ci"]
        if iv is not None:
            ci_text += f", in view {iv:.3f}" + (f" (95% CI {iv_ci[0]:.3f}–{iv_ci[1]:.3f})" if iv_ci else "")
        line = (f"{label}: test mean AUROC {auroc_text}{ci_text}; epochs {r['epochs']}, best epoch {r['best_epoch']},"
                f" best validation AUROC {r['best_val_auroc_mean']}; {r['wall_seconds'] / 60:.1f} min")
        if "experts_inside" in r:
            inside = ", ".join(f"{k} {v:.3f}" for k, v in r["experts_inside"].items() if v is not None)
            line += f"; its own experts read alone: {inside}"
        notes.append(line + ".")
    if main:
        notes.append("Which I2M2 recipe the demo ships is decided by validation AUROC, never by the test split.")
    return {
        "repeats": 1,
        "description": " ".join(" ".join(__doc__.split("\n\n")[1:4]).split()) if __doc__ else "",
        "params": {"config": "cpu", "seed": 0, "runs": [r[0] for r in runs], "threads": 2,
                   "results": results},
        "figures": figures,
        "ratios": ratios,
        "notes": notes,
    }
