"""`i2m2-med fit-shift RUN --data COHORT`: add the distribution-shift statistics to an existing run.

``train`` fits them at the end of training; a run trained before they existed (or the bundled
demo model: ``i2m2-med fit-shift i2m2_med/assets/demo_model --data demo_out/cohort``) gets them
here: the image experts' features of the cohort's training slices, the threshold on its
validation studies (:mod:`i2m2_med.inference.shift`). The checkpoint is rewritten in place with
the same weights, metadata and metrics plus the statistics (so its fingerprint changes: the
model's answers now include ``out_of_scope``); ``metrics.json`` beside it gets a ``shift`` block.

Exit codes: 0 written; 1 bad run, cohort or option (one line on stderr, nothing written).
"""

from __future__ import annotations

import os
import sys


def run(run_dir: str | os.PathLike, data: str | os.PathLike, *, allow_other_data: bool = False, batch_size: int = 64) -> int:
    from i2m2_med.checkpoint import read_checkpoint_meta
    from i2m2_med.inference.loading import resolve_checkpoint
    from i2m2_med.inference.shift import fit_shift_run

    record = fit_shift_run(run_dir, data, batch_size=batch_size, allow_other_data=allow_other_data)
    path = resolve_checkpoint(run_dir)
    meta = read_checkpoint_meta(path)
    n = sum(record["train_slices"].values()) // max(1, len(record["train_slices"]))
    print(f"shift statistics of {', '.join(record['experts'])} fitted on {n} training slices; threshold "
          f"{record['threshold']:.3f} ({record['quantile']:.0%} point of a log-normal fitted to {record['val_studies']} validation studies) -> {path} "
          f"(fingerprint {meta.fingerprint})", file=sys.stderr)
    return 0
