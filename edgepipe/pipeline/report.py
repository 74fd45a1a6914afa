"""The pipeline's HTML report: sizes, parity, latency per format and precision on each
device, and the per-operator breakdown as charts. Self-contained (inline SVG)."""

from __future__ import annotations

from html import escape
from typing import Any

from ..host.compare import side_by_side
from ..host.op_table import OpRow, by_block, by_type
from ..report_parts import (
    PALETTE,
    STYLE,
    floor_text,
    hbar_svg,
    mb_text,
    ms_text,
    parity_text,
    rate_text,
    share_text,
)


def _artifact_table(conversion: dict[str, Any]) -> str:
    rows = []
    for a in conversion["artifacts"]:
        host = f"{a['latency']['median_ms']:.2f}" if a["latency"] else "—"
        rows.append(f"<tr><td>{escape(a['file'])}</td><td>{escape(a['format'])}</td>"
                    f"<td>{escape(a['precision'])}</td><td class=num>{a['size_mb']:.2f}</td>"
                    f"<td>{parity_text(a['parity'])}</td><td class=num>{host}</td>"
                    f"<td class=num>{a['graph'].get('delegate_partitions', '—')}</td></tr>")
    notes = "".join(f'<p class="note">{escape(a["file"])}: parity with '
                    f'{escape(a["parity"]["arithmetic"])}.</p>'
                    for a in conversion["artifacts"] if a["parity"].get("arithmetic"))
    return ("<table><tr><th>artifact</th><th>format</th><th>precision</th><th>size MB</th>"
            "<th>parity vs PyTorch</th><th>host ms</th><th>XNNPACK partitions</th></tr>"
            + "".join(rows) + "</table>" + notes)


def _recommendation_section(recommendations: list[dict[str, Any]]) -> str:
    """Each device's artifact to ship in one line, and why every other one lost."""
    if not recommendations:
        return ""
    html = "<h2>Recommendation</h2>"
    for rec in recommendations:
        budget = 100 * rec["budget"]["max_flip_rate"]
        rows = "".join(
            f"<tr><td>{escape(o['artifact'])}</td><td class=num>{o['threads']}</td>"
            f"<td class=num>{ms_text(o['median_ms'])}</td><td>{escape(o['why'])}</td></tr>"
            for o in rec["others"])
        html += (f"<p class=\"{'pick' if rec['pick'] else 'bad'}\"><b>"
                 f"{escape(rec['line'])}</b></p>"
                 + (f"<table><tr><th>artifact (beaten)</th><th>threads</th><th>median ms</th>"
                    f"<th>why not (budget {budget:g} % vs PyTorch fp32)</th></tr>{rows}"
                    "</table>" if rows else ""))
    return html


def _fp16_cell(r: dict[str, Any]) -> str:
    """An fp16 result's flag: the device's fp16 arithmetic and what its kernels ran."""
    fp16 = r.get("fp16")
    if not fp16:
        return ""
    kernels = (r.get("kernels") or {}).get("words")
    text = escape(fp16.get("words") or "") + (f"; kernels: {escape(kernels)}" if kernels else "")
    if fp16.get("native") is not True:
        return f'<br><span class="bad">fp16 not native: {text}</span>'
    return f"<br>{text}"


