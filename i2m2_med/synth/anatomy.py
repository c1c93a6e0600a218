"""Coronal knee anatomy: tissue label maps slice by slice, anterior to posterior.

Geometry is drawn in the **display** orientation of the 320 x 320 reconstruction grid (row 0 =
superior, femur at the top, 0.4375 mm pixels for the usual 140 mm field of view), in knee
coordinates ``(u, v)``: ``v`` = pixels below the joint line, ``u`` = pixels towards the *lateral*
side. A subject's pose (scale, in-plane rotation, translation) and side (a left knee is the
mirror image of a right knee in the radiological convention) map ``(u, v)`` onto the grid.

The slice position ``t`` in [0, 1] runs from anterior (0) to posterior (1). What a slice shows
as ``t`` grows: subcutaneous fat and the patella with its tendons, Hoffa's fat pad and the
parapatellar recesses (t ~ 0.1-0.45); the femoral shaft, condyles and tibial plateau, the
menisci (anterior horns, bodies, posterior horns, t ~ 0.40-0.82), the intercondylar notch with
the ACL (t ~ 0.50-0.70) and the PCL (t ~ 0.60-0.82), the collateral ligaments and the fibular
head; then the posterior condyles, gastrocnemius heads and popliteal vessels (t > 0.78).
Landmark positions are tuned so that the sites where findings are planted fall where the real
fastMRI+ boxes are (see :mod:`i2m2_med.synth.priors`): menisci at x ~ 88 / 234, joint line at
y ~ 190, ACL centred at (158, 162), recesses at y 10-145, cysts posteriorly at y ~ 165.

Output per volume: ``tissue`` (S, 320, 320) uint8 (the codes in :data:`TISSUES`), ``texture``
(S, 320, 320) float32 (zero-mean trabecular / fibre texture, unit-free), and per slice the
``sites``: a dict ``site -> (x, y)`` in display pixels for every lesion site visible there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

GRID = 320
CX0, YJ0 = 161.0, 190.0  # display position of the knee centre on the joint line (pixels)

TISSUES: dict[str, int] = {
    "air": 0, "fat": 1, "muscle": 2, "marrow": 3, "cortex": 4, "cartilage": 5, "fluid": 6,
    "meniscus": 7, "ligament": 8, "vessel": 9, "tendon": 10,
}
_T = TISSUES

#: Lesion sites (two or more per class, on opposite sides or ends, so that a magnitude cue and a phase
#: cue can sit together or apart; see :mod:`i2m2_med.synth.regimes`).
SITE_PAIRS: dict[str, tuple[str, str]] = {
    "meniscus": ("meniscus_med", "meniscus_lat"),
    "acl": ("acl_prox", "acl_dist"),
    "cartilage": ("cart_med", "cart_lat"),
    "bone": ("bone_med_fem", "bone_lat_fem", "bone_med_tib", "bone_lat_tib"),
    "effusion": ("recess_med", "recess_lat"),
    "cyst": ("cyst_med", "cyst_lat"),
}


@dataclass(frozen=True)
class KneeGeometry:
    """One subject's knee: size, pose and anatomical variation. Lengths in display pixels."""

    n_slices: int
    scale: float = 1.0          # overall size factor
    rot_rad: float = 0.0        # in-plane rotation (varus/valgus tilt + positioning)
    shift_x: float = 0.0        # pixels
    shift_y: float = 0.0        # pixels
    side: int = 1               # +1: lateral to image right; -1: lateral to image left
    t_offset: float = 0.0       # antero-posterior shift of the landmarks (fraction of coverage)
    fat_px: float = 16.0        # subcutaneous fat thickness
    condyle_r: float = 44.0     # condyle radius
    condyle_u: float = 51.0     # condyle centre distance from the midline
    cart_px: float = 6.0        # articular cartilage thickness
    notch_w: float = 19.0       # half-width of the intercondylar notch
    limb_w: float = 126.0       # half-width of the limb at the joint line (without fat)
    texture_seed: int = 0

    def t_of(self, k: int) -> float:
        """Relative antero-posterior position of slice ``k`` (0 anterior, 1 posterior)."""
        return (k + 0.5) / self.n_slices + self.t_offset

    def to_display(self, u: float, v: float) -> tuple[float, float]:
        """Knee coordinates (u lateral, v below the joint line) -> display (x, y) pixels."""
        u = self.side * u
        c, s = np.cos(self.rot_rad), np.sin(self.rot_rad)
        x = self.scale * (c * u - s * v) + CX0 + self.shift_x
        y = self.scale * (s * u + c * v) + YJ0 + self.shift_y
        return float(x), float(y)


