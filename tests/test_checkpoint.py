"""Checkpoints: round trip, metadata, refusal of corrupt / tampered / truncated / mismatched files."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save as safetensors_save

from i2m2_med import __version__
from i2m2_med.checkpoint import (
    _file_sha,
    load_checkpoint,
    model_fingerprint,
    read_checkpoint_meta,
    save_checkpoint,
    weights_sha256,
)
from i2m2_med.config import load_config
from i2m2_med.errors import CheckpointError, UsageError
from i2m2_med.models import build_model

NAMES = ["age", "sex", "bmi"]


@pytest.fixture(scope="module")
def tiny():
    return load_config("cpu").with_updates(
        **{
            "image_size": 32,
            "model.image_expert.stem_width": 8,
            "model.image_expert.widths": [8, 8, 16, 16],
            "model.image_expert.groups": 4,
            "model.tabular_expert.hidden": [16],
            "model.prior": True,
        }
    )


def _batch(n: int = 4) -> dict:
    g = torch.Generator().manual_seed(3)
    return {
        "magnitude": torch.rand(n, 1, 32, 32, generator=g),
        "phase": torch.rand(n, 1, 32, 32, generator=g),
        "tabular": torch.randn(n, 3, generator=g),
    }


def _save(tmp_path, tiny, variant: str = "i2m2", name: str = "model.safetensors"):
    torch.manual_seed(0)
    model = build_model(variant, tiny, 3)
    with torch.no_grad():  # make the prior and the weights non-default
        model.prior.logits.normal_()
    path = tmp_path / name
    meta = save_checkpoint(
        path, model, tiny, variant, 3, NAMES,
        metrics={"val": {"auroc_mean": 0.91, "acl": float("nan")}}, data_fingerprint="cohort-abc123",
        extra={"seed": 7},
    )
    return model, path, meta


@pytest.mark.parametrize("variant", ["i2m2", "mag", "i2m2-notab"])
def test_round_trip_gives_identical_outputs_and_metadata(tmp_path, tiny, variant):
    model, path, saved = _save(tmp_path, tiny, variant)
    loaded, meta = load_checkpoint(path)
    assert not loaded.training and loaded.variant == variant
    batch = _batch()
    expected, got = model.eval()(batch), loaded(batch)
    assert list(got.terms) == list(expected.terms)
    for name in expected.terms:
        assert torch.equal(got.terms[name], expected.terms[name])
    assert torch.equal(got.combined, expected.combined)
    assert meta == saved
    assert meta.config == tiny and meta.variant == variant and meta.n_tabular == 3
    assert meta.tabular_names == NAMES and meta.data_fingerprint == "cohort-abc123"
    assert meta.metrics == {"val": {"auroc_mean": 0.91, "acl": None}}  # NaN stored as null
    assert meta.extra == {"seed": 7} and meta.project_version == __version__
    assert len(meta.sha256) == 64 and len(meta.fingerprint) == 12
    assert meta.fingerprint == model_fingerprint(loaded) == model_fingerprint(model)
    assert meta.weights_sha256 == weights_sha256(model.state_dict())
    assert read_checkpoint_meta(path) == meta
    json.dumps(meta.to_dict())  # JSON-ready


def test_file_is_plain_safetensors_written_atomically(tmp_path, tiny):
    _, path, _ = _save(tmp_path, tiny)
    data = path.read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + header_len])
    assert header["__metadata__"]["format"] == "i2m2-med-checkpoint"
    assert not data.startswith(b"PK") and b"\x80\x02" not in data[:2]  # not a zip / pickle
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temporaries left


def test_fingerprint_changes_with_the_weights(tmp_path, tiny):
    model = build_model("mag", tiny, 3)
    before = model_fingerprint(model)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert model_fingerprint(model) != before


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_one_changed_weight_byte_is_refused(tmp_path, tiny):
    _, path, _ = _save(tmp_path, tiny)
    _flip(path, path.stat().st_size - 5)  # inside the last tensor's data
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        read_checkpoint_meta(path)


def test_changed_metadata_is_refused(tmp_path, tiny):
    _, path, _ = _save(tmp_path, tiny)
    data = path.read_bytes()
    offset = data.index(b"cohort-abc123")
    _flip(path, offset)  # 'c' -> 'b': still valid JSON, different metadata
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(path)


def test_truncated_and_garbage_files_are_refused(tmp_path, tiny):
    _, path, _ = _save(tmp_path, tiny)
    data = path.read_bytes()
    for cut in (len(data) - 100, 200, 6, 0):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
            load_checkpoint(path)
        assert info.value.where == str(path) and "\n" not in str(info.value)
    path.write_bytes(b"\x80\x04\x95" + b"pickle-like garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_wrong_variant_or_width_is_refused(tmp_path, tiny):
    _, path, _ = _save(tmp_path, tiny, "i2m2")
    with pytest.raises(CheckpointError, match="checkpoint is variant 'i2m2', expected 'mag'"):
        load_checkpoint(path, expected_variant="mag")
    with pytest.raises(CheckpointError, match="expects 3 tabular features, the data has 4"):
        load_checkpoint(path, expected_n_tabular=4)
    model = build_model("mag", tiny, 3)
    with pytest.raises(UsageError, match="model is variant 'mag', not 'i2m2'"):
        save_checkpoint(tmp_path / "x.safetensors", model, tiny, "i2m2", 3, NAMES, {}, "d")


def _forge(path, state: dict, meta: dict, fmt: str = "i2m2-med-checkpoint") -> None:
    """A self-consistent file (valid hashes) whose content does not match its claims."""
    meta = dict(meta, weights_sha256=weights_sha256(state))
    meta_json = json.dumps(meta, sort_keys=True)
    header = {"format": fmt, "format_version": "1", "meta": meta_json, "sha256": _file_sha(meta["weights_sha256"], meta_json)}
    path.write_bytes(safetensors_save(state, metadata=header))


def test_weights_that_do_not_match_the_variant_are_refused(tmp_path, tiny):
    _, path, saved = _save(tmp_path, tiny, "i2m2")
    meta = {k: v for k, v in saved.to_dict().items() if k not in ("path", "sha256")}
    mag_state = build_model("mag", tiny, 3).state_dict()
    _forge(path, mag_state, meta)  # says i2m2, holds only a magnitude expert
    with pytest.raises(CheckpointError, match=r"weights do not match variant 'i2m2': \d+ missing"):
        load_checkpoint(path)
    state = build_model("i2m2", tiny, 3).state_dict()
    state["experts.tabular.head.weight"] = torch.zeros(8, 99)
    _forge(path, state, meta)
    with pytest.raises(CheckpointError, match=r"experts.tabular.head.weight is \(8, 99\)"):
        load_checkpoint(path)
    _forge(path, state, dict(meta, variant="late-fusion"))
    with pytest.raises(CheckpointError, match="unknown variant 'late-fusion'"):
        load_checkpoint(path)
    bad_config = dict(meta, config=dict(meta["config"], image_size="big"))
    _forge(path, state, bad_config)
    with pytest.raises(CheckpointError, match="invalid config in checkpoint: image_size"):
        load_checkpoint(path)
    _forge(path, state, meta, fmt="something-else")
    with pytest.raises(CheckpointError, match="not an i2m2-med checkpoint"):
        load_checkpoint(path)
    path.write_bytes(safetensors_save(state))  # plain safetensors, no metadata
    with pytest.raises(CheckpointError, match="not an i2m2-med checkpoint"):
        load_checkpoint(path)
