"""From the complex 320 x 320 knee image to fully sampled fastMRI-shaped k-space, and back.

fastMRI conventions reproduced here:

* k-space ``(S, 640, W)`` complex64 (singlecoil) or ``(S, C, 640, W)`` (multicoil); axis -2 is
  the readout (frequency encoding, superior-inferior), oversampled 2x: the image field of view
  along the readout is twice the reconstruction field of view, so the 320-row reconstruction is
  the centre of a 640-row image; axis -1 holds W phase-encoding columns (typically 368 or 372);
* the transforms are fastMRI's centred orthonormal FFTs:
  ``fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))`` over the last two axes;
* only columns ``[padding_left, padding_right)`` are acquired, the others are zero, and the
  ISMRMRD header says so (``encodingLimits/kspace_encoding_step_1``: centre = W // 2 -
  padding_left, maximum = padding_right - padding_left - 1), as fastMRI's SliceDataset reads it;
* ``reconstruction_esc`` = centre crop (320, 320) of |ifft2c(kspace)|; ``reconstruction_rss`` =
  centre crop of the root sum of squares over coils;
* the stored image is upside down with respect to the display orientation (the fastMRI+ boxes
  refer to the flipped image), so the display image is flipped (rows reversed) before embedding.

Outside the 320-row centre the leg continues along the readout: the outermost rows of the knee
image are extended with a cosine taper (the limb leaving the receive coil's sensitive volume).
Columns outside the 320 centre are air. Thermal noise is complex white Gaussian noise added on
the acquired k-space samples (equivalently in the image, the FFT being orthonormal).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

READOUT = 640
CROP = 320


def fft2c(x: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2-D FFT over the last two axes (fastMRI's fft2c), dtype preserved."""
    return sfft.fftshift(sfft.fft2(sfft.ifftshift(x, axes=(-2, -1)), norm="ortho", workers=1), axes=(-2, -1))


