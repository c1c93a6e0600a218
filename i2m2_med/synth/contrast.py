"""Tissue contrast of the coronal PD and PD fat-sat turbo spin echo, and receive-coil shading.

Relative signal (fat on PD = 1) per tissue, from the usual appearance of knee PD / PD-FS:

==========  =====  ======  =================================================
tissue      PD     PD-FS   note
==========  =====  ======  =================================================
fat         1.00   0.10    suppressed by the fat-sat pulse
muscle      0.38   0.30
marrow      0.86   0.13    fatty (yellow) marrow of the adult knee
cortex      0.04   0.04    short T2*, no signal
cartilage   0.50   0.46    intermediate
fluid       0.72   0.92    long T2: bright, brightest on PD-FS
meniscus    0.10   0.07    fibrocartilage, short T2: dark
ligament    0.14   0.11    dark, slightly brighter than meniscus
vessel      0.06   0.06    flow void of the turbo spin echo
tendon      0.08   0.07
==========  =====  ======  =================================================

Each subject gets its own contrast (every value x N(1, 0.05)), tissue texture (trabecular
pattern of marrow, fibres of muscle; multiplicative, amplitude per tissue) and a smooth receive
shading (a bias field 1 +- 0.25 across the field of view, brighter near the surface coil).
Field strength changes the signal-to-noise ratio (noise in :mod:`i2m2_med.synth.kspace`), not
these relative values.
"""

from __future__ import annotations

import numpy as np

from i2m2_med.synth.anatomy import GRID, TISSUES

_PD = {"air": 0.0, "fat": 1.0, "muscle": 0.38, "marrow": 0.86, "cortex": 0.04, "cartilage": 0.50,
       "fluid": 0.72, "meniscus": 0.10, "ligament": 0.14, "vessel": 0.06, "tendon": 0.08}
_FS = {"air": 0.0, "fat": 0.10, "muscle": 0.30, "marrow": 0.13, "cortex": 0.04, "cartilage": 0.46,
       "fluid": 0.92, "meniscus": 0.07, "ligament": 0.11, "vessel": 0.06, "tendon": 0.07}
_TEXTURE = {"fat": 0.03, "muscle": 0.05, "marrow": 0.07, "cartilage": 0.04, "fluid": 0.02,
            "meniscus": 0.08, "ligament": 0.08, "tendon": 0.06}


def tissue_lut(rng: np.random.Generator, fat_sat: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-tissue-code (signal, texture amplitude), each (n_codes,) float32, for one subject."""
    base = _FS if fat_sat else _PD
    n = max(TISSUES.values()) + 1
    lut = np.zeros(n, np.float32)
    amp = np.zeros(n, np.float32)
    for name, code in TISSUES.items():
        lut[code] = base[name] * float(rng.normal(1.0, 0.05))
        amp[code] = _TEXTURE.get(name, 0.0)
    return lut, amp


def base_magnitude(tissue: np.ndarray, texture: np.ndarray, lut: np.ndarray, amp: np.ndarray) -> np.ndarray:
    """Noise-free magnitude (same shape as ``tissue``) float32 from tissue codes and texture."""
    return (lut[tissue] * (1.0 + amp[tissue] * texture)).astype(np.float32)


def bias_field(rng: np.random.Generator) -> np.ndarray:
    """Smooth receive shading (320, 320) float32, mean ~1 over the knee, range ~0.75-1.25."""
    y, x = np.mgrid[0:GRID, 0:GRID].astype(np.float32) / GRID - 0.5
    c = rng.normal(0.0, 0.18, 5)
    field = 1.0 + c[0] * x + c[1] * y + c[2] * x * y + c[3] * (x**2 - 1 / 12) * 2 + c[4] * (y**2 - 1 / 12) * 2
    return np.clip(field, 0.6, 1.4).astype(np.float32)
