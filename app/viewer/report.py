"""The per-study report: JSON (machine-readable) and self-contained HTML (no script, no external
resource: inline CSS, inline SVG charts and embedded PNG images).

Both are de-identified the same way as the page and as ``diagnose`` (:mod:`i2m2_med.privacy`):
the study id is hashed, raw ids in the notes are replaced by their hashes, and the source path is
left out unless the user opted in to identifiers.
"""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

import numpy as np

from i2m2_med import __version__
from i2m2_med.evidence import agreement_matrix, contributions, driving_expert
from i2m2_med.heads import EXPERT_COLORS, HEADS, expert_title, head_title
from i2m2_med.privacy import id_rule, scrub_ids
from viewer.compute import slice_output, study_output
from viewer.figures import data_uri

RESEARCH_NOTICE = ("RESEARCH USE ONLY. Not a medical device; not for clinical diagnosis or treatment "
                   "decisions. Probabilities are model estimates.")


def deidentified_notes(notes: Iterable[Any], raw_ids: Iterable[Any], shown_id: str) -> list[str]:
    """``notes`` with every raw id of ``raw_ids`` (study id, patient id) replaced by its hash --
    :func:`i2m2_med.privacy.scrub_ids`, the rule of ``diagnose`` and ``inspect`` -- except an id that
    is already the one shown (a batch run's hashed id)."""
    ids = [r for r in raw_ids if r and str(r) != str(shown_id)]
    return [scrub_ids(str(n), ids) for n in notes]


def head_evidence(pred: Any) -> dict[str, dict[str, Any]]:
    """Per head: study p, top slice, the study-level contributions and driving expert, the same at
    the top slice, and the experts' agreement over the slices (JSON-ready)."""
    study = study_output(pred)
    study_contrib = contributions(study)
    study_drive = driving_expert(study)
    agreement = agreement_matrix(pred)
    out: dict[str, dict[str, Any]] = {}
    for j, head in enumerate(HEADS):
        pos = int(pred.top_slice[j])
        top = slice_output(pred, pos)
        top_contrib = contributions(top)
        drive = driving_expert(top)
        d_study = int(study_drive.index[0, j])
        d_top = int(drive.index[0, j])
        own_p = {t: float(np.exp(v[pos, j, 1])) for t, v in pred.terms.items()}
        out[head] = {
            "p": float(pred.p_study[j]),
            "decision": bool(pred.p_study[j] >= 0.5),
            "top_slice": int(pred.slices[pos]),
            "p_top_slice": float(pred.p[pos, j]),
            "contributions_study": {t: float(v[0, j]) for t, v in study_contrib.items()},
            "driving_expert_study": None if d_study < 0 else study_drive.experts[d_study],
            "contributions_top_slice": {t: float(v[0, j]) for t, v in top_contrib.items()},
            "expert_p_top_slice": own_p,
            "driving_expert_top_slice": None if d_top < 0 else drive.experts[d_top],
            "agreement": {
                "experts": list(agreement.experts),
                "matrix": [[None if np.isnan(x) else float(x) for x in row] for row in agreement.matrix[j]],
            },
        }
    return out


def report_json(pred: Any, summary: Mapping[str, Any], shown_id: str, show_ids: bool, withheld: list[str],
                tabular: Any = None) -> dict[str, Any]:
    """The JSON report: the prediction as ``diagnose`` writes it (every term of every slice), the
    evidence per head and the tabular attributions, de-identified unless ``show_ids``."""
    notes = [str(n) for n in pred.notes]
    if not show_ids:
        notes = deidentified_notes(notes, (summary.get("study_id"), summary.get("patient_id"), pred.study_id), shown_id)
    doc = pred.with_identity(shown_id, pred.source if show_ids else "", notes=notes).to_json()
    if not show_ids:
        doc["source"] = None
    return {
        "report": "i2m2-med study evidence",
        "research_use_only": True,
        "notice": RESEARCH_NOTICE,
        "generated_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "software": {"name": "i2m2-med", "version": __version__},
        "identifiers": "as in the files" if show_ids else f"study id hashed ({id_rule()}); source omitted",
        "study": {
            "id": shown_id,
            "patient_id": summary.get("patient_id") if show_ids else None,
            "format": summary.get("format"),
            "n_slices": summary.get("n_slices"),
            "missing_modalities": list(pred.missing_modalities),
            "withheld_modalities": list(withheld),
        },
        "evidence": head_evidence(pred),
        "tabular_attributions": None if tabular is None else tabular.to_dict(),
        "prediction": doc,
    }


# ---- HTML -------------------------------------------------------------------------------------------------


