"""The paper's claim measured: I2M2 against the intra- and inter-modality models, trained at scale
on each regime and tested on the held-out cohorts of :mod:`i2m2_med.synth.heldout`.

Design (every number is on a cohort that no training, early stopping or recipe choice read):

* Training pools: per regime one synthetic cohort generated from :data:`POOL_SEEDS` straight into
  its tensor cache (the k-space is dropped). Its subjects are ranked by a hash of their id; the
  first ones, up to ``val_volumes`` volumes, are the validation split (early stopping and the
  calibration of each run), the next ones, up to ``train_volumes``, the training split. A
  learning-curve size takes a longer prefix of the same ranking, so the training sets are nested
  and the validation split is the same at every size.
* Variants: ``i2m2``, ``intra`` and ``inter`` with the bundled model's recipe (``demo`` config:
  warm start, hard-case sampling, in-view model selection), shortened by ``overrides`` so the
  whole study fits a benchmark run on two cores; every (regime, variant, seed) is one training
  run, cached by its data fingerprint and resolved config.
* Test: the regime's held-out cohort, every study. Per variant the seed mean and sd of the in-view
  AUROC (each head on the slices where its anatomy is in view: findings against their mimics),
  the study-level AUROC and the slice AUROC (means over ACL / MTEAR / CART), and the seed
  ensemble's values with 95 % CIs that resample whole subjects. The single experts are the
  intra model's magnitude, phase and tabular experts read alone; beside them the position-only
  baseline (the training split's positive rate at the slice's relative position).
* Paired margins: I2M2's seed ensemble against intra's and inter's on the same held-out slices,
  in view and at study level, by a paired bootstrap over whole subjects.
* Targets (never used to choose anything): in every regime ``i2m2 >= max(intra, inter) - 0.01``
  on the seed mean of the in-view AUROC; in the inter regime intra at most 0.60 and I2M2 at
  least 0.80 in view.
* Learning curve: in ``curve_regime``, the test in-view AUROC of each variant against the
  training volumes of ``curve_volumes`` (``curve_seeds`` seeds per size).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from i2m2_med.ablation.heldout import ensure_heldout
from i2m2_med.ablation.runs import RunRecord, train_or_reuse
from i2m2_med.ablation.stats import paired_mean_auroc_difference
from i2m2_med.atomic import json_safe, write_json
from i2m2_med.checkpoint import load_checkpoint
from i2m2_med.config import Config, load_config
from i2m2_med.data.cache import TensorCache, cache_then_drop
from i2m2_med.data.cohort import Cohort, data_fingerprint, in_view_rows, load_cohort
from i2m2_med.data.dataset import SliceDataset
from i2m2_med.errors import UsageError
from i2m2_med.heads import HEADS, PATHOLOGY_HEADS
from i2m2_med.metrics.aggregation import aggregation_rule, study_level
from i2m2_med.metrics.baselines import position_scores, relative_position
from i2m2_med.synth import generate_cohort
from i2m2_med.synth.heldout import HELDOUT_VOLUMES
from i2m2_med.training.options import resolve_config
from i2m2_med.training.results import position_prior_of, predict_dataset, prediction_metrics

Progress = Callable[[str], None]

POOL_SEEDS: dict[str, int] = {"intra": 71001, "inter": 71002, "mixed": 71003}
"""Generator seed of each regime's training pool (distinct from the held-out, demo and ablation
seeds)."""
CLAIM_SCHEMA = "i2m2-med-claim/1"
TOLERANCE = 0.01
INTER_INTRA_MAX = 0.60
INTER_I2M2_MIN = 0.80
PATHOLOGY_IDX = [HEADS.index(h) for h in PATHOLOGY_HEADS]
SINGLE_EXPERTS = ("magnitude", "phase", "tabular")
EVAL_DIR = "claim_eval"


@dataclass(frozen=True)
class ClaimSettings:
    """What the claim study runs (see the module docstring).

    ``train_volumes``: training volumes of the regime comparison; ``curve_volumes``: the
    learning-curve sizes (in ``curve_regime``, ``curve_seeds`` seeds each); ``val_volumes``: the
    validation split of every run; ``overrides``: dotted config keys applied to ``config``;
    ``heldout_volumes``: volumes of each held-out test cohort (160: at least 100 subjects; fewer
    only for quick checks, which claim nothing)."""

    regimes: tuple[str, ...] = ("intra", "inter", "mixed")
    variants: tuple[str, ...] = ("i2m2", "intra", "inter")
    seeds: int = 3
    train_volumes: int = 200
    val_volumes: int = 40
    curve_regime: str | None = "mixed"
    curve_volumes: tuple[int, ...] = (50, 100, 200, 400)
    curve_seeds: int = 1
    config: str = "demo"
    overrides: dict[str, Any] = field(default_factory=lambda: {
        "training.warm_start_epochs": 2, "training.warm_start_joint_epochs": None, "training.max_epochs": 4,
        "training.epoch_slices": 4096, "training.early_stopping.patience": 2,
    })
    heldout_volumes: int = HELDOUT_VOLUMES
    n_boot: int = 1000
    workers: int = 2
    train_n_boot: int = 20

    def __post_init__(self) -> None:
        for name, value in (("seeds", self.seeds), ("train_volumes", self.train_volumes), ("val_volumes", self.val_volumes),
                            ("curve_seeds", self.curve_seeds), ("heldout_volumes", self.heldout_volumes), ("n_boot", self.n_boot)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(name, f"must be a positive integer, got {value!r}")
        bad = [r for r in self.regimes if r not in POOL_SEEDS]
        if bad or (self.curve_regime is not None and self.curve_regime not in self.regimes):
            raise UsageError("regimes", f"unknown or missing regime {(bad or [self.curve_regime])[0]!r}; use {', '.join(POOL_SEEDS)}")

    def pool_volumes(self, regime: str) -> int:
        """Volumes generated for ``regime``'s pool: the largest training size it needs, the
        validation split and a margin for whole subjects (two studies of a knee stay together)."""
        largest = max([self.train_volumes, *(self.curve_volumes if regime == self.curve_regime else ())])
        return largest + self.val_volumes + 10

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


QUICK_CLAIM = {
    "regimes": ("inter",), "seeds": 2, "train_volumes": 8, "val_volumes": 6, "curve_regime": "inter", "curve_volumes": (4, 8),
    "heldout_volumes": 8, "n_boot": 50,
    "overrides": {"training.warm_start_epochs": 1, "training.warm_start_joint_epochs": None, "training.max_epochs": 1,
                  "training.epoch_slices": 128},
}
"""A claim study of seconds (one regime, tiny pools and held-out cohort): for tests; it claims nothing."""
FULL_OVERRIDES = {"training.warm_start_epochs": 2, "training.warm_start_joint_epochs": None, "training.max_epochs": 5,
                  "training.epoch_slices": 4096, "training.early_stopping.patience": 2}
"""The benchmark's shortening of the bundled recipe: 2 warm-start and at most 5 product epochs of
4,096 draws, so three regimes x three variants x three seeds plus the learning curve fit a
benchmark run on two cores."""


def claim_settings(quick: bool = False) -> ClaimSettings:
    """The benchmark's claim study, or with ``quick`` :data:`QUICK_CLAIM`."""
    return ClaimSettings(**QUICK_CLAIM) if quick else ClaimSettings(overrides=dict(FULL_OVERRIDES))


