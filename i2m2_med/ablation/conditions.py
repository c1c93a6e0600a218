"""Test-time conditions of the robustness study: a modality withheld, k-space undersampled, noise.

=====================  ===========================================================================
condition              what the model sees (test split)
=====================  ===========================================================================
``clean``              the fully sampled data
``drop:<modality>``    the modality (magnitude, phase or tabular) removed from every batch and
                       marked absent; the experts that need it leave the product
                       (:class:`i2m2_med.models.registry.I2M2Model`), nothing is zero-filled
``us:<mask>:x<R>``     k-space columns zeroed by a fastMRI mask (``random``: RandomMaskFunc,
                       ``equispaced``: EquispacedMaskFractionFunc; 8 % fully sampled centre) at
                       acceleration R, then the usual reconstruction (zero-filled inverse FFT) --
                       the point-of-care question: a faster, undersampled scan
``noise:<level>``      complex white Gaussian noise added to k-space with standard deviation
                       ``level * RMS(image)`` of the slice (the orthonormal FFT keeps white noise
                       white with the same sigma in the image, so the level is relative to the
                       slice's image RMS whichever domain the study is in)
=====================  ===========================================================================

Undersampling needs raw k-space: image-domain studies (DICOM, NIfTI) are left out of the ``us:``
conditions and the result says so. Masks and noise are deterministic whatever the order of
reading: one mask per study (seeded by ``condition_seed`` and the study id, fastMRI's evaluation
convention), and each slice's noise from a generator seeded with ``condition_seed``, the level
and a CRC32 of the slice's own data.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from i2m2_med.data.cohort import Cohort
from i2m2_med.data.dataset import SliceDataset
from i2m2_med.errors import UsageError
from i2m2_med.io.study import Study

DROPPABLE: tuple[str, ...] = ("magnitude", "phase", "tabular")
CENTER_FRACTION = 0.08


@dataclass(frozen=True)
class Condition:
    """One test-time condition; ``name`` is its key in results, ``label`` its title."""

    name: str
    kind: str  # "clean" | "drop" | "undersample" | "noise"
    label: str
    group: str
    drop: tuple[str, ...] = ()
    mask: str | None = None
    acceleration: int | None = None
    noise: float | None = None

    @property
    def needs_own_data(self) -> bool:
        """True when the condition changes the transformed slices (not only the batch keys)."""
        return self.kind in ("undersample", "noise")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "label": self.label, "group": self.group,
            "drop": list(self.drop), "mask": self.mask, "acceleration": self.acceleration, "noise": self.noise,
        }


CLEAN = Condition("clean", "clean", "fully sampled, all modalities", "reference")


def drop_condition(modality: str) -> Condition:
    if modality not in DROPPABLE:
        raise UsageError("drop", f"unknown modality {modality!r}; use {', '.join(DROPPABLE)}")
    return Condition(f"drop:{modality}", "drop", f"without {modality}", "missing modality", drop=(modality,))


def undersample_condition(mask: str, acceleration: int) -> Condition:
    return Condition(
        f"us:{mask}:x{int(acceleration)}", "undersample", f"{mask} mask, R={int(acceleration)}",
        "k-space undersampling", mask=mask, acceleration=int(acceleration),
    )


def noise_condition(level: float) -> Condition:
    return Condition(
        f"noise:{float(level):g}", "noise", f"noise sigma = {float(level):g} x image RMS", "added noise", noise=float(level)
    )


def robustness_conditions(
    accelerations: Sequence[int] = (2, 4, 8),
    mask_types: Sequence[str] = ("random", "equispaced"),
    noise_levels: Sequence[float] = (0.05, 0.1, 0.2),
) -> list[Condition]:
    """Every condition of the robustness study (the clean reference first)."""
    out = [CLEAN, *(drop_condition(m) for m in DROPPABLE)]
    out += [undersample_condition(m, a) for m in mask_types for a in accelerations]
    out += [noise_condition(n) for n in noise_levels]
    return out


# ---- the data of a condition --------------------------------------------------------------------


def _content_seed(*arrays: np.ndarray) -> int:
    crc = 0
    for a in arrays:
        crc = zlib.crc32(memoryview(np.ascontiguousarray(a)).cast("B"), crc)
    return crc


def add_complex_noise(raw: Mapping[str, Any], level: float, seed: int) -> dict[str, Any]:
    """A raw slice (:meth:`Study.read_slice`) with complex white Gaussian noise.

    k-space ``(640, W)`` or ``(C, 640, W)`` complex: ``sigma = level * sqrt(mean |k|^2)`` per
    coil, which is ``level`` times the RMS of the (uncropped) image by Parseval. Image domain
    (``magnitude`` (H, W), optional ``phase`` radians): noise added to ``m * exp(i * phase)``
    with ``sigma = level * RMS(m)``, then magnitude and phase recomputed (phase only when the
    study has one). Returns a new dict; the generator is seeded by ``seed`` and the slice data.
    """
    out = dict(raw)
    if "kspace" in raw:
        k = np.asarray(raw["kspace"])
        rng = np.random.default_rng([int(seed) % (2**32), _content_seed(k)])
        axes = (-2, -1)
        rms = np.sqrt(np.mean(np.abs(k) ** 2, axis=axes, keepdims=True))
        sigma = (float(level) * rms / np.sqrt(2.0)).astype(np.float32)
        noise = rng.standard_normal(k.shape, dtype=np.float32) + 1j * rng.standard_normal(k.shape, dtype=np.float32)
        out["kspace"] = (k + sigma * noise).astype(np.complex64)
        return out
    if "magnitude" in raw:
        m = np.asarray(raw["magnitude"], dtype=np.float32)
        ph = np.asarray(raw["phase"], dtype=np.float32) if raw.get("phase") is not None else None
        rng = np.random.default_rng([int(seed) % (2**32), _content_seed(m)])
        z = m * (np.exp(1j * ph) if ph is not None else 1.0)
        sigma = float(level) * float(np.sqrt(np.mean(m.astype(np.float64) ** 2))) / np.sqrt(2.0)
        z = z + sigma * (rng.standard_normal(m.shape) + 1j * rng.standard_normal(m.shape))
        out["magnitude"] = np.abs(z).astype(np.float32)
        if ph is not None:
            out["phase"] = np.angle(z).astype(np.float32)
        return out
    return out


class NoisySliceDataset(SliceDataset):
    """A :class:`SliceDataset` whose raw slices get :func:`add_complex_noise` before the usual
    modality pipeline (never cached: every read draws the same noise again from its seed)."""

    def __init__(self, *args: Any, noise_level: float, noise_seed: int, **kwargs: Any):
        kwargs["cache_size"] = 0
        super().__init__(*args, **kwargs)
        self.noise_level = float(noise_level)
        self.noise_seed = int(noise_seed)
        self._noisy: Callable[[dict], dict] | None = None

    @property
    def pipeline(self) -> Callable[[dict], dict]:
        if self._noisy is None:
            base = SliceDataset.pipeline.fget(self)  # type: ignore[attr-defined]
            level, seed = self.noise_level, self.noise_seed

            def noisy(raw: dict) -> dict:
                return base(add_complex_noise(raw, level, seed))

            self._noisy = noisy
        return self._noisy

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_noisy"] = None
        return state


def with_identity(study: Study) -> Study:
    """A copy of ``study`` whose raw slices also carry ``study_id`` and ``slice``, so that the
    undersampling transform can seed its mask by study (one mask per volume, whatever the order
    of reading: fastMRI's evaluation convention)."""
    reader = study.slice_reader
    sid = study.study_id

    def read(index: int) -> dict[str, Any]:
        raw = dict(reader(index))
        raw["study_id"] = sid
        raw["slice"] = int(index)
        return raw

    return replace(study, slice_reader=read)


def condition_dataset(
    cohort: Cohort, split: str, image_size: int, condition: Condition, seed: int, cache_size: int = 0
) -> tuple[SliceDataset, str | None]:
    """The slices of ``split`` as ``condition`` changes them: ``(dataset, note)``.

    ``note`` says what was left out (image-domain studies under undersampling). Drop conditions
    use the clean data (the modality is removed from each batch by :func:`drop_from_batch`).
    """
    studies = cohort.studies_in(split)
    note = None
    if condition.kind == "undersample":
        kspace = [with_identity(s) for s in studies if s.domain == "kspace"]
        if len(kspace) < len(studies):
            note = f"{len(studies) - len(kspace)} image-domain stud{'y' if len(studies) - len(kspace) == 1 else 'ies'} without k-space left out"
        spec = {"mask": condition.mask, "acceleration": int(condition.acceleration), "center_fraction": CENTER_FRACTION,
                "seed_key": "study_id"}
        return SliceDataset(cohort, split, image_size=image_size, cache_size=0, undersample=spec, seed=int(seed), studies=kspace), note
    if condition.kind == "noise":
        seed_here = (int(seed) * 1000003 + int(round(condition.noise * 1e6))) % (2**32)
        return NoisySliceDataset(cohort, split, image_size=image_size, studies=studies, noise_level=condition.noise, noise_seed=seed_here), note
    return SliceDataset(cohort, split, image_size=image_size, cache_size=cache_size, studies=studies), note


def drop_from_batch(batch: Mapping[str, Any], modalities: Sequence[str]) -> dict[str, Any]:
    """A collated batch without ``modalities``: their keys removed and ``present`` False."""
    out = dict(batch)
    present = dict(batch.get("present") or {})
    for m in modalities:
        out.pop(m, None)
        flag = present.get(m)
        n = len(batch.get("study_id", [])) or 1
        present[m] = torch.zeros_like(flag, dtype=torch.bool) if isinstance(flag, torch.Tensor) else torch.zeros(n, dtype=torch.bool)
    out["present"] = present
    return out
