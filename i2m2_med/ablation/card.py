"""The model-card section of the ablation report, in the spirit of TRIPOD+AI and CLAIM: intended
use, data source, splits and prevalence, predictors, missing data, model and evaluation, the
limitations, software versions and the exact command. JSON-ready; the report renders it."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from i2m2_med import __version__
from i2m2_med.ablation.runs import RunRecord
from i2m2_med.ablation.settings import AblationSettings
from i2m2_med.config import Config


def software_versions() -> dict[str, str]:
    """Versions of Python, the platform and the packages the results depend on."""
    out = {"i2m2-med": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for name in ("torch", "numpy", "scipy", "pandas", "monai", "fastmri", "pytorch-lightning", "torchmetrics", "safetensors",
                 "h5py", "pydicom", "nibabel", "scikit-learn", "plotly"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    commit = _git_commit(Path(__file__).resolve().parents[2])
    if commit:
        out["i2m2-med commit"] = commit
    return out


def _git_commit(root: Path) -> str | None:
    head = root / ".git" / "HEAD"
    try:
        text = head.read_text(encoding="utf-8").strip()
        if text.startswith("ref:"):
            ref = text.split(None, 1)[1]
            path = root / ".git" / ref
            if path.is_file():
                return path.read_text(encoding="utf-8").strip()[:12]
            packed = root / ".git" / "packed-refs"
            if packed.is_file():
                for line in packed.read_text(encoding="utf-8").splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0][:12]
            return None
        return text[:12]
    except OSError:
        return None


def model_card(data: Mapping[str, Any], settings: AblationSettings, config: Config, command: str, runs: Sequence[RunRecord]) -> dict[str, Any]:
    """A model-card section in the spirit of TRIPOD+AI and CLAIM (JSON; the report renders it)."""
    synthetic = bool(data.get("synthetic"))
    manifest = data.get("manifest") or {}
    if synthetic:
        coils = "multi-coil" if manifest.get("multicoil") else "single-coil"
        source = (f"Synthetic knee MRI cohort from i2m2_med.synth (generator {manifest.get('generator_version')}, seed "
                  f"{manifest.get('seed')}, regime '{manifest.get('regime')}', label noise {manifest.get('label_noise')}): "
                  f"fully sampled {coils} k-space in the fastMRI h5 layout with fastMRI+-style slice annotations; "
                  "no patient data.")
    else:
        source = (f"User-supplied studies under {data.get('root')} ({', '.join(f'{v} {k}' for k, v in (data.get('formats') or {}).items())}); "
                  f"labels from {data.get('label_source')}.")
    n_test = int(((data.get("splits") or {}).get("test") or {}).get("studies") or 0)
    limitations = [
        "Research use only: not a medical device, not validated for clinical decisions.",
        (f"The test split is small ({n_test} studies): intervals are wide, and" if n_test < 100 else "The")
        + " per-head results are correlated (they come from the same studies).",
        "Slice labels come from fastMRI+-style bounding-box annotations; a study is positive when any slice is.",
        "Operating points are chosen on the validation split of the same cohort: external validation is needed before any threshold is trusted elsewhere.",
        "Confidence intervals reflect test-set sampling only; seed-to-seed variation is reported separately (mean +- sd).",
        "Missing-modality, undersampling and noise results are retrospective simulations on fully sampled data.",
    ]
    if synthetic:
        limitations.insert(1, "Synthetic data: lesions, mimics and their magnitude/phase cues follow the generator's design; "
                              "results show what the method can do under that design, not its performance on patients.")
    if settings.quick:
        limitations.append("Quick mode: fewer seeds, epochs and bootstrap replicates, fewer robustness conditions (random masks "
                           "only, one noise level) and smaller regime cohorts than the full ablation.")
    return {
        "intended_use": "research use only",
        "intended_use_detail": ("Comparing product-of-experts models (I2M2) with their ablations for knee MRI findings "
                                "(ACL sprain, meniscus tear, cartilage lesion, other abnormality) on a research cohort. "
                                "Not for diagnosis, triage or any clinical decision."),
        "data_source": source,
        "participants": {"studies": data.get("studies"), "subjects": data.get("subjects"), "left_out": len(data.get("left_out") or [])},
        "outcomes": "Four binary findings per slice (ACL, MTEAR, CART, ABNORMAL) from fastMRI+ labels; study label = any slice positive.",
        "predictors": {"images": "magnitude and phase of the centred orthonormal inverse FFT of k-space, cropped to 320 x 320"
                                 f" and resized to {config.image_size} x {config.image_size}",
                       "tabular": list(data.get("tabular_features") or [])},
        "splits": {"source": data.get("split_source"), "rule": "subject-level (no subject in two splits)",
                   **{s: {k2: v for k2, v in (data.get("splits") or {}).get(s, {}).items() if k2 in ("studies", "subjects", "slices")}
                      for s in ("train", "val", "test")}},
        "prevalence": {s: {"slice": (data.get("splits") or {}).get(s, {}).get("slice_prevalence"),
                           "study": (data.get("splits") or {}).get(s, {}).get("study_prevalence")} for s in ("train", "val", "test")},
        "missing_data": "A missing image modality is absent from the batch and its experts leave the product; nothing is imputed.",
        "model": {"config": config.name, "image_size": config.image_size,
                  "training": "joint end-to-end NLL of the normalised product of experts, class-weighted, AdamW, early stopping on mean validation AUROC"
                              + ("; then the product's prior refitted on the validation slices (one log-odds offset per head, experts frozen)"
                                 if config.training.calibration == "prior" else ""),
                  "variants": list(settings.variants), "seeds": settings.seed_list,
                  "max_epochs": settings.epochs if settings.epochs is not None else config.training.max_epochs},
        "evaluation": {"metrics": "AUROC (slice and study level) with stratified percentile bootstrap CIs (slices resampled by study); "
                                  "paired DeLong (study level) and paired cluster bootstrap (slice level) against I2M2; "
                                  "sensitivity/specificity (Wilson CIs) at a validation-chosen operating point; ECE and reliability diagrams",
                       "aggregation": data.get("aggregation"), "operating_rule": settings.operating_rule,
                       "n_boot": settings.n_boot, "confidence": 1.0 - settings.alpha},
        "limitations": limitations,
        "software": software_versions(),
        "compute": {"device": "cuda" if torch.cuda.is_available() else "cpu", "torch_threads": torch.get_num_threads(),
                    "cpu_count": os.cpu_count()},
        "command": command,
        "config_yaml": config.to_yaml(),
        "tripod_claim": [
            ["Title / intended use (TRIPOD 1, 3; CLAIM 1-3)", "research use only: ablation of I2M2 and its variants"],
            ["Source of data (TRIPOD 5; CLAIM 7)", source],
            ["Participants and splits (TRIPOD 6, 10; CLAIM 8, 21)", "subject-level split; counts in the Data section"],
            ["Outcome and reference standard (TRIPOD 7; CLAIM 14-18)", "fastMRI+-style slice annotations of four findings"],
            ["Predictors (TRIPOD 8; CLAIM 12-13)", "magnitude, phase and tabular data; see Data"],
            ["Sample size (TRIPOD 9)", f"{data.get('studies')} studies; test split in the Data section"],
            ["Missing data (TRIPOD 11; CLAIM 11)", "missing modality dropped from the product, never imputed"],
            ["Model development (TRIPOD 12; CLAIM 22-27)", f"config '{config.name}', seeds {settings.seed_list}; see Software and config"],
            ["Performance measures (TRIPOD 12, 23; CLAIM 28-32)", "discrimination with CIs, calibration, operating points, paired tests"],
            ["Robustness (CLAIM 33, 37)", "missing modalities, k-space undersampling, noise"],
            ["Limitations (TRIPOD 27; CLAIM 40)", "see Limitations"],
            ["Code and software (TRIPOD 36; CLAIM 41)", f"i2m2-med {__version__}; exact command and versions below"],
        ],
    }
