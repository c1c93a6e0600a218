"""Small cohorts: the split check before training, and `ablate --cv K` (subject-level K-fold
cross-validation) with its refusal of a cohort too small even for that."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from i2m2_med.ablation.crossval import cv_folds, fold_notes
from i2m2_med.data.cohort import load_cohort
from i2m2_med.errors import UsageError
from pipelines.cli import main

CV_VOLUMES, CV_SEED, CV_SLICES = 30, 8, 12
"""A mixed-regime cohort whose three subject folds each train on positives and negatives of
every head (ACL is rare in the generator: most smaller cohorts are refused)."""


@pytest.fixture(scope="module")
def cv_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from i2m2_med.synth import generate_cohort

    out = tmp_path_factory.mktemp("cv") / "cohort"
    generate_cohort(out, CV_VOLUMES, CV_SEED, regime="mixed", n_slices=CV_SLICES)
    return out


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_folds_partition_subjects_and_keep_knees_together(cv_cohort: Path) -> None:
    cohort = load_cohort(cv_cohort)
    folds = cv_folds(cohort, 3)
    assert len(folds) == 3
    tested = [sid for f in folds for sid, split in f.split.items() if split == "test"]
    assert sorted(tested) == sorted(s.study_id for s in cohort.studies)  # every study tested exactly once
    for f in folds:
        by_subject: dict[str, set[str]] = {}
        for sid, split in f.split.items():
            by_subject.setdefault(f.subjects[sid], set()).add(split)
        assert all(len(v) == 1 for v in by_subject.values())  # a knee's studies share a split
        assert {"train", "val", "test"} == set(f.split.values())
    # deterministic
    again = cv_folds(load_cohort(cv_cohort), 3)
    assert [f.split for f in again] == [f.split for f in folds]
    assert all(isinstance(n, str) and n.startswith("fold ") for n in fold_notes(folds))


def test_too_small_for_folds_is_refused(tiny_cohort: Path) -> None:
    cohort = load_cohort(tiny_cohort)
    with pytest.raises(UsageError, match="cross-validation"):
        cv_folds(cohort, 2)
    with pytest.raises(UsageError, match=">= 2"):
        cv_folds(cohort, 1)


def test_ablate_cv_refuses_tiny_cohort_in_one_line(tiny_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    rc = main(["ablate", "--data", str(tiny_cohort), "--out", str(out), "--cv", "2", "--variants", "mag", "--seeds", "1",
               "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert "too small for 2-fold cross-validation" in err and "use fewer folds or more studies" in err
    assert not (out / "runs").exists()  # refused before any training


@pytest.mark.slow
def test_ablate_cv_tests_every_study_once(cv_cohort: Path, small_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    rc = main(["ablate", "--data", str(cv_cohort), "--out", str(out), "--cv", "3", "--variants", "mag", "--seeds", "1",
               "--epochs", "1", "--n-boot", "20", "--no-robustness", "--no-regime-study", "--config", str(small_config)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "3-fold cross-validation by subject" in captured.err
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    cv = results["data"]["cv"]
    assert cv["folds"] == 3 and len(cv["per_fold"]) == 3
    assert cv["pooled_test"]["studies"] == CV_VOLUMES
    assert sum(f["test"]["studies"] for f in cv["per_fold"]) == CV_VOLUMES
    # three trained folds, pooled into one (variant, seed) whose test table covers every slice
    assert len(list((out / "runs").glob("mag-s0-*"))) == 3
    table = results["variants"]["mag"]["table"]["slice"]
    assert table["per_head"]["mtear"]["n"] == CV_VOLUMES * CV_SLICES
    assert table["mean_pathologies"]["auroc"] is not None
    assert np.isfinite(table["mean_pathologies"]["auroc"])
    assert len(results["runs"][0]["training"]["folds"]) == 3


@pytest.mark.slow
def test_train_reports_split_problems_first(tiny_cohort: Path, small_config: Path, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    from i2m2_med.training.fit import train
    from i2m2_med.training.options import TrainerOptions

    cohort = load_cohort(tiny_cohort)
    expected = cohort.split_problems()
    assert any("acl: no positive study in the test split" in p for p in expected)  # the tiny cohort's test split
    with caplog.at_level(logging.WARNING, logger="i2m2_med.training"):
        result = train(tiny_cohort, tmp_path / "run", variant="mag", config=small_config, epochs=1,
                       options=TrainerOptions(progress=False))
    logged = [r.getMessage() for r in caplog.records if r.name == "i2m2_med.training"]
    assert logged == [f"split check: {p}" for p in expected]
    assert result.metrics["split_problems"] == expected


@pytest.mark.slow
def test_a_grid_reports_split_problems_once_not_once_per_run(tiny_cohort: Path, small_config: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """The ablation trains many runs on one cohort: its split problems are logged once for the
    grid (the runs do not repeat them)."""
    from i2m2_med.ablation.grid import run_grid
    from i2m2_med.ablation.settings import default_settings
    from i2m2_med.config import load_config
    from i2m2_med.data.cohort import data_fingerprint

    cohort = load_cohort(tiny_cohort)
    expected = cohort.split_problems()
    assert expected
    with caplog.at_level(logging.WARNING, logger="i2m2_med.training"):
        grid = run_grid(cohort, tiny_cohort, tmp_path / "runs", ["mag", "tab"], [0], load_config(small_config), 1,
                        data_fingerprint(cohort), default_settings(quick=True))
    assert sorted(r.status for r in grid.records.values()) == ["trained", "trained"]
    logged = [r.getMessage() for r in caplog.records if r.name == "i2m2_med.training"]
    assert logged == [f"split check: {p}" for p in expected]