def _rank(subject: str) -> str:
    return hashlib.sha256(("claim-split:" + subject).encode("utf-8")).hexdigest()


def subset_cohort(pool: Cohort, train_volumes: int, val_volumes: int) -> Cohort:
    """The pool with its split replaced: subjects in hash order, the first up to ``val_volumes``
    volumes validation, the next up to ``train_volumes`` training, the rest left out (whole
    subjects, so a split may hold a volume more than asked). The same pool gives nested training
    sets and one validation split. Refuses a pool too small for the sizes asked."""
    by_subject: dict[str, list[str]] = {}
    for study in pool.studies:
        by_subject.setdefault(pool.subjects[study.study_id], []).append(study.study_id)
    split: dict[str, str] = {}
    counts = {"val": 0, "train": 0}
    for subject in sorted(by_subject, key=_rank):
        ids = by_subject[subject]
        target = "val" if counts["val"] < val_volumes else "train" if counts["train"] < train_volumes else None
        if target is None:
            break
        for sid in ids:
            split[sid] = target
        counts[target] += len(ids)
    if counts["val"] < val_volumes or counts["train"] < train_volumes:
        raise UsageError(pool.root, f"the pool has {len(pool.studies)} volumes: too few for {val_volumes} validation and "
                                    f"{train_volumes} training volumes")
    studies = [s for s in pool.studies if s.study_id in split]
    keep = {s.study_id for s in studies}
    return replace(
        pool, studies=studies, split=split,
        labels={k: v for k, v in pool.labels.items() if k in keep},
        tabular={k: v for k, v in pool.tabular.items() if k in keep},
        subjects={k: v for k, v in pool.subjects.items() if k in keep},
        in_view=None if pool.in_view is None else {k: v for k, v in pool.in_view.items() if k in keep},
        split_source=f"claim study: {counts['val']} validation and {counts['train']} training volumes by subject hash",
    )


