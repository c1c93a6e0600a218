"""Batch results: open an output folder of ``i2m2-med diagnose``, sort and filter its studies, and
jump into one."""

from __future__ import annotations

from pathlib import Path

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

f1, f2, f3, f4 = st.columns([2, 2, 2, 3])
with f1:
    statuses = sorted(table["status"].dropna().unique().tolist())
    keep = st.multiselect("Status", statuses, default=statuses, key="batch_status")
with f2:
    sort_head = st.selectbox("Pathology", list(HEADS), format_func=head_title, key="batch_head")
with f3:
    threshold = st.slider(f"Minimum p({head_title(sort_head)})", 0.0, 1.0, 0.0, 0.05, key="batch_min_p")
with f4:
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
if search.strip():
    text = search.strip().lower()
    hay = (view["study_id"].astype(str) + " " + view["format"].astype(str) + " " + view["error"].astype(str))
    if show_ids:
        hay = hay + " " + view["source"].astype(str)
    mask &= hay.str.lower().str.contains(text, regex=False)
shown = view[mask].sort_values(sort_by, ascending=not descending, na_position="last", kind="stable")

columns = ["study_id", *([] if not show_ids else ["source"]), "status", *(["error"] if n_err else []), "format",
           "n_slices", *(f"p_{h}" for h in HEADS)]
extra = [c for c in ("missing_modalities", "dropped_experts", "shift_score") if c in shown.columns]
# the experts' disagreement (diagnose) and the review flag (--review-threshold), where the run wrote them
extra += [c for c in ("disagreement", "review") if c in shown.columns and shown[c].astype(str).str.strip().replace("nan", "").ne("").any()]
config = {f"p_{h}": st.column_config.ProgressColumn(head_title(h), min_value=0.0, max_value=1.0, format="%.2f")
          for h in HEADS}
config["disagreement"] = st.column_config.NumberColumn(
    "Expert disagreement", format="%.2f",
    help="Standard deviation of the experts' study-level log-odds, mean over ACL / MTEAR / CART (empty with one expert).")
config["review"] = st.column_config.TextColumn("Review", help="yes: disagreement above the run's --review-threshold.")
st.dataframe(shown[columns + extra], hide_index=True, column_config=config, key="batch_table",
             height=min(420, 38 + 35 * max(1, len(shown))))
st.caption(f"{len(shown)} of {len(table)} studies shown." + ("" if show_ids else " Source paths hidden and ids hashed "
                                                                                "(switch identifiers on to see them)."))

st.markdown("#### Open a study")
ok_rows = shown[shown["status"] == "ok"]
if ok_rows.empty:
    st.info("No successful study matches the filters.")
    st.stop()
o1, o2 = st.columns([2, 3])
with o1:
    pick = st.selectbox("Study", ok_rows["study_id"].tolist(), key="batch_pick",
                        format_func=lambda s: f"{s}  (p = {float(ok_rows.set_index('study_id').loc[s, f'p_{sort_head}']):.2f})")
with o2:
    input_dir = st.text_input("Input folder of this run (optional, inside the data root) to show the images",
                              key="batch_input",
                              help="The INPUT_DIR given to diagnose. Without it the study opens from its result file: "
                                   "the evidence per expert and per slice, without images.")
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
