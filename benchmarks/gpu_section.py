"""GPU section: paper-config training samples/s and inference slices/s on one CUDA card.

    python -m benchmarks.gpu_section            # on a machine with CUDA; about a minute on an H100

Config ``paper`` (PreActResNet-18 experts, 320 x 320), variants ``i2m2`` and ``mag``, batch 16,
bfloat16 autocast and channels-last weights and inputs, cuDNN autotuning on; the same model and
step code as the CPU figures (:func:`benchmarks.bench_models.make_steps`). Per variant: 3
untimed training and inference steps, then 5 repetitions of 8 timed training steps and 8 timed
inference steps (each step synchronises the card). Then the viewer's evidence with the model on
the card (``i2m2-med app --device cuda``): GradCAM, occlusion and the tabular attributions of the
bundled model against the CPU's (largest absolute difference, in the params); ``diagnose`` on a
6-volume synthetic cohort with ``--device cuda`` and ``--device cpu`` (slices/s, largest
difference of the probabilities) and one epoch of ``train`` with the ``cpu`` config on the card.
Prints the card's name and writes one JSON
file: to ``$OUT/gpu_results.json`` when the environment variable ``OUT`` names a folder, to
``$OUT`` when it names a file, else to ``./gpu_results.json`` (``--output`` overrides). Without
CUDA it prints one line and exits with code 2.

Merging into the report: the JSON is one section entry in the format of
``python -m benchmarks.run`` (title, machine, software, figures with per-repetition values and
their statistics). ::

    python -m benchmarks.gpu_section --merge gpu_results.json                      # into benchmarks/results.json + BENCHMARKS.md
    python -m benchmarks.gpu_section --merge gpu_results.json --json R.json --out R.md

stores it as the section ``gpu`` of the results JSON and regenerates the markdown. The CPU runs
of ``benchmarks.run`` keep it: they replace only the sections they run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # also runnable as ``python benchmarks/gpu_section.py``
    sys.path.insert(0, str(REPO))

TITLE = "GPU: paper config training samples/s and inference slices/s (bf16, channels-last)"
SECTION = "gpu"
VARIANTS = ("i2m2", "mag")
BATCH = 16
WARMUP = 3
STEPS = 8
REPEATS = 5
N_TABULAR = 6
DESCRIPTION = (
    "Config `paper` (PreActResNet-18 experts, 320 x 320), variants `i2m2` and `mag`, batch 16, bfloat16 "
    "autocast, channels-last weights and inputs, cuDNN autotuning on; random inputs, the same model and "
    "step code as the CPU figures (`benchmarks.bench_models.make_steps`). Per variant: untimed warm-up "
    "steps, then repetitions of timed training steps (forward, NLL, backward, AdamW) and timed inference "
    "steps (no grad); each step synchronises the card. A figure is batch x steps / wall seconds."
)


def output_path(explicit: Path | None = None) -> Path:
    """Where the JSON goes: ``explicit``, else ``$OUT`` (a folder: ``$OUT/gpu_results.json``),
    else ``./gpu_results.json``."""
    if explicit is not None:
        return explicit
    out = os.environ.get("OUT")
    if not out:
        return Path("gpu_results.json")
    p = Path(out)
    return p / "gpu_results.json" if p.is_dir() else p


def evidence_on_gpu(log=print) -> dict[str, float]:
    """The viewer's evidence with the model on the GPU (``i2m2-med app --device cuda``) against the
    CPU: the largest absolute difference of GradCAM, occlusion (nats) and the tabular attributions
    (nats) of the bundled model on one random slice, each head and image expert."""
    import numpy as np
    import torch

    from i2m2_med.evidence import saliency, tabular_attributions
    from i2m2_med.heads import HEADS
    from i2m2_med.inference.loading import load_model

    cpu, meta = load_model(None, map_location="cpu")
    gpu, _ = load_model(None, map_location="cuda")
    g = torch.Generator().manual_seed(0)
    size = int(meta.config.image_size)
    sample = {"magnitude": torch.rand(1, size, size, generator=g), "phase": (torch.rand(1, size, size, generator=g) - 0.5) * 6,
              "tabular": torch.rand(len(meta.tabular_names), generator=g)}
    worst: dict[str, float] = {}
    for method in ("gradcam", "occlusion"):
        diffs = [float(np.abs(saliency(cpu, sample, e, h, method=method) - saliency(gpu, sample, e, h, method=method)).max())
                 for e in ("magnitude", "phase", "joint") if e in cpu.expert_names for h in HEADS]
        worst[f"evidence_gpu_vs_cpu_{method}_max_abs"] = max(diffs)
    if "tabular" in cpu.expert_names:
        a = tabular_attributions(cpu, sample["tabular"].numpy(), names=list(meta.tabular_names))
        b = tabular_attributions(gpu, sample["tabular"].numpy(), names=list(meta.tabular_names))
        worst["evidence_gpu_vs_cpu_tabular_max_abs"] = float(np.abs(a.attributions - b.attributions).max())
    log("viewer evidence on the GPU against the CPU: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    return worst


def commands_on_gpu(log=print, volumes: int = 6, slices: int = 24) -> dict[str, Any]:
    """``diagnose --device cuda`` against ``--device cpu`` on a synthetic cohort (slices/s each and
    the largest difference of the study probabilities), and ``train`` of the ``cpu`` config (one
    epoch) on the card with the wall time; the paper config's training is the timed steps above."""
    import csv
    import tempfile

    from i2m2_med.synth import generate_cohort
    from i2m2_med.training.fit import TrainerOptions, train
    from pipelines import diagnose

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_cohort(root / "cohort", volumes, 5, n_slices=slices)
        rows = {}
        for device in ("cpu", "cuda"):
            t0 = time.perf_counter()
            diagnose.run(root / "cohort" / "h5", root / device, progress=False, device=device)
            seconds = time.perf_counter() - t0
            with open(root / device / "predictions.csv", newline="") as fh:
                rows[device] = {r["study_id"]: r for r in csv.DictReader(fh)}
            out[f"diagnose_{device}_slices_per_s"] = round(volumes * slices / seconds, 1)
        diffs = [abs(float(a[k]) - float(rows["cuda"][sid][k])) for sid, a in rows["cpu"].items()
                 for k in a if k.startswith("p_") and a[k] not in ("", None)]
        out["diagnose_gpu_vs_cpu_p_max_abs"] = max(diffs) if diffs else None
        t0 = time.perf_counter()
        result = train(root / "cohort", root / "run", variant="i2m2", config="cpu", epochs=1, n_boot=20,
                       options=TrainerOptions(accelerator="gpu", progress=False))
        out["train_cpu_config_one_epoch_gpu_s"] = round(time.perf_counter() - t0, 1)
        out["train_cpu_config_accelerator"] = result.metrics["training"]["accelerator"] if result else None
    log("commands on the GPU: " + ", ".join(f"{k} {v}" for k, v in out.items()))
    return out


