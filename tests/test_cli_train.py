"""`i2m2-med train` and `i2m2-med demo` from the command line: end to end on the tiny synthetic
cohort, and one-line errors for bad arguments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from i2m2_med.config import load_config
from pipelines.cli import main

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _one_error_line(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 1, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.slow
def test_train_end_to_end(tiny_cohort: Path, small_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    rc = main([
        "train", "--data", str(tiny_cohort), "--out", str(run), "--variant", "i2m2", "--config", str(small_config),
        "--epochs", "1", "--seed", "2", "--batch-size", "16", "--no-progress", "--bundle", str(tmp_path / "bundle"),
    ])
    out = capsys.readouterr().out
    assert rc == 0
    for name in ("model.safetensors", "metrics.json", "predictions.csv", "config.yaml"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"] == str(small_config) and metrics["seed"] == 2
    assert metrics["training"]["epochs_run"] == 1 and metrics["training"]["batch_size"] == 16
    assert load_config(run / "config.yaml").image_size == 32
    # the printed table has the combined model and every expert, on both splits and levels
    assert "mean3" in out and f"checkpoint: {run / 'model.safetensors'}" in out
    for name in ("combined", "magnitude", "phase", "tabular", "joint"):
        assert name in out
    test_mean = metrics["test_mean_pathologies"]["slice"]
    assert test_mean is None or 0.0 <= test_mean <= 1.0
    # --bundle: the trained model as a MONAI Bundle, its metadata carrying this run's numbers
    bundle = json.loads((tmp_path / "bundle" / "configs" / "metadata.json").read_text())
    assert bundle["eval_metrics"]["slice"] == metrics["test"]["summary"]["combined"]["slice"]["mean_pathologies"]
    assert (tmp_path / "bundle" / "models" / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    assert f"MONAI Bundle: {tmp_path / 'bundle'}" in out


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--epochs", "0"], "--epochs: must be a positive integer"),
        (["--variant", "fusion"], "unknown variant"),
        (["--strategy", "bogus"], "unknown strategy"),
        (["--devices", "0"], "--devices: must be a positive integer"),
        (["--accelerator", "abacus"], "unknown accelerator"),
        (["--config", "/nonexistent/cfg.yaml"], "no such config file"),
        (["--bundle", "/nonexistent/folder/b"], "its parent folder does not exist"),
        (["--bundle", "/"], "exists and is not an empty folder"),
    ],
)
def test_train_bad_arguments_are_one_line(
    args: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir()  # arguments are checked before any data is read
    line = _one_error_line(capsys, ["train", "--data", str(data), "--out", str(tmp_path / "r"), *args])
    assert line.startswith("error: ") and expected in line
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_train_bad_data_and_config_keys(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    line = _one_error_line(capsys, ["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r")])
    assert "no such data folder" in line
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ntraining:\n  max_epoch: 3\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _one_error_line(capsys, ["train", "--data", str(empty), "--out", str(tmp_path / "r"), "--config", str(bad)])
    assert "training.max_epoch: unknown key" in line


def test_demo_bad_arguments_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    line = _one_error_line(capsys, ["demo", "--out", str(tmp_path), "--volumes", "2"])
    assert "at least 6 volumes" in line
    line = _one_error_line(capsys, ["demo", "--out", str(tmp_path), "--seed", "-1"])
    assert "--seed" in line


def test_demo_bundle_writes_model_metrics_and_command_without_build_paths(tmp_path: Path) -> None:
    import i2m2_med
    from diagnose_inputs import make_checkpoint
    from i2m2_med.checkpoint import load_checkpoint, save_checkpoint
    from pipelines import demo

    out = tmp_path / "demo_out"
    run = out / "run"
    model, meta = load_checkpoint(make_checkpoint(tmp_path / "seed.safetensors"))
    built = {"data_dir": str(out / "cohort"), "cohort": {"root": str(out / "cohort")}, "other": "/elsewhere/x"}
    save_checkpoint(run / "model.safetensors", model, meta.config, meta.variant, meta.n_tabular, meta.tabular_names,
                    built, "test-data", extra={"data_dir": str(out / "cohort")})
    (run / "metrics.json").write_text(json.dumps({"variant": "i2m2", "checkpoint": str(run / "model.safetensors"),
                                                  "runs": [str(out / "cohort" / "splits.csv")]}))
    target = demo.bundle(run, 40, 3, target=tmp_path / "bundle")
    shipped = json.loads((target / "metrics.json").read_text())
    assert shipped == {"variant": "i2m2", "checkpoint": "demo_out/run/model.safetensors",
                       "runs": ["demo_out/cohort/splits.csv"]}
    _, bundled = load_checkpoint(target / "model.safetensors")
    assert bundled.metrics == {"data_dir": "demo_out/cohort", "cohort": {"root": "demo_out/cohort"}, "other": "/elsewhere/x"}
    assert bundled.extra == {"data_dir": "demo_out/cohort"}
    assert bundled.fingerprint == load_checkpoint(run / "model.safetensors")[1].fingerprint  # the same weights
    assert str(tmp_path) not in (target / "model.safetensors").read_bytes().decode("latin-1")
    command = (target / "command.txt").read_text()
    assert "i2m2-med demo --volumes 40 --seed 3" in command and "i2m2_med/config/demo.yaml" in command
    assert i2m2_med.demo_model_path() == REPO / "i2m2_med" / "assets" / "demo_model" / "model.safetensors"


def test_bundled_demo_model_loads_when_present() -> None:
    import i2m2_med
    from i2m2_med.checkpoint import load_checkpoint
    from i2m2_med.config import load_config

    path = i2m2_med.demo_model_path()
    if not path.is_file():
        pytest.skip("the demo model is not bundled in this checkout (run `i2m2-med demo`)")
    model, meta = load_checkpoint(path)
    metrics = json.loads((path.parent / "metrics.json").read_text())
    assert meta.variant == "i2m2" and meta.config == load_config("demo").with_updates(**{"training.seed": meta.config.training.seed})
    assert metrics["variant"] == "i2m2" and metrics["data_fingerprint"] == meta.data_fingerprint
    assert "i2m2-med demo" in (path.parent / "command.txt").read_text()
    assert path.stat().st_size < 8_000_000
