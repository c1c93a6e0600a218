"""The ablation report as one self-contained HTML file, rendered from ``results.json``.

Plain string templates (``ablation.html``, ``ablation.css`` beside this file) and plotly figures;
plotly's JavaScript is inlined once in the page head, so the report opens offline and loads
nothing from the network. Every number comes from the results dict (nothing is recomputed here);
a value the data cannot define is shown as "n/a" with a numbered note giving the reason.
"""

from __future__ import annotations

import html
import json
import string
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from i2m2_med.heads import EXPERT_COLORS, HEAD_SHORT_TITLES, HEADS, PATHOLOGY_HEADS

HERE = Path(__file__).resolve().parent
HEAD_TITLES = {**HEAD_SHORT_TITLES,
               "mean_pathologies": "mean " + "/".join(HEAD_SHORT_TITLES[h] for h in PATHOLOGY_HEADS),
               "mean_all": f"mean ({len(HEADS)} heads)"}
LEVEL_TITLES = {"in_view": "In view (findings against their mimics)", "slice": "Slice level", "study": "Study level"}
PALETTE = {
    "i2m2": "#1f5fa8", "intra": "#e07b00", "inter": EXPERT_COLORS["joint"], "i2m2-notab": "#7a4fb0",
    "mag": EXPERT_COLORS["magnitude"], "phase": EXPERT_COLORS["phase"], "tab": EXPERT_COLORS["tabular"],
}
"""Variant colours: a single-expert variant, and inter (the joint model alone), in its expert's colour."""
FOCUS = ("i2m2", "intra", "inter")
"""Variants drawn by default in busy figures (the others are one legend click away)."""
EXPERT_COLOURS = {**EXPERT_COLORS, "none": "#d9dee6"}
"""The experts' colours, and one for "no driving expert"."""

SECTIONS: tuple[tuple[str, str], ...] = (
    ("summary", "Summary"),
    ("data", "Data"),
    ("discrimination", "Discrimination (AUROC)"),
    ("comparisons", "Paired comparisons against I2M2"),
    ("operating", "Operating points"),
    ("calibration", "Calibration"),
    ("roc", "ROC curves"),
    ("evidence", "Per-expert evidence"),
    ("selective", "Selective prediction"),
    ("robustness", "Robustness"),
    ("regimes", "Regime study"),
    ("claim", "Paper claim on held-out cohorts"),
    ("card", "Model card"),
    ("runs", "Runs"),
)
"""Section ids and headings, in page order (every report has all of them)."""


# ---- small HTML helpers --------------------------------------------------------------------------


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


