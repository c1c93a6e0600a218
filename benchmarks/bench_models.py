"""Model speed: training samples/s (forward + backward + AdamW step) and inference slices/s per
variant, plus analytic forward FLOPs per slice, for a config (default: cpu).

    python benchmarks/bench_models.py --config cpu --threads 2 --variants i2m2 mag

Prints one JSON object. Timings are the median (and best) of ``--steps`` timed steps after two
warm-up steps, on random inputs of the config's image size; ``*_per_cpu_s`` divide by the
process's CPU time instead of wall time (robust to other jobs sharing the cores).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from i2m2_med.config import load_config
from i2m2_med.models import VARIANTS, build_model, nll, per_expert_param_groups
from i2m2_med.models.experts import image_expert_flops


def _time(fn, steps: int) -> tuple[list[float], float]:
    """Wall seconds of each step, and the process CPU seconds of all steps together."""
    fn()
    fn()
    out = []
    cpu_start = time.process_time()
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out, time.process_time() - cpu_start


def bench(config_name: str, variants: list[str], batch_size: int, steps: int, n_tabular: int, device: str) -> dict:
    config = load_config(config_name)
    size = config.image_size
    g = torch.Generator().manual_seed(0)
    batch = {
        "magnitude": torch.rand(batch_size, 1, size, size, generator=g).to(device),
        "phase": ((torch.rand(batch_size, 1, size, size, generator=g) * 2 - 1) * torch.pi).to(device),
        "tabular": torch.randn(batch_size, n_tabular, generator=g).to(device),
    }
    labels = (torch.rand(batch_size, 4, generator=g) > 0.5).float().to(device)
    results = {}
    for variant in variants:
        torch.manual_seed(0)
        model = build_model(variant, config, n_tabular).to(device)
        opt = torch.optim.AdamW(per_expert_param_groups(model, config), betas=tuple(config.optim.betas))

        def train_step() -> None:
            loss = nll(model(batch).combined, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if device != "cpu":
                torch.cuda.synchronize()

        def infer_step() -> None:
            with torch.no_grad():
                model(batch)
            if device != "cpu":
                torch.cuda.synchronize()

        model.train()
        train, train_cpu = _time(train_step, steps)
        model.eval()
        infer, infer_cpu = _time(infer_step, steps)
        results[variant] = {
            "train_samples_per_s_median": round(batch_size / statistics.median(train), 1),
            "train_samples_per_s_best": round(batch_size / min(train), 1),
            "infer_slices_per_s_median": round(batch_size / statistics.median(infer), 1),
            "infer_slices_per_s_best": round(batch_size / min(infer), 1),
            # contention-robust: samples per second of this process's CPU time (all threads)
            "train_samples_per_cpu_s": round(batch_size * steps / train_cpu, 1),
            "infer_slices_per_cpu_s": round(batch_size * steps / infer_cpu, 1),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
    flops = image_expert_flops(config.model.image_expert, size)
    return {
        "config": config_name,
        "image_size": size,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "image_expert_forward_gflops_per_slice": round(flops / 1e9, 4),
        "variants": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--variants", nargs="+", default=["i2m2"], choices=list(VARIANTS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-tabular", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(bench(args.config, args.variants, args.batch_size, args.steps, args.n_tabular, args.device), indent=2))


if __name__ == "__main__":
    main()
