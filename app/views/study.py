"""Study evidence: one study, what each expert says about each pathology, where it looks, and how
the experts combine into the I2M2 answer."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st
from viewer import compute, figures, report, sources, ui

from i2m2_med.data.layout import CLINICAL_CSV
from i2m2_med.data.tabular import clinical_text
from i2m2_med.errors import I2M2Error
from i2m2_med.evidence import SIGNED_METHODS, agreement_matrix, contributions, driving_expert
from i2m2_med.heads import HEADS, expert_short_title, expert_title, head_title
from i2m2_med.inference.loading import tabular_columns
from i2m2_med.inference.shift import out_of_scope_reason

IMAGE_EXPERTS = ("magnitude", "phase", "joint")
WL_DEFAULTS = {"level": 50, "width": 100}
# magnitude presets, as (level %, window %) of the automatic window (0.5-99.5th percentiles)
WL_PRESETS = {
    "Automatic (0.5-99.5th percentile)": (50, 100),
    "Bright: fluid, cartilage, effusion": (70, 60),
    "Dark: menisci, ligaments, cortex": (30, 60),
    "Narrow: subtle contrast": (50, 40),
    "Wide: everything": (50, 160),
}
# the first is the default: integrated gradients point at the annotated finding most often of the three
# (BENCHMARKS.md, saliency section); GradCAM's map at the last stage is too coarse for a small lesion
SALIENCY_TITLES = {"integrated_gradients": "Integrated gradients (signed, nats)", "gradcam": "GradCAM (coarse)",
                   "occlusion": "Occlusion (signed, nats)"}

cfg = ui.settings()
ui.show_settings_problems(cfg)
ref = ui.study_picker(cfg)

st.sidebar.markdown("#### Display")
method = st.sidebar.radio("Saliency method", list(SALIENCY_TITLES), format_func=SALIENCY_TITLES.get, key="saliency_method",
                          help="GradCAM: MONAI's class activation map of the expert's log-odds (fast; only what "
                               "raises them). Occlusion: how much the expert's log-odds drop when a patch is hidden. "
                               "Integrated gradients: each pixel's share of the log-odds the image adds over a blurred "
                               "copy of itself (the shares sum to it). Signed maps: red supports the finding, blue "
                               "speaks against it. How often each points at an annotated finding is measured in "
                               "BENCHMARKS.md (saliency section).")
opacity = st.sidebar.slider("Saliency opacity", 0.0, 1.0, 0.6, 0.05, key="overlay_opacity")
upright = st.sidebar.toggle("Superior at the top", value=True, key="upright",
                            help="Show coronal slices with the patient's head at the top. The model reads them in "
                                 "the fastMRI orientation, inferior edge in row 0 (DICOM and NIfTI are brought to it); "
                                 "their rows are flipped for display only (the model, boxes and saliency use the same "
                                 "rows either way). Letters at the image edges name the patient's directions.")
lm = ui.model_or_stop(cfg)
if st.session_state.get("batch_note"):
    st.warning(f"Images not shown: {st.session_state.pop('batch_note')}")
st.sidebar.divider()
st.sidebar.caption(ui.model_caption(lm))

if ref is None:
    st.markdown("## I2M2 evidence viewer")
    st.info("Choose a study in the sidebar: a demo study, a study under the configured data folder, or an upload.")
    st.stop()

# ---- the prediction (cached: computed once per study and model) ---------------------------------------

scope: tuple[str, dict | None] | None = None  # (reason, shift block): out of the model's scope
try:
    if ref.has_images:
        summary = ui.study_summary(ref)
        if summary.get("out_of_scope"):  # another body part, from the tags alone: the model does not run
            scope = (summary["out_of_scope"], None)
        else:
            pred = compute.prediction(ref.key, lm.key, (), ref, lm)
            if out_of_scope_reason(pred.shift):
                scope = (out_of_scope_reason(pred.shift), pred.shift)
    else:
        pred, summary = compute.record_prediction(ref.key, ref)
except compute.OutOfScopeRecord as exc:
    scope = (exc.reason, exc.shift)
except (sources.StudyUnavailable, I2M2Error, OSError, ValueError, KeyError) as exc:
    st.error(f"This study cannot be analysed: {ui.one_line(exc)}")
    st.stop()
if scope is not None:  # a prominent warning instead of the evidence: its probabilities are not findings
    st.markdown("## Study out of scope")
    ui.out_of_scope(*scope)
    st.stop()

show_ids = ui.show_identifiers()
shown_id = ui.display_id(pred.study_id, from_batch=(ref.kind == "record"))
positions = {int(s): i for i, s in enumerate(pred.slices)}
terms = list(pred.terms)

# ---- header ------------------------------------------------------------------------------------------------

st.markdown(f"## Study `{shown_id}`")
rule = pred.aggregation.get("rule", "")
rule_text = {"mean_top_k": f"study p = mean of the {pred.aggregation.get('k', 3)} highest slices", "max": "study p = highest slice",
             "mean": "study p = mean over slices", "noisy_or": "study p = noisy-OR of slices"}.get(rule, rule)
if "calibration" in pred.aggregation:  # the model's study-level map, fitted on its validation studies
    rule_text = rule_text.replace("study p = ", "study p = calibrated ")
items = [(f"{summary.get('format', pred.format)}", ""), (f"{pred.n_slices} slices", "")]
for m in ("magnitude", "phase", "tabular"):
    if m in pred.missing_modalities:
        items.append((f"{m} missing", "missing"))
    elif m in pred.modalities:
        items.append((m, "ok"))
if pred.dropped_experts:
    items.append((f"not in product: {', '.join(pred.dropped_experts)}", "missing"))
if summary.get("clinical_table"):
    items.append((f"clinical row from {CLINICAL_CSV}", ""))
items.append((rule_text, ""))
if ref.kind == "record":
    items.append(("from a batch result: no images", "withheld"))
if show_ids and summary.get("patient_id"):
    items.append((f"patient id {summary['patient_id']}", ""))
if show_ids and ref.kind != "record":
    items.append((f"file {pred.source.rsplit('/', 1)[-1]}", ""))
ui.chips(items)

cards = st.columns(len(HEADS))
for j, head in enumerate(HEADS):
    top_pos = int(pred.top_slice[j])
    drive = driving_expert(compute.slice_output(pred, top_pos))
    d = int(drive.index[0, j])
    with cards[j]:
        st.metric(head_title(head), f"{pred.p_study[j]:.2f}",
                  help=f"I2M2 probability of {head_title(head).lower()} for the study ({rule_text}).")
        ui.probability_bar(float(pred.p_study[j]))
        st.markdown(f'<div class="i2m2-small">top slice {int(pred.slices[top_pos])} - driven by '
                    f'{expert_title(drive.experts[d]) if d >= 0 else "-"}</div>', unsafe_allow_html=True)

st.write("")
head = st.radio("Pathology", list(HEADS), format_func=head_title, horizontal=True, key="head")
j = HEADS.index(head)
top_pos = int(pred.top_slice[j])

# ---- viewer ----------------------------------------------------------------------------------------------------

slice_key = f"slice::{ref.key}"
if slice_key not in st.session_state or int(st.session_state[slice_key]) not in positions:
    st.session_state[slice_key] = int(pred.slices[top_pos])


def _go_top(key: str = slice_key, value: int = int(pred.slices[top_pos])) -> None:
    st.session_state[key] = value


def _reset_window() -> None:
    for name in ("mag", "phase", "k"):
        st.session_state[f"wl_{name}_level"] = WL_DEFAULTS["level"]
        st.session_state[f"wl_{name}_width"] = WL_DEFAULTS["width"]
    st.session_state["wl_preset"] = next(iter(WL_PRESETS))


def _apply_preset() -> None:
    level, width = WL_PRESETS[st.session_state["wl_preset"]]
    st.session_state["wl_mag_level"], st.session_state["wl_mag_width"] = level, width


st.markdown("### Images")
c_slider, c_button = st.columns([6, 1], vertical_alignment="bottom")
with c_slider:
    first, last = int(pred.slices.min()), int(pred.slices.max())
    if last > first:
        index = st.slider("Slice", first, last, key=slice_key,
                          help="Moving the slider reads this slice for display only; the model is not rerun. "
                               "Arrow up / down (or page up / down) anywhere on the page but in a field, and the "
                               "mouse wheel over the images, also move it one slice.")
    else:
        index = first
        st.markdown(f"Slice {first} (the study has one slice)")
with c_button:
    st.button(f"Top slice ({int(pred.slices[top_pos])})", on_click=_go_top, key="go_top", width="stretch",
              help=f"Jump to the slice with the highest {head_title(head)} probability.")
if last > first:
    ui.slice_keys("Slice", ("img_", "sal_"))  # the wheel steps over the slice images and saliency maps
index = int(index) if int(index) in positions else int(pred.slices[top_pos])
pos = positions[index]

with st.expander("Window / level", expanded=False):
    st.selectbox("Magnitude preset", list(WL_PRESETS), key="wl_preset", on_change=_apply_preset,
                 help="Sets the magnitude level and window below; type other values to refine.")
    wl_cols = st.columns(3)
    for col, (name, title) in zip(wl_cols, (("mag", "Magnitude"), ("phase", "Phase"), ("k", "k-space"))):
        with col:
            st.number_input(f"{title} level (%)", 0, 100, WL_DEFAULTS["level"], step=5, key=f"wl_{name}_level")
            st.number_input(f"{title} window (%)", 5, 200, WL_DEFAULTS["width"], step=5, key=f"wl_{name}_width")
    st.button("Reset window / level", on_click=_reset_window, key="wl_reset")
    st.caption("Percentages of each image's automatic window (level: where its centre sits, from the bottom of that "
               "window; window: its width): magnitude spans its 0.5-99.5th percentiles, k-space its 20-99.99th "
               "(noise floor to the centre), phase -pi..pi.")


def _window(name: str, image: np.ndarray, fixed: tuple[float, float] | None = None,
            percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    if fixed is None:
        level0, width0 = figures.auto_window(image, *percentiles)
    else:
        level0, width0 = (fixed[0] + fixed[1]) / 2.0, fixed[1] - fixed[0]
    lo = level0 - width0 / 2.0
    level = lo + width0 * st.session_state.get(f"wl_{name}_level", WL_DEFAULTS["level"]) / 100.0
    width = width0 * st.session_state.get(f"wl_{name}_width", WL_DEFAULTS["width"]) / 100.0
    return figures.window_image(image, level, width)


planes = None
if ref.has_images:
    try:
        planes = compute.planes(ref.key, index, ref)
    except (sources.StudyUnavailable, I2M2Error, OSError, IndexError) as exc:
        st.error(f"Slice {index} cannot be read: {ui.one_line(exc)}")

flip = bool(upright and summary.get("row0_inferior"))
edges = sources.edge_labels(summary.get("directions"), flip)  # the letters at the edges of the images shown


def _orient(pixels: np.ndarray) -> np.ndarray:
    """Rows flipped for display when the study stores the inferior edge in row 0."""
    return np.ascontiguousarray(pixels[::-1]) if flip else pixels


def _orient_boxes(items: list[dict]) -> list[dict]:
    if not flip:
        return items
    from i2m2_med.io.annotations import flip_y

    return [{**b, "y": int(flip_y(int(b["y"]), int(b["height"]), figures.DISPLAY_SIZE))} for b in items]


boxes = [b for b in summary.get("boxes", []) if int(b["slice"]) == index]
show_boxes = True
if summary.get("boxes"):
    show_boxes = st.toggle(f"fastMRI+ boxes ({len(boxes)} on this slice)", value=True, key="show_boxes")
gray = {}
if planes is None:
    st.info("Images are not available: this study was opened from a batch result without its input folder "
            "(give the input folder on the Batch results page to see them).")
else:
    if planes.magnitude is not None:
        gray["magnitude"] = _window("mag", planes.magnitude)
    phase_title = "Phase (radians)"
    if planes.phase is not None:
        phase_image = planes.phase
        hp = compute.phase_filter_of(lm)
        if hp is not None:
            shown = st.radio("Phase shown", ["High-pass (what the model sees)", "Raw"], horizontal=True, key="phase_view",
                             help="The model's phase expert and joint model see the homodyne high-pass phase: the smooth "
                                  "coil and field phase and its wraps removed, local phase kept (as in SWI).")
            if shown.startswith("High-pass"):
                phase_image = compute.highpass_phase(ref.key, index, hp[0], hp[1], planes.phase)
                phase_title = "High-pass phase (radians)"
        gray["phase"] = _window("phase", phase_image, fixed=(-np.pi, np.pi))
    cols = st.columns(3)
    for col, name, title in ((cols[0], "magnitude", "Magnitude"), (cols[1], "phase", phase_title)):
        with col:
            if name in gray:
                fig = figures.image_figure(_orient(gray[name]), _orient_boxes(boxes) if show_boxes else (),
                                           title=f"{title} - slice {index}", edges=edges)
            else:
                fig = figures.placeholder_figure(f"{title.split(' ')[0]} missing in this study")
            st.plotly_chart(fig, key=f"img_{name}", config=figures.chart_config(f"img_{name}"))
    with cols[2]:
        k = planes.kspace
        rows = k.shape[0]
        squeezed = figures.squeeze_rows(k, 320) if rows > 400 else k
        title = "k-space, log magnitude" + (" (from the image)" if planes.kspace_derived else "")
        fig = figures.image_figure(_window("k", squeezed, percentiles=(20.0, 99.99)), title=title)
        st.plotly_chart(fig, key="img_kspace", config=figures.chart_config("img_kspace"))
    notes_line = []
    if flip:
        notes_line.append("Superior at the top (rows flipped from the stored orientation for display).")
    if edges:
        notes_line.append("Letters at the image edges: the patient's directions (S superior, I inferior, R right, "
                          "L left, A anterior, P posterior).")
    else:
        notes_line.append("Orientation unknown: images shown as stored, without direction letters.")
    if summary.get("labels") is None:
        notes_line.append("No fastMRI+ labels for this study.")
    elif boxes and show_boxes:
        notes_line.append("Boxes: " + "; ".join(sorted({str(b['label']).strip() for b in boxes})) + ".")
    if notes_line:
        st.caption(" ".join(notes_line))

# ---- evidence for the selected pathology -----------------------------------------------------------------

st.markdown(f"### Evidence - {head_title(head)}")
scope = st.radio("Scope", ["This slice", "Study"], horizontal=True, key="scope",
                 help="This slice: the experts' log-odds on the slice shown. Study: their mean over the slices the "
                      "study-level rule reads.")
if scope == "This slice":
    out = compute.slice_output(pred, pos)
    p_here = float(pred.p[pos, j])
    label_total = "I2M2"
else:
    out = compute.study_output(pred)
    p_here = float(pred.p_study[j])
    label_total = "I2M2"
contrib = {t: float(v[0, j]) for t, v in contributions(out).items()}
drive = driving_expert(out)
d = int(drive.index[0, j])
total = sum(contrib.values())
decision = bool(drive.decision[0, j])

left, right = st.columns([1, 1], gap="large")
with left:
    fig = figures.waterfall_figure(contrib, missing=pred.dropped_experts, probability=p_here, total_label=label_total,
                                   title=f"Log-odds contributions ({scope.lower()})")
    st.plotly_chart(fig, key="waterfall", config=figures.chart_config("waterfall"))
    st.caption("Each bar is one expert's log p(1) - log p(0) in nats; I2M2 multiplies the experts' "
               "probabilities and renormalises, so the bars add up to the product's log-odds. "
               "Red pushes towards the finding, blue against it."
               + (" The class prior is the product's base rate, refitted on the validation split after training "
                  "so that p matches the prevalence of the cohort: it sees no image." if "prior" in contrib else ""))
with right:
    call = "finding" if decision else "no finding"
    if d >= 0:
        st.markdown(f"**I2M2: p = {p_here:.2f} ({call}).** Driving expert: **{expert_title(drive.experts[d])}** "
                    f"({contrib[drive.experts[d]]:+.2f} of {total:+.2f} nats).")
    else:
        st.markdown(f"**I2M2: p = {p_here:.2f} ({call}).** No single expert pushes towards this decision.")
    rows = []
    for t in terms:
        c = contrib[t]
        row = {"Expert": expert_short_title(t)}
        if scope == "This slice":
            row["Own p"] = float(np.exp(pred.terms[t][pos, j, 1]))
        row["Log-odds"] = round(c, 3)
        row["Agrees"] = "yes" if (c >= 0) == decision else "no"
        rows.append(row)
    for t in pred.dropped_experts:
        rows.append({"Expert": expert_short_title(t), **({"Own p": None} if scope == "This slice" else {}),
                     "Log-odds": None, "Agrees": "missing input"})
    table = pd.DataFrame(rows)
    column_config = {
        "Expert": st.column_config.TextColumn("Expert", width="small"),
        "Own p": st.column_config.ProgressColumn("Own p", min_value=0.0, max_value=1.0, format="%.2f", width="small",
                                                 help="The expert's own probability of the finding on this slice"),
        "Log-odds": st.column_config.NumberColumn("Log-odds", format="%+.3f", width="small",
                                                  help="Contribution to the product, nats"),
        "Agrees": st.column_config.TextColumn("Agrees", width="small", help="Does the expert point the same way as I2M2?"),
    }
    st.dataframe(table, hide_index=True, column_config=column_config, key="experts_table")
    against = [expert_title(t) for t in terms if t != "prior" and (contrib[t] >= 0) != decision]
    if against:
        st.markdown(f"Disagreeing with the product: {', '.join(against)}.")
    else:
        st.markdown("Every expert agrees with the product.")
    agreement = agreement_matrix(pred)
    st.plotly_chart(figures.agreement_figure(agreement.experts, agreement.matrix[j],
                                             title=f"Agreement over the {pred.n_slices} slices"),
                    key="agreement", config=figures.chart_config("agreement"))

# ---- saliency -------------------------------------------------------------------------------------------------

st.markdown(f"### Where the image experts look - slice {index}")
if planes is None:
    st.info("Saliency needs the images (not available for a batch result without its input folder).")
else:
    image_experts = [e for e in IMAGE_EXPERTS if e in lm.experts]
    cols = st.columns(max(1, len(image_experts)))
    if any(e in pred.terms for e in image_experts):
        compute.warm_monai()
    for col, expert in zip(cols, image_experts):
        base_name = "phase" if expert == "phase" else "magnitude"
        with col:
            if expert not in pred.terms or base_name not in gray:
                needs = "phase" if expert in ("phase", "joint") and "phase" in pred.missing_modalities else "its input"
                st.plotly_chart(figures.placeholder_figure(f"{expert_title(expert)}<br>not in the product ({needs} missing)"),
                                key=f"sal_{expert}", config=figures.chart_config(f"sal_{expert}"))
                continue
            try:
                with st.spinner(f"{expert_title(expert)} saliency..."):
                    smap = compute.saliency_map(ref.key, lm.key, index, expert, head, method, ref, lm)
            except (I2M2Error, sources.StudyUnavailable, RuntimeError, ValueError) as exc:
                st.warning(f"{expert_title(expert)}: saliency unavailable ({ui.one_line(exc)})")
                continue
            rgb = figures.overlay_rgb(gray[base_name], smap, signed=(method in SIGNED_METHODS), opacity=opacity)
            over = "phase" if base_name == "phase" else "magnitude"
            fig = figures.image_figure(_orient(rgb), _orient_boxes(boxes) if show_boxes else (),
                                       title=f"{expert_title(expert)} on {over}", edges=edges)
            st.plotly_chart(fig, key=f"sal_{expert}", config=figures.chart_config(f"sal_{expert}"))
            c_e = float(pred.terms[expert][pos, j, 1] - pred.terms[expert][pos, j, 0])
            st.caption(f"own p = {np.exp(pred.terms[expert][pos, j, 1]):.2f}, contribution {c_e:+.2f} nats")
            if float(np.max(smap)) <= 0:  # nothing to show is an answer: say it
                st.caption(f"Empty map: no part of this slice raises the {expert_title(expert).lower()}'s "
                           f"{head_title(head)} log-odds by this method" + (
                               " (GradCAM shows only what raises them; a signed method shows what lowers them)."
                               if method == "gradcam" else "."))

# ---- across slices -------------------------------------------------------------------------------------------

st.markdown("### Across slices")
labels = summary.get("labels")
label_col = None if labels is None else np.asarray(labels)[np.asarray(pred.slices), j]
curve = figures.slice_curve_figure(pred.slices, pred.p[:, j], top_pos, index,
                                   expert_p={t: v[:, j] for t, v in compute.expert_p(pred).items() if t != "prior"},
                                   labels=label_col, title=f"{head_title(head)}: I2M2 probability per slice")
st.plotly_chart(curve, key="curve", config=figures.chart_config("curve"))
st.caption("Star: the top slice. Dashed line: the slice shown. Shaded: slices annotated with this finding (when "
           "labels exist). Click an expert in the legend to show its own probability.")

# ---- tabular expert --------------------------------------------------------------------------------------------

if "tabular" in lm.experts:
    st.markdown("### Tabular expert: what it reads")
    if "tabular" not in pred.terms:
        st.info("The tabular expert is not in the product for this study.")
    elif not ref.has_images:
        st.info("Feature attributions need the study's files (not available for a batch result).")
    else:
        try:
            attr = compute.tabular_attribution(ref.key, lm.key, ref, lm)
        except (I2M2Error, sources.StudyUnavailable, ValueError) as exc:
            attr = None
            st.warning(f"Attributions unavailable: {ui.one_line(exc)}")
        if attr is not None:
            grouped: dict[str, float] = {}
            shown: dict[str, str] = {}
            encoded: dict[str, str] = {}
            declared = tabular_columns(lm.meta)
            scales = declared if isinstance(declared, dict) else None
            for i, name in enumerate(attr.names):
                base = name[: -len("_missing")] if name.endswith("_missing") else name
                grouped[base] = grouped.get(base, 0.0) + float(attr.attributions[i, j])
            for i, name in enumerate(attr.names):
                if not name.endswith("_missing"):
                    unknown = (name + "_missing") in attr.names and attr.values[list(attr.names).index(name + "_missing")] > 0.5
                    shown[name] = "unknown" if unknown else clinical_text(name, float(attr.values[i]), scales)
                    encoded[name] = "missing" if unknown else f"{attr.values[i]:.3f}"
            names = list(grouped)
            tl, tr = st.columns([3, 2], gap="large")
            with tl:
                st.plotly_chart(figures.tabular_figure(names, np.array([grouped[n] for n in names]),
                                                       [f"{shown.get(n, '')} (encoded {encoded.get(n, '')})" for n in names],
                                                       title=f"Integrated gradients, {head_title(head)}"),
                                key="tabular", config=figures.chart_config("tabular"))
            with tr:
                st.dataframe(pd.DataFrame({"Feature": names, "Value": [shown.get(n, "") for n in names],
                                           "Encoded value": [encoded.get(n, "") for n in names],
                                           "Attribution (nats)": [round(grouped[n], 3) for n in names]}),
                             hide_index=True, key="tabular_table")
                gap = float(attr.log_odds[j] - attr.baseline_log_odds[j])
                st.caption(f"Attributions add up to {sum(grouped.values()):+.2f} nats: the change of the tabular "
                           f"expert's log-odds from every feature unknown ({attr.baseline_log_odds[j]:+.2f}) to this "
                           f"study ({attr.log_odds[j]:+.2f}), which is {gap:+.2f} (integrated gradients; they differ "
                           f"by {abs(sum(grouped.values()) - gap):.3f}). Values in clinical units; the encoded value "
                           "is what the model reads (e.g. age / 100).")

# ---- withholding a modality ------------------------------------------------------------------------------------

st.markdown("### What if a modality were missing?")
available = [m for m in ("magnitude", "phase", "tabular") if m in pred.modalities]
if not ref.has_images:
    st.info("Withholding a modality reruns the model, which needs the study's files.")
else:
    withheld = st.multiselect("Withhold from the model", available, key=f"withhold::{ref.key}",
                              help="The experts that need a withheld modality drop out of the product, exactly as for "
                                   "a modality the study lacks (nothing is zero-filled).")
    if pred.missing_modalities:
        st.caption(f"Already missing in this study: {', '.join(pred.missing_modalities)} - the product above is "
                   "computed without the experts that need it.")
    if withheld:
        try:
            with st.spinner("Running the model without the withheld modalities..."):
                pred_w = compute.prediction(ref.key, lm.key, tuple(sorted(withheld)), ref, lm)
        except I2M2Error as exc:
            st.warning(f"No answer without {', '.join(withheld)}: {ui.one_line(exc)}")
        else:
            wl, wr = st.columns([3, 2], gap="large")
            with wl:
                st.plotly_chart(figures.withheld_figure(pred.p_study, pred_w.p_study, f"without {', '.join(withheld)}"),
                                key="withheld_bars", config=figures.chart_config("withheld_bars"))
            with wr:
                c_w = {t: float(v[j]) for t, v in pred_w.contributions.items()}
                st.plotly_chart(figures.waterfall_figure(c_w, missing=pred_w.dropped_experts,
                                                         probability=float(pred_w.p_study[j]),
                                                         total_label="I2M2", height=300,
                                                         title=f"{head_title(head)} without {', '.join(withheld)}"),
                                key="withheld_waterfall", config=figures.chart_config("withheld_waterfall"))
            st.markdown(f"{head_title(head)}: p = **{pred.p_study[j]:.2f}** with every available modality, "
                        f"**{pred_w.p_study[j]:.2f}** without {', '.join(withheld)} "
                        f"(experts left out: {', '.join(pred_w.dropped_experts) or 'none'}).")

# ---- report ----------------------------------------------------------------------------------------------------

st.markdown("### Report")


def _report() -> dict:
    attr = None
    if ref.has_images and "tabular" in pred.terms:
        attr = compute.compute_tabular(lm, ref)
    return report.report_json(pred, summary, shown_id, show_ids, withheld=[], tabular=attr)


def _json_bytes() -> bytes:
    return json.dumps(_report(), indent=1).encode("utf-8")


def _html_bytes() -> bytes:
    doc = _report()
    images = {}
    if ref.has_images and "magnitude" in pred.terms:
        for jj, h in enumerate(HEADS):
            idx = int(pred.slices[int(pred.top_slice[jj])])
            try:
                pl = compute.compute_planes(ref, idx)
                smap = compute.compute_saliency(lm, ref, idx, "magnitude", h, "integrated_gradients")
            except (I2M2Error, sources.StudyUnavailable, RuntimeError, ValueError):
                continue
            level, width = figures.auto_window(pl.magnitude)
            rgb = figures.overlay_rgb(figures.window_image(pl.magnitude, level, width), smap, signed=True, opacity=0.55)
            images[h] = figures.png_bytes(np.ascontiguousarray(rgb[::-1]) if summary.get("row0_inferior") else rgb)
    curves = {h: (pred.slices, pred.p[:, jj], int(pred.top_slice[jj])) for jj, h in enumerate(HEADS)}
    return report.report_html(doc, images=images, curves=curves).encode("utf-8")


r1, r2, r3 = st.columns([2, 2, 3])
with r1:
    st.download_button("Download HTML report", data=_html_bytes, file_name=f"i2m2-report-{shown_id}.html",
                       mime="text/html", key="dl_html", icon=":material/description:")
with r2:
    st.download_button("Download JSON", data=_json_bytes, file_name=f"i2m2-report-{shown_id}.json",
                       mime="application/json", key="dl_json", icon=":material/data_object:")
with r3:
    st.caption("The HTML report is self-contained (no scripts, no external resources). Both are de-identified "
               "unless identifiers are switched on, and marked research use only.")

with st.expander("Notes and provenance"):
    notes = list(dict.fromkeys(list(summary.get("notes", [])) + list(pred.notes)))
    if not show_ids:
        notes = report.deidentified_notes(notes, (summary.get("study_id"), summary.get("patient_id"), pred.study_id),
                                          shown_id)
    for n in notes:
        st.markdown(f"- {n}")
    tags = summary.get("tags") or {}
    if tags:
        st.markdown("Acquisition: " + ", ".join(f"{k} = {v}" for k, v in tags.items()))
    shift = pred.shift or {}
    if shift.get("available"):
        st.markdown(f"Distribution-shift score {float(shift['score']):.2f} (threshold {float(shift['threshold']):.2f}): "
                    "in scope.")
    elif shift.get("note"):
        st.markdown(f"- {shift['note']}")
    st.markdown(f"Model `{pred.model.get('variant', '')}` fingerprint `{pred.model.get('fingerprint', '')}`; "
                f"terms of the product: {', '.join(terms)}; prediction took {pred.seconds:.2f} s.")
