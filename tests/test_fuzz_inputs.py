"""Property-based fuzzing of the readers: mutated fastMRI h5, DICOM and NIfTI files (flipped bytes,
runs of 0xFF, cuts, inserted bytes) beside an intact study of the same kind. For every input,
discovering the folder and reading every slice of what was found either works or fails with the
reader's typed error naming the file (one line, no other exception), within a bounded time, and
the intact study beside it is found and reads exactly as before.

Fixed seed (derandomized), a bounded number of inputs per kind so that the suite stays within
its time budget; the declared-size limits (``i2m2_med/io/limits.py``) keep memory bounded, which
``test_hostile_inputs.py`` checks in a process with a small address space."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from diagnose_inputs import write_dicom_study, write_h5, write_nifti
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.fuzzing import mutate, read_all

EXAMPLES_PER_KIND = 40
SECONDS_PER_INPUT = 20.0


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small real study per kind (the files fuzzing mutates) and an intact study of each kind."""
    root = tmp_path_factory.mktemp("fuzz-seeds")
    write_h5(root / "h5" / "seed.h5", n_slices=2, width=368, seed=1)
    write_dicom_study(root / "dicom", n_slices=2, phase=True, patient=0, size=32, seed=2)
    write_nifti(root / "nifti" / "seed.nii.gz", n_slices=2, size=32, phase=False, seed=3)
    write_h5(root / "good" / "good.h5", n_slices=2, width=368, seed=4)
    return {"h5": root / "h5" / "seed.h5", "dicom": root / "dicom" / "magnitude" / "im000.dcm",
            "nifti": root / "nifti" / "seed.nii.gz", "good": root / "good" / "good.h5", "dicom_folder": root / "dicom"}


def _read_everything(folder: Path) -> dict[str, list[np.ndarray]]:
    """Discover ``folder`` and read every slice of every study: study id -> its slices' arrays.
    Only the readers' typed errors may come out of a bad file, each one line."""
    out, refused = read_all(folder)
    for reason in refused:
        assert reason and "\n" not in reason and "Traceback" not in reason, reason
    return out


mutation = st.one_of(  # the kinds of benchmarks.fuzzing, with its ranges
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(0, 255)),
    st.tuples(st.just("ff"), st.floats(0, 1), st.integers(1, 16)),
    st.tuples(st.just("cut"), st.floats(0, 1), st.just(0)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.integers(1, 64)),
)


def _fuzz(kind: str, seeds: dict[str, Path], tmp_path: Path, mutations: list[tuple[str, float, int]]) -> None:
    folder = tmp_path / f"case-{kind}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    good = shutil.copy(seeds["good"], folder / "good.h5")
    expected = _read_everything(seeds["good"].parent)
    if kind == "dicom":  # one image of a series mutated, the rest intact
        shutil.copytree(seeds["dicom_folder"], folder / "series")
        target = folder / "series" / "magnitude" / "im000.dcm"
    else:
        target = folder / seeds[kind].name
    target.write_bytes(mutate(seeds[kind].read_bytes(), mutations))
    started = time.perf_counter()
    got = _read_everything(folder)
    assert time.perf_counter() - started < SECONDS_PER_INPUT
    assert len(got["good"]) == len(expected["good"])  # the intact study beside it, unchanged
    for a, b in zip(got["good"], expected["good"]):
        assert np.array_equal(a, b)
    assert Path(good).read_bytes() == seeds["good"].read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["h5", "dicom", "nifti"])
def test_mutated_files_fail_in_one_line_and_spare_the_good_study(kind: str, seeds, tmp_path: Path) -> None:
    @settings(max_examples=EXAMPLES_PER_KIND, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.lists(mutation, min_size=1, max_size=4))
    def check(mutations: list[tuple[str, float, int]]) -> None:
        _fuzz(kind, seeds, tmp_path, mutations)

    check()
