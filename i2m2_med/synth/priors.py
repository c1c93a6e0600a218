"""Numbers derived from the real fastMRI+ knee annotations, written here as parameters.

Source: ``knee_label_stats.txt|json`` computed from the public fastMRI+ ``knee.csv`` (Microsoft,
MIT licence; 1,172 reviewed knee volumes, 974 of them with at least one box). Nothing here is
a copy of the annotations; these are summary statistics.

Conventions of the numbers below:

* box ``x``/``y`` are the top-left corner in the **display** orientation of the 320 x 320
  reconstruction (flipped up/down with respect to the stored ``reconstruction_esc``; femur at
  the top), which is also the orientation in which :mod:`i2m2_med.synth.anatomy` draws the knee;
* ``width``/``height`` quartiles (q25, q50, q75) in pixels of the 320 x 320 image
  (0.4375 mm at the usual 140 mm field of view);
* ``extent`` = number of consecutive slices one finding spans, (median, q75), over the
  (file, label) groups;
* ``centre_rel`` = the median annotated slice divided by 36 (the typical fastMRI knee volume has
  34-38 slices; slice 0 is anterior);
* ``volume_prev`` = volumes with the label / 1,172 reviewed volumes.

Slice-level prevalence under the I2M2 head mapping (slices with >= 1 box / (1,172 x ~36)):
ACL 3.4 %, MTEAR 11.5 %, CART 7.1 %, ABNORMAL 10.6 %; volume-level ACL 21.7 %, MTEAR 56.6 %,
CART 50.7 %, ABNORMAL 49.2 %. The generator aims at these volume-level numbers (see
:data:`TARGET_VOLUME_PREVALENCE`); the slice-level ones follow from the extents.
"""

from __future__ import annotations

from dataclasses import dataclass

REAL_REVIEWED_VOLUMES = 1172
REAL_TYPICAL_SLICES = 36

#: Volume-level prevalence per head in the real fastMRI+ knee set (fraction of reviewed volumes).
TARGET_VOLUME_PREVALENCE: dict[str, float] = {"acl": 0.217, "mtear": 0.566, "cart": 0.507, "abnormal": 0.492}
#: Slice-level prevalence per head in the real set (fraction of all slices, ~36 per volume).
REAL_SLICE_PREVALENCE: dict[str, float] = {"acl": 0.034, "mtear": 0.115, "cart": 0.071, "abnormal": 0.106}


@dataclass(frozen=True)
class LabelStats:
    """Summary statistics of one fastMRI+ label (pixels of the 320 x 320 display image)."""

    label: str                       # exact fastMRI+ label string (trailing spaces included)
    width_q: tuple[float, float, float]
    height_q: tuple[float, float, float]
    x_q: tuple[float, float, float]
    y_q: tuple[float, float, float]
    extent: tuple[float, float]      # slices spanned: (median, q75)
    centre_rel: float                # median annotated slice / 36
    volume_prev: float               # volumes with this label / 1,172


LABEL_STATS: dict[str, LabelStats] = {
    s.label: s
    for s in (
        LabelStats("Meniscus Tear", (17, 24.5, 37), (12, 15, 18), (76, 174, 222), (174, 183, 192), (7, 10), 22 / 36, 663 / 1172),
        LabelStats("Ligament - ACL Low Grade sprain", (17, 20, 23), (29, 36, 44), (141, 148, 156), (133, 144, 157), (5, 6), 22 / 36, 153 / 1172),
        LabelStats("Ligament - ACL High Grade Sprain", (17, 20, 24), (25, 33, 41), (146, 151, 158), (130, 142.5, 157), (7, 9), 22 / 36, 101 / 1172),
        LabelStats("Cartilage - Partial Thickness loss/defect", (20, 29, 38), (9, 11, 14), (98, 125, 193), (173, 181, 190), (4, 8), 22 / 36, 588 / 1172),
        LabelStats("Cartilage - Full Thickness loss/defect", (31, 40, 48), (10, 12, 15), (89, 182, 199.5), (176, 184, 189), (5, 7), 22 / 36, 122 / 1172),
        LabelStats("Joint Effusion ", (41, 53, 73.5), (113, 135, 155), (68.5, 99, 210), (4, 9, 31), (7, 9), 13 / 36, 142 / 1172),
        LabelStats("Bone- Subchondral edema", (19, 25, 34), (17, 24.5, 34), (99.25, 159.5, 199), (128.25, 161, 191), (4, 8), 19 / 36, 196 / 1172),
        LabelStats("Bone-Fracture/Contusion/dislocation", (31, 47, 67), (34, 46, 61), (79, 126, 183), (116, 177.5, 200.25), (8, 11), 21 / 36, 119 / 1172),
        LabelStats("Periarticular cysts", (31, 46, 62.25), (39, 70.5, 105.25), (94, 160, 189), (100, 131, 168), (4, 7), 31 / 36, 161 / 1172),
        LabelStats("Ligament - MCL Low-Mod Grade Sprain", (15, 18, 20), (52, 58, 67), (58, 218, 251), (106, 118, 125), (2, 3), 21 / 36, 121 / 1172),
    )
}
