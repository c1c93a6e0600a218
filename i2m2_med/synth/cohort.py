"""Generate a whole synthetic cohort into a folder: plan, generate (optionally in parallel), write.

Determinism: everything derives from ``seed`` through :class:`numpy.random.SeedSequence` with
explicit spawn keys -- ``(0,)`` for the cohort plan (subjects, acquisitions per subject, split),
``(1, i)`` for subject ``i``, ``(2, i, j)`` for the label noise of its ``j``-th study -- so a
subject's volumes do not depend on the number of workers or on the other subjects, and the same
seed gives byte-identical k-space.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any, Callable

import numpy as np

from i2m2_med.errors import UsageError
from i2m2_med.heads import HEADS
from i2m2_med.synth import label_noise as noise
from i2m2_med.synth import priors, writers
from i2m2_med.synth.regimes import (
    REGIMES,
    episode_auroc,
    evidence_log_ratio,
    evidence_state,
    regime_params,
)
from i2m2_med.synth.subject import TABULAR_COLUMNS, tabular_row
from i2m2_med.synth.volume import N_COILS, SLICE_RANGE, SubjectPlan, generate_subject

GENERATOR_VERSION = "1.2.0"
SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}
PAIRED_ACQUISITION_P = 0.5  # a subject has both PD and PD-FS studies with this probability

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class CohortOptions:
    """Validated arguments of :func:`generate_cohort`."""

    out_dir: Path
    n_volumes: int
    seed: int
    regime: str
    label_noise: float
    multicoil: bool
    dicom: bool
    nifti: bool
    workers: int
    n_slices: int | None
    n_coils: int


def validate(
    out_dir, n_volumes, seed, regime, label_noise, multicoil, dicom, nifti, workers, n_slices, n_coils
) -> CohortOptions:
    """Check the arguments; raises :class:`UsageError` with one line saying what to do."""
    p = Path(out_dir)
    if p.exists() and not p.is_dir():
        raise UsageError(p, "exists and is not a folder; give a folder to write the cohort into")

    def _int(value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise UsageError(None, f"{name} must be an integer, got {value!r}")
        return int(value)

    n = _int(n_volumes, "volumes")
    if n < 1:
        raise UsageError(None, f"volumes must be at least 1, got {n}")
    s = _int(seed, "seed")
    if s < 0:
        raise UsageError(None, f"seed must be a non-negative integer, got {s}")
    if regime not in REGIMES:
        raise UsageError(None, f"unknown regime {regime!r}; choose one of {', '.join(REGIMES)}")
    try:
        ln = float(label_noise)
    except (TypeError, ValueError):
        raise UsageError(None, f"label noise must be a number in [0, 0.5), got {label_noise!r}") from None
    if not (0.0 <= ln < 0.5) or math.isnan(ln):
        raise UsageError(None, f"label noise must be in [0, 0.5), got {label_noise!r}")
    w = _int(workers, "workers")
    if w < 1:
        raise UsageError(None, f"workers must be at least 1, got {w}")
    ns = None if n_slices is None else _int(n_slices, "slices")
    if ns is not None and not 8 <= ns <= 64:
        raise UsageError(None, f"slices must be between 8 and 64 (default: {SLICE_RANGE[0]}-{SLICE_RANGE[1]} per volume), got {ns}")
    nc = _int(n_coils, "coils")
    if nc < 2 or nc > 32:
        raise UsageError(None, f"coils must be between 2 and 32, got {nc}")
    return CohortOptions(p, n, s, regime, ln, bool(multicoil), bool(dicom), bool(nifti), w, ns, nc)


def plan_cohort(n_volumes: int, seed: int) -> list[SubjectPlan]:
    """Subjects and their studies: 1 or 2 acquisitions each (PD / PD-FS), ``n_volumes`` in all."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    digits = max(4, len(str(n_volumes - 1)))
    plans: list[SubjectPlan] = []
    v = 0
    i = 0
    while v < n_volumes:
        paired = rng.random() < PAIRED_ACQUISITION_P and n_volumes - v >= 2
        fat = (False, True) if paired else (bool(rng.random() < 0.5),)
        ids = tuple(f"synth{seed}_{v + j:0{digits}d}" for j in range(len(fat)))
        plans.append(SubjectPlan(index=i, study_ids=ids, fat_sat=fat, seed=np.random.SeedSequence(seed, spawn_key=(1, i))))
        v += len(fat)
        i += 1
    return plans


