"""`i2m2-med ablate --data DIR --out REPORT_DIR`: the clinical ablation report.

Trains (or reuses cached runs of) every variant over the seeds, evaluates them on the test split
and writes ``REPORT_DIR/report.html`` (self-contained: opens offline), ``results.json`` and
``tables/*.csv`` (see :func:`i2m2_med.ablation.run_ablation`). Progress lines go to stderr; the
last lines of stdout say where the files are and summarise the headline numbers.

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
from pipelines.report.ablation import render_report


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
) -> int:
    """Run the ablation, write the report; returns the exit code (fatal errors propagate as
    :class:`~i2m2_med.errors.I2M2Error` for the CLI to print in one line)."""
    if not Path(data).is_dir():
        raise UsageError(data, "no such data folder")
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

    results = run_ablation(data, out, settings, command=command_line(argv), cache_dir=cache, progress=say)
    say("writing the report")
    write_report(results, Path(out))
    print_summary(results, Path(out))
    sys.stdout.flush()
    return 0


__all__ = ["command_line", "print_summary", "run", "write_report"]
