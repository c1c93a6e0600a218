"""diagnose when writing fails: an output folder it cannot create, a result file it cannot write,
a study id too long for a file name, and two runs into one folder."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from diagnose_inputs import make_checkpoint, write_broken, write_h5

from pipelines.diagnose import LOCK_NAME, MAX_NAME_BYTES, _json_path
from pipelines.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("run") / "model.safetensors", seed=5)


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "predictions.csv").open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _run(capsys, *args) -> tuple[int, str]:
    rc = main(["diagnose", *map(str, args), "--no-progress"])
    return rc, capsys.readouterr().err


def test_an_output_folder_that_cannot_be_created_is_one_line(capsys, tmp_path: Path, checkpoint: Path) -> None:
    src = tmp_path / "in"
    write_h5(src / "a.h5", n_slices=2, width=368, seed=1)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc, err = _run(capsys, src, "--out", blocker / "out", "--model", checkpoint)
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "cannot create the output folder" in err, err


def test_a_result_that_cannot_be_written_is_that_studys_row(capsys, tmp_path: Path, checkpoint: Path) -> None:
    src = tmp_path / "in"
    write_h5(src / "a.h5", n_slices=2, width=368, seed=1)
    write_h5(src / "b.h5", n_slices=2, width=368, seed=2)
    out = tmp_path / "out"
    rc, err = _run(capsys, src, "--out", out, "--model", checkpoint, "--keep-ids")
    assert rc == 0, err
    # a folder where b's JSON goes: its write fails for real (rename onto a directory)
    target = _json_path(out, "b")
    target.unlink()
    target.mkdir()
    rc, err = _run(capsys, src, "--out", out, "--model", checkpoint, "--keep-ids")
    assert rc == 2 and "Traceback" not in err, err
    rows = {r["study_id"]: r for r in _rows(out)}
    assert rows["a"]["status"] == "ok"
    assert rows["b"]["status"] != "ok" and "could not be written" in " ".join(rows["b"].values())


def test_a_long_kept_id_gets_a_bounded_file_name(capsys, tmp_path: Path, checkpoint: Path) -> None:
    src = tmp_path / "in"
    deep = src / ("a" * 120) / ("b" * 120)
    write_broken(deep)  # unreadable files: their id is their relative path, kept with --keep-ids
    write_h5(src / "good.h5", n_slices=2, width=368, seed=3)
    out = tmp_path / "out"
    rc, err = _run(capsys, src, "--out", out, "--model", checkpoint, "--keep-ids")
    assert rc == 2 and "Traceback" not in err, err
    rows = _rows(out)
    assert [r["status"] for r in rows].count("ok") == 1 and len(rows) > 1
    names = [p.name for p in (out / "studies").iterdir()]
    assert len(names) == len(rows) and all(len(n.encode()) <= MAX_NAME_BYTES for n in names)
    assert any(len(r["study_id"].encode()) > 255 for r in rows)  # the id itself is kept whole in the table


def test_two_runs_into_one_folder_and_a_stale_lock(capsys, tmp_path: Path, checkpoint: Path) -> None:
    src = tmp_path / "in"
    write_h5(src / "a.h5", n_slices=2, width=368, seed=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(str(os.getpid()))  # a live process holds the folder
    rc, err = _run(capsys, src, "--out", out, "--model", checkpoint)
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "another diagnose" in err, err
    assert not (out / "predictions.csv").exists()
    (out / LOCK_NAME).write_text("999999999")  # no such process: a stale lock is taken over
    rc, err = _run(capsys, src, "--out", out, "--model", checkpoint)
    assert rc == 0, err
    assert not (out / LOCK_NAME).exists() and len(_rows(out)) == 1