def _device_section(entry: dict[str, Any]) -> str:
    info = entry.get("info") or {}
    head = (f"<h2>Device {escape(entry['name'])}</h2><p>{escape(str(info.get('cpu_model')))}"
            f" · {info.get('cores')} cores · {escape(str(info.get('machine')))} · "
            f"{escape(', '.join(f'{k} {v}' for k, v in (info.get('runtimes') or {}).items()))}"
            f" · fingerprint {escape(str(info.get('fingerprint')))}</p>"
            f"<p>{escape(str(info.get('identity_words')))}</p>")
    errors = "".join(f'<p class="bad">{escape(e)}</p>' for e in entry["errors"])
    results = entry["results"]
    if not results:
        return head + errors
    rows, bars = [], []
    for r in results:
        lat = r["latency"]
        label = f"{r['format']} {r['precision']} ×{r['threads']}"
        bars.append((label, lat["median_ms"] if lat["median_ms"] is not None
                       else lat["mean_ms"]))
        state = (f'<span class="bad">FLAGGED: {escape("; ".join(r["flags"]))}</span>'
                 if r.get("flags") else "steady" if r.get("device_state") else "—")
        rows.append(
            f"<tr><td>{escape(r['artifact'])}{_fp16_cell(r)}</td><td>{escape(r['runtime'])}</td>"
            f"<td class=num>{r['threads']}</td><td class=num>{ms_text(lat['median_ms'])}</td>"
            f"<td class=num>{ms_text(lat['p90_ms'])}</td>"
            f"<td class=num>{ms_text(lat['p99_ms'])}</td>"
            f"<td class=num>{ms_text(lat['mean_ms'])} ± {ms_text(lat['std_ms'])}</td>"
            f"<td class=num>{lat['count']}</td>"
            f"<td class=num>{mb_text(r['memory']['peak_rss_mb'])}</td>"
            f"<td class=num>{r['load_ms']:.0f}</td><td>{state}</td>"
            f"<td>{escape(r.get('measured_by') or '—')}</td></tr>")
    table = ("<table><tr><th>artifact</th><th>runtime</th><th>threads</th><th>median ms</th>"
             "<th>p90 ms</th><th>p99 ms</th><th>mean ± std ms</th><th>runs</th>"
             "<th>peak RSS MB</th><th>load ms</th><th>device state</th><th>measured by</th>"
             "</tr>"
             + "".join(rows) + "</table>")
    return (head + errors + _tables_section(entry) + table + "<h3>Median latency</h3>"
            + hbar_svg(bars) + _compare_section(results)
            + "".join(_per_op_section(r) for r in results))


def _side_by_side_html(table: list[dict[str, Any]], labels: list[str], level: str) -> str:
    """One level (block or op type) of runtimes side by side: ms per runtime, ratio to the
    first; "—" where a runtime has no op there."""
    head = "".join(f"<th>{label} ms</th>" + ("<th>×</th>" if k else "")
                   for k, label in enumerate(labels))
    body = ""
    for row in table:
        cells = ""
        for k, ms in enumerate(row["ms"]):
            cells += f"<td class=num>{ms:.3f}</td>" if row["ops"][k] else "<td>—</td>"
            if k:
                ratio = row["ratio"][k]
                cells += (f"<td class=num>{ratio:.2f}</td>"
                          if ratio is not None and row["ops"][k] else "<td></td>")
        body += f"<tr><td>{escape(row['name'])}</td>{cells}</tr>"
    return f"<table><tr><th>{level}</th>{head}</tr>{body}</table>"


