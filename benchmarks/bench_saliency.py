"""Saliency that shows the evidence: does each method's map point at the finding?

The bundled model (what the app uses when the user names none) on the held-out mixed-regime
cohort of the held-out section (seed 90003, generated straight into its tensor cache; nothing
of the model was trained or chosen on it), whose annotations give every finding's box. Eligible:
the slices with a box of ACL, MTEAR or CART, and per slice each image expert (magnitude, phase,
joint) whose own log-odds for that head is positive there (the expert argues for the finding).
At most 40 such slices per head, drawn with a fixed seed.

Per method (GradCAM, occlusion, integrated gradients from a blurred copy) and expert, at the
model's 64 x 64 input: the pointing game (the map's largest value inside the finding's box,
widened by one map pixel; a map with no positive value is a miss) and the share of the map's
positive attribution inside the widened box (:mod:`i2m2_med.metrics.localisation`). Beside them,
chance: the share of the map the widened boxes cover (what pointing at random achieves).

Target (issue text): the viewer's default method points inside the box on at least 80% of the
finding slices where the expert's contribution is positive. The default was GradCAM; measured
here first, GradCAM's map (the last stage's 4 x 4 grid, upsampled) pointed inside the box on none
of these slices and integrated gradients most often, so integrated gradients became the default
and the target is checked on it (every method's figures are reported).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Context

TITLE = "Saliency: the pointing game and the attribution inside the finding's box, per method and expert"
METHODS = ("gradcam", "occlusion", "integrated_gradients")
HEADS3 = ("acl", "mtear", "cart")
PER_HEAD = 40
QUICK_PER_HEAD = 2
TARGET = 0.80
DEFAULT_METHOD = "integrated_gradients"


def eligible_slices(dataset: Any, boxes: Any, per_head: int, seed: int) -> list[tuple[int, str, list[tuple]]]:
    """(dataset row, head, boxes of that head on the slice), at most ``per_head`` rows per head,
    drawn without replacement with ``seed``."""
    ids = [dataset.studies[int(i)].study_id for i in dataset.items[:, 0]]
    row_of = {(sid, int(k)): n for n, (sid, k) in enumerate(zip(ids, dataset.items[:, 1]))}
    rng = np.random.default_rng(seed)
    out = []
    for head in HEADS3:
        mine = boxes[boxes["head"] == head]
        grouped: dict[int, list[tuple]] = {}
        for r in mine.itertuples(index=False):
            n = row_of.get((str(r.file), int(r.slice)))
            if n is not None:
                grouped.setdefault(n, []).append((r.x, r.y, r.width, r.height))
        rows = sorted(grouped)
        take = rng.choice(len(rows), size=min(per_head, len(rows)), replace=False) if rows else []
        out += [(rows[int(i)], head, grouped[rows[int(i)]]) for i in sorted(take)]
    return out


def run(ctx: Context) -> dict[str, Any]:
    import torch

    from benchmarks.bench_heldout import heldout_cohort
    from i2m2_med.data.dataset import SliceDataset, collate_samples
    from i2m2_med.evidence import IMAGE_EXPERTS, saliency
    from i2m2_med.heads import HEADS
    from i2m2_med.inference.loading import load_model
    from i2m2_med.io.annotations import read_fastmri_plus_boxes
    from i2m2_med.metrics.localisation import chance_share, inside_share, pointing_hit

    cohort, cache = heldout_cohort("mixed", ctx, 4 if ctx.quick else None)
    model, meta = load_model(None)
    dataset = SliceDataset(cohort, "test", image_size=int(meta.config.image_size), tensor_cache=cache)
    boxes = read_fastmri_plus_boxes(Path(cohort.root) / "annotations" / "knee.csv")
    size = int(meta.config.image_size)
    chosen = eligible_slices(dataset, boxes, QUICK_PER_HEAD if ctx.quick else PER_HEAD, ctx.seed)
    experts = [e for e in IMAGE_EXPERTS if e in model.expert_names]
    hits: dict[tuple[str, str], list[bool]] = {(m, e): [] for m in METHODS for e in experts}
    shares: dict[tuple[str, str], list[float]] = {(m, e): [] for m in METHODS for e in experts}
    chance: dict[str, list[float]] = {e: [] for e in experts}
    empty: dict[tuple[str, str], int] = {(m, e): 0 for m in METHODS for e in experts}
    seconds: dict[str, float] = {m: 0.0 for m in METHODS}
    started = time.perf_counter()
    for row, head, slice_boxes in chosen:
        sample = dataset[row]
        with torch.no_grad():
            out = model(collate_samples([sample]))
        h = HEADS.index(head)
        for expert in experts:
            term = out.terms.get(expert)
            if term is None or float(term[0, h, 1] - term[0, h, 0]) <= 0:
                continue  # the expert does not argue for the finding here
            chance[expert].append(chance_share((size, size), slice_boxes))
            for method in METHODS:
                t0 = time.perf_counter()
                smap = saliency(model, sample, expert, head, method=method)
                seconds[method] += time.perf_counter() - t0
                hits[(method, expert)].append(pointing_hit(smap, slice_boxes))
                share = inside_share(smap, slice_boxes)
                if share is None:
                    empty[(method, expert)] += 1
                else:
                    shares[(method, expert)].append(share)
    total = time.perf_counter() - started

    figures: list[dict[str, Any]] = []
    notes: list[str] = []
    summary: dict[str, Any] = {}
    for expert in experts:
        n = len(chance[expert])
        base = float(np.mean(chance[expert])) if n else None
        summary[expert] = {"slices": n, "chance": base}
        for method in METHODS:
            hit = hits[(method, expert)]
            rate = float(np.mean(hit)) if hit else None
            share = float(np.mean(shares[(method, expert)])) if shares[(method, expert)] else None
            summary[expert][method] = {"pointing": rate, "inside_share": share, "empty_maps": empty[(method, expert)]}
            figures.append({"key": f"{expert}_{method}_pointing", "label": f"{expert} expert, {method}: pointing game",
                            "unit": "", "values": [rate] if rate is not None else []})
            figures.append({"key": f"{expert}_{method}_inside", "label": f"{expert} expert, {method}: positive attribution inside the box",
                            "unit": "", "values": [share] if share is not None else []})
        figures.append({"key": f"{expert}_chance", "label": f"{expert} expert: chance (share of the map the boxes cover)",
                        "unit": "", "values": [base] if base is not None else []})
        line = f"{expert} expert ({n} finding slices where it argues for the finding; chance {base:.3f})" if n else \
            f"{expert} expert: no eligible slice"
        if n:
            line += ": " + "; ".join(
                f"{m} pointing {summary[expert][m]['pointing']:.3f}, inside {summary[expert][m]['inside_share'] or 0:.3f}"
                + (f" ({summary[expert][m]['empty_maps']} empty maps)" if summary[expert][m]["empty_maps"] else "")
                for m in METHODS)
        notes.append(line)
    default = [summary[e][DEFAULT_METHOD]["pointing"] for e in experts if summary[e][DEFAULT_METHOD]["pointing"] is not None]
    worst = min(default) if default else None
    ratios = [{"key": "default_pointing_over_target", "label": f"{DEFAULT_METHOD} pointing game, worst expert / {TARGET}",
               "values": [worst / TARGET] if worst is not None else [], "target": 1.0}]
    notes.append(f"Target: {DEFAULT_METHOD} (the viewer's default) points inside the box on >= {TARGET:.0%} of eligible slices for every image "
                 f"expert: {'met' if worst is not None and worst >= TARGET else 'MISSED'} (worst expert {worst if worst is None else round(worst, 3)}).")
    notes.append(f"{len(chosen)} finding slices drawn ({len(set(h for _, h, _ in chosen))} heads); model {meta.fingerprint}; "
                 + ", ".join(f"{m} {seconds[m]:.0f} s" for m in METHODS) + f"; {total:.0f} s in all.")
    return {
        "description": __doc__.split("\n\n", 1)[1].strip(),
        "repeats": 1,
        "params": {"regime": "mixed", "per_head": QUICK_PER_HEAD if ctx.quick else PER_HEAD, "methods": list(METHODS),
                   "tolerance_px": 1, "image_size": int(meta.config.image_size), "target": TARGET},
        "figures": figures,
        "ratios": ratios,
        "notes": notes,
        "saliency": summary,
    }
