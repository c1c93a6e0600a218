"""The MONAI Bundle: metadata with every key the specification makes mandatory, an interface that
is the exported graph's, a model card with the run's numbers, and an inference config that
`python -m monai.bundle run` executes to exactly the predictions of `i2m2-med diagnose`."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from diagnose_inputs import write_h5

from i2m2_med.checkpoint import load_checkpoint, read_checkpoint_meta
from i2m2_med.inference.bundle import REQUIRED_METADATA, TENSOR_KEYS, write_bundle
from i2m2_med.inference.export import ExportableModel
from i2m2_med.inference.loading import resolve_checkpoint
from i2m2_med.synth import generate_cohort
from pipelines.cli import main


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return write_bundle(None, tmp_path_factory.mktemp("b") / "knee_bundle")


def test_metadata_has_every_mandatory_key_and_the_graph_interface(bundle):
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert [k for k in REQUIRED_METADATA if k not in meta] == []
    assert meta["version"] in meta["changelog"] and meta["required_packages_version"]["i2m2-med"] == meta["version"]
    fmt = meta["network_data_format"]
    for spec in [*fmt["inputs"].values(), *fmt["outputs"].values()]:
        assert [k for k in TENSOR_KEYS if k not in spec] == []
    model, _ = load_checkpoint(resolve_checkpoint(None))
    wrapper = ExportableModel(model, 64)
    assert list(fmt["inputs"]) == wrapper.input_names
    assert list(fmt["outputs"]) == wrapper.output_names
    assert fmt["inputs"]["tabular"]["num_channels"] == model.n_tabular
    source = read_checkpoint_meta(resolve_checkpoint(None))
    copied = read_checkpoint_meta(bundle / "models" / "model.safetensors")
    assert copied.sha256 == source.sha256 and meta["model_fingerprint"] == source.fingerprint


def test_model_card_states_use_data_and_the_run_numbers(bundle):
    card = (bundle / "docs" / "README.md").read_text()
    metrics = json.loads((resolve_checkpoint(None).parent / "metrics.json").read_text())
    view = metrics["test"]["summary"]["combined"]["in_view"]
    lo, hi = view["mean_pathologies_ci"]
    assert "Research only" in card and "Synthetic" in card and "Out-of-scope inputs" in card
    assert f"{view['mean_pathologies']:.3f} [{lo:.3f}, {hi:.3f}]" in card
    assert "position only" in card


@pytest.mark.slow
def test_monai_bundle_run_gives_the_predictions_of_diagnose(bundle, tmp_path):
    """Two synthetic knees (in scope, so there are probabilities to compare) and one random h5
    (out of scope), through the bundle and through the command, each in a fresh process."""
    data = tmp_path / "in"
    generate_cohort(tmp_path / "cohort", 2, seed=21, n_slices=8)
    (data / "h5").mkdir(parents=True)
    for f in sorted((tmp_path / "cohort" / "h5").glob("*.h5")):
        (data / "h5" / f.name).write_bytes(f.read_bytes())
    write_h5(data / "noise.h5", n_slices=2, width=368, seed=5)
    env = {k: v for k, v in os.environ.items() if not k.startswith("I2M2_")}
    bundle_cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
                  "--bundle_root", str(bundle), "--dataset_dir", str(data), "--output_dir", str(tmp_path / "bundle_out")]
    cli_cmd = [sys.executable, "-m", "i2m2_med_pipelines.cli", "diagnose", str(data), "--out", str(tmp_path / "cli_out"),
               "--model", str(bundle / "models" / "model.safetensors"), "--no-progress"]
    for cmd in (bundle_cmd, cli_cmd):
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    got = (tmp_path / "bundle_out" / "predictions.csv").read_text()
    want = (tmp_path / "cli_out" / "predictions.csv").read_text()
    assert got == want
    with open(tmp_path / "bundle_out" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    status = {r["source"]: r["status"] for r in rows}
    assert len(rows) == 3 and status["noise.h5"] == "out_of_scope"
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and all(0.0 <= float(r["p_acl"]) <= 1.0 for r in ok)  # probabilities were compared
    records = sorted(p.name for p in (tmp_path / "bundle_out" / "studies").iterdir())
    assert records == sorted(p.name for p in (tmp_path / "cli_out" / "studies").iterdir()) and len(records) == 3


def test_cli_bundle_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine\n")
    assert main(["bundle", "--out", str(tmp_path / "taken")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an empty folder" in err[0]
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["keep.txt"]
    assert main(["bundle", "--out", str(tmp_path / "new")]) == 0
    assert "python -m monai.bundle run" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["configs", "docs", "models"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_run_on_the_users_own_cohort_is_described_as_such(tmp_path):
    """A run trained without a generator manifest (real data: metrics.json has ``ceilings``
    null) bundles, and its card does not claim synthetic training data."""
    source = resolve_checkpoint(None)
    run = tmp_path / "real_run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(source.read_bytes())
    metrics = json.loads((source.parent / "metrics.json").read_text())
    metrics["ceilings"] = None
    (run / "metrics.json").write_text(json.dumps(metrics))
    out = write_bundle(run, tmp_path / "b")
    card = (out / "docs" / "README.md").read_text()
    assert "The user's own cohort" in card and "Synthetic:" not in card
    assert "the user's own cohort" in json.loads((out / "configs" / "metadata.json").read_text())["data_source"]
