"""`i2m2-med --version`: the package's one version, as installed."""

from __future__ import annotations

from importlib.metadata import version

from i2m2_med import __version__
from pipelines.cli import main


def test_version_prints_the_installed_version_and_exits_0(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out == f"i2m2-med {__version__}\n"
    assert version("i2m2-med") == __version__  # pyproject reads it from the package: one home
