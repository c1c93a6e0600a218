"""The tabular modality: encoding by hand, missing indicators, clinical CSV override and errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from i2m2_med.data.tabular import (
    clinical_text,
    TABULAR_FEATURES,
    feature_names,
    read_clinical_csv,
    tabular_features,
)
from i2m2_med.errors import AnnotationError

TAGS = {
    "age_years": 45.0,
    "sex": "M",
    "weight_kg": 81.0,
    "height_m": 1.8,
    "field_strength_t": 1.5,
    "fat_sat": True,
    "tr_ms": 1000.0,
    "te_ms": 10.0,
}


def test_encoding_by_hand() -> None:
    x, names = tabular_features(TAGS)
    assert x.dtype == np.float32 and x.shape == (14,)
    assert names == feature_names() and names[::2] == list(TABULAR_FEATURES)
    expected = [
        0.45, 0,            # age / 100
        1.0, 0,             # male
        25.0 / 50, 0,       # BMI 81 / 1.8^2 = 25, / 50
        0.5, 0,             # 1.5 T / 3
        1.0, 0,             # fat sat
        0.75, 0,            # log10(1000) / 4
        0.5, 0,             # log10(10) / 2
    ]
    np.testing.assert_allclose(x, expected, rtol=1e-6)


def test_all_missing_gives_zero_values_and_indicators() -> None:
    x, names = tabular_features({})
    np.testing.assert_array_equal(x[0::2], 0.0)
    np.testing.assert_array_equal(x[1::2], 1.0)
    # nonsense values count as missing, never as numbers
    y, _ = tabular_features({"age_years": "unknown", "sex": "?", "tr_ms": -5, "te_ms": float("nan"), "bmi": "NA"})
    np.testing.assert_array_equal(y, x)


def test_clinical_row_overrides_tags_and_extra_columns() -> None:
    row = {"age_years": "062Y", "sex": "female", "bmi": 30.0, "kl_grade": 3.0, "pain": None}
    x, names = tabular_features(TAGS, row, columns={"kl_grade": 4.0, "pain": 10.0})
    d = dict(zip(names, x.tolist()))
    assert d["age_years"] == pytest.approx(0.62) and d["age_years_missing"] == 0
    assert d["sex_male"] == 0.0 and d["sex_male_missing"] == 0
    assert d["bmi"] == pytest.approx(0.6)          # clinical BMI wins over weight / height
    assert d["field_strength_t"] == pytest.approx(0.5)  # not in the row: header tag kept
    assert d["kl_grade"] == pytest.approx(0.75) and d["kl_grade_missing"] == 0
    assert d["pain"] == 0.0 and d["pain_missing"] == 1.0
    # an empty clinical value does not erase the tag
    x2, _ = tabular_features(TAGS, {"age_years": "", "sex": None})
    assert x2[0] == pytest.approx(0.45) and x2[2] == 1.0


def test_read_clinical_csv(tmp_path: Path) -> None:
    csv = tmp_path / "clinical.csv"
    csv.write_text("study_id,Age,Sex,BMI,site\nfile1000001.h5,51,F,22.5,A\nfile1000002,,M,NA,B\n", encoding="utf-8")
    rows = read_clinical_csv(csv, columns={"Age": "age_years", "Sex": "sex", "BMI": "bmi"})
    assert rows == {
        "file1000001": {"age_years": 51.0, "sex": "F", "bmi": 22.5},
        "file1000002": {"age_years": None, "sex": "M", "bmi": None},
    }
    everything = read_clinical_csv(csv)
    assert everything["file1000001"]["site"] == "A"
    x, names = tabular_features({"age_years": 70}, rows["file1000002"])
    assert x[0] == pytest.approx(0.7)  # missing clinical age leaves the header's age


@pytest.mark.parametrize(
    "text, kwargs, reason",
    [
        ("id,age\n1,2\n", {}, "no id column 'study_id'"),
        ("study_id,age\n1,2\n", {"columns": ["age", "weight"]}, "declared column\\(s\\) weight"),
        ("study_id,age\n1,2\n1,3\n", {}, "line 3: study id '1' appears more than once"),
        ("study_id,age\n,2\n", {}, "line 2: empty study_id"),
    ],
)
def test_clinical_csv_errors(tmp_path: Path, text: str, kwargs: dict, reason: str) -> None:
    csv = tmp_path / "c.csv"
    csv.write_text(text, encoding="utf-8")
    with pytest.raises(AnnotationError, match=reason) as info:
        read_clinical_csv(csv, **kwargs)
    assert info.value.where == str(csv)


def test_clinical_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="no such file"):
        read_clinical_csv(tmp_path / "none.csv")


@given(
    age=st.one_of(st.none(), st.floats(0, 120)),
    tr=st.one_of(st.none(), st.floats(1, 20000)),
    sex=st.sampled_from([None, "M", "F", "O", "x"]),
)
@settings(max_examples=50, deadline=None)
def test_property_values_finite_and_indicators_exclusive(age, tr, sex) -> None:
    tags = {k: v for k, v in {"age_years": age, "tr_ms": tr, "sex": sex}.items() if v is not None}
    x, names = tabular_features(tags)
    assert np.isfinite(x).all()
    values, missing = x[0::2], x[1::2]
    assert set(np.unique(missing)) <= {0.0, 1.0}
    assert (values[missing == 1] == 0).all()
    assert (missing[0] == 1) == (age is None)
    if tr is not None:
        assert x[10] == pytest.approx(math.log10(tr) / 4, rel=1e-6)


def test_clinical_text_reads_the_encoding_back_in_clinical_units() -> None:
    tags = {"age_years": 65, "sex": "M", "bmi": 27.5, "field_strength_t": 1.5, "fat_sat": False, "tr_ms": 2800,
            "te_ms": 8.5}
    values, names = tabular_features(tags, {"kl_grade": 3}, columns={"kl_grade": 4.0})
    shown = {n: clinical_text(n, float(values[i]), {"kl_grade": 4.0}) for i, n in enumerate(names) if not n.endswith("_missing")}
    assert shown == {"age_years": "65 years", "sex_male": "male", "bmi": "27.5 kg/m²", "field_strength_t": "1.5 T",
                     "fat_sat": "not fat-suppressed", "tr_ms": "2,800 ms", "te_ms": "8.5 ms", "kl_grade": "3"}
    assert clinical_text("field_strength_t", 1.0) == "3 T" and clinical_text("sex_male", 0.0) == "female or other"


@settings(max_examples=60, deadline=None)
@given(age=st.floats(0, 100), tr=st.floats(100, 9000), te=st.floats(1, 200))
def test_clinical_text_round_trips_through_float32(age, tr, te) -> None:
    values, names = tabular_features({"age_years": age, "tr_ms": tr, "te_ms": te})
    got = {n: clinical_text(n, float(values[i])) for i, n in enumerate(names) if n in ("age_years", "tr_ms", "te_ms")}
    assert math.isclose(float(got["age_years"].split()[0]), age, abs_tol=0.051)
    assert math.isclose(float(got["tr_ms"].split()[0].replace(",", "")), tr, rel_tol=1e-5, abs_tol=0.51)
    assert math.isclose(float(got["te_ms"].split()[0]), te, rel_tol=1e-5, abs_tol=0.051)
