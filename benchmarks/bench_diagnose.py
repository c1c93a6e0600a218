"""Batch diagnosis end to end: slices/s and peak memory of ``i2m2-med diagnose`` on a folder of
fastMRI-shaped studies, 10 versus 100 studies.

Inputs: singlecoil volumes of 35 slices of (640, 368/372) complex64 k-space in the fastMRI
layout (written here, as in the transforms section); the 100-study folder holds the same unique
volumes under more names (hard links, so the page cache and the disk hold each volume once; every
name is a study of its own to the pipeline). Model: the cpu config (variant ``i2m2``, untrained
weights: speed does not depend on the values), the embedded default.

Each run is a fresh Python process (``python -m benchmarks.bench_diagnose --child``) that imports
the libraries, then times ``pipelines.diagnose.run`` -- discovery, model load, h5 partial reads,
k-space -> magnitude / phase, resize, the four experts and the product, aggregation, the JSON of
every study and predictions.csv -- and reports its own peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, and ``VmHWM`` from ``/proc/self/status``). The
end-to-end rate is slices / (time of ``run``); the interpreter start and the imports are reported
apart. The marginal rate (extra slices / extra seconds between the two folder sizes) removes what
every run pays once (model load, discovery, first calls). ``--workers`` loading threads and torch
threads are recorded in the parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Context

TITLE = "Batch diagnosis: end-to-end slices/s and peak memory, 10 vs 100 studies"

REPO = Path(__file__).resolve().parents[1]
FULL = {"unique": 5, "slices": 35, "small": 10, "large": 100}
QUICK = {"unique": 2, "slices": 2, "small": 2, "large": 6}
WIDTHS = (368, 372)


def _write_inputs(folder: Path, unique: int, slices: int, n_studies: int, seed: int) -> Path:
    """``n_studies`` study files in ``folder``: ``unique`` written volumes, the rest hard links."""
    from benchmarks.bench_transforms import write_volume

    src = folder.parent / "unique"
    src.mkdir(parents=True, exist_ok=True)
    volumes = []
    for i in range(unique):
        path = src / f"file{9100000 + i}.h5"
        if not path.exists():
            write_volume(path, slices, WIDTHS[i % len(WIDTHS)], seed=seed + i)
        volumes.append(path)
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(n_studies):
        link = folder / f"file{9200000 + n}.h5"
        if not link.exists():
            try:
                os.link(volumes[n % unique], link)
            except OSError:
                link.write_bytes(volumes[n % unique].read_bytes())
    return folder


def _checkpoint(path: Path) -> Path:
    """An i2m2 cpu-config checkpoint (seeded, untrained) with the standard tabular features."""
    import torch

    from i2m2_med.checkpoint import save_checkpoint
    from i2m2_med.config import load_config
    from i2m2_med.data.tabular import feature_names
    from i2m2_med.models import build_model

    if path.exists():
        return path
    config = load_config("cpu")
    names = feature_names()
    torch.manual_seed(0)
    model = build_model("i2m2", config, len(names))
    save_checkpoint(path, model, config, "i2m2", len(names), names, {}, "benchmark")
    return path


def _peak_rss_mib() -> dict[str, float]:
    out = {"ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["vmhwm_mib"] = int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return out


def child(input_dir: str, out_dir: str, model: str, workers: int, threads: int) -> dict[str, Any]:
    """One measured run inside this process (called in a fresh interpreter)."""
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(threads)
    import i2m2_med.inference.streaming as inference  # library imports (MONAI, pydicom...), timed apart
    from pipelines import diagnose

    inference.modality_pipeline(64)  # builds the MONAI transforms: imports MONAI's dictionary transforms

    imports = time.perf_counter() - t0
    rss_before = _peak_rss_mib()
    start = time.perf_counter()
    rc = diagnose.run(input_dir, out_dir, model=model, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    import csv

    with open(Path(out_dir) / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {
        "rc": rc,
        "seconds": seconds,
        "imports_seconds": imports,
        "studies": len(rows),
        "ok": sum(r["status"] == "ok" for r in rows),
        "slices": sum(int(r["n_slices"] or 0) for r in rows if r["status"] == "ok"),
        "rss_after_imports_mib": rss_before.get("vmhwm_mib", rss_before["ru_maxrss_mib"]),
        **_peak_rss_mib(),
    }


def _measure(input_dir: Path, out_dir: Path, model: Path, workers: int, threads: int) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "benchmarks.bench_diagnose", "--child", str(input_dir), str(out_dir), str(model),
           str(workers), str(threads)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["rc"] != 0 or result["ok"] != result["studies"]:
        raise RuntimeError(f"diagnose did not succeed on every study: {result}")
    return result


def run(ctx: Context, workers: int = 2, threads: int | None = None) -> dict[str, Any]:
    import shutil

    size = QUICK if ctx.quick else FULL
    threads = int(threads or max(1, len(os.sched_getaffinity(0))))
    base = ctx.workdir / "diagnose"
    small = _write_inputs(base / "small", size["unique"], size["slices"], size["small"], ctx.seed)
    large = _write_inputs(base / "large", size["unique"], size["slices"], size["large"], ctx.seed)
    model = _checkpoint(base / "model.safetensors")
    runs: dict[str, list[dict[str, Any]]] = {"small": [], "large": []}
    for r in range(ctx.repeats):
        for name, folder in (("small", small), ("large", large)):
            out = base / f"out_{name}"
            shutil.rmtree(out, ignore_errors=True)
            ctx.log(f"repeat {r + 1}/{ctx.repeats}: {name} ({size[name]} studies)")
            runs[name].append(_measure(folder, out, model, workers, threads))
            shutil.rmtree(out, ignore_errors=True)
    n_small, n_large = size["small"], size["large"]

    def peak(x: dict[str, Any]) -> float:
        return x.get("vmhwm_mib", x["ru_maxrss_mib"])

    figures = [
        {"key": f"slices_per_s_{n}", "label": f"end to end, {size[n]} studies ({size[n] * size['slices']} slices)",
         "unit": "slices/s", "values": [x["slices"] / x["seconds"] for x in runs[n]]}
        for n in ("small", "large")
    ]
    figures.append({
        "key": "slices_per_s_marginal",
        "label": f"marginal rate: extra slices / extra seconds from {n_small} to {n_large} studies (fixed costs cancel)",
        "unit": "slices/s",
        "values": [(b["slices"] - a["slices"]) / max(b["seconds"] - a["seconds"], 1e-9) for a, b in zip(runs["small"], runs["large"])],
    })
    figures += [
        {"key": f"peak_rss_{n}", "label": f"peak RSS, {size[n]} studies", "unit": "MiB", "values": [peak(x) for x in runs[n]]}
        for n in ("small", "large")
    ]
    figures += [
        {"key": "rss_after_imports", "label": "RSS after the imports, before the run", "unit": "MiB",
         "values": [x["rss_after_imports_mib"] for n in ("small", "large") for x in runs[n]]},
        {"key": "imports_seconds", "label": "interpreter imports before the run (not in the rates)", "unit": "s",
         "values": [x["imports_seconds"] for n in ("small", "large") for x in runs[n]]},
    ]
    ratios = [
        {"key": "rss_small_vs_large",
         "label": f"peak RSS {n_small} studies / {n_large} studies (>= 1/1.2: {n_large} studies within 1.2x)",
         "values": [peak(a) / peak(b) for a, b in zip(runs["small"], runs["large"])], "target": round(1 / 1.2, 3)},
        {"key": "rate_large_vs_target", "label": f"slices/s ({n_large} studies) / 50 slices/s target",
         "values": [x["slices"] / x["seconds"] / 50.0 for x in runs["large"]], "target": 1.0},
    ]
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "description": (__doc__ or "").split("\n\n", 1)[1].strip(),
        "params": {
            "unique_volumes": size["unique"],
            "slices_per_volume": size["slices"],
            "studies": [n_small, n_large],
            "widths": list(WIDTHS),
            "config": "cpu",
            "variant": "i2m2",
            "loading_threads (--workers)": workers,
            "torch_threads": threads,
        },
        "figures": figures,
        "ratios": ratios,
        "notes": [
            "The CPU is shared with other work while this runs; the load average at the start and end of the "
            f"section is recorded above (at the end of the timed runs: {load}).",
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=5, metavar=("INPUT", "OUT", "MODEL", "WORKERS", "THREADS"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="tiny inputs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="loading threads of diagnose")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores of this process)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.child:
        input_dir, out_dir, model, workers, threads = args.child
        print(json.dumps(child(input_dir, out_dir, model, int(workers), int(threads))))
        return 0
    import tempfile

    from benchmarks.common import summarise

    with tempfile.TemporaryDirectory(prefix="bench-diagnose-") as tmp:
        ctx = Context(quick=args.quick, repeats=args.repeats, workdir=args.workdir or Path(tmp),
                      log=lambda m: print(m, file=sys.stderr))
        result = run(ctx, workers=args.workers, threads=args.threads)
    for group in ("figures", "ratios"):
        for item in result[group]:
            item["stats"] = summarise(item["values"])
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
