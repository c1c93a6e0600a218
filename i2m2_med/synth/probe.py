"""Separability probes: how much each modality, alone and jointly, tells about the findings.

A probe renders slices of fresh subjects exactly as the generator does (same anatomy, cues,
contrast, phase and noise; the image-domain noise equals the k-space noise because the FFT is
orthonormal), resizes them as the compact models see them (area resize of the magnitude; phase
through the magnitude-weighted complex image, as :func:`i2m2_med.transforms.resize_modalities`
does) and asks, per lesion class, what the pixels at the class's sites say:

* at every site, the magnitude contrast (inner ellipse minus a ring around it, magnitude / its
  99th percentile) and the phase contrast (angle of the inner complex mean against the complex
  mean of a ring beyond the phase cue's reach: a local homodyne filter);
* from these, cue strengths (magnitude: distance from the anatomy's own contrast, the median
  over slices of the same site and sequence; phase: absolute value) and the differences between
  the two sites of a side pair (:func:`cue_features`);
* a logistic regression per regime and input -- magnitude only, phase only, joint (both plus
  co-location products) -- on features standardised within each class (:func:`probe_auroc`).

Same subjects across regimes (their anatomy, findings and mimic episodes are identical; only
the expression of the cues changes); subject-level folds, cross-fitted. A head is probed
on the slices where its class's sites are visible (positives: slices with the finding;
negatives: the other eligible slices), so the probe measures what the *images* say, not which
part of the knee a slice shows (that anatomy prior is in the manifest as
``slice_position_auroc``). The probe knows where the sites are; a CNN must also learn that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from i2m2_med.heads import HEADS
from i2m2_med.synth import lesions, risk
from i2m2_med.synth.label_noise import auroc
from i2m2_med.synth.priors import LABEL_STATS
from i2m2_med.synth.regimes import regime_params
from i2m2_med.synth.volume import draw_anatomy, render_acquisitions

INPUTS: tuple[str, ...] = ("magnitude", "phase", "joint")
N_FOLDS = 4  # subject-level folds of the cross-fitting


@dataclass
class ProbeSet:
    """Resized slices of one regime: magnitude and phase (N, size, size) float32, labels and
    eligibility (N, 4) bool, subject index (N,) int."""

    magnitude: np.ndarray
    phase: np.ndarray
    labels: np.ndarray
    eligible: np.ndarray
    subject: np.ndarray
    fat_sat: np.ndarray = None  # (N,) bool
    sites: list = None          # per slice: site -> (x, y) display pixels at 320
    findings: list = None       # per slice: class -> bool (true finding of that class)


def _area(x: np.ndarray, f: int) -> np.ndarray:
    s, h, w = x.shape
    return x.reshape(s, h // f, f, w // f, f).mean(axis=(2, 4))


def render_probe_sets(
    regimes: tuple[str, ...], n_subjects: int, seed: int, *, n_slices: int = 24, size: int = 64
) -> dict[str, ProbeSet]:
    """Render the same ``n_subjects`` subjects under each regime, resized to ``size`` (320 / size
    must be an integer)."""
    if 320 % size:
        raise ValueError(f"size must divide 320, got {size}")
    f = 320 // size
    out: dict[str, dict[str, list]] = {r: {"m": [], "p": [], "y": [], "e": [], "s": [], "sites": [], "f": [], "fs": []} for r in regimes}
    for i in range(n_subjects):
        base = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7, i)))
        person, knee = draw_anatomy(base, f"probe{i}", n_slices)
        present = risk.draw_classes(base, person)
        fat_sat = bool(base.random() < 0.5)
        eligible = np.zeros((knee.geometry.n_slices, len(HEADS)), bool)
        for cls in lesions.LESION_CLASSES.values():
            for k in range(knee.geometry.n_slices):
                if all(site in knee.sites[k] for site in cls.sites):
                    eligible[k, HEADS.index(cls.head)] = True
        for r in regimes:
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(8, i)))
            episodes = lesions.plan_episodes(rng, knee, present, regime_params(r))
            (_, image, sigma), = render_acquisitions(rng, person, knee, episodes, (fat_sat,))
            noise = rng.standard_normal((*image.shape, 2), dtype=np.float32).view(np.complex64)[..., 0]
            image = image + np.float32(sigma) * noise
            mag = np.abs(image)
            out[r]["m"].append(_area(mag, f))
            z = _area(image.real, f) + 1j * _area(image.imag, f)
            out[r]["p"].append(np.angle(z).astype(np.float32))
            out[r]["y"].append(lesions.slice_labels(episodes, knee.geometry.n_slices, HEADS))
            out[r]["e"].append(eligible)
            out[r]["s"].append(np.full(knee.geometry.n_slices, i))
            out[r]["sites"].extend(knee.sites)
            out[r]["fs"].append(np.full(knee.geometry.n_slices, fat_sat))
            per_slice = [dict() for _ in range(knee.geometry.n_slices)]
            for ep in episodes:
                for k in ep.slices:
                    per_slice[k][ep.cls] = per_slice[k].get(ep.cls, False) or ep.finding
            out[r]["f"].extend(per_slice)
    return {
        r: ProbeSet(
            magnitude=np.concatenate(d["m"]).astype(np.float32),
            phase=np.concatenate(d["p"]).astype(np.float32),
            labels=np.concatenate(d["y"]),
            eligible=np.concatenate(d["e"]),
            subject=np.concatenate(d["s"]),
            fat_sat=np.concatenate(d["fs"]),
            sites=d["sites"],
            findings=d["f"],
        )
        for r, d in out.items()
    }


def _site_contrasts(ps: "ProbeSet", cls: lesions.LesionClass, size: int) -> np.ndarray:
    """(N, n_sites, 2) local contrasts at each site of ``cls`` on every slice (NaN where the
    site is not visible): magnitude (inner mean minus ring mean, magnitude / its 99th percentile)
    and phase (angle of the inner complex mean against the ring's: a local homodyne filter)."""
    f = 320.0 / size

    w = np.median([LABEL_STATS[lab].width_q[1] for lab, _ in cls.labels])
    h = np.median([LABEL_STATS[lab].height_q[1] for lab, _ in cls.labels]) * cls.height_factor
    rx, ry = max(lesions.MIN_CUE_PX, w) / (2 * f), max(lesions.MIN_CUE_PX, h) / (2 * f)
    n = len(ps.magnitude)
    out = np.full((n, len(cls.sites), 2), np.nan, np.float32)
    p99 = np.percentile(ps.magnitude.reshape(n, -1), 99, axis=1) + 1e-12
    reach = max(2.0, cls.phase_reach + 0.9)
    hx, hy = int(np.ceil(reach * rx)) + 1, int(np.ceil(reach * ry)) + 1
    for i in range(n):
        for j, site in enumerate(cls.sites):
            if site not in ps.sites[i]:
                continue
            cx, cy = ps.sites[i][site][0] / f, ps.sites[i][site][1] / f
            r0, r1 = max(0, int(cy) - hy), min(size, int(cy) + hy + 1)
            c0, c1 = max(0, int(cx) - hx), min(size, int(cx) + hx + 1)
            yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32) + 0.5
            r = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
            inner, ring = r <= 0.8, (r > 1.2) & (r <= 2.0)
            far = (r > cls.phase_reach + 0.1) & (r <= cls.phase_reach + 0.9)
            if not inner.any() or not ring.any() or not far.any():
                continue
            m = ps.magnitude[i, r0:r1, c0:c1] / p99[i]
            z = m * np.exp(1j * ps.phase[i, r0:r1, c0:c1])
            out[i, j, 0] = m[inner].mean() - m[ring].mean()
            out[i, j, 1] = np.angle(z[inner].mean() * np.conj(z[far].mean()))
    return out