class Notes:
    """Numbered reasons of the undefined cells of one table (deduplicated)."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def mark(self, reason: Any) -> str:
        text = " ".join(str(reason or "undefined").split())
        if text not in self.items:
            self.items.append(text)
        return f'<sup class="fn">{self.items.index(text) + 1}</sup>'

    def na(self, reason: Any, label: str = "n/a") -> str:
        return f'<span class="na">{esc(label)}</span>{self.mark(reason)}'

    def html(self) -> str:
        if not self.items:
            return ""
        return '<ol class="notes">' + "".join(f"<li>{esc(t)}</li>" for t in self.items) + "</ol>"


def num(v: Any, d: int = 3) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    try:
        return f"{float(v):.{d}f}"
    except (TypeError, ValueError):
        return esc(v)


def pval(p: Any) -> str:
    if p is None:
        return "&ndash;"
    p = float(p)
    return "&lt;0.001" if p < 0.001 else f"{p:.3f}"


def ci_text(ci: Any, d: int = 3) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and ci[0] is not None and ci[1] is not None:
        return f'<span class="ci">[{float(ci[0]):.{d}f}, {float(ci[1]):.{d}f}]</span>'
    return ""


def pm(mean: Any, sd: Any) -> str:
    if mean is None:
        return "&ndash;"
    if sd is None:
        return f"{float(mean):.3f}"
    return f"{float(mean):.3f} &plusmn; {float(sd):.3f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1, row_classes: Sequence[str] | None = None) -> str:
    """An HTML table; cells are trusted HTML; the first ``left`` columns are left-aligned."""
    head = "".join(f'<th class="{"l" if i < left else ""}">{h}</th>' for i, h in enumerate(headers))
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{row_classes[r]}"' if row_classes and row_classes[r] else ""
        body.append(f"<tr{cls}>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(row)) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def below_chance(ci: Any) -> bool:
    """True when a 95% CI ``(low, high)`` of an AUROC lies wholly under 0.5: the model ranks the
    negatives (for the in-view AUROC: the mimics) above the positives."""
    return bool(ci) and ci[1] is not None and float(ci[1]) < 0.5


def undefined(block: Any) -> bool:
    return isinstance(block, Mapping) and "value" in block and block.get("value") is None


def section(sid: str, body: str) -> str:
    title = dict(SECTIONS)[sid]
    return f'<section id="{sid}"><h2>{esc(title)}</h2>{body}</section>'


class Figures:
    """Plotly figures as divs (the library is inlined once in the page head)."""

    def __init__(self) -> None:
        self.count = 0

    def div(self, fig: Any, height: int) -> str:
        self.count += 1
        fig.update_layout(height=height, margin=dict(l=60, r=20, t=50, b=50), template="plotly_white",
                          font=dict(size=12), legend=dict(font=dict(size=11)))
        inner = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig{self.count}",
                            default_height=f"{height}px", config={"displaylogo": False, "responsive": True})
        return f'<div class="fig">{inner}</div>'


def colour(variant: str) -> str:
    return PALETTE.get(variant, "#444444")


# ---- sections ------------------------------------------------------------------------------------


def _variant_label(results: Mapping[str, Any], v: str) -> str:
    entry = (results.get("variants") or {}).get(v) or {}
    return f"<b>{esc(v)}</b><br><span class=\"ci\">{esc(entry.get('title', ''))}</span>"


def _auroc_cell(cell: Mapping[str, Any] | None, seed: Mapping[str, Any] | None, notes: Notes) -> str:
    if not cell:
        return notes.na("not evaluated")
    if cell.get("auroc") is None:
        return notes.na(cell.get("reason"))
    out = f"{float(cell['auroc']):.3f}<br>{ci_text(cell.get('ci'))}"
    if cell.get("ci") is None and cell.get("ci_reason"):
        out += notes.mark(f"no CI: {cell['ci_reason']}")
    if seed and seed.get("mean") is not None:
        out += f'<br><span class="ci">seeds {pm(seed.get("mean"), seed.get("sd"))}</span>'
    return out


def _excluded_note(cell: Mapping[str, Any], notes: Notes) -> str:
    """A note when a mean over heads left some out (e.g. too few studies for a bootstrap)."""
    excluded = cell.get("excluded_heads") or {}
    if not excluded:
        return ""
    kept = ", ".join(HEAD_TITLES.get(h, h) for h in cell.get("heads") or [])
    return notes.mark(f"mean over {kept} only; left out: " + "; ".join(f"{HEAD_TITLES.get(h, h)} ({r})" for h, r in excluded.items()))


def summary_section(results: Mapping[str, Any]) -> str:
    variants = results.get("variants") or {}
    data = results.get("data") or {}
    settings = results.get("settings") or {}
    timing = results.get("timing") or {}
    ref = results.get("reference", "i2m2")
    ok = [v for v, e in variants.items() if e.get("status") in ("ok", "partial")]
    test = (data.get("splits") or {}).get("test") or {}
    cards = [
        ("variants trained", f"{len(ok)} / {len(variants)}"),
        ("seeds per variant", str(settings.get("seeds"))),
        ("test split", f"{test.get('studies', 0)} studies, {test.get('slices', 0)} slices"),
        ("mode", "quick" if settings.get("quick") else "full"),
        ("wall time", f"{float(timing.get('total_s') or 0) / 60:.1f} min"),
    ]
    out = ['<div class="cards">' + "".join(f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{v}</div></div>' for k, v in cards) + "</div>"]
    issues = list(data.get("problems") or [])
    for v, e in variants.items():
        if e.get("status") == "failed":
            issues.append({"where": f"variant {v}", "reason": e.get("reason")})
        elif e.get("status") == "partial":
            for f in e.get("failed") or []:
                issues.append({"where": f"variant {v}, seed {f.get('seed')}", "reason": f"failed to train: {f.get('reason')}"})
    if issues:
        out.append('<div class="problems"><b>What could not be evaluated, and why</b><ul>' +
                   "".join(f"<li><b>{esc(i.get('where'))}</b>: {esc(i.get('reason'))}</li>" for i in issues) + "</ul></div>")
    else:
        out.append('<div class="okbox">Every variant trained with every seed; every split and head had both classes.</div>')
    out.append(f'<p class="explain">Mean AUROC over ACL, MTEAR and CART on the test split. Point estimates and 95&nbsp;% '
               f"bootstrap intervals are those of the seed ensemble (mean p(y=1) over the seeds); &ldquo;seeds&rdquo; gives the "
               f"mean &plusmn; sd of single models. &Delta; = AUROC({esc(ref)}) &minus; AUROC(variant): positive means "
               f"{esc(ref)} is better; p from the paired test of that level (see below).</p>")
    notes = Notes()
    rows, classes = [], []
    comps = results.get("comparisons") or {}
    for v, e in variants.items():
        cells = [_variant_label(results, v)]
        for level in ("slice", "study"):
            tbl = e.get("table") or {}
            block = tbl.get(level) if isinstance(tbl, Mapping) and not undefined(tbl) else None
            seed = ((e.get("seed_summary") or {}).get(level) or {}).get("mean_pathologies")
            if undefined(tbl):
                cells.append(notes.na(tbl.get("reason")))
            elif not block:
                cells.append(notes.na(tbl.get(f"{level}_reason") or "not evaluated"))
            else:
                cells.append(_auroc_cell(block.get("mean_pathologies"), seed, notes))
        for level in ("slice", "study"):
            if v == ref:
                cells.append('<span class="ci">reference</span>')
                continue
            c = comps.get(v) or {}
            if undefined(c):
                cells.append(notes.na(c.get("reason")))
                continue
            m = (c.get(level) or {}).get("mean_pathologies") or {}
            if m.get("diff") is None:
                cells.append(notes.na(m.get("reason")))
            else:
                cells.append(f"{float(m['diff']):+.3f}<br>{ci_text(m.get('ci'))}<br><span class=\"ci\">p = {pval(m.get('p'))}</span>"
                             + _excluded_note(m, notes))
        rows.append(cells)
        classes.append("ref" if v == ref else "")
    out.append(table(["variant", "slice AUROC", "study AUROC", f"&Delta; slice ({esc(ref)} &minus; variant)",
                      f"&Delta; study ({esc(ref)} &minus; variant)"], rows, row_classes=classes))
    out.append(notes.html())
    targets = results.get("targets") or {}
    claim = targets.get("regime_claim") or {}
    if claim and not undefined(claim):
        met = claim.get("all_met")
        word = "met" if met else ("not met" if met is False else "undetermined")
        css = "good" if met else ("bad" if met is False else "")
        out.append(f'<p>Regime-study claim (I2M2 &ge; max(intra, inter) &minus; {claim.get("tolerance")} in every regime, '
                   f'slice level): <span class="{css}">{word}</span> &mdash; see <a href="#regimes">Regime study</a>.</p>')
    return section("summary", "".join(out))


def data_section(results: Mapping[str, Any]) -> str:
    data = results.get("data") or {}
    out = []
    kv = [
        ("data folder", esc(data.get("root"))),
        ("synthetic cohort", "yes (i2m2_med.synth)" if data.get("synthetic") else "no"),
        ("formats", esc(", ".join(f"{k}: {v}" for k, v in (data.get("formats") or {}).items()))),
        ("studies / subjects", f"{data.get('studies')} / {data.get('subjects')}"),
        ("labels", esc(data.get("label_source"))),
        ("split", esc(data.get("split_source")) + " (by subject)" if not data.get("cv") else
         f"{esc((data.get('cv') or {}).get('folds'))}-fold cross-validation by subject: {esc((data.get('cv') or {}).get('what'))}; "
         "the train and val rows below are the cohort's own split, unused; the test row is every study"),
        ("tabular features", esc(", ".join(data.get("tabular_features") or []) or "none")),
        ("slice &rarr; study rule", esc(f"{(data.get('aggregation') or {}).get('rule')} (k={(data.get('aggregation') or {}).get('k')}); a study is positive when any slice is")),
        ("data fingerprint", f"<code>{esc(str(data.get('fingerprint', ''))[:16])}</code>"),
    ]
    out.append('<dl class="kv">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in kv) + "</dl>")
    checks = data.get("split_problems") or []
    if checks:
        out.append('<p class="explain">Split check, before any training: ' + "; ".join(esc(c) for c in checks) + ".</p>")
    rows = []
    for split in ("train", "val", "test"):
        b = (data.get("splits") or {}).get(split) or {}
        row = [split, num(b.get("studies")), num(b.get("subjects")), num(b.get("slices"))]
        for h in HEADS:
            ps = (b.get("positive_slices") or {}).get(h)
            pst = (b.get("positive_studies") or {}).get(h)
            prev = (b.get("study_prevalence") or {}).get(h)
            cell = f"{num(pst)} studies, {num(ps)} slices"
            if prev is not None:
                cell += f'<br><span class="ci">study prevalence {100 * float(prev):.0f}&nbsp;%</span>'
            if b.get("studies") and split != "train" and pst == 0:
                cell = f'<span class="bad">{cell}</span>'
            row.append(cell)
        rows.append(row)
    out.append("<h3>Splits and prevalence (positives per head)</h3>")
    out.append(table(["split", "studies", "subjects", "slices", *[HEAD_TITLES[h] for h in HEADS]], rows))
    problems = data.get("problems") or []
    if problems:
        out.append('<div class="problems"><b>Data problems</b><ul>' + "".join(f"<li><b>{esc(p.get('where'))}</b>: {esc(p.get('reason'))}</li>" for p in problems) + "</ul></div>")
    left = data.get("left_out") or []
    if left:
        out.append(f"<p class=\"explain\">{len(left)} file(s) left out of the cohort:</p><ul>" +
                   "".join(f"<li>{esc(p.get('where'))}: {esc(p.get('reason'))}</li>" for p in left[:20]) + "</ul>")
    manifest = data.get("manifest")
    if manifest:
        out.append(f"<p class=\"explain\">Synthetic generator {esc(manifest.get('generator_version'))}, seed {esc(manifest.get('seed'))}, "
                   f"regime <b>{esc(manifest.get('regime'))}</b>, label noise {esc(manifest.get('label_noise'))}.</p>")
    return section("data", "".join(out))


def discrimination_section(results: Mapping[str, Any]) -> str:
    out = ['<p class="explain">AUROC of p(y=1) on the test split, primary first: <b>in view</b> (each head on the slices where '
           "its anatomy is in view, from the synthetic cohort's episode table: a finding against its mimics and the quiet slices "
           "of the same anatomy, which the slice position cannot separate) and <b>study level</b>; the slice level, which the "
           "slice position alone mostly explains, last. Seed ensemble with its percentile bootstrap 95&nbsp;% CI, resampling "
           "whole subjects (the PD and PD-FS studies of one knee together), and below it the mean &plusmn; sd over seeds of single "
           "models. <b>Position only</b>: the training split's positive rate at the slice's relative position, the score that "
           "knows only which slice this is; a model worth its images beats it.</p>"]
    variants = dict(results.get("variants") or {})
    baseline = results.get("position_baseline")
    if isinstance(baseline, Mapping) and not undefined(baseline):
        variants["__position__"] = {"table": baseline}
    ref = results.get("reference", "i2m2")
    for level in ("in_view", "study", "slice"):
        if level == "in_view" and not any(isinstance(e.get("table"), Mapping) and (e.get("table") or {}).get("in_view")
                                          for e in variants.values()):
            out.append(f'<h3>{LEVEL_TITLES[level]}</h3><p class="na">Not available: the cohort has no episode table '
                       "(episodes.csv, written by the synthetic generator), so where each head's anatomy is in view is unknown.</p>")
            continue
        notes = Notes()
        rows, classes = [], []
        for v, e in variants.items():
            tbl = e.get("table") or {}
            block = None if undefined(tbl) else tbl.get(level)
            seeds = (e.get("seed_summary") or {}).get(level) or {}
            row = ["<i>position only</i>" if v == "__position__" else _variant_label(results, v)]
            for key in (*HEADS, "mean_pathologies", "mean_all"):
                if undefined(tbl):
                    row.append(notes.na(tbl.get("reason")))
                    continue
                if not block:
                    row.append(notes.na(tbl.get("study_reason") or "not evaluated"))
                    continue
                cell = block["per_head"].get(key) if key in HEADS else block.get(key)
                row.append(_auroc_cell(cell, seeds.get(key), notes))
            rows.append(row)
            classes.append("ref" if v == ref else "baseline" if v == "__position__" else "")
        first = next((e.get("table") for e in variants.values() if isinstance(e.get("table"), Mapping) and (e.get("table") or {}).get(level)), None)
        counts = ""
        if first:
            b = first[level]
            counts = " &mdash; " + ", ".join(f"{HEAD_TITLES[h]} {b['per_head'][h].get('n_pos')}/{b['per_head'][h].get('n')}" for h in HEADS) + " positive"
        out.append(f"<h3>{LEVEL_TITLES[level]}{counts}</h3>")
        out.append(table(["variant", *[HEAD_TITLES[h] for h in HEADS], HEAD_TITLES["mean_pathologies"], HEAD_TITLES["mean_all"]], rows, row_classes=classes))
        out.append(notes.html())
    return section("discrimination", "".join(out))


def comparisons_section(results: Mapping[str, Any]) -> str:
    ref = results.get("reference", "i2m2")
    comps = results.get("comparisons") or {}
    out = [f'<p class="explain">&Delta; = AUROC({esc(ref)}) &minus; AUROC(variant) on the same test cases (seed ensembles), '
           "by a paired bootstrap that resamples whole subjects at both levels: the PD and PD-FS studies of one knee share its "
           "findings, so neither its slices nor its studies are independent (DeLong's test would assume they are). The mean over "
           "ACL/MTEAR/CART resamples all heads together. The CI is the percentile interval of the replicates, p the two-sided "
           "bootstrap p-value of no difference; not adjusted for multiple comparisons.</p>"]
    if not comps:
        out.append(f'<p class="na">No comparison: the grid has only {esc(ref)}.</p>')
    for level in ("slice", "study"):
        notes = Notes()
        rows = []
        for v, c in comps.items():
            row = [_variant_label(results, v)]
            for key in (*HEADS, "mean_pathologies"):
                if undefined(c):
                    row.append(notes.na(c.get("reason")))
                    continue
                cell = (c.get(level) or {}).get("per_head", {}).get(key) if key in HEADS else (c.get(level) or {}).get(key)
                if not cell or cell.get("diff") is None:
                    row.append(notes.na((cell or {}).get("reason")))
                    continue
                ci = cell.get("diff_ci") or cell.get("ci")
                row.append(f"{float(cell['diff']):+.3f}<br>{ci_text(ci)}<br><span class=\"ci\">p = {pval(cell.get('p'))}</span>"
                           + _excluded_note(cell, notes))
            rows.append(row)
        method = next((c[level].get("method") for c in comps.values() if isinstance(c.get(level), Mapping) and c[level].get("method")),
                      "paired bootstrap")
        out.append(f"<h3>{LEVEL_TITLES[level]} ({esc(method)})</h3>")
        if rows:
            out.append(table(["variant", *[HEAD_TITLES[h] for h in HEADS], HEAD_TITLES["mean_pathologies"]], rows))
        out.append(notes.html())
    return section("comparisons", "".join(out))


def operating_section(results: Mapping[str, Any]) -> str:
    settings = results.get("settings") or {}
    out = [f'<p class="explain">Threshold chosen on the validation split ({esc(settings.get("operating_rule"))} rule, on the seed ensemble), '
           "then applied to the test split: sensitivity and specificity with Wilson 95&nbsp;% intervals.</p>"]
    for level in ("slice", "study"):
        notes = Notes()
        rows = []
        for v, e in (results.get("variants") or {}).items():
            tbl = e.get("table") or {}
            row = [_variant_label(results, v)]
            for h in HEADS:
                if undefined(tbl) or not tbl.get(level):
                    row.append(notes.na(tbl.get("reason") if undefined(tbl) else "not evaluated"))
                    continue
                cell = tbl[level]["per_head"][h]
                if cell.get("threshold") is None:
                    row.append(notes.na(cell.get("threshold_reason")))
                    continue
                ss = cell.get("sens_spec") or {}
                parts = [f'<span class="ci">t = {float(cell["threshold"]):.3f}</span>']
                for key, short in (("sensitivity", "Se"), ("specificity", "Sp")):
                    pr = ss.get(key) or {}
                    if pr.get("value") is None:
                        parts.append(f"{short} {notes.na(f'no {key}: the test split has no ' + ('positives' if key == 'sensitivity' else 'negatives') + ' for this head')}")
                    else:
                        parts.append(f"{short} {float(pr['value']):.2f} {ci_text([pr.get('low'), pr.get('high')], 2)}")
                row.append("<br>".join(parts))
            rows.append(row)
        out.append(f"<h3>{LEVEL_TITLES[level]}</h3>")
        out.append(table(["variant", *[HEAD_TITLES[h] for h in HEADS]], rows))
        out.append(notes.html())
    return section("operating", "".join(out))


def calibration_section(results: Mapping[str, Any], figs: Figures) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    settings = results.get("settings") or {}
    out = [f'<p class="explain">Expected calibration error (ECE, {esc(settings.get("n_bins"))} equal-width bins of p(y=1); 0 is perfect) '
           "of the seed ensembles, and the slice-level reliability diagram: observed fraction of positives against the mean predicted "
           "probability per bin (marker size ~ number of slices); the diagonal is perfect calibration. The diagram shows I2M2, intra "
           "and inter; click a legend entry to add the others. With <code>training.calibration: prior</code> (the default) each "
           "trained model&rsquo;s prior was refitted on the validation slices, so that class-weighted training does not leave it "
           "with the probabilities of a balanced cohort; the model card says which was used.</p>"]
    notes = Notes()
    rows = []
    variants = results.get("variants") or {}
    for v, e in variants.items():
        tbl = e.get("table") or {}
        row = [_variant_label(results, v)]
        for level in ("slice", "study"):
            for h in HEADS:
                if undefined(tbl) or not tbl.get(level):
                    row.append(notes.na(tbl.get("reason") if undefined(tbl) else "not evaluated"))
                    continue
                cell = tbl[level]["per_head"][h]
                row.append(num(cell.get("ece")) if cell.get("ece") is not None else notes.na(cell.get("reason") or "empty split"))
        rows.append(row)
    out.append(table(["variant", *[f"{HEAD_TITLES[h]}<br>slice" for h in HEADS], *[f"{HEAD_TITLES[h]}<br>study" for h in HEADS]], rows))
    out.append(notes.html())
    fig = make_subplots(rows=1, cols=4, subplot_titles=[HEAD_TITLES[h] for h in HEADS], horizontal_spacing=0.05)
    any_trace = False
    for col, h in enumerate(HEADS, start=1):
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#999", dash="dot"), showlegend=False, hoverinfo="skip"), 1, col)
        for v, e in variants.items():
            tbl = e.get("table") or {}
            if undefined(tbl) or not tbl.get("slice"):
                continue
            rel = tbl["slice"]["per_head"][h].get("reliability")
            if not rel:
                continue
            counts = rel.get("counts") or []
            size = [max(5.0, min(18.0, 4.0 + 2.0 * (c ** 0.5) / 3.0)) for c in counts]
            fig.add_trace(go.Scatter(x=rel["mean_pred"], y=rel["frac_pos"], mode="lines+markers", name=v, legendgroup=v,
                                     showlegend=col == 1, line=dict(color=colour(v)), marker=dict(size=size),
                                     visible=True if v in FOCUS or len(variants) <= 3 else "legendonly",
                                     text=[f"n={c}" for c in counts],
                                     hovertemplate=f"{v}<br>mean p %{{x:.3f}}<br>observed %{{y:.3f}}<br>%{{text}}<extra></extra>"), 1, col)
            any_trace = True
        fig.update_xaxes(range=[0, 1], title_text="mean predicted p", row=1, col=col)
        fig.update_yaxes(range=[0, 1], row=1, col=col)
    fig.update_yaxes(title_text="observed fraction positive", row=1, col=1)
    fig.update_layout(title="Reliability diagram (slice level, test split)")
    if any_trace:
        out.append(figs.div(fig, 380))
    else:
        out.append('<p class="na">No reliability diagram: no variant has test predictions.</p>')
    return section("calibration", "".join(out))


def roc_section(results: Mapping[str, Any], figs: Figures) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    roc = results.get("roc") or {}
    out = ['<p class="explain">ROC curves of the seed ensembles on the test split, all variants overlaid (click a legend entry '
           "to hide a variant in every panel). Top: slices; bottom: studies.</p>"]
    fig = make_subplots(rows=2, cols=4, subplot_titles=[f"{HEAD_TITLES[h]} \u2014 {lv}" for lv in ("slices", "studies") for h in HEADS],
                        horizontal_spacing=0.05, vertical_spacing=0.12)
    missing: dict[str, list[str]] = {}
    for r, level in enumerate(("slice", "study"), start=1):
        for c, h in enumerate(HEADS, start=1):
            fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#bbb", dash="dot"), showlegend=False, hoverinfo="skip"), r, c)
            for v, curves in roc.items():
                if undefined(curves):
                    continue
                cur = (curves.get(level) or {}).get(h) or {}
                if cur.get("fpr") is None:
                    missing.setdefault(str(cur.get("reason")), [])
                    where = f"{HEAD_TITLES[h]} ({'slices' if level == 'slice' else 'studies'})"
                    if where not in missing[str(cur.get("reason"))]:
                        missing[str(cur.get("reason"))].append(where)
                    continue
                fig.add_trace(go.Scatter(x=cur["fpr"], y=cur["tpr"], mode="lines", name=v, legendgroup=v,
                                         showlegend=(r == 1 and c == 1), line=dict(color=colour(v), width=2 if v == "i2m2" else 1.4),
                                         hovertemplate=f"{v} (AUROC {cur.get('auroc', 0):.3f})<br>FPR %{{x:.3f}}<br>TPR %{{y:.3f}}<extra></extra>"), r, c)
            fig.update_xaxes(range=[0, 1], row=r, col=c, title_text="1 - specificity" if r == 2 else None)
            fig.update_yaxes(range=[0, 1], row=r, col=c, title_text="sensitivity" if c == 1 else None)
    out.append(figs.div(fig, 640))
    failed = [f"{v}: {curves.get('reason')}" for v, curves in roc.items() if undefined(curves)]
    reasons = [f"{', '.join(wheres)}: {why}" for why, wheres in missing.items()]
    if reasons or failed:
        out.append("<p class=\"explain\">Not drawn:</p>" + '<ol class="notes">' + "".join(f"<li>{esc(t)}</li>" for t in failed + reasons) + "</ol>")
    return section("roc", "".join(out))


def evidence_section(results: Mapping[str, Any], figs: Figures) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    ev = results.get("evidence") or {}
    ref = results.get("reference", "i2m2")
    out = [f'<p class="explain">The product&rsquo;s log-odds are the sum of the experts&rsquo; log-odds, so each expert&rsquo;s term is its '
           f"additive contribution. An expert <i>drives</i> a decision of {esc(ref)} (p &ge; {esc(ev.get('threshold', 0.5))}) when its "
           "contribution in the decision&rsquo;s direction is the largest; <i>prior</i> is the product&rsquo;s class prior (refitted on validation "
           "after training, see <code>training.calibration</code>), which sees no input: where it drives, the base rate decides. "
           "Fractions over the clean test slices, averaged over seeds. "
           "The agreement matrix gives how often two experts, each deciding alone (p &ge; 0.5), agree.</p>"]
    if undefined(ev) or "driving" not in ev:
        out.append(f'<div class="problems">No evidence summary: {esc(ev.get("reason"))}</div>')
        return section("evidence", "".join(out))
    experts = list(ev["experts"]) + ["none"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=["all test slices", "slices the product calls positive"], horizontal_spacing=0.08)
    for col, key in ((1, "driving"), (2, "driving_positive")):
        for name in experts:
            ys = [ev[key][h].get(name) for h in HEADS]
            if name == "none" and not any(y for y in ys if y):
                continue
            fig.add_trace(go.Bar(x=[HEAD_TITLES[h] for h in HEADS], y=[0 if y is None else y for y in ys], name=name, legendgroup=name,
                                 showlegend=col == 1, marker_color=EXPERT_COLOURS.get(name, "#444"),
                                 hovertemplate=f"{name}: %{{y:.1%}}<extra></extra>"), 1, col)
        fig.update_yaxes(range=[0, 1], tickformat=".0%", row=1, col=col)
    fig.update_layout(barmode="stack", title=f"Which expert drives the {ref} decision")
    out.append(figs.div(fig, 360))
    notes = Notes()
    rows = []
    for h in HEADS:
        row = [HEAD_TITLES[h]]
        for name in ev["experts"]:
            a = ev["driving"][h].get(name)
            p = ev["driving_positive"][h].get(name)
            m = ev["mean_abs_contribution"][h].get(name)
            pos = f"{100 * p:.0f}&nbsp;%" if p is not None else notes.na(ev.get("driving_positive_reason", {}).get(h) or "no positive decision")
            row.append(f"{100 * a:.0f}&nbsp;% / {pos}<br><span class=\"ci\">|contribution| {num(m, 2)} nats</span>" if a is not None else notes.na("undefined"))
        row.append(num((ev.get("positive_decisions") or {}).get(h)))
        rows.append(row)
    out.append(f"<h3>Driving frequency (all slices / positive decisions) and mean |log-odds contribution|, {esc(ev.get('seeds'))} seed(s), {esc(ev.get('slices'))} slices</h3>")
    out.append(table(["head", *ev["experts"], "positive decisions (sum over seeds)"], rows))
    out.append(notes.html())
    names = ev["agreement_experts"]
    fig2 = make_subplots(rows=1, cols=4, subplot_titles=[HEAD_TITLES[h] for h in HEADS], horizontal_spacing=0.06)
    for c, h in enumerate(HEADS, start=1):
        z = ev["agreement"][h]
        text = [["n/a" if v is None else f"{v:.2f}" for v in row] for row in z]
        fig2.add_trace(go.Heatmap(z=[[None if v is None else v for v in row] for row in z], x=names, y=names, zmin=0, zmax=1,
                                  colorscale="Blues", showscale=c == 4, text=text, texttemplate="%{text}",
                                  hovertemplate="%{y} vs %{x}: %{z:.2f}<extra></extra>"), 1, c)
        fig2.update_yaxes(autorange="reversed", row=1, col=c)
    fig2.update_layout(title="Agreement between the experts' own decisions (fraction of test slices)")
    out.append(figs.div(fig2, 340))
    return section("evidence", "".join(out))


SELECTIVE_VARIANTS = ("i2m2", "intra")
"""Variants drawn in the selective-prediction section (those of several experts that the report
focuses on)."""


def selective_section(results: Mapping[str, Any], figs: Figures) -> str:
    """Coverage against study-level AUROC when the studies whose experts disagree most are set
    aside for human review (``results["selective"]``, :mod:`i2m2_med.metrics.selective`)."""
    import plotly.graph_objects as go

    block = results.get("selective") or {"value": None, "reason": "not in these results"}
    split = esc(block.get("split") or "test")
    out = [f'<p class="explain">Per study, the experts&rsquo; disagreement: the standard deviation of the experts&rsquo; own '
           f"study-level log-odds (each expert&rsquo;s slice probabilities aggregated by the model&rsquo;s rule; the class prior is "
           f"not an expert), averaged over ACL/MTEAR/CART. The {split} studies are sorted by it; at each coverage the least "
           f"disagreeing studies are kept and the most disagreeing ones are <b>set aside for human review</b>. The curve is the "
           f"study-level AUROC (mean ACL/MTEAR/CART, seed ensemble) on the kept {split} studies. A curve that rises as coverage "
           f"falls means disagreement finds the studies the model gets wrong.</p>"]
    if undefined(block):
        out.append(f'<p class="na">{esc(block.get("reason"))}</p>')
        return section("selective", "".join(out))
    variants = block.get("variants") or {}
    fig = go.Figure()
    notes = Notes()
    rows = []
    drawn = 0
    for v in SELECTIVE_VARIANTS:
        curve = variants.get(v)
        if curve is None:
            continue
        if undefined(curve):
            rows.append([esc(v), notes.na(curve.get("reason"))])
            continue
        pts = [p for p in curve.get("points") or [] if p.get("mean_auroc") is not None]
        if pts:
            drawn += 1
            fig.add_trace(go.Scatter(
                x=[p["coverage"] for p in pts], y=[p["mean_auroc"] for p in pts], mode="lines+markers", name=v,
                line=dict(color=colour(v)), customdata=[[p["kept"], p["set_aside"]] for p in pts],
                hovertemplate=f"{v}: coverage %{{x:.0%}} (%{{customdata[0]}} kept, %{{customdata[1]}} set aside)<br>"
                              "AUROC %{y:.3f}<extra></extra>"))
        cells = []
        for p in curve.get("points") or []:
            if p.get("mean_auroc") is None:
                cells.append(notes.na(p.get("reason")))
                continue
            left = [h for h in PATHOLOGY_HEADS if h not in (p.get("heads") or [])]
            mark = notes.mark("; ".join(f"{HEAD_TITLES[h]} left out: {(p['per_head'].get(h) or {}).get('reason')}" for h in left)) if left else ""
            cells.append(f"{num(p['mean_auroc'])}{mark}<br><span class=\"ci\">{p['kept']} kept, {p['set_aside']} set aside</span>")
        rows.append([esc(v), *cells])
    coverages = [p["coverage"] for c in variants.values() if not undefined(c) for p in c.get("points") or []]
    coverages = sorted(set(coverages), reverse=True)
    if drawn:
        fig.update_layout(title=f"Coverage against AUROC, most disagreeing {split} studies set aside",
                          xaxis=dict(title=f"coverage (fraction of {split} studies kept)", tickformat=".0%", autorange="reversed"),
                          yaxis=dict(title="study-level AUROC, mean ACL/MTEAR/CART"))
        out.append(figs.div(fig, 380))
        out.append(f'<p class="explain">Figure: the seed ensemble&rsquo;s study-level AUROC on the {split} studies kept at each '
                   "coverage; the rest, those whose experts disagree most, are set aside for human review.</p>")
    width = max([len(r) - 1 for r in rows] or [0])
    headers = ["variant", *[f"{100 * c:.0f}&nbsp;%" for c in coverages]] if coverages else ["variant", "coverage curve"]
    rows = [r + [""] * (max(width, len(headers) - 1) - (len(r) - 1)) for r in rows]
    if rows:
        out.append(f"<h3>Study-level AUROC (mean ACL/MTEAR/CART) by coverage, {split} split</h3>")
        out.append(table(headers, rows))
        out.append(notes.html())
    return section("selective", "".join(out))


def _clean_mean(results: Mapping[str, Any], variant: str, seeds: Sequence[Any]) -> float | None:
    """Mean over the robustness seeds of the clean slice-level mean AUROC (ACL/MTEAR/CART)."""
    per = ((results.get("variants") or {}).get(variant) or {}).get("per_seed") or {}
    vals = [((per.get(str(s)) or {}).get("slice") or {}).get("mean_pathologies", {}).get("value") for s in seeds]
    vals = [float(v) for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


MASK_DASH = {"random": "solid", "equispaced": "dash"}
"""Line style of each undersampling mask in the robustness plot."""
MASK_STYLE_WORD = {"solid": "solid", "dash": "dashed", "dot": "dotted"}


def robustness_section(results: Mapping[str, Any], figs: Figures) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rob = results.get("robustness") or {}
    out = ['<p class="explain">Test-split mean AUROC over ACL/MTEAR/CART (slice level) of models whose inputs are changed at test time: '
           "a modality withheld (its experts leave the product), k-space undersampled retrospectively with fastMRI masks "
           "(8&nbsp;% fully sampled centre; zero-filled reconstruction: the point-of-care question), or complex Gaussian noise "
           "added to k-space (sigma relative to the slice&rsquo;s image RMS). Mean over the "
           f"robustness seeds ({esc(', '.join(str(s) for s in rob.get('seeds', [])))}); in brackets the change from the clean data.</p>"]
    if not rob or not rob.get("conditions"):
        out.append('<p class="na">Robustness study not run (turned off).</p>')
        return section("robustness", "".join(out))
    conds = rob["conditions"]
    groups = [("missing modality", "drop"), ("k-space undersampling", "undersample"), ("added noise", "noise")]
    fig = make_subplots(rows=1, cols=3, subplot_titles=[g for g, _ in groups], horizontal_spacing=0.07, column_widths=[0.3, 0.42, 0.28])
    for col, (title, kind) in enumerate(groups, start=1):
        here = [c for c in conds if c["kind"] == kind]
        for v, per in (rob.get("variants") or {}).items():
            if undefined(per):
                continue
            clean = _clean_mean(results, v, rob.get("seeds") or [])
            if clean is not None:
                fig.add_trace(go.Scatter(x=["clean"], y=[clean], mode="markers", name=v, legendgroup=v, showlegend=False,
                                         marker=dict(size=9, color=colour(v), symbol="diamond-open"),
                                         hovertemplate=f"{v}, clean: %{{y:.3f}}<extra></extra>"), 1, col)
            if kind == "undersample":
                masks = sorted({c["mask"] for c in here})
                for mask in masks:
                    cs = [c for c in here if c["mask"] == mask]
                    xs = [f"R={c['acceleration']}" for c in cs]
                    ys = [((per.get(c["name"]) or {}).get("slice") or {}).get("mean_pathologies", {}).get("mean") for c in cs]
                    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=v, legendgroup=v, showlegend=False,
                                             line=dict(color=colour(v), dash=MASK_DASH.get(mask, "dot")),
                                             hovertemplate=f"{v}, {mask} mask, %{{x}}: %{{y:.3f}}<extra></extra>"), 1, col)
            else:
                xs = [c["label"].replace("without ", "no ").replace("noise sigma = ", "").replace(" x image RMS", "") for c in here]
                ys = [((per.get(c["name"]) or {}).get("slice") or {}).get("mean_pathologies", {}).get("mean") for c in here]
                fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers" if kind == "drop" else "lines+markers", name=v, legendgroup=v,
                                         showlegend=col == 1, marker=dict(size=9, color=colour(v)), line=dict(color=colour(v)),
                                         hovertemplate=f"{v}, %{{x}}: %{{y:.3f}}<extra></extra>"), 1, col)
        fig.update_yaxes(title_text="mean AUROC" if col == 1 else None, row=1, col=col)
    present = sorted({c["mask"] for c in conds if c["kind"] == "undersample"})
    styles = "; ".join(f"{MASK_STYLE_WORD[MASK_DASH.get(m, 'dot')]}: {m} mask" for m in present)
    fig.update_layout(title="Robustness (open diamond: clean data" + (f"; {styles}" if styles else "") + ")")
    out.append(figs.div(fig, 400))
    notes = Notes()
    rows = []
    for v, per in (rob.get("variants") or {}).items():
        row = [_variant_label(results, v)]
        for c in conds:
            if undefined(per):
                row.append(notes.na(per.get("reason")))
                continue
            entry = per.get(c["name"]) or {}
            if undefined(entry):
                row.append(notes.na(entry.get("reason")))
                continue
            cell = (entry.get("slice") or {}).get("mean_pathologies") or {}
            if cell.get("mean") is None:
                row.append(notes.na(cell.get("reason")))
                continue
            delta = f'<br><span class="ci">({float(cell["delta"]):+.3f})</span>' if cell.get("delta") is not None else ""
            extra = notes.mark(entry["partial_reason"]) if entry.get("partial_reason") else ""
            row.append(f"{float(cell['mean']):.3f}{delta}{extra}")
        rows.append(row)
    out.append("<h3>Mean AUROC over ACL/MTEAR/CART (slice level) under each condition</h3>")
    out.append(table(["variant", *[esc(c["label"]) for c in conds]], rows))
    for name, note in (rob.get("notes") or {}).items():
        notes.mark(f"{name}: {note}")
    out.append(notes.html())
    return section("robustness", "".join(out))


def regime_section(results: Mapping[str, Any], figs: Figures) -> str:
    import plotly.graph_objects as go

    study = results.get("regime_study") or {}
    out = ['<p class="explain">The paper&rsquo;s claim on synthetic cohorts whose evidence lives within modalities (<b>intra</b>: each '
           "modality alone is informative), across them (<b>inter</b>: only the co-location of a magnitude and a phase cue is), or "
           "both (<b>mixed</b>). One cohort per regime (same generator seed and size), I2M2 against the product of unimodal "
           "experts (intra) and the joint model (inter), each over the seeds. Mean AUROC over ACL/MTEAR/CART on the test split; "
           "the label-noise ceiling is the AUROC of a perfect predictor of the true findings against the annotated labels on the same slices.</p>"]
    if undefined(study):
        out.append(f'<div class="problems">{esc(study.get("reason"))}</div>')
        return section("regimes", "".join(out))
    regimes = study.get("regimes") or {}
    fig = go.Figure()
    lowest = 1.0
    for v in study.get("variants", []):
        xs, ys, err = [], [], []
        for regime, block in regimes.items():
            cell = ((((block.get("variants") or {}).get(v) or {}).get("seed_summary") or {}).get("slice") or {}).get("mean_pathologies") or {}
            xs.append(regime)
            ys.append(cell.get("mean"))
            err.append(cell.get("sd") or 0.0)
            if cell.get("mean") is not None:
                lowest = min(lowest, float(cell["mean"]) - float(cell.get("sd") or 0.0))
        fig.add_trace(go.Bar(x=xs, y=ys, name=v, marker_color=colour(v), error_y=dict(type="data", array=err, visible=True),
                             hovertemplate=f"{v}, %{{x}}: %{{y:.3f}}<extra></extra>"))
    ox = [r for r, b in regimes.items() if ((b.get("label_noise_ceiling") or {}).get("mean_pathologies")) is not None]
    oy = [regimes[r]["label_noise_ceiling"]["mean_pathologies"] for r in ox]
    if ox:
        fig.add_trace(go.Scatter(x=ox, y=oy, mode="markers", name="label-noise ceiling", marker=dict(symbol="line-ew", size=40, line=dict(width=3, color="#222"))))
    fig.update_layout(barmode="group", title="Regime study: mean AUROC (slice level), error bars = sd over seeds", yaxis=dict(range=[max(0.0, min(0.4, lowest - 0.05)), 1.02], title="mean AUROC"))
    out.append(figs.div(fig, 420))
    for level in ("slice", "study"):
        notes = Notes()
        rows = []
        targets = ((study.get("targets") or {}).get(level) or {}).get("per_regime") or {}
        for regime, block in regimes.items():
            if undefined(block):
                rows.append([esc(regime), *([notes.na(block.get("reason"))] * 7)])
                continue
            row = [f"<b>{esc(regime)}</b><br><span class=\"ci\">{esc(block.get('source'))}: {esc(block.get('volumes'))} studies, "
                   f"{esc(block.get('test_studies'))} in test; seeds {esc(', '.join(str(x) for x in block.get('seeds') or []))}</span>"]
            for v in study.get("variants", []):
                entry = (block.get("variants") or {}).get(v) or {}
                cell = ((entry.get("seed_summary") or {}).get(level) or {}).get("mean_pathologies") or {}
                row.append(pm(cell.get("mean"), cell.get("sd")) if cell.get("mean") is not None else notes.na(cell.get("reason") or entry.get("reason")))
            ceiling = (block.get("label_noise_ceiling") or {})
            row.append(num(ceiling.get("mean_pathologies")) if ceiling.get("mean_pathologies") is not None else notes.na(ceiling.get("reason") or "unknown"))
            for other in ("intra", "inter"):
                m = (block.get("margins") or {}).get(other) or {}
                c = m.get(level) if level in m else m
                if not c or c.get("diff") is None:
                    row.append(notes.na((c or {}).get("reason")))
                else:
                    row.append(f"{float(c['diff']):+.3f} {ci_text(c.get('ci'))}<br><span class=\"ci\">p = {pval(c.get('p'))}</span>"
                               + _excluded_note(c, notes))
            t = targets.get(regime) or {}
            if t.get("met") is None:
                row.append(notes.na(t.get("reason")))
            else:
                row.append(f'<span class="{"good" if t["met"] else "bad"}">{"met" if t["met"] else "not met"}</span><br><span class="ci">margin {float(t["margin_over_best"]):+.3f}</span>')
            rows.append(row)
        out.append(f"<h3>{LEVEL_TITLES[level]}</h3>")
        out.append(table(["regime", *[f"{esc(v)}<br>mean &plusmn; sd" for v in study.get("variants", [])], "label-noise ceiling",
                          "I2M2 &minus; intra<br>(ensemble, 95% CI)", "I2M2 &minus; inter<br>(ensemble, 95% CI)",
                          f"I2M2 &ge; max(intra, inter) &minus; {esc(((study.get('targets') or {}).get(level) or {}).get('tolerance'))}"], rows))
        out.append(notes.html())
    view_rows = []
    notes = Notes()
    for regime, block in regimes.items():
        iv = block.get("in_view") if isinstance(block, Mapping) else None
        if not isinstance(iv, Mapping):
            continue
        if undefined(iv):
            view_rows.append([esc(regime), *([notes.na(iv.get("reason"))] * len(study.get("variants", [])))])
            continue
        row = [esc(regime)]
        for v in study.get("variants", []):
            cell = iv.get(v) or {}
            ci = cell.get("ci")
            row.append(f"{num(cell['value'])} {ci_text(ci)}" + ('<br><span class="bad">below chance</span>' if below_chance(ci) else "")
                       if cell.get("value") is not None else notes.na(cell.get("reason") or "no result"))
        view_rows.append(row)
    if view_rows:
        out.append("<h3>Findings against their mimics: in-view AUROC (seed ensemble, 95% CI)</h3>")
        out.append('<p class="explain">Each head scored only on the test slices where its anatomy is in view (inside an '
                   "episode of the cohort&rsquo;s <code>episodes.csv</code>, finding or mimic). Every variant learns where "
                   "findings can lie; this AUROC asks whether it also tells a finding from the mimics around it (0.5: it does not; "
                   "<span class=\"bad\">below chance</span>, the whole CI under 0.5: it ranks the mimics above the findings).</p>")
        out.append(table(["regime", *[esc(v) for v in study.get("variants", [])]], view_rows))
        out.append(notes.html())
    bayes_rows = []
    for regime, block in regimes.items():
        eb = block.get("episode_bayes_auroc") if isinstance(block, Mapping) else None
        if isinstance(eb, Mapping):
            bayes_rows.append([esc(regime), *[num(eb.get(k, eb.get("both") if k == "joint" else None)) for k in ("magnitude", "phase", "joint")]])
    if bayes_rows:
        out.append("<h3>Generator design: episode-level Bayes AUROC of one finding-vs-mimic episode</h3>")
        out.append(table(["regime", "magnitude alone", "phase alone", "magnitude and phase jointly"], bayes_rows))
    out.append(f'<p class="explain">Generated cohorts: {esc(study.get("volumes"))} volumes each (generator seed {esc(study.get("cohort_seed"))}, '
               f"label noise {esc(study.get('label_noise'))}), seeds {esc(study.get('seeds'))}, at most {esc(study.get('epochs'))} epochs. A regime marked "
               "&ldquo;the ablated cohort&rdquo; reuses the main grid (its cohort, seeds and epochs). "
               f"{float(study.get('seconds') or 0) / 60:.1f} min. Targets are recorded as measured; the evaluation is the same whatever the outcome.</p>")
    return section("regimes", "".join(out))


def _kv_text(d: Mapping[str, Any]) -> str:
    return "; ".join(f"{k.replace('_', ' ')}: {', '.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for k, v in d.items())


def card_section(results: Mapping[str, Any]) -> str:
    card = results.get("model_card") or {}
    timing = results.get("timing") or {}
    out = ['<p class="explain">In the spirit of TRIPOD+AI and CLAIM: what the models are for, what data they saw, how they were '
           "evaluated, and what limits the conclusions.</p>"]
    kv = [
        ("Intended use", f"<b>{esc(card.get('intended_use'))}</b> &mdash; {esc(card.get('intended_use_detail'))}"),
        ("Data source", esc(card.get("data_source"))),
        ("Participants", esc(", ".join(f"{k}: {v}" for k, v in (card.get("participants") or {}).items()))),
        ("Outcomes", esc(card.get("outcomes"))),
        ("Predictors", esc((card.get("predictors") or {}).get("images")) + "; tabular: " + esc(", ".join((card.get("predictors") or {}).get("tabular") or []) or "none")),
        ("Splits", esc((card.get("splits") or {}).get("rule")) + "; " + esc((card.get("splits") or {}).get("source")) + "; " +
         "; ".join(f"{s}: {esc((card.get('splits') or {}).get(s, {}).get('studies'))} studies / {esc((card.get('splits') or {}).get(s, {}).get('slices'))} slices" for s in ("train", "val", "test"))),
        ("Missing data", esc(card.get("missing_data"))),
        ("Model and training", esc(_kv_text(card.get("model") or {}))),
        ("Evaluation", esc((card.get("evaluation") or {}).get("metrics"))),
        ("Compute", esc(_kv_text(card.get("compute") or {})) + f"; wall time {float(timing.get('total_s') or 0):.0f} s"),
    ]
    out.append('<dl class="kv">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in kv) + "</dl>")
    prev_rows = []
    for split in ("train", "val", "test"):
        p = (card.get("prevalence") or {}).get(split) or {}
        prev_rows.append([split, *[(f"{100 * float(p['study'][h]):.0f}&nbsp;% / {100 * float(p['slice'][h]):.1f}&nbsp;%"
                                    if (p.get("study") or {}).get(h) is not None and (p.get("slice") or {}).get(h) is not None else "&ndash;") for h in HEADS]])
    out.append("<h3>Prevalence (study / slice)</h3>")
    out.append(table(["split", *[HEAD_TITLES[h] for h in HEADS]], prev_rows))
    out.append("<h3>Checklist items</h3>")
    out.append(table(["item", "where / what"], [[esc(a), esc(b)] for a, b in card.get("tripod_claim") or []], left=2))
    out.append("<h3>Limitations</h3><ul>" + "".join(f"<li>{esc(x)}</li>" for x in card.get("limitations") or []) + "</ul>")
    out.append("<h3>Software versions</h3>")
    out.append(table(["package", "version"], [[esc(k), esc(v)] for k, v in (card.get("software") or {}).items()], left=2))
    out.append("<h3>Command</h3><pre>" + esc(card.get("command") or results.get("command")) + "</pre>")
    out.append("<h3>Configuration</h3><pre>" + esc(card.get("config_yaml")) + "</pre>")
    out.append("<h3>Ablation settings</h3><pre>" + esc(json.dumps(results.get("settings") or {}, indent=1)) + "</pre>")
    return section("card", "".join(out))


def runs_section(results: Mapping[str, Any]) -> str:
    timing = results.get("timing") or {}
    out = [f'<p class="explain">Every (variant, seed) of the main grid: trained now, reused from the cache (same data fingerprint, '
           f"variant, seed, config and version) or failed (with the reason). Wall-clock: total {float(timing.get('total_s') or 0):.0f} s, "
           f"training {float(timing.get('train_s') or 0):.0f} s, prediction {float(timing.get('eval_s') or 0):.0f} s, statistics "
           f"{float(timing.get('stats_s') or 0):.0f} s, regime study {float(timing.get('regime_study_s') or 0):.0f} s; CPU time "
           f"{float(timing.get('cpu_s') or 0):.0f} s on {esc(timing.get('cpu_count'))} cores; load average {esc(timing.get('load_average_start'))} "
           f"at the start, {esc(timing.get('load_average_end'))} at the end ({esc(timing.get('note'))}).</p>"]
    rows = []
    for r in results.get("runs") or []:
        t = r.get("training") or {}
        status = r.get("status")
        css = "bad" if status == "failed" else ""
        rows.append([esc(r.get("variant")), esc(r.get("seed")), f'<span class="{css}">{esc(status)}</span>', num(t.get("epochs_run")),
                     num(t.get("best_val_auroc_mean")), num(t.get("time_s"), 1), num(t.get("samples_per_s"), 1),
                     esc(r.get("reason") or "")])
    out.append(table(["variant", "seed", "status", "epochs", "best val AUROC", "train s", "slices/s", "reason"], rows, left=3))
    return section("runs", "".join(out))


# ---- the page -------------------------------------------------------------------------------------


def render_report(results: Mapping[str, Any]) -> str:
    """The whole report (one HTML string, plotly inlined once, no external resource)."""
    from plotly.offline import get_plotlyjs

    from .claim import claim_section  # it builds on this module's helpers

    figs = Figures()
    body = "\n".join([
        summary_section(results),
        data_section(results),
        discrimination_section(results),
        comparisons_section(results),
        operating_section(results),
        calibration_section(results, figs),
        roc_section(results, figs),
        evidence_section(results, figs),
        selective_section(results, figs),
        robustness_section(results, figs),
        regime_section(results, figs),
        claim_section(results, figs),
        card_section(results),
        runs_section(results),
    ])
    settings = results.get("settings") or {}
    data = results.get("data") or {}
    subtitle = (f"{esc(data.get('root'))} &middot; {len(settings.get('variants') or [])} variants &times; {esc(settings.get('seeds'))} seed(s) "
                f"&middot; config {esc((results.get('config') or {}).get('name'))} &middot; {'quick' if settings.get('quick') else 'full'} mode "
                f"&middot; {esc(results.get('created'))}")
    template = string.Template((HERE / "ablation.html").read_text(encoding="utf-8"))
    plotlyjs = get_plotlyjs().replace("</script", "<\\/script")
    return template.substitute(
        title="I2M2 ablation report",
        subtitle=subtitle,
        version=esc((results.get("model_card") or {}).get("software", {}).get("i2m2-med", "")),
        style=(HERE / "ablation.css").read_text(encoding="utf-8"),
        plotlyjs=plotlyjs,
        toc="".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title in SECTIONS),
        body=body,
        footer=f"Generated by i2m2-med from results.json ({esc(results.get('schema'))}). Command: <code>{esc(results.get('command'))}</code>. "
               "Research use only.",
    )
