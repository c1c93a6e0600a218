"""Atomic writes and the JSON-safe copy every metrics / results file goes through."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from i2m2_med.atomic import atomic_path, json_safe, write_json


def test_json_safe_makes_strict_json() -> None:
    data = {
        1: (np.float32(0.5), np.int64(3), float("nan")),
        "inf": -math.inf,
        "arr": np.array([[1.0, np.nan]]),
        "t": torch.tensor([0.25, float("inf")]),
        "scalar": torch.tensor(2.0),
        "path": Path("/a/b"),
        "nested": [{"x": np.bool_(True)}, None, "s"],
    }
    out = json_safe(data)
    assert out == {
        "1": [0.5, 3, None],
        "inf": None,
        "arr": [[1.0, None]],
        "t": [0.25, None],
        "scalar": 2.0,
        "path": "/a/b",
        "nested": [{"x": True}, None, "s"],
    }
    json.dumps(out, allow_nan=False)  # strict JSON: raises on NaN / inf


def test_atomic_path_leaves_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
