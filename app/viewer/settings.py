"""The app's settings, read from environment variables (nothing else configures it).

===================  ==========================================================================
``I2M2_DATA_ROOT``   folders the app may open studies and ``diagnose`` outputs from, separated by
                     ``os.pathsep`` (``:`` on Linux). Nothing outside them is ever opened.
``I2M2_MODEL``       a checkpoint file or training run folder; default: the bundled demo model.
``I2M2_CACHE_DIR``   private cache (the demo studies); default ``$XDG_CACHE_HOME/i2m2-med`` or
                     ``~/.cache/i2m2-med``. Created with mode 0700.
``I2M2_MAX_UPLOAD_MB`` largest upload accepted, in MB (default 512; Streamlit's own
                     ``server.maxUploadSize`` in ``.streamlit/config.toml`` caps it as well).
``I2M2_DEVICE``      where the model runs: ``auto`` (default: a CUDA GPU when torch sees one),
                     ``cpu``, ``cuda`` or ``cuda:N`` (``i2m2-med app --device`` sets it).
===================  ==========================================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

ENV_DATA_ROOT = "I2M2_DATA_ROOT"
ENV_MODEL = "I2M2_MODEL"
ENV_CACHE_DIR = "I2M2_CACHE_DIR"
ENV_MAX_UPLOAD_MB = "I2M2_MAX_UPLOAD_MB"
ENV_DEVICE = "I2M2_DEVICE"
DEFAULT_MAX_UPLOAD_MB = 512


@dataclass(frozen=True)
class Settings:
    """``data_roots``: resolved existing folders; ``model_path``: None for the bundled model;
    ``cache_dir``: the private cache folder; ``max_upload_bytes``; ``problems``: settings that
    were ignored, one line each (shown to the user); ``device``: where the model runs (checked
    when the model loads)."""

    data_roots: tuple[Path, ...]
    model_path: Path | None
    cache_dir: Path
    max_upload_bytes: int
    problems: tuple[str, ...] = ()
    device: str = "auto"


def _cache_dir(env: Mapping[str, str]) -> Path:
    if env.get(ENV_CACHE_DIR):
        return Path(env[ENV_CACHE_DIR]).expanduser()
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "i2m2-med"


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """The settings of this process (``env`` defaults to ``os.environ``)."""
    env = os.environ if env is None else env
    problems: list[str] = []
    roots: list[Path] = []
    for part in (env.get(ENV_DATA_ROOT) or "").split(os.pathsep):
        if not part.strip():
            continue
        p = Path(part.strip()).expanduser()
        try:
            resolved = p.resolve(strict=True)
        except (OSError, RuntimeError):
            problems.append(f"{ENV_DATA_ROOT}: {part} does not exist and is ignored")
            continue
        if not resolved.is_dir():
            problems.append(f"{ENV_DATA_ROOT}: {part} is not a folder and is ignored")
            continue
        if resolved not in roots:
            roots.append(resolved)
    model = env.get(ENV_MODEL)
    model_path = Path(model).expanduser() if model and model.strip() else None
    limit_mb = DEFAULT_MAX_UPLOAD_MB
    raw = env.get(ENV_MAX_UPLOAD_MB)
    if raw:
        try:
            limit_mb = int(raw)
            if limit_mb < 1:
                raise ValueError
        except ValueError:
            problems.append(f"{ENV_MAX_UPLOAD_MB}={raw!r} is not a positive whole number of MB; using {DEFAULT_MAX_UPLOAD_MB}")
            limit_mb = DEFAULT_MAX_UPLOAD_MB
    return Settings(
        data_roots=tuple(roots),
        model_path=model_path,
        cache_dir=_cache_dir(env),
        max_upload_bytes=limit_mb * 1024 * 1024,
        problems=tuple(problems),
        device=(env.get(ENV_DEVICE) or "auto").strip() or "auto",
    )


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed and make it private to this user (0700)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path
