"""Export: ONNX (run with onnxruntime), TorchScript and ExportedProgram graphs of a tiny model agree
with PyTorch, with every modality and with each one missing; the CLI writes the file and its
description, and refuses bad requests in one line without leaving a file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from i2m2_med.checkpoint import load_checkpoint, save_checkpoint
from i2m2_med.config import load_config
from i2m2_med.errors import UsageError
from i2m2_med.inference.export import FORMATS, ExportableModel, example_inputs, export_model, reference_outputs
from i2m2_med.models import build_model
from pipelines.cli import main

NAMES = ["age", "sex", "bmi"]
SIZE = 32


def _config():
    return load_config("cpu").with_updates(
        **{
            "image_size": SIZE,
            "model.image_expert.stem_width": 8,
            "model.image_expert.widths": [8, 8, 16, 16],
            "model.image_expert.groups": 4,
            "model.tabular_expert.hidden": [16],
            "model.prior": True,
        }
    )


def _run(tmp_path, variant: str = "i2m2"):
    torch.manual_seed(0)
    cfg = _config()
    model = build_model(variant, cfg, 3)
    with torch.no_grad():  # non-default prior and FiLM maps, so that every path matters
        model.prior.logits.normal_()
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(std=0.1)
    run = tmp_path / f"run-{variant}"
    save_checkpoint(run / "model.safetensors", model, cfg, variant, 3, NAMES, metrics={}, data_fingerprint="cohort")
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("export"))


SUFFIX = {"onnx": "onnx", "torchscript": "pt", "exported-program": "pt2"}


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_matches_pytorch_with_and_without_each_modality(run_dir, tmp_path, fmt):
    out = tmp_path / f"model.{SUFFIX[fmt]}"
    result = export_model(run_dir, fmt, out)
    assert out.is_file() and result.max_abs_diff <= 1e-4 and result.checks == 4
    meta = json.loads((tmp_path / f"model.{SUFFIX[fmt]}.json").read_text())
    assert [i["name"] for i in meta["inputs"]] == ["magnitude", "phase", "tabular", "present"]
    assert [o["name"] for o in meta["outputs"]] == [
        "logp_combined", "logp_magnitude", "logp_phase", "logp_tabular", "logp_joint", "logp_prior"]
    assert meta["tabular_features"] == NAMES and meta["image_size"] == SIZE
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    # Independently of export_model's own check: run the file on a batch of another size, with
    # the tabular vector missing on some samples, and compare with the model read from the run.
    model, _ = load_checkpoint(run_dir / "model.safetensors")
    model.eval()
    wrapper = ExportableModel(model, SIZE)
    xs = example_inputs(wrapper, 3, SIZE, batch=5, seed=42, missing="tabular")
    want = reference_outputs(model, wrapper, xs)
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = session.run(None, {n: x.numpy() for n, x in zip(wrapper.input_names, xs)})
    elif fmt == "torchscript":
        with torch.no_grad():
            got = [o.numpy() for o in torch.jit.load(str(out))(*xs)]
    else:
        got = [o.detach().numpy() for o in torch.export.load(str(out)).module()(*xs)]
    for name, value in zip(("combined", *wrapper.terms), got):
        assert value.shape == (5, 4, 2)
        np.testing.assert_allclose(value, want[name], atol=1e-4)
    # the missing tabular vector changed the answer where it was missing, and only there
    full = reference_outputs(model, wrapper, (*xs[:-1], torch.ones_like(xs[-1])))
    assert np.allclose(want["combined"][0], full["combined"][0], atol=1e-6)
    assert not np.allclose(want["combined"][1:], full["combined"][1:], atol=1e-3)


def test_single_modality_variant_has_its_inputs_only(tmp_path):
    run = _run(tmp_path, "phase")
    result = export_model(run, "torchscript", tmp_path / "phase.pt")
    assert [i["name"] for i in result.metadata["inputs"]] == ["phase", "present"]
    assert [o["name"] for o in result.metadata["outputs"]] == ["logp_combined", "logp_phase", "logp_prior"]
    assert result.max_abs_diff <= 1e-4


def test_cli_export_and_refusals(run_dir, tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main(["export", str(run_dir), "--format", "torchscript", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "exported i2m2 model" in text and "largest difference" in text and "m.pt.json" in text
    assert out.is_file() and (tmp_path / "m.pt.json").is_file()

    cases = [
        (["export", str(run_dir), "--format", "exported-program", "--out", str(tmp_path / "x.pt")], "must end in .pt2"),
        (["export", str(run_dir), "--format", "caffe", "--out", str(tmp_path / "x.pt")], "unknown format 'caffe'"),
        (["export", str(tmp_path / "nothing"), "--format", "onnx", "--out", str(tmp_path / "x.onnx")], "no such checkpoint"),
        (["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "no" / "x.onnx")], "folder does not exist"),
    ]
    for argv, reason in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and reason in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m.pt.json"]


def test_export_that_disagrees_is_not_kept(run_dir, tmp_path, monkeypatch):
    import i2m2_med.inference.export as export

    real = export.reference_outputs

    def off_by(model, wrapper, inputs):
        return {k: v + 1e-3 for k, v in real(model, wrapper, inputs).items()}

    monkeypatch.setattr(export, "reference_outputs", off_by)
    with pytest.raises(UsageError, match="differs from PyTorch"):
        export_model(run_dir, "torchscript", tmp_path / "bad.pt")
    assert list(tmp_path.iterdir()) == []
