"""What the app tests share: a small demo set in a private cache folder (generated once per test
session by the app's own generator), the model the app runs with, and the app's import path."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "app"
MAIN = APP_DIR / "main.py"
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))

DEMO_VOLUMES = 2
DEMO_SLICES = 8


@dataclass(frozen=True)
class AppEnv:
    """``cache_dir``: the app's cache with the demo studies; ``model``: a checkpoint to run with
    (None: the bundled demo model, used when it exists)."""

    cache_dir: Path
    model: Path | None

    def environ(self) -> dict[str, str]:
        env = {"I2M2_CACHE_DIR": str(self.cache_dir)}
        if self.model is not None:
            env["I2M2_MODEL"] = str(self.model)
        return env


_PREPARED: dict[str, AppEnv] = {}


def prepare(root: Path) -> AppEnv:
    """The demo studies (2 volumes of 8 slices: the app's generator, smaller than its default)
    and the model: the bundled one when it exists, else an untrained cpu-config checkpoint."""
    if "env" in _PREPARED:
        return _PREPARED["env"]
    from viewer.sources import ensure_demo

    import i2m2_med

    cache = root / "cache"
    ensure_demo(cache, volumes=DEMO_VOLUMES, n_slices=DEMO_SLICES)
    model = None
    if not i2m2_med.demo_model_path().is_file():
        from diagnose_inputs import make_checkpoint

        model = make_checkpoint(root / "model" / "model.safetensors", seed=5)
    _PREPARED["env"] = AppEnv(cache, model)
    return _PREPARED["env"]
