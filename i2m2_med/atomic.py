"""Atomic file writes: a temporary name in the same folder, then ``os.replace``.

A reader (or an interrupted run) therefore sees either the old file or the complete new one,
never a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary file is removed if the block raises (including KeyboardInterrupt).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # a short temporary name: the target's own name may be near the file system's 255 bytes
    head = target.name.encode("utf-8")[:32].decode("utf-8", errors="ignore")
    fd, tmp = tempfile.mkstemp(prefix=f".{head}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def json_safe(obj: Any) -> Any:
    """A plain-JSON copy of ``obj``: NaN / inf -> None (strict JSON has neither), numpy and torch
    scalars and arrays -> Python numbers and lists, tuples -> lists, paths -> str, mapping keys
    -> str. Other values are returned as they are (``json.dumps`` decides about them)."""
    if isinstance(obj, dict) or (hasattr(obj, "items") and hasattr(obj, "keys")):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (str, bytes, bool, int)) or obj is None:
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    shape = getattr(obj, "shape", None)
    if shape is not None and hasattr(obj, "tolist"):  # numpy / torch arrays and scalars
        return json_safe(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return json_safe(obj.item())
        except (TypeError, ValueError):
            return obj
    return obj
