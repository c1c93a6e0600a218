"""The tabular modality: a fixed-length float32 feature vector per study, from header / DICOM
tags and an optional clinical table.

Encoding (:data:`TABULAR_FEATURES`; every feature is followed by its missing-value indicator,
``<name>_missing`` = 1.0 when the value is unknown, in which case the value is 0.0):

====================  ====================================================================
``age_years``         age / 100 (years; 45 y -> 0.45)
``sex_male``          1.0 male, 0.0 female or other
``bmi``               BMI / 50 (kg/m^2); computed from ``weight_kg`` / ``height_m``^2 when
                      the BMI itself is unknown
``field_strength_t``  main field / 3 (tesla; 3 T -> 1.0, 1.5 T -> 0.5)
``fat_sat``           1.0 fat-suppressed sequence, 0.0 not
``tr_ms``             log10(TR in ms) / 4 (2750 ms -> 0.86)
``te_ms``             log10(TE in ms) / 2 (27 ms -> 0.72)
====================  ====================================================================

That is 14 numbers in the default order::

    age_years, age_years_missing, sex_male, sex_male_missing, bmi, bmi_missing,
    field_strength_t, field_strength_t_missing, fat_sat, fat_sat_missing,
    tr_ms, tr_ms_missing, te_ms, te_ms_missing


Sources and precedence: the study's standard tags (see :mod:`i2m2_med.io.study`), overridden
by a non-empty value of the clinical row under the same standard name (clinical tables are
the researcher's curated values; headers are often anonymised). Extra clinical columns
(e.g. a pain score or KL grade) are appended when named in ``columns``: numeric, divided by the
scale given in ``columns`` (1 by default), with their own missing indicator.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from i2m2_med.errors import AnnotationError

#: The standard features, in order (each followed by ``<name>_missing`` in the vector).
TABULAR_FEATURES: tuple[str, ...] = ("age_years", "sex_male", "bmi", "field_strength_t", "fat_sat", "tr_ms", "te_ms")

#: Standard tag names a clinical table may override (its columns renamed to these).
CLINICAL_STANDARD_KEYS: frozenset[str] = frozenset(
    {"age_years", "sex", "bmi", "weight_kg", "height_m", "field_strength_t", "fat_sat", "tr_ms", "te_ms"}
)


_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}
_MALE = {"m", "male", "man"}
_FEMALE = {"f", "female", "woman"}
_OTHER = {"o", "other"}


def feature_names(columns: Sequence[str] | Mapping[str, float] | None = None) -> list[str]:
    """Names of the vector's entries for ``columns`` (see :func:`tabular_features`)."""
    names: list[str] = []
    for name in _feature_list(columns):
        names += [name, f"{name}_missing"]
    return names


def _feature_list(columns: Sequence[str] | Mapping[str, float] | None) -> list[str]:
    base = list(TABULAR_FEATURES)
    extra = [c for c in (columns or []) if c not in base]
    return base + extra


def _number(value: Any) -> float | None:
    """A finite float, or None for missing / unparseable / non-finite values."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    text = str(value).strip()
    if not text or text.lower() in {"na", "nan", "none", "null", "?"}:
        return None
    if text.lower() in _TRUE:
        return 1.0
    if text.lower() in _FALSE:
        return 0.0
    # DICOM age strings: 045Y, 006M, 010W, 003D
    if len(text) == 4 and text[:3].isdigit() and text[3].upper() in "YMWD":
        n = float(text[:3])
        return n / {"Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}[text[3].upper()]
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _flag(value: Any) -> float | None:
    v = _number(value)
    if v is None:
        return None
    return 1.0 if v != 0 else 0.0


def _sex_male(value: Any) -> float | None:
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in _MALE:
        return 1.0
    if text in _FEMALE or text in _OTHER:
        return 0.0
    return None


def merged_tags(tags: Mapping[str, Any], clinical_row: Mapping[str, Any] | None) -> dict[str, Any]:
    """A study's tags with the non-empty values of its clinical row over them (the row wins)."""
    merged = dict(tags)
    for key, value in (clinical_row or {}).items():
        if value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip()):
            continue
        merged[key] = value
    return merged


def _encode(name: str, m: Mapping[str, Any], scales: Mapping[str, float]) -> float | None:
    if name == "age_years":
        v = _number(m.get("age_years"))
        return None if v is None or v < 0 else v / 100.0
    if name == "sex_male":
        return _sex_male(m.get("sex"))
    if name == "bmi":
        v = _number(m.get("bmi"))
        if v is None:
            w, h = _number(m.get("weight_kg")), _number(m.get("height_m"))
            if w is not None and h is not None and w > 0 and h > 0:
                v = w / (h * h)
        return None if v is None or v <= 0 else v / 50.0
    if name == "field_strength_t":
        v = _number(m.get("field_strength_t"))
        return None if v is None or v <= 0 else v / 3.0
    if name == "fat_sat":
        return _flag(m.get("fat_sat"))
    if name == "tr_ms":
        v = _number(m.get("tr_ms"))
        return None if v is None or v <= 0 else math.log10(v) / 4.0
    if name == "te_ms":
        v = _number(m.get("te_ms"))
        return None if v is None or v <= 0 else math.log10(v) / 2.0
    v = _number(m.get(name))
    return None if v is None else v / float(scales.get(name, 1.0) or 1.0)


