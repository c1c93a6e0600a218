"""`i2m2-med synth OUT_DIR --volumes N --seed S`: write a synthetic knee cohort.

Calls :func:`i2m2_med.synth.generate_cohort`; shows a progress bar of volumes done on stderr
and a one-line summary at the end. Bad arguments raise :class:`i2m2_med.errors.UsageError`
(the CLI prints one line and exits 1).

Exit codes: 0 done; 1 usage error; 130 interrupted (files already written are complete: each is
written under a temporary name and renamed).
"""

from __future__ import annotations

import sys
from pathlib import Path

from i2m2_med.synth import generate_cohort
from i2m2_med.synth.cohort import validate
from i2m2_med.synth.volume import N_COILS


def run(
    out_dir: Path,
    *,
    volumes: int,
    seed: int,
    regime: str = "mixed",
    label_noise: float = 0.0,
    multicoil: bool = False,
    dicom: bool = False,
    nifti: bool = False,
    workers: int = 1,
    slices: int | None = None,
    coils: int = N_COILS,
    progress: bool = True,
) -> int:
    """Generate the cohort; returns the exit code (0)."""
    from rich.console import Console

    from i2m2_med.progress import Bar

    # fail on bad arguments before drawing anything
    validate(out_dir, volumes, seed, regime, label_noise, multicoil, dicom, nifti, workers, slices, coils)
    err = Console(file=sys.stderr)
    with Bar(volumes, "volumes", "synthesising", progress) as bar:
        manifest = generate_cohort(
            out_dir, volumes, seed, regime=regime, label_noise=label_noise, multicoil=multicoil, dicom=dicom,
            nifti=nifti, workers=workers, progress=bar.set_completed, n_slices=slices, n_coils=coils,
        )
    counts, prev = manifest["counts"], manifest["prevalence"]["slice_annotated"]
    err.print(
        f"wrote {counts['volumes']} volumes ({counts['subjects']} subjects, {counts['slices']} slices) to {out_dir}; "
        f"regime {manifest['regime']}, label noise {manifest['label_noise']:g}; slice prevalence "
        + ", ".join(f"{h} {prev[h]:.3f}" for h in manifest["heads"]),
        highlight=False,
    )
    return 0
