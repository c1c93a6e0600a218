"""Findings and their mimics: planning (which slices, which sites, which label) and drawing cues.

Lesion classes, the fastMRI+ labels they produce and the head each feeds
(:func:`i2m2_med.heads.head_of_label`):

===========  =====================================================  ========  ===================
class        fastMRI+ labels (relative frequency)                    head      sites
===========  =====================================================  ========  ===================
meniscus     Meniscus Tear                                          mtear     medial / lateral
acl          ACL Low Grade sprain (60 %), High Grade Sprain (40 %)  acl       proximal / distal
cartilage    Partial Thickness (83 %), Full Thickness (17 %)        cart      medial / lateral
bone         Subchondral edema (62 %), Fracture/Contusion (38 %)    abnormal  med/lat x fem/tib
cyst         Periarticular cysts                                    abnormal  medial / lateral
effusion     "Joint Effusion " (trailing space, as in fastMRI+)     abnormal  medial / lateral
===========  =====================================================  ========  ===================

Planning (:func:`plan_episodes`): a class's *eligible* slices are those where all its sites are
visible; they are tiled into episodes whose lengths follow the real slice extents (log-normal
through the fastMRI+ median and q75, scaled by S / 36). If the subject has the class
(:mod:`i2m2_med.synth.risk`), one episode chosen uniformly, plus each other with probability
0.2, is a finding; the rest are mimics. Box sizes follow the real width/height quartiles
(log-normal through q25/q50/q75), clamped to at least :data:`MIN_CUE_PX` pixels so that a cue
still covers >= 2-3 pixels after the 320 -> 64-96 resize of the compact models; ACL cues
cover half the ligament (proximal or distal), so their boxes are about 20 x 19 pixels rather
than the real 20 x 35.

Cues (:func:`draw_cues`): a magnitude cue blends the tissue inside a soft ellipse (restricted
to the tissues the lesion lives in, slightly dilated) towards the lesion's signal -- fluid-like
in soft tissue (bright on PD-FS; on PD brighter than meniscus, ligament and cartilage, darker
than fat), oedema-like in bone (darker than fatty marrow on PD, brighter on PD-FS); a phase cue
adds +-0.8..1.3 rad, flat over the footprint and 25 % beyond it, tapering to zero at twice its
radii (1.15 / 1.6 for the small ACL sites): the net off-resonance of blood products,
calcification or gas, or the phase of flowing spins, averaged over the slice thickness. The
flat top matters: the compact models resample phase through the magnitude-weighted complex
image, so a phase cue that varied under a magnitude cue would leak the magnitude into the phase
channel. Mimics use the very same generators (sizes, amplitudes, sites), so in the ``inter``
regime a single modality cannot tell them from findings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from i2m2_med.heads import head_of_label
from i2m2_med.synth.anatomy import GRID, SITE_PAIRS, TISSUES, KneeVolume
from i2m2_med.synth.priors import LABEL_STATS, REAL_TYPICAL_SLICES
from i2m2_med.synth.regimes import Expression, RegimeParams, express
from i2m2_med.synth.risk import CLASS_ORDER

MIN_CUE_PX = 14.0
FINDING_EXTRA_EPISODE_P = 0.2
_T = TISSUES


BONE_TISSUES = ("marrow", "cortex")


@dataclass(frozen=True)
class LesionClass:
    """A family of findings that share sites, tissues and a lesion intensity."""

    name: str
    labels: tuple[tuple[str, float], ...]       # (fastMRI+ label, relative frequency)
    sites: tuple[str, ...]
    site_groups: tuple[int, ...]                # side of each site (0 medial / proximal, 1 other)
    tissues: tuple[str, ...]                    # where a magnitude cue may change the signal
    dilate_px: int                              # tissue mask dilation (thickening, oedema around)
    soft_target: tuple[float, float]            # lesion intensity in soft tissue (PD, PD-FS): fluid-like
    bone_target: tuple[float, float] = (0.40, 0.70)  # lesion intensity in bone (PD, PD-FS): oedema
    height_factor: float = 1.0                  # cue height / real box height (ACL: half ligament)
    phase_plateau: float = 1.25                 # phase cue: flat out to this elliptic radius ...
    phase_reach: float = 2.0                    # ... and tapering to zero here (footprint radii)

    @property
    def head(self) -> str:
        return head_of_label(self.labels[0][0])  # type: ignore[return-value]


LESION_CLASSES: dict[str, LesionClass] = {
    c.name: c
    for c in (
        LesionClass("acl", (("Ligament - ACL Low Grade sprain", 153), ("Ligament - ACL High Grade Sprain", 101)),
                    SITE_PAIRS["acl"], (0, 1), ("ligament",), 3, (0.62, 0.66), height_factor=0.55,
                    phase_plateau=1.15, phase_reach=1.6),
        LesionClass("meniscus", (("Meniscus Tear", 1.0),), SITE_PAIRS["meniscus"], (0, 1),
                    ("meniscus", "fluid", "cartilage"), 1, (0.66, 0.70)),
        LesionClass("cartilage", (("Cartilage - Partial Thickness loss/defect", 588), ("Cartilage - Full Thickness loss/defect", 122)),
                    SITE_PAIRS["cartilage"], (0, 1), ("cartilage", "fluid", "cortex", "marrow"), 1, (0.95, 0.95)),
        LesionClass("bone", (("Bone- Subchondral edema", 196), ("Bone-Fracture/Contusion/dislocation", 119)),
                    SITE_PAIRS["bone"], (0, 1, 0, 1), BONE_TISSUES, 0, (0.40, 0.70)),
        LesionClass("cyst", (("Periarticular cysts", 1.0),), SITE_PAIRS["cyst"], (0, 1),
                    ("fat", "muscle", "fluid", "tendon"), 0, (0.62, 0.92)),
        LesionClass("effusion", (("Joint Effusion ", 1.0),), SITE_PAIRS["effusion"], (0, 1),
                    ("fat", "muscle", "fluid", "tendon"), 0, (0.62, 0.92)),
    )
}
assert tuple(sorted(LESION_CLASSES)) == tuple(sorted(CLASS_ORDER))


@dataclass
class Episode:
    """A run of consecutive slices of one class that is a finding or a mimic.

    ``footprints[slice][site] = (x, y, w, h)``: top-left corner and size in display pixels
    (row 0 superior) of the cue ellipse's bounding box on that site.
    """

    cls: str
    label: str
    finding: bool
    slices: tuple[int, ...]
    expression: Expression
    mag_alpha: float
    mag_jitter: float
    phase_amp: float
    footprints: dict[int, dict[int, tuple[int, int, int, int]]] = field(default_factory=dict)

    @property
    def head(self) -> str:
        return head_of_label(self.label)  # type: ignore[return-value]

    def box(self, k: int) -> tuple[int, int, int, int]:
        """The finding's box on slice k (display coordinates): the footprint on its own site."""
        return self.footprints[k][self.expression.site]


