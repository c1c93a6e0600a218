"""The single source of truth for the four pathology heads, the fastMRI+ label mapping, and how
heads and experts are named and coloured wherever they are shown (the app, its study report and
the ablation report).

Mapping (as in the I2M2 reference for knee): a fastMRI+ label feeds

* ``acl``      if it contains "ACL" (low- and high-grade sprains);
* ``mtear``    if it is exactly "Meniscus Tear";
* ``cart``     if it contains "cartilage" (any case: partial- and full-thickness defects);
* ``abnormal`` for any other finding (effusion, bone edema, cysts, MCL, ...).

Study-level rows (the 13 "artifact" rows of knee.csv) carry no box and no slice; they are
image-quality remarks, not findings, and feed no head.
"""

from __future__ import annotations

HEADS: tuple[str, ...] = ("acl", "mtear", "cart", "abnormal")
PATHOLOGY_HEADS: tuple[str, ...] = ("acl", "mtear", "cart")
"""The three specific pathologies; their mean AUROC is reported beside the mean over all four."""
HEAD_TITLES: dict[str, str] = {
    "acl": "ACL tear / sprain",
    "mtear": "Meniscus tear",
    "cart": "Cartilage defect",
    "abnormal": "Other abnormality",
}
HEAD_SHORT_TITLES: dict[str, str] = {h: h.upper() for h in HEADS}
"""Column headers of tables with one column per head (``ACL``, ``MTEAR``, ...)."""
HEAD_COLORS: dict[str, str] = {"acl": "#f76707", "mtear": "#37b24d", "cart": "#1c7ed6", "abnormal": "#d6336c"}
"""The colour of a head's fastMRI+ boxes drawn on an image."""
NON_FINDING_LABELS: frozenset[str] = frozenset({"artifact"})

EXPERT_TITLES: dict[str, str] = {
    "magnitude": "Magnitude expert",
    "phase": "Phase expert",
    "tabular": "Tabular expert",
    "joint": "Joint (inter-modality)",
    "prior": "Class prior",
}
EXPERT_SHORT_TITLES: dict[str, str] = {
    "magnitude": "Magnitude", "phase": "Phase", "tabular": "Tabular", "joint": "Joint", "prior": "Prior",
}
EXPERT_COLORS: dict[str, str] = {
    "magnitude": "#8c8c8c",
    "phase": "#c2477a",
    "tabular": "#a08a2a",
    "joint": "#2e9d4a",
    "prior": "#5b6472",
}
"""One colour per expert, the same in the app, its study report and the ablation report (where the
single-expert variants and the inter variant take their expert's colour)."""


def head_title(head: str) -> str:
    """The title of a head (``"ACL tear / sprain"``); an unknown name in capitals."""
    return HEAD_TITLES.get(head, str(head).upper())


def expert_title(name: str) -> str:
    """The title of an expert (``"Magnitude expert"``); an unknown name as it is."""
    return EXPERT_TITLES.get(name, name)


def expert_short_title(name: str) -> str:
    """The short title of an expert (``"Magnitude"``) for axis labels; an unknown name as it is."""
    return EXPERT_SHORT_TITLES.get(name, name)


def head_of_label(label: str) -> str | None:
    """The head a fastMRI+ label string feeds, or None for a non-finding ("artifact").

    >>> head_of_label("Ligament - ACL High Grade Sprain")
    'acl'
    >>> head_of_label("Joint Effusion ")
    'abnormal'
    """
    text = " ".join(str(label).split())
    if text.lower() in NON_FINDING_LABELS or not text:
        return None
    if "ACL" in text:
        return "acl"
    if text == "Meniscus Tear":
        return "mtear"
    if "cartilage" in text.lower():
        return "cart"
    return "abnormal"
