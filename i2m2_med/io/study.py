"""The ``Study``: one knee examination as every reader returns it, read lazily slice by slice.

A study is either in the *k-space* domain (fastMRI h5: raw, fully sampled k-space per slice) or
in the *image* domain (DICOM / NIfTI: magnitude and, where the scanner exported it, phase).
Readers fill the same standardised ``tags`` so that the tabular modality is built the same way
whatever the source.

Standard tag keys (absent when unknown; units in the names):

=====================  ===========================================================
``acquisition``        fastMRI protocol name, e.g. "CORPD_FBK" / "CORPDFS_FBK"
``fat_sat``            bool, fat-suppressed sequence
``field_strength_t``   float, main field in tesla
``tr_ms`` ``te_ms``    floats, repetition / echo time in ms
``ti_ms``              float, inversion time in ms
``flip_angle_deg``     float
``vendor`` ``model``   strings, scanner manufacturer and model
``age_years``          float
``sex``                "M" / "F" / "O"
``weight_kg``          float
``height_m``           float
``bmi``                float, kg/m^2
``encoded_matrix``     [x, y, z] encoded matrix size (k-space)
``recon_matrix``       [x, y, z] reconstruction matrix size
``kspace_shape``       list, shape of one slice of k-space (640, W) or (C, 640, W)
``n_coils``            int (1 for singlecoil)
``enc_center``         int, kspace_encoding_step_1 centre
``enc_maximum``        int, kspace_encoding_step_1 maximum
``padding_left``       int, zero-padded columns on the left of k-space (fastMRI convention)
``padding_right``      int, first zero-padded column on the right
``max`` ``norm``       floats, fastMRI h5 attrs (of the stored reconstruction)
``protocol``           string, protocol / series description as the scanner named it
``image_shape``        [H, W] of one image-domain slice as read (DICOM / NIfTI)
``image_directions``   ["S", "R"]: the anatomical direction (L R A P S I) in which the row and
                       the column index of a slice as read increase, when the geometry tells
                       (DICOM / NIfTI; see :mod:`i2m2_med.io.orientation`)
``orientation``        DICOM ImageOrientationPatient of the magnitude series, as stored
``series_number``      int, DICOM SeriesNumber of the magnitude series
``voxel_size_mm``      [row, column, slice] NIfTI voxel size of the slices as read
=====================  ===========================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

Domain = Literal["kspace", "image"]
Format = Literal["fastmri_h5", "dicom", "nifti"]
IMAGE_MODALITIES: tuple[str, ...] = ("magnitude", "phase")


@dataclass
class Study:
    """One study, with its slices read on demand.

    ``read_slice(i)`` returns, for the k-space domain, ``{"kspace": (640, W) complex64}`` or
    ``{"kspace": (C, 640, W) complex64}`` (multicoil); for the image domain
    ``{"magnitude": (H, W) float32}`` plus ``"phase": (H, W) float32`` in radians when present.

    ``labels`` (S, 4) bool in the order of :data:`i2m2_med.heads.HEADS`, when known.
    ``boxes`` fastMRI+ boxes in image coordinates (rows of dicts: slice, x, y, width, height,
    label), when known. ``notes`` records what a reader did that the user should know about
    (zero-filled or cropped columns, a missing phase series, rescaling, ...).
    """

    study_id: str
    source: Path
    format: Format
    domain: Domain
    n_slices: int
    modalities: tuple[str, ...]
    slice_reader: Callable[[int], dict[str, np.ndarray]] = field(repr=False)
    tags: dict[str, Any] = field(default_factory=dict)
    patient_id: str | None = field(default=None, repr=False)
    labels: np.ndarray | None = field(default=None, repr=False)
    boxes: list[dict[str, Any]] = field(default_factory=list, repr=False)
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        """Release what the slice reader holds open (a fastMRI h5 file and its descriptor). A
        later read reopens it, so closing is always safe; readers that hold nothing open
        (DICOM, NIfTI) have nothing to release."""
        release = getattr(self.slice_reader, "close", None)
        if callable(release):
            release()

    def __enter__(self) -> "Study":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def read_slice(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < self.n_slices:
            raise IndexError(f"{self.source}: slice {index} out of range 0..{self.n_slices - 1}")
        return self.slice_reader(index)

    @property
    def missing_modalities(self) -> list[str]:
        """Image modalities this study does not have (k-space studies have both)."""
        if self.domain == "kspace":
            return []
        return [m for m in IMAGE_MODALITIES if m not in self.modalities]
