"""`i2m2-med ablate --data DIR --out REPORT_DIR`: the clinical ablation report.

Trains (or reuses cached runs of) every variant over the seeds, evaluates them on the test split
and writes ``REPORT_DIR/report.html`` (self-contained: opens offline), ``results.json`` and
``tables/*.csv`` (see :func:`i2m2_med.ablation.run_ablation`). Progress lines go to stderr; the
last lines of stdout say where the files are and summarise the headline numbers.

Scale-out: ``--shard I/N`` trains only shard I's share of the runs into the cache (for a cluster
scheduler: N jobs sharing one ``--cache`` folder) and writes no report; the same command without
``--shard`` is the merge. ``--jobs J`` does both on one machine: J shard processes at once (each
with its share of the cores), then the merge in this process.

Exit codes: 0 the report was written (variants that failed to train, empty splits or heads
without positives are shown in it with their reasons); 1 nothing could be done (no such
folder, no labelled study, an unreadable config, bad options); 130 interrupted (cached runs are
kept: rerun the same command to continue).
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from i2m2_med.ablation import default_settings, run_ablation
from i2m2_med.atomic import write_text
from i2m2_med.errors import UsageError
from .report.ablation import render_report


def command_line(argv: Sequence[str] | None = None) -> str:
    """The exact command that is running, for the model card."""
    args = list(sys.argv if argv is None else argv)
    if args:
        prog = Path(args[0]).name
        if prog in ("cli.py", "__main__.py") or prog.startswith("python"):
            prog = "i2m2-med"
        args = [prog, *args[1:]]
    return " ".join(shlex.quote(a) for a in args)


def write_report(results: Mapping[str, Any], out: Path) -> Path:
    """Render ``results`` into ``out/report.html`` (atomically); returns the path."""
    path = Path(out) / "report.html"
    write_text(path, render_report(results))
    return path


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{float(v):.3f}"


def print_summary(results: Mapping[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="Test AUROC, mean ACL/MTEAR/CART (seed ensemble; seeds mean +- sd)")
    for col in ("variant", "status", "slice", "seeds (slice)", "study", "I2M2 - variant (slice)", "p"):
        table.add_column(col, justify="left" if col in ("variant", "status") else "right")
    comps = results.get("comparisons") or {}
    for v, e in (results.get("variants") or {}).items():
        tbl = e.get("table") or {}
        sl = ((tbl.get("slice") or {}).get("mean_pathologies") or {}) if isinstance(tbl, Mapping) else {}
        st = ((tbl.get("study") or {}).get("mean_pathologies") or {}) if isinstance(tbl, Mapping) else {}
        seeds = (((e.get("seed_summary") or {}).get("slice") or {}).get("mean_pathologies") or {})
        c = (((comps.get(v) or {}).get("slice") or {}).get("mean_pathologies") or {}) if isinstance(comps.get(v), Mapping) else {}
        spread = "-" if seeds.get("mean") is None else (f"{seeds['mean']:.3f}" + (f" +- {seeds['sd']:.3f}" if seeds.get("sd") is not None else ""))
        table.add_row(v, str(e.get("status")), _fmt(sl.get("auroc")), spread, _fmt(st.get("auroc")),
                      "-" if c.get("diff") is None else f"{c['diff']:+.3f}", "-" if c.get("p") is None else f"{c['p']:.3f}")
    console.print(table)
    for v, e in (results.get("variants") or {}).items():
        if e.get("status") == "failed":
            console.print(f"[red]{v}[/red]: {e.get('reason')}")
    study = results.get("regime_study") or {}
    targets = (study.get("targets") or {}).get("slice") if isinstance(study, Mapping) else None
    if targets:
        for regime, t in (targets.get("per_regime") or {}).items():
            if t.get("met") is None:
                console.print(f"regime {regime}: {t.get('reason')}")
            else:
                console.print(f"regime {regime}: i2m2 {_fmt(t.get('i2m2'))}, intra {_fmt(t.get('intra'))}, inter {_fmt(t.get('inter'))} "
                              f"-> claim {'met' if t['met'] else 'NOT met'}")
    elif isinstance(study, Mapping) and study.get("reason"):
        console.print(study["reason"])
    timing = results.get("timing") or {}
    console.print(f"wall time {float(timing.get('total_s') or 0):.0f} s ({timing.get('runs_trained')} runs trained, "
                  f"{timing.get('runs_cached')} reused, {timing.get('runs_failed')} failed)")
    console.print(f"report:  {out / 'report.html'}")
    console.print(f"results: {out / 'results.json'}")
    console.print(f"tables:  {out / 'tables'}")


def run(
    data: Path,
    out: Path,
    variants: Sequence[str] | None = None,
    seeds: int | None = None,
    config: str = "cpu",
    quick: bool = False,
    regime_study: bool | None = None,
    epochs: int | None = None,
    n_boot: int | None = None,
    robustness: bool = True,
    cache: Path | None = None,
    regime_volumes: int | None = None,
    progress: bool = True,
    argv: Sequence[str] | None = None,
    cv: int | None = None,
    claim_study: bool = False,
    shard: str | None = None,
    jobs: int = 1,
) -> int:
    """Run the ablation, write the report; returns the exit code (fatal errors propagate as
    :class:`~i2m2_med.errors.I2M2Error` for the CLI to print in one line). ``shard``: ``"I/N"``,
    train that shard's runs only; ``jobs``: run that many shards at once here, then merge."""
    from i2m2_med.ablation.runs import parse_shard

    if not Path(data).is_dir():
        raise UsageError(data, "no such data folder")
    if int(jobs) < 1:
        raise UsageError("--jobs", f"must be a positive integer, got {jobs}")
    if shard is not None and int(jobs) > 1:
        raise UsageError("--jobs", "runs shards itself; leave out --shard")
    the_shard = parse_shard(shard) if shard is not None else None
    names: list[str] | None = None
    if variants:
        names = [n.strip() for v in variants for n in str(v).split(",") if n.strip()]
    settings = default_settings(
        quick=quick, variants=names, seeds=seeds, config=str(config), epochs=epochs, n_boot=n_boot,
        regime_study=regime_study, robustness=None if robustness else False, regime_volumes=regime_volumes, cv=cv,
        claim_study=claim_study,
    )
    t0 = time.perf_counter()

    def say(message: str) -> None:
        if progress:
            print(f"[{time.perf_counter() - t0:7.1f} s] {message}", file=sys.stderr, flush=True)

    if the_shard is not None:
        record = run_ablation(data, out, settings, command=command_line(argv), cache_dir=cache, progress=say, shard=the_shard)
        counts = record["counts"]
        print(f"shard {the_shard.label}: {counts['trained']} runs trained, {counts['cached']} already in the cache, "
              f"{counts['pending']} left to other shards, {counts['failed']} failed; record: "
              f"{Path(out) / 'shards' / f'shard-{the_shard.index}-of-{the_shard.count}.json'}")
        print("when every shard has finished, rerun this command without --shard to write the report")
        sys.stdout.flush()
        return 0
    if int(jobs) > 1:
        run_shards(int(jobs), argv, Path(out), say)
    results = run_ablation(data, out, settings, command=command_line(argv), cache_dir=cache, progress=say)
    say("writing the report")
    write_report(results, Path(out))
    print_summary(results, Path(out))
    sys.stdout.flush()
    return 0


