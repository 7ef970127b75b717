"""A feature card as a self-contained HTML fragment (Jupyter's ``_repr_html_``).

The fragment carries the explorer's test hooks (``data-testid``, ``data-feature``) and every
number in a ``data-value`` attribute beside its rounded display.
"""

from __future__ import annotations

import html
import math
from typing import Any

STYLE = """
<style>
.sg-card{font:13px/1.4 system-ui,sans-serif;max-width:860px;border:1px solid #ddd;
 border-radius:6px;padding:10px 14px;color:#222;background:#fff}
.sg-card h3{margin:0 0 6px;font-size:15px}.sg-card .sg-label{color:#555;font-weight:normal}
.sg-card dl{display:grid;grid-template-columns:repeat(4,auto 1fr);gap:2px 10px;margin:6px 0}
.sg-card dt{color:#666}.sg-card dd{margin:0;font-variant-numeric:tabular-nums}
.sg-card .sg-snip{font-family:ui-monospace,monospace;white-space:pre-wrap;margin:2px 0;
 padding:2px 4px;border-bottom:1px solid #f0f0f0}
.sg-card .sg-snip b{border-bottom:2px solid #000}.sg-card .sg-feat{margin-right:8px}
.sg-card .sg-kind-novel{color:#b35806}.sg-card .sg-kind-reconstruction{color:#2166ac}
</style>
"""


def fmt(value: Any, digits: int = 4) -> str:
    """A number as a reader wants it: ``–`` when unknown, else ``digits`` significant digits.

    >>> fmt(None), fmt(0.000123456), fmt(1234.5678), fmt(3)
    ('–', '0.0001235', '1235', '3')
    """
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}"


def _shade(activation: float, peak: float) -> str:
    alpha = 0.0 if peak <= 0 else max(0.0, min(1.0, activation / peak))
    return f"rgba(230,97,1,{alpha:.2f})"


def _snippet(snippet: dict[str, Any], peak: float) -> str:
    parts = []
    for i, (token, act) in enumerate(zip(snippet["tokens"], snippet["acts"], strict=True)):
        text = html.escape(token.replace("\n", "⏎"))
        tag = "b" if i == snippet["centre"] else "span"
        parts.append(
            f'<{tag} style="background:{_shade(act, peak)}" title="{act:.4g}">{text}</{tag}>'
        )
    return (
        f'<div class="sg-snip" data-testid="snippet" data-value="{snippet["activation"]}">'
        f"<small>{snippet['activation']:.3g}</small> {''.join(parts)}</div>"
    )


def _links(edges: list[dict[str, Any]]) -> str:
    if not edges:
        return "<i>none</i>"
    return "".join(
        f'<span class="sg-feat" data-feature="{e["id"]}" data-value="{e["score"]}">'
        f"{e['id']} <small>{html.escape(e['label'])} ({e['score']:.3f})</small></span>"
        for e in edges
    )


def _histogram(hist: dict[str, list[float]], width: int = 240, height: int = 40) -> str:
    counts = hist["counts"]
    if not counts:
        return ""
    top = max(counts)
    bar = width / len(counts)
    rects = "".join(
        f'<rect x="{i * bar:.1f}" y="{height - height * c / top:.1f}" width="{max(bar - 1, 1):.1f}"'
        f' height="{height * c / top:.1f}" fill="#e66101"/>'
        for i, c in enumerate(counts)
    )
    lo, hi = hist["edges"][0], hist["edges"][-1]
    return (
        f'<div><svg width="{width}" height="{height}" role="img" '
        f'aria-label="activation histogram">{rects}</svg>'
        f"<br><small>activations {fmt(lo, 2)} – {fmt(hi, 2)} (log bins)</small></div>"
    )


def card_html(card: dict[str, Any]) -> str:
    """HTML of a card given as :meth:`saegeo.explorer.card.FeatureCard.to_dict`."""
    rows = [
        ("width", card["width"]),
        ("kind", card["kind"]),
        ("max cos", card["max_cos"]),
        ("nearest", card["nearest"]),
        ("delta_mse", card["delta_mse"]),
        ("explained", card["explained"]),
        ("residual", card["residual"]),
        ("freq", card["freq"]),
        ("max act", card["max_act"]),
        ("mean act", card["mean_act"]),
        ("children", len(card["children"])),
        ("descendants", len(card["descendants"])),
        ("swap groups", len(card["swap_groups"])),
    ]
    cells = "".join(
        f'<dt>{name}</dt><dd data-key="{name.replace(" ", "_")}" '
        f'data-value="{"" if v is None else html.escape(str(v))}"'
        f"{' class=sg-kind-' + str(v) if name == 'kind' and v else ''}>"
        f"{html.escape(fmt(v)) if not isinstance(v, str) else html.escape(v)}</dd>"
        for name, v in rows
    )
    peak = max((a for s in card["snippets"] for a in s["acts"]), default=0.0)
    snippets = "".join(_snippet(s, peak) for s in card["snippets"]) or "<i>no token text</i>"
    link = (
        f' <a href="{html.escape(card["neuronpedia"])}" target="_blank">Neuronpedia</a>'
        if card["neuronpedia"]
        else ""
    )
    return (
        f'{STYLE}<div class="sg-card" data-testid="feature-card" data-feature="{card["id"]}">'
        f"<h3>{card['id']} <span class=sg-label>{html.escape(card['label'])}</span>"
        f" <small>{html.escape(card['source'])}</small>{link}</h3>"
        f"<dl>{cells}</dl>{_histogram(card['histogram'])}"
        f"<div><b>parents</b> ({html.escape(card['metric'])} &gt; {card['threshold']:g}): "
        f'<span data-testid="parents">{_links(card["parents"])}</span></div>'
        f'<div><b>children</b>: <span data-testid="children">{_links(card["children"])}</span>'
        f"</div><div><b>top snippets</b>{snippets}</div></div>"
    )
