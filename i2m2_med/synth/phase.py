"""Background phase of the complex knee image (radians), before the lesion and mimic cues.

Sources, all smooth or anatomical, none of them label-dependent:

* **transceive / B1 phase** of the (emulated single-) coil combination: a low-order polynomial
  over the field of view, a constant offset uniform in [-pi, pi], drifting slowly across slices;
* **B0 off-resonance**: residual shim error, a smooth second-order field; a turbo spin echo
  refocuses static off-resonance at the echo centre, so only a fraction (the echo-shift
  residual) reaches the image, ~0.5 rad across the knee at 3 T (scaled by field strength);
* **tissue susceptibility**: chi of cortical bone (-2.2 ppm relative to water), fat (+0.6 ppm)
  and air (+9.4 ppm) convolved with the 2-D dipole kernel D(k) = 1/3 - k_B0^2 / |k|^2 (B0 along
  the superior-inferior axis, the vertical of the coronal image), scaled to the same residual
  fraction; it outlines the skin, bones and joint faintly, as real phase images do;
* **flow**: spins moving through the popliteal vessels accrue a velocity-dependent phase
  (first gradient moment of the readout), a constant offset inside the vessel lumen.

The phase images are therefore smooth with faint anatomy and wraps where the smooth terms
exceed pi; the lesion and mimic phase cues (:mod:`i2m2_med.synth.lesions`) add to this. In a
real turbo spin echo these local phase effects are weaker than modelled here: the synthetic
cohort is a controlled test bed in which the phase carries a known amount of evidence.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from i2m2_med.synth.anatomy import GRID, TISSUES

_CHI_PPM = {"cortex": -2.2, "fat": 0.6, "air": 9.4}


def _dipole_kernel() -> np.ndarray:
    ky = np.fft.fftfreq(GRID)[:, None]
    kx = np.fft.rfftfreq(GRID)[None, :]
    k2 = kx**2 + ky**2
    k2[0, 0] = 1.0
    d = 1.0 / 3.0 - ky**2 / k2
    d[0, 0] = 0.0
    return d.astype(np.float32)


_DIPOLE = _dipole_kernel()


def susceptibility_phase(tissue: np.ndarray, rad_per_ppm: float) -> np.ndarray:
    """(S, 320, 320) float32 phase of the dipole field of the tissue susceptibility map."""
    chi = np.zeros(max(TISSUES.values()) + 1, np.float32)
    for name, value in _CHI_PPM.items():
        chi[TISSUES[name]] = value
    field = sfft.irfft2(sfft.rfft2(chi[tissue], workers=1) * _DIPOLE, s=(GRID, GRID), workers=1)
    return (rad_per_ppm * field).astype(np.float32)


def smooth_phase(rng: np.random.Generator, n_slices: int, field_strength_t: float) -> np.ndarray:
    """(S, 320, 320) float32: coil/transceive phase plus residual B0, varying slowly over slices."""
    y, x = np.mgrid[0:GRID, 0:GRID].astype(np.float32) / GRID - 0.5
    basis = np.stack([x, y, x * y, x**2 - 1 / 12, y**2 - 1 / 12])  # (5, H, W)
    b0 = field_strength_t / 2.89362
    c_coil = rng.normal(0.0, [1.6, 1.6, 1.0, 1.2, 1.2]).astype(np.float32)
    c_b0 = b0 * rng.normal(0.0, [0.5, 0.5, 0.6, 0.8, 0.8]).astype(np.float32)
    drift = rng.normal(0.0, 0.25, 5).astype(np.float32)
    offset = float(rng.uniform(-np.pi, np.pi))
    s = (np.arange(n_slices, dtype=np.float32) / max(n_slices - 1, 1) - 0.5)[:, None]
    coef = (c_coil + c_b0)[None, :] + s * drift[None, :]            # (S, 5)
    ph = np.tensordot(coef, basis, axes=(1, 0)) + offset + 0.3 * s[:, :, None]
    return ph.astype(np.float32)


def flow_phase(tissue: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(S, 320, 320) float32: a constant velocity phase inside the vessels (popliteal flow)."""
    return np.where(tissue == TISSUES["vessel"], np.float32(rng.uniform(0.6, 1.6)), np.float32(0.0)).astype(np.float32)


def background_phase(
    rng: np.random.Generator, tissue: np.ndarray, field_strength_t: float, chi_phase: np.ndarray | None = None
) -> np.ndarray:
    """(S, 320, 320) float32 background phase in radians (not wrapped).

    ``chi_phase``: the susceptibility term when already computed for this subject
    (:func:`subject_susceptibility_phase`); it depends on the anatomy and field only."""
    if chi_phase is None:
        chi_phase = subject_susceptibility_phase(tissue, field_strength_t)
    out = smooth_phase(rng, tissue.shape[0], field_strength_t)
    out += chi_phase
    out += flow_phase(tissue, rng)
    return out


def subject_susceptibility_phase(tissue: np.ndarray, field_strength_t: float) -> np.ndarray:
    """Susceptibility phase of a subject's anatomy at its field strength, (S, 320, 320) float32."""
    return susceptibility_phase(tissue, rad_per_ppm=0.08 * field_strength_t / 2.89362)
