"""The pointing game and the attribution inside a box, on hand-made maps."""

from __future__ import annotations

import numpy as np
import pytest

from i2m2_med.errors import UsageError
from i2m2_med.metrics.localisation import box_mask, chance_share, inside_share, pointing_hit


def test_a_box_of_the_320_image_covers_the_map_pixels_it_touches() -> None:
    # (x=50, y=100, 20 x 15) at 64 / 320 = 0.2: columns 10..14 (x 50..70), rows 20..23 (y 100..115)
    mask = box_mask((64, 64), [(50, 100, 20, 15)], tolerance=0)
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (20, 22, 10, 13)
    wide = box_mask((64, 64), [(50, 100, 20, 15)], tolerance=1)
    rows, cols = np.nonzero(wide)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (19, 23, 9, 14)
    assert chance_share((64, 64), [(50, 100, 20, 15)], tolerance=0) == pytest.approx(3 * 4 / 64**2)
    edge = box_mask((64, 64), [(0, 0, 5, 5)], tolerance=2)  # clipped at the border
    assert edge[:3, :3].all() and edge.sum() == 9
    with pytest.raises(UsageError):
        box_mask((64, 64), [(0, 0, 0, 5)])


def test_pointing_game_and_inside_share_by_hand() -> None:
    box = [(50, 100, 20, 15)]  # map rows 20..22, columns 10..13
    smap = np.zeros((64, 64))
    smap[21, 12] = 3.0  # the peak, inside
    smap[40, 40] = 1.0  # positive mass outside
    smap[5, 5] = -9.0  # evidence against: not part of the positive share
    assert pointing_hit(smap, box, tolerance=0)
    assert inside_share(smap, box, tolerance=0) == pytest.approx(3.0 / 4.0)
    smap[40, 40] = 4.0  # now the peak is outside
    assert not pointing_hit(smap, box, tolerance=0)
    assert inside_share(smap, box, tolerance=0) == pytest.approx(3.0 / 7.0)
    near = np.zeros((64, 64))
    near[23, 12] = 1.0  # one row below the box: a hit only with the one-pixel tolerance
    assert not pointing_hit(near, box, tolerance=0) and pointing_hit(near, box, tolerance=1)


def test_an_empty_or_negative_map_points_nowhere() -> None:
    box = [(0, 0, 320, 320)]  # the whole image
    assert not pointing_hit(np.zeros((8, 8)), box)  # an empty GradCAM: its maximum is everywhere, yet no point
    assert not pointing_hit(-np.ones((8, 8)), box)
    assert inside_share(np.zeros((8, 8)), box) is None
    with pytest.raises(UsageError):
        pointing_hit(np.full((8, 8), np.nan), box)
