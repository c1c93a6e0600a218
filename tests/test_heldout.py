"""The held-out benchmark cohorts: documented seeds, at least 100 subjects, no overlap."""

from __future__ import annotations

from i2m2_med.synth.heldout import HELDOUT_SEEDS, MIN_HELDOUT_SUBJECTS, heldout_subjects
from i2m2_med.synth.regimes import REGIMES


def test_one_seed_per_regime_and_at_least_100_subjects_each():
    assert set(HELDOUT_SEEDS) == set(REGIMES)
    assert len(set(HELDOUT_SEEDS.values())) == len(HELDOUT_SEEDS)
    for regime in REGIMES:
        assert heldout_subjects(regime) >= MIN_HELDOUT_SUBJECTS


def test_heldout_seeds_are_not_training_seeds():
    from i2m2_med.ablation.settings import AblationSettings
    from pipelines.demo import DEMO_SEED

    assert DEMO_SEED not in HELDOUT_SEEDS.values()
    assert AblationSettings().regime_cohort_seed not in HELDOUT_SEEDS.values()
