"""``StudyPrediction.from_json`` is the inverse of ``to_json``: a prediction written as ``diagnose``'s
per-study JSON reads back field for field, and its JSON again is the same JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diagnose_inputs import make_checkpoint, write_h5, write_nifti

from i2m2_med.inference.loading import load_model
from i2m2_med.inference.predict import predict_study
from i2m2_med.inference.prediction import StudyPrediction
from i2m2_med.io.fastmri_h5 import read_fastmri_h5
from i2m2_med.io.nifti import read_nifti

torch.set_num_threads(1)
NOT_IN_JSON = {"tabular", "seconds"}


@pytest.fixture(scope="module")
def predictions(tmp_path_factory) -> dict[str, StudyPrediction]:
    """Real predictions: k-space with every modality and a class prior (top-k aggregation), a
    magnitude-only NIfTI (experts dropped, max aggregation), and one with tabular withheld."""
    root = tmp_path_factory.mktemp("json")
    with_prior = load_model(make_checkpoint(root / "prior.safetensors", seed=2, prior=True))
    max_rule = load_model(make_checkpoint(root / "max.safetensors", seed=3, aggregation="max"))
    h5 = read_fastmri_h5(write_h5(root / "knee.h5", n_slices=5, width=368, seed=4))
    nifti = read_nifti(write_nifti(root / "vol.nii.gz", n_slices=4, phase=False, seed=5))
    return {
        "kspace_prior": predict_study(*with_prior, h5, slices=[4, 0, 2, 3]),
        "magnitude_only": predict_study(*max_rule, nifti),
        "withheld": predict_study(*max_rule, read_fastmri_h5(h5.source), drop_modalities=["tabular"]),
    }


def _assert_same(a, b, name: str) -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    elif isinstance(a, dict):
        assert list(a) == list(b), name
        for k in a:
            _assert_same(a[k], b[k], f"{name}[{k}]")
    else:
        assert type(a) is type(b) and a == b, name


@pytest.mark.parametrize("case", ["kspace_prior", "magnitude_only", "withheld"])
def test_from_json_inverts_to_json(predictions, case):
    pred = predictions[case]
    doc = pred.to_json()
    written = json.loads(json.dumps(doc))  # as diagnose writes and the app reads it
    back = StudyPrediction.from_json(written)
    assert back.to_json() == doc
    for f in dataclasses.fields(StudyPrediction):
        if f.name in NOT_IN_JSON:
            continue
        _assert_same(getattr(pred, f.name), getattr(back, f.name), f.name)
    assert back.tabular == {} and back.seconds == 0.0


def test_the_cases_cover_what_the_json_holds(predictions):
    kinds = predictions["kspace_prior"], predictions["magnitude_only"], predictions["withheld"]
    assert "prior" in kinds[0].terms and list(kinds[0].slices) == [4, 0, 2, 3]
    assert kinds[0].aggregation["rule"] == "mean_top_k" and kinds[1].aggregation == {"rule": "max"}
    assert kinds[1].missing_modalities == ["phase"] and kinds[1].dropped_experts
    assert kinds[2].excluded_modalities == ["tabular"]


def test_from_json_refuses_what_is_not_a_prediction(predictions):
    doc = json.loads(json.dumps(predictions["withheld"].to_json()))
    with pytest.raises(ValueError, match="status 'error'"):
        StudyPrediction.from_json({**doc, "status": "error", "error": "truncated"})
    with pytest.raises(ValueError, match="heads"):
        StudyPrediction.from_json({**doc, "heads": ["acl"]})
    with pytest.raises(ValueError, match="no slices"):
        StudyPrediction.from_json({**doc, "slices": []})
    with pytest.raises(ValueError, match="top slice"):
        StudyPrediction.from_json({**doc, "study": {**doc["study"], "top_slice": {h: 99 for h in doc["heads"]}}})
    with pytest.raises(KeyError):
        StudyPrediction.from_json({k: v for k, v in doc.items() if k != "terms"})


def test_diagnose_records_read_back(tmp_path):
    """A record with the keys diagnose adds (patient id, clinical table, SR, series class, the experts'
    disagreement) reads back too."""
    from pipelines import diagnose

    src = tmp_path / "in"
    write_h5(src / "knee.h5", n_slices=3, width=368, seed=6)
    model = make_checkpoint(tmp_path / "m.safetensors", seed=7)
    assert diagnose.run(src, tmp_path / "out", model=str(model), progress=False, workers=0) == 0
    (path,) = (tmp_path / "out" / "studies").glob("*.json")
    record = json.loads(Path(path).read_text())
    back = StudyPrediction.from_json(record)
    added = ("patient_id", "clinical_table", "sr", "series", "disagreement", "missing_slices")
    assert back.to_json() == {k: v for k, v in record.items() if k not in added}
    assert record["disagreement"]["value"] is not None
    assert record["missing_slices"] == 0  # an h5 volume has every slice of its k-space
    assert record["series"]["label"] == "coronal PD" and record["series"]["is_model_series"]
