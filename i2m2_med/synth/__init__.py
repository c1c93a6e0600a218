"""Synthetic knee k-space cohort in the exact fastMRI format, with a knob for where the evidence lives.

Why: fastMRI raw data needs a data-use agreement; tests, the demo and new users need a stand-in
that exercises exactly the same code path (h5 k-space -> magnitude + phase -> models), that is
realistic enough to pose the real problem (small lesions in a knee, in magnitude and phase), and
controllable enough to test the I2M2 claim: whether the evidence lives in one modality or only
in the interaction of two is a setting, and the best achievable AUROC is known.

API
---
``generate_cohort(out_dir, n_volumes, seed, regime="mixed", label_noise=0.0, multicoil=False,
dicom=False, nifti=False, workers=1, progress=None, *, n_slices=None, n_coils=15) -> manifest``
(:mod:`i2m2_med.synth.cohort`); CLI ``i2m2-med synth OUT_DIR --volumes N --seed S [--regime
mixed|intra|inter] [--label-noise P] [--multicoil] [--dicom] [--nifti] [--workers N]
[--slices S]``. ``n_slices`` fixes the slice count (tests, quick demos); by default each subject
gets 30-46 slices. Output layout: :mod:`i2m2_med.synth.writers`.

Modules, one job each: ``priors`` (numbers from fastMRI+), ``subject`` (tabular subject and
protocol), ``risk`` (findings given the subject), ``anatomy`` (tissue maps), ``contrast``
(PD / PD-FS signal), ``phase`` (background phase), ``lesions`` (findings, mimics, cues),
``regimes`` (where cues go), ``kspace`` (image <-> fastMRI k-space), ``volume`` (one subject in
memory), ``label_noise``, ``writers`` / ``dicom_series`` / ``nifti_volumes`` (files),
``cohort`` (orchestration), ``probe`` (separability probes).

Anatomy and acquisition (what an MRI physicist should find)
-----------------------------------------------------------
Coronal knee slices, anterior (slice 0) to posterior: subcutaneous fat (thicker with BMI),
muscle, patella and tendons, Hoffa's fat pad, femoral shaft and condyles with the notch, tibial
plateau with spines, fibular head, articular cartilage, joint fluid, menisci (horns and bodies),
ACL and PCL in the notch, MCL / LCL, gastrocnemius heads and popliteal vessels; per subject
size, in-plane pose, laterality, antero-posterior offset, tissue texture. Proton-density TSE
contrast with or without fat saturation (fastMRI's CORPD_FBK / CORPDFS_FBK; a subject has one
or both, sharing anatomy and findings), 1.5 T or 3 T (SNR 26 / 38 relative to fat, x0.77 with
fat saturation), receive shading, partial-volume blur. The complex image m exp(i phi) is embedded
in the 640 x W grid (2x readout oversampling: the leg continues along the readout with a
taper), transformed with fastMRI's centred orthonormal FFT, complex Gaussian noise is added on
the acquired columns, and the outer 14-20 columns on each side are zero padding recorded in
the ISMRMRD header. ``reconstruction_esc`` / ``_rss`` = centre crop of |ifft2c(kspace)|
(RSS over smooth coil sensitivities for multicoil). The stored image is upside down with
respect to the display orientation, as in fastMRI; fastMRI+ boxes use the flipped convention.

Phase: a smooth coil / transceive phase with a random offset, residual B0 (scaled with field
strength), the 2-D dipole field of the tissue susceptibility (bone, fat, air) and a flow phase
in the popliteal vessels. A TSE refocuses static off-resonance, so real knee phase images carry
less local information than modelled here: the phase cues below are a controlled knob, not a
claim about clinical phase contrast.

Findings, mimics and regimes (the heart of the design)
------------------------------------------------------
Lesion classes -- meniscus (Meniscus Tear), ACL (low / high grade sprain), cartilage (partial /
full thickness), bone (subchondral edema, contusion), cyst, effusion -- feed the four heads
through :func:`i2m2_med.heads.head_of_label` with the exact fastMRI+ label strings. Sizes (box
width / height quartiles), slice extents and volume prevalences come from the real fastMRI+
statistics (:mod:`i2m2_med.synth.priors`); the per-subject probability of each class depends on
age, BMI, sex and on other findings (:mod:`i2m2_med.synth.risk`): cartilage defects rise with
age and BMI, ACL tears fall with age, bone bruises and meniscal tears go with ACL tears.

Each class has two sites per slice (medial / lateral; proximal / distal for the ACL; four for
bone). The slices where a class's sites are visible are tiled into *episodes* (runs of slices
with the real extents); an episode is a finding (it gets the box) or a mimic. A regime decides
where each episode's cues go (:mod:`i2m2_med.synth.regimes`):

* ``inter``: a finding puts a magnitude cue and a phase cue on the same site; a mimic puts the
  magnitude cue on one site (magic-angle hyperintensity, red marrow, physiological fluid) and
  the phase cue on the other side (flow, calcification, gas). Every eligible slice carries one
  magnitude and one phase cue per class with identical distributions with or without the
  finding, so each modality alone is at chance *by construction*; the co-location is fully
  informative.
* ``intra``: a finding shows a magnitude cue with probability 0.75 and a phase cue with 0.75,
  independently; a mimic shows each with 0.2 (on one site). Each modality alone is informative
  and the two are conditionally independent given the finding, so the product of the
  unimodal experts is the Bayes-optimal combination -- and it is not at the ceiling.
* ``mixed`` (default): each episode is ``inter`` or ``intra`` with probability 1/2.

Cue sizes are clamped to >= 14 pixels of the 320 grid (>= 2.8 pixels at the compact models'
64 x 64); phase cues are flat over the magnitude footprint so that the magnitude-weighted phase
resampling of the models does not leak the magnitude cue into the phase channel.

Calibration
-----------
Design (episode level, exact; manifest ``episode_bayes_auroc``): magnitude / phase / joint AUROC
inter 0.50 / 0.50 / 1.00, intra 0.775 / 0.775 / 0.871, mixed 0.64 / 0.64 / 0.96.

Measured by the probe of :mod:`i2m2_med.synth.probe` (64 x 64, slices where the head's sites
are visible, cross-fitted over 120 subjects, mean over heads; :data:`PROBE_CALIBRATION`;
tests/test_synth_regimes.py checks bounds on 36 subjects)::

    regime   magnitude  phase  joint     per head (magnitude / phase / joint)
    inter      0.52      0.55   0.96     ACL .50/.62/.99  MTEAR .52/.53/.99  CART .51/.53/.98  ABN .55/.52/.85
    intra      0.76      0.75   0.84     ACL .74/.73/.81  MTEAR .76/.77/.86  CART .76/.75/.87  ABN .77/.74/.81
    mixed      0.61      0.65   0.89     ACL .66/.66/.89  MTEAR .59/.62/.93  CART .62/.68/.90  ABN .59/.63/.82

The probe is weaker than the design's Bayes numbers (noise, 64 px, its simple features); a CNN
trained on the whole slice sees more (and must also find the sites).

Whole-cohort models also see *which slice* they look at: findings live where their structures
are, so a position-aware single-modality model gets the anatomy prior even in ``inter``
(manifest ``slice_position_auroc``, e.g. ~0.7-0.9 per head) -- the inter claim is that a single
modality adds nothing beyond that prior, while the joint pattern does.

``episodes.csv`` lists every episode (study, class, head, finding or mimic, the regime rule it
followed, the cues it shows, its slices). From it come two more yardsticks: the training
metrics' *in-view* AUROC (each head scored only on the slices where its anatomy is in view, so
that a finding must beat its mimics and the slice position helps nothing) and manifest
``slice_evidence_auroc``, the AUROC of the Bayes score of the cues every slice shows
(:func:`i2m2_med.synth.cohort.evidence_scores`): what the images allow, below the label-noise
label-noise ceiling whenever the regime leaves some episodes ambiguous (e.g. an intra finding that
shows no cue).

Label noise: ``label_noise=P`` flips each (slice, head) label with probability P in the
annotations (``slice_labels.csv`` keeps both); manifest ``label_noise_ceiling_auroc`` is the AUROC
a perfect predictor of the true findings reaches against the noisy labels, (a + b) / 2 with a,
b the purities of the noisy positives and negatives (expected and empirical, per head).

Determinism and speed: everything derives from ``seed`` through ``numpy.random.SeedSequence``
with explicit spawn keys (per subject, per study), so output bytes do not depend on
``workers``; about 1.6 s of CPU per 38-slice singlecoil volume (anatomy 0.4 s, FFTs 0.7 s),
i.e. > 30 volumes per minute on 2 idle cores with ``workers=2``.
"""

from __future__ import annotations

from i2m2_med.synth.cohort import GENERATOR_VERSION, generate_cohort
from i2m2_med.synth.regimes import REGIMES

#: Probe AUROC (magnitude, phase, joint), mean over heads, measured on 120 subjects x 24 slices
#: per regime at 64 x 64 (see the module docstring).
PROBE_CALIBRATION: dict[str, dict[str, float]] = {
    "inter": {"magnitude": 0.520, "phase": 0.550, "joint": 0.955},
    "intra": {"magnitude": 0.756, "phase": 0.746, "joint": 0.836},
    "mixed": {"magnitude": 0.611, "phase": 0.648, "joint": 0.885},
}

__all__ = ["GENERATOR_VERSION", "PROBE_CALIBRATION", "REGIMES", "generate_cohort"]