def _lognormal_through(rng: np.random.Generator, q_lo: float, q_mid: float, q_hi: float) -> float:
    """Draw from a log-normal whose median is q_mid and whose quartiles approximate q_lo / q_hi."""
    sigma = max(np.log(q_hi / q_lo) / (2 * 0.6745), 1e-3)
    return float(np.exp(rng.normal(np.log(q_mid), sigma)))


def _extent(rng: np.random.Generator, label: str, n_slices: int) -> int:
    med, q75 = LABEL_STATS[label].extent
    sigma = max(np.log(q75 / med) / 0.6745, 0.05)
    scale = n_slices / REAL_TYPICAL_SLICES
    return max(1, int(round(np.exp(rng.normal(np.log(med * scale), sigma)))))


def _pick_label(rng: np.random.Generator, cls: LesionClass) -> str:
    w = np.array([f for _, f in cls.labels], float)
    return cls.labels[int(rng.choice(len(w), p=w / w.sum()))][0]


def plan_episodes(
    rng: np.random.Generator, knee: KneeVolume, classes_present: dict[str, bool], regime: RegimeParams
) -> list[Episode]:
    """Tile every class's eligible slices into episodes; decide findings, mimics and cue sites."""
    episodes: list[Episode] = []
    n = knee.geometry.n_slices
    for name in CLASS_ORDER:
        cls = LESION_CLASSES[name]
        eligible = [k for k in range(n) if all(s in knee.sites[k] for s in cls.sites)]
        if not eligible:
            continue
        runs = _consecutive_runs(eligible)
        tiles: list[tuple[str, tuple[int, ...]]] = []
        for run in runs:
            i = 0
            while i < len(run):
                label = _pick_label(rng, cls)
                length = _extent(rng, label, n)
                tiles.append((label, tuple(run[i:i + length])))
                i += length
        finding = np.zeros(len(tiles), bool)
        if classes_present.get(name, False):
            finding[int(rng.integers(len(tiles)))] = True
            finding |= rng.random(len(tiles)) < FINDING_EXTRA_EPISODE_P
        for (label, slices), is_finding in zip(tiles, finding):
            expr = express(rng, regime, bool(is_finding), cls.site_groups)
            ep = Episode(
                cls=name,
                label=label,
                finding=bool(is_finding),
                slices=slices,
                expression=expr,
                mag_alpha=float(rng.uniform(0.7, 0.95)),
                mag_jitter=float(rng.normal(1.0, 0.08)),
                phase_amp=float(rng.choice([-1.0, 1.0]) * rng.uniform(0.8, 1.3)),
            )
            _place_footprints(rng, ep, cls, knee)
            episodes.append(ep)
    return episodes


def _consecutive_runs(ks: list[int]) -> list[list[int]]:
    runs: list[list[int]] = [[ks[0]]]
    for k in ks[1:]:
        if k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    return runs


