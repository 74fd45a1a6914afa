"""``edgepipe history``: stored results by model, artifact, device and runtime version, and
their trend over time as a self-contained HTML page (inline SVG: no plotting library, the same
picture on any host; the run report embeds the same chart)."""

from __future__ import annotations

import time
from html import escape
from pathlib import Path
from typing import Any

from ..manifest import write_atomic
from ..report_parts import PALETTE, STYLE
from .store import ResultRow


def series_key(r: ResultRow) -> str:
    """One line of the trend: a device and what ran on it (artifacts of one configuration
    over time share a line: that is the trend)."""
    return f"{r.device} · {r.model} {r.format} {r.precision} ×{r.threads}"


def when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def trend_svg(rows: list[ResultRow], width: int = 900, height: int = 320) -> str:
    """Median (dot) and p90 (tick above it) of each result over time, one colour per
    series; flagged results as hollow red rings; a runtime version change as a dashed
    vertical line labelled with the new version."""
    points = [r for r in rows if r.median_ms is not None]
    if not points:
        return "<p class=note>no results with a median to plot</p>"
    series: dict[str, list[ResultRow]] = {}
    for r in points:
        series.setdefault(series_key(r), []).append(r)
    left, right, top, bottom = 60, 20, 10, 40
    t0, t1 = min(r.created for r in points), max(r.created for r in points)
    span = (t1 - t0) or 1.0
    hi = max(max(r.p90_ms or r.median_ms, r.median_ms) for r in points) * 1.05
    lo = min(r.median_ms for r in points) * 0.95
    lo = 0.0 if lo < hi * 0.3 else lo

    def x(t: float) -> float:
        return left + (t - t0) / span * (width - left - right) if t1 > t0 else \
            (left + width - right) / 2

    def y(v: float) -> float:
        return top + (hi - v) / (hi - lo) * (height - top - bottom)

    parts = [f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" '
             'stroke="#888"/>',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" '
             f'y2="{height - bottom}" stroke="#888"/>']
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>'
                     f'<line x1="{left}" y1="{y(v):.1f}" x2="{width - right}" y2="{y(v):.1f}" '
                     'stroke="#eee"/>')
    parts.append(f'<text x="{left}" y="{height - 8}">{escape(when(t0))}</text>'
                 f'<text x="{width - right}" y="{height - 8}" text-anchor="end">'
                 f'{escape(when(t1))}</text>'
                 f'<text x="12" y="{top + 12}" transform="rotate(-90 12 {top + 12})" '
                 'text-anchor="end">median ms</text>')
    legend = []
    for i, (name, rs) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{x(r.created):.1f},{y(r.median_ms):.1f}" for r in rs)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" '
                     'stroke-width="1.5"/>')
        version = None
        for r in rs:
            cx, cy = x(r.created), y(r.median_ms)
            if version is not None and r.runtime_version != version:
                parts.append(f'<line x1="{cx:.1f}" y1="{top}" x2="{cx:.1f}" '
                             f'y2="{height - bottom}" stroke="{color}" stroke-dasharray="4 3"/>'
                             f'<text x="{cx + 3:.1f}" y="{top + 12}">'
                             f'{escape(str(r.runtime_version))}</text>')
            version = r.runtime_version
            if r.p90_ms is not None:
                parts.append(f'<line x1="{cx:.1f}" y1="{cy:.1f}" x2="{cx:.1f}" '
                             f'y2="{y(r.p90_ms):.1f}" stroke="{color}" opacity="0.5"/>')
            tip = (f"#{r.id} {when(r.created)}: median {r.median_ms:.3f} ms, p90 "
                   f"{r.p90_ms or float('nan'):.3f} ms, {r.artifact} "
                   f"({r.runtime} {r.runtime_version}){' FLAGGED' if r.flagged else ''}")
            style = ('fill="white" stroke="#b00020" stroke-width="2"' if r.flagged
                     else f'fill="{color}"')
            parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3.5" {style}>'
                         f'<title>{escape(tip)}</title></circle>')
        legend.append(f'<span style="color:{color}">●</span> {escape(name)} ({len(rs)})')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
            + "".join(parts) + "</svg><p>" + " · ".join(legend) + "</p>")


def history_table_html(rows: list[ResultRow], limit: int = 200) -> str:
    body = "".join(
        f"<tr><td class=num>{r.id}</td><td>{escape(when(r.created))}</td>"
        f"<td>{escape(r.device)}</td><td>{escape(r.model)}</td>"
        f"<td>{escape(r.artifact)} <span class=note>{r.sha256[:10]}</span></td>"
        f"<td>{escape(r.runtime)} {escape(str(r.runtime_version))}</td>"
        f"<td class=num>{r.threads}</td><td class=num>{_ms(r.median_ms)}</td>"
        f"<td class=num>{_ms(r.p90_ms)}</td><td class=num>{r.sittings}</td>"
        f"<td>{'<span class=bad>FLAGGED</span>' if r.flagged else 'steady'}</td></tr>"
        for r in rows[-limit:][::-1])
    return ("<table><tr><th>#</th><th>when</th><th>device</th><th>model</th><th>artifact</th>"
            "<th>runtime</th><th>threads</th><th>median ms</th><th>p90 ms</th>"
            "<th>sittings</th><th>device state</th></tr>" + body + "</table>")


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def write_history_html(rows: list[ResultRow], path: Path, title: str,
                       filters: dict[str, Any]) -> Path:
    said = ", ".join(f"{k} {v}" for k, v in filters.items() if v) or "everything stored"
    html = (f"<!doctype html><meta charset=utf-8><title>{escape(title)}</title>"
            f"<style>{STYLE}</style><h1>{escape(title)}</h1>"
            f"<p>{len(rows)} results ({escape(said)}). Dots: median of each result's runs; "
            "ticks: its p90; hollow red rings: the device state was flagged; dashed lines: a "
            "new runtime version.</p>" + trend_svg(rows) + history_table_html(rows))
    write_atomic(path, html)
    return path
