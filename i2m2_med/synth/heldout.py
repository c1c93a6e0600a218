"""The held-out benchmark cohorts: one documented generator seed per regime.

Numbers that claim something about the model (the bundled model's quality, the regime study's
test of the paper's claim) are measured on these cohorts. They are generated from the seeds
below and from nothing else, so anyone can regenerate them; no training run, early stopping,
recipe choice or calibration of this project reads them: training cohorts use other seeds (the
demo cohort seed 0, the regime study's training cohorts the seeds of
:mod:`i2m2_med.ablation.settings`), and a synthetic subject's id carries its cohort's seed, so a
held-out subject cannot also be a training subject.

Every study of a held-out cohort is a test study: its ``splits.csv`` (written by the generator
for its own purposes) is not used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from i2m2_med.data.cache import TensorCache, cache_then_drop
from i2m2_med.errors import UsageError
from i2m2_med.synth.cohort import generate_cohort, plan_cohort
from i2m2_med.synth.regimes import REGIMES

HELDOUT_SEEDS: dict[str, int] = {"intra": 90001, "inter": 90002, "mixed": 90003}
"""Generator seed of each regime's held-out cohort."""
HELDOUT_VOLUMES = 160
"""Volumes of each held-out cohort: 103 to 106 subjects for the seeds above (a subject has a PD
and a PD-FS study with probability 0.5)."""
MIN_HELDOUT_SUBJECTS = 100


def heldout_subjects(regime: str, volumes: int = HELDOUT_VOLUMES) -> int:
    """Subjects in the held-out cohort of ``regime`` (from the generator's plan, nothing written)."""
    if regime not in HELDOUT_SEEDS:
        raise UsageError(None, f"unknown regime {regime!r}; choose one of {', '.join(HELDOUT_SEEDS)}")
    return len(plan_cohort(volumes, HELDOUT_SEEDS[regime]))


def generate_heldout(
    regime: str,
    out_dir: str | os.PathLike,
    cache: TensorCache,
    workers: int = 1,
    volumes: int = HELDOUT_VOLUMES,
    keep: Callable[[str], bool] = lambda study_id: False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the held-out cohort of ``regime`` into ``out_dir``: its tables (annotations,
    tabular, episodes, manifest) and, through ``cache``, its model-resolution images; the k-space
    of every study is dropped after caching unless ``keep(study_id)``. Load it with
    ``load_cohort(out_dir, tensor_cache=cache)``. ``volumes`` below :data:`HELDOUT_VOLUMES` is
    for quick checks only (fewer than 100 subjects claim nothing)."""
    if regime not in REGIMES or regime not in HELDOUT_SEEDS:
        raise UsageError(None, f"unknown regime {regime!r}; choose one of {', '.join(HELDOUT_SEEDS)}")
    out = Path(out_dir)
    generate_cohort(
        out, int(volumes), HELDOUT_SEEDS[regime], regime=regime, workers=workers, progress=progress,
        on_written=cache_then_drop(cache, keep),
    )
    return out
