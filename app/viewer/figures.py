"""Plotly figures and image rendering of the viewer (pure functions of arrays; no Streamlit)."""

from __future__ import annotations

import base64
import io
from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from i2m2_med.heads import (
    EXPERT_COLORS,
    HEAD_COLORS,
    HEADS,
    expert_short_title,
    expert_title,
    head_title,
)

TOWARD = "#c92a2a"   # pushes towards the finding
AGAINST = "#1864ab"  # pushes against it
TOTAL = "#212529"
FONT = dict(family="Inter, 'Source Sans Pro', 'Segoe UI', Helvetica, Arial, sans-serif", size=12, color="#212529")


def chart_config(name: str) -> dict[str, Any]:
    """The Plotly config of every chart in the viewer: no logo, and the modebar's camera button
    downloads the chart as an SVG (vector, for a paper's supplement) named ``i2m2-<name>.svg``."""
    return {"displaylogo": False,
            "toImageButtonOptions": {"format": "svg", "filename": f"i2m2-{name}", "scale": 1}}


def _base_layout(fig: go.Figure, height: int, title: str | None = None, margin: Mapping[str, int] | None = None) -> go.Figure:
    fig.update_layout(
        height=height,
        margin=dict(l=10, r=10, t=36 if title else 8, b=8) | dict(margin or {}),
        title=dict(text=title, x=0.0, xanchor="left", font=dict(size=13, color="#343a40")) if title else None,
        paper_bgcolor="white",
        plot_bgcolor="white",
        font=FONT,
        showlegend=False,
    )
    return fig


# ---- images ----------------------------------------------------------------------------------------


