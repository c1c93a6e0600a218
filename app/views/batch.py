"""Batch results: open an output folder of ``i2m2-med diagnose``, sort and filter its studies, set
the ground truth of the input folder's annotations beside each prediction (with sensitivity and
specificity at the model's validated operating point), and jump into one."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st
from viewer import batch, sources, ui
from viewer.paths import PathRefused, relative_label, resolve_under

from i2m2_med.heads import HEADS, head_title
from i2m2_med.privacy import hash_id, is_hashed_id

cfg = ui.settings()
ui.show_settings_problems(cfg)
st.markdown("## Batch results")
st.caption("Open the output folder (OUT_DIR) of `i2m2-med diagnose INPUT_DIR --out OUT_DIR`: one row per study, "
           "sorted and filtered here, each opening in the study viewer.")

if not cfg.data_roots:
    st.info("No data folder is configured. Start the app with `I2M2_DATA_ROOT=/path/to/folder` (the folder that holds "
            "your diagnose output folders); only paths inside it are opened.")
    st.stop()


@st.cache_data(show_spinner="Looking for result folders...", ttl=60)
def _runs(roots: tuple[str, ...]) -> list[str]:
    return [str(p) for p in batch.find_runs([Path(r) for r in roots])]


@st.cache_data(show_spinner=False, max_entries=16)
def _table(folder: str, token: str):
    return batch.read_predictions(Path(folder))


@st.cache_data(show_spinner="Reading the annotations...", max_entries=16)
def _truth(folder: str, token: str, cohort: str, annotations_token: str):
    return batch.ground_truth(_table(folder, token), Path(cohort))


def _proportion(value) -> str:
    if value is None or value.value is None:
        return "-"
    return f"{value.value:.2f} [{value.low:.2f}, {value.high:.2f}] ({value.successes}/{value.total})"


roots = tuple(str(r) for r in cfg.data_roots)
runs = _runs(roots)
OTHER = "Type a path..."
labels = [relative_label(Path(r), cfg.data_roots) for r in runs] + [OTHER]
choice = st.selectbox("Result folder", labels, key="batch_run",
                      help="Output folders of i2m2-med diagnose under the data root(s); training run folders are not listed.")
if choice == OTHER:
    typed = st.text_input("Output folder (relative to the data root, or absolute inside it)", key="batch_path")
    if not typed.strip():
        st.stop()
    try:
        folder = resolve_under(cfg.data_roots, typed)
    except PathRefused as exc:
        st.error(str(exc))
        st.stop()
else:
    folder = Path(runs[labels.index(choice)])

try:
    table = _table(str(folder), sources.file_token(folder / batch.PREDICTIONS))
except batch.NotARun as exc:
    st.error(str(exc))
    st.stop()

input_dir = st.text_input(
    "Input folder of this run (optional, inside the data root)", key="batch_input",
    help="The INPUT_DIR given to diagnose. With it, the ground truth of its annotations (annotations/knee.csv of the "
         "cohort it belongs to) is shown beside each prediction, and a study opens with its images; without it a study "
         "opens from its result file (evidence per expert and per slice, without images).")
has_truth = False
if input_dir.strip():
    try:
        base = resolve_under(cfg.data_roots, input_dir)
    except PathRefused as exc:
        st.error(str(exc))
        base = None
    if base is not None:
        root = next((r for r in cfg.data_roots if r == base or r in base.parents), None)
        cohort = sources.find_cohort(base, stop=root)
        annotations = cohort / "annotations" / "knee.csv" if cohort is not None else None
        if annotations is None or not annotations.is_file():
            st.caption("No annotations/knee.csv at or above the input folder: no ground truth to compare with.")
        else:
            try:
                truth, matched = _truth(str(folder), sources.file_token(folder / batch.PREDICTIONS), str(cohort),
                                        sources.file_token(annotations))
            except batch.NotARun as exc:
                st.warning(str(exc))
            else:
                table = pd.concat([table, truth], axis=1)
                has_truth = matched > 0
                st.caption(f"Ground truth: the annotations of {relative_label(cohort, cfg.data_roots)} name {matched} of "
                           f"{len(table)} studies" + ("" if has_truth else " - none of this run's studies."))

show_ids = ui.show_identifiers()
view = table.copy()
if not show_ids:
    view["study_id"] = [s if is_hashed_id(s) else hash_id(s) for s in view["study_id"]]
    if "patient_id" in view.columns:
        view["patient_id"] = [("" if not str(s).strip() or str(s) == "nan" else (s if is_hashed_id(str(s)) else hash_id(str(s))))
                              for s in view["patient_id"]]
view["_record_id"] = table["study_id"]

n_ok = int((table["status"] == "ok").sum())
n_err = int((table["status"] != "ok").sum())  # rows with a reason in the error column (failed, skipped, out of scope)
n_failed = int((table["status"] == "error").sum())
n_scope = int((table["status"] == "out_of_scope").sum())
fingerprints = sorted({str(f) for f in table.get("model_fingerprint", []) if str(f) and str(f) != "nan"})
m1, m2, m3, m4, m5 = st.columns(5)
m1.metric("Studies", len(table))
m2.metric("Succeeded", n_ok)
m3.metric("Out of scope", n_scope, help="Another body part by its tags, or images unlike the model's training data "
                                        "(distribution-shift score above its threshold): no findings reported.")
m4.metric("Failed", n_failed)
m5.metric("Model", fingerprints[0] if len(fingerprints) == 1 else f"{len(fingerprints)} fingerprints")
if n_scope:
    st.warning(f"{n_scope} of {len(table)} studies are out of the model's scope: their rows carry the reason and no "
               "probabilities.")

f1, f2, f3, f4, f5 = st.columns([2, 2, 2, 2, 3])
with f1:
    statuses = sorted(table["status"].dropna().unique().tolist())
    keep = st.multiselect("Status", statuses, default=statuses, key="batch_status")
with f2:
    sort_head = st.selectbox("Pathology", list(HEADS), format_func=head_title, key="batch_head")
with f3:
    threshold = st.slider(f"Minimum p({head_title(sort_head)})", 0.0, 1.0, 0.0, 0.05, key="batch_min_p")
with f4:
    truth_filter = st.selectbox(f"Truth ({head_title(sort_head)})", ["all", "positive", "negative", "not annotated"],
                                key="batch_truth", disabled=not has_truth,
                                help="Needs the input folder of the run, with its annotations.")
with f5:
    search = st.text_input("Search id / format / error", key="batch_search")
s1, s2 = st.columns([3, 1])
sortable = [c for c in view.columns if not c.startswith("_") and (show_ids or c not in ("source",))]
with s1:
    sort_by = st.selectbox("Sort by", sortable, index=sortable.index(f"p_{sort_head}"), key="batch_sort")
with s2:
    descending = st.toggle("Descending", value=True, key="batch_desc")

mask = view["status"].isin(keep)
p_col = view[f"p_{sort_head}"]
if threshold > 0:
    mask &= p_col.fillna(-1) >= threshold
if has_truth and truth_filter != "all":
    truth_col = view[f"{batch.TRUTH}{sort_head}"]
    mask &= truth_col.isna() if truth_filter == "not annotated" else truth_col.fillna(truth_filter == "negative").eq(truth_filter == "positive")
if search.strip():
    text = search.strip().lower()
    hay = (view["study_id"].astype(str) + " " + view["format"].astype(str) + " " + view["error"].astype(str))
    if show_ids:
        hay = hay + " " + view["source"].astype(str)
    mask &= hay.str.lower().str.contains(text, regex=False)
shown = view[mask].sort_values(sort_by, ascending=not descending, na_position="last", kind="stable")

columns = ["study_id", *([] if not show_ids else ["source"]), "status", *(["error"] if n_err else []), "format",
           "n_slices", *(f"p_{h}" for h in HEADS), *((f"{batch.TRUTH}{h}" for h in HEADS) if has_truth else ())]
extra = [c for c in ("missing_modalities", "dropped_experts", "shift_score") if c in shown.columns]
# the experts' disagreement (diagnose) and the review flag (--review-threshold), where the run wrote them
extra += [c for c in ("disagreement", "review") if c in shown.columns and shown[c].astype(str).str.strip().replace("nan", "").ne("").any()]
config = {f"p_{h}": st.column_config.ProgressColumn(head_title(h), min_value=0.0, max_value=1.0, format="%.2f")
          for h in HEADS}
config["disagreement"] = st.column_config.NumberColumn(
    "Expert disagreement", format="%.2f",
    help="Standard deviation of the experts' study-level log-odds, mean over ACL / MTEAR / CART (empty with one expert).")
config["review"] = st.column_config.TextColumn("Review", help="yes: disagreement above the run's --review-threshold.")
for h in HEADS:
    config[f"{batch.TRUTH}{h}"] = st.column_config.CheckboxColumn(
        f"{head_title(h)} (truth)", help="From the annotations: ticked = the finding is annotated in this study; "
                                         "empty = the annotations do not name the study.")
st.dataframe(shown[columns + extra], hide_index=True, column_config=config, key="batch_table",
             height=min(420, 38 + 35 * max(1, len(shown))))
st.caption(f"{len(shown)} of {len(table)} studies shown." + ("" if show_ids else " Source paths hidden and ids hashed "
                                                                                "(switch identifiers on to see them)."))

if has_truth:
    st.markdown("#### Against the ground truth")
    thresholds, reasons = batch.operating_points(folder)
    scored = batch.scores_at_operating_points(table, thresholds, reasons)
    st.dataframe(
        pd.DataFrame([{
            "Pathology": head_title(r["head"]),
            "Threshold on p": "-" if r["threshold"] is None else f"{r['threshold']:.3f}",
            "Studies (with the finding)": f"{r['n']} ({r['positives']})",
            "Sensitivity [95% CI] (TP/P)": _proportion(r.get("sensitivity")),
            "Specificity [95% CI] (TN/N)": _proportion(r.get("specificity")),
            "Note": r.get("reason", ""),
        } for r in scored]),
        hide_index=True, key="batch_scores",
    )
    st.caption("At the model's operating point: per pathology, the threshold on its study probability chosen on the "
               "model's own validation studies (Youden's J) and stored with the model - not tuned on this batch. "
               "Over every successful study whose truth the annotations give (the filters above do not apply); "
               "Wilson 95% intervals.")

st.markdown("#### Open a study")
ok_rows = shown[shown["status"] == "ok"]
if ok_rows.empty:
    st.info("No successful study matches the filters.")
    st.stop()
pick = st.selectbox("Study", ok_rows["study_id"].tolist(), key="batch_pick",
                    format_func=lambda s: f"{s}  (p = {float(ok_rows.set_index('study_id').loc[s, f'p_{sort_head}']):.2f})")
if not input_dir.strip():
    st.caption("Without the input folder above, the study opens from its result file: the evidence per expert and per "
               "slice, without images.")
if st.button("Open in the study viewer", type="primary", key="batch_open"):
    row = table.loc[view.index[view["study_id"] == pick][0]]
    try:
        ref, note = batch.study_ref(folder, row, cfg.data_roots, input_dir)
    except batch.NotARun as exc:
        st.error(str(exc))
        st.stop()
    if note:
        st.session_state["batch_note"] = note
    st.session_state["jump_ref"] = ref
    st.switch_page("views/study.py")
