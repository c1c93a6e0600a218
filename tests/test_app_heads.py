"""Heads and experts are named and coloured in one place (:mod:`i2m2_med.heads`): the app's
figures, its study report and the ablation report show an expert in the same colour."""

from __future__ import annotations

import re

import app_support  # noqa: F401  (puts app/ on the path)
from viewer import figures, report

from i2m2_med import heads
from pipelines.report import ablation


def test_the_app_and_the_ablation_report_colour_every_expert_alike():
    assert figures.EXPERT_COLORS is heads.EXPERT_COLORS
    for name, colour in heads.EXPERT_COLORS.items():
        assert ablation.EXPERT_COLOURS[name] == colour
    # a single-expert variant of the ablation is drawn in its expert's colour
    for variant, expert in (("mag", "magnitude"), ("phase", "phase"), ("tab", "tabular"), ("inter", "joint")):
        assert ablation.PALETTE[variant] == heads.EXPERT_COLORS[expert]


def test_the_study_report_draws_each_expert_in_its_colour():
    evidence = {
        h: {"decision": False, "p": 0.2, "top_slice": 0, "p_top_slice": 0.2,
            "driving_expert_top_slice": None, "driving_expert_study": None,
            "contributions_study": {"magnitude": -0.5, "phase": 0.1},
            "contributions_top_slice": {"magnitude": -0.5, "phase": 0.1},
            "expert_p_top_slice": {"magnitude": 0.3, "phase": 0.6}}
        for h in heads.HEADS
    }
    doc = {"study": {"id": "x", "format": "nifti", "n_slices": 1, "missing_modalities": [], "withheld_modalities": []},
           "prediction": {"model": {}, "aggregation": {}, "notes": []}, "evidence": evidence,
           "identifiers": "hashed", "generated_utc": "", "software": {"version": ""}}
    html = report.report_html(doc)
    for name in ("magnitude", "phase"):
        found = re.findall(r"color:(#[0-9a-f]{6})'>&#9632;</span> " + re.escape(heads.expert_title(name)), html)
        assert found and set(found) == {heads.EXPERT_COLORS[name]}


def test_head_titles_come_from_heads():
    assert [ablation.HEAD_TITLES[h] for h in heads.HEADS] == ["ACL", "MTEAR", "CART", "ABNORMAL"]
    assert ablation.HEAD_TITLES["mean_pathologies"] == "mean ACL/MTEAR/CART"
    assert figures.head_title is heads.head_title and heads.head_title("acl") == "ACL tear / sprain"
