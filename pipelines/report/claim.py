"""The report's section on the paper's claim measured at scale (``results["claim_study"]``, from
:mod:`i2m2_med.ablation.claim`): per regime the held-out in-view and study-level AUROC of i2m2,
intra and inter over seeds, I2M2's paired margins, the targets, and the learning curve."""

from __future__ import annotations

from typing import Any, Mapping

from .ablation import Figures, Notes, ci_text, colour, esc, num, pm, section, table, undefined

LEVELS = (("in_view", "in view"), ("study", "study level"), ("slice", "slice level"))


def _cell(variant: Mapping[str, Any], level: str) -> str:
    seeds = (variant.get("seed_summary") or {}).get(level) or {}
    ens = (variant.get("ensemble") or {}).get(level) or {}
    return (f"{pm(seeds.get('mean'), seeds.get('sd'))}<br><span class=\"ci\">ensemble {num(ens.get('value'))} "
            f"{ci_text(ens.get('ci'))}</span>")


def _margin(m: Mapping[str, Any] | None, notes: Notes) -> str:
    m = m or {}
    if m.get("diff") is None:
        return notes.na(m.get("reason") or "not computed")
    return f"{float(m['diff']):+.3f}<br>{ci_text(m.get('ci'))}<br><span class=\"ci\">p = {num(m.get('p'))}</span>"


def learning_curve_figure(curve: Mapping[str, Any], figs: Figures) -> str:
    """Held-out in-view AUROC against training volumes, one line per variant, axes titled."""
    import plotly.graph_objects as go

    fig = go.Figure()
    variants: dict[str, list[tuple[int, float]]] = {}
    for p in curve.get("points") or []:
        if p.get("in_view") is not None:
            variants.setdefault(p["variant"], []).append((int(p["train_volumes"]), float(p["in_view"])))
    for v, pts in variants.items():
        pts.sort()
        fig.add_trace(go.Scatter(x=[x for x, _ in pts], y=[y for _, y in pts], mode="lines+markers", name=v,
                                 line=dict(color=colour(v)), hovertemplate=f"{v}: %{{x}} volumes, in view %{{y:.3f}}<extra></extra>"))
    top = max([y for pts in variants.values() for _, y in pts] or [0.5])
    fig.add_hline(y=0.5, line_dash="dot", line_color="#888", annotation_text="chance", annotation_position="bottom right")
    fig.update_layout(title=f"Learning curve ({esc(curve.get('regime'))} regime, held-out test cohort)",
                      xaxis=dict(title="training volumes", type="log", tickvals=sorted({x for pts in variants.values() for x, _ in pts})),
                      yaxis=dict(title="in-view AUROC, mean ACL/MTEAR/CART", range=[0.45, max(0.9, top + 0.05)]))
    return figs.div(fig, 380)


def claim_section(results: Mapping[str, Any], figs: Figures) -> str:
    claim = results.get("claim_study") or {"value": None, "reason": "not in these results"}
    out = ['<p class="explain">The paper&rsquo;s claim measured at scale on synthetic cohorts. Per regime (<b>intra</b>: each '
           "modality alone is informative; <b>inter</b>: only the co-location of a magnitude and a phase cue is; <b>mixed</b>: both) "
           "a training pool is generated, I2M2, intra and inter are trained with the bundled recipe over several seeds, and every "
           "run is tested on the regime&rsquo;s <b>held-out cohort</b> (its own generator seed, at least 100 subjects), which no "
           "training, early stopping or recipe choice read. Cells: mean &plusmn; sd over seeds of single models, and the seed "
           "ensemble with its 95&nbsp;% CI resampling whole subjects. Margins: I2M2&rsquo;s ensemble minus the other&rsquo;s, paired "
           "bootstrap over whole subjects. Targets (never used to choose anything): I2M2 &ge; max(intra, inter) &minus; 0.01 in view "
           "in every regime; in the inter regime intra &le; 0.60 and I2M2 &ge; 0.80 in view.</p>"]
    if undefined(claim):
        out.append(f'<p class="na">{esc(claim.get("reason"))}</p>')
        return section("claim", "".join(out))
    settings = claim.get("settings") or {}
    for regime, block in (claim.get("regimes") or {}).items():
        test = block.get("test") or {}
        notes = Notes()
        rows = []
        for v, entry in (block.get("variants") or {}).items():
            if undefined(entry):
                rows.append([f"<b>{esc(v)}</b>", *([notes.na(entry.get("reason"))] * len(LEVELS))])
                continue
            rows.append([f"<b>{esc(v)}</b><br><span class=\"ci\">seeds {esc(entry.get('seeds'))}</span>",
                         *(_cell(entry, level) for level, _ in LEVELS)])
        base = block.get("position_baseline") or {}
        if base:
            rows.append(["<i>position only</i>", *(f"{num((base.get(level) or {}).get('value'))} {ci_text((base.get(level) or {}).get('ci'))}"
                                                   for level, _ in LEVELS)])
        for name, single in (block.get("single_experts") or {}).items():
            rows.append([f"<i>{esc(name)} expert of intra, alone</i>",
                         *(f"<span class=\"ci\">ensemble</span> {num((single.get(level) or {}).get('value'))} "
                           f"{ci_text((single.get(level) or {}).get('ci'))}" for level, _ in LEVELS)])
        out.append(f"<h3>{esc(regime)} regime &mdash; held-out: {esc(test.get('studies'))} studies of {esc(test.get('subjects'))} "
                   f"subjects (generator seed {esc(test.get('generator_seed'))})</h3>")
        out.append(table(["variant", *(f"{title}<br>mean3" for _, title in LEVELS)], rows))
        margins = block.get("margins") or {}
        if margins:
            out.append(table(["I2M2 minus", "in view", "study level"],
                             [[esc(o), _margin(m.get("in_view"), notes), _margin(m.get("study"), notes)] for o, m in margins.items()]))
        t = block.get("targets") or {}
        if t.get("met") is None:
            out.append(f'<p class="na">Targets: {esc(t.get("reason"))}</p>')
        else:
            parts = [f"I2M2 &ge; max(intra, inter) &minus; 0.01 in view: <b>{'met' if t.get('claim_met') else 'missed'}</b> "
                     f"(margin {float(t['margin']):+.3f} on the seed means)"]
            if "intra_at_most_0.60" in t:
                parts.append(f"intra &le; 0.60: <b>{'met' if t['intra_at_most_0.60'] else 'missed'}</b>")
                parts.append(f"I2M2 &ge; 0.80: <b>{'met' if t['i2m2_at_least_0.80'] else 'missed'}</b>")
            out.append(f'<p class="{"good" if t.get("met") else "bad"}">' + "; ".join(parts) + ".</p>")
        out.append(notes.html())
    curve = claim.get("learning_curve") or {}
    if curve.get("points"):
        out.append(learning_curve_figure(curve, figs))
        out.append(f'<p class="explain">Held-out in-view AUROC (mean over ACL/MTEAR/CART) against the training volumes, '
                   f"{esc(curve.get('seeds_per_point'))} seed per size; the training sets are nested and share one validation split.</p>")
    out.append(f'<p class="explain">Recipe: config {esc(claim.get("config"))} with {esc(settings.get("overrides"))}; '
               f"{esc(settings.get('train_volumes'))} training and {esc(settings.get('val_volumes'))} validation volumes per run, "
               f"{esc(settings.get('seeds'))} seeds; the whole study took {float(claim.get('seconds') or 0) / 60:.0f} min.</p>")
    return section("claim", "".join(out))


__all__ = ["claim_section", "learning_curve_figure"]
