"""The app finds a study's clinical row as ``diagnose`` does (:func:`i2m2_med.data.layout.clinical_row`:
study id, file name, then patient id), so the two give a DICOM study the same tabular features and
the same tabular evidence when the cohort's ``tabular.csv`` is keyed by patient id."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from app_support import APP_DIR  # noqa: F401  (puts app/ on the path)
from diagnose_inputs import PATIENT_IDS, make_checkpoint, write_dicom_study
from viewer import compute, sources, ui

from i2m2_med.data.layout import CLINICAL_CSV
from i2m2_med.data.tabular import read_clinical_csv, tabular_features
from i2m2_med.heads import HEADS
from pipelines import diagnose

torch.set_num_threads(1)
PATIENT = PATIENT_IDS[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "model.safetensors", seed=13)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """A DICOM study (magnitude + phase; its header says 52 years, female, 70 kg, 1.70 m, 3 T) and
    a clinical table keyed by the patient's id that says otherwise."""
    root = tmp_path_factory.mktemp("clinical") / "cohort"
    write_dicom_study(root / "exam", n_slices=2, phase=True, patient=0, seed=4)
    (root / CLINICAL_CSV).write_text(f"study_id,age_years,sex,bmi,field_strength_t\n{PATIENT},81,M,35.5,1.5\n")
    return root


def _diagnosed(cohort: Path, out: Path, checkpoint: Path, clinical: bool) -> dict:
    code = diagnose.run(cohort, out, model=str(checkpoint), progress=False, workers=0, auto_clinical=clinical)
    assert code == 0
    with open(out / "predictions.csv", newline="", encoding="utf-8") as fh:
        (row,) = list(csv.DictReader(fh))
    return json.loads((out / "studies" / f"{row['study_id']}.json").read_text())


def test_app_and_diagnose_use_the_row_keyed_by_patient_id(cohort, checkpoint, tmp_path):
    record = _diagnosed(cohort, tmp_path / "joined", checkpoint, clinical=True)
    plain = _diagnosed(cohort, tmp_path / "plain", checkpoint, clinical=False)

    lm = compute.load_model(*compute.model_location(checkpoint), False)
    (found,), problems = sources.scan_folder(cohort, cohort)
    assert not problems and found.format == "dicom"
    ref = found.ref
    assert Path(ref.cohort) == cohort.resolve()
    study = sources.open_study(ref)
    assert study.study_id != PATIENT and study.patient_id == PATIENT  # found by the patient-id fallback only

    # the same row, hence the same features as the library builds from it
    row = sources.clinical_row(ref, study)
    assert row == read_clinical_csv(cohort / CLINICAL_CSV)[PATIENT]
    assert ui.study_summary(ref)["clinical_table"] is True
    pred = compute.prediction(ref.key, lm.key, (), ref, lm)
    expected, names = tabular_features(study.tags, row)
    assert list(pred.tabular) == list(names)
    np.testing.assert_array_equal(np.array(list(pred.tabular.values()), dtype=np.float32), expected)
    assert pred.tabular["age_years"] == pytest.approx(0.81) and pred.tabular["sex_male"] == 1.0

    # the same tabular evidence as diagnose: study-level contribution and every slice's term
    app = pred.to_json()
    for h in HEADS:
        assert app["study"]["contributions"]["tabular"][h] == pytest.approx(
            record["study"]["contributions"]["tabular"][h], abs=1e-6)
    for ours, theirs in zip(app["slices"], record["slices"], strict=True):
        assert ours["index"] == theirs["index"]
        for h in HEADS:
            assert ours["logp"]["tabular"][h] == pytest.approx(theirs["logp"]["tabular"][h], abs=1e-6)
    # ... which the clinical row changes (without it diagnose reads the DICOM header alone)
    gaps = [abs(record["study"]["contributions"]["tabular"][h] - plain["study"]["contributions"]["tabular"][h]) for h in HEADS]
    assert max(gaps) > 1e-3

    # the attributions page reads the same vector
    attr = compute.compute_tabular(lm, ref)
    np.testing.assert_allclose(attr.values, [pred.tabular[n] for n in attr.names])