def _plain(x: float, decimals: int) -> str:
    """``x`` rounded to ``decimals``, thousands separated, without trailing zeros."""
    text = f"{x:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def clinical_text(name: str, encoded: float, scales: Mapping[str, float] | None = None) -> str:
    """One encoded feature back in clinical units, for people: the inverse of the encoding above
    (``age_years`` 0.65 -> "65 years", ``tr_ms`` 0.86 -> "2,754 ms", ``field_strength_t`` 0.5 ->
    "1.5 T"); an extra clinical column times its divisor in ``scales``. The caller says "unknown"
    when the feature's missing indicator is set (the encoded value is then 0)."""
    v = float(encoded)
    if name == "age_years":
        return f"{_plain(100.0 * v, 1)} years"
    if name == "sex_male":
        return "male" if v >= 0.5 else "female or other"
    if name == "bmi":
        return f"{_plain(50.0 * v, 1)} kg/m²"
    if name == "field_strength_t":
        return f"{_plain(3.0 * v, 2)} T"
    if name == "fat_sat":
        return "fat-suppressed" if v >= 0.5 else "not fat-suppressed"
    if name == "tr_ms":
        return f"{_plain(10.0 ** (4.0 * v), 0)} ms"
    if name == "te_ms":
        return f"{_plain(10.0 ** (2.0 * v), 1)} ms"
    return _plain(v * float((scales or {}).get(name, 1.0) or 1.0), 3)


def tabular_features(
    tags: Mapping[str, Any],
    clinical_row: Mapping[str, Any] | None = None,
    columns: Sequence[str] | Mapping[str, float] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """The tabular vector of one study: ``(features (F,) float32, names)``.

    ``tags``: the study's standard tags (``Study.tags``). ``clinical_row``: the study's row of
    a clinical table (:func:`read_clinical_csv`), whose non-empty values override the tags of
    the same name. ``columns``: extra clinical columns appended after the standard features,
    a list of names or a mapping name -> divisor. F = 2 * (7 + len(extra columns)).
    """
    merged = merged_tags(tags, clinical_row)
    scales = dict(columns) if isinstance(columns, Mapping) else {}
    values: list[float] = []
    for name in _feature_list(columns):
        v = _encode(name, merged, scales)
        values += [0.0, 1.0] if v is None else [float(v), 0.0]
    return np.asarray(values, dtype=np.float32), feature_names(columns)


def read_clinical_csv(
    path: str | os.PathLike,
    id_column: str = "study_id",
    columns: Sequence[str] | Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """A researcher's clinical table: study id -> {column: value}.

    ``columns``: the columns to read, as declared in the configuration -- a list of names, or a
    mapping ``csv column -> name`` to rename them (use the standard names ``age_years``, ``sex``,
    ``bmi``, ``weight_kg``, ``height_m``, ... to override header tags). None reads every column.
    Values: numbers as float, empty / NA as None, anything else as the stripped string. Study
    ids are compared as stripped strings (a ``.h5`` suffix is dropped, so fastMRI file names
    match).

    Raises :class:`AnnotationError` naming the file and the reason: missing file, no
    ``id_column``, a declared column that the file lacks, an empty or repeated study id.
    """
    p = Path(path)
    where = str(p)
    if not p.is_file():
        raise AnnotationError(where, "no such file")
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise AnnotationError(where, f"not a readable CSV table ({' '.join(str(exc).split())})") from None
    df.columns = [str(c).strip() for c in df.columns]
    if id_column not in df.columns:
        raise AnnotationError(where, f"no id column {id_column!r} (columns: {', '.join(df.columns)})")
    if columns is None:
        rename = {c: c for c in df.columns if c != id_column}
    elif isinstance(columns, Mapping):
        rename = {str(k): str(v) for k, v in columns.items()}
    else:
        rename = {str(c): str(c) for c in columns}
    missing = [c for c in rename if c not in df.columns]
    if missing:
        raise AnnotationError(
            where, f"declared column(s) {', '.join(missing)} not in the file (columns: {', '.join(df.columns)})"
        )
    out: dict[str, dict[str, Any]] = {}
    for line, row in enumerate(df.itertuples(index=False), start=2):
        values = dict(zip(df.columns, row))
        sid = str(values[id_column]).strip()
        if sid.endswith(".h5"):
            sid = sid[:-3]
        if not sid:
            raise AnnotationError(where, f"line {line}: empty {id_column}")
        if sid in out:
            raise AnnotationError(where, f"line {line}: study id {sid!r} appears more than once")
        out[sid] = {new: _cell(values[old]) for old, new in rename.items()}
    return out


def _cell(text: str) -> Any:
    t = str(text).strip()
    if not t or t.lower() in {"na", "nan", "none", "null"}:
        return None
    try:
        v = float(t)
    except ValueError:
        return t
    return v if math.isfinite(v) else None
