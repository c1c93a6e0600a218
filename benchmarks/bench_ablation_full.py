"""Clinical ablation report: wall time of the full default ``i2m2-med ablate`` (target: at most
30 minutes on 2 cores) and what it concluded.

Full run: the 60-volume mixed-regime synthetic cohort of the ``ablation`` section (seed 0; its
synthesis is timed apart) and one default ``ablate`` run on it in a fresh report folder, nothing
reused from a cache: the seven variants over 3 seeds of 6 epochs, validation and test predictions,
the robustness conditions (modality dropped, random and equispaced undersampling x2/4/8, three
noise levels), the statistics with 1000 bootstrap replicates, the regime study (two further
cohorts of 60 volumes of 20 slices, three variants over 2 seeds on each) and the report. About
25 minutes. Quick run: the ``ablation`` section's tiny cohort, one variant, one seed, one epoch,
no regime study.
"""

from __future__ import annotations

from typing import Any

from benchmarks.bench_ablation import measure
from benchmarks.common import Context

TITLE = "Clinical ablation report: full default `i2m2-med ablate` wall time (ablation-issue target)"


def run(ctx: Context) -> dict[str, Any]:
    return measure(ctx, full_ablation=True, doc=__doc__ or "")
