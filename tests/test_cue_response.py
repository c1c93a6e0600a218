"""The cue response: the score's AUROC between slices that show a modality's cue and slices that
do not, within one label (i2m2_med.metrics.cues)."""

from __future__ import annotations

import numpy as np

from i2m2_med.heads import HEADS
from i2m2_med.metrics.cues import colocation_response, cue_response


def _slices():
    # head mtear: 4 mimic slices (2 show the magnitude cue), 4 finding slices (3 show it); other
    # heads are out of view everywhere
    states = np.full((8, 4), "", dtype=object)
    states[:, HEADS.index("mtear")] = ["mag", "apart", "none", "phase", "together", "mag", "mag", "phase"]
    labels = np.zeros((8, 4))
    labels[4:, HEADS.index("mtear")] = 1
    return states, labels


def test_a_detector_of_the_cue_scores_one_within_each_label() -> None:
    states, labels = _slices()
    shown = np.isin(states[:, HEADS.index("mtear")], ["mag", "together", "apart"])
    p = np.zeros((8, 4))
    p[:, HEADS.index("mtear")] = 0.2 + 0.5 * shown + 0.1 * labels[:, HEADS.index("mtear")]
    out = cue_response(p, states, labels)["mtear"]
    assert out["magnitude"]["mimics"] == {"auroc": 1.0, "n_cue": 2, "n_without": 2}
    assert out["magnitude"]["findings"] == {"auroc": 1.0, "n_cue": 3, "n_without": 1}
    # the phase cue is shown on slices 1, 3, 4 and 7: this score ignores it
    assert out["phase"]["mimics"]["auroc"] == 0.5 and out["phase"]["findings"]["n_cue"] == 2


def test_a_score_that_knows_only_the_label_scores_one_half() -> None:
    states, labels = _slices()
    p = np.asarray(labels, dtype=float) * 0.6 + 0.2
    out = cue_response(p, states, labels)["mtear"]["magnitude"]
    assert out["mimics"]["auroc"] == 0.5 and out["findings"]["auroc"] == 0.5


def test_heads_out_of_view_and_one_sided_groups_are_undefined() -> None:
    states, labels = _slices()
    p = np.full((8, 4), 0.5)
    out = cue_response(p, states, labels)
    assert out["acl"]["magnitude"]["mimics"] == {"auroc": None, "n_cue": 0, "n_without": 0}
    states[:, HEADS.index("mtear")] = "mag"
    assert cue_response(p, states, labels)["mtear"]["magnitude"]["findings"]["auroc"] is None


def test_colocation_response_compares_findings_together_with_mimics_apart() -> None:
    states, labels = _slices()
    h = HEADS.index("mtear")
    # slice 4 is the one finding showing both cues together, slice 1 the one mimic showing them apart
    p = np.full((8, 4), 0.5)
    p[:, h] = [0.9, 0.1, 0.9, 0.9, 0.8, 0.0, 0.0, 0.0]  # every other slice is left out of the comparison
    out = colocation_response(p, states, labels)
    assert out["mtear"] == {"auroc": 1.0, "n_together": 1, "n_apart": 1}
    p[1, h], p[4, h] = 0.8, 0.1  # the mimic now outranks the finding
    assert colocation_response(p, states, labels)["mtear"]["auroc"] == 0.0
    assert out["acl"] == {"auroc": None, "n_together": 0, "n_apart": 0}
    p[1, h] = np.nan  # a slice without a score does not count
    assert colocation_response(p, states, labels)["mtear"] == {"auroc": None, "n_together": 1, "n_apart": 0}