def draw_geometry(
    rng: np.random.Generator, n_slices: int, bmi: float = 26.5, sex: str = "F", knee_side: str | None = None
) -> KneeGeometry:
    """Draw one subject's knee; bigger in men, more subcutaneous fat with BMI.

    ``knee_side`` "R" puts the lateral side on the image right (+1), "L" on the left, matching the
    series geometry of :mod:`i2m2_med.synth.dicom_series` (a column step goes towards the
    patient's right); None draws it."""
    size = rng.normal(1.04 if sex == "M" else 0.97, 0.035)
    side_draw = 1 if rng.random() < 0.5 else -1
    side = side_draw if knee_side is None else (1 if knee_side == "R" else -1)
    return KneeGeometry(
        n_slices=n_slices,
        scale=float(np.clip(size, 0.88, 1.12)),
        rot_rad=float(np.deg2rad(rng.normal(0.0, 3.0))),
        shift_x=float(rng.normal(0.0, 5.0)),
        shift_y=float(rng.normal(0.0, 5.0)),
        side=side,
        t_offset=float(rng.normal(0.0, 0.02)),
        fat_px=float(np.clip(6.0 + 0.9 * (bmi - 18.0) + rng.normal(0, 2.0), 5.0, 34.0)),
        condyle_r=float(rng.normal(44.0, 2.0)),
        condyle_u=float(rng.normal(51.0, 2.0)),
        cart_px=float(rng.uniform(5.0, 7.0)),
        notch_w=float(rng.normal(19.0, 1.5)),
        limb_w=float(rng.normal(124.0, 5.0)),
        texture_seed=int(rng.integers(2**31)),
    )


@dataclass
class KneeVolume:
    """Rendered anatomy of one knee (display orientation)."""

    geometry: KneeGeometry
    tissue: np.ndarray                      # (S, 320, 320) uint8, codes of TISSUES
    texture: np.ndarray                     # (S, 320, 320) float32, zero-mean, ~unit std
    sites: list[dict[str, tuple[float, float]]] = field(default_factory=list)  # per slice


# ---- small geometric helpers (vectorised over the grid) -----------------------------------


def _window(t: float, a: float, b: float, ramp: float = 0.03) -> float:
    """1 inside [a, b], 0 outside, linear ramps of half-width ``ramp``."""
    lo = np.clip((t - (a - ramp)) / (2 * ramp), 0.0, 1.0)
    hi = np.clip(((b + ramp) - t) / (2 * ramp), 0.0, 1.0)
    return float(min(lo, hi))


def _ellipse(u, v, cu, cv, a, b):
    """Approximate signed distance (pixels, negative inside) to an axis-aligned ellipse."""
    return (np.sqrt(((u - cu) / a) ** 2 + ((v - cv) / b) ** 2) - 1.0) * min(a, b)


def _capsule(u, v, p0, p1, r):
    """Signed distance to a segment p0-p1 thickened by r."""
    du, dv = p1[0] - p0[0], p1[1] - p0[1]
    h = np.clip(((u - p0[0]) * du + (v - p0[1]) * dv) / (du * du + dv * dv), 0.0, 1.0)
    return np.hypot(u - p0[0] - h * du, v - p0[1] - h * dv) - r


def _window_of(g: KneeGeometry, pts: list[tuple[float, float]], margin: float) -> tuple[slice, slice]:
    """Display-grid window (rows, cols) that holds the knee-coordinate points plus a margin."""
    xy = [g.to_display(u, v) for u, v in pts]
    m = margin * g.scale + 3.0
    xs, ys = [p[0] for p in xy], [p[1] for p in xy]
    r0, r1 = max(0, int(min(ys) - m)), min(GRID, int(max(ys) + m) + 1)
    c0, c1 = max(0, int(min(xs) - m)), min(GRID, int(max(xs) + m) + 1)
    return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))


