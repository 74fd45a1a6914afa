"""Pieces shared by the HTML reports: style, parity text, and SVG bar charts (no plotting
library needed, so a report renders the same on any host)."""

from __future__ import annotations

from html import escape
from typing import Any

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 10px}
th{background:#f3f3f3}td.num{text-align:right}.bad{color:#b00020;font-weight:bold}
.bar{background:#4a7bd0;height:12px;display:inline-block}.note{color:#555;font-size:90%}.pick{color:#1b5e20}
svg text{font-family:system-ui,sans-serif;font-size:12px}
"""

PALETTE = ["#4a7bd0", "#e8833a", "#5aa469", "#c2504f", "#8a6bbe", "#8c6d31", "#d17ab5",
           "#7f7f7f", "#b5bd37", "#3bb3c3"]


def parity_text(parity: dict[str, Any]) -> str:
    if not parity.get("executed"):
        return escape(parity.get("reason", "not executed"))
    agree = parity.get("top1_agreement", parity.get("pixel_agreement"))
    kind = "top-1" if "top1_agreement" in parity else "pixels"
    return (f"{kind} {agree:.0%}, max |Δ| {parity['max_abs_error']:.3g}, "
            f"cosine ≥ {parity['min_cosine_similarity']:.4f}")


def mb_text(value: float | None) -> str:
    """Megabytes as printed: whole numbers, "—" where the device could not say."""
    return "—" if value is None else f"{value:.0f}"


def hbar_svg(items: list[tuple[str, float]], unit: str = "ms", width: int = 640,
             colors: list[str] | None = None) -> str:
    """A horizontal bar chart: one labelled bar per (label, value)."""
    if not items:
        return ""
    label_w, row_h, pad = 260, 22, 70
    top = max(v for _, v in items) or 1.0
    scale = (width - label_w - pad) / top
    bars = []
    for i, (label, value) in enumerate(items):
        y = i * row_h
        color = (colors or PALETTE)[i % len(colors or PALETTE)]
        bars.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{escape(label)}</text>'
            f'<rect x="{label_w}" y="{y + 4}" width="{max(1.0, value * scale):.1f}" '
            f'height="{row_h - 8}" fill="{color}"/>'
            f'<text x="{label_w + value * scale + 4:.1f}" y="{y + 15}">{value:.3g} {unit}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{len(items) * row_h + 4}">{"".join(bars)}</svg>')


def ms_text(value: float | None, digits: int = 3) -> str:
    """A time in ms, or "—" where it is not known (null in the result)."""
    return "—" if value is None else f"{value:.{digits}f}"


def rate_text(r: dict[str, Any] | None) -> str:
    """A rate with its 95 % interval, in %: "88.6 (85.2–91.9)"; "—" where there is none."""
    if not r:
        return "—"
    return f"{100 * r['value']:.1f} ({100 * r['low']:.1f}–{100 * r['high']:.1f})"


def share_text(value: float | None) -> str:
    """A fraction (0-1) in %, as rate_text writes its value: "98.2"; "—" for None."""
    return "—" if value is None else f"{100 * value:.1f}"


def floor_text(a: dict[str, Any]) -> str | None:
    """What PyTorch itself does on the images moved by ±1/255 (the evaluation's floor)."""
    if a.get("flip_floor"):
        return (f"PyTorch's own top-1 changes on {rate_text(a['flip_floor'])} % of these images "
                "when every value moves by ±1/255: flips near that come with the data, not "
                "the conversion (\"flips where PyTorch holds\" leaves those images out)")
    if a.get("pixel_agreement_floor") is not None:
        return (f"PyTorch's own mask keeps {share_text(a['pixel_agreement_floor'])} % of "
                "pixels when every value moves by ±1/255: pixel agreement near that comes "
                "with the data")
    return None
