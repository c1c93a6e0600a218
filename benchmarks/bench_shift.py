"""The distribution-shift score of the bundled model: what it costs per slice, and how well it
tells in-distribution studies from noise, other body parts and other contrasts.

In distribution: the held-out mixed-regime cohort (:mod:`i2m2_med.synth.heldout`, seed 90003,
160 volumes; none of it was used to fit the statistics or their threshold), scored from its
tensor cache with the model's own clinical table. Out of distribution, each scored by the same
rule (:mod:`i2m2_med.inference.shift`): **noise** -- NIfTI volumes of Rayleigh-distributed
magnitude (the modulus of complex Gaussian noise) with uniform phase, read through the project's
NIfTI reader; **other body parts** -- the real scanner MR images that ship with pydicom (a
64 x 64 axial slice, a 10-frame head series, a shoulder slice, an abdominal slice) and nibabel's
anatomical brain volume, every one with its tags rewritten to an acquired coronal PD series
without a body part, so that only the pixels can tell; **other contrasts** -- the held-out
knees' magnitude images remapped at the model's input (inverted: the brightest tissue darkest;
gamma 0.5; gamma 2.0), the phase kept: the generator makes PD and PD-FS only, so these remaps
stand in for T1 / T2 / other weightings. Per group: the AUROC of the shift score (in
distribution = 0, out = 1) and the fraction of studies above the threshold (for the
in-distribution studies: the false-alarm rate; the threshold is the 99th percentile of a log-normal fitted to the
model's 58 validation studies' scores).

Cost: ``predict_study`` on the same synthetic knee volumes with the statistics and without them
(the same weights), interleaved; the difference per slice is what the score adds (the features
come from the forward pass the prediction runs anyway; the score is one ``D x D`` product per
slice and image expert).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_heldout import heldout_cohort
from benchmarks.common import Context

TITLE = "Distribution-shift score: cost per slice and AUROC against noise, other body parts, other contrasts"

QUICK_VOLUMES = 4
NOISE_STUDIES = 12
NOISE_SLICES = 16
COST_VOLUMES = 2
COST_SLICES = 32
PYDICOM_FILES = ("MR_small.dcm", "emri_small.dcm", "MR2_UNCR.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm")
CONTRASTS = {"inverted": lambda x: np.clip(x.max() - x, 0.0, None), "gamma 0.5": lambda x: np.sqrt(np.clip(x, 0.0, None)),
             "gamma 2.0": lambda x: np.clip(x, 0.0, None) ** 2}


def _retag_as_knee(src: str, dst: Path) -> None:
    import pydicom

    ds = pydicom.dcmread(src)
    ds.ImageOrientationPatient = [-1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
    ds.SeriesDescription = "PD COR"
    for key in ("BodyPartExamined", "StudyDescription", "ProtocolName"):
        if key in ds:
            delattr(ds, key)
    dst.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst / Path(src).name)


def _other_body_parts(folder: Path) -> Path:
    import nibabel
    from pydicom.data import get_testdata_file

    for name in PYDICOM_FILES:
        _retag_as_knee(get_testdata_file(name), folder / Path(name).stem)
    anat = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
    if anat.is_file():
        (folder / "nifti").mkdir(parents=True, exist_ok=True)
        shutil.copy(anat, folder / "nifti" / "anatomical.nii")
    return folder


def _noise(folder: Path, n: int, seed: int) -> Path:
    import nibabel

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        z = rng.standard_normal((320, 320, NOISE_SLICES)) + 1j * rng.standard_normal((320, 320, NOISE_SLICES))
        affine = np.diag([0.5, 0.5, 3.0, 1.0])
        nibabel.save(nibabel.Nifti1Image(np.abs(z).astype(np.float32) * 100.0, affine), folder / f"noise{i:02d}.nii.gz")
        nibabel.save(nibabel.Nifti1Image(np.angle(z).astype(np.float32), affine), folder / f"noise{i:02d}_phase.nii.gz")
    return folder


def _study_scores(model: Any, meta: Any, folder: Path) -> list[float]:
    from i2m2_med.inference.predict import predict_study
    from i2m2_med.io.discover import discover

    return [float(predict_study(model, meta, s).shift["score"]) for s in discover(folder).studies]


def _contrast_scores(model: Any, dataset: Any, remap: Any, batch_size: int = 128) -> np.ndarray:
    """Every study's score with its magnitude images remapped by ``remap`` (per slice)."""
    import torch

    from i2m2_med.inference.shift import dataset_features, study_scores

    class Remapped(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(dataset)

        def __getitem__(self, i: int) -> dict:
            sample = dict(dataset[i])
            x = sample["magnitude"].numpy()
            sample["magnitude"] = torch.from_numpy(np.ascontiguousarray(remap(x)).astype(np.float32))
            return sample

    feats, ids = dataset_features(model, Remapped(), batch_size, torch.device("cpu"))
    return study_scores(model, feats, ids)


def _auroc(inside: np.ndarray, outside: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(inside) == 0 or len(outside) == 0:
        return None
    y = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    return float(roc_auc_score(y, np.r_[inside, outside]))


def _cost(model: Any, meta: Any, folder: Path, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds per slice of predict_study with and without the statistics, interleaved."""
    from i2m2_med.inference.predict import predict_study
    from i2m2_med.io.discover import discover

    stats = {k: v.clone() for k, v in model.shift_statistics().items()}
    studies = discover(folder).studies
    n = sum(s.n_slices for s in studies)
    with_s, without = [], []
    for r in range(repeats + 1):  # the first round warms up
        for on in (True, False):
            model.set_shift_statistics(stats if on else None)
            t0 = time.perf_counter()
            for s in studies:
                predict_study(model, meta, s)
            if r:
                (with_s if on else without).append((time.perf_counter() - t0) / n)
    model.set_shift_statistics(stats)
    return with_s, without


def run(ctx: Context) -> dict[str, Any]:
    import torch

    from i2m2_med.data.dataset import SliceDataset
    from i2m2_med.inference.loading import load_model
    from i2m2_med.inference.shift import dataset_features, study_scores, threshold
    from i2m2_med.synth import generate_cohort

    threads = torch.get_num_threads()
    torch.set_num_threads(1 if ctx.quick else max(1, threads))
    try:
        model, meta = load_model(None)
        t = threshold(model)
        if t is None:
            raise RuntimeError("the bundled model carries no shift statistics (i2m2-med fit-shift adds them)")
        cohort, cache = heldout_cohort("mixed", ctx, QUICK_VOLUMES if ctx.quick else None)
        dataset = SliceDataset(cohort, None, image_size=meta.config.image_size, cache_size=0, tensor_cache=cache)
        started = time.perf_counter()
        feats, ids = dataset_features(model, dataset, 128, torch.device("cpu"))
        inside = study_scores(model, feats, ids)
        ctx.log(f"in distribution: {len(inside)} studies in {time.perf_counter() - started:.0f} s")
        groups: dict[str, np.ndarray] = {}
        groups["noise"] = np.asarray(_study_scores(model, meta, _noise(ctx.workdir / "noise", 3 if ctx.quick else NOISE_STUDIES, ctx.seed)))
        groups["other body parts"] = np.asarray(_study_scores(model, meta, _other_body_parts(ctx.workdir / "parts")))
        contrasts = {name: _contrast_scores(model, dataset, fn) for name, fn in CONTRASTS.items()}
        groups["other contrasts"] = np.concatenate(list(contrasts.values()))
        knees = ctx.workdir / "knees"
        generate_cohort(knees, COST_VOLUMES, ctx.seed + 5, regime="mixed", n_slices=8 if ctx.quick else COST_SLICES)
        with_s, without = _cost(model, meta, knees / "h5", 1 if ctx.quick else ctx.repeats)
    finally:
        torch.set_num_threads(threads)

    rows = {"in distribution (held-out knees)": inside, **groups, **{f"contrast: {k}": v for k, v in contrasts.items()}}
    flagged = {k: float(np.mean(v > t)) if len(v) else None for k, v in rows.items()}
    aurocs = {k: _auroc(inside, v) for k, v in groups.items()}
    aurocs.update({f"contrast: {k}": _auroc(inside, v) for k, v in contrasts.items()})
    figures = [
        {"key": "ms_per_slice_with", "label": "predict_study with the shift score, per slice", "unit": "ms",
         "values": [1000 * v for v in with_s]},
        {"key": "ms_per_slice_without", "label": "predict_study without it (same weights), per slice", "unit": "ms",
         "values": [1000 * v for v in without]},
        {"key": "ms_per_slice_added", "label": "added by the shift score, per slice", "unit": "ms",
         "values": [1000 * (a - b) for a, b in zip(with_s, without)]},
    ]
    figures += [{"key": f"auroc_{k.replace(' ', '_').replace(':', '')}", "label": f"AUROC, in distribution against {k}",
                 "unit": "", "values": [v] if v is not None else []} for k, v in aurocs.items()]
    figures += [{"key": f"flagged_{k.replace(' ', '_').replace(':', '').replace('(', '').replace(')', '')}",
                 "label": f"fraction above the threshold: {k}", "unit": "", "values": [v] if v is not None else []}
                for k, v in flagged.items()]
    ratios = [{"key": "overhead", "label": "predict_study time with the score / without it",
               "values": [a / b for a, b in zip(with_s, without) if b > 0], "target": None}]
    notes = [
        f"Model {meta.fingerprint} ({meta.variant}); threshold {t:.3f}; experts scored: "
        f"{', '.join(meta.metrics.get('shift', {}).get('experts', []))}.",
        "Studies per group: " + "; ".join(f"{k} {len(v)}" for k, v in rows.items()) + ".",
        "Study scores, median [min, max]: " + "; ".join(
            f"{k} {np.median(v):.2f} [{v.min():.2f}, {v.max():.2f}]" for k, v in rows.items() if len(v)) + ".",
        f"False alarms: {int(np.sum(inside > t))} of {len(inside)} in-distribution studies score above the threshold "
        f"({flagged['in distribution (held-out knees)']:.1%}; the quantile names 1 %); the threshold is the 99th percentile "
        f"of a log-normal fitted to {meta.metrics.get('shift', {}).get('val_studies')} validation studies' scores "
        f"(their empirical 99th percentile, {meta.metrics.get('shift', {}).get('val_scores', {}).get('empirical_quantile', float('nan')):.3f}, "
        "is in effect their largest score).",
        f"Cost measured on {COST_VOLUMES} synthetic volumes of {8 if ctx.quick else COST_SLICES} slices read from k-space "
        "(reading, transforms and the forward pass are in both figures).",
    ]
    return {
        "description": __doc__.split("\n\n", 1)[1].strip(),
        "repeats": len(with_s),
        "params": {"heldout_volumes": len(inside), "noise_studies": len(groups["noise"]), "threshold": t,
                   "quantile": meta.metrics.get("shift", {}).get("quantile")},
        "figures": figures,
        "ratios": ratios,
        "notes": notes,
        "shift": {"auroc": aurocs, "flagged": flagged, "threshold": t,
                  "scores": {k: [float(x) for x in v] for k, v in rows.items()}},
    }