def ensure_pool(work: Path, regime: str, volumes: int, image_size: int, workers: int, progress: Progress | None) -> tuple[Path, Cohort]:
    """The regime's training pool under ``work/pools``, generated into its tensor cache on first
    use (its manifest, written last, marks it complete)."""
    root = work / "pools" / f"{regime}-v{volumes}-s{POOL_SEEDS[regime]}"
    cache = TensorCache.of_cohort(root, image_size)
    if not (root / "manifest.json").is_file():
        if progress:
            progress(f"generating the {regime} training pool ({volumes} volumes)")
        generate_cohort(root, volumes, POOL_SEEDS[regime], regime=regime, workers=workers, on_written=cache_then_drop(cache))
    return root, load_cohort(root, tensor_cache=cache)


def heldout_predictions(record: RunRecord, cohort: Cohort, cache: TensorCache, fingerprint: str) -> dict[str, Any]:
    """Every slice of the held-out ``cohort`` predicted by the run of ``record`` (cached in the
    run folder under the cohort's fingerprint): ``study_id``, ``slice``, ``labels``, and ``p``
    for the combined prediction and each expert."""
    path = Path(record.run_dir) / EVAL_DIR / f"{fingerprint[:16]}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {"study_id": z["study_id"].astype(str), "slice": z["slice"], "labels": z["labels"],
                    "p": {k[2:]: z[k] for k in z.files if k.startswith("p_")}}
    model, meta = load_checkpoint(record.checkpoint, expected_variant=record.variant)
    dataset = SliceDataset(cohort, None, image_size=meta.config.image_size, cache_size=0, tensor_cache=cache)
    pred = predict_dataset(model, dataset, batch_size=128)
    out = {"study_id": pred["study_id"].astype(str), "slice": pred["slice"], "labels": pred["labels"], "p": pred["p"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, study_id=out["study_id"].astype("U"), slice=out["slice"], labels=out["labels"],
             **{f"p_{k}": v for k, v in out["p"].items()})
    os.replace(tmp, path)
    return out


def heldout_in_view(pred: Mapping[str, Any], cohort: Cohort, which: str = "combined") -> dict[str, float | None]:
    """Per head, the in-view AUROC (findings against their mimics) of ``pred``'s ``which``
    probabilities (:func:`heldout_predictions` of ``cohort``); None where a head has one class."""
    from i2m2_med.metrics.ranking import auroc

    view = in_view_rows(cohort.in_view, pred["study_id"], pred["slice"])
    p, y = pred["p"][which], np.asarray(pred["labels"]) > 0.5
    out: dict[str, float | None] = {}
    for h, head in enumerate(HEADS):
        keep = view[:, h] & np.isfinite(p[:, h])
        yy = y[keep, h]
        out[head] = float(auroc(yy, p[keep, h])) if 0 < yy.sum() < yy.size else None
    return out


def _point_values(y: np.ndarray, p: np.ndarray, ids: np.ndarray, view: np.ndarray, rule: str, k: int) -> dict[str, float | None]:
    """In-view, study and slice mean AUROC over ACL/MTEAR/CART (no intervals)."""
    from i2m2_med.metrics.ranking import auroc

    ok = np.isfinite(p).all(axis=1)
    y, p, ids, view = y[ok] > 0.5, p[ok], ids[ok], view[ok]

    def mean(values: list[float | None]) -> float | None:
        vals = [v for v in values if v is not None and np.isfinite(v)]
        return float(np.mean(vals)) if vals else None

    def safe(yy: np.ndarray, pp: np.ndarray) -> float | None:
        return float(auroc(yy, pp)) if 0 < int(yy.sum()) < yy.size else None

    st = study_level(ids, p, y, rule=rule, k=k)
    return {
        "in_view": mean([safe(y[view[:, h], h], p[view[:, h], h]) for h in PATHOLOGY_IDX]),
        "study": mean([safe(st.y[:, h], st.p[:, h]) for h in PATHOLOGY_IDX]),
        "slice": mean([safe(y[:, h], p[:, h]) for h in PATHOLOGY_IDX]),
    }


def _seed_summary(values: Sequence[Mapping[str, float | None]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for level in ("in_view", "study", "slice"):
        vals = [v[level] for v in values if v.get(level) is not None]
        out[level] = {"mean": float(np.mean(vals)) if vals else None,
                      "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
                      "values": vals}
    return out


def _ensemble(preds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The seeds' mean p per slice (the same slices in the same order: one held-out dataset)."""
    first = preds[0]
    for other in preds[1:]:
        if not np.array_equal(other["study_id"], first["study_id"]) or not np.array_equal(other["slice"], first["slice"]):
            raise UsageError("claim study", "two runs were evaluated on different held-out slices")
    names = set.intersection(*(set(p["p"]) for p in preds))
    return {**first, "p": {n: np.mean([p["p"][n] for p in preds], axis=0) for n in names}}


def _mean3(summary: Mapping[str, Any] | None, level: str) -> float | None:
    return ((summary or {}).get(level) or {}).get("mean_pathologies")


def _level_ci(table: Mapping[str, Any] | None, level: str) -> list[float] | None:
    block = (table or {}).get(level) or {}
    return (block.get("mean_pathologies") or {}).get("ci")


def _train(pool_dir: Path, cohort: Cohort, runs_dir: Path, variant: str, seed: int, cfg: Config, n_boot: int,
           progress: Progress | None) -> RunRecord:
    return train_or_reuse(pool_dir, runs_dir, variant, seed, resolve_config(cfg, None, seed, None), data_fingerprint(cohort),
                          cohort=cohort, train_n_boot=n_boot, progress=progress)


def regime_result(regime: str, runs: Mapping[str, Sequence[RunRecord]], heldout: Cohort, cache: TensorCache, rule_name: str,
                  settings: ClaimSettings) -> dict[str, Any]:
    """One regime's held-out comparison of the variants in ``runs`` (variant -> its seeds' runs)."""
    rule, k = aggregation_rule(rule_name)
    fingerprint = data_fingerprint(heldout)
    out: dict[str, Any] = {"variants": {}, "margins": {}, "single_experts": {}}
    ensembles: dict[str, dict[str, Any]] = {}
    view = None
    for variant, records in runs.items():
        ok = [r for r in records if r.ok]
        failed = [f"seed {r.seed}: {r.reason}" for r in records if not r.ok]
        if not ok:
            out["variants"][variant] = {"value": None, "reason": "; ".join(failed) or "not trained"}
            continue
        preds = [heldout_predictions(r, heldout, cache, fingerprint) for r in ok]
        if view is None:
            view = in_view_rows(heldout.in_view, preds[0]["study_id"], preds[0]["slice"])
        per_seed = [_point_values(p["labels"], p["p"]["combined"], p["study_id"], view, rule, k) for p in preds]
        ens = _ensemble(preds)
        ensembles[variant] = ens
        table = prediction_metrics(ens, "heldout", rule_name, n_boot=settings.n_boot, seed=0, in_view=heldout.in_view,
                                   subjects=heldout.subjects)
        combined = table["combined"]
        out["variants"][variant] = {
            "seeds": [r.seed for r in ok],
            "failed": failed,
            "seed_summary": _seed_summary(per_seed),
            "ensemble": {level: {"value": _mean3(table["summary"]["combined"], level), "ci": _level_ci(combined, level)}
                         for level in ("in_view", "study", "slice")},
            "per_head_in_view": {h: ((combined.get("in_view") or {}).get("per_head", {}).get(h) or {}).get("auroc") for h in HEADS},
            "training": [r.training for r in ok],
        }
        if variant == "intra":
            for name in SINGLE_EXPERTS:
                if name in table["experts"]:
                    out["single_experts"][name] = {level: {"value": _mean3(table["summary"][name], level),
                                                           "ci": _level_ci(table["experts"][name], level)}
                                                   for level in ("in_view", "study", "slice")}
    if "i2m2" in ensembles and view is not None:
        a = ensembles["i2m2"]
        subjects = np.asarray([heldout.subjects[s] for s in a["study_id"].tolist()])
        y = a["labels"] > 0.5
        st_a = study_level(a["study_id"], a["p"]["combined"], y, rule=rule, k=k)
        study_subjects = np.asarray([heldout.subjects[s] for s in st_a.study_ids.tolist()])
        for other in ("intra", "inter"):
            if other not in ensembles:
                out["margins"][other] = {"value": None, "reason": f"{other}: no trained run"}
                continue
            b = ensembles[other]
            st_b = study_level(b["study_id"], b["p"]["combined"], y, rule=rule, k=k)
            common = {"n_boot": settings.n_boot, "seed": 17, "names": PATHOLOGY_HEADS}
            out["margins"][other] = {
                "in_view": paired_mean_auroc_difference(
                    y[:, PATHOLOGY_IDX], a["p"]["combined"][:, PATHOLOGY_IDX], b["p"]["combined"][:, PATHOLOGY_IDX],
                    groups=subjects, mask=view[:, PATHOLOGY_IDX], **common),
                "study": paired_mean_auroc_difference(
                    st_a.y[:, PATHOLOGY_IDX], st_a.p[:, PATHOLOGY_IDX], st_b.p[:, PATHOLOGY_IDX], groups=study_subjects, **common),
            }
            for level in ("in_view", "study"):
                if out["margins"][other][level].get("method"):
                    out["margins"][other][level]["method"] = "paired bootstrap over whole subjects (seed ensembles)"
    out["test"] = {"studies": len(heldout.studies), "subjects": len(set(heldout.subjects.values())),
                   "slices": int(sum(s.n_slices for s in heldout.studies)),
                   "generator_seed": (heldout.manifest or {}).get("seed")}
    out["targets"] = regime_targets(regime, out["variants"])
    return out


def position_result(train: Cohort, heldout: Cohort, cache: TensorCache, rule_name: str, n_boot: int) -> dict[str, Any]:
    """The position-only baseline on the held-out cohort: the training split's positive rate at
    each slice's relative position (:mod:`i2m2_med.metrics.baselines`), scored like a variant
    (labels and slice numbers only: no image is read)."""
    train_ds = SliceDataset(train, "train", image_size=cache.image_size, cache_size=0, tensor_cache=cache)
    test_ds = SliceDataset(heldout, None, image_size=cache.image_size, cache_size=0, tensor_cache=cache)
    prior = position_prior_of(train_ds)
    slices = test_ds.items[:, 1].astype(np.int64)
    n = np.asarray([test_ds.studies[int(i)].n_slices for i in test_ds.items[:, 0]], dtype=np.int64)
    pred = {"study_id": test_ds.study_ids().astype(str), "slice": slices, "labels": test_ds.label_matrix(),
            "p": {"combined": position_scores(prior, relative_position(slices, n))}}
    table = prediction_metrics(pred, "heldout", rule_name, n_boot=n_boot, seed=0, in_view=heldout.in_view, subjects=heldout.subjects)
    return {level: {"value": _mean3(table["summary"]["combined"], level), "ci": _level_ci(table["combined"], level)}
            for level in ("in_view", "study", "slice")}


def regime_targets(regime: str, variants: Mapping[str, Any]) -> dict[str, Any]:
    """The claim's targets on the seed means of the in-view AUROC (see the module docstring)."""
    means = {v: ((variants.get(v) or {}).get("seed_summary") or {}).get("in_view", {}).get("mean") for v in ("i2m2", "intra", "inter")}
    if any(m is None for m in means.values()):
        return {"met": None, "reason": "a variant has no held-out result", **means}
    best = max(means["intra"], means["inter"])
    out: dict[str, Any] = {**means, "best_other": best, "margin": means["i2m2"] - best,
                           "claim_met": bool(means["i2m2"] >= best - TOLERANCE)}
    if regime == "inter":
        out["intra_at_most_0.60"] = bool(means["intra"] <= INTER_INTRA_MAX)
        out["i2m2_at_least_0.80"] = bool(means["i2m2"] >= INTER_I2M2_MIN)
    out["met"] = all(v for key, v in out.items() if key == "claim_met" or key.endswith(("0.60", "0.80")))
    return out


def run_claim_study(work_dir: str | os.PathLike, settings: ClaimSettings | None = None, *, heldout_dir: str | os.PathLike | None = None,
                    progress: Progress | None = None) -> dict[str, Any]:
    """Run the claim study (module docstring) under ``work_dir`` (pools, runs; reused when
    present); held-out cohorts under ``heldout_dir`` (default ``work_dir``). Writes
    ``work_dir/claim.json`` and returns it."""
    settings = settings or ClaimSettings()
    t0 = time.perf_counter()
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    heldout_base = Path(heldout_dir) if heldout_dir is not None else work
    base = load_config(settings.config).with_updates(**settings.overrides)
    image_size = int(base.image_size)
    runs_dir = work / "runs"
    regimes: dict[str, Any] = {}
    curve: dict[str, Any] = {}
    for regime in settings.regimes:
        pool_dir, pool = ensure_pool(work, regime, settings.pool_volumes(regime), image_size, settings.workers, progress)
        heldout, cache = ensure_heldout(heldout_base, regime, settings.heldout_volumes, image_size, settings.workers, progress)
        sizes = sorted(set([settings.train_volumes, *(settings.curve_volumes if regime == settings.curve_regime else ())]))
        trained: dict[int, dict[str, list[RunRecord]]] = {}
        for size in sizes:
            cohort = subset_cohort(pool, size, settings.val_volumes)
            n_seeds = settings.seeds if size == settings.train_volumes else settings.curve_seeds
            trained[size] = {v: [] for v in settings.variants}
            for seed in range(n_seeds):
                for variant in settings.variants:
                    if progress:
                        progress(f"{regime}, {size} training volumes: {variant} seed {seed}")
                    trained[size][variant].append(_train(pool_dir, cohort, runs_dir, variant, seed, base, settings.train_n_boot, progress))
        if progress:
            progress(f"{regime}: predicting the held-out cohort")
        regimes[regime] = regime_result(regime, trained[settings.train_volumes], heldout, cache, base.training.aggregation, settings)
        regimes[regime]["pool"] = {"generator_seed": POOL_SEEDS[regime], "volumes": len(pool.studies)}
        regimes[regime]["position_baseline"] = position_result(subset_cohort(pool, settings.train_volumes, settings.val_volumes),
                                                               heldout, cache, base.training.aggregation, settings.n_boot)
        if regime == settings.curve_regime:
            rule, k = aggregation_rule(base.training.aggregation)
            fp = data_fingerprint(heldout)
            points = []
            for size in sizes:
                for variant, records in trained[size].items():
                    ok = [r for r in records if r.ok][: settings.curve_seeds]
                    if not ok:
                        continue
                    preds = [heldout_predictions(r, heldout, cache, fp) for r in ok]
                    view = in_view_rows(heldout.in_view, preds[0]["study_id"], preds[0]["slice"])
                    vals = [_point_values(p["labels"], p["p"]["combined"], p["study_id"], view, rule, k) for p in preds]
                    points.append({"variant": variant, "train_volumes": size, "seeds": [r.seed for r in ok],
                                   "in_view": float(np.mean([v["in_view"] for v in vals if v["in_view"] is not None])),
                                   "study": float(np.mean([v["study"] for v in vals if v["study"] is not None]))})
            curve = {"regime": regime, "points": points, "seeds_per_point": settings.curve_seeds}
    targets = {r: b["targets"] for r, b in regimes.items()}
    defined = [t.get("met") for t in targets.values()]
    result = {
        "schema": CLAIM_SCHEMA,
        "settings": settings.to_dict(),
        "config": base.name,
        "regimes": regimes,
        "learning_curve": curve or None,
        "targets": {"per_regime": targets, "all_met": all(defined) if defined and None not in defined else None,
                    "tolerance": TOLERANCE},
        "seconds": time.perf_counter() - t0,
    }
    write_json(work / "claim.json", json_safe(result))
    return result


__all__ = ["FULL_OVERRIDES", "QUICK_CLAIM", "ClaimSettings", "POOL_SEEDS", "claim_settings", "ensure_pool", "heldout_in_view", "heldout_predictions", "regime_result", "run_claim_study", "subset_cohort"]