def _bars_svg(values: Mapping[str, float], width: int = 420) -> str:
    """Inline SVG: one signed horizontal bar per term plus the total."""
    items = list(values.items())
    total = sum(v for _, v in items)
    rows = items + [("I2M2 total", total)]
    span = max([abs(v) for _, v in rows] + [0.5])
    h_row, label_w = 22, 150
    mid = label_w + (width - label_w - 60) / 2
    half = (width - label_w - 60) / 2
    parts = [f'<svg width="{width}" height="{h_row * len(rows) + 6}" '
             f'role="img" aria-label="log-odds contributions">']
    parts.append(f'<line x1="{mid:.1f}" y1="0" x2="{mid:.1f}" y2="{h_row * len(rows)}" stroke="#495057" stroke-width="1"/>')
    for i, (name, v) in enumerate(rows):
        y = i * h_row + 4
        length = abs(v) / span * half
        x = mid if v >= 0 else mid - length
        colour = "#212529" if name == "I2M2 total" else ("#c92a2a" if v >= 0 else "#1864ab")
        label = name if name == "I2M2 total" else expert_title(name)
        parts.append(f'<text x="0" y="{y + 13}" font-size="12" fill="#343a40">{html.escape(label)}</text>')
        parts.append(f'<rect x="{x:.1f}" y="{y}" width="{max(length, 0.5):.1f}" height="14" fill="{colour}" rx="2"/>')
        tx = mid + length + 4 if v >= 0 else mid - length - 4
        anchor = "start" if v >= 0 else "end"
        parts.append(f'<text x="{tx:.1f}" y="{y + 12}" font-size="11" fill="#343a40" text-anchor="{anchor}">{v:+.2f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _curve_svg(slices: np.ndarray, p: np.ndarray, top: int, width: int = 420, height: int = 150) -> str:
    """Inline SVG of the per-slice probability with its axes (slice number, probability 0 / 0.5 /
    1), the 0.5 line and the top slice."""
    n = len(p)
    left, right, top_pad, bottom = 34, 10, 8, 34
    x0, x1 = left, width - right
    y0, y1 = top_pad, height - bottom

    def xy(i: int, v: float) -> tuple[float, float]:
        return x0 + (x1 - x0) * (i / max(n - 1, 1)), y0 + (y1 - y0) * (1.0 - float(v))

    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in enumerate(p)))
    tx, ty = xy(top, p[top])
    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="probability per slice" font-size="10">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="#f8f9fa"/>',
             f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#495057"/>',
             f'<line x1="{x0}" y1="{y1}" x2="{x1}" y2="{y1}" stroke="#495057"/>']
    for v in (0.0, 0.5, 1.0):
        _, y = xy(0, v)
        parts.append(f'<line x1="{x0 - 4}" y1="{y:.1f}" x2="{x0}" y2="{y:.1f}" stroke="#495057"/>')
        parts.append(f'<text x="{x0 - 6}" y="{y + 3:.1f}" text-anchor="end">{v:g}</text>')
    _, half = xy(0, 0.5)
    parts.append(f'<line x1="{x0}" y1="{half:.1f}" x2="{x1}" y2="{half:.1f}" stroke="#adb5bd" stroke-dasharray="3,3"/>')
    for i in sorted({0, n - 1}):
        x, _ = xy(i, 0.0)
        parts.append(f'<line x1="{x:.1f}" y1="{y1}" x2="{x:.1f}" y2="{y1 + 4}" stroke="#495057"/>')
        parts.append(f'<text x="{x:.1f}" y="{y1 + 14}" text-anchor="middle">{int(slices[i])}</text>')
    parts += [f'<text x="{(x0 + x1) / 2:.1f}" y="{height - 4}" text-anchor="middle">slice</text>',
              f'<text x="10" y="{(y0 + y1) / 2:.1f}" text-anchor="middle" transform="rotate(-90 10 {(y0 + y1) / 2:.1f})">p</text>',
              f'<polyline points="{points}" fill="none" stroke="#212529" stroke-width="1.6"/>',
              f'<circle cx="{tx:.1f}" cy="{ty:.1f}" r="5" fill="#f59f00" stroke="#212529"/>',
              f'<text x="{min(tx + 7, width - 60):.1f}" y="{max(ty - 6, 12):.1f}" font-size="11">top slice {int(slices[top])}</text>',
              "</svg>"]
    return "".join(parts)


_HTML_CSS = """
body{font-family:Inter,'Segoe UI',Helvetica,Arial,sans-serif;color:#212529;margin:24px auto;max-width:1000px;padding:0 16px}
.banner{background:#fff4e6;border:1px solid #ffc078;border-left:6px solid #e8590c;color:#7c2d12;padding:10px 14px;border-radius:6px;font-weight:600}
h1{font-size:22px;margin:18px 0 4px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #dee2e6;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}td,th{border:1px solid #dee2e6;padding:4px 8px;text-align:left}
th{background:#f1f3f5}.muted{color:#6c757d;font-size:12px}.grid{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.card{border:1px solid #dee2e6;border-radius:8px;padding:10px 12px;flex:1 1 440px}
.pos{color:#c92a2a;font-weight:600}.neg{color:#1864ab;font-weight:600}img{border-radius:4px}
"""


