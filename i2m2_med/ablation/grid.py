"""The grid of an ablation on one cohort: train (or reuse) every (variant, seed), load the
checkpoints, and predict validation and test -- clean, and under each robustness condition --
with every model on the same batches. Predictions are cached in each run folder
(``<run>/ablation_eval/``), so a rerun only predicts what is new.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from i2m2_med.ablation import conditions as cond
from i2m2_med.ablation.predict import (
    Predictions,
    error_reason,
    predict_models,
    try_load,
)
from i2m2_med.ablation.runs import RunRecord, Shard, train_or_reuse
from i2m2_med.ablation.settings import AblationSettings
from i2m2_med.checkpoint import load_checkpoint
from i2m2_med.config import Config
from i2m2_med.data.cohort import Cohort
from i2m2_med.data.dataset import SliceDataset
from i2m2_med.errors import CheckpointError
from i2m2_med.metrics.baselines import position_scores, relative_position
from i2m2_med.models import I2M2Model
from i2m2_med.training.options import resolve_config, split_log
from i2m2_med.training.results import position_prior_of

EVAL_DIR = "ablation_eval"
EVAL_VERSION = "e2"
"""Part of the cached prediction file names: changes when what a condition does changes."""
Progress = Callable[[str], None]


class GridResult:
    """The runs of one grid on one cohort and their predictions.

    ``records``: (variant, seed) -> :class:`RunRecord`; ``preds``: (variant, seed, split,
    condition name) -> :class:`Predictions`; ``notes``: condition name -> what it left out;
    ``subjects``: study id -> subject of the cohort (what every bootstrap resamples);
    ``in_view``: the cohort's episode table (study id -> (S, 4) bool) when it has one;
    ``position``: split -> the position-only baseline's :class:`Predictions` (the training split's
    positive rate at each slice's relative position, :mod:`i2m2_med.metrics.baselines`).
    """

    def __init__(self) -> None:
        self.subjects: dict[str, str] = {}
        self.in_view: dict[str, Any] | None = None
        self.position: dict[str, Predictions] = {}
        self.records: dict[tuple[str, int], RunRecord] = {}
        self.preds: dict[tuple[str, int, str, str], Predictions] = {}
        self.notes: dict[str, str] = {}
        self.eval_seconds = 0.0
        self.train_seconds = 0.0

    def ok_seeds(self, variant: str) -> list[int]:
        return sorted(s for (v, s), r in self.records.items() if v == variant and r.ok)

    def get(self, variant: str, seed: int, split: str, condition: str = "clean") -> Predictions | None:
        return self.preds.get((variant, seed, split, condition))


def position_predictions(dataset: SliceDataset, prior: np.ndarray) -> Predictions:
    """The position-only baseline on every slice of ``dataset`` (labels only, no image read)."""
    slices = dataset.items[:, 1].astype(np.int64)
    n = np.asarray([dataset.studies[int(i)].n_slices for i in dataset.items[:, 0]], dtype=np.int64)
    p = np.clip(position_scores(prior, relative_position(slices, n)), 1e-6, 1 - 1e-6)
    combined = np.stack([np.log1p(-p), np.log(p)], axis=-1)
    return Predictions(dataset.study_ids().astype(str).astype(object), slices, dataset.label_matrix(), p, combined)


def _eval_path(record: RunRecord, split: str, condition: str, condition_seed: int) -> Path:
    safe = condition.replace(":", "_").replace(".", "p")
    return Path(record.run_dir) / EVAL_DIR / f"{split}__{safe}__c{int(condition_seed)}__{EVAL_VERSION}.npz"


def run_grid(
    cohort: Cohort,
    data_dir: Path,
    runs_dir: Path,
    variants: Sequence[str],
    seeds: Sequence[int],
    base_config: Config,
    epochs: int | None,
    fingerprint: str,
    settings: AblationSettings,
    *,
    robustness: Sequence[cond.Condition] = (),
    robustness_seeds: Sequence[int] = (),
    progress: Progress | None = None,
    shard: Shard | None = None,
    report_split: bool = True,
) -> GridResult:
    """Train or reuse every (variant, seed), then predict validation and test (clean) and, for
    the runs of ``robustness_seeds``, the test split under each ``robustness`` condition.
    With ``shard``: train the runs the shard claims and stop (the merge predicts).
    ``report_split``: log the cohort's split problems (a caller that reported them already says no)."""
    grid = GridResult()
    for problem in cohort.split_problems() if report_split else ():  # once for the grid, not once per run
        split_log.warning("split check: %s", problem)
    grid.subjects = dict(cohort.subjects)
    grid.in_view = cohort.in_view
    t0 = time.perf_counter()
    image_size = int(base_config.image_size)
    cache_size = int(base_config.training.cache_size)
    shared = {split: SliceDataset(cohort, split, image_size=image_size, cache_size=cache_size) for split in ("train", "val", "test")}
    if len(shared["train"]):
        prior = position_prior_of(shared["train"])
        grid.position = {split: position_predictions(shared[split], prior) for split in ("val", "test")}
    for variant in variants:
        for seed in seeds:
            try:
                cfg = resolve_config(base_config, epochs, seed, None)
            except Exception as exc:  # a config that cannot be resolved fails this run only
                grid.records[(variant, seed)] = RunRecord(variant, seed, "", "", "failed", error_reason(exc))
                continue
            grid.records[(variant, seed)] = train_or_reuse(
                data_dir, runs_dir, variant, seed, cfg, fingerprint, cohort=cohort, datasets=shared,
                train_n_boot=settings.train_n_boot, progress=progress, report_split=False, shard=shard,
            )
    grid.train_seconds = time.perf_counter() - t0
    if shard is not None:
        return grid

    t1 = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    models: dict[str, I2M2Model] = {}
    rid_of: dict[str, tuple[str, int]] = {}
    for (variant, seed), record in grid.records.items():
        if not record.ok:
            continue
        try:
            model, _ = load_checkpoint(record.checkpoint, expected_variant=variant, map_location=device)
        except CheckpointError as exc:
            record.status, record.reason = "failed", f"checkpoint unusable: {exc.one_line()}"
            continue
        rid = f"{variant}#{seed}"
        models[rid] = model
        rid_of[rid] = (variant, seed)

    robust_rids = {rid for rid, (v, s) in rid_of.items() if s in set(robustness_seeds)}
    drop_views = [c for c in robustness if c.kind == "drop"]
    data_conditions = [c for c in robustness if c.needs_own_data]
    jobs: list[tuple[str, cond.Condition, list[cond.Condition], set[str]]] = [
        ("val", cond.CLEAN, [cond.CLEAN], set(models)),
        ("test", cond.CLEAN, [cond.CLEAN, *drop_views], set(models)),
        *[("test", c, [c], robust_rids) for c in data_conditions],
    ]
    for split, condition, views, rids in jobs:
        if not rids:
            continue
        needed: dict[str, set[str]] = {}
        for view in views:
            wanted = rids if view.name == "clean" else (rids & robust_rids)
            for rid in wanted:
                record = grid.records[rid_of[rid]]
                cached = try_load(_eval_path(record, split, view.name, settings.condition_seed))
                if cached is not None:
                    v, s = rid_of[rid]
                    grid.preds[(v, s, split, view.name)] = cached
                    if cached.note:
                        grid.notes[view.name] = cached.note
                else:
                    needed.setdefault(view.name, set()).add(rid)
        if not needed:
            continue
        if progress:
            progress(f"predicting {split} ({condition.label}) with {len({r for s in needed.values() for r in s})} model(s)")
        try:
            if condition.kind == "clean":
                dataset, note = shared[split], None
            else:
                dataset, note = cond.condition_dataset(cohort, split, image_size, condition, settings.condition_seed)
        except Exception as exc:  # the condition cannot be built for this data: say so for each model
            reason = f"not evaluated: {error_reason(exc)}"
            for view_name, rids_here in needed.items():
                for rid in rids_here:
                    v, s = rid_of[rid]
                    grid.preds[(v, s, split, view_name)] = Predictions.empty(reason)
            continue
        if note:
            grid.notes[condition.name] = note
        run_views = [v for v in views if v.name in needed]
        union = sorted(set().union(*needed.values()))
        if len(dataset) == 0 and condition.kind == "undersample":
            out = {(rid, v.name): Predictions.empty("not applicable: no k-space study in the test split", note) for rid in union for v in run_views}
        else:
            try:
                out = predict_models({rid: models[rid] for rid in union}, dataset, run_views, settings.eval_batch_size, note=note,
                                     view_models=needed, device=device)
            except Exception as exc:
                reason = f"not evaluated: {error_reason(exc)}"
                out = {(rid, v.name): Predictions.empty(reason, note) for rid in union for v in run_views}
        for (rid, view_name), pred in out.items():
            if rid not in needed.get(view_name, set()):
                continue
            v, s = rid_of[rid]
            grid.preds[(v, s, split, view_name)] = pred
            if not pred.reason or pred.reason.startswith("not applicable"):
                try:
                    pred.save(_eval_path(grid.records[(v, s)], split, view_name, settings.condition_seed))
                except OSError:
                    pass
    grid.eval_seconds = time.perf_counter() - t1
    return grid
