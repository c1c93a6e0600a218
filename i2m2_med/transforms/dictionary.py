"""The MONAI dictionary transforms of the modality pipeline and :func:`build_modality_pipeline`.

Each is a ``monai.transforms.MapTransform`` over a plain array function of the other modules of
:mod:`i2m2_med.transforms` (``keys``, ``allow_missing_keys``, composable with ``Compose``). This
module imports the array functions, never the reverse: MONAI takes seconds to import and the
functional core (readers, ``inspect``) does not need it.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import Compose, MapTransform, Randomizable

from i2m2_med.errors import I2M2Error, TransformError
from i2m2_med.transforms.fft import DEFAULT_CROP, _like
from i2m2_med.transforms.geometry import (
    _as_plane,
    centre_crop_or_pad,
    fit_image,
    resize_modalities,
)
from i2m2_med.transforms.intensity import normalize_magnitude
from i2m2_med.transforms.modalities import kspace_to_modalities
from i2m2_med.transforms.subsample import MASK_TYPES, apply_column_mask, sample_mask

__all__ = [
    "ImageToModalitiesd",
    "KSpaceToModalitiesd",
    "ModalityCompose",
    "NormalizeMagnituded",
    "PackModalitiesd",
    "ResizeModalitiesd",
    "UndersampleKSpaced",
    "build_modality_pipeline",
]


class KSpaceToModalitiesd(MapTransform):
    """``data[key]`` k-space of one slice -> ``data["magnitude"]``, ``data["phase"]``.

    The k-space is one slice as :meth:`Study.read_slice` gives it: (640, W) singlecoil or
    (C, 640, W) multicoil (complex numpy or torch); the outputs are (h, w) float32 of the same
    library (see :func:`kspace_to_modalities`). ``drop_kspace`` removes the k-space from the
    dict. A missing key is skipped when ``allow_missing_keys`` (image-domain studies).
    """

    def __init__(
        self,
        keys: Any = "kspace",
        crop: tuple[int, int] = DEFAULT_CROP,
        magnitude_key: str = "magnitude",
        phase_key: str = "phase",
        drop_kspace: bool = True,
        workers: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.crop = crop
        self.magnitude_key = magnitude_key
        self.phase_key = phase_key
        self.drop_kspace = drop_kspace
        self.workers = workers

    def __call__(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            k = d[key]
            out = kspace_to_modalities(
                k, self.crop, coils=getattr(k, "ndim", 0) == 3, workers=self.workers, where=_where(d)
            )
            d[self.magnitude_key] = out["magnitude"]
            d[self.phase_key] = out["phase"]
            if self.drop_kspace:
                del d[key]
        return d


def _where(d: Mapping[Any, Any]) -> str | None:
    sid = d.get("study_id")
    if sid is None:
        return None
    return f"{sid} slice {d['slice']}" if "slice" in d else str(sid)


class UndersampleKSpaced(Randomizable, MapTransform):
    """Retrospective undersampling: zero the k-space columns a fastMRI mask does not sample.

    ``mask_type`` "random" or "equispaced", ``accelerations`` and ``center_fractions`` (one pair
    drawn at random per call when several are given, as fastMRI does), via
    :func:`sample_mask`. Determinism: the transform's random state (``seed`` or
    :meth:`set_random_state`) draws one mask seed per call; with ``seed_key`` (e.g.
    "study_id"), the mask seed is instead derived from that value (CRC32) and ``seed``, so every
    slice of a study gets the same mask whatever the order -- fastMRI's evaluation convention.
    ``mask_key``: when set, the (W,) bool mask is stored there.
    """

    def __init__(
        self,
        keys: Any = "kspace",
        mask_type: str = "random",
        accelerations: Sequence[int] | int = (4,),
        center_fractions: Sequence[float] | float = (0.08,),
        seed: int | None = None,
        seed_key: str | None = None,
        mask_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.mask_type = mask_type
        self.accelerations = [int(a) for a in np.atleast_1d(accelerations)]
        self.center_fractions = [float(c) for c in np.atleast_1d(center_fractions)]
        if len(self.accelerations) != len(self.center_fractions):
            raise TransformError(None, "accelerations and center_fractions must have the same length")
        if mask_type not in MASK_TYPES:
            raise TransformError(None, f"mask type {mask_type!r} unknown; use one of {', '.join(MASK_TYPES)}")
        self.seed = seed
        self.seed_key = seed_key
        self.mask_key = mask_key
        self.set_random_state(seed=seed)
        self._choice = 0
        self._mask_seed = 0

    def randomize(self, data: Any = None) -> None:
        if self.seed_key is not None and isinstance(data, Mapping) and self.seed_key in data:
            import zlib

            base = zlib.crc32(str(data[self.seed_key]).encode("utf-8"))
            self._mask_seed = (base ^ (int(self.seed or 0) * 0x9E3779B1)) % (2**32)
            self._choice = self._mask_seed % len(self.accelerations)
        else:
            self._choice = int(self.R.randint(len(self.accelerations)))
            self._mask_seed = int(self.R.randint(2**31))

    def __call__(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        d = dict(data)
        self.randomize(d)
        for key in self.key_iterator(d):
            k = d[key]
            mask = sample_mask(
                k.shape[-1],
                self.mask_type,
                self.accelerations[self._choice],
                self.center_fractions[self._choice],
                seed=self._mask_seed,
                readout=k.shape[-2],
            )
            d[key] = apply_column_mask(k, mask)
            if self.mask_key:
                d[self.mask_key] = mask
        return d


class NormalizeMagnituded(MapTransform):
    """Magnitude intensity normalisation (see :func:`normalize_magnitude`); phase is never
    touched (it stays in radians)."""

    def __init__(
        self,
        keys: Any = "magnitude",
        mode: str = "percentile",
        percentile: float = 99.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if mode not in ("percentile", "max", "zscore", "none"):
            raise TransformError(None, f"normalisation mode {mode!r} unknown; use percentile, max, zscore or none")
        self.mode = mode
        self.percentile = percentile

    def __call__(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = normalize_magnitude(d[key], self.mode, self.percentile)
        return d


class ResizeModalitiesd(MapTransform):
    """Resize magnitude and phase to ``size`` for compact model configurations (e.g. 320 -> 128);
    phase through the complex image (see :func:`resize_modalities`). ``keys`` are
    (magnitude key, phase key); either may be missing with ``allow_missing_keys``."""

    def __init__(
        self,
        keys: Any = ("magnitude", "phase"),
        size: int | tuple[int, int] = 128,
        mode: str = "area",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 2:
            raise TransformError(None, "ResizeModalitiesd keys are (magnitude key, phase key)")
        self.size = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
        if mode not in ("area", "bilinear"):
            raise TransformError(None, f"resize mode {mode!r} unknown; use area or bilinear")
        self.mode = mode

    def __call__(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        d = dict(data)
        mk, pk = self.keys
        present = list(self.key_iterator(d))
        m = d.get(mk) if mk in present else None
        p = d.get(pk) if pk in present else None
        if m is None and p is None:
            return d
        shape = (m if m is not None else p).shape[-2:]
        if tuple(shape) == self.size:
            return d
        new_m, new_p = resize_modalities(m, p, self.size, self.mode)
        if new_m is not None:
            d[mk] = new_m
        if new_p is not None:
            d[pk] = new_p
        return d


class ImageToModalitiesd(MapTransform):
    """Image-domain slices (DICOM / NIfTI, any size) -> magnitude and phase of ``size``.

    ``mode`` "crop": centre crop or zero pad (the convention of the k-space path, so a 320 x 320
    slice passes unchanged); "fit": resize keeping the aspect ratio to fit ``size``, then centre
    pad (phase resampled through the complex image). Validates each plane: real, 2-D (or
    [1, H, W]), finite; a phase outside [-pi, pi] (not in radians) raises
    :class:`TransformError`. Outputs are (h, w) float32 of the input's library.
    """

    def __init__(
        self,
        keys: Any = ("magnitude", "phase"),
        size: tuple[int, int] = DEFAULT_CROP,
        mode: str = "crop",
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 2:
            raise TransformError(None, "ImageToModalitiesd keys are (magnitude key, phase key)")
        if mode not in ("crop", "fit"):
            raise TransformError(None, f"image mode {mode!r} unknown; use crop or fit")
        self.size = (int(size[0]), int(size[1]))
        self.mode = mode

    def __call__(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        d = dict(data)
        mk, pk = self.keys
        where = _where(d)
        present = set(self.key_iterator(d))
        planes: dict[str, np.ndarray] = {}
        refs: dict[str, Any] = {}
        for key in (mk, pk):
            if key in present:
                refs[key] = d[key]
                planes[key] = _as_plane(d[key], key, where)
        if pk in planes and float(np.abs(planes[pk]).max()) > np.pi + 1e-3:
            raise TransformError(where, f"{pk} values reach {float(np.abs(planes[pk]).max()):.4g}: not radians in [-pi, pi]")
        if not planes:
            return d
        if self.mode == "crop":
            out = {k: centre_crop_or_pad(v, self.size) for k, v in planes.items()}
        else:
            shapes = {v.shape for v in planes.values()}
            if len(shapes) > 1:
                raise TransformError(where, f"magnitude and phase differ in size {sorted(shapes)}")
            out = {}
            if mk in planes:
                out[mk] = fit_image(planes[mk], self.size)
            if pk in planes:
                w = planes.get(mk, np.ones_like(planes[pk]))
                re = fit_image(w * np.cos(planes[pk]), self.size)
                im = fit_image(w * np.sin(planes[pk]), self.size)
                out[pk] = np.arctan2(im, re).astype(np.float32)
        for key, value in out.items():
            d[key] = _like(value, refs[key])
        return d


class PackModalitiesd(MapTransform):
    """Final packing into the sample contract: each present image modality as a float32 torch
    tensor [1, H, W]; ``"present"`` = {modality: bool} (absent modalities are not in the dict and
    are False there, never zero-filled); ``drop`` keys (default: k-space and mask) removed.
    Raises :class:`TransformError` when no image modality is present."""

    def __init__(
        self,
        keys: Any = ("magnitude", "phase"),
        drop: Sequence[str] = ("kspace",),
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.drop = tuple(drop)

    def __call__(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        d = dict(data)
        for key in self.drop:
            d.pop(key, None)
        present = dict(d.get("present") or {})
        for key in self.keys:
            if key in d and d[key] is not None:
                t = d[key] if isinstance(d[key], torch.Tensor) else torch.from_numpy(np.ascontiguousarray(d[key]))
                t = t.to(torch.float32)
                if t.ndim == 2:
                    t = t[None]
                if t.ndim != 3 or t.shape[0] != 1:
                    raise TransformError(_where(d), f"{key} of shape {tuple(t.shape)}; expected (H, W) or (1, H, W)")
                d[key] = t.contiguous()
                present[key] = True
            else:
                d.pop(key, None)
                present[key] = False
        if not any(present.get(k, False) for k in self.keys):
            raise TransformError(_where(d), "no image modality (magnitude or phase) in the slice")
        d["present"] = present
        return d


class ModalityCompose(Compose):
    """``monai.transforms.Compose`` that lets the project's typed errors through: MONAI wraps
    any exception of a transform in ``RuntimeError("applying transform ...")``; a
    :class:`~i2m2_med.errors.I2M2Error` (e.g. :class:`TransformError`) in that chain is
    re-raised as itself, so callers still see the file and the reason in one line."""

    def __call__(self, input_: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(input_, *args, **kwargs)
        except RuntimeError as exc:
            cause: BaseException | None = exc
            while cause is not None and not isinstance(cause, I2M2Error):
                cause = cause.__cause__
            if cause is not None:
                raise cause from None
            raise


def build_modality_pipeline(
    image_size: int = 320,
    undersample: Mapping[str, Any] | None = None,
    seed: int | None = None,
    *,
    normalize: str = "percentile",
    percentile: float = 99.0,
    image_mode: str = "crop",
    resize_mode: str = "area",
    workers: int | None = None,
) -> ModalityCompose:
    """The modality pipeline (a :class:`ModalityCompose`, i.e. a MONAI ``Compose``): a raw slice dict from :meth:`Study.read_slice` (plus any
    ``study_id`` / ``slice`` keys) -> the sample dict of the contract, without tabular / labels.

    Steps: [undersampling of k-space] -> k-space to magnitude/phase (320 x 320) -> image-domain
    slices to 320 x 320 (``image_mode`` crop or fit; a no-op on the k-space path's output) ->
    magnitude normalisation (``normalize``) -> resize to ``image_size`` (``resize_mode``; skipped
    at 320) -> packing ([1, H, W] float32 tensors and ``"present"``).

    ``undersample``: None (fully sampled) or a dict with ``mask`` ("random" / "equispaced"),
    ``acceleration`` (int or list), ``center_fraction`` (float or list), optional ``seed_key``
    (e.g. "study_id": one mask per study). ``seed`` seeds the undersampling's random state.
    """
    steps: list[Any] = []
    if undersample:
        unknown = set(undersample) - {"mask", "acceleration", "center_fraction", "seed_key"}
        if unknown:
            raise TransformError(None, f"unknown undersample option(s) {', '.join(sorted(unknown))}")
        steps.append(
            UndersampleKSpaced(
                "kspace",
                mask_type=str(undersample.get("mask", "random")),
                accelerations=undersample.get("acceleration", 4),
                center_fractions=undersample.get("center_fraction", 0.08),
                seed=seed,
                seed_key=undersample.get("seed_key"),
                allow_missing_keys=True,
            )
        )
    steps += [
        KSpaceToModalitiesd("kspace", crop=DEFAULT_CROP, workers=workers, allow_missing_keys=True),
        ImageToModalitiesd(("magnitude", "phase"), size=DEFAULT_CROP, mode=image_mode, allow_missing_keys=True),
        NormalizeMagnituded("magnitude", mode=normalize, percentile=percentile, allow_missing_keys=True),
    ]
    if int(image_size) != DEFAULT_CROP[0]:
        steps.append(ResizeModalitiesd(("magnitude", "phase"), size=int(image_size), mode=resize_mode, allow_missing_keys=True))
    steps.append(PackModalitiesd(("magnitude", "phase")))
    pipeline = ModalityCompose(steps)
    if seed is not None:
        # Compose re-seeds its random transforms from MONAI's global seed when built
        pipeline.set_random_state(seed=int(seed))
    return pipeline
