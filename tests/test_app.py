"""The Streamlit app through streamlit.testing's AppTest: the demo study page, the slider served
from caches (model calls counted), identifiers hidden by default, a missing and a withheld
modality, paths outside the data root refused, good and bad uploads, the batch page on a real
``diagnose`` output folder, and the per-study report."""

from __future__ import annotations

import io
import json
import math
import os
import re
import stat
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from app_support import MAIN, prepare
from streamlit.testing.v1 import AppTest  # noqa: E402  (after app_support put app/ on the path)
from viewer import compute, report, sources  # noqa: E402
from viewer.paths import PathRefused, resolve_under  # noqa: E402

from i2m2_med.heads import HEADS
from i2m2_med.privacy import hash_id

torch.set_num_threads(1)
TIMEOUT = 600
HEX16 = re.compile(r"^[0-9a-f]{16}$")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp("app"))


@pytest.fixture(autouse=True)
def app_environ(env, monkeypatch):
    for name in ("I2M2_DATA_ROOT", "I2M2_MODEL", "I2M2_MAX_UPLOAD_MB"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.environ().items():
        monkeypatch.setenv(name, value)


def demo_refs(env):
    return sources.demo_refs(sources.demo_folder(env.cache_dir))


def start() -> AppTest:
    at = AppTest.from_file(str(MAIN), default_timeout=TIMEOUT)
    at.run()
    return at


def markdown_text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def charts(at: AppTest) -> list:
    return list(at.get("plotly_chart"))


def metric_values(at: AppTest) -> dict[str, float]:
    return {m.label: float(m.value) for m in at.metric}


def current_model() -> compute.LoadedModel:
    """The model the app runs with (the same cached object)."""
    configured = os.environ.get("I2M2_MODEL")
    checkpoint, stamp = compute.model_location(Path(configured) if configured else None)
    return compute.load_model(checkpoint, stamp, configured is None)


def slice_slider(at: AppTest):
    return next(s for s in at.slider if s.label == "Slice")


# ---- the demo study ------------------------------------------------------------------------------


def test_demo_study_page_shows_banner_probabilities_and_evidence(env):
    at = start()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    text = markdown_text(at)
    assert "RESEARCH USE ONLY" in text
    values = metric_values(at)
    assert set(values) == {"ACL tear / sprain", "Meniscus tear", "Cartilage defect", "Other abnormality"}
    assert all(0.0 <= v <= 1.0 for v in values.values())
    # the numbers on the cards are the cached prediction's study-level probabilities
    ref = demo_refs(env)[0]
    title = next(m.value for m in at.markdown if m.value.startswith("## Study"))
    shown = title.split("`")[1]
    assert HEX16.match(shown), title
    study_id = sources.open_study(ref).study_id
    assert study_id not in text  # hashed, never the raw id
    assert len(charts(at)) >= 8  # 3 images, waterfall, agreement, 3 saliency maps, curve, tabular
    assert any(s.label == "Slice" for s in at.slider)
    # every chart's camera button downloads an SVG (a vector figure for a paper's supplement)
    for chart in charts(at):
        config = json.loads(chart.proto.config)
        assert config["toImageButtonOptions"]["format"] == "svg", config
        assert config["toImageButtonOptions"]["filename"].startswith("i2m2-")


def test_tabular_features_are_shown_in_clinical_units_beside_the_encoded_value(env):
    from i2m2_med.data.tabular import clinical_text

    at = start()
    assert not at.exception, [e.value for e in at.exception]
    table = next(d.value for d in at.dataframe if "Feature" in d.value.columns)
    assert list(table.columns) == ["Feature", "Value", "Encoded value", "Attribution (nats)"]
    rows = table.set_index("Feature")
    age = rows.loc["age_years"]
    assert age["Value"].endswith(" years") or age["Value"] == "unknown"
    for name, row in rows.iterrows():
        if row["Value"] == "unknown":
            continue
        # the value shown is the encoded value read back (the table's encoded value has 3 decimals)
        back = clinical_text(name, float(row["Encoded value"]))
        first = back.split()[0].replace(",", "")
        if first.replace(".", "").isdigit():
            assert back.split()[1:] == row["Value"].split()[1:], name
            assert math.isclose(float(row["Value"].split()[0].replace(",", "")), float(first), rel_tol=0.01), name
        else:
            assert row["Value"] == back, name
    assert rows.loc["tr_ms", "Value"].endswith(" ms") and rows.loc["field_strength_t", "Value"].endswith(" T")


def test_moving_the_slider_does_not_rerun_the_model(env):
    at = start()
    assert not at.exception
    slider = slice_slider(at)
    first = int(slider.value)
    other = first + 1 if first + 1 <= slider.max else first - 1
    before = dict(compute.COUNTS)
    slider.set_value(other)
    at.run()
    assert not at.exception
    after = dict(compute.COUNTS)
    assert after.get("forward", 0) == before.get("forward", 0), "the model ran again"
    assert after.get("predict", 0) == before.get("predict", 0)
    assert after.get("planes", 0) == before.get("planes", 0) + 1  # only the new slice was read for display
    assert after.get("saliency", 0) - before.get("saliency", 0) <= 3  # one map per image expert, once
    assert after.get("samples", 0) == before.get("samples", 0) + 1  # the model's input read once for all maps
    # back to the first slice, another pathology and a window change: everything from the caches
    slice_slider(at).set_value(first)
    at.run()
    at.radio(key="head").set_value("mtear")
    at.run()
    at.number_input(key="wl_mag_width").set_value(60)  # typed, not dragged
    at.run()
    assert not at.exception
    at.selectbox(key="wl_preset").set_value("Dark: menisci, ligaments, cortex")
    at.run()
    assert not at.exception
    assert (at.number_input(key="wl_mag_level").value, at.number_input(key="wl_mag_width").value) == (30, 60)
    at.button(key="wl_reset").click()
    at.run()
    assert (at.number_input(key="wl_mag_level").value, at.number_input(key="wl_mag_width").value) == (50, 100)
    final = dict(compute.COUNTS)
    assert final.get("forward", 0) == before.get("forward", 0)
    assert final.get("predict", 0) == before.get("predict", 0)
    assert final.get("planes", 0) == after.get("planes", 0)
    assert final.get("samples", 0) == after.get("samples", 0)


def test_phase_is_shown_as_the_model_sees_it_or_raw(env):
    """The bundled model reads the high-pass phase: the app shows that by default and the raw phase
    on request; the high-pass image is the library's filter at display resolution."""
    from i2m2_med.models.phase_filter import highpass_phase_image

    at = start()
    assert not at.exception
    lm = current_model()
    assert compute.phase_filter_of(lm) == (5.0, 64)
    radio = at.radio(key="phase_view")
    assert radio.value.startswith("High-pass")

    def phase_chart_title() -> str:
        spec = [json.loads(c.proto.spec) for c in charts(at)]
        titles = [d.get("layout", {}).get("title", {}).get("text", "") for d in spec]
        return next(t for t in titles if "hase" in t and "expert" not in t.lower())

    assert phase_chart_title().startswith("High-pass phase")
    radio.set_value("Raw")
    at.run()
    assert not at.exception
    assert phase_chart_title().startswith("Phase (radians)")
    # the filter removes a smooth ramp with wraps and keeps nothing of a constant
    ramp = (np.linspace(0, 12, 320, dtype=np.float32)[None, :] * np.ones((320, 1), np.float32))
    wrapped = np.angle(np.exp(1j * ramp)).astype(np.float32)
    out = highpass_phase_image(wrapped, 5.0, 64)
    assert out.shape == (320, 320) and np.abs(out[40:-40, 40:-40]).max() < 0.02


def _edge_letters(at: AppTest) -> dict[str, dict[str, str]]:
    """Chart title -> the anatomical letters at its edges (``edge-top`` ... annotations)."""
    out = {}
    for chart in charts(at):
        layout = json.loads(chart.proto.spec).get("layout", {})
        title = layout.get("title", {}).get("text", "")
        out[title] = {a["name"][len("edge-"):]: a["text"].replace("<b>", "").replace("</b>", "")
                      for a in layout.get("annotations", []) if str(a.get("name", "")).startswith("edge-")}
    return out


def test_images_are_labelled_with_the_patients_directions(env):
    """Superior at the top (the rows of the training orientation shown reversed), the patient's
    right at the right edge (column index towards the right); the letters follow the toggle."""
    at = start()
    assert not at.exception
    letters = _edge_letters(at)
    magnitude = next(v for t, v in letters.items() if t.startswith("Magnitude - slice"))
    assert magnitude == {"top": "S", "bottom": "I", "left": "L", "right": "R"}
    saliency = [v for t, v in letters.items() if " on magnitude" in t or " on phase" in t]
    assert saliency and all(v == magnitude for v in saliency)
    assert next(v for t, v in letters.items() if t.startswith("k-space")) == {}  # k-space has no anatomy
    assert "Letters at the image edges" in " ".join(c.value for c in at.caption)
    at.toggle(key="upright").set_value(False)
    at.run()
    assert not at.exception
    magnitude = next(v for t, v in _edge_letters(at).items() if t.startswith("Magnitude - slice"))
    assert magnitude == {"top": "I", "bottom": "S", "left": "L", "right": "R"}


def test_a_dicom_series_stored_another_way_is_shown_like_the_original(tmp_path):
    """The app's images come from the readers, so a series stored flipped or transposed is shown
    (and labelled) exactly like the original; another plane gets its own letters."""
    from diagnose_inputs import restore_dicom, write_dicom_study

    write_dicom_study(tmp_path / "base", n_slices=3, size=40, cols=32)
    restore_dicom(tmp_path / "base", tmp_path / "turned", flip_rows=True, flip_cols=True)
    restore_dicom(tmp_path / "base", tmp_path / "transposed", transpose=True)
    shown = []
    for name in ("base", "turned", "transposed"):
        ref = sources.StudyRef("root", str(tmp_path / name), None, name)
        study = sources.open_study(ref)
        assert sources.image_directions(study) == ("S", "R") and sources.row0_is_inferior(study)
        shown.append(compute.compute_planes(ref, 1).magnitude)
    np.testing.assert_array_equal(shown[0], shown[1])
    np.testing.assert_array_equal(shown[0], shown[2])
    assert sources.edge_labels(("S", "R"), True) == {"top": "S", "bottom": "I", "left": "L", "right": "R"}
    write_dicom_study(tmp_path / "axial", n_slices=2, phase=False, size=8, description="PD AX",
                      orientation=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    axial = sources.open_study(sources.StudyRef("root", str(tmp_path / "axial"), None, "axial"))
    assert sources.image_directions(axial) == ("P", "L") and not sources.row0_is_inferior(axial)
    assert sources.edge_labels(sources.image_directions(axial), False) == {"top": "A", "bottom": "P", "left": "R",
                                                                            "right": "L"}
    assert sources.edge_labels(None, True) is None


def test_identifiers_are_hashed_unless_the_user_opts_in(env):
    ref = demo_refs(env)[0]
    raw = sources.open_study(ref).study_id
    at = start()
    assert raw not in markdown_text(at)
    at.toggle(key="show_ids").set_value(True)
    at.run()
    assert not at.exception
    assert f"## Study `{raw}`" in markdown_text(at)


def test_a_missing_modality_is_shown_missing_and_left_out_of_the_product(env):
    at = start()
    labels = at.selectbox(key="demo_choice").options
    only = next(label for label in labels if "phase missing" in label)
    at.selectbox(key="demo_choice").set_value(only)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    text = markdown_text(at)
    assert "phase missing" in text
    assert "not in product: phase, joint" in text
    ref = next(r for r in demo_refs(env) if "phase missing" in r.label)
    lm = current_model()
    pred = compute.prediction(ref.key, lm.key, (), ref, lm)
    assert "phase" not in pred.terms and "joint" not in pred.terms and "magnitude" in pred.terms
    # the product without phase: normalised sum of the remaining terms
    total = sum(v.astype(np.float64) for v in pred.terms.values())
    p1 = np.exp(total[..., 1] - np.logaddexp(total[..., 0], total[..., 1]))
    np.testing.assert_allclose(pred.p, p1, atol=2e-5)


def test_withholding_a_modality_recomputes_the_product_once(env):
    at = start()
    before = compute.COUNTS.get("predict", 0)
    box = next(m for m in at.multiselect if m.label == "Withhold from the model")
    box.set_value(["phase"])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert compute.COUNTS.get("predict", 0) == before + 1
    assert "without phase" in markdown_text(at)
    assert "experts left out: phase, joint" in markdown_text(at)
    at.run()  # a rerun reuses the cached prediction without phase
    assert compute.COUNTS.get("predict", 0) == before + 1


def test_without_a_model_the_page_says_so_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("I2M2_MODEL", str(tmp_path / "missing.safetensors"))
    at = start()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "cannot be loaded" in errors[0] and "missing.safetensors" in errors[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of a GPU this machine does not have")
def test_a_gpu_that_is_not_there_is_one_line_on_the_page(monkeypatch):
    monkeypatch.setenv("I2M2_DEVICE", "cuda")
    at = start()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "cannot be loaded" in errors[0], errors
    assert "I2M2_DEVICE: 'cuda' asks for a CUDA GPU but torch sees none on this machine" in errors[0]


def test_the_device_setting_reaches_the_model(monkeypatch):
    from viewer.settings import load_settings

    assert load_settings({}).device == "auto" and load_settings({"I2M2_DEVICE": " cuda:1 "}).device == "cuda:1"
    monkeypatch.setenv("I2M2_DEVICE", "cpu")
    at = start()
    assert not at.exception and not at.error
    lm = compute.load_model(*compute.model_location(None), True, "cpu")
    assert {p.device.type for p in lm.model.parameters()} == {"cpu"}


# ---- paths ------------------------------------------------------------------------------------------


@pytest.fixture()
def data_root(env, tmp_path):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "studies").mkdir(parents=True)
    outside.mkdir()
    h5 = sorted((sources.demo_folder(env.cache_dir) / "h5").glob("*.h5"))[0]
    (root / "studies" / "knee.h5").write_bytes(h5.read_bytes())
    (outside / "secret.h5").write_bytes(h5.read_bytes())
    (root / "escape").symlink_to(outside, target_is_directory=True)
    return root, outside


def test_resolve_under_refuses_everything_outside_the_roots(data_root):
    root, outside = data_root
    assert resolve_under([root], "studies") == (root / "studies").resolve()
    assert resolve_under([root], "") == root.resolve()
    assert resolve_under([root], str(root / "studies" / "knee.h5")) == (root / "studies" / "knee.h5").resolve()
    for bad in ("..", "../outside", "studies/../../outside/secret.h5", str(outside), "escape", "escape/secret.h5",
                "/etc/passwd", "~", "studies/\x00x"):
        with pytest.raises(PathRefused) as info:
            resolve_under([root], bad)
        assert "Refused" in str(info.value), (bad, str(info.value))
    with pytest.raises(PathRefused, match="Not found"):
        resolve_under([root], "studies/nothing.h5")
    with pytest.raises(PathRefused, match="No data root"):
        resolve_under([], "studies")


def test_the_page_refuses_a_path_outside_the_data_root_and_opens_one_inside(data_root, monkeypatch):
    root, outside = data_root
    monkeypatch.setenv("I2M2_DATA_ROOT", str(root))
    at = start()
    at.radio(key="source").set_value("Data folder")
    at.run()
    for bad in ("../outside", str(outside), "escape"):
        at.text_input(key="root_path").input(bad)
        at.button(key="root_scan").click()
        at.run()
        assert not at.exception
        errors = [e.value for e in at.sidebar.error]
        assert errors and "outside the allowed data roots" in errors[0], (bad, errors)
        assert not at.metric  # nothing was opened
    at.text_input(key="root_path").input("studies")
    at.button(key="root_scan").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.sidebar.error
    assert len(at.metric) == 4


# ---- uploads -------------------------------------------------------------------------------------------


def test_a_good_upload_is_analysed_in_a_private_folder_that_is_removed_after_use(env):
    h5 = sorted((sources.demo_folder(env.cache_dir) / "h5").glob("*.h5"))[0]
    at = start()
    at.radio(key="source").set_value("Upload")
    at.run()
    at.file_uploader(key="upload_file").upload("my knee.h5", h5.read_bytes())
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.sidebar.error
    assert len(at.metric) == 4
    upload = at.session_state["upload"]
    folder = Path(upload.folder)
    assert folder.is_dir() and stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = [p for p in folder.iterdir()]
    assert [p.name for p in files] == ["my_knee.h5"] and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    at.file_uploader(key="upload_file").clear()
    at.run()
    assert not folder.exists()
    at.file_uploader(key="upload_file").upload("again.h5", h5.read_bytes())
    at.run()
    second = Path(at.session_state["upload"].folder)
    at.radio(key="source").set_value("Demo studies")  # leaving the upload also removes it
    at.run()
    assert not second.exists()


def test_a_bad_upload_gets_one_clear_message(env):
    at = start()
    at.radio(key="source").set_value("Upload")
    at.run()
    at.file_uploader(key="upload_file").upload("notes.h5", b"these are notes, not an HDF5 file\n")
    at.run()
    assert not at.exception
    errors = [e.value for e in at.sidebar.error]
    assert len(errors) == 1
    assert errors[0].startswith("This file cannot be opened - notes.h5:") and "HDF5" in errors[0]
    assert not at.metric


@pytest.fixture()
def private_tmp(tmp_path, monkeypatch):
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _declared_bomb() -> bytes:
    """An 8 KB h5 that declares 10^9 k-space samples (chunked, nothing written)."""
    import h5py

    with h5py.File(io.BytesIO(), "w") as f:
        f.create_dataset("kspace", shape=(1, 1, 10**9), dtype=np.complex64, chunks=(1, 1, 1024))
        f.flush()
        return f.id.get_file_image()


def test_stale_upload_folders_are_removed_at_start(tmp_path) -> None:
    dead = tmp_path / f"{sources.UPLOAD_PREFIX}999999999-abc"
    mine = tmp_path / f"{sources.UPLOAD_PREFIX}{os.getpid()}-def"
    other = tmp_path / "unrelated"
    for folder in (dead, mine, other):
        folder.mkdir()
        (folder / "study.h5").write_bytes(b"x")
    assert sources.remove_stale_uploads(tmp_path) == 1
    assert not dead.exists() and mine.exists() and other.exists()


def test_upload_validation(tmp_path, private_tmp):
    from diagnose_inputs import write_dicom_study

    write_dicom_study(tmp_path / "dcm", n_slices=3, phase=True, patient=0)
    entries = {f"series/{p.relative_to(tmp_path / 'dcm').as_posix()}": p.read_bytes()
               for p in sorted((tmp_path / "dcm").rglob("*.dcm"))}
    good = sources.accept_upload("series.zip", _zip(entries), 50 << 20)
    assert len(good.refs) == 1 and good.refs[0].kind == "upload"
    study = sources.open_study(good.refs[0])
    assert study.format == "dicom" and study.n_slices == 3 and set(study.modalities) == {"magnitude", "phase"}
    good.close()
    assert not good.folder.exists()

    # one DICOM file is accepted as it is, without a zip around it
    one = next(iter(sorted((tmp_path / "dcm").rglob("*.dcm"))))
    single = sources.accept_upload("one image.dcm", one.read_bytes(), 50 << 20)
    assert len(single.refs) == 1 and sources.open_study(single.refs[0]).format == "dicom"
    assert sources.open_study(single.refs[0]).n_slices == 1
    single.close()
    assert not single.folder.exists()

    cases = {
        ("evil.zip", _zip({"../evil.dcm": b"x"})): "outside the archive",
        ("abs.zip", _zip({"/etc/cron.d/x": b"x"})): "outside the archive",
        ("bomb.zip", _zip({"big.bin": b"\0" * (5 << 20)})): "expands to more than",
        ("empty.zip", _zip({"readme.txt": b"hello"})): "no study found",
        ("broken.zip", b"PK\x03\x04 not really a zip"): "not a valid zip",
        ("notes.txt", b"hello"): "not a supported file",
        ("notes.dcm", b"hello, not DICOM"): "not a DICOM file",
        ("empty.h5", b""): "empty",
        ("huge.nii", b"\0" * (2 << 20)): "upload limit",
        ("garbage.nii.gz", b"\x1f\x8b not gzip"): "",
        ("long.zip", _zip({"x" * 300 + ".dcm": b"x"})): "longer than",
        ("clash.zip", _zip({"a": b"x", "a/b.dcm": b"y"})): "clashes with another entry",
        ("bomb.h5", _declared_bomb()): "beyond the limit",
    }
    for (name, data), fragment in cases.items():
        with pytest.raises(sources.UploadRejected) as info:
            sources.accept_upload(name, data, 1 << 20)
        message = str(info.value)
        assert message.startswith(name) and fragment in message, (name, message)
        assert "\n" not in message
    assert list(private_tmp.iterdir()) == []  # nothing left behind by refused uploads


def _assert_refused(accept, cases) -> None:
    """Each (files, limit, fragment) is refused by ``accept`` with one line holding ``fragment``."""
    for batch, limit, fragment in cases:
        with pytest.raises(sources.UploadRejected) as info:
            accept(batch, limit)
        assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)


def _uploaded_on_the_page(files, kind: str, key: str, mime: str) -> AppTest:
    """The app with ``files`` given to the upload widget ``key`` (after choosing ``kind``, "Files"
    or "A folder"), checked to have opened a study: no exception, no sidebar error, four metrics."""
    at = start()
    at.radio(key="source").set_value("Upload")
    at.run()
    if kind != "Files":
        at.radio(key="upload_kind").set_value(kind)
        at.run()
    at.file_uploader(key=key).set_value([(n, d, mime) for n, d in files])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.sidebar.error and len(at.metric) == 4
    return at


def test_the_files_of_a_dicom_series_upload_together(env, tmp_path, private_tmp):
    """A series folder's .dcm files selected together are one study, in the library and on the
    page; what several files cannot be is one line, with nothing kept."""
    from diagnose_inputs import write_knee_dicom_study

    write_knee_dicom_study(tmp_path / "dcm", n_slices=3)
    files = [(p.name, p.read_bytes()) for p in sorted((tmp_path / "dcm").rglob("*.dcm"))]
    assert len(files) == 6  # 3 magnitude and 3 phase images
    upload = sources.accept_uploads(files, 50 << 20)
    assert len(upload.refs) == 1
    study = sources.open_study(upload.refs[0])
    assert study.format == "dicom" and study.n_slices == 3 and set(study.modalities) == {"magnitude", "phase"}
    assert stat.S_IMODE((upload.folder / "series").stat().st_mode) == 0o700
    upload.close()
    assert not upload.folder.exists()

    big = sum(len(d) for _, d in files)
    _assert_refused(sources.accept_uploads, [
        ([*files, ("knee.h5", b"x")], 50 << 20, "knee.h5 is not a .dcm file"),
        ([*files[:2], ("blank.dcm", b"")], 50 << 20, "blank.dcm is empty"),
        (files, big - 1, "together is over the"),
        ([("a.dcm", b"not DICOM"), ("b.dcm", b"nor this")], 50 << 20, "2 files (DICOM)"),
    ])
    assert list(private_tmp.iterdir()) == []

    at = _uploaded_on_the_page(files, "Files", "upload_file", "application/dicom")
    assert "6 files (DICOM) - dicom, 3 slices" in at.session_state["upload"].refs[0].label


def test_a_folder_upload_reads_dicom_files_whatever_their_names(env, tmp_path, private_tmp):
    """A folder chosen in the browser arrives as its files: DICOM files without an extension (as
    scanners export them) form their series, hidden and system files and files that are no study are
    skipped, an empty file is named; a folder with nothing readable is one line, with nothing kept."""
    from diagnose_inputs import write_knee_dicom_study

    write_knee_dicom_study(tmp_path / "exam", n_slices=3)
    files = [(f"exam/SE{i // 3}/IM{i:04d}", p.read_bytes()) for i, p in enumerate(sorted((tmp_path / "exam").rglob("*.dcm")))]
    assert len(files) == 6
    extra = [("exam/.DS_Store", b"\0" * 64), ("exam/Thumbs.db", b"x"), ("exam/README.txt", b"exported by the scanner"),
             ("exam/SE9/EMPTY", b"")]
    upload = sources.accept_folder(files + extra, 50 << 20)
    assert [r.label for r in upload.refs] == ["a folder of 8 files - dicom, 3 slices"]
    study = sources.open_study(upload.refs[0])
    assert study.n_slices == 3 and set(study.modalities) == {"magnitude", "phase"}
    assert upload.problems == ["EMPTY: empty file"]  # a text file beside the series is no study and no problem
    assert stat.S_IMODE((upload.folder / "folder").stat().st_mode) == 0o700
    upload.close()
    assert not upload.folder.exists()

    big = sum(len(d) for _, d in files)
    _assert_refused(sources.accept_folder, [
        ([("x/.hidden", b"1")], 50 << 20, "the folder holds no file"),
        (files, big - 1, "together is over the"),
        ([("x/notes.txt", b"text"), ("x/IM1", b"not DICOM")], 50 << 20, "a folder of 2 files"),
    ])
    assert list(private_tmp.iterdir()) == []

    at = _uploaded_on_the_page(files, "A folder", "upload_folder", "application/octet-stream")
    assert at.session_state["upload"].refs[0].label == "a folder of 6 files - dicom, 3 slices"


# ---- the batch page -------------------------------------------------------------------------------------


@pytest.fixture()
def batch_run(env, tmp_path):
    from pipelines import diagnose

    root = tmp_path / "root"
    inputs = root / "inputs"
    inputs.mkdir(parents=True)
    for i, h5 in enumerate(sorted((sources.demo_folder(env.cache_dir) / "h5").glob("*.h5"))):
        (inputs / f"knee{i}.h5").write_bytes(h5.read_bytes())
    (inputs / "broken.h5").write_text("not an HDF5 file\n")
    out = root / "runs" / "run1"
    model = None if env.model is None else str(env.model)
    code = diagnose.run(inputs, out, model=model, progress=False)
    assert code == 2  # one study failed
    # a training run's folder also holds a predictions.csv (one row per slice): not a result folder
    train_run = root / "runs" / "train1"
    train_run.mkdir()
    (train_run / "predictions.csv").write_text(
        "split,study_id,slice,y_acl,y_mtear,y_cart,y_abnormal,p_acl,p_mtear,p_cart,p_abnormal\n"
        "test,synth0_0001,3,0,1,0,0,0.1,0.7,0.2,0.3\n")
    (train_run / "studies").mkdir()
    return root, out


def test_batch_page_sorts_filters_and_opens_a_study(batch_run, monkeypatch):
    root, out = batch_run
    monkeypatch.setenv("I2M2_DATA_ROOT", str(root))
    at = start()
    at.switch_page("views/batch.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="batch_run").value == "runs/run1"
    assert at.selectbox(key="batch_run").options == ["runs/run1", "Type a path..."]
    values = {m.label: m.value for m in at.metric}
    assert values["Studies"] == "3" and values["Succeeded"] == "2" and values["Failed"] == "1"
    table = at.dataframe[0].value
    assert len(table) == 3 and all(HEX16.match(s) for s in table["study_id"])
    assert "source" not in table.columns  # paths hidden by default
    # the experts' disagreement of every diagnosed study; no review column without --review-threshold
    ok = table[table["status"] == "ok"]
    assert "disagreement" in table.columns and np.isfinite(ok["disagreement"].to_numpy(dtype=float)).all()
    assert "review" not in table.columns
    # sorted by p_acl descending by default
    p = table["p_acl"].to_numpy(dtype=float)
    p = p[~np.isnan(p)]
    assert list(p) == sorted(p, reverse=True)
    at.selectbox(key="batch_sort").set_value("p_cart")
    at.toggle(key="batch_desc").set_value(False)
    at.run()
    p = at.dataframe[0].value["p_cart"].to_numpy(dtype=float)
    p = p[~np.isnan(p)]
    assert list(p) == sorted(p)
    at.multiselect(key="batch_status").set_value(["error"])
    at.run()
    only = at.dataframe[0].value
    assert list(only["status"]) == ["error"] and "HDF5" in only["error"].iloc[0]
    at.multiselect(key="batch_status").set_value(["ok"])
    at.run()
    pick = at.selectbox(key="batch_pick").value
    at.button(key="batch_open").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    text = markdown_text(at)
    assert f"## Study `{pick}`" in text and "from a batch result: no images" in text
    record = json.loads((out / "studies" / f"{pick}.json").read_text())
    values = metric_values(at)
    for j, head in enumerate(["ACL tear / sprain", "Meniscus tear", "Cartilage defect", "Other abnormality"]):
        h = ["acl", "mtear", "cart", "abnormal"][j]
        assert math.isclose(values[head], round(record["study"]["p"][h], 2), abs_tol=0.006)


def test_batch_page_opens_the_images_when_given_the_input_folder(batch_run, monkeypatch):
    root, out = batch_run
    monkeypatch.setenv("I2M2_DATA_ROOT", str(root))
    at = start()
    at.switch_page("views/batch.py")
    at.run()
    at.text_input(key="batch_input").input("inputs")
    at.button(key="batch_open").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "from a batch result" not in markdown_text(at)
    assert any(s.label == "Slice" for s in at.slider)
    # a run folder outside the root is refused
    at.switch_page("views/batch.py")
    at.run()
    at.selectbox(key="batch_run").set_value("Type a path...")
    at.run()
    at.text_input(key="batch_path").input("../../")
    at.run()
    assert any("outside the allowed data roots" in e.value for e in at.error)


def test_batch_page_sets_the_ground_truth_beside_each_prediction_with_sens_spec(env, tmp_path, monkeypatch):
    """The demo studies diagnosed as a batch; with the input folder given, the page reads its
    cohort's annotations, sets the truth beside every prediction and scores each head at the
    operating point the run's model.json carries (here written by hand, so the figures can be
    checked against the table)."""
    import shutil

    from pipelines import diagnose
    from viewer import batch as batch_io

    root = tmp_path / "root"
    shutil.copytree(sources.demo_folder(env.cache_dir), root / "cohort")
    out = root / "runs" / "demo"
    assert diagnose.run(root / "cohort" / "h5", out, model=None if env.model is None else str(env.model), progress=False) == 0
    model_json = json.loads((out / "model.json").read_text())
    assert model_json["fingerprint"] and set(model_json["operating_points"]["per_head"]) == set(HEADS)
    assert str(root) not in (out / "model.json").read_text()  # no path in it
    thresholds = {"acl": 0.5, "mtear": 0.3, "cart": 0.2, "abnormal": None}
    model_json["operating_points"] = {"per_head": {h: ({"threshold": t} if t is not None else {"threshold": None, "reason": "none chosen"})
                                                   for h, t in thresholds.items()}}
    (out / "model.json").write_text(json.dumps(model_json))

    monkeypatch.setenv("I2M2_DATA_ROOT", str(root))
    at = start()
    at.switch_page("views/batch.py")
    at.run()
    at.text_input(key="batch_input").input("cohort/h5")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    predictions = pd.read_csv(out / "predictions.csv", dtype={"study_id": str})
    truth = batch_io.ground_truth(predictions, root / "cohort")[0]
    assert batch_io.ground_truth(predictions, root / "cohort")[1] == len(predictions)  # every study annotated
    for h in HEADS:
        assert f"truth_{h}" in table.columns
    by_id = dict(zip(predictions["study_id"], range(len(predictions))))
    for _, row in table.iterrows():
        i = by_id[row["study_id"]]
        assert [bool(row[f"truth_{h}"]) for h in HEADS] == [bool(truth.iloc[i][f"truth_{h}"]) for h in HEADS]
    assert f"name {len(predictions)} of {len(predictions)} studies" in " ".join(c.value for c in at.caption)
    scores = at.dataframe[1].value.set_index("Pathology")
    for h, title in zip(HEADS, ["ACL tear / sprain", "Meniscus tear", "Cartilage defect", "Other abnormality"]):
        row = scores.loc[title]
        if thresholds[h] is None:
            assert row["Sensitivity [95% CI] (TP/P)"] == "-" and row["Note"] == "none chosen"
            continue
        y = truth[f"truth_{h}"].astype(bool).to_numpy()
        called = predictions[f"p_{h}"].to_numpy(dtype=float) >= thresholds[h]
        tp, p_, tn, n_ = int((called & y).sum()), int(y.sum()), int((~called & ~y).sum()), int((~y).sum())
        sens, spec = row["Sensitivity [95% CI] (TP/P)"], row["Specificity [95% CI] (TN/N)"]
        assert sens.endswith(f"({tp}/{p_})") if p_ else sens == "-"
        assert spec.endswith(f"({tn}/{n_})") if n_ else spec == "-"
    # the truth filter keeps the studies annotated with the selected finding
    at.selectbox(key="batch_head").set_value("mtear")
    at.selectbox(key="batch_truth").set_value("positive")
    at.run()
    shown = at.dataframe[0].value
    assert len(shown) == int(truth["truth_mtear"].astype(bool).sum()) and shown["truth_mtear"].astype(bool).all()


# ---- the report ---------------------------------------------------------------------------------------


def test_report_json_and_html(env):
    ref = demo_refs(env)[0]
    lm = current_model()
    pred = compute.prediction(ref.key, lm.key, (), ref, lm)
    study = sources.open_study(ref)
    summary = {"study_id": study.study_id, "patient_id": study.patient_id, "format": study.format,
               "n_slices": study.n_slices}
    shown = hash_id(study.study_id)
    attr = compute.compute_tabular(lm, ref)
    doc = report.report_json(pred, summary, shown, show_ids=False, withheld=[], tabular=attr)
    text = json.dumps(doc)
    assert doc["research_use_only"] is True and "RESEARCH USE ONLY" in doc["notice"]
    assert study.study_id not in text and doc["prediction"]["source"] is None
    assert doc["study"]["id"] == shown and doc["prediction"]["study_id"] == shown
    for j, head in enumerate(["acl", "mtear", "cart", "abnormal"]):
        ev = doc["evidence"][head]
        # the contributions at the top slice add up to the product's log-odds there
        p_top = ev["p_top_slice"]
        assert math.isclose(sum(ev["contributions_top_slice"].values()), math.log(p_top / (1 - p_top)), abs_tol=1e-4)
        assert math.isclose(ev["p"], float(pred.p_study[j]), abs_tol=1e-9)
        assert ev["driving_expert_top_slice"] in pred.terms
    # every slice's product is checkable from the JSON alone
    for s in doc["prediction"]["slices"]:
        for h in ["acl", "mtear", "cart", "abnormal"]:
            lp0 = sum(s["logp"][t][h][0] for t in s["logp"])
            lp1 = sum(s["logp"][t][h][1] for t in s["logp"])
            assert abs(math.exp(lp1) / (math.exp(lp0) + math.exp(lp1)) - s["p"][h]) < 1e-5
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 16
    html = report.report_html(doc, images={"acl": png}, curves={"acl": (pred.slices, pred.p[:, 0], int(pred.top_slice[0]))})
    assert html.startswith("<!DOCTYPE html>") and "RESEARCH USE ONLY" in html
    assert "<script" not in html.lower() and "http://" not in html and "https://" not in html
    assert "data:image/png;base64," in html and html.count("<svg") >= 9
    assert study.study_id not in html and shown in html


def test_server_config_is_safe_by_default():
    tomllib = pytest.importorskip("tomllib")
    from app_support import REPO

    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "localhost"
    assert config["server"]["enableXsrfProtection"] is True
    assert 1 <= config["server"]["maxUploadSize"] <= 1024
    assert config["browser"]["gatherUsageStats"] is False
    assert config["client"]["showErrorDetails"] in ("type", "none")
    assert config["server"]["showEmailPrompt"] is False  # no set-up step on a fresh install


def test_report_curve_has_axes_and_the_top_slice():
    """The exported report's per-slice curve names its axes: the slice numbers at both ends, the
    probabilities 0, 0.5 and 1, and the top slice where the curve peaks."""
    import re

    import numpy as np
    from app.viewer import report

    slices = np.arange(3, 40)
    p = np.clip(np.linspace(0.1, 0.9, len(slices)) ** 2, 0, 1)
    svg = report._curve_svg(slices, p, top=len(p) - 1)
    texts = re.findall(r">([^<>]+)</text>", svg)
    assert {"0", "0.5", "1", "3", "39", "slice", "p", "top slice 39"} <= set(texts)
    # the top slice's marker sits at the right end and at the height of its probability
    cx, cy = (float(v) for v in re.search(r'<circle cx="([\d.]+)" cy="([\d.]+)"', svg).groups())
    ys = {t: float(y) for y, t in re.findall(r'<text x="[\d.]+" y="([\d.]+)" text-anchor="end">([^<]+)</text>', svg)}
    assert math.isclose(cy, ys["0"] - 3 + (ys["1"] - ys["0"]) * p[-1], abs_tol=0.2)
    assert cx > float(re.search(r'<text x="([\d.]+)" y="[\d.]+" text-anchor="middle">3<', svg).group(1))
