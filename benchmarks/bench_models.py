"""Model speed: training samples/s (forward + backward + AdamW step) and inference slices/s per
variant, plus analytic forward FLOPs per slice, for the cpu and paper configs on CPU.

As a section of ``python -m benchmarks.run``: torch runs on 2 threads; the cases are

* config ``cpu`` (64 x 64), variants ``i2m2`` and ``mag``, batch 32, 10 steps per repetition;
* config ``paper`` (320 x 320), variant ``mag`` only, batch 2, 3 steps per repetition (2 when the
  warm-up training step takes more than 20 s): the four-expert ``i2m2`` of the paper config is
  GPU work (see ``benchmarks/gpu_section.py``).

Inputs are random tensors of the config's image size (magnitude, phase, 6 tabular features) and
random labels. Every model is warmed up first (two training and two inference steps; one of each
for the paper config); each repetition then times its training steps and its inference steps
(``torch.no_grad``, eval mode) for every case in turn. A figure is the batch size times the steps
divided by the wall time of those steps; the per-CPU-second figures divide by the process's CPU
time (all threads) instead, which stays meaningful when other jobs share the cores.

Standalone, one config at a time, printing one JSON object::

    python benchmarks/bench_models.py --config cpu --threads 2 --variants i2m2 mag
    python benchmarks/bench_models.py --config paper --device cuda --batch-size 16 --bf16 --channels-last
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any, Callable

import torch

from i2m2_med.config import Config, load_config
from i2m2_med.models import VARIANTS, build_model, nll, per_expert_param_groups
from i2m2_med.models.experts import image_expert_flops

TITLE = "Models: training samples/s and inference slices/s, cpu and paper configs on CPU"

#: torch threads of the section (the quick run uses 1: see :func:`run`).
THREADS = 2
N_TABULAR = 6
#: A paper-config training step slower than this (seconds, at warm-up) gets 2 timed steps, not 3.
SLOW_STEP_S = 20.0


def _time(fn: Callable[[], None], steps: int, warmup: int = 2) -> tuple[list[float], float]:
    """Wall seconds of each step, and the process CPU seconds of all steps together."""
    for _ in range(warmup):
        fn()
    out = []
    cpu_start = time.process_time()
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out, time.process_time() - cpu_start


def make_batch(
    image_size: int, batch_size: int, n_tabular: int, device: str = "cpu", channels_last: bool = False
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Random inputs (magnitude in [0, 1), phase in [-pi, pi), standard normal tabular) and
    random 0/1 labels for 4 heads, seeded."""
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    batch = {
        "magnitude": torch.rand(batch_size, 1, image_size, image_size, generator=g).to(device, memory_format=fmt),
        "phase": ((torch.rand(batch_size, 1, image_size, image_size, generator=g) * 2 - 1) * torch.pi).to(
            device, memory_format=fmt
        ),
        "tabular": torch.randn(batch_size, n_tabular, generator=g).to(device),
    }
    labels = (torch.rand(batch_size, 4, generator=g) > 0.5).float().to(device)
    return batch, labels


