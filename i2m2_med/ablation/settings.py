"""What an ablation runs: the grid of variants and seeds, the statistics and the robustness and
regime conditions, in one validated, JSON-ready settings object.

Two presets: :func:`default_settings` (the full ablation) and ``quick=True`` (one seed, fewer
epochs, a smaller bootstrap and smaller regime cohorts). They are sized for the ``cpu`` config on
a demo-sized synthetic cohort (60 volumes, about 1,600 training slices) on two CPU cores: one
epoch of all seven variants costs about 70 s of single-core compute there, transforming the
cohort once about 35 s (the runs of a grid share one transform cache), so the full preset is
about 3 x 6 epochs of the grid plus the regime study's two generated cohorts, and the quick one
a single seed of 3 epochs. Every field can be overridden.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from i2m2_med.errors import UsageError

ALL_VARIANTS: tuple[str, ...] = ("mag", "phase", "tab", "intra", "inter", "i2m2", "i2m2-notab")
"""The ablation grid in report order (the variants of :mod:`i2m2_med.models.registry`)."""
REFERENCE_VARIANT = "i2m2"
"""Every variant is compared against this one."""
REGIME_VARIANTS: tuple[str, ...] = ("i2m2", "intra", "inter")
"""The variants of the regime study (the paper's comparison)."""
MASK_TYPES: tuple[str, ...] = ("random", "equispaced")
"""k-space undersampling masks of the robustness study (fastMRI / MONAI mask functions)."""
OPERATING_RULES = ("youden",)


@dataclass(frozen=True)
class AblationSettings:
    """Everything an ablation run depends on besides the data.

    Grid:
        variants: variant names, trained and evaluated in this order (an unknown name is kept and
            reported as a failed variant, with the reason).
        seeds: number of seeds per variant (seeds ``0 .. seeds-1``).
        config: ``"cpu"``, ``"paper"`` or a YAML path.
        epochs: maximum epochs per run (None: the config's ``training.max_epochs``).
        train_n_boot: bootstrap replicates of the CIs a training run writes into its own
            ``metrics.json`` (the report recomputes its own with ``n_boot``).
    Statistics:
        n_boot: bootstrap replicates of every CI and paired bootstrap test.
        alpha: 1 - confidence level (0.05: 95 % intervals).
        n_bins: bins of the reliability diagrams and the ECE (equal width).
        operating_rule: how the operating point is chosen on validation (``"youden"``,
            ``"sensitivity@0.9"``, ``"specificity@0.9"`` ...).
        stat_seed: seed of every bootstrap.
    Robustness (test split, every trained model of the first ``robustness_seeds`` seeds):
        robustness: on/off; drop each modality; undersample k-space with ``mask_types`` at
        ``accelerations``; complex Gaussian noise of ``noise_levels`` times the slice's image
        RMS; ``condition_seed`` seeds the masks and the noise.
    Regime study (synthetic data: the intra, inter and mixed regimes of the generator):
        regime_study: True / False, or None for "when the data is synthetic";
        regime_volumes, regime_seeds, regime_epochs, regime_label_noise: the size of each
        regime's cohort and of its grid (variants :data:`REGIME_VARIANTS`);
        regime_cohort_seed: the generator seed of the three cohorts; regime_slices: a fixed
        number of slices per volume (None: the generator's 30-46, as in fastMRI). The defaults
        (60 volumes of 20 slices) give about ten test studies per regime -- what the clustered
        bootstrap of the margins needs -- for the compute of 30 full-length volumes (lesion
        extents scale with the slice count);
        regime_reuse_data: when the ablated data is itself a synthetic cohort of one regime and the
        grid has i2m2, intra and inter, that regime's entry uses the main grid (its cohort, seeds
        and epochs) instead of generating another cohort.
    Evaluation:
        eval_batch_size: slices per forward pass.
        cv: K for subject-level K-fold cross-validation (:mod:`i2m2_med.ablation.crossval`: every
            study tested once, on the pooled out-of-fold predictions; no robustness study), or
            None for the cohort's own train / val / test split.
    The paper's claim at scale:
        claim_study: run :mod:`i2m2_med.ablation.claim` (training pools per regime, three seeds,
            held-out test cohorts, learning curve) under ``CACHE_DIR/claim`` and draw it in the
            report; about two hours on two cores (its quick preset with ``quick``).
    """

    variants: tuple[str, ...] = ALL_VARIANTS
    seeds: int = 3
    config: str = "cpu"
    epochs: int | None = 6
    train_n_boot: int = 50
    n_boot: int = 1000
    alpha: float = 0.05
    n_bins: int = 10
    operating_rule: str = "youden"
    stat_seed: int = 0
    robustness: bool = True
    robustness_seeds: int | None = 1
    accelerations: tuple[int, ...] = (2, 4, 8)
    mask_types: tuple[str, ...] = MASK_TYPES
    noise_levels: tuple[float, ...] = (0.05, 0.1, 0.2)
    condition_seed: int = 1234
    regime_study: bool | None = None
    regime_volumes: int = 60
    regime_seeds: int = 2
    regime_epochs: int | None = 6
    regime_label_noise: float = 0.0
    regime_cohort_seed: int = 11
    regime_slices: int | None = 20
    regime_reuse_data: bool = True
    eval_batch_size: int = 64
    cv: int | None = None
    claim_study: bool = False
    quick: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.variants:
            raise UsageError("--variants", "give at least one variant")
        if len(set(self.variants)) != len(self.variants):
            raise UsageError("--variants", f"a variant is listed twice: {', '.join(self.variants)}")
        for name, value, low in (
            ("--seeds", self.seeds, 1), ("n_boot", self.n_boot, 1), ("n_bins", self.n_bins, 1),
            ("train_n_boot", self.train_n_boot, 1), ("regime_volumes", self.regime_volumes, 3),
            ("regime_seeds", self.regime_seeds, 1), ("eval_batch_size", self.eval_batch_size, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UsageError(name, f"must be an integer >= {low}, got {value!r}")
        for name, value in (("--epochs", self.epochs), ("regime_epochs", self.regime_epochs)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UsageError(name, f"must be a positive integer, got {value!r}")
        if self.cv is not None and (isinstance(self.cv, bool) or not isinstance(self.cv, int) or self.cv < 2):
            raise UsageError("--cv", f"needs a whole number of folds >= 2, got {self.cv!r}")
        if self.robustness_seeds is not None and self.robustness_seeds < 1:
            raise UsageError("robustness_seeds", f"must be >= 1 or None (all seeds), got {self.robustness_seeds}")
        if not 0.0 < self.alpha < 1.0:
            raise UsageError("alpha", f"must lie strictly between 0 and 1, got {self.alpha}")
        bad = [m for m in self.mask_types if m not in MASK_TYPES]
        if bad:
            raise UsageError("mask_types", f"unknown mask type {bad[0]!r}; use {', '.join(MASK_TYPES)}")
        if any(int(a) < 1 for a in self.accelerations):
            raise UsageError("accelerations", f"accelerations must be >= 1, got {list(self.accelerations)}")
        if any(not 0.0 < float(n) < 10.0 for n in self.noise_levels):
            raise UsageError("noise_levels", f"noise levels must lie in (0, 10), got {list(self.noise_levels)}")
        if not 0.0 <= self.regime_label_noise < 0.5:
            raise UsageError("regime_label_noise", f"must lie in [0, 0.5), got {self.regime_label_noise}")

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds))

    @property
    def reference(self) -> str:
        return REFERENCE_VARIANT

    def with_updates(self, **changes: Any) -> "AblationSettings":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out


def default_settings(quick: bool = False, **overrides: Any) -> AblationSettings:
    """The full ablation (3 seeds, 6 epochs, 1000 bootstrap replicates, regime cohorts of 60
    volumes of 20 slices with 2 seeds), or with ``quick`` the short one (1 seed, 3 epochs, 200 replicates, random
    undersampling masks only and one noise level, regime cohorts of 28 volumes of 16 slices with
    1 seed: fewer slices than the full preset's cohorts but enough volumes for four test studies,
    the least a study-level verdict needs);
    ``overrides`` replace any field (None values are ignored)."""
    base = AblationSettings()
    if quick:
        base = replace(
            base,
            seeds=1,
            epochs=3,
            n_boot=200,
            robustness_seeds=1,
            mask_types=("random",),
            noise_levels=(0.1,),
            regime_volumes=28,
            regime_slices=16,
            regime_seeds=1,
            regime_epochs=3,
            quick=True,
        )
    given = {k: v for k, v in overrides.items() if v is not None}
    for key in ("variants", "accelerations", "mask_types", "noise_levels"):
        if key in given:
            given[key] = tuple(given[key])
    return replace(base, **given)
