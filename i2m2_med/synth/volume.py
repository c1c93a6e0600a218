"""One synthetic subject and its acquisitions, generated in memory from one seed.

A subject is one knee; it has one or two acquisitions (coronal PD and/or PD fat-sat, as the
fastMRI knee exams do), which share anatomy, pose and findings but differ in contrast, noise,
phase and phase-encoding layout. Everything a writer needs is in :class:`Acquisition`.

Per slice, the pipeline is::

    tissue codes + texture  (anatomy)          -> base magnitude (contrast, receive shading later)
    + lesion / mimic cues   (lesions, regimes) -> magnitude (display orientation), phase cues
    + background phase      (phase)            -> complex image m * exp(i phi), 320 x 320
    -> embed into the 640 x W grid (flip to the stored orientation) -> k-space (+ noise, padding)
    -> reconstruction = centre crop of |ifft2c(kspace)| (RSS for multicoil)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from i2m2_med.heads import HEADS
from i2m2_med.io.ismrmrd import HeaderParams, build_header
from i2m2_med.synth import anatomy, contrast, kspace, lesions, phase, risk
from i2m2_med.synth import subject as subj
from i2m2_med.synth.regimes import RegimeParams

SLICE_RANGE = (30, 46)
N_COILS = 15


@dataclass
class Acquisition:
    """One study (one h5 file): arrays in the fastMRI layout plus what the writers need."""

    study_id: str
    subject: subj.Subject
    protocol: subj.Protocol
    encoding: kspace.Encoding
    kspace: np.ndarray            # (S, 640, W) or (S, C, 640, W) complex64
    reconstruction: np.ndarray    # (S, 320, 320) float32, stored orientation
    image: np.ndarray             # (S, 320, 320) complex64, stored orientation (coil-combined)
    labels: np.ndarray            # (S, 4) bool, true findings in HEADS order
    boxes: list[dict]             # true finding boxes, display coordinates (fastMRI+ convention)
    header: bytes
    slice_thickness_mm: float
    pixel_mm: float
    signal_scale: float
    episodes: list[lesions.Episode] = field(default_factory=list, repr=False)

    @property
    def n_slices(self) -> int:
        return int(self.kspace.shape[0])


@dataclass(frozen=True)
class SubjectPlan:
    """What the cohort decides before any volume is generated (so volumes can run in parallel)."""

    index: int                 # subject index in the cohort
    study_ids: tuple[str, ...]  # one or two studies
    fat_sat: tuple[bool, ...]   # per study
    seed: np.random.SeedSequence


def polar(mag: np.ndarray, ph: np.ndarray) -> np.ndarray:
    """mag * exp(i ph) as complex64, without complex128 temporaries."""
    out = np.empty(mag.shape, np.complex64)
    out.real = mag * np.cos(ph)
    out.imag = mag * np.sin(ph)
    return out


def draw_anatomy(rng: np.random.Generator, plan_key: str, n_slices: int | None = None):
    """Draw a subject and render its knee: ``(subject, KneeVolume)``."""
    person = subj.draw_subject(rng, plan_key)
    s = int(n_slices) if n_slices is not None else int(rng.integers(SLICE_RANGE[0], SLICE_RANGE[1] + 1))
    geom = anatomy.draw_geometry(rng, s, bmi=person.bmi, sex=person.sex, knee_side=person.knee_side)
    return person, anatomy.render_knee(geom)


def render_acquisitions(
    rng: np.random.Generator,
    person: subj.Subject,
    knee: anatomy.KneeVolume,
    episodes: list[lesions.Episode],
    fat_sats: tuple[bool, ...],
) -> list[tuple[subj.Protocol, np.ndarray, float]]:
    """Display-orientation complex images (S, 320, 320) complex64 of each acquisition, without
    noise, and the noise standard deviation (per real/imaginary part) each should get."""
    s = knee.geometry.n_slices
    chi_phase = phase.subject_susceptibility_phase(knee.tissue, person.field_strength_t)
    outputs = []
    for fs in fat_sats:
        proto = subj.draw_protocol(rng, fs)
        lut, amp = contrast.tissue_lut(rng, fs)
        mag = contrast.base_magnitude(knee.tissue, knee.texture, lut, amp)
        ph_cue = np.zeros_like(mag)
        for k in range(s):
            lesions.draw_cues(episodes, k, mag[k], ph_cue[k], knee.tissue[k], fs)
        mag = ndimage.gaussian_filter(mag, sigma=(0, 0.6, 0.6), mode="nearest")
        mag *= contrast.bias_field(rng)[None]
        ph = phase.background_phase(rng, knee.tissue, person.field_strength_t, chi_phase)
        ph += ph_cue
        image = polar(mag, ph)
        snr = 38.0 if person.field_strength_t > 2 else 26.0
        sigma = (1.0 / snr) * (1.3 if fs else 1.0) * float(rng.uniform(0.85, 1.15))
        outputs.append((proto, image, sigma))
    return outputs


def render_subject_images(
    rng: np.random.Generator,
    plan_key: str,
    regime: RegimeParams,
    fat_sats: tuple[bool, ...],
    n_slices: int | None = None,
):
    """Draw a subject, its findings and mimics, and render each acquisition's complex image.

    Returns ``(subject, geometry, episodes, [(protocol, image (S,320,320) complex64, noise_sigma)])``;
    noise is not yet added (k-space does that)."""
    person, knee = draw_anatomy(rng, plan_key, n_slices)
    present = risk.draw_classes(rng, person)
    episodes = lesions.plan_episodes(rng, knee, present, regime)
    outputs = render_acquisitions(rng, person, knee, episodes, fat_sats)
    return person, knee.geometry, episodes, outputs


def generate_subject(
    plan: SubjectPlan,
    regime: RegimeParams,
    *,
    multicoil: bool = False,
    n_coils: int = N_COILS,
    n_slices: int | None = None,
) -> list[Acquisition]:
    """Generate the acquisitions of one planned subject (deterministic given ``plan.seed``)."""
    rng = np.random.default_rng(plan.seed)
    person, geom, episodes, outputs = render_subject_images(
        rng, plan.study_ids[0], regime, plan.fat_sat, n_slices=n_slices
    )
    labels = lesions.slice_labels(episodes, geom.n_slices, HEADS)
    boxes = lesions.finding_boxes(episodes)
    slice_mm = float(rng.choice([3.0, 3.0, 3.0, 2.5]))
    acqs = []
    for study_id, (proto, image, sigma) in zip(plan.study_ids, outputs):
        enc = kspace.draw_encoding(rng)
        scale = float(3.0e-4 * rng.uniform(0.7, 1.4))  # absolute units of fastMRI knee data
        grid = kspace.embed_image(image * np.float32(scale), enc.width)
        sens = kspace.coil_sensitivities(rng, n_coils, enc.width) if multicoil else None
        ks = np.empty((geom.n_slices, *(() if sens is None else (n_coils,)), kspace.READOUT, enc.width), np.complex64)
        for k in range(geom.n_slices):
            ks[k] = kspace.to_kspace(grid[k], enc, sigma * scale, rng, sens)
        del grid
        img = np.ascontiguousarray(kspace.center_crop(kspace.ifft2c(ks)))
        recon = kspace.reconstruct(ks, img)
        if sens is not None:  # coil combination with the known sensitivities (Roemer)
            s_c = kspace.center_crop(sens)
            img = (np.conj(s_c)[None] * img).sum(1) / np.maximum((np.abs(s_c) ** 2).sum(0), 1e-6)[None]
        hp = HeaderParams(
            encoded_y=enc.width,
            enc_center=enc.enc_center,
            enc_maximum=enc.enc_maximum,
            n_slices=geom.n_slices,
            n_coils=n_coils if multicoil else 1,
            tr_ms=proto.tr_ms,
            te_ms=proto.te_ms,
            flip_angle_deg=proto.flip_angle_deg,
            field_strength_t=person.field_strength_t,
            vendor=person.vendor,
            model=person.model,
            protocol=proto.acquisition,
            fov_readout_mm=280.0,
            fov_phase_mm=round(140.0 * enc.width / kspace.CROP, 2),
            slice_thickness_mm=slice_mm,
        )
        acqs.append(
            Acquisition(
                study_id=study_id,
                subject=person,
                protocol=proto,
                encoding=enc,
                kspace=ks,
                reconstruction=recon,
                image=np.ascontiguousarray(img).astype(np.complex64),
                labels=labels.copy(),
                boxes=[dict(b) for b in boxes],
                header=build_header(hp),
                slice_thickness_mm=slice_mm,
                pixel_mm=140.0 / kspace.CROP,
                signal_scale=scale,
                episodes=episodes,
            )
        )
    return acqs