def cue_features(contrast: np.ndarray, cls_index: np.ndarray, fat_sat: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample cue measures from site contrasts (N, n_sites, 2).

    ``m`` (N, n_sites): |magnitude contrast - its median over the slices of the same class,
    site and sequence| (the median is the anatomy's own contrast there); ``p`` (N, n_sites):
    |phase contrast| (a phase cue has either sign); ``dm`` / ``dp`` (N, n_pairs): differences
    between the two sites of each side pair (medial - lateral, proximal - distal) of the
    magnitude contrast and of |phase contrast| -- the sites are near-symmetric, so a difference
    isolates a cue from the anatomy and its sign tells on which side the cue is."""
    mag = contrast[:, :, 0].copy()
    for c in np.unique(cls_index):
        for f in (False, True):
            sel = (cls_index == c) & (fat_sat == f)
            if sel.any():
                mag[sel] -= np.nanmedian(mag[sel], axis=0)
    mag = np.nan_to_num(mag)
    ph = np.abs(np.nan_to_num(contrast[:, :, 1]))
    pairs = [(a, a + 1) for a in range(0, contrast.shape[1] - 1, 2)]
    return {
        "m": np.abs(mag),
        "p": ph,
        "dm": np.stack([mag[:, a] - mag[:, b] for a, b in pairs], 1),
        "dp": np.stack([ph[:, a] - ph[:, b] for a, b in pairs], 1),
        "fs": fat_sat.astype(np.float64)[:, None],
    }


def site_features(c: dict[str, np.ndarray], which: str) -> np.ndarray:
    """(N, F) features of one input from :func:`cue_features`, none of them telling the side or
    the sequence by itself (those are subject-level and would let a probe memorise subjects):
    magnitude -- the largest and summed cue strength, the absolute side differences; phase --
    the same for phase; joint -- both, plus co-location: the largest same-site product of the two
    strengths and the signed product of the side differences (same side: positive for a
    brightening magnitude cue; times the fat-sat flag, since a bone lesion darkens fatty marrow
    on PD and brightens it on PD-FS)."""
    m, p, dm, dp, fs = c["m"], c["p"], c["dm"], c["dp"], c["fs"]
    parts = []
    if which in ("magnitude", "joint"):
        parts += [m.max(1, keepdims=True), m.sum(1, keepdims=True), np.abs(dm)]
    if which in ("phase", "joint"):
        parts += [p.max(1, keepdims=True), p.sum(1, keepdims=True), np.abs(dp)]
    if which == "joint":
        parts += [(m * p).max(1, keepdims=True), dm * dp, dm * dp * (2 * fs - 1)]
    return np.concatenate(parts, axis=1)


def probe_auroc(
    sets: dict[str, "ProbeSet"], size: int = 64
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Cross-fitted AUROC per regime, head and input, plus their mean over heads ("mean").

    One sample per (slice, class) where the class's sites are visible; label: that class's
    finding on the slice. One logistic regression per regime and input over all classes, on
    features standardised within each class (one weight vector for all classes); subjects in
    :data:`N_FOLDS` folds, each scored by the model fitted on the others; AUROC within each
    fold and class (so that different fits' offsets do not mix), averaged with the number of
    positives as weights over the folds and the head's classes."""
    from sklearn.linear_model import LogisticRegression

    names = list(lesions.LESION_CLASSES)
    result: dict[str, dict[str, dict[str, float | None]]] = {}
    for regime, ps in sets.items():
        ms, ys, subj, cid = [], [], [], []
        for ci, name in enumerate(names):
            con = _site_contrasts(ps, lesions.LESION_CLASSES[name], size)
            ok = ~np.isnan(con).any(axis=(1, 2))
            y = np.array([bool(ps.findings[i].get(name, False)) for i in range(len(ps.subject))])
            ms.append(cue_features(con[ok], np.full(int(ok.sum()), ci), ps.fat_sat[ok]))
            ys.append(y[ok])
            subj.append(ps.subject[ok])
            cid.append(np.full(int(ok.sum()), ci))
        y = np.concatenate(ys)
        s = np.concatenate(subj)
        c = np.concatenate(cid)
        head_of = np.array([HEADS.index(lesions.LESION_CLASSES[n].head) for n in names])[c]
        result[regime] = {h: {} for h in (*HEADS, "mean")}
        for which in INPUTS:
            blocks = []
            for feat in (site_features(cf, which) for cf in ms):
                # standardise within the class (unsupervised), so one weight vector serves all
                # classes: few parameters, stable with few positive subjects per class
                blocks.append((feat - feat.mean(0)) / (feat.std(0) + 1e-9))
            width = max(b.shape[1] for b in blocks)
            x = np.concatenate([np.pad(b, ((0, 0), (0, width - b.shape[1]))) for b in blocks])
            per_head: dict[str, list[tuple[float, int]]] = {h: [] for h in HEADS}
            for fold in range(N_FOLDS):
                tr, te = s % N_FOLDS != fold, s % N_FOLDS == fold
                if not y[tr].any() or y[tr].all():
                    continue
                clf = LogisticRegression(C=0.2, max_iter=2000, class_weight="balanced")
                clf.fit(x[tr], y[tr])
                score = clf.decision_function(x[te])
                for ci in range(len(names)):
                    sel = c[te] == ci
                    auc = auroc(score[sel], y[te][sel]) if sel.any() else None
                    if auc is not None:  # weighted by the positives it rests on
                        per_head[HEADS[head_of[c == ci][0]]].append((auc, int(y[te][sel].sum())))
            values = []
            for head in HEADS:
                pairs = per_head[head]
                v = round(float(np.average([a for a, _ in pairs], weights=[w for _, w in pairs])), 3) if pairs else None
                result[regime][head][which] = v
                if v is not None:
                    values.append(v)
            result[regime]["mean"][which] = round(float(np.mean(values)), 3) if values else None
    return result