def run_shards(jobs: int, argv: Sequence[str] | None, out: Path, say: Any) -> None:
    """``--jobs J``: the same ablation as J shard processes at once, each with its share of the
    cores; their output goes to ``OUT/shards/shard-I-of-J.log``. Returns when all have ended (a
    shard that failed leaves its runs to the merge, which trains them)."""
    import os
    import subprocess

    args = list(sys.argv[1:] if argv is None else argv[1:])
    args = [a for i, a in enumerate(args) if not (a == "--jobs" or (i and args[i - 1] == "--jobs") or a.startswith("--jobs="))]
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    logs = Path(out) / "shards"
    logs.mkdir(parents=True, exist_ok=True)
    code = f"import sys; from {__package__}.cli import main; sys.exit(main(sys.argv[1:]))"
    procs = []
    for index in range(jobs):
        log = open(logs / f"shard-{index}-of-{jobs}.log", "w", encoding="utf-8")  # noqa: SIM115 -- closed below
        cmd = [sys.executable, "-c", code, *args, "--shard", f"{index}/{jobs}"]
        procs.append((index, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    say(f"{jobs} shard processes started ({threads} thread{'s' if threads != '1' else ''} each); logs in {logs}")
    try:
        for index, proc, log in procs:
            rc = proc.wait()
            log.close()
            say(f"shard {index}/{jobs} " + ("finished" if rc == 0 else f"failed (exit {rc}, see {log.name}); the merge trains its runs"))
    except BaseException:
        for _, proc, log in procs:
            proc.terminate()
            log.close()
        raise


__all__ = ["command_line", "print_summary", "run", "run_shards", "write_report"]
