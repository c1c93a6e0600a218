"""Forged checkpoints: a changed config with a recomputed (unkeyed) hash must not exhaust memory,
raise a traceback, or -- under a deployment key -- load at all."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

from i2m2_med.atomic import write_bytes
from i2m2_med.checkpoint import MODEL_KEY_ENV, _file_sha, load_checkpoint, save_checkpoint, weights_sha256
from i2m2_med.config import load_config
from i2m2_med.errors import CheckpointError
from i2m2_med.models import build_model
from pipelines.cli import main


def _tiny_config():
    return load_config("cpu").with_updates(**{
        "image_size": 32, "model.image_expert.stem_width": 8, "model.image_expert.widths": [8, 8, 16, 16],
        "model.image_expert.groups": 4, "model.tabular_expert.hidden": [16],
    })


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    cfg = _tiny_config()
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, build_model("mag", cfg, 0), cfg, "mag", 0, [], {}, "data")
    return path


def _forge(path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """What a forger does: edit the metadata and recompute the unkeyed hashes."""
    with safe_open(str(path), framework="pt") as handle:
        header = dict(handle.metadata())
        state = {k: handle.get_tensor(k) for k in handle.keys()}
    meta = json.loads(header["meta"])
    change(meta)
    meta["weights_sha256"] = weights_sha256(state)
    meta_json = json.dumps(meta, sort_keys=True)
    header.update(meta=meta_json, sha256=_file_sha(meta["weights_sha256"], meta_json))
    header.pop("hmac_sha256", None)
    out = path.with_name("forged.safetensors")
    write_bytes(out, safetensors_save(state, metadata=header))
    return out


def _set(*keys: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(meta: dict[str, Any]) -> None:
        node = meta["config"]
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return change


@pytest.mark.parametrize("keys, value, reason", [
    (("model", "image_expert", "blocks"), [1, 1, 1, 100000], "invalid config in checkpoint"),
    (("model", "image_expert", "widths"), [8, 8, 16, 400000], "invalid config in checkpoint"),
    (("model", "image_expert", "widths"), [8, 8, 16, 32], "weights do not match"),
    (("model", "tabular_expert", "hidden"), [10**9], "invalid config in checkpoint"),
])
def test_forged_sizes_are_refused_before_any_allocation(checkpoint: Path, keys, value, reason) -> None:
    forged = _forge(checkpoint, _set(*keys, value=value))
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match=reason):
        load_checkpoint(forged)
    assert time.perf_counter() - started < 20


def test_without_a_key_a_recomputed_hash_is_accepted_as_documented(checkpoint: Path) -> None:
    forged = _forge(checkpoint, _set("training", "aggregation", value="max"))
    _, meta = load_checkpoint(forged)  # the unkeyed hash detects damage, not forgery (checkpoint.py)
    assert meta.config.training.aggregation == "max"


def test_a_deployment_key_refuses_unsigned_and_forged_checkpoints(checkpoint: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODEL_KEY_ENV, "deployment secret")
    with pytest.raises(CheckpointError, match="not signed with this deployment's key"):
        load_checkpoint(checkpoint)  # written before the key was set: unsigned
    cfg = _tiny_config()
    signed = tmp_path / "signed.safetensors"
    save_checkpoint(signed, build_model("mag", cfg, 0), cfg, "mag", 0, [], {}, "data")
    model, _ = load_checkpoint(signed)
    assert model.variant == "mag"
    forged = _forge(signed, _set("training", "aggregation", value="max"))
    with pytest.raises(CheckpointError, match="not signed with this deployment's key"):
        load_checkpoint(forged)
    monkeypatch.setenv(MODEL_KEY_ENV, "another key")
    with pytest.raises(CheckpointError, match="not signed"):
        load_checkpoint(signed)


def test_diagnose_with_a_forged_model_is_one_line(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    forged = _forge(checkpoint, _set("model", "image_expert", "blocks", value=[1, 1, 1, 100000]))
    data = tmp_path / "in"
    data.mkdir()
    rc = main(["diagnose", str(data), "--out", str(tmp_path / "out"), "--model", str(forged), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "invalid config in checkpoint" in err, err