def assign_splits(n_subjects: int, seed: int) -> list[str]:
    """Subject-level split, deterministic per seed: 70 / 15 / 15 %, at least one test subject
    from 2 subjects on and one validation subject from 3 on."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, 1)))
    n_test = max(1, round(SPLIT_FRACTIONS["test"] * n_subjects)) if n_subjects >= 2 else 0
    n_val = max(1, round(SPLIT_FRACTIONS["val"] * n_subjects)) if n_subjects >= 3 else 0
    order = rng.permutation(n_subjects)
    out = ["train"] * n_subjects
    for j, idx in enumerate(order):
        if j < n_test:
            out[idx] = "test"
        elif j < n_test + n_val:
            out[idx] = "val"
    return out


def _generate_and_write(plan: SubjectPlan, opts: CohortOptions) -> list[dict[str, Any]]:
    """Worker: generate one subject's studies, write their files, return the table rows."""
    params = regime_params(opts.regime)
    acqs = generate_subject(plan, params, multicoil=opts.multicoil, n_coils=opts.n_coils, n_slices=opts.n_slices)
    results = []
    for j, acq in enumerate(acqs):
        writers.write_h5(opts.out_dir, acq)
        if opts.dicom:
            from i2m2_med.synth.dicom_series import write_dicom_series

            write_dicom_series(opts.out_dir, acq, opts.seed)
        if opts.nifti:
            from i2m2_med.synth.nifti_volumes import write_nifti

            write_nifti(opts.out_dir, acq)
        nrng = np.random.default_rng(np.random.SeedSequence(opts.seed, spawn_key=(2, plan.index, j)))
        noisy = noise.flip_labels(nrng, acq.labels, opts.label_noise)
        boxes = noise.noisy_boxes(nrng, acq.boxes, acq.labels, noisy, acq.episodes)
        ann = [
            {"file": acq.study_id, "slice": b["slice"], "x": b["x"], "y": 320 - b["y"] - b["height"],
             "width": b["width"], "height": b["height"], "label": b["label"]}
            for b in boxes
        ]
        results.append({
            "study_id": acq.study_id,
            "subject_index": plan.index,
            "subject_id": acq.subject.subject_id,
            "n_slices": acq.n_slices,
            "width": acq.encoding.width,
            "labels_true": acq.labels,
            "labels_noisy": noisy,
            "annotations": ann,
            "tabular": tabular_row(acq.subject, acq.protocol),
            "episodes": [episode_row(ep) for ep in acq.episodes],
        })
        del acq
    return results


EPISODE_HEADER: tuple[str, ...] = (
    "study_id", "class", "head", "label", "finding", "mode", "evidence", "first_slice", "last_slice",
)
"""Columns of ``episodes.csv``: one row per episode (a run of slices of one lesion class that is a
finding or a mimic); ``evidence`` is what its images show (:data:`regimes.EVIDENCE_STATES`)."""


def episode_row(ep) -> dict[str, Any]:
    """What the tables and the manifest keep of one :class:`lesions.Episode`."""
    return {
        "class": ep.cls, "head": ep.head, "label": ep.label, "finding": bool(ep.finding),
        "mode": ep.expression.mode, "evidence": evidence_state(ep.expression),
        "first_slice": int(min(ep.slices)), "last_slice": int(max(ep.slices)),
    }