def _compare_section(results: list[dict[str, Any]]) -> str:
    """Runtimes side by side, block by block and op type by op type (tables and grouped bars,
    ratio to the first listed), for each precision and thread count that two or more
    artifacts with a per-op table share."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in results:
        if r.get("per_op"):
            groups.setdefault((r["precision"], r["threads"]), []).append(r)
    html = ""
    for (precision, threads), group in groups.items():
        if len(group) < 2:
            continue
        rows = [[OpRow(**o) for o in r["per_op"]] for r in group]
        blocks = side_by_side([by_block(x) for x in rows], "block")
        types = side_by_side([by_type(x) for x in rows], "type")
        labels = [escape(r["runtime"]) for r in group]
        bars = [(f"{row['name']} · {r['runtime']}", row["ms"][k])
                for row in blocks for k, r in enumerate(group)]
        legend = " · ".join(f'<span style="color:{PALETTE[k % len(PALETTE)]}">■</span> '
                            f"{label}" for k, label in enumerate(labels))
        html += (f"<h3>Runtimes side by side: {escape(precision)}, {threads} thread(s)</h3>"
                 f"<p>Sum of per-op medians (each runtime's own profiler, its overhead "
                 f"included), ratio to {labels[0]}; by block, then by op type.</p>"
                 + _side_by_side_html(blocks, labels, "block")
                 + f"<p>{legend}</p>" + hbar_svg(bars, colors=PALETTE[:len(group)])
                 + _side_by_side_html(types, labels, "op type"))
    return html


def _tables_section(entry: dict[str, Any]) -> str:
    """The latency tables of the device and their checks, and what they predict."""
    tables = entry.get("tables")
    if tables is None:
        return ""
    if not tables:
        return ('<p class="note">No latency table for this device (fingerprint '
                f'{escape(str((entry.get("info") or {}).get("fingerprint")))}): collect one '
                "with <code>edgepipe lut collect</code>.</p>")
    items = "".join(f"<li>{escape(t['words'])}{_prediction(t, entry)}"
                    + "".join(f'<br><span class="bad">warning: {escape(w)}</span>'
                              for w in t.get("warnings") or []
                              if w not in t["words"])  # a drift check is in the words
                    + "</li>" for t in tables)
    return f"<h3>Latency tables</h3><ul>{items}</ul>"


def table_prediction_words(table: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """The table's prediction for the run's model beside what the run measured, in words."""
    pred = table.get("model_prediction")
    if not pred:
        return ""
    measured = [r["latency"]["median_ms"] for r in results
                if r["latency"]["median_ms"] is not None and r["runtime"] == pred["runtime"]
                and r["precision"] == pred["precision"] and r["threads"] == pred["threads"]]
    what = (f"{pred['model']} ({pred['runtime']} {pred['precision']}, {pred['threads']} "
            "thread(s))")
    text = (f"predicts for {what}: {pred['words']}" if pred.get("words") else
            f"predicts {pred['predicted_ms']:.3f} ms for {what}")
    if measured:
        error = (pred["predicted_ms"] - measured[0]) / measured[0] * 100
        text += (f"; measured median {measured[0]:.3f} ms: the predicted median is "
                 f"{abs(error):.1f} % {'over' if error >= 0 else 'under'} it")
        low, high = pred.get("interval_ms") or (None, None)
        if low is not None:
            inside = low <= measured[0] <= high
            text += (", inside its 95 % interval" if inside else
                     ", OUTSIDE its 95 % interval: the table does not hold here (check it, "
                     "or collect it again)")
    return text


def _prediction(table: dict[str, Any], entry: dict[str, Any]) -> str:
    words = table_prediction_words(table, entry["results"])
    return f"<br>{escape(words)}" if words else ""


def _per_op_section(result: dict[str, Any]) -> str:
    title = (f"<h3>Per operator: {escape(result['artifact'])}, {result['threads']} "
             f"thread(s)</h3>")
    if not result["per_op"]:
        return title + f'<p class="note">Not available: {escape(result["per_op_note"] or "")}</p>'
    rows = [OpRow(**r) for r in result["per_op"]]
    types = by_type(rows)[:12]
    chart = hbar_svg([(f"{t['type']} ×{t['count']}", t["ms"]) for t in types])
    top = sorted(rows, key=lambda r: -r.ms)[:10]
    stat = top[0].stat if top else "median"
    table = (f"<table><tr><th>op</th><th>type</th><th>delegated</th><th>{stat} ms</th>"
             "<th>p90 ms</th><th>share</th></tr>" + "".join(
                 f"<tr><td>{escape(r.name)}</td><td>{escape(r.type)}</td>"
                 f"<td>{'yes' if r.delegated else 'no'}</td><td class=num>{r.ms:.4f}</td>"
                 f"<td class=num>{ms_text(r.p90_ms, 4)}</td>"
                 f"<td class=num>{r.share:.1%}</td></tr>" for r in top) + "</table>")
    note = f'<p class="note">{escape(result["per_op_note"])}</p>' if result["per_op_note"] else ""
    cost = result.get("per_op_overhead")
    cost_words = (f" Profiling overhead: {cost['profiled_ms']:.3f} ms a run profiled vs "
                  f"{cost['unprofiled_ms']:.3f} ms unprofiled (×{cost['ratio']:.2f})."
                  if cost else "")
    source = escape(result.get("per_op_source") or "ETDump")
    kernels = result.get("kernels")
    kernel_words = (f" XNNPACK kernels by datatype: {escape(kernels['words'])}."
                    if kernels and result.get("precision") == "fp16" else "")
    return (title + f"<p>{len(rows)} ops, whole run {result['per_op_total_ms']:.3f} ms "
            f"({source}, median per op).{cost_words}{kernel_words} Time per operator type:</p>"
            + chart
            + "<p>Slowest operators:</p>" + table + note)


def _rate_cell(r: dict[str, Any] | None) -> str:
    return f"<td class=num>{rate_text(r)}</td>"


def _changed_text(changed: list[dict[str, Any]], most: int = 3) -> str:
    return "; ".join(f"{c['from']} → {c['to']} ({c['count']} image{'s' * (c['count'] > 1)})"
                     for c in changed[:most])


def _evaluation_section(entry: dict[str, Any]) -> str:
    """``edgepipe evaluate``'s figures for one device: top-1/top-5, flips against PyTorch."""
    head = f"<h2>Accuracy on {escape(entry['name'])}</h2>"
    if entry.get("error"):
        return head + f'<p class="bad">{escape(entry["error"])}</p>'
    # the float model on the host first, where there is something to score it against
    shown = [*(entry.get("pytorch") or [] if entry.get("labelled") else []),
             *entry["artifacts"]]
    if any(a["task"] == "segmentation" for a in entry["artifacts"]):
        heads = ("mIoU (masks)", "pixel accuracy (masks)", "pixels as PyTorch",
                 "mIoU vs PyTorch")

        def cells(a: dict[str, Any]) -> str:
            return (f"{_rate_cell(a.get('miou'))}{_rate_cell(a.get('pixel_accuracy'))}"
                    f"<td class=num>{share_text(a['pixel_agreement'])}</td>"
                    f"<td class=num>{share_text(a['miou_vs_pytorch'])}</td>")
    else:
        heads = ("top-1", "top-5", "flips vs PyTorch", "flips where PyTorch holds",
                 "most changed")

        def cells(a: dict[str, Any]) -> str:
            return (f"{_rate_cell(a['top1'])}{_rate_cell(a['top5'])}"
                    f"{_rate_cell(a['flip_rate'])}{_rate_cell(a.get('flip_rate_stable'))}"
                    f"<td>{escape(_changed_text(a['changed']))}</td>")
    flagged = {a["artifact"] for a in entry["artifacts"] if a.get("precision") == "fp16"
               and (entry.get("fp16") or {}).get("native") is not True}
    rows = "".join(f"<tr><td>{escape(a['artifact'])}"
                   + (' <span class="bad">(fp16 not native here)</span>'
                      if a["artifact"] in flagged else "")
                   + f"</td><td class=num>{a['images']}</td>{cells(a)}</tr>" for a in shown)
    floors = "".join(f"<p>Floor: {escape(line)}.</p>" for line in dict.fromkeys(
        floor_text(a) for a in entry["artifacts"]) if line)
    header = "".join(f"<th>{h}</th>" for h in ("artifact", "images", *heads))
    return (head + f"<p>{escape(entry['data'])}; % with 95 % intervals</p><table><tr>"
            + header + "</tr>" + rows + "</table>" + floors)


