"""What every benchmark section shares: the context it runs in, timing, statistics, machine info.

A section is a module ``benchmarks/bench_<name>.py`` registered in :data:`benchmarks.run.SECTIONS`
with

* ``TITLE``: one line;
* ``run(ctx: Context) -> dict``: the section's raw results::

      {
        "description": "markdown paragraph: what is measured and how",
        "params": {...},                       # sizes, repeats, anything needed to reproduce
        "figures": [{"key", "label", "unit", "values": [per repeat]}, ...],
        "ratios":  [{"key", "label", "values": [per repeat], "target": float | None}, ...],
        "notes": ["markdown line", ...],
      }

The runner adds median, quartiles, min and max to every figure and ratio, the machine and the
software versions, and writes BENCHMARKS.md and results.json.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator


@dataclass
class Context:
    """How a section should run: ``quick`` (tiny inputs, for the test suite), ``repeats``
    (timed repetitions of every figure), ``workdir`` (scratch folder, removed afterwards),
    ``seed`` for every random input."""

    quick: bool
    repeats: int
    workdir: Path
    seed: int = 0
    log: Callable[[str], None] = field(default=lambda message: None)


def summarise(values: list[float]) -> dict[str, Any]:
    """median, quartiles (inclusive method), min, max and n of ``values``."""
    vals = sorted(float(v) for v in values)
    if not vals:
        return {"n": 0}
    if len(vals) >= 2:
        q1, _, q3 = statistics.quantiles(vals, n=4, method="inclusive")
    else:
        q1 = q3 = vals[0]
    return {
        "median": statistics.median(vals),
        "q1": q1,
        "q3": q3,
        "min": vals[0],
        "max": vals[-1],
        "n": len(vals),
    }


def timed_wall_cpu(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process, all threads) of one call of ``fn``."""
    gc.collect()
    gc.disable()
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - wall, time.process_time() - cpu
    finally:
        gc.enable()


def interleaved(
    methods: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and CPU seconds per call of each method, ``repeats`` times, the methods taking
    turns within each repetition (so that a change of machine load hits all of them alike);
    ``warmup`` untimed rounds first. Returns ``(wall, cpu)``, each name -> list."""
    for _ in range(warmup):
        for fn in methods.values():
            fn()
    wall: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            w, c = timed_wall_cpu(fn)
            wall[name].append(w)
            cpu[name].append(c)
    return wall, cpu


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores usable by this process, memory, OS, Python, load average now."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count()
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": _cpu_model(),
        "cores": cores,
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "load_average_1_5_15min": load,
    }


def software_versions(names: tuple[str, ...] = ("numpy", "scipy", "torch", "monai", "fastmri", "h5py", "pandas")) -> dict[str, str]:
    """Installed versions of the libraries the figures depend on."""
    from importlib import metadata

    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@contextlib.contextmanager
def app_server(env: dict[str, str], log_path: Path, timeout_s: float = 180.0) -> Iterator[str]:
    """``streamlit run app/main.py`` from the repository on a free local port with ``env``, its
    output in ``log_path``; yields the URL once its health check answers, and stops it after
    (RuntimeError, with the log's end, when it exits or does not answer in ``timeout_s``). The
    viewer's browser test and the speed section share it."""
    import socket
    import subprocess
    import urllib.request

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    repo = Path(__file__).resolve().parents[1]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.headless", "true",
                                 "--server.port", str(port)], cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://localhost:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"streamlit exited with {proc.returncode}: {Path(log_path).read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("streamlit did not start in time")
                time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