def measure(variants: tuple[str, ...] = VARIANTS, batch: int = BATCH, steps: int = STEPS, repeats: int = REPEATS,
            warmup: int = WARMUP, log=print) -> dict[str, Any]:
    """The section entry (see the module docstring); needs CUDA."""
    import torch

    from benchmarks.bench_models import make_batch, make_steps
    from benchmarks.common import machine_info, software_versions, summarise
    from i2m2_med.config import load_config
    from i2m2_med.models.experts import image_expert_flops

    torch.backends.cudnn.benchmark = True
    config = load_config("paper")
    size = config.image_size
    card = torch.cuda.get_device_name()
    log(f"card: {card}")
    started = time.perf_counter()
    measured_at = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    inputs, labels = make_batch(size, batch, N_TABULAR, "cuda", channels_last=True)
    figures: list[dict[str, Any]] = []
    params: dict[str, Any] = {}
    rates: dict[str, list[float]] = {}
    for variant in variants:
        torch.cuda.reset_peak_memory_stats()
        model, train_step, infer_step = make_steps(
            variant, config, inputs, labels, N_TABULAR, "cuda", bf16=True, channels_last=True
        )
        for _ in range(warmup):
            train_step()
        for _ in range(warmup):
            infer_step()
        train, infer = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(steps):
                train_step()
            train.append(batch * steps / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            for _ in range(steps):
                infer_step()
            infer.append(batch * steps / (time.perf_counter() - t0))
        log(f"{variant}: training {statistics.median(train):.1f} samples/s, inference {statistics.median(infer):.1f} slices/s")
        rates[variant] = train
        what = f"paper config (320 x 320), {variant}, batch {batch}, bf16"
        figures += [
            {"key": f"paper_{variant}_train", "label": f"training, {what}", "unit": "samples/s", "values": train},
            {"key": f"paper_{variant}_infer", "label": f"inference, {what}", "unit": "slices/s", "values": infer},
        ]
        params[f"parameters_{variant}"] = sum(p.numel() for p in model.parameters())
        params[f"peak_gpu_memory_gib_{variant}"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        del model, train_step, infer_step
        torch.cuda.empty_cache()
    ratios = []
    if "i2m2" in rates and "mag" in rates:
        ratios.append({"key": "paper_i2m2_vs_mag_train", "label": "training samples/s, i2m2 / mag",
                       "values": [a / b for a, b in zip(rates["i2m2"], rates["mag"])], "target": None})
    for item in figures + ratios:
        item["stats"] = summarise(item["values"])
    params.update(evidence_on_gpu(log))
    params.update(commands_on_gpu(log))
    machine = machine_info()
    machine["gpu"] = card
    return {
        "title": TITLE,
        "measured_at": measured_at,
        "quick": False,
        "repeats": repeats,
        "machine": machine,
        "software": {**software_versions(("torch",)), "cuda": torch.version.cuda or "?", "cudnn": str(torch.backends.cudnn.version())},
        "description": DESCRIPTION,
        "params": {
            "card": card,
            "config": "paper",
            "image_size": size,
            "batch": batch,
            "warmup_steps": warmup,
            "timed_steps_per_repetition": steps,
            "precision": "bf16 autocast",
            "memory_format": "channels_last",
            "image_expert_forward_gflops_per_slice": round(image_expert_flops(config.model.image_expert, size) / 1e9, 4),
            **params,
        },
        "figures": figures,
        "ratios": ratios,
        "notes": [f"Card: {card}; the CPU columns of the line above describe the host."],
        "seconds": round(time.perf_counter() - started, 2),
    }


def merge(entry_path: Path, json_path: Path, md_path: Path) -> None:
    """Store the entry in ``entry_path`` as section ``gpu`` of ``json_path``; regenerate ``md_path``."""
    from benchmarks.common import summarise
    from benchmarks.run import SCHEMA, load_results, render_markdown
    from i2m2_med.atomic import write_json, write_text

    entry = json.loads(entry_path.read_text(encoding="utf-8"))
    if not isinstance(entry, dict) or not isinstance(entry.get("figures"), list):
        raise SystemExit(f"{entry_path}: not a GPU section entry (no figures list)")
    for item in entry["figures"] + entry.get("ratios", []):
        item["stats"] = summarise(item["values"])
    results = load_results(json_path)
    results["schema"] = SCHEMA
    results["sections"][SECTION] = entry
    write_json(json_path, results)
    write_text(md_path, render_markdown(results))


def main(argv: list[str] | None = None) -> int:
    from benchmarks.run import DEFAULT_JSON, DEFAULT_MD

    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_section", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default: $OUT/gpu_results.json or ./gpu_results.json)")
    parser.add_argument("--merge", type=Path, default=None, metavar="GPU_JSON", help="merge a written GPU JSON into the results instead of measuring")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results JSON to merge into (default benchmarks/results.json)")
    parser.add_argument("--out", type=Path, default=DEFAULT_MD, help="markdown to regenerate (default BENCHMARKS.md)")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--batch-size", type=int, default=BATCH)
    args = parser.parse_args(argv)
    if args.merge is not None:
        merge(args.merge, args.json, args.out)
        print(f"merged {args.merge} as section {SECTION!r} into {args.json} and {args.out}")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu_section: CUDA is not available on this machine (torch.cuda.is_available() is False); run it where there is an NVIDIA GPU", file=sys.stderr)
        return 2
    entry = measure(batch=args.batch_size, steps=args.steps, repeats=args.repeats)
    from i2m2_med.atomic import write_json

    path = output_path(args.output)
    write_json(path, entry)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