def _paint_capsule(lab, g, u, v, p0, p1, r, code, where=None) -> None:
    """Set ``lab`` to ``code`` inside the capsule p0-p1 of radius r (only its window is computed)."""
    if r <= 0:
        return
    win = _window_of(g, [p0, p1], r)
    inside = _capsule(u[win], v[win], p0, p1, r) < 0
    if where is not None:
        inside &= where[win]
    lab[win][inside] = code


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], corr_px: float) -> np.ndarray:
    """Gaussian random field, correlation length ~corr_px, zero mean, unit std (float32)."""
    white = rng.standard_normal(shape)
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    filt = np.exp(-2.0 * (np.pi * corr_px) ** 2 * (kx**2 + ky**2))
    field_ = np.fft.irfft2(np.fft.rfft2(white) * filt, s=shape)
    field_ -= field_.mean()
    return (field_ / (field_.std() + 1e-12)).astype(np.float32)


def knee_coords(g: KneeGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Knee coordinates (u lateral, v below the joint line) of every display pixel, (320, 320) each."""
    y, x = np.mgrid[0:GRID, 0:GRID].astype(np.float32)
    xr, yr = x - CX0 - g.shift_x, y - YJ0 - g.shift_y
    c, s = np.cos(g.rot_rad), np.sin(g.rot_rad)
    u = (c * xr + s * yr) / g.scale
    v = (-s * xr + c * yr) / g.scale
    return (g.side * u).astype(np.float32), v.astype(np.float32)


# ---- the renderer -------------------------------------------------------------------------


def render_knee(g: KneeGeometry) -> KneeVolume:
    """Render all slices of one knee: tissue codes, texture and lesion sites per slice."""
    u, v = knee_coords(g)
    au = np.abs(u)
    trng = np.random.default_rng(g.texture_seed)
    pad = 3 * g.n_slices + 8
    fine = _smooth_noise(trng, (GRID + pad, GRID + pad), 1.6)
    coarse = _smooth_noise(trng, (GRID + pad, GRID + pad), 5.0)
    tissue = np.empty((g.n_slices, GRID, GRID), np.uint8)
    texture = np.empty((g.n_slices, GRID, GRID), np.float32)
    sites: list[dict[str, tuple[float, float]]] = []
    for k in range(g.n_slices):
        t = g.t_of(k)
        lab, slice_sites = _render_slice(g, t, u, v, au)
        tissue[k] = lab
        o = 3 * k
        texture[k] = 0.8 * fine[o:o + GRID, o:o + GRID] + 0.6 * coarse[o:o + GRID, pad - o:pad - o + GRID]
        sites.append({name: g.to_display(*uv) for name, uv in slice_sites.items()})
    return KneeVolume(geometry=g, tissue=tissue, texture=texture, sites=sites)


def _render_slice(g: KneeGeometry, t: float, u, v, au):
    """Tissue codes (320, 320) uint8 of the slice at position t and its visible lesion sites (u, v)."""
    R, cu, cth = g.condyle_r, g.condyle_u, g.cart_px
    lab = np.zeros(u.shape, np.uint8)
    sites: dict[str, tuple[float, float]] = {}

    # limb envelope: narrower at the anterior and posterior ends of the coverage
    ap = float(np.sqrt(max(0.05, 1.0 - ((t - 0.55) / 0.62) ** 2)))
    half = (g.limb_w + g.fat_px) * ap * (1.0 + 0.10 * np.clip(-v / 250.0, -0.6, 1.0))
    inside = au < half
    lab[inside] = _T["fat"]
    deep = au < half - g.fat_px
    # deep soft tissue: thigh muscles above, calf muscles below, fat around the joint
    muscle = deep & ((v < -105) | (v > 85))
    lab[deep] = _T["fat"]
    lab[muscle] = _T["muscle"]
    w_post = _window(t, 0.80, 1.2, 0.04)
    if w_post > 0:  # gastrocnemius heads and the popliteal fossa
        gastro = deep & (au > 24) & (au < half - g.fat_px - 4) & (v > -70 + 40 * (1 - w_post))
        lab[gastro] = _T["muscle"]
        _paint_capsule(lab, g, u, v, (-6.0, -300.0), (-4.0, 300.0), 5.5, _T["vessel"])
        _paint_capsule(lab, g, u, v, (9.0, -300.0), (11.0, 300.0), 7.5, _T["vessel"])

    # femur: shaft/metaphysis (middle slices) united with the two condyles
    rc = R * float(np.sqrt(max(0.0, 1.0 - ((t - 0.56) / 0.44) ** 2)))
    vc = -(cth + 1.0) - R
    femur = np.full(u.shape, 1e3, np.float32)
    w_shaft = _window(t, 0.22, 0.70, 0.05)
    if w_shaft > 0:
        hw = (34.0 + 60.0 * np.clip((v + 160.0) / 110.0, 0.0, 1.0) ** 2) * (0.55 + 0.45 * w_shaft)
        femur = np.maximum(au - hw, v - vc)
    w_cond = 0.0
    if rc > 4:
        w_cond = 1.0
        c_med = _ellipse(u, v, -cu, vc, rc, rc * 0.96)
        c_lat = _ellipse(u, v, cu, vc, rc, rc * 0.96)
        femur = np.minimum(femur, np.minimum(c_med, c_lat))
    w_notch = _window(t, 0.48, 1.2, 0.05)
    if w_notch > 0:
        notch = _ellipse(u, v, 0.0, 0.0, g.notch_w * (0.6 + 0.4 * w_notch), 40.0 + 45.0 * w_notch)
        femur = np.maximum(femur, -notch)
    w_pat = _window(t, 0.08, 0.30, 0.03)
    # tibia: plateau with the spines, metaphysis tapering to the shaft
    w_tib = _window(t, 0.30, 0.86, 0.04)
    tibia = np.full(u.shape, 1e3, np.float32)
    v_plat = cth + 1.0
    if w_tib > 0:
        spines = 12.0 * _window(t, 0.48, 0.72, 0.04) * (np.exp(-((u - 8) / 7.0) ** 2) + np.exp(-((u + 8) / 7.0) ** 2))
        plat = v_plat + 2.5 * (1 - np.cos(np.pi * np.clip(au / 95.0, 0, 1))) - spines
        hwt = (33.0 + 67.0 * np.clip((130.0 - v) / 95.0, 0.0, 1.0)) * (0.6 + 0.4 * w_tib)
        tibia = np.maximum(au - hwt, plat - v)
    elif t < 0.30 and t > 0.12:  # tibial tuberosity
        tibia = _ellipse(u, v, 0.0, 95.0, 30.0, 45.0)
    fibula = np.full(u.shape, 1e3, np.float32)
    w_fib = _window(t, 0.66, 0.90, 0.03)
    if w_fib > 0:
        fibula = np.minimum(_ellipse(u, v, 90.0, 72.0, 19.0 * w_fib, 18.0 * w_fib + 1), _capsule(u, v, (92.0, 72.0), (96.0, 300.0), 10.0 * w_fib))
    patella = np.full(u.shape, 1e3, np.float32)
    if w_pat > 0:
        ps = float(np.sqrt(max(0.0, 1.0 - ((t - 0.19) / 0.13) ** 2)))
        patella = _ellipse(u, v, 0.0, -95.0, 44.0 * ps + 1, 54.0 * ps + 1)

    # Hoffa's fat pad, tendons (anterior slices)
    if w_pat > 0 or _window(t, 0.12, 0.36) > 0:
        _paint_capsule(lab, g, u, v, (0.0, -40.0), (0.0, 95.0), 8.0, _T["tendon"], inside)
        _paint_capsule(lab, g, u, v, (0.0, -150.0), (0.0, -320.0), 10.0, _T["tendon"], inside)

    # joint: fluid film, cartilage, menisci (drawn before the bones so bone wins)
    joint_box = (au < cu + R + 2) & (v > vc) & (v < v_plat + 4)
    if w_cond > 0 and w_tib > 0:
        lab[joint_box & (v > -2.0) & (v < 2.0)] = _T["fluid"]
        fem_cart = (femur > 0) & (femur < cth) & (v > vc + 0.2 * rc) & joint_box
        lab[fem_cart] = _T["cartilage"]
        tib_cart = (tibia > 0) & (tibia < cth) & (au > 14) & (au < cu + R - 4) & (v < v_plat + 6)
        lab[tib_cart] = _T["cartilage"]
        # menisci: the wedge between the round condyle and the flat plateau at the periphery
        w_men = _window(t, 0.42, 0.82, 0.03)
        if w_men > 0:
            horn = max(_window(t, 0.42, 0.50, 0.02), _window(t, 0.74, 0.82, 0.02))
            m_in = cu + 11.0 - 38.0 * horn
            m_out = cu + rc * 0.98 + 3.0
            men = (au > m_in) & (au < m_out) & (femur > cth - 0.5) & (v < v_plat - 0.5) & (v > -15.0)
            lab[men] = _T["meniscus"]
            mid = 0.5 * (cu + 11.0 + m_out)
            if w_men > 0.5:
                sites["meniscus_med"] = (-mid, -1.0)
                sites["meniscus_lat"] = (mid, -1.0)
        if _window(t, 0.38, 0.80) > 0.5:
            sites["cart_med"] = (-cu + 8.0, -8.0)
            sites["cart_lat"] = (cu - 8.0, -8.0)
    # recesses (fluid pockets beside the patella / distal femur), anterior slices
    if _window(t, 0.24, 0.50) > 0.5:
        sites["recess_med"] = (-70.0, -112.0)
        sites["recess_lat"] = (72.0, -112.0)

    # bones: cortex shell and marrow
    bone = np.minimum(np.minimum(femur, tibia), np.minimum(fibula, patella))
    lab[bone < 0] = _T["cortex"]
    lab[bone < -2.6] = _T["marrow"]
    if w_cond > 0 and w_tib > 0 and _window(t, 0.36, 0.82) > 0.5:
        sites["bone_med_fem"] = (-cu, -26.0)
        sites["bone_lat_fem"] = (cu, -26.0)
        sites["bone_med_tib"] = (-cu, 28.0)
        sites["bone_lat_tib"] = (cu, 28.0)

    # cruciate and collateral ligaments
    w_acl = _window(t, 0.50, 0.70, 0.03)
    if w_acl > 0:
        p = (t - 0.50) / 0.20  # the section climbs towards the femoral attachment posteriorly
        a0 = (-7.0 + 4.0 * p, -6.0 - 4.0 * p)
        a1 = (9.0 + 3.0 * p, -48.0 - 4.0 * p)
        _paint_capsule(lab, g, u, v, a0, a1, 5.5 * w_acl + 0.5, _T["ligament"])
        if w_acl > 0.5:
            sites["acl_dist"] = (a0[0] + 0.27 * (a1[0] - a0[0]), a0[1] + 0.27 * (a1[1] - a0[1]))
            sites["acl_prox"] = (a0[0] + 0.78 * (a1[0] - a0[0]), a0[1] + 0.78 * (a1[1] - a0[1]))
    w_pcl = _window(t, 0.60, 0.82, 0.03)
    if w_pcl > 0:
        _paint_capsule(lab, g, u, v, (2.0, 16.0), (-12.0, -50.0), 7.5 * w_pcl + 0.5, _T["ligament"])
    w_mcl = _window(t, 0.40, 0.72, 0.03)
    if w_mcl > 0:
        _paint_capsule(lab, g, u, v, (-(cu + rc) - 4.0, -62.0), (-(cu + R) - 3.0, 62.0), 2.6, _T["ligament"])
    w_lcl = _window(t, 0.60, 0.86, 0.03)
    if w_lcl > 0:
        _paint_capsule(lab, g, u, v, (cu + rc + 3.0, -52.0), (90.0, 58.0), 2.6, _T["ligament"])
    if _window(t, 0.76, 0.98) > 0.5:
        sites["cyst_med"] = (-46.0, -24.0)
        sites["cyst_lat"] = (46.0, -24.0)
    lab[~inside] = _T["air"]
    return lab, sites
