"""`i2m2-med app [--port N] [--address HOST]`: start the evidence viewer from any install.

The viewer is installed with the package (``i2m2_med_app``, the checkout's ``app/``). Streamlit is
started in that folder, so that its ``.streamlit/config.toml`` (local address only, XSRF
protection, upload limit) applies as it does for ``streamlit run app/main.py`` from a checkout.
The app's settings (``I2M2_DATA_ROOT``, ``I2M2_MODEL``, ``I2M2_CACHE_DIR``) are read from the
environment as always; relative paths in them are made absolute first, since the viewer runs in
another folder.

Exit codes: Streamlit's own (the command becomes the Streamlit process); 1 when the viewer is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from i2m2_med.errors import UsageError

PATH_SETTINGS = ("I2M2_MODEL", "I2M2_CACHE_DIR")
ROOTS_SETTING = "I2M2_DATA_ROOT"


def app_folder() -> Path:
    """The installed viewer's folder (holding ``main.py``); UsageError when it is missing."""
    import importlib.util

    spec = importlib.util.find_spec("i2m2_med_app")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        if (Path(folder) / "main.py").is_file():
            return Path(folder)
    raise UsageError("i2m2-med app", "the viewer (package i2m2_med_app) is not installed; reinstall i2m2-med")


def check_streamlit() -> None:
    """UsageError when Streamlit (the ``app`` extra) is not installed."""
    import importlib.util

    if importlib.util.find_spec("streamlit") is None:
        raise UsageError("i2m2-med app", "the viewer needs Streamlit, which is not installed: pip install 'i2m2-med[app]'")


def absolute_settings(env: dict[str, str], cwd: Path) -> dict[str, str]:
    """``env`` with the app's path settings made absolute against ``cwd``."""
    out = dict(env)
    for name in PATH_SETTINGS:
        if out.get(name, "").strip():
            out[name] = str((cwd / Path(out[name].strip()).expanduser()).absolute())
    if out.get(ROOTS_SETTING, "").strip():
        parts = [p.strip() for p in out[ROOTS_SETTING].split(os.pathsep) if p.strip()]
        out[ROOTS_SETTING] = os.pathsep.join(str((cwd / Path(p).expanduser()).absolute()) for p in parts)
    return out


def command(folder: Path, port: int | None, address: str | None) -> list[str]:
    """The Streamlit command line for the viewer in ``folder``."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(folder / "main.py")]
    if port is not None:
        cmd += ["--server.port", str(int(port))]
    if address:
        cmd += ["--server.address", address]
    return cmd


def run(port: int | None = None, address: str | None = None, device: str | None = None) -> int:
    """Replace this process by Streamlit (so that a signal to ``i2m2-med app`` reaches the server
    and leaves nothing running); where ``exec`` is not available, wait for it as a child.
    ``device``: where the model runs (``I2M2_DEVICE`` for the app), checked here first."""
    folder = app_folder()
    check_streamlit()
    env = absolute_settings(dict(os.environ), Path.cwd())
    if device is not None:
        from i2m2_med.inference.loading import resolve_device

        resolve_device(device, "--device")  # a GPU that is not there: one line now, not a page error later
        env["I2M2_DEVICE"] = device
    cmd = command(folder, port, address)
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        os.chdir(folder)
        os.execve(sys.executable, cmd, env)
    try:
        return subprocess.call(cmd, cwd=folder, env=env)
    except KeyboardInterrupt:
        return 130
