"""Shared fixtures: the location of the read-only shared data (fastMRI+ annotations)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests that need it skip where it is absent."""
    if not (SHARED_DATA / "fastmri_plus" / "knee.csv").is_file():
        pytest.skip(f"fastMRI+ annotations not found at {SHARED_DATA / 'fastmri_plus'} (a user's machine)")
    return SHARED_DATA


TINY_COHORT_VOLUMES = 6
TINY_COHORT_SEED = 7
TINY_COHORT_SLICES = 12


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic cohort (6 volumes of 12 slices, mixed regime) written once per test
    session by the real generator: ``h5/*.h5``, ``annotations/``, ``tabular.csv``, ``splits.csv``,
    ``manifest.json``. Read-only for tests: copy it before changing anything."""
    from i2m2_med.synth import generate_cohort

    out = tmp_path_factory.mktemp("tiny_cohort") / "cohort"
    generate_cohort(out, TINY_COHORT_VOLUMES, TINY_COHORT_SEED, regime="mixed", n_slices=TINY_COHORT_SLICES)
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module (its trainings are tiny; two workers of pytest-xdist share
    the two cores), restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def small_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cpu config at 32 x 32 pixels as a YAML file (also exercises --config FILE.yaml)."""
    from i2m2_med.config import load_config

    path = tmp_path_factory.mktemp("config") / "small.yaml"
    path.write_text(load_config("cpu").with_updates(image_size=32, name="small").to_yaml())
    return path
