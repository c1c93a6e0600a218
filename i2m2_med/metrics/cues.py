"""Does a model respond to the cues? On a synthetic cohort, ``episodes.csv`` says which cues each
episode shows (:data:`i2m2_med.synth.regimes.EVIDENCE_STATES`), so a model's score can be
compared between slices that show a modality's cue and slices that do not, *with the label held
fixed*: among the mimic slices of a head (no finding) and, apart, among its finding slices.

The cue response of a head and modality is the AUROC of the score for "the episode shows this
modality's cue" against "it does not", within one label. A model that detects the cue scores
well above 0.5 in both; one that has learned only where findings lie, or which subject a slice
comes from, stays near 0.5. It separates "the model cannot see the cue" from "the cue does not
tell findings apart" (the in-view AUROC mixes the two).

The co-location response (:func:`colocation_response`) asks the question only a model of both
modalities can answer: the AUROC of the score between finding slices whose episode shows the
magnitude and the phase cue on the same site and mimic slices whose episode shows them apart (the
``inter`` rule). Each modality alone sees one cue of each kind in both, so a model scores above
0.5 there only by reading where the two cues lie relative to each other.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from i2m2_med.errors import UndefinedMetricError
from i2m2_med.heads import HEADS
from i2m2_med.metrics.ranking import auroc

CUE_STATES: dict[str, frozenset[str]] = {
    "magnitude": frozenset({"mag", "together", "apart"}),
    "phase": frozenset({"phase", "together", "apart"}),
}
"""Evidence states in which an episode shows each modality's cue."""


def cue_response(p: Any, states: Any, labels: Any) -> dict[str, dict[str, Any]]:
    """``p`` (N, 4) scores, ``states`` (N, 4) evidence strings ("" outside the head's episodes),
    ``labels`` (N, 4) -> per head and modality ``{"mimics": {...}, "findings": {...}}``, each with
    ``auroc`` (None when one side is empty), ``n_cue`` and ``n_without``."""
    p = np.asarray(p, dtype=float)
    st = np.asarray(states, dtype=object)
    y = np.asarray(labels) > 0.5
    out: dict[str, dict[str, Any]] = {}
    for h, head in enumerate(HEADS):
        view = st[:, h] != ""
        out[head] = {}
        for modality, shown_states in CUE_STATES.items():
            shown = np.array([s in shown_states for s in st[:, h]], dtype=bool)
            block: dict[str, Any] = {}
            for name, keep in (("mimics", view & ~y[:, h]), ("findings", view & y[:, h])):
                ok = keep & np.isfinite(p[:, h])
                cue = shown[ok]
                value = None
                try:
                    value = float(auroc(cue, p[ok, h]))
                except UndefinedMetricError:
                    pass
                block[name] = {"auroc": value, "n_cue": int(cue.sum()), "n_without": int((~cue).sum())}
            out[head][modality] = block
    return out


def colocation_response(p: Any, states: Any, labels: Any) -> dict[str, dict[str, Any]]:
    """``p`` (N, 4) scores, ``states`` (N, 4) evidence strings, ``labels`` (N, 4) -> per head
    ``{"auroc", "n_together", "n_apart"}``: the AUROC of finding slices showing both cues together
    against mimic slices showing them apart (``auroc`` None when either side is empty)."""
    p = np.asarray(p, dtype=float)
    st = np.asarray(states, dtype=object)
    y = np.asarray(labels) > 0.5
    out: dict[str, dict[str, Any]] = {}
    for h, head in enumerate(HEADS):
        ok = np.isfinite(p[:, h])
        together = ok & y[:, h] & (st[:, h] == "together")
        apart = ok & ~y[:, h] & (st[:, h] == "apart")
        keep = together | apart
        value = None
        try:
            value = float(auroc(together[keep], p[keep, h]))
        except UndefinedMetricError:
            pass
        out[head] = {"auroc": value, "n_together": int(together.sum()), "n_apart": int(apart.sum())}
    return out


__all__ = ["CUE_STATES", "colocation_response", "cue_response"]
