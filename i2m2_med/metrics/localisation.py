"""Does a saliency map point at the finding? The pointing game and the share of positive
attribution inside the finding's box (where the annotations give one).

A map is ``(H, W)``, larger = more evidence for the finding (GradCAM in [0, 1]; signed maps in
nats, whose negative part speaks against it). A box is ``(x, y, width, height)`` in pixels of a
``size`` x ``size`` image in the image convention (row 0 at the top), as
:func:`i2m2_med.io.annotations.read_fastmri_plus_boxes` returns them, and is mapped onto the
map's grid by :func:`box_mask` (every map pixel the box touches), widened by ``tolerance`` map
pixels: a map at the model's 64 x 64 cannot place a peak more finely than one of its pixels.

* :func:`pointing_hit`: the map's maximum lies inside a box. A map with no positive value points
  nowhere: it is a miss, not a hit by default (an empty GradCAM has its maximum everywhere).
* :func:`inside_share`: the positive attribution inside the boxes over all positive attribution
  (None for a map without positive attribution).
* :func:`chance_share`: the share of the map the widened boxes cover -- what a map that points
  at random achieves in the pointing game, on average.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from i2m2_med.errors import UsageError

Box = Sequence[float]


def box_mask(shape: tuple[int, int], boxes: Iterable[Box], size: int = 320, tolerance: int = 1) -> np.ndarray:
    """(H, W) bool: the map pixels any of ``boxes`` (in a ``size`` image) touches, widened by
    ``tolerance`` pixels on every side."""
    height, width = int(shape[0]), int(shape[1])
    if height < 1 or width < 1 or size < 1 or tolerance < 0:
        raise UsageError("box_mask", f"needs a non-empty map, size >= 1 and tolerance >= 0, got {shape}, {size}, {tolerance}")
    mask = np.zeros((height, width), dtype=bool)
    sy, sx = height / size, width / size
    for box in boxes:
        x, y, w, h = (float(v) for v in box)
        if w <= 0 or h <= 0:
            raise UsageError("box", f"width and height must be positive, got {tuple(box)}")
        c0 = int(np.floor(x * sx)) - tolerance
        c1 = int(np.ceil((x + w) * sx)) + tolerance
        r0 = int(np.floor(y * sy)) - tolerance
        r1 = int(np.ceil((y + h) * sy)) + tolerance
        mask[max(0, r0):max(0, min(height, r1)), max(0, c0):max(0, min(width, c1))] = True
    return mask


def _checked(smap: np.ndarray) -> np.ndarray:
    m = np.asarray(smap, dtype=np.float64)
    if m.ndim != 2 or not np.isfinite(m).all():
        raise UsageError("saliency map", f"expected a finite (H, W) map, got shape {m.shape}")
    return m


def pointing_hit(smap: np.ndarray, boxes: Iterable[Box], size: int = 320, tolerance: int = 1) -> bool:
    """True when the map's largest value is positive and lies inside a (widened) box; ties: any
    maximal pixel inside counts."""
    m = _checked(smap)
    peak = float(m.max())
    if peak <= 0:
        return False
    mask = box_mask(m.shape, boxes, size, tolerance)
    return bool(mask[m >= peak].any())


def inside_share(smap: np.ndarray, boxes: Iterable[Box], size: int = 320, tolerance: int = 1) -> float | None:
    """Positive attribution inside the (widened) boxes over all positive attribution; None when
    the map has none."""
    m = np.clip(_checked(smap), 0.0, None)
    total = float(m.sum())
    if total <= 0:
        return None
    return float(m[box_mask(m.shape, boxes, size, tolerance)].sum() / total)


def chance_share(shape: tuple[int, int], boxes: Iterable[Box], size: int = 320, tolerance: int = 1) -> float:
    """The share of the map the (widened) boxes cover."""
    return float(box_mask(shape, boxes, size, tolerance).mean())