def report_html(report: Mapping[str, Any], images: Mapping[str, bytes | None] | None = None,
                curves: Mapping[str, tuple[np.ndarray, np.ndarray, int]] | None = None) -> str:
    """The self-contained HTML report of :func:`report_json`'s ``report``.

    ``images``: head -> PNG of its top slice (magnitude with the magnitude expert's saliency), or
    None; ``curves``: head -> (slice indices, p per slice, top position)."""
    e = html.escape
    study = report["study"]
    pred = report["prediction"]
    model = pred.get("model", {})
    rows = []
    for head in HEADS:
        ev = report["evidence"][head]
        cls = "pos" if ev["decision"] else "neg"
        rows.append(f"<tr><td>{e(head_title(head))}</td><td class='{cls}'>{ev['p']:.3f}</td>"
                    f"<td>{ev['top_slice']}</td><td>{e(expert_title(ev['driving_expert_top_slice'] or '-'))}</td>"
                    f"<td>{e(expert_title(ev['driving_expert_study'] or '-'))}</td></tr>")
    missing = ", ".join(study["missing_modalities"]) or "none"
    withheld = ", ".join(study["withheld_modalities"]) or "none"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        f"<title>i2m2-med report {e(str(study['id']))}</title><style>{_HTML_CSS}</style></head><body>",
        f"<div class='banner'>{e(RESEARCH_NOTICE)}</div>",
        f"<h1>Study {e(str(study['id']))}</h1>",
        f"<div class='muted'>{e(str(study.get('format') or ''))} - {study.get('n_slices')} slices - "
        f"missing modalities: {e(missing)} - withheld: {e(withheld)} - identifiers: {e(report['identifiers'])}</div>",
        f"<div class='muted'>Model {e(str(model.get('variant', '')))} fingerprint {e(str(model.get('fingerprint', '')))} "
        f"(i2m2-med {e(str(model.get('version', '')))}); aggregation {e(json.dumps(pred.get('aggregation', {})))}; "
        f"generated {e(report['generated_utc'])} by i2m2-med {e(report['software']['version'])}</div>",
        "<h2>Summary</h2><table><tr><th>Pathology</th><th>I2M2 p (study)</th><th>Top slice</th>"
        "<th>Driving expert (top slice)</th><th>Driving expert (study)</th></tr>",
        *rows,
        "</table>",
        "<p class='muted'>Contributions are each expert's log-odds log p(1) - log p(0) in nats; their sum is the "
        "log-odds of the normalised product (I2M2). Positive values (red) point towards the finding.</p>",
    ]
    for head in HEADS:
        ev = report["evidence"][head]
        parts.append(f"<h2>{e(head_title(head))}: p = {ev['p']:.3f}</h2><div class='grid'>")
        parts.append(f"<div class='card'><b>Study-level contributions</b><br>{_bars_svg(ev['contributions_study'])}</div>")
        parts.append(f"<div class='card'><b>Top slice {ev['top_slice']} (p = {ev['p_top_slice']:.3f})</b><br>"
                     f"{_bars_svg(ev['contributions_top_slice'])}</div>")
        if curves and head in curves:
            sl, p, top = curves[head]
            parts.append(f"<div class='card'><b>Probability per slice</b><br>{_curve_svg(np.asarray(sl), np.asarray(p), int(top))}</div>")
        png = (images or {}).get(head)
        if png:
            parts.append(f"<div class='card'><b>Top slice {ev['top_slice']}: magnitude with the magnitude expert's "
                         f"integrated gradients</b> (red raises the log-odds, blue lowers them)<br>"
                         f"<img alt='top slice' width='320' height='320' src='{data_uri(png)}'></div>")
        own = ev["expert_p_top_slice"]
        cells = "".join(
            f"<tr><td><span style='color:{EXPERT_COLORS.get(t, '#495057')}'>&#9632;</span> {e(expert_title(t))}</td>"
            f"<td>{own[t]:.3f}</td><td>{ev['contributions_top_slice'][t]:+.3f}</td></tr>" for t in own)
        parts.append(f"<div class='card'><b>Experts at the top slice</b><table><tr><th>Expert</th><th>own p</th>"
                     f"<th>contribution</th></tr>{cells}</table></div></div>")
    tab = report.get("tabular_attributions")
    if tab:
        parts.append("<h2>Tabular expert: feature attributions (integrated gradients, nats)</h2><table><tr><th>Feature</th>"
                     "<th>Value</th>" + "".join(f"<th>{e(head_title(h))}</th>" for h in HEADS) + "</tr>")
        for name, value in tab["features"].items():
            cells = "".join(f"<td>{tab['per_head'][h]['attributions'][name]:+.3f}</td>" for h in HEADS)
            parts.append(f"<tr><td>{e(name)}</td><td>{value:.3f}</td>{cells}</tr>")
        parts.append("</table><p class='muted'>Baseline: every feature unknown. Attributions of a head add up to the "
                     "change of the tabular expert's log-odds between the baseline and this study.</p>")
    notes = pred.get("notes") or []
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(str(n))}</li>" for n in notes) + "</ul>")
    parts.append(f"<p class='muted'>{e(RESEARCH_NOTICE)}</p></body></html>")
    return "".join(parts)