def make_steps(
    variant: str,
    config: Config,
    batch: dict[str, torch.Tensor],
    labels: torch.Tensor,
    n_tabular: int,
    device: str = "cpu",
    *,
    bf16: bool = False,
    channels_last: bool = False,
) -> tuple[torch.nn.Module, Callable[[], None], Callable[[], None]]:
    """A seeded model of ``variant`` with its AdamW (per-expert groups), and two callables: one
    training step (forward, NLL, backward, optimiser step) and one inference step (no grad).
    ``bf16``: forward and loss under ``torch.autocast(dtype=bfloat16)``; ``channels_last``:
    the model's weights in the channels-last memory format (pass a channels-last batch too).
    Each step synchronises the device before it returns, so wall time covers the GPU work."""
    torch.manual_seed(0)
    model = build_model(variant, config, n_tabular).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(per_expert_param_groups(model, config), betas=tuple(config.optim.betas))
    device_type = torch.device(device).type

    def sync() -> None:
        if device_type == "cuda":
            torch.cuda.synchronize()

    def forward():
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=bf16):
            return model(batch)

    def train_step() -> None:
        model.train()
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=bf16):
            loss = nll(model(batch).combined, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync()

    def infer_step() -> None:
        model.eval()
        with torch.no_grad():
            forward()
        sync()

    return model, train_step, infer_step


def bench(
    config_name: str | Config,
    variants: list[str],
    batch_size: int,
    steps: int,
    n_tabular: int,
    device: str,
    *,
    bf16: bool = False,
    channels_last: bool = False,
    warmup: int = 2,
) -> dict[str, Any]:
    """Median and best training samples/s and inference slices/s of each variant over ``steps``
    timed steps after ``warmup`` untimed ones, the per-CPU-second rates, parameter counts and the
    image expert's analytic forward GFLOPs per slice. ``config_name``: a shipped config's name, a
    YAML path or a :class:`Config`."""
    config = config_name if isinstance(config_name, Config) else load_config(config_name)
    size = config.image_size
    batch, labels = make_batch(size, batch_size, n_tabular, device, channels_last)
    results = {}
    for variant in variants:
        model, train_step, infer_step = make_steps(
            variant, config, batch, labels, n_tabular, device, bf16=bf16, channels_last=channels_last
        )
        train, train_cpu = _time(train_step, steps, warmup)
        infer, infer_cpu = _time(infer_step, steps, warmup)
        results[variant] = {
            "train_samples_per_s_median": round(batch_size / statistics.median(train), 1),
            "train_samples_per_s_best": round(batch_size / min(train), 1),
            "infer_slices_per_s_median": round(batch_size / statistics.median(infer), 1),
            "infer_slices_per_s_best": round(batch_size / min(infer), 1),
            # contention-robust: samples per second of this process's CPU time (all threads)
            "train_samples_per_cpu_s": round(batch_size * steps / train_cpu, 1),
            "infer_slices_per_cpu_s": round(batch_size * steps / infer_cpu, 1),
            "train_step_seconds": [round(t, 5) for t in train],
            "infer_step_seconds": [round(t, 5) for t in infer],
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        del model, train_step, infer_step
    flops = image_expert_flops(config.model.image_expert, size)
    return {
        "config": config.name if isinstance(config_name, Config) else config_name,
        "image_size": size,
        "batch_size": batch_size,
        "steps": steps,
        "warmup": warmup,
        "bf16_autocast": bf16,
        "channels_last": channels_last,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.device(device).type == "cuda" else device,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "image_expert_forward_gflops_per_slice": round(flops / 1e9, 4),
        "variants": results,
    }


# ---- the runner section ---------------------------------------------------------------------


def _cases(quick: bool) -> list[dict[str, Any]]:
    """What the section measures: config, variant, batch, timed steps per repetition, warm-up."""
    cpu = load_config("cpu")
    paper = load_config("paper")
    if quick:  # the paper structure at 32 x 32 (pool 4 x 4 fits the 4 x 4 last feature map)
        paper = paper.with_updates(**{"image_size": 32, "model.image_expert.pool_size": 4})
        return [
            {"config": cpu, "variant": "i2m2", "batch": 4, "steps": 1, "warmup": 1},
            {"config": cpu, "variant": "mag", "batch": 4, "steps": 1, "warmup": 1},
            {"config": paper, "variant": "mag", "batch": 2, "steps": 1, "warmup": 1},
        ]
    return [
        {"config": cpu, "variant": "i2m2", "batch": 32, "steps": 10, "warmup": 2},
        {"config": cpu, "variant": "mag", "batch": 32, "steps": 10, "warmup": 2},
        {"config": paper, "variant": "mag", "batch": 2, "steps": 3, "warmup": 1},
    ]


def run(ctx) -> dict[str, Any]:
    """The runner section (``ctx``: :class:`benchmarks.common.Context`). Runs torch on
    :data:`THREADS` threads, 1 in a quick run (tiny steps on 2 threads slow down many times over
    when other work holds the cores: every parallel region waits for a descheduled thread), and
    gives the process its thread count back."""
    previous_threads = torch.get_num_threads()
    threads = 1 if ctx.quick else THREADS
    torch.set_num_threads(threads)
    try:
        return _run(ctx, threads)
    finally:
        torch.set_num_threads(previous_threads)


def _run(ctx, threads: int) -> dict[str, Any]:
    from benchmarks.common import timed_wall_cpu

    cases = _cases(ctx.quick)
    warmup_train_s: dict[str, float] = {}
    for case in cases:
        cfg: Config = case["config"]
        case["name"] = f"{cfg.name}_{case['variant']}"
        batch, labels = make_batch(cfg.image_size, case["batch"], N_TABULAR)
        ctx.log(f"build and warm up {case['name']} ({cfg.image_size} x {cfg.image_size}, batch {case['batch']})")
        model, train_step, infer_step = make_steps(case["variant"], cfg, batch, labels, N_TABULAR)
        case.update(model=model, train=train_step, infer=infer_step)
        start = time.perf_counter()
        for _ in range(case["warmup"]):
            train_step()
        warmup_train_s[case["name"]] = (time.perf_counter() - start) / case["warmup"]
        for _ in range(case["warmup"]):
            infer_step()
        if cfg.name == "paper" and not ctx.quick and warmup_train_s[case["name"]] > SLOW_STEP_S:
            case["steps"] = 2
    for case in cases:
        case.update(train_wall=[], train_cpu=[], infer_wall=[], infer_cpu=[])
    for r in range(ctx.repeats):
        for case in cases:
            ctx.log(f"repeat {r + 1}/{ctx.repeats}: {case['name']} ({case['steps']} steps)")
            steps = case["steps"]

            def train(fn=case["train"], steps=steps) -> None:
                for _ in range(steps):
                    fn()

            def infer(fn=case["infer"], steps=steps) -> None:
                for _ in range(steps):
                    fn()

            w, c = timed_wall_cpu(train)
            case["train_wall"].append(w)
            case["train_cpu"].append(c)
            w, c = timed_wall_cpu(infer)
            case["infer_wall"].append(w)
            case["infer_cpu"].append(c)

    figures: list[dict[str, Any]] = []
    for case in cases:
        n = case["batch"] * case["steps"]
        size = case["config"].image_size
        what = f"{case['config'].name} config ({size} x {size}), {case['variant']}, batch {case['batch']}"
        figures += [
            {"key": f"{case['name']}_train", "label": f"training, {what}", "unit": "samples/s",
             "values": [n / t for t in case["train_wall"]]},
            {"key": f"{case['name']}_train_cpu", "label": f"training, {what}", "unit": "samples/CPU-s",
             "values": [n / t for t in case["train_cpu"]]},
            {"key": f"{case['name']}_infer", "label": f"inference, {what}", "unit": "slices/s",
             "values": [n / t for t in case["infer_wall"]]},
            {"key": f"{case['name']}_infer_cpu", "label": f"inference, {what}", "unit": "slices/CPU-s",
             "values": [n / t for t in case["infer_cpu"]]},
        ]
    by_name = {c["name"]: c for c in cases}
    i2m2, mag = by_name["cpu_i2m2"], by_name["cpu_mag"]
    ratios = [
        {"key": "cpu_i2m2_vs_mag_train",
         "label": "cpu config: training samples/s, i2m2 / mag (cost of the four-expert product over one expert)",
         "values": [(i2m2["batch"] * i2m2["steps"] / a) / (mag["batch"] * mag["steps"] / b)
                    for a, b in zip(i2m2["train_wall"], mag["train_wall"])],
         "target": None},
        {"key": "cpu_i2m2_vs_mag_infer",
         "label": "cpu config: inference slices/s, i2m2 / mag",
         "values": [(i2m2["batch"] * i2m2["steps"] / a) / (mag["batch"] * mag["steps"] / b)
                    for a, b in zip(i2m2["infer_wall"], mag["infer_wall"])],
         "target": None},
    ]
    configs = {c["config"].name: c["config"] for c in cases}
    params = {
        "torch_threads": threads,
        "cases": [
            {"config": c["config"].name, "image_size": c["config"].image_size, "variant": c["variant"],
             "batch": c["batch"], "timed_steps_per_repetition": c["steps"], "warmup_steps": c["warmup"]}
            for c in cases
        ],
        "n_tabular": N_TABULAR,
        "image_expert_forward_gflops_per_slice": {
            name: round(image_expert_flops(cfg.model.image_expert, cfg.image_size) / 1e9, 4) for name, cfg in configs.items()
        },
        "parameters": {c["name"]: sum(p.numel() for p in c["model"].parameters()) for c in cases},
        "warmup_train_step_seconds": {k: round(v, 3) for k, v in warmup_train_s.items()},
    }
    notes = [
        "The paper config is measured on CPU with the single-expert variant `mag` at batch 2 only: its "
        "four-expert `i2m2` (three PreActResNet-18 at 320 x 320) is GPU work; the GPU figures come from "
        "`benchmarks/gpu_section.py`, merged into the results as the `gpu` section.",
        "Figures are per repetition: batch x timed steps / seconds of those steps (wall, or process CPU "
        "time of all threads for the per-CPU-second figures).",
        "On 2 threads the rates depend on the cores being free: when another process holds them, every "
        "parallel region of torch waits for a descheduled thread, and the threads spin while they wait, "
        "so wall and CPU-time rates both drop (by an order of magnitude on the small cpu-config steps). "
        "Compare the load average recorded above.",
    ]
    if ctx.quick:
        notes.insert(0, "Quick run: 1 torch thread, and the paper config is built at 32 x 32 (pool 4 x 4), not 320 x 320.")
    for case in cases:
        del case["model"], case["train"], case["infer"]
    return {
        "description": (__doc__ or "").split("\n\n", 1)[1].split("\n\nStandalone")[0].strip(),
        "params": params,
        "figures": figures,
        "ratios": ratios,
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--variants", nargs="+", default=["i2m2"], choices=list(VARIANTS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-tabular", type=int, default=N_TABULAR)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for forward and loss")
    parser.add_argument("--channels-last", action="store_true", help="channels-last weights and inputs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = bench(args.config, args.variants, args.batch_size, args.steps, args.n_tabular, args.device,
                   bf16=args.bf16, channels_last=args.channels_last, warmup=args.warmup)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
