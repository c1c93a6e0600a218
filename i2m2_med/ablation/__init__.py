"""Clinical ablation of I2M2: train the variants over seeds, evaluate them on the test split with
confidence intervals, paired tests, calibration and operating points, explain the product's
decisions by expert, test robustness, and run the regime study on synthetic cohorts.

Entry point: :func:`run_ablation` (CLI: ``i2m2-med ablate``); settings: :class:`AblationSettings`
and :func:`default_settings`.

Modules: ``settings`` (the grid and presets), ``runs`` (training runs cached by data fingerprint,
variant, seed and config), ``conditions`` (test-time conditions of the robustness study),
``predict`` (many models on the same slices, every expert's terms), ``stats`` (tables, seed
summaries, paired tests, ROC, evidence, robustness), ``grid`` (train, load and predict the
grid of one cohort), ``analysis`` (every statistic of a grid, the data description), ``regimes``
(the regime study's cohorts and targets), ``card`` (the model card), ``tables`` (the CSV
tables), ``runner`` (everything end to end, the regime study included).
"""

from i2m2_med.ablation.conditions import Condition, robustness_conditions
from i2m2_med.ablation.predict import Predictions, ensemble, predict_models
from i2m2_med.ablation.runner import run_ablation
from i2m2_med.ablation.runs import RunRecord, run_key, train_or_reuse
from i2m2_med.ablation.settings import (
    ALL_VARIANTS,
    REFERENCE_VARIANT,
    REGIME_VARIANTS,
    AblationSettings,
    default_settings,
)
from i2m2_med.ablation.tables import tables, write_tables

__all__ = [
    "ALL_VARIANTS",
    "REFERENCE_VARIANT",
    "REGIME_VARIANTS",
    "AblationSettings",
    "Condition",
    "Predictions",
    "RunRecord",
    "default_settings",
    "ensemble",
    "predict_models",
    "robustness_conditions",
    "run_ablation",
    "run_key",
    "tables",
    "train_or_reuse",
    "write_tables",
]
