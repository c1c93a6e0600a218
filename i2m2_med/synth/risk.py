"""Per-subject probability of each finding class: the real dependency of findings on the tabular data.

Log-odds model per class (volume level), evaluated in this order so that later classes can
depend on earlier ones::

    logit P(acl)       = a_acl  - 0.035 (age - 50)                     + 0.25 [male]
    logit P(meniscus)  = a_men  + 0.030 (age - 50) + 0.03 (BMI - 26.5) + 1.0 [acl]
    logit P(cartilage) = a_cart + 0.045 (age - 50) + 0.09 (BMI - 26.5)
    logit P(bone)      = a_bone + 0.010 (age - 50)                     + 1.2 [acl]
    logit P(cyst)      = a_cyst + 0.025 (age - 50)
    logit P(effusion)  = a_eff                                         + 0.9 [any other]

Intercepts ``a_*`` are calibrated (bisection on a fixed reference population drawn with
:func:`i2m2_med.synth.subject.draw_subject`) so that the cohort prevalence of each class equals
its target in :data:`CLASS_PREVALENCE` (derived from fastMRI+: ACL 21.7 %, meniscal tear
56.6 %, cartilage 50.7 %; bone marrow edema or contusion 25 %, cysts 14 %, effusion 12 %, raised a
little so that ABNORMAL reaches the real 49 % without the rarer labels).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from i2m2_med.synth.subject import Subject, draw_subject

CLASS_ORDER: tuple[str, ...] = ("acl", "meniscus", "cartilage", "bone", "cyst", "effusion")
CLASS_PREVALENCE: dict[str, float] = {
    "acl": 0.217, "meniscus": 0.566, "cartilage": 0.507, "bone": 0.27, "cyst": 0.16, "effusion": 0.15,
}
_AGE0, _BMI0 = 50.0, 26.5


def _linear(cls: str, age: np.ndarray, bmi: np.ndarray, male: np.ndarray, has: dict[str, np.ndarray]) -> np.ndarray:
    a, b = age - _AGE0, bmi - _BMI0
    if cls == "acl":
        return -0.035 * a + 0.25 * male
    if cls == "meniscus":
        return 0.030 * a + 0.03 * b + 1.0 * has["acl"]
    if cls == "cartilage":
        return 0.045 * a + 0.09 * b
    if cls == "bone":
        return 0.010 * a + 1.2 * has["acl"]
    if cls == "cyst":
        return 0.025 * a
    if cls == "effusion":
        other = np.zeros_like(a)
        for c in ("acl", "meniscus", "cartilage", "bone", "cyst"):
            other = np.maximum(other, has[c])
        return 0.9 * other
    raise KeyError(cls)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@lru_cache(maxsize=1)
def intercepts() -> dict[str, float]:
    """Calibrated intercepts (deterministic: fixed reference population of 4,000 subjects)."""
    rng = np.random.default_rng(20240917)
    people = [draw_subject(rng, f"ref{i}") for i in range(4000)]
    age = np.array([p.age_years for p in people])
    bmi = np.array([p.bmi for p in people])
    male = np.array([p.sex == "M" for p in people], float)
    draws = rng.random((len(CLASS_ORDER), len(people)))
    has: dict[str, np.ndarray] = {}
    out: dict[str, float] = {}
    for i, cls in enumerate(CLASS_ORDER):
        lin = _linear(cls, age, bmi, male, has)
        lo, hi = -10.0, 10.0
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            if _sigmoid(mid + lin).mean() < CLASS_PREVALENCE[cls]:
                lo = mid
            else:
                hi = mid
        out[cls] = round(0.5 * (lo + hi), 4)
        has[cls] = (draws[i] < _sigmoid(out[cls] + lin)).astype(float)
    return out


def draw_classes(rng: np.random.Generator, subject: Subject) -> dict[str, bool]:
    """Which finding classes this subject's knee has (volume level), in :data:`CLASS_ORDER`."""
    a = intercepts()
    age = np.array([subject.age_years])
    bmi = np.array([subject.bmi])
    male = np.array([float(subject.sex == "M")])
    has: dict[str, np.ndarray] = {}
    for cls in CLASS_ORDER:
        p = _sigmoid(a[cls] + _linear(cls, age, bmi, male, has))
        has[cls] = (rng.random(1) < p).astype(float)
    return {cls: bool(has[cls][0]) for cls in CLASS_ORDER}
