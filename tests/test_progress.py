"""The one progress display: a rich bar with counts and time remaining on a terminal (a real
pseudo-terminal here), nothing when stderr is a file or a pipe."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from diagnose_inputs import make_checkpoint, write_h5

REPO = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
CLI = "import sys; from pipelines.cli import main; sys.exit(main(sys.argv[1:]))"


def _run(args: list[str], cwd: Path, terminal: bool) -> tuple[int, str]:
    """The CLI in a subprocess, its stdout and stderr on a pseudo-terminal or a pipe."""
    env = {**os.environ, "COLUMNS": "140", "TERM": "xterm", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("NO_COLOR", None)
    cmd = [sys.executable, "-c", CLI, *args]
    if not terminal:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        return proc.returncode, proc.stdout + proc.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    rc = proc.wait(timeout=300)
    return rc, ANSI.sub("", b"".join(chunks).decode("utf-8", errors="replace"))


@pytest.mark.slow
def test_synth_draws_a_bar_on_a_terminal_and_none_in_a_log(tmp_path: Path) -> None:
    args = ["synth", "--volumes", "3", "--seed", "2", "--slices", "8"]
    rc, shown = _run([*args, str(tmp_path / "tty")], tmp_path, terminal=True)
    assert rc == 0, shown
    assert re.search(r"synthesising .*3/3 volumes .*100% .*eta", shown), shown
    assert "wrote 3 volumes" in shown
    rc, logged = _run([*args, str(tmp_path / "log")], tmp_path, terminal=False)
    assert rc == 0 and "wrote 3 volumes" in logged
    assert "synthesising" not in logged and "eta" not in logged


@pytest.mark.slow
def test_diagnose_draws_a_bar_of_slices_on_a_terminal(tmp_path: Path) -> None:
    src = tmp_path / "in"
    write_h5(src / "a.h5", n_slices=3, width=368, seed=5)
    write_h5(src / "b.h5", n_slices=2, width=372, seed=6)
    model = make_checkpoint(tmp_path / "run" / "model.safetensors", seed=1)
    rc, shown = _run(["diagnose", str(src), "--out", str(tmp_path / "out"), "--model", str(model)], tmp_path, terminal=True)
    assert rc == 0, shown
    assert re.search(r"diagnose .*5/5 slices .*100% .*eta", shown), shown
    assert "2 studies: 2 ok, 0 failed" in shown