def generate_cohort(
    out_dir: str | os.PathLike,
    n_volumes: int,
    seed: int,
    regime: str = "mixed",
    label_noise: float = 0.0,
    multicoil: bool = False,
    dicom: bool = False,
    nifti: bool = False,
    workers: int = 1,
    progress: Progress | None = None,
    *,
    n_slices: int | None = None,
    n_coils: int = N_COILS,
    on_written: Callable[[list[Path]], None] | None = None,
) -> dict[str, Any]:
    """Generate ``n_volumes`` synthetic knee studies into ``out_dir`` and return the manifest.

    ``regime``: "mixed" | "intra" | "inter" (see :mod:`i2m2_med.synth.regimes`);
    ``label_noise``: fraction of flipped slice labels, in [0, 0.5); ``multicoil``: (S, C, 640, W)
    k-space with ``n_coils`` coils and ``reconstruction_rss``; ``dicom`` / ``nifti``: also write
    magnitude + phase DICOM series / NIfTI volumes; ``workers``: processes (results do not
    depend on it); ``progress(done, total)``: called after each finished volume;
    ``n_slices``: fixed slice count for quick tests (default: 30-46 drawn per subject);
    ``on_written(paths)``: called in this process with the h5 files of each subject as soon as
    they are written (e.g. :func:`i2m2_med.data.cache.cache_then_drop`, which keeps a large
    cohort's model-resolution images and drops its k-space, so the disk holds one subject's
    volumes at a time).

    Files are written atomically; existing files of the same names are replaced. Raises
    :class:`UsageError` for bad arguments (nothing is written then).
    """
    opts = validate(out_dir, n_volumes, seed, regime, label_noise, multicoil, dicom, nifti, workers, n_slices, n_coils)
    out = writers.ensure_out_dir(opts.out_dir)
    plans = plan_cohort(opts.n_volumes, opts.seed)
    splits = assign_splits(len(plans), opts.seed)
    by_subject: dict[int, list[dict[str, Any]]] = {}
    done = 0
    if progress:
        progress(0, opts.n_volumes)
    if opts.workers == 1 or len(plans) == 1:
        for plan in plans:
            by_subject[plan.index] = _generate_and_write(plan, opts)
            if on_written:
                on_written([writers.h5_path(out, sid) for sid in plan.study_ids])
            done += len(plan.study_ids)
            if progress:
                progress(done, opts.n_volumes)
    else:
        # fork where the platform has it (workers touch no threads, no torch); spawn elsewhere
        ctx = get_context("fork" if "fork" in get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(max_workers=min(opts.workers, len(plans)), mp_context=ctx) as pool:
            futures = {pool.submit(_generate_and_write, plan, opts): plan for plan in plans}
            try:
                for fut in as_completed(futures):
                    plan = futures[fut]
                    by_subject[plan.index] = fut.result()
                    if on_written:
                        on_written([writers.h5_path(out, sid) for sid in plan.study_ids])
                    done += len(plan.study_ids)
                    if progress:
                        progress(done, opts.n_volumes)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    studies = [r for plan in plans for r in by_subject[plan.index]]
    return _write_tables(out, opts, plans, splits, studies)


def _write_tables(out: Path, opts: CohortOptions, plans, splits, studies) -> dict[str, Any]:
    files = [r["study_id"] for r in studies]
    writers.write_annotations(out, [a for r in studies for a in r["annotations"]], files)
    writers.write_table(
        out / "tabular.csv", ("study_id", *TABULAR_COLUMNS),
        ([r["study_id"], *[r["tabular"][c] for c in TABULAR_COLUMNS]] for r in studies),
    )
    writers.write_table(
        out / "splits.csv", ("study_id", "subject_id", "split"),
        ([r["study_id"], r["subject_id"], splits[r["subject_index"]]] for r in studies),
    )
    writers.write_table(
        out / "slice_labels.csv", writers.SLICE_LABEL_HEADER,
        (row for r in studies for row in writers.slice_label_rows(r["study_id"], r["labels_true"], r["labels_noisy"])),
    )
    writers.write_table(
        out / "episodes.csv", EPISODE_HEADER,
        ([r["study_id"], *[int(e[c]) if isinstance(e[c], bool) else e[c] for c in EPISODE_HEADER[1:]]]
         for r in studies for e in r["episodes"]),
    )
    manifest = build_manifest(opts, plans, splits, studies)
    writers.write_manifest(out, manifest)
    return manifest


def _slice_position_auroc(studies, key: str) -> dict[str, float | None]:
    """AUROC of the best score that knows only the relative slice position (10 bins): the part of
    a head that anatomy alone (which slice this is) predicts, whatever the regime."""
    pos = np.concatenate([(np.arange(r["n_slices"]) + 0.5) / r["n_slices"] for r in studies])
    bins = np.minimum((pos * 10).astype(int), 9)
    lab = np.concatenate([r[key] for r in studies])
    out: dict[str, float | None] = {}
    for h, head in enumerate(HEADS):
        y = lab[:, h]
        rate = np.array([y[bins == b].mean() if (bins == b).any() else 0.0 for b in range(10)])
        auc = noise.auroc(rate[bins], y)
        out[head] = None if auc is None else round(auc, 4)
    return out


def evidence_scores(episodes: list[dict[str, Any]], n_slices: int, params) -> np.ndarray:
    """(S, 4) Bayes score of each slice and head from its images: the largest log likelihood
    ratio (finding vs mimic, :func:`regimes.evidence_log_ratio`) of the head's episodes covering
    the slice; -inf where no episode of the head lies (the class's sites are not in view)."""
    out = np.full((n_slices, len(HEADS)), -np.inf)
    for e in episodes:
        h = HEADS.index(e["head"])
        sl = slice(e["first_slice"], e["last_slice"] + 1)
        out[sl, h] = np.maximum(out[sl, h], evidence_log_ratio(params, e["evidence"]))
    return out


def _slice_evidence_auroc(studies, params, key: str) -> dict[str, float | None]:
    """AUROC of :func:`evidence_scores` against the labels ``key``: the ceiling of a reader who
    sees every cue and knows where each class's sites are but nothing else (no slice-count or
    clinical prior): what the images allow a model to reach."""
    score = np.concatenate([evidence_scores(r["episodes"], r["n_slices"], params) for r in studies])
    lab = np.concatenate([r[key] for r in studies])
    out: dict[str, float | None] = {}
    for h, head in enumerate(HEADS):
        auc = noise.auroc(score[:, h], lab[:, h])
        out[head] = None if auc is None else round(auc, 4)
    return out


def build_manifest(opts: CohortOptions, plans, splits, studies) -> dict[str, Any]:
    """The manifest: what was generated, from what, and the ceilings a model can be held to."""
    true = np.concatenate([r["labels_true"] for r in studies])
    noisy = np.concatenate([r["labels_noisy"] for r in studies])
    vol_true = np.stack([r["labels_true"].any(0) for r in studies])
    n_slices_total = int(true.shape[0])
    ceiling = {}
    for h, head in enumerate(HEADS):
        emp = noise.empirical_ceiling(true[:, h], noisy[:, h])
        ceiling[head] = {
            "empirical": None if emp is None else round(emp, 4),
            "expected": round(noise.expected_ceiling(float(true[:, h].mean()), opts.label_noise), 4),
        }
    episodes = [e for r in studies for e in r["episodes"]]
    split_counts = {s: sum(1 for r in studies if splits[r["subject_index"]] == s) for s in SPLIT_FRACTIONS}
    params = regime_params(opts.regime)
    return {
        "generator": "i2m2_med.synth",
        "generator_version": GENERATOR_VERSION,
        "seed": opts.seed,
        "regime": opts.regime,
        "regime_params": params.as_dict(),
        "label_noise": opts.label_noise,
        "multicoil": opts.multicoil,
        "n_coils": opts.n_coils if opts.multicoil else 1,
        "dicom": opts.dicom,
        "nifti": opts.nifti,
        "heads": list(HEADS),
        "counts": {
            "volumes": len(studies),
            "subjects": len(plans),
            "slices": n_slices_total,
            "slices_per_volume": {"min": int(min(r["n_slices"] for r in studies)), "max": int(max(r["n_slices"] for r in studies))},
            "positive_slices_true": {h: int(true[:, i].sum()) for i, h in enumerate(HEADS)},
            "positive_slices_annotated": {h: int(noisy[:, i].sum()) for i, h in enumerate(HEADS)},
            "positive_volumes_true": {h: int(vol_true[:, i].sum()) for i, h in enumerate(HEADS)},
            "annotation_rows": int(sum(len(r["annotations"]) for r in studies)),
            "episodes": {"findings": sum(1 for e in episodes if e["finding"]), "mimics": sum(1 for e in episodes if not e["finding"])},
            "splits": split_counts,
        },
        "prevalence": {
            "slice_true": {h: round(float(true[:, i].mean()), 4) for i, h in enumerate(HEADS)},
            "slice_annotated": {h: round(float(noisy[:, i].mean()), 4) for i, h in enumerate(HEADS)},
            "volume_true": {h: round(float(vol_true[:, i].mean()), 4) for i, h in enumerate(HEADS)},
            "fastmri_plus_volume": dict(priors.TARGET_VOLUME_PREVALENCE),
            "fastmri_plus_slice": dict(priors.REAL_SLICE_PREVALENCE),
        },
        "label_noise_ceiling_auroc": ceiling,
        "label_noise_ceiling_note": "AUROC of a perfect predictor of the true findings against the annotated (noisy) labels, per head",
        "episode_bayes_auroc": episode_auroc(params),
        "episode_bayes_note": "best AUROC of one finding-vs-mimic episode from magnitude, phase, both (regime design)",
        "slice_position_auroc": _slice_position_auroc(studies, "labels_noisy"),
        "slice_position_note": "AUROC of a score that knows only the relative slice position (anatomy prior), per head",
        "slice_evidence_auroc": _slice_evidence_auroc(studies, params, "labels_noisy"),
        "slice_evidence_note": "AUROC of the Bayes score of every slice from the cues its images show and where the "
        "sites are in view (no prior), per head: what the images allow",
        "files": {
            "h5": f"{writers.H5_DIR}/<study_id>.h5",
            "annotations": "annotations/knee.csv",
            "file_list": "annotations/knee_file_list.csv",
            "tabular": "tabular.csv",
            "splits": "splits.csv",
            "slice_labels": "slice_labels.csv",
            "episodes": "episodes.csv",
            **({"dicom": "dicom/<study_id>/{magnitude,phase}/IM_nnnn.dcm"} if opts.dicom else {}),
            **({"nifti": "nifti/<study_id>.nii.gz, nifti/<study_id>_phase.nii.gz"} if opts.nifti else {}),
        },
        "study_ids": [r["study_id"] for r in studies],
    }
