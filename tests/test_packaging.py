"""Packaging: the package list is complete, a wheel carries the viewer (pages, helpers, server
settings) and the bundled model, and `i2m2-med app` serves the viewer from any folder."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import pytest
from setuptools import find_packages

from pipelines.app import absolute_settings

REPO = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_package_list_is_complete():
    """Every package under i2m2_med/, pipelines/ and app/ is listed (a new subpackage left out of
    pyproject.toml would be missing from a non-editable install); the commands and the viewer
    install under names of their own, never as a generic top-level ``pipelines`` or ``app``."""
    setuptools = _pyproject()["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    library = set(find_packages(where=str(REPO), include=["i2m2_med*"]))
    commands = {"i2m2_med_pipelines" + ("." + p if p else "") for p in ["", *find_packages(where=str(REPO / "pipelines"))]}
    viewer = {"i2m2_med_app" + ("." + p if p else "") for p in ["", *find_packages(where=str(REPO / "app"))]}
    assert listed == library | commands | viewer
    assert setuptools["package-dir"] == {"i2m2_med_app": "app", "i2m2_med_pipelines": "pipelines"}
    assert _pyproject()["project"]["scripts"] == {"i2m2-med": "i2m2_med_pipelines.cli:main"}


@pytest.mark.slow
def test_wheel_carries_the_viewer_and_the_model(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("i2m2_med-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    pages = {f"i2m2_med_app/views/{p.name}" for p in (REPO / "app" / "views").glob("*.py")}
    helpers = {f"i2m2_med_app/viewer/{p.name}" for p in (REPO / "app" / "viewer").glob("*.py")}
    assert pages and helpers and pages | helpers <= names
    assert {"i2m2_med_app/main.py", "i2m2_med_app/.streamlit/config.toml",
            "i2m2_med/assets/demo_model/model.safetensors", "i2m2_med/config/demo.yaml",
            "i2m2_med_pipelines/report/ablation.css", "i2m2_med_pipelines/app.py"} <= names
    assert not any(n.startswith(("app/", "pipelines/", "tests/", "benchmarks/")) for n in names)


def test_relative_app_settings_become_absolute(tmp_path):
    env = {"I2M2_DATA_ROOT": f"data{os.pathsep}/abs/other", "I2M2_MODEL": "runs/r1", "I2M2_CACHE_DIR": "",
           "HOME": "/home/x"}
    out = absolute_settings(env, tmp_path)
    assert out["I2M2_DATA_ROOT"] == f"{tmp_path / 'data'}{os.pathsep}/abs/other"
    assert out["I2M2_MODEL"] == str(tmp_path / "runs" / "r1")
    assert out["I2M2_CACHE_DIR"] == "" and out["HOME"] == "/home/x"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_app_command_serves_the_viewer_from_any_folder(tmp_path):
    port = _free_port()
    (tmp_path / "data").mkdir()
    env = {**os.environ, "I2M2_DATA_ROOT": "data", "I2M2_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "i2m2_med_pipelines.cli", "app", "--port", str(port)], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        health = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=2) as r:
                    health = r.read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert health == "ok", proc.poll()
        with urllib.request.urlopen(f"http://localhost:{port}/", timeout=5) as r:
            assert r.status == 200 and 'id="root"' in r.read().decode()
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    # the shipped server settings applied (listening on this machine only), wherever it started
    assert f"localhost:{port}" in out


def test_constraints_pin_every_declared_dependency_within_its_floor():
    """constraints.txt (the versions the suite passed on) pins each dependency pyproject.toml
    declares, at a version its floor allows."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    project = _pyproject()["project"]
    declared = [*project["dependencies"], *(d for extra in project["optional-dependencies"].values() for d in extra)]
    for text in declared:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (text, pins[name])


def test_app_without_streamlit_is_one_line_naming_the_extra(tmp_path):
    """The core install has no Streamlit: `i2m2-med app` says which extra brings it."""
    code = ("import sys; sys.modules['streamlit'] = None; "  # as if the app extra were not installed
            "from pipelines.cli import main; sys.exit(main(['app']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "the viewer needs Streamlit" in lines[0] and "pip install 'i2m2-med[app]'" in lines[0]


def test_extras_split_the_viewer_and_tracking_from_the_core():
    project = _pyproject()["project"]
    core = {d.split(">")[0] for d in project["dependencies"]}
    extras = project["optional-dependencies"]
    assert "streamlit" not in core and extras["app"] == ["streamlit>=1.35"]
    assert {d.split(">")[0] for d in extras["tracking"]} == {"tensorboard", "mlflow-skinny"}
    for extra in ("app", "tracking", "export"):  # the README's test command installs them all
        assert set(extras[extra]) <= set(extras["test"]), extra


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal of a GPU this machine does not have")
def test_app_refuses_a_gpu_that_is_not_there_before_serving(tmp_path):
    for device, expected in (("cuda", "--device: 'cuda' asks for a CUDA GPU but torch sees none"),
                             ("abacus", "--device: 'abacus' is not a device")):
        proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "app", "--device", device], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and expected in lines[0], proc.stderr