def auto_window(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    """``(level, width)`` spanning the ``low``-``high`` percentiles of the finite pixels."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [low, high])
    width = float(hi - lo) if hi > lo else 1.0
    return float(lo + hi) / 2.0, width


def window_image(image: np.ndarray, level: float, width: float) -> np.ndarray:
    """Grey levels ``(H, W)`` uint8 of ``image`` for a window centred on ``level``, ``width`` wide."""
    width = max(float(width), 1e-12)
    scaled = (np.nan_to_num(image.astype(np.float64)) - (level - width / 2.0)) / width
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


_HEAT = np.array([  # red-orange-yellow heat ramp, position -> RGB
    [0.00, 200, 30, 30], [0.50, 245, 120, 20], [0.80, 255, 200, 40], [1.00, 255, 245, 150],
], dtype=np.float64)
DISPLAY_SIZE = 320


def _heat(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0.0, 1.0)
    return np.stack([np.interp(v, _HEAT[:, 0], _HEAT[:, c]) for c in (1, 2, 3)], axis=-1)


def upsample(map_: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to ``shape`` (rows, cols)."""
    if map_.shape == tuple(shape):
        return map_.astype(np.float32)
    img = Image.fromarray(map_.astype(np.float32), mode="F")
    return np.asarray(img.resize((shape[1], shape[0]), Image.BILINEAR), dtype=np.float32)


def overlay_rgb(gray: np.ndarray, saliency: np.ndarray | None, signed: bool = False, opacity: float = 0.5) -> np.ndarray:
    """RGB ``(H, W, 3)`` uint8: grey image with a saliency map blended on top.

    Unsigned maps (GradCAM, [0, 1]) use a heat ramp whose opacity grows with the value; signed
    maps (occlusion, nats) are red where the region supports the finding and blue where it
    speaks against it, opacity growing with ``|value| / max|value|``."""
    base = np.repeat(gray[..., None].astype(np.float64), 3, axis=-1)
    if saliency is None:
        return base.astype(np.uint8)
    s = upsample(saliency, gray.shape).astype(np.float64)
    if signed:
        scale = float(np.max(np.abs(s))) or 1.0
        v = s / scale
        colour = np.where(v[..., None] >= 0, np.array([224.0, 49.0, 49.0]), np.array([28.0, 126.0, 214.0]))
        alpha = opacity * np.clip(np.abs(v), 0.0, 1.0)
    else:
        v = np.clip(s, 0.0, 1.0)
        colour = _heat(v)
        alpha = opacity * np.clip((v - 0.2) / 0.8, 0.0, 1.0) ** 0.8
    out = base * (1.0 - alpha[..., None]) + colour * alpha[..., None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    """PNG of a uint8 ``(H, W)`` or ``(H, W, 3)`` array."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_figure(
    pixels: np.ndarray,
    boxes: Sequence[Mapping[str, Any]] = (),
    height: int = 330,
    title: str | None = None,
    aspect: float = 1.0,
    edges: Mapping[str, str] | None = None,
) -> go.Figure:
    """An image (uint8 grey or RGB) as a plotly figure, with fastMRI+ boxes as shapes.

    ``boxes``: dicts with ``x, y, width, height`` in the image's pixels and ``label`` / ``head``.
    ``aspect``: displayed height of a pixel relative to its width (k-space is shown squeezed).
    ``edges``: the anatomical letter to print at the middle of each edge (``top``, ``bottom``,
    ``left``, ``right``) of the image as shown."""
    h, w = pixels.shape[:2]
    fig = go.Figure(go.Image(source=data_uri(png_bytes(pixels)), hoverinfo="skip"))
    for b in boxes:
        colour = HEAD_COLORS.get(str(b.get("head")), "#fab005")
        x0, y0 = float(b["x"]) - 0.5, float(b["y"]) - 0.5
        fig.add_shape(type="rect", x0=x0, y0=y0, x1=x0 + float(b["width"]), y1=y0 + float(b["height"]),
                      line=dict(color=colour, width=2), fillcolor="rgba(0,0,0,0)")
        fig.add_annotation(x=x0, y=y0, text=str(b.get("label", "")).strip(), showarrow=False, xanchor="left",
                           yanchor="bottom", font=dict(size=10, color="white"), bgcolor=colour, opacity=0.9,
                           borderpad=1)
    for edge, letter in (edges or {}).items():
        x, y, xanchor, yanchor = {"top": ((w - 1) / 2, -0.5, "center", "top"),
                                  "bottom": ((w - 1) / 2, h - 0.5, "center", "bottom"),
                                  "left": (-0.5, (h - 1) / 2, "left", "middle"),
                                  "right": (w - 0.5, (h - 1) / 2, "right", "middle")}[edge]
        fig.add_annotation(x=x, y=y, text=f"<b>{letter}</b>", showarrow=False, xanchor=xanchor, yanchor=yanchor,
                           font=dict(size=13, color="#ffd43b"), name=f"edge-{edge}")
    fig.update_xaxes(visible=False, range=[-0.5, w - 0.5], constrain="domain")
    fig.update_yaxes(visible=False, range=[h - 0.5, -0.5], scaleanchor="x", scaleratio=aspect, constrain="domain")
    fig = _base_layout(fig, height, title, margin=dict(l=0, r=0, b=0))
    fig.update_layout(dragmode="pan")
    return fig


def squeeze_rows(image: np.ndarray, rows: int) -> np.ndarray:
    """Average groups of rows so that ``image`` has about ``rows`` rows (k-space: 640 readout
    samples shown at the image's height)."""
    factor = max(1, image.shape[0] // max(1, rows))
    cut = image.shape[0] - image.shape[0] % factor
    return image[:cut].reshape(cut // factor, factor, image.shape[1]).mean(axis=1)


def placeholder_figure(text: str, height: int = 330) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(x=0.5, y=0.5, xref="paper", yref="paper", text=text, showarrow=False,
                       font=dict(size=13, color="#868e96"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig = _base_layout(fig, height)
    fig.update_layout(plot_bgcolor="#f1f3f5")
    return fig


# ---- evidence ---------------------------------------------------------------------------------------


def waterfall_figure(
    contributions: Mapping[str, float],
    missing: Sequence[str] = (),
    probability: float | None = None,
    title: str | None = None,
    height: int = 340,
    total_label: str = "I2M2",
) -> go.Figure:
    """Each term's log-odds contribution (nats) stacked into the product's log-odds.

    ``missing``: experts left out of the product (shown as empty steps marked "not in product").
    ``probability``: the product's p(y=1), written on the total bar."""
    names = list(contributions)
    labels = [expert_short_title(n) for n in names] + [expert_short_title(m) for m in missing]
    values = [float(contributions[n]) for n in names] + [0.0] * len(missing)
    texts = [f"{v:+.2f}" for v in values[: len(names)]] + ["not in product"] * len(missing)
    total = float(sum(values))
    fig = go.Figure(go.Waterfall(
        orientation="v",
        measure=["relative"] * len(values) + ["total"],
        x=labels + [total_label],
        y=values + [total],
        text=texts + [f"{total:+.2f}" + (f"  (p = {probability:.2f})" if probability is not None else "")],
        textposition="outside",
        cliponaxis=False,
        connector=dict(line=dict(color="#adb5bd", width=1, dash="dot")),
        increasing=dict(marker=dict(color=TOWARD)),
        decreasing=dict(marker=dict(color=AGAINST)),
        totals=dict(marker=dict(color=TOTAL)),
        hovertemplate="%{x}: %{y:+.3f} nats<extra></extra>",
    ))
    fig.add_hline(y=0.0, line=dict(color="#495057", width=1))
    span = max([abs(total), 0.5] + [abs(v) for v in values] + ([float(np.abs(np.cumsum(values)).max())] if values else []))
    fig.update_yaxes(title="log-odds (nats)", zeroline=False, gridcolor="#e9ecef", range=[-1.35 * span, 1.35 * span])
    fig.update_xaxes(tickangle=0)
    return _base_layout(fig, height, title)


def agreement_figure(experts: Sequence[str], matrix: np.ndarray, height: int = 260, title: str | None = None) -> go.Figure:
    """Fraction of slices on which two experts make the same call (each alone, p >= 0.5)."""
    labels = [expert_short_title(e) for e in experts]
    text = [["-" if np.isnan(v) else f"{v:.0%}" for v in row] for row in matrix]
    fig = go.Figure(go.Heatmap(
        z=np.nan_to_num(matrix, nan=0.0), x=labels, y=labels, zmin=0.0, zmax=1.0, text=text,
        texttemplate="%{text}", colorscale=[[0.0, "#fff5f5"], [0.5, "#ffe3e3"], [0.75, "#d3f9d8"], [1.0, "#8ce99a"]],
        showscale=False, hovertemplate="%{y} vs %{x}: %{text}<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(side="bottom", tickangle=0)
    return _base_layout(fig, height, title)


def slice_curve_figure(
    slices: np.ndarray,
    p: np.ndarray,
    top: int,
    current: int | None,
    expert_p: Mapping[str, np.ndarray] | None = None,
    labels: np.ndarray | None = None,
    title: str | None = None,
    height: int = 300,
) -> go.Figure:
    """Per-slice I2M2 p(y=1) of one head, the top slice starred, the current slice marked, and the
    annotated slices (when labels are known) shaded. Each expert's own p is a hidden legend entry."""
    fig = go.Figure()
    if labels is not None and np.any(labels):
        idx = np.flatnonzero(labels)
        runs = np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)
        for k, run in enumerate(runs):
            fig.add_vrect(x0=float(slices[run[0]]) - 0.5, x1=float(slices[run[-1]]) + 0.5, fillcolor="#ffd8a8",
                          opacity=0.45, line_width=0, layer="below",
                          annotation_text="annotated" if k == 0 else None, annotation_position="top left",
                          annotation_font=dict(size=10, color="#d9480f"))
    for name, values in (expert_p or {}).items():
        fig.add_trace(go.Scatter(x=slices, y=values, mode="lines", name=expert_title(name), visible="legendonly",
                                 line=dict(color=EXPERT_COLORS.get(name, "#868e96"), width=1.2, dash="dot")))
    fig.add_trace(go.Scatter(x=slices, y=p, mode="lines+markers", name="I2M2", line=dict(color=TOTAL, width=2),
                             marker=dict(size=5), hovertemplate="slice %{x}: p = %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[slices[top]], y=[p[top]], mode="markers+text", name="top slice",
                             marker=dict(symbol="star", size=16, color="#f59f00", line=dict(color="#212529", width=1)),
                             text=[f"top {int(slices[top])}"], textposition="top center", hoverinfo="skip"))
    if current is not None:
        fig.add_vline(x=float(current), line=dict(color="#3b5bdb", width=1.5, dash="dash"))
    fig.add_hline(y=0.5, line=dict(color="#adb5bd", width=1, dash="dot"))
    fig.update_yaxes(range=[-0.02, 1.08], title="p(finding)", gridcolor="#e9ecef")
    fig.update_xaxes(title="slice", gridcolor="#f1f3f5")
    fig = _base_layout(fig, height, title)
    fig.update_layout(showlegend=True, legend=dict(orientation="h", y=-0.28, x=0, font=dict(size=11)))
    return fig


def tabular_figure(names: Sequence[str], attributions: np.ndarray, values: Sequence[str], height: int | None = None,
                   title: str | None = None) -> go.Figure:
    """Horizontal bars of per-feature attributions (nats), largest magnitude on top."""
    order = np.argsort(-np.abs(np.asarray(attributions)))[::-1]
    names = [names[i] for i in order]
    vals = np.asarray(attributions, dtype=np.float64)[order]
    shown = [values[i] for i in order]
    fig = go.Figure(go.Bar(
        x=vals, y=names, orientation="h", marker=dict(color=[TOWARD if v >= 0 else AGAINST for v in vals]),
        text=[f"{v:+.2f}" for v in vals], textposition="outside", cliponaxis=False, customdata=shown,
        hovertemplate="%{y} = %{customdata}: %{x:+.3f} nats<extra></extra>",
    ))
    span = max(float(np.max(np.abs(vals))) if len(vals) else 0.0, 0.05)
    fig.update_xaxes(title="contribution to the tabular expert's log-odds (nats)", range=[-1.4 * span, 1.4 * span],
                     zeroline=True, zerolinecolor="#495057", gridcolor="#e9ecef")
    return _base_layout(fig, height or 60 + 28 * len(names), title)


def withheld_figure(p_all: np.ndarray, p_without: np.ndarray, without_label: str, height: int = 260) -> go.Figure:
    """Study-level p per head with every available modality and with some withheld."""
    x = [head_title(h) for h in HEADS]
    fig = go.Figure([
        go.Bar(x=x, y=p_all, name="all available modalities", marker_color=TOTAL,
               text=[f"{v:.2f}" for v in p_all], textposition="outside", cliponaxis=False),
        go.Bar(x=x, y=p_without, name=without_label, marker_color="#adb5bd",
               text=[f"{v:.2f}" for v in p_without], textposition="outside", cliponaxis=False),
    ])
    fig.update_yaxes(range=[0, 1.15], title="study p(finding)", gridcolor="#e9ecef")
    fig = _base_layout(fig, height)
    fig.update_layout(showlegend=True, barmode="group", legend=dict(orientation="h", y=1.12, x=0))
    return fig
