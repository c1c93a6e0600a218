"""Label noise on slice labels and the AUROC ceiling it leaves.

``flip_labels`` flips each (slice, head) label independently with probability ``p``: the
annotations a model is trained and scored on are then the noisy ones, as with real readers who
disagree. A flipped-to-positive slice gets a box where an annotator would plausibly have seen
something (a mimic of that head on the slice, else the typical place of the head's finding); a
flipped-to-negative slice loses that head's boxes.

The **label-noise ceiling** of a head is the AUROC that a perfect predictor of the true finding
(score = true label) reaches against the noisy labels. With prevalence ``pi`` and symmetric
flips ``p``, among noisy positives a fraction ``a = pi(1-p) / (pi(1-p) + (1-pi)p)`` is truly
positive, among noisy negatives a fraction ``b = (1-pi)(1-p) / ((1-pi)(1-p) + pi p)`` truly
negative, and (ties counted one half)::

    ceiling = a b + (a (1 - b) + (1 - a) b) / 2 = (a + b) / 2

(:func:`expected_ceiling`); the manifest also gives the empirical value on the generated labels
(:func:`empirical_ceiling`). No model can exceed it on the noisy labels in expectation.
"""

from __future__ import annotations

import numpy as np

from i2m2_med.heads import HEADS, head_of_label
from i2m2_med.synth.lesions import LESION_CLASSES, Episode
from i2m2_med.synth.priors import LABEL_STATS


def flip_labels(rng: np.random.Generator, labels: np.ndarray, p: float) -> np.ndarray:
    """(S, H) bool -> (S, H) bool with each entry flipped independently with probability p."""
    if p <= 0:
        return labels.copy()
    flips = rng.random(labels.shape) < p
    return labels ^ flips


def expected_ceiling(prevalence: float, p: float) -> float:
    """Expected AUROC of the true labels scored against labels flipped with probability p."""
    pi = float(prevalence)
    if p <= 0 or pi <= 0 or pi >= 1:
        return 1.0
    a = pi * (1 - p) / (pi * (1 - p) + (1 - pi) * p)
    b = (1 - pi) * (1 - p) / ((1 - pi) * (1 - p) + pi * p)
    return 0.5 * (a + b)


def auroc(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """Mann-Whitney AUROC with ties counted one half; None when a class is absent."""
    scores = np.asarray(scores, float).ravel()
    targets = np.asarray(targets, bool).ravel()
    n_pos, n_neg = int(targets.sum()), int((~targets).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), float)
    sorted_scores = scores[order]
    # average ranks for ties
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return float((ranks[targets].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def empirical_ceiling(true: np.ndarray, noisy: np.ndarray) -> float | None:
    """AUROC of the true labels as scores against the noisy labels (None if a class is absent)."""
    return auroc(np.asarray(true, float), np.asarray(noisy, bool))


def noisy_boxes(
    rng: np.random.Generator,
    true_boxes: list[dict],
    true: np.ndarray,
    noisy: np.ndarray,
    episodes: list[Episode],
) -> list[dict]:
    """Boxes (display coordinates) that match the noisy labels.

    True boxes are kept unless their head was flipped off on that slice; a head flipped on
    gets one box: on a mimic of that head's classes visible on the slice (the footprint of its
    magnitude cue, else its phase cue), else at the typical place of the head's most common
    label (median x, y, width, height of the fastMRI+ boxes).
    """
    out = [b for b in true_boxes if noisy[b["slice"], HEADS.index(_head(b["label"]))]]
    added = np.argwhere(noisy & ~true)
    for k, h in added:
        head = HEADS[int(h)]
        candidates = []
        for ep in episodes:
            if ep.finding or ep.head != head or int(k) not in ep.footprints:
                continue
            site = ep.expression.mag_site if ep.expression.mag_site is not None else ep.expression.phase_site
            if site is not None:
                candidates.append((ep, site))
        if candidates:
            ep, site = candidates[int(rng.integers(len(candidates)))]
            x, y, w, hh = ep.footprints[int(k)][site]
            label = ep.label
        else:
            label = _typical_label(head)
            st = LABEL_STATS[label]
            x, y, w, hh = (int(round(v[1])) for v in (st.x_q, st.y_q, st.width_q, st.height_q))
        out.append({"slice": int(k), "x": int(x), "y": int(y), "width": int(w), "height": int(hh), "label": label})
    out.sort(key=lambda r: (r["slice"], r["label"], r["x"]))
    return out


def _head(label: str) -> str:

    return head_of_label(label)  # type: ignore[return-value]


def _typical_label(head: str) -> str:
    best, best_f = None, -1.0
    for cls in LESION_CLASSES.values():
        if cls.head != head:
            continue
        for label, f in cls.labels:
            prev = LABEL_STATS[label].volume_prev
            if prev > best_f:
                best, best_f = label, prev
    assert best is not None
    return best
