"""``report.html``: the conversion report for people (report.json is for programs)."""

from __future__ import annotations

from html import escape
from typing import Any

from ..report_parts import STYLE, parity_text


def _outside_text(graph: dict[str, Any]) -> str:
    """The ops outside the delegate, with what they cost where it was measured, and a
    layout the converter fell back to."""
    text = ", ".join(f"{n} {op}" for op, n in graph["ops_outside_delegate"].items())
    cost = graph.get("outside_cost")
    if cost and cost.get("run_ms"):
        text += (f": {cost['ms']:.3f} of {cost['run_ms']:.3f} ms a run "
                 f"({100 * cost['share']:.1f} %, measured {cost['measured']})")
    if graph.get("exported_nchw"):
        text += f"; {graph['exported_nchw']}"
    return text


def render_report(report: dict[str, Any]) -> str:
    artifacts = report["artifacts"]
    slowest = max((a["latency"]["median_ms"] for a in artifacts if a["latency"]), default=1.0)
    rows = []
    for a in artifacts:
        lat = a["latency"]
        bar = (f'<span class="bar" style="width:{120 * lat["median_ms"] / slowest:.0f}px">'
               f'</span> {lat["median_ms"]:.2f}') if lat else "—"
        outside = a["graph"].get("ops_outside_delegate")
        floats = a["graph"].get("float_ops") if a["precision"] == "int8" else None
        rows.append(
            f"<tr><td>{escape(a['format'])}</td><td>{escape(a['precision'])}</td>"
            f"<td class=num>{a['size_mb']:.2f}</td><td>{parity_text(a['parity'])}</td>"
            f"<td>{bar}</td><td class=num>{a['graph'].get('delegate_partitions', '—')}</td>"
            f"<td>{escape(_outside_text(a['graph'])) if outside else '—'}</td>"
            f"<td>{escape(str(floats)) if floats else '—'}</td></tr>")
    per_image = []
    for a in artifacts:
        for p in a["parity"].get("per_image", []):
            cls = "" if p["torch"] == p["artifact"] else " class=bad"
            per_image.append(
                f"<tr><td>{escape(a['format'])} {escape(a['precision'])}</td>"
                f"<td>{escape(p['image'])}</td><td>{escape(p['torch'])} "
                f"({p['torch_score']:.3f})</td><td{cls}>{escape(p['artifact'])} "
                f"({p['artifact_score']:.3f})</td></tr>")
    size = "x".join(str(s) for s in report["input_size"])
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>edgepipe: {escape(report['model'])}</title><style>{STYLE}</style></head><body>
<h1>{escape(report['model'])} {size}</h1>
<p>task: {escape(report['task'])} · width ×{report['width_mult']} ·
weights: {escape(f"sha256 {report['weights_sha256']}" if report['weights_sha256']
                 else "random init (seeded), BatchNorm re-estimated on real photos")} ·
host latency with {report['threads']} thread(s)</p>
{''.join(f"<p>note: {escape(n)}</p>" for n in report.get("notes", []))}
<table><tr><th>format</th><th>precision</th><th>size MB</th><th>parity vs PyTorch</th>
<th>host ms (median)</th><th>XNNPACK partitions</th><th>ops outside</th>
<th>float ops (int8)</th></tr>
{''.join(rows)}</table>
{''.join(f"<p class=note>{escape(a['format'])} {escape(a['precision'])}: parity with "
         f"{escape(a['parity']['arithmetic'])}</p>" for a in artifacts
         if a['parity'].get('arithmetic'))}
{'<h2>Top-1 per photo</h2><table><tr><th>artifact</th><th>photo</th><th>PyTorch</th>'
 '<th>artifact</th></tr>' + ''.join(per_image) + '</table>' if per_image else ''}
</body></html>
"""
