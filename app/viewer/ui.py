"""Page furniture shared by the app's pages: style, the research-use banner, settings, the model,
identifiers (hashed unless the user opts in) and the study picker of the sidebar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from i2m2_med.privacy import (  # the rule of ``i2m2-med diagnose`` (keyed by I2M2_ID_SALT), so ids match its outputs
    hash_id,
    is_hashed_id,
)
from viewer import compute, sources
from viewer.paths import PathRefused, resolve_under
from viewer.settings import Settings, load_settings

BANNER = "RESEARCH USE ONLY - not for clinical diagnosis or treatment decisions."
BANNER_DETAIL = ("Outputs are model estimates for research. The bundled model was trained on synthetic data only.")

CSS = """
<style>
  .block-container {padding-top: 3.2rem; padding-bottom: 2rem; max-width: 1500px;}
  .i2m2-banner {background: #fff4e6; border: 1px solid #ffc078; border-left: 6px solid #e8590c;
    color: #7c2d12; padding: 0.45rem 0.9rem; border-radius: 6px; font-size: 0.92rem; margin-bottom: 0.6rem;}
  .i2m2-banner b {letter-spacing: 0.04em;}
  .i2m2-chips {display: flex; flex-wrap: wrap; gap: 0.35rem; margin: 0.15rem 0 0.6rem 0;}
  .i2m2-chip {background: #f1f3f5; border: 1px solid #dee2e6; border-radius: 999px; padding: 0.1rem 0.6rem;
    font-size: 0.8rem; color: #343a40;}
  .i2m2-chip.missing {background: #fff5f5; border-color: #ffa8a8; color: #c92a2a;}
  .i2m2-chip.ok {background: #ebfbee; border-color: #8ce99a; color: #2b8a3e;}
  .i2m2-chip.withheld {background: #fff9db; border-color: #ffe066; color: #e67700;}
  div[data-testid="stMetric"] {background: #ffffff; border: 1px solid #dee2e6; border-radius: 8px;
    padding: 0.55rem 0.8rem 0.4rem 0.8rem;}
  div[data-testid="stMetricValue"] {font-size: 1.8rem;}
  .i2m2-pbar {height: 6px; background: #e9ecef; border-radius: 3px; overflow: hidden; margin: 0.15rem 0 0.1rem 0;}
  .i2m2-pbar > div {height: 100%;}
  .i2m2-small {font-size: 0.8rem; color: #495057;}
  h3, h4 {margin-top: 0.6rem;}
  section[data-testid="stSidebar"] .stRadio label {font-size: 0.92rem;}
  div[data-testid="stElementContainer"]:has(.i2m2-slice-keys) {display: none;}
</style>
"""


def style() -> None:
    st.markdown(CSS, unsafe_allow_html=True)


def banner() -> None:
    """The research-use banner, at the top of every page."""
    st.markdown(
        f'<div class="i2m2-banner" role="alert"><b>{BANNER}</b> {BANNER_DETAIL}</div>',
        unsafe_allow_html=True,
    )


def settings() -> Settings:
    return load_settings()


def show_settings_problems(cfg: Settings) -> None:
    for line in cfg.problems:
        st.sidebar.warning(line)


# ---- identifiers -------------------------------------------------------------------------------------


def show_identifiers() -> bool:
    return bool(st.session_state.get("show_ids", False))


def display_id(study_id: str, from_batch: bool = False) -> str:
    """The study id as shown: hashed unless the user opted in to identifiers. Ids from a batch
    result are already hashed unless that run kept them (``--keep-ids``); those are hashed here."""
    if show_identifiers() or (from_batch and is_hashed_id(study_id)):
        return str(study_id)
    return hash_id(study_id)


# ---- the model -------------------------------------------------------------------------------------------


def model_or_stop(cfg: Settings) -> compute.LoadedModel:
    """The configured model (cached); stops the page with one clear line when there is none."""
    from i2m2_med.errors import I2M2Error

    try:
        checkpoint, stamp = compute.model_location(cfg.model_path)
        return compute.load_model(checkpoint, stamp, cfg.model_path is None, cfg.device)
    except I2M2Error as exc:
        st.error(f"The model cannot be loaded. {exc.one_line()}")
        st.stop()
        raise  # unreachable: st.stop() ends the run


def model_caption(lm: compute.LoadedModel) -> str:
    meta = lm.meta
    origin = "bundled demo model (synthetic training data)" if lm.bundled else Path(lm.path).name
    return (f"Model: **{meta.variant}** - {origin}  \n"
            f"fingerprint `{lm.fingerprint}` - i2m2-med {meta.project_version} - "
            f"{meta.config.image_size}x{meta.config.image_size} input")


# ---- the study picker --------------------------------------------------------------------------------

SOURCES = ("Demo studies", "Data folder", "Upload")
BATCH_SOURCE = "Batch result"


@st.cache_resource(show_spinner="Generating the demo studies (first run only)...")
def demo_studies(cache_dir: str) -> list[sources.StudyRef]:
    folder = sources.ensure_demo(Path(cache_dir))
    return sources.demo_refs(folder)


@st.cache_resource(show_spinner="Scanning the folder...", max_entries=16)
def scan(path: str, token: str, root: str) -> tuple[list[sources.FoundStudy], list[str]]:
    return sources.scan_folder(Path(path), Path(root))


def _close_upload() -> None:
    upload = st.session_state.pop("upload", None)
    if upload is not None:
        upload.close()


def _pick_demo(cfg: Settings) -> sources.StudyRef | None:
    try:
        refs = demo_studies(str(cfg.cache_dir))
    except Exception as exc:  # the generator failing must not take the app down
        st.sidebar.error(f"The demo studies could not be generated: {exc}")
        return None
    if not refs:
        st.sidebar.error("No demo study was generated.")
        return None
    labels = [r.label for r in refs]
    choice = st.sidebar.selectbox("Demo study", labels, key="demo_choice")
    return refs[labels.index(choice)]


def _pick_root(cfg: Settings) -> sources.StudyRef | None:
    if not cfg.data_roots:
        st.sidebar.info("No data folder is configured. Start the app with `I2M2_DATA_ROOT=/path/to/studies` "
                        "to open studies from it (only paths inside it are opened).")
        return None
    roots = [str(r) for r in cfg.data_roots]
    root = roots[0] if len(roots) == 1 else st.sidebar.selectbox("Data root", roots, key="root_choice")
    if len(roots) == 1:
        st.sidebar.caption(f"Data root: `{root}`")
    sub = st.sidebar.text_input("Folder or file inside the data root", key="root_path",
                                placeholder="e.g. knee_exports/2024 (empty: the whole root)")
    if st.sidebar.button("Scan", key="root_scan", width="stretch"):
        try:
            target = resolve_under(cfg.data_roots, sub, root=Path(root))
        except PathRefused as exc:
            st.session_state["root_error"] = str(exc)
            st.session_state.pop("root_scan_target", None)
        else:
            st.session_state.pop("root_error", None)
            st.session_state["root_scan_target"] = (str(target), root)
    if st.session_state.get("root_error"):
        st.sidebar.error(st.session_state["root_error"])
        return None
    target = st.session_state.get("root_scan_target")
    if not target:
        return None
    path, root = target
    try:
        found, problems = scan(path, sources.file_token(Path(path)), root)
    except Exception as exc:
        st.sidebar.error(f"The folder could not be scanned: {exc}")
        return None
    if problems:
        with st.sidebar.expander(f"{len(problems)} file(s) could not be read"):
            for line in problems[:50]:
                st.caption(line)
    if not found:
        st.sidebar.warning("No study found there (fastMRI .h5, DICOM series or NIfTI).")
        return None
    shown = [f.ref.label if show_identifiers() else (f.private_label or f.ref.label) for f in found]
    labels = [f"{label} - {f.n_slices} slices" for label, f in zip(shown, found)]
    choice = st.sidebar.selectbox(f"Study ({len(found)} found)", labels, key="root_study")
    return found[labels.index(choice)].ref


def _pick_upload(cfg: Settings) -> sources.StudyRef | None:
    limit = cfg.max_upload_bytes // (1 << 20)
    kept = (f"at most {limit} MB in all. The files are kept in a private temporary folder while you view them and "
            "deleted afterwards.")
    folder = st.sidebar.radio("Upload", ("Files", "A folder"), horizontal=True, key="upload_kind",
                              help="A folder: every file in it is read, DICOM files whatever their names (a scanner's "
                                   "export often has no extensions).") == "A folder"
    if folder:
        files = st.sidebar.file_uploader(
            f"Upload a folder (at most {limit} MB)", key="upload_folder", accept_multiple_files="directory",
            help=f"A folder of DICOM series, fastMRI .h5 or NIfTI files; hidden and system files are skipped; {kept}",
        )
    else:
        files = st.sidebar.file_uploader(
            f"Upload a study (at most {limit} MB)", type=["h5", "hdf5", "nii", "gz", "zip", "dcm"], key="upload_file",
            accept_multiple_files=True,
            help=f"A fastMRI .h5, a NIfTI volume (.nii / .nii.gz), a .zip of one DICOM series, or DICOM files (.dcm): one "
                 f"(a multi-frame series or a single image) or the files of a series folder selected together; {kept}",
        )
    if not files:
        _close_upload()
        st.session_state.pop("upload_error", None)
        st.session_state.pop("upload_file_id", None)
        return None
    identity = (folder, *(f.file_id for f in files))
    if st.session_state.get("upload_file_id") != identity:
        _close_upload()
        st.session_state["upload_file_id"] = identity
        st.session_state.pop("upload_error", None)
        accept = sources.accept_folder if folder else sources.accept_uploads
        try:
            upload = accept([(f.name, f.getvalue()) for f in files], cfg.max_upload_bytes)
        except sources.UploadRejected as exc:
            st.session_state["upload_error"] = str(exc)
        else:
            st.session_state["upload"] = upload
    if st.session_state.get("upload_error"):
        what = "This folder cannot" if folder else "This file cannot" if len(files) == 1 else "These files cannot"
        st.sidebar.error(f"{what} be opened - {st.session_state['upload_error']}")
        return None
    upload = st.session_state.get("upload")
    if upload is None or upload.closed:
        return None
    for line in upload.problems[:5]:
        st.sidebar.caption(f"skipped {line}")
    if len(upload.refs) == 1:
        return upload.refs[0]
    labels = [r.label for r in upload.refs]
    choice = st.sidebar.selectbox("Series in the upload", labels, key="upload_series")
    return upload.refs[labels.index(choice)]


def study_picker(cfg: Settings) -> sources.StudyRef | None:
    """The sidebar's choice of study: demo, data folder, upload, or the batch result the user
    jumped from. Returns None while nothing is chosen."""
    jump = st.session_state.pop("jump_ref", None)
    if jump is not None:
        st.session_state["batch_ref"] = jump
        st.session_state["source"] = BATCH_SOURCE
    options = list(SOURCES) + ([BATCH_SOURCE] if st.session_state.get("batch_ref") is not None else [])
    if st.session_state.get("source") not in options:
        st.session_state["source"] = options[0]
    st.sidebar.markdown("#### Study")
    source = st.sidebar.radio("Source", options, key="source", label_visibility="collapsed")
    if source != "Upload" and st.session_state.get("upload") is not None:
        _close_upload()
        st.session_state.pop("upload_file_id", None)
    if source == "Demo studies":
        return _pick_demo(cfg)
    if source == "Data folder":
        return _pick_root(cfg)
    if source == "Upload":
        return _pick_upload(cfg)
    ref = st.session_state.get("batch_ref")
    st.sidebar.caption(f"From a batch run: `{ref.label}`")
    return ref


def chips(items: list[tuple[str, str]]) -> None:
    """A row of small labels; each item is (text, kind) with kind '', 'ok', 'missing' or 'withheld'."""
    import html

    body = "".join(f'<span class="i2m2-chip {kind}">{html.escape(text)}</span>' for text, kind in items)
    st.markdown(f'<div class="i2m2-chips">{body}</div>', unsafe_allow_html=True)


def probability_bar(p: float) -> None:
    colour = "#c92a2a" if p >= 0.5 else "#1864ab"
    st.markdown(f'<div class="i2m2-pbar"><div style="width:{max(0.0, min(1.0, p)) * 100:.1f}%;background:{colour}"></div></div>',
                unsafe_allow_html=True)


def out_of_scope(reason: str, shift: dict[str, Any] | None = None) -> None:
    """The prominent warning shown instead of the evidence of a study outside the model's scope
    (another body part by its tags, or images unlike the training data by the shift score)."""
    lines = ["**Out of scope: no findings are reported for this study.**", reason[:1].upper() + reason[1:] + "."]
    if shift and shift.get("available"):
        lines.append(f"Distribution-shift score **{float(shift['score']):.2f}**, threshold "
                     f"**{float(shift['threshold']):.2f}** (the 99th percentile of a log-normal fitted to the model's validation studies).")
    st.error("\n\n".join(lines), icon=":material/block:")
    st.caption("The model was trained on coronal proton-density knee MRI; its probabilities for anything else are "
               "not findings. See the README (diagnose statuses) for how scope is decided.")


def one_line(exc: BaseException) -> str:
    from i2m2_med.errors import I2M2Error

    if isinstance(exc, I2M2Error):
        return exc.reason
    return " ".join(str(exc).split()) or type(exc).__name__


def study_summary(ref: sources.StudyRef) -> dict[str, Any]:
    """What the page shows about a study besides the prediction (cached per study)."""
    return _study_summary(ref.key, ref)


@st.cache_data(show_spinner=False, max_entries=64)
def _study_summary(key: str, _ref: sources.StudyRef) -> dict[str, Any]:
    from i2m2_med.io.series import classify_series

    study = sources.open_study(_ref)
    series = classify_series(study.tags)
    return {
        "out_of_scope": None if series.in_scope else f"out of scope by its tags: {series.reason}",
        "study_id": str(study.study_id),
        "patient_id": study.patient_id,
        "format": str(study.format),
        "domain": str(study.domain),
        "n_slices": int(study.n_slices),
        "modalities": list(study.modalities),
        "missing": list(study.missing_modalities),
        "labels": None if study.labels is None else study.labels.astype(bool),
        "boxes": list(study.boxes),
        "notes": list(study.notes),
        "row0_inferior": sources.row0_is_inferior(study),
        "directions": sources.image_directions(study),
        "clinical_table": sources.clinical_row(_ref, study) is not None,
        "tags": {k: study.tags[k] for k in ("acquisition", "fat_sat", "field_strength_t", "vendor", "model", "n_coils")
                 if k in study.tags},
    }


# ---- slices from the keyboard and the mouse wheel ------------------------------------------------------

SLICE_KEYS_JS = """<div class="i2m2-slice-keys"><script>
(() => {
  const doc = window.parent.document;  // the app's page (st.html runs this in it, not in a frame)
  if (doc.documentElement.dataset.i2m2SliceKeys) return;  // listeners once per page, not once per rerun
  doc.documentElement.dataset.i2m2SliceKeys = "1";
  const SLIDER = '[data-testid="stSlider"] input[type="range"][aria-label=__LABEL__]';
  const IMAGES = __IMAGES__;
  const STEPS = {ArrowDown: 1, PageDown: 1, ArrowUp: -1, PageUp: -1};
  // where arrow keys already mean something: typing a number, choosing an option, another widget
  const OWN_KEYS = "input, select, textarea, [contenteditable], [role=slider], [role=radio], [role=combobox], " +
                   "[role=listbox], [role=option], [role=menu], [role=grid], [role=spinbutton], [role=tab]";
  // One slice forward (+1) or back (-1): the key the slider handles itself, sent to its range input,
  // so it moves by its step, clamps at its ends and commits its value as when the user presses it.
  const step = (delta) => {
    const input = doc.querySelector(SLIDER);
    if (!input || input.disabled) return false;
    const key = delta > 0 ? "ArrowRight" : "ArrowLeft";
    input.dispatchEvent(new KeyboardEvent("keydown", {key: key, code: key, bubbles: true, cancelable: true}));
    return true;
  };
  doc.addEventListener("keydown", (e) => {
    const delta = STEPS[e.key];
    if (!delta || e.defaultPrevented || e.altKey || e.ctrlKey || e.metaKey || e.shiftKey) return;
    if (e.target && e.target.closest && e.target.closest(OWN_KEYS)) return;
    if (step(delta)) e.preventDefault();  // no page scroll as well
  });
  // Over the images a wheel notch is one slice and the page does not scroll; elsewhere it scrolls.
  // Small deltas (a touchpad) add up to a notch; a notch reported as 53, 100 or 120 px is one step.
  let travel = 0;
  doc.addEventListener("wheel", (e) => {
    if (e.ctrlKey || !e.target || !e.target.closest || !e.target.closest(IMAGES) || !doc.querySelector(SLIDER)) return;
    e.preventDefault();
    const dy = e.deltaY * (e.deltaMode === 1 ? 40 : e.deltaMode === 2 ? 800 : 1);  // lines, pages to pixels
    travel = Math.sign(dy) === Math.sign(travel) ? travel + dy : dy;
    if (Math.abs(travel) >= 50) {
      step(Math.sign(travel));
      travel = 0;
    }
  }, {capture: true, passive: false});
})();
</script></div>"""


def slice_keys(label: str, image_keys: tuple[str, ...]) -> None:
    """ArrowDown / PageDown (next) and ArrowUp / PageUp (previous slice) anywhere on the page but in
    a field or another widget, and the mouse wheel over the charts whose keys start with one of
    ``image_keys``, move the slider labelled ``label`` one step. The slider stays the only state;
    without JavaScript the page works as before."""
    import json

    images = ", ".join(f'[class*="st-key-{k}"]' for k in image_keys)
    st.html(SLICE_KEYS_JS.replace("__LABEL__", json.dumps(label)).replace("__IMAGES__", json.dumps(images)),
            unsafe_allow_javascript=True)