def render_run_report(run: dict[str, Any]) -> str:
    conversion = run["conversion"]
    size = "x".join(str(s) for s in conversion["input_size"])
    weights = (f"weights sha256 {conversion['weights_sha256'][:12]}…"
               if conversion["weights_sha256"] else
               "random init (seeded), BatchNorm re-estimated on real photos")
    skipped = "".join(f"<li>{escape(s)}</li>" for s in run["skipped"])
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>edgepipe run: {escape(conversion['model'])}</title><style>{STYLE}</style></head><body>
<h1>{escape(conversion['model'])} {size}</h1>
<p>{escape(conversion['task'])} · width ×{conversion['width_mult']} · {escape(weights)}</p>
{_recommendation_section(run.get('recommendations') or [])}
<h2>Artifacts</h2>{_artifact_table(conversion)}
{f'<p class="note">Not measured on devices:</p><ul>{skipped}</ul>' if skipped else ''}
{''.join(_device_section(d) for d in run['devices'])}
{''.join(_evaluation_section(e) for e in run.get('evaluations') or [])}
{_history_section(run)}
</body></html>
"""


def _history_section(run: dict[str, Any]) -> str:
    """This model's stored results over time on every device (`edgepipe history`'s chart)."""
    from ..lab.history import trend_svg
    from ..lab.store import ResultRow

    rows = [ResultRow(**r) for r in run.get("history") or []]
    if not rows:
        return ""
    stored = run.get("stored") or {}
    mine = set(stored.get("result_ids") or [])
    return (f"<h2>History</h2><p>{len(rows)} stored results of this model in "
            f"{escape(str(stored.get('database')))}, {len(mine)} of them from this run "
            "(`edgepipe history --model …` lists them; `edgepipe diff` compares two).</p>"
            + trend_svg(rows))
