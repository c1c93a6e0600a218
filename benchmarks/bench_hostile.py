"""Hostile inputs: how fast the readers are fuzzed, and what the resource limits cost good files.

Fuzzing: the generator writes a small cohort (fastMRI h5, DICOM and NIfTI, 8 slices per volume);
each input is one of its files mutated (1-4 of :mod:`benchmarks.fuzzing`'s mutations: flipped
bytes, runs of 0xFF, a cut, inserted bytes; a seeded generator), placed beside an intact h5
study, and the folder is discovered and every slice of what was found read, as a run reads it
(:func:`benchmarks.fuzzing.read_all`; for DICOM one image of a series is mutated, the rest
intact). Reported per kind: inputs per minute, the slowest input, and how many inputs still
read, were refused in one line, or raised anything else (a defect: the tests' fuzz suite fails
on it). The intact study must read identically every time.

The limits' cost: discovering and reading every slice of the intact files of each format, with
the limits in force (the declared-size checks of :mod:`i2m2_med.io.limits` and the regular-file
check) and with both replaced by no-ops, after one read to warm the page cache, several rounds
that alternate which goes first; the ratio is the median time with the limits over the median
time without.
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Context

TITLE = "Hostile inputs: fuzzing rate and the cost of the resource limits on good files"

FULL = {"volumes": 2, "slices": 8, "inputs": 60, "rounds": 7}
QUICK = {"volumes": 1, "slices": 8, "inputs": 4, "rounds": 2}
KINDS = ("h5", "dicom", "nifti")


def _targets(cohort: Path) -> dict[str, Path]:
    """A file of each kind to mutate (the first volume's)."""
    return {
        "h5": sorted((cohort / "h5").glob("*.h5"))[0],
        "dicom": sorted((cohort / "dicom").glob("*/magnitude/*.dcm"))[0],
        "nifti": sorted(p for p in (cohort / "nifti").glob("*.nii.gz") if not p.name.endswith("_phase.nii.gz"))[0],
    }


def _fuzz(kind: str, target: Path, good: Path, expected: list[np.ndarray], n: int, rng: np.random.Generator,
          work: Path) -> dict[str, Any]:
    from benchmarks.fuzzing import mutate, random_mutations, read_all

    counts = {"read": 0, "refused": 0, "defect": 0}
    seconds: list[float] = []
    data = target.read_bytes()
    for i in range(n):
        folder = work / f"{kind}-{i}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        shutil.copy(good, folder / "good.h5")
        if kind == "dicom":  # one image of the series mutated, the rest (and the phase series) intact
            shutil.copytree(target.parents[1], folder / "series")
            place = folder / "series" / target.parent.name / target.name
        else:
            place = folder / target.name
        place.write_bytes(mutate(data, random_mutations(rng)))
        start = time.perf_counter()
        try:
            got, refused = read_all(folder)
        except Exception:  # noqa: BLE001 -- counted: the fuzz tests fail on any such input
            counts["defect"] += 1
            seconds.append(time.perf_counter() - start)
            continue
        seconds.append(time.perf_counter() - start)
        intact = got.get("good")
        if intact is None or len(intact) != len(expected) or not all(np.array_equal(a, b) for a, b in zip(intact, expected)):
            counts["defect"] += 1
        elif refused:
            counts["refused"] += 1
        else:
            counts["read"] += 1
        shutil.rmtree(folder, ignore_errors=True)
    return {"counts": counts, "seconds": seconds}


def _read_time(folder: Path) -> float:
    from benchmarks.fuzzing import read_all

    start = time.perf_counter()
    got, refused = read_all(folder)
    assert got and not refused, f"intact files of {folder.name} did not read: {refused[:1]}"
    return time.perf_counter() - start


class _NoLimits:
    """Within the block, the limits' checks do nothing."""

    def __enter__(self) -> "_NoLimits":
        import i2m2_med.io.dicom as dicom
        import i2m2_med.io.fastmri_h5 as h5
        import i2m2_med.io.limits as limits
        import i2m2_med.io.nifti as nifti

        self._saved = [(limits.ReadLimits, "check", limits.ReadLimits.check)]
        self._saved += [(m, "check_regular_file", m.check_regular_file) for m in (dicom, h5, nifti)]
        limits.ReadLimits.check = lambda self, *a, **k: None
        for m in (dicom, h5, nifti):
            m.check_regular_file = lambda path: None
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, name, value in self._saved:
            setattr(owner, name, value)


def run(ctx: Context) -> dict[str, Any]:
    from benchmarks.fuzzing import read_all
    from i2m2_med.synth import generate_cohort

    plan = QUICK if ctx.quick else FULL
    cohort = ctx.workdir / "hostile_cohort"
    shutil.rmtree(cohort, ignore_errors=True)
    generate_cohort(cohort, plan["volumes"], ctx.seed, dicom=True, nifti=True, workers=1, n_slices=plan["slices"])
    targets = _targets(cohort)
    good_dir = ctx.workdir / "hostile_good"
    shutil.rmtree(good_dir, ignore_errors=True)
    good_dir.mkdir()
    good = shutil.copy(sorted((cohort / "h5").glob("*.h5"))[-1], good_dir / "good.h5")
    expected = read_all(good_dir)[0]["good"]
    rng = np.random.default_rng(ctx.seed)
    fuzz = {kind: _fuzz(kind, targets[kind], Path(good), expected, plan["inputs"], rng, ctx.workdir / "hostile_fuzz")
            for kind in KINDS}

    folders = {kind: cohort / kind for kind in KINDS}
    timed: dict[str, dict[str, list[float]]] = {k: {"with": [], "without": []} for k in KINDS}
    for folder in folders.values():
        _read_time(folder)  # warm the page cache and the imports first
    for r in range(plan["rounds"]):
        for kind, folder in folders.items():
            for limits_on in ((True, False) if r % 2 == 0 else (False, True)):
                if limits_on:
                    timed[kind]["with"].append(_read_time(folder))
                else:
                    with _NoLimits():
                        timed[kind]["without"].append(_read_time(folder))
    figures, ratios, notes = [], [], []
    for kind in KINDS:
        secs = fuzz[kind]["seconds"]
        c = fuzz[kind]["counts"]
        figures.append({"key": f"fuzz_rate_{kind}", "label": f"fuzzing {kind}: inputs per minute", "unit": "/min",
                        "values": [60.0 * len(secs) / sum(secs)] if secs and sum(secs) > 0 else []})
        figures.append({"key": f"fuzz_slowest_{kind}", "label": f"fuzzing {kind}: slowest input", "unit": "s",
                        "values": [max(secs)] if secs else []})
        notes.append(f"fuzzing {kind}: {len(secs)} inputs; {c['read']} still read, {c['refused']} refused in one line, "
                     f"{c['defect']} defects (another exception, or the intact study changed)")
    for kind in KINDS:
        w, wo = statistics.median(timed[kind]["with"]), statistics.median(timed[kind]["without"])
        figures.append({"key": f"read_{kind}", "label": f"reading the intact {kind} files, limits in force", "unit": "s",
                        "values": timed[kind]["with"]})
        ratios.append({"key": f"limits_cost_{kind}", "label": f"{kind}: time with the limits / without (medians)",
                       "values": [w / wo], "target": None})
    all_secs = [s for kind in KINDS for s in fuzz[kind]["seconds"]]
    figures.insert(0, {"key": "fuzz_rate", "label": "fuzzing, all kinds: inputs per minute", "unit": "/min",
                       "values": [60.0 * len(all_secs) / sum(all_secs)] if all_secs else []})
    return {
        "description": __doc__.split("\n\n", 1)[1].strip(),
        "repeats": 1,
        "params": {**plan, "kinds": list(KINDS)},
        "figures": figures,
        "ratios": ratios,
        "notes": notes,
    }
