"""The single source of truth for the four pathology heads and the fastMRI+ label mapping.

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
NON_FINDING_LABELS: frozenset[str] = frozenset({"artifact"})


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
