"""The synthetic subject: clinical (tabular) variables and the acquisition protocol.

Ranges follow a knee-MRI outpatient population and the fastMRI knee protocols (coronal proton
density turbo spin echo, with and without fat saturation, Siemens 1.5 T and 3 T):

========================  ============================================================
``age_years``             18-88, 18 + 70 * Beta(2.0, 2.3) (mean ~ 50)
``sex``                   "F" 52 %, "M" 48 %
``height_m``              N(1.77, 0.07) men, N(1.63, 0.065) women, clipped 1.45-2.05
``bmi``                   log-normal around 26.5 kg/m^2 (rising ~0.05 per year of age),
                          clipped 17-48
``weight_kg``             bmi * height_m ** 2
``field_strength_t``      2.89362 (Skyra / Prisma, 60 %) or 1.494 (Aera, 40 %)
``fat_sat``               per acquisition (CORPDFS_FBK) - see :func:`draw_protocol`
``tr_ms`` ``te_ms``       PD: TR 2200-3200 ms, TE 26-34 ms; PD-FS: TR 2800-4200, TE 30-40
========================  ============================================================

The dependency the tabular expert can learn (a real one in the literature): the log-odds of
cartilage defects rise with age (+0.045 per year) and BMI (+0.09 per kg/m^2), meniscal tears
with age and with an ACL tear, ACL tears fall with age; bone bruises go with ACL tears and an
effusion goes with any other finding. The coefficients live in :mod:`i2m2_med.synth.lesions`.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np

FIELD_3T = 2.89362
FIELD_15T = 1.494
SCANNERS = {FIELD_3T: ("SIEMENS", ("Skyra", "Prisma_fit")), FIELD_15T: ("SIEMENS", ("Aera",))}

#: The columns of OUT_DIR/tabular.csv after ``study_id`` (standard tag keys of i2m2_med.io.study).
TABULAR_COLUMNS: tuple[str, ...] = (
    "age_years", "sex", "height_m", "weight_kg", "bmi", "field_strength_t", "fat_sat",
    "acquisition", "tr_ms", "te_ms", "vendor", "model",
)


@dataclass(frozen=True)
class Subject:
    """One synthetic person (one knee). Units in the names."""

    subject_id: str
    age_years: float
    sex: str
    height_m: float
    weight_kg: float
    bmi: float
    knee_side: str            # "R" / "L": the image is mirrored for a left knee
    field_strength_t: float
    vendor: str
    model: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Protocol:
    """One acquisition of the subject: fastMRI protocol name, fat saturation, timing."""

    acquisition: str          # "CORPD_FBK" or "CORPDFS_FBK"
    fat_sat: bool
    tr_ms: float
    te_ms: float
    flip_angle_deg: float     # refocusing flip angle of the turbo spin echo train


def hashed_id(*parts: object, n: int = 32) -> str:
    """A stable hexadecimal id (sha256 of the parts), as fastMRI's ``patient_id`` attribute."""
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:n]


def draw_subject(rng: np.random.Generator, subject_key: str) -> Subject:
    """Draw one subject. ``subject_key`` seeds the hashed subject id (no names anywhere)."""
    age = float(18.0 + 70.0 * rng.beta(2.0, 2.3))
    sex = "F" if rng.random() < 0.52 else "M"
    height = float(np.clip(rng.normal(1.77, 0.07) if sex == "M" else rng.normal(1.63, 0.065), 1.45, 2.05))
    bmi = float(np.clip(np.exp(rng.normal(np.log(26.5) + 0.002 * (age - 50.0), 0.16)), 17.0, 48.0))
    weight = bmi * height**2
    field = FIELD_3T if rng.random() < 0.6 else FIELD_15T
    vendor, models = SCANNERS[field]
    model = models[int(rng.integers(len(models)))]
    side = "R" if rng.random() < 0.55 else "L"
    return Subject(
        subject_id=hashed_id("subject", subject_key),
        age_years=round(age, 1),
        sex=sex,
        height_m=round(height, 3),
        weight_kg=round(weight, 1),
        bmi=round(bmi, 2),
        knee_side=side,
        field_strength_t=field,
        vendor=vendor,
        model=model,
    )


def draw_protocol(rng: np.random.Generator, fat_sat: bool) -> Protocol:
    """Timing of a coronal PD (or PD fat-sat) turbo spin echo, as in the fastMRI knee set."""
    if fat_sat:
        tr, te = rng.uniform(2800.0, 4200.0), rng.uniform(30.0, 40.0)
    else:
        tr, te = rng.uniform(2200.0, 3200.0), rng.uniform(26.0, 34.0)
    return Protocol(
        acquisition="CORPDFS_FBK" if fat_sat else "CORPD_FBK",
        fat_sat=bool(fat_sat),
        tr_ms=round(float(tr), 0),
        te_ms=round(float(te), 1),
        flip_angle_deg=float(rng.choice([120.0, 140.0, 150.0])),
    )


def tabular_row(subject: Subject, protocol: Protocol) -> dict:
    """The clinical columns of one study (see :data:`TABULAR_COLUMNS`)."""
    return {
        "age_years": subject.age_years,
        "sex": subject.sex,
        "height_m": subject.height_m,
        "weight_kg": subject.weight_kg,
        "bmi": subject.bmi,
        "field_strength_t": subject.field_strength_t,
        "fat_sat": int(protocol.fat_sat),
        "acquisition": protocol.acquisition,
        "tr_ms": protocol.tr_ms,
        "te_ms": protocol.te_ms,
        "vendor": subject.vendor,
        "model": subject.model,
    }