def _place_footprints(rng: np.random.Generator, ep: Episode, cls: LesionClass, knee: KneeVolume) -> None:
    st = LABEL_STATS[ep.label]
    scale = knee.geometry.scale
    w = max(MIN_CUE_PX, _lognormal_through(rng, *st.width_q) * scale)
    h = max(MIN_CUE_PX, _lognormal_through(rng, *st.height_q) * scale * cls.height_factor)
    w, h = min(w, 90.0), min(h, 160.0)
    dx, dy = rng.normal(0.0, 0.10 * w), rng.normal(0.0, 0.10 * h)
    used = {i for i in (ep.expression.site, ep.expression.mag_site, ep.expression.phase_site) if i is not None}
    m = len(ep.slices)
    for j, k in enumerate(ep.slices):
        taper = 0.8 if (m >= 3 and j in (0, m - 1)) else 1.0
        ww, hh = max(MIN_CUE_PX, w * taper), max(MIN_CUE_PX, h * taper)
        per: dict[int, tuple[int, int, int, int]] = {}
        for i in used:
            cx, cy = knee.sites[k][cls.sites[i]]
            x0 = int(round(np.clip(cx + dx - ww / 2, 0, GRID - ww)))
            y0 = int(round(np.clip(cy + dy - hh / 2, 0, GRID - hh)))
            per[i] = (x0, y0, int(round(ww)), int(round(hh)))
        ep.footprints[k] = per


# ---- drawing ------------------------------------------------------------------------------


def _ellipse_r(box: tuple[int, int, int, int], pad: int) -> tuple[tuple[slice, slice], np.ndarray]:
    """Window around a box and the normalised elliptic radius (1 on the box's inscribed ellipse)."""
    x0, y0, w, h = box
    r0, r1 = max(0, y0 - pad), min(GRID, y0 + h + pad)
    c0, c1 = max(0, x0 - pad), min(GRID, x0 + w + pad)
    yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32)
    cy, cx = y0 + h / 2.0 - 0.5, x0 + w / 2.0 - 0.5
    r = np.sqrt(((xx - cx) / (w / 2.0)) ** 2 + ((yy - cy) / (h / 2.0)) ** 2)
    return (slice(r0, r1), slice(c0, c1)), r


def draw_cues(
    episodes: list[Episode],
    k: int,
    magnitude: np.ndarray,
    phase: np.ndarray,
    tissue: np.ndarray,
    fat_sat: bool,
) -> None:
    """Draw every cue of slice ``k`` in place: ``magnitude`` and ``phase`` (320, 320) float32
    (display orientation), ``tissue`` (320, 320) uint8 of that slice."""
    for ep in episodes:
        per = ep.footprints.get(k)
        if per is None:
            continue
        cls = LESION_CLASSES[ep.cls]
        if ep.expression.mag_site is not None:
            win, r = _ellipse_r(per[ep.expression.mag_site], pad=3)
            weight = 1.0 / (1.0 + np.exp((r - 0.85) / 0.08))
            allowed = np.isin(tissue[win], [_T[t] for t in cls.tissues])
            if cls.dilate_px:
                allowed = ndimage.binary_dilation(allowed, iterations=cls.dilate_px)
            weight = weight * allowed
            j = 1 if fat_sat else 0
            in_bone = np.isin(tissue[win], [_T[t] for t in BONE_TISSUES])
            target = np.where(in_bone, cls.bone_target[j], cls.soft_target[j]) * ep.mag_jitter
            region = magnitude[win]
            region += ep.mag_alpha * weight * (target - region)
        if ep.expression.phase_site is not None:
            x0, y0, w, h = per[ep.expression.phase_site]
            win, r = _ellipse_r(per[ep.expression.phase_site], pad=int(np.ceil(0.5 * (cls.phase_reach - 1) * max(w, h))) + 2)
            taper = np.clip((cls.phase_reach - r) / (cls.phase_reach - cls.phase_plateau), 0.0, 1.0)
            phase[win] += ep.phase_amp * (0.5 - 0.5 * np.cos(np.pi * taper))


def slice_labels(episodes: list[Episode], n_slices: int, heads: tuple[str, ...]) -> np.ndarray:
    """(S, 4) bool: true findings per slice and head."""
    out = np.zeros((n_slices, len(heads)), bool)
    for ep in episodes:
        if ep.finding:
            out[list(ep.slices), heads.index(ep.head)] = True
    return out


def finding_boxes(episodes: list[Episode]) -> list[dict]:
    """Boxes of the true findings, display coordinates: rows of slice, x, y, width, height, label."""
    rows = []
    for ep in episodes:
        if not ep.finding:
            continue
        for k in ep.slices:
            x, y, w, h = ep.box(k)
            rows.append({"slice": int(k), "x": x, "y": y, "width": w, "height": h, "label": ep.label})
    rows.sort(key=lambda r: (r["slice"], r["label"], r["x"]))
    return rows