def ifft2c(k: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2-D inverse FFT over the last two axes (fastMRI's ifft2c)."""
    return sfft.fftshift(sfft.ifft2(sfft.ifftshift(k, axes=(-2, -1)), norm="ortho", workers=1), axes=(-2, -1))


def center_crop(x: np.ndarray, h: int = CROP, w: int = CROP) -> np.ndarray:
    """Centre crop of the last two axes with fastMRI's rounding ((size - crop) // 2 from the top/left)."""
    r0 = (x.shape[-2] - h) // 2
    c0 = (x.shape[-1] - w) // 2
    return x[..., r0:r0 + h, c0:c0 + w]


@dataclass(frozen=True)
class Encoding:
    """Phase-encoding layout of one acquisition: matrix width and the acquired columns."""

    width: int             # W, columns of k-space
    padding_left: int      # first acquired column
    padding_right: int     # one past the last acquired column

    @property
    def enc_center(self) -> int:
        return self.width // 2 - self.padding_left

    @property
    def enc_maximum(self) -> int:
        return self.padding_right - self.padding_left - 1


def draw_encoding(rng: np.random.Generator) -> Encoding:
    """A realistic knee phase-encoding layout: W in {368 (60 %), 372 (30 %), 356, 386}, 14-20
    zero-padded columns on each side (possibly asymmetric)."""
    width = int(rng.choice([368, 372, 356, 386], p=[0.6, 0.3, 0.05, 0.05]))
    left = int(rng.integers(14, 21))
    right = width - int(rng.integers(14, 21))
    return Encoding(width=width, padding_left=left, padding_right=right)


def embed_image(display: np.ndarray, width: int) -> np.ndarray:
    """Place display-orientation images (S, 320, 320) complex into the (S, 640, W) image grid.

    Rows are reversed (stored orientation); the readout extension repeats the edge rows of the
    knee with a cosine taper over 120 rows; columns outside the centre 320 are zero.
    """
    s = display.shape[0]
    out = np.zeros((s, READOUT, width), np.complex64)
    r0 = (READOUT - CROP) // 2
    c0 = (width - CROP) // 2
    stored = display[:, ::-1, :]
    out[:, r0:r0 + CROP, c0:c0 + CROP] = stored
    ramp = 120
    taper = (0.5 * (1 + np.cos(np.pi * np.arange(1, ramp + 1) / ramp))).astype(np.float32)  # 1 -> 0
    out[:, r0 - ramp:r0, c0:c0 + CROP] = stored[:, :1, :] * taper[::-1, None]
    out[:, r0 + CROP:r0 + CROP + ramp, c0:c0 + CROP] = stored[:, -1:, :] * taper[:, None]
    return out


def coil_sensitivities(rng: np.random.Generator, n_coils: int, width: int) -> np.ndarray:
    """Smooth complex receive sensitivities (C, 640, W) complex64 of a knee array.

    Coils sit on a cylinder around the knee: in the coronal plane at angles spread around the
    limb, at a distance (partly out of plane) that sets how fast the sensitivity falls off;
    each has its own phase offset and a gentle phase gradient. Normalised so that the root sum
    of squares is ~1 in the centre.
    """
    y, x = np.mgrid[0:READOUT, 0:width].astype(np.float32)
    y = (y - READOUT / 2) / CROP  # in units of the recon field of view
    x = (x - width / 2) / CROP
    angles = np.linspace(0, 2 * np.pi, n_coils, endpoint=False) + rng.uniform(0, 2 * np.pi)
    maps = np.empty((n_coils, READOUT, width), np.complex64)
    for i, a in enumerate(angles):
        cx, cy = 0.42 * np.cos(a), 0.42 * np.sin(a) * 0.9
        depth = 0.18 + 0.12 * rng.random()
        mag = 1.0 / (1.0 + ((x - cx) ** 2 + (y - cy) ** 2 + depth**2) / 0.09)
        ph = rng.uniform(-np.pi, np.pi) + rng.normal(0, 1.2) * x + rng.normal(0, 1.2) * y
        maps[i] = (mag * np.exp(1j * ph)).astype(np.complex64)
    centre = np.sqrt((np.abs(maps[:, READOUT // 2 - 20:READOUT // 2 + 20, width // 2 - 20:width // 2 + 20]) ** 2).sum(0)).mean()
    return (maps / centre).astype(np.complex64)


def to_kspace(
    image: np.ndarray,
    enc: Encoding,
    noise_sigma: float,
    rng: np.random.Generator,
    sens: np.ndarray | None = None,
) -> np.ndarray:
    """Fully sampled k-space of one slice.

    ``image`` (640, W) complex64 (already embedded); ``sens`` (C, 640, W) for multicoil.
    Returns (640, W) or (C, 640, W) complex64 with complex Gaussian noise (std ``noise_sigma``
    per real/imaginary part) on the acquired columns and exact zeros on the padded ones.
    """
    x = image if sens is None else sens * image[None]
    k = fft2c(x.astype(np.complex64, copy=False))
    acq = slice(enc.padding_left, enc.padding_right)
    shape = k[..., acq].shape
    noise = rng.standard_normal((*shape, 2), dtype=np.float32).view(np.complex64)[..., 0]
    noise *= np.float32(noise_sigma)
    k[..., acq] += noise
    k[..., :enc.padding_left] = 0
    k[..., enc.padding_right:] = 0
    return k.astype(np.complex64, copy=False)


def reconstruct(kspace: np.ndarray, img: np.ndarray | None = None) -> np.ndarray:
    """(S, 320, 320) float32 = centre crop of |ifft2c(kspace)|; RSS over coils when (S, C, 640, W).

    ``img``: ``center_crop(ifft2c(kspace))`` when the caller has it already."""
    if img is None:
        img = ifft2c(kspace.astype(np.complex64, copy=False))
    if kspace.ndim == 4:
        mag = np.sqrt((np.abs(img) ** 2).sum(axis=1))
    else:
        mag = np.abs(img)
    return np.ascontiguousarray(center_crop(mag)).astype(np.float32)
