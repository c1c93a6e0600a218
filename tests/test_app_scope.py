"""The app shows a study out of the model's scope with a prominent warning instead of evidence:
noise uploaded as a NIfTI (by its distribution-shift score, with the score and the threshold),
a real head series from pydicom's test files (by its tags, before the model runs), and an
out-of-scope record of a diagnose run."""

from __future__ import annotations

import io
import json
import zipfile

import nibabel
import numpy as np
import pytest
import torch
from app_support import MAIN, prepare
from pydicom.data import get_testdata_file
from streamlit.testing.v1 import AppTest  # noqa: E402  (after app_support put app/ on the path)
from viewer import compute  # noqa: E402

import i2m2_med
from i2m2_med.inference.loading import load_model
from i2m2_med.inference.shift import has_shift

torch.set_num_threads(1)
TIMEOUT = 600


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp("app"))


@pytest.fixture(autouse=True)
def app_environ(env, monkeypatch):
    for name in ("I2M2_DATA_ROOT", "I2M2_MODEL", "I2M2_MAX_UPLOAD_MB"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.environ().items():
        monkeypatch.setenv(name, value)


def _upload(name: str, data: bytes) -> AppTest:
    at = AppTest.from_file(str(MAIN), default_timeout=TIMEOUT)
    at.run()
    at.radio(key="source").set_value("Upload")
    at.run()
    at.file_uploader(key="upload_file").upload(name, data)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _noise_nifti(tmp_path) -> bytes:
    rng = np.random.default_rng(0)
    z = rng.standard_normal((320, 320, 6)) + 1j * rng.standard_normal((320, 320, 6))
    path = tmp_path / "noise.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.abs(z).astype(np.float32) * 100, np.diag([0.5, 0.5, 3.0, 1.0])), path)
    return path.read_bytes()


def _no_evidence(at: AppTest) -> None:
    assert not at.metric  # no probability cards
    assert not list(at.get("plotly_chart"))  # no images, waterfall, saliency or curves
    assert not any(m.value.startswith("### Evidence") for m in at.markdown)


@pytest.mark.skipif(not i2m2_med.demo_model_path().is_file(), reason="needs the bundled model")
def test_noise_is_shown_out_of_scope_with_its_score(env, tmp_path):
    assert has_shift(load_model(None)[0])
    at = _upload("noise.nii.gz", _noise_nifti(tmp_path))
    errors = [e.value for e in at.error]
    assert len(errors) == 1, errors
    assert errors[0].startswith("**Out of scope: no findings are reported for this study.**")
    assert "Out of scope by content: distribution-shift score" in errors[0]
    assert "Distribution-shift score **" in errors[0] and "threshold **" in errors[0]
    _no_evidence(at)


def test_a_real_head_series_is_shown_out_of_scope_from_its_tags(env):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.write(get_testdata_file("emri_small.dcm"), "series/emri_small.dcm")
    forward = compute.COUNTS["forward"]
    at = _upload("head.zip", buf.getvalue())
    errors = [e.value for e in at.error]
    assert len(errors) == 1, errors
    assert "Out of scope by its tags: head: not a knee" in errors[0]
    assert "Distribution-shift score" not in errors[0]  # the tags decided: no score
    assert compute.COUNTS["forward"] == forward  # the model did not run
    _no_evidence(at)


def test_an_out_of_scope_record_raises_its_reason(tmp_path):
    record = {"status": "out_of_scope", "error": "out of scope by content: distribution-shift score 9.85 above ...",
              "shift": {"available": True, "score": 9.85, "threshold": 1.43, "out_of_scope": True}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(record))
    with pytest.raises(compute.OutOfScopeRecord) as info:
        compute.read_record(str(path))
    assert info.value.shift["score"] == 9.85 and info.value.reason.startswith("out of scope by content")
