"""Terminal display for the CLI: progress bars and result tables (rich)."""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Table

from .report_parts import floor_text, mb_text, ms_text, rate_text, share_text


def _terminal_stream():
    # A duplicate of stdout taken now: conversions later point fd 1/2 at a log file to
    # catch the converters' native chatter, and the progress bar must still be seen.
    try:
        return os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    except (OSError, ValueError, AttributeError):
        return sys.stdout


_stream = _terminal_stream()
# rich falls back to 80 columns off a terminal (CI logs, pipes): too narrow for the tables
console = Console(file=_stream, width=None if _stream.isatty() else 120)


class ProgressBar:
    """A rich progress bar implementing the converters' ``Progress`` protocol."""

    def __init__(self, title: str, transient: bool = False) -> None:
        self.title = title
        self._bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                                 transient=transient,
                                 # keep Python's streams: converter chatter goes to the log
                                 redirect_stdout=False, redirect_stderr=False)
        self._task = None

    def __enter__(self) -> ProgressBar:
        self._bar.__enter__()
        self._task = self._bar.add_task(self.title, total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if any(exc):
            # a failed run ends with its one-line error, not a half-filled bar above it
            self._bar.live.transient = True
        elif self._task is not None:
            self._bar.update(self._task, description=f"{self.title}: done",
                             completed=self._bar.tasks[0].total)
        self._bar.__exit__(*exc)  # type: ignore[arg-type]

    def start(self, total: int) -> None:
        self._bar.update(self._task, total=total)

    def step(self, description: str) -> None:
        task = self._bar.tasks[0]
        completed = task.completed + (1 if task.description != self.title else 0)
        self._bar.update(self._task, description=f"{self.title}: {description}",
                         completed=completed)


def _parity_cell(parity: dict[str, Any]) -> str:
    if not parity.get("executed"):
        return f"validated, not run ({parity.get('op_count', '?')} ops)"
    agree = parity.get("top1_agreement", parity.get("pixel_agreement"))
    kind = "top-1" if "top1_agreement" in parity else "pixels"
    return f"{kind} {agree:.0%} · max|Δ| {parity['max_abs_error']:.2g}"


def _ops_text(counts: dict[str, int]) -> str:
    """``{"LOGISTIC": 49, "MUL": 49}`` → "49 LOGISTIC, 49 MUL", most frequent first."""
    return ", ".join(f"{n} {op}" for op, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _outside_cost_text(graph: dict[str, Any]) -> str:
    """" — 0.052 ms of a 1.310 ms run (4.0 %; split_with_sizes_copy 0.050 ms …), measured
    here with ETDump" for a graph whose ops outside the delegate were timed."""
    cost = graph.get("outside_cost")
    if not cost or not cost.get("run_ms"):
        return ""
    ops = ", ".join(f"{op} {ms:.3f} ms" for op, ms in list(cost["ops_ms"].items())[:4])
    return (f" — {cost['ms']:.3f} ms of a {cost['run_ms']:.3f} ms run "
            f"({100 * cost['share']:.1f} %: {ops}), measured {cost['measured']}")


def print_convert_table(report: dict[str, Any]) -> None:
    """The conversion's table: parity, latency, and whether each graph is whole (XNNPACK
    partitions, ops left outside the delegate, float ops left in an int8 graph; the ops are
    named below the table)."""
    table = Table(title=f"{report['model']} {report['input_size'][0]}x{report['input_size'][1]}"
                        f" — host latency (median) with {report['threads']} thread(s)")
    for col in ("format", "precision", "MB", "parity vs PyTorch", "host ms", "partitions",
                "outside", "float (int8)"):
        table.add_column(col, justify="left" if col in ("format", "precision",
                                                        "parity vs PyTorch") else "right")
    details = []
    for a in report["artifacts"]:
        latency = a["latency"]["median_ms"] if a["latency"] else None
        graph = a["graph"]
        outside = graph.get("ops_outside_delegate")
        floats = graph.get("float_ops") if a["precision"] == "int8" else None
        name = f"{a['format']} {a['precision']}"
        if outside:
            details.append(f"{name}: {sum(outside.values())} op(s) outside the delegate: "
                           f"{_ops_text(outside)}{_outside_cost_text(graph)}")
        if graph.get("exported_nchw"):
            details.append(f"{name}: {graph['exported_nchw']}")
        if floats:
            details.append(f"{name}: {sum(floats.values())} op(s) left in float: "
                           f"{_ops_text(floats)}")
        if a["parity"].get("arithmetic"):
            details.append(f"{name}: parity with {a['parity']['arithmetic']}")
        table.add_row(a["format"], a["precision"], f"{a['size_mb']:.2f}",
                      _parity_cell(a["parity"]),
                      f"{latency:.2f}" if latency is not None else "—",
                      str(graph.get("delegate_partitions", "—")),
                      str(sum(outside.values())) if outside is not None else "—",
                      str(sum(floats.values())) if floats is not None else "—")
    console.print(table)
    for line in details:
        console.print(f"  {line}")
    for note in report.get("notes", []):
        console.print(f"note: {note}")


class PhaseProgress:
    """One bar per phase of a long job (latency tables), with counts, elapsed time and ETA."""

    def __init__(self) -> None:
        self._bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn(), console=console,
                                 redirect_stdout=False, redirect_stderr=False)
        self._task = None

    def __enter__(self) -> PhaseProgress:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(*exc)  # type: ignore[arg-type]

    def phase(self, name: str, total: int) -> None:
        self._task = self._bar.add_task(name, total=total)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._bar.advance(self._task, n)


class JobProgress(ProgressBar):
    """A progress bar fed by an agent job's state (``update`` takes the job as JSON)."""

    def __init__(self, title: str) -> None:
        super().__init__(title, transient=True)

    def update(self, job: dict[str, Any]) -> None:
        progress = job.get("progress") or {}
        phase = progress.get("phase", job["state"])
        self._bar.update(self._task, description=f"{self.title}: {phase}",
                         total=progress.get("total"), completed=progress.get("done", 0))


def device_words(device: dict[str, Any]) -> str:
    """A device without an identity (no agent): its architecture and CPU, and why."""
    return (f"{device.get('machine') or '?'}, {device.get('cpu_model') or 'CPU unknown'}; "
            "no fingerprint (no agent)")


def fp16_note(fp16: dict[str, Any] | None, kernels: dict[str, Any] | None) -> str | None:
    """An fp16 result's flag in words: whether the device computes fp16 natively, and what
    its XNNPACK kernels ran (the per-op evidence); None for other precisions."""
    if not fp16:
        return None
    head = ("fp16 native on this CPU" if fp16.get("native") else
            "[bold yellow]fp16 NOT native[/] on this CPU" if fp16.get("native") is False else
            "fp16 arithmetic of this device unknown")
    words = f"{head}: {escape(fp16.get('words') or '')}"
    if kernels:
        words += f"; XNNPACK kernels: {escape(kernels.get('words') or '')}"
    return words


def print_profile(result: Any, top: int | None = 15) -> None:
    """Whole-model stats and the per-op table of a ``ProfileResult``."""
    lat, device = result.latency, result.device
    who = device.get("identity_words") or device_words(device)
    console.print(f"[bold]{result.artifact}[/] ({result.format} {result.precision}) on "
                  f"{device.get('hostname')} {escape(f'[{who}]')}, "
                  f"{result.runtime}, {result.threads} thread(s)")
    console.print(f"  {latency_words(lat)} · load {ms_text(result.load_ms, 0)} ms · "
                  f"peak RSS {mb_text(result.memory['peak_rss_mb'])} MB"
                  + (f" · measured by {result.measured_by}" if result.measured_by else ""))
    delegation = getattr(result, "delegation", None)
    if delegation:
        console.print(f"  delegation: {delegation['words']}")
    for i, r in enumerate((result.repeats or []) if result.replicability else []):
        console.print(f"  repeat {i + 1}: {latency_words(r['latency'])}")
    if result.replicability:
        rep = result.replicability
        verdict = ("[green]replicable[/]" if rep["replicable"] else "[bold red]NOT "
                   "replicable[/]")
        console.print(f"  {verdict}: the {rep['repeats']} repeats' medians are "
                      f"{rep['spread_pct']:.1f} % apart (MLPerf Mobile: within "
                      f"{rep['within_pct']:g} %)")
    console.print("  device state: " + state_words(result.device_state, result.flags))
    note = fp16_note(getattr(result, "fp16", None), getattr(result, "kernels", None))
    if note:
        console.print(f"  {note}")
    if not result.per_op:
        note = result.per_op_note or "per-op not available because the agent gave no reason"
        console.print(f"  {note}")
        return
    rows = sorted(result.per_op, key=lambda r: -r.ms)[:top]
    stat = rows[0].stat if rows else "median"
    source = getattr(result, "per_op_source", None) or "ETDump"
    table = Table(title=f"slowest {len(rows)} of {len(result.per_op)} ops "
                        f"(whole run {result.per_op_total_ms:.3f} ms, {source})")
    for col in ("op", "type", "delegated", f"{stat} ms", "p90 ms", "share"):
        table.add_column(col, justify="right" if col in (f"{stat} ms", "p90 ms", "share")
                         else "left")
    for r in rows:
        table.add_row(r.name, r.type, "yes" if r.delegated else "no", f"{r.ms:.3f}",
                      ms_text(r.p90_ms), f"{r.share:.1%}")
    console.print(table)
    summed = sum(r.ms for r in result.per_op)
    if result.per_op_total_ms:
        console.print(f"  the ops' {stat}s add up to {summed:.3f} ms, "
                      f"{summed / result.per_op_total_ms:.0%} of the whole run")
    placed = getattr(result, "per_op_placed", None)
    if placed:
        from .host.op_table import by_block

        blocks = by_block(result.per_op)
        console.print(f"  by block ({placed}): " + " · ".join(
            f"{b['block']} {b['ms']:.3f}" for b in blocks) + " ms")
    cost = getattr(result, "per_op_overhead", None)
    if cost:
        console.print(f"  profiling overhead: {cost['profiled_ms']:.3f} ms a run profiled vs "
                      f"{cost['unprofiled_ms']:.3f} ms unprofiled (×{cost['ratio']:.2f}, "
                      + (f"medians of {cost['runs']} runs)" if cost.get("stat") != "mean"
                         else "means of the tool's runs)"))
    if result.per_op_note:
        console.print(f"  note: {result.per_op_note}")


def print_comparison(comparison: Any) -> None:
    """Each artifact's whole run, then ms per block and per op type side by side with the
    ratio to the first artifact."""
    ratios = comparison.run_ratios()
    for k, (label, r) in enumerate(zip(comparison.labels, comparison.results, strict=True)):
        cost = r.per_op_overhead
        console.print(f"[bold]{label}[/]: {r.artifact}, median "
                      f"{ms_text(r.latency['median_ms'])} ms unprofiled"
                      + (f" (×{ratios[k]:.2f} the first)" if k and ratios[k] else "")
                      + (f"; {r.delegation['words']}" if r.delegation else "")
                      + "; profiled "
                      f"{r.per_op_total_ms:.3f} ms a run"
                      + (f" (overhead ×{cost['ratio']:.2f})" if cost else "")
                      + (f"; {r.per_op_placed}" if r.per_op_placed else "")
                      + (f"; measured by {r.measured_by}" if r.measured_by else ""))
        if r.kernels and any(x.precision == "fp16" for x in comparison.results):
            # fp16 beside other precisions: which kernels each ran is the point
            console.print(f"  XNNPACK kernels: {r.kernels['words']}"
                          + (f" · {fp16_note(r.fp16, None)}" if r.fp16 else ""))
    base = comparison.labels[0]
    means = [label for label, r in zip(comparison.labels, comparison.results, strict=True)
             if r.per_op and r.per_op[0].stat == "mean"]
    stat = "medians" + (f"; means for {', '.join(means)}, whose runtime gives no median"
                        if means else "")
    for title, table in (("by block", comparison.blocks), ("by op type", comparison.types)):
        out = Table(title=f"{title}: ms (sum of per-op {stat}), ratio to {base}")
        out.add_column(title.removeprefix("by "))
        for k, label in enumerate(comparison.labels):
            out.add_column(label, justify="right")
            if k:
                out.add_column("×", justify="right")
        for row in table:
            cells = [row["name"]]
            for k, ms in enumerate(row["ms"]):
                cells.append(f"{ms:.3f}" if row["ops"][k] else "—")
                if k:
                    ratio = row["ratio"][k]
                    cells.append("" if ratio is None or not row["ops"][k] else f"{ratio:.2f}")
            out.add_row(*cells)
        totals = [sum(r["ms"][k] for r in table) for k in range(len(comparison.labels))]
        present = [any(r["ops"][k] for r in table) for k in range(len(comparison.labels))]
        cells = ["all ops"]
        for k, t in enumerate(totals):
            cells.append(f"{t:.3f}" if present[k] else "— (not placed)")
            if k:
                cells.append(f"{t / totals[0]:.2f}" if totals[0] and present[k] else "")
        out.add_row(*cells, style="bold")
        console.print(out)
    for line in comparison.findings:
        console.print(f"[bold]{escape(line)}[/]")


def latency_words(lat: dict[str, Any]) -> str:
    """median, p90, p99, mean ± std, runs and span of a latency record, on one line (a
    statistic the measuring tool does not give: "—")."""
    words = (f"median {ms_text(lat['median_ms'])} ms · p90 {ms_text(lat['p90_ms'])} · p99 "
             f"{ms_text(lat['p99_ms'])} · mean {ms_text(lat['mean_ms'])} ± "
             f"{ms_text(lat['std_ms'])} · min {ms_text(lat['min_ms'])} · n={lat['count']} "
             f"over {lat['span_s']:.2f} s")
    if lat.get("statistics_from"):
        words += f" ({lat['statistics_from']})"
    return words


def state_words(state: dict[str, Any] | None, flags: list[str] | None = None) -> str:
    """A job's device state: the flags raised, or what was watched and found steady."""
    if state is None:
        return "not recorded (an older agent)"
    if state.get("not_read"):
        return state["not_read"]
    if flags:
        return "[bold red]FLAGGED[/]: " + "; ".join(flags)
    readable = [k for k, v in state.get("readable", {}).items() if v]
    if not readable:
        return ("steady as far as known: this device exposes no frequency, governor, "
                "temperature or throttling state (null in the result)")
    return f"steady ({', '.join(readable)} watched at start and end)"


def path_words(measured_by: str | None) -> str:
    """Which path measured, in a word or two (the whole sentence is in the report)."""
    if not measured_by:
        return "?"
    for key, words in (("lean C++ runner", "C++ runner"), ("benchmark_model", "benchmark_model"),
                       ("Python", "Python")):
        if key in measured_by:
            return words
    return measured_by.split(" ")[0]


def print_run_summary(run: dict[str, Any]) -> None:
    print_convert_table(run["conversion"])
    for entry in run["devices"]:
        table = Table(title=f"on {entry['name']} "
                            f"({(entry.get('info') or {}).get('identity_words', '?')})")
        for col in ("artifact", "by", "threads", "median ms", "p90 ms", "p99 ms",
                    "mean ± std", "peak RSS MB", "per-op", "device state"):
            table.add_column(col, justify="left" if col in ("artifact", "by", "device state")
                             else "right", overflow="fold")
        for r in entry["results"]:
            lat = r["latency"]
            name = r["artifact"]
            if r.get("fp16") and r["fp16"].get("native") is not True:
                name += " [yellow](fp16 not native)[/]"
            table.add_row(name, path_words(r.get("measured_by")), str(r["threads"]),
                          ms_text(lat["median_ms"]),
                          ms_text(lat["p90_ms"]), ms_text(lat["p99_ms"]),
                          f"{ms_text(lat['mean_ms'])} ± {ms_text(lat['std_ms'])}",
                          mb_text(r['memory']['peak_rss_mb']),
                          f"{len(r['per_op'])} ops" if r["per_op"] else "n/a",
                          "[bold red]FLAGGED[/]: " + "; ".join(r["flags"]) if r.get("flags")
                          else "steady" if r.get("device_state") else "not recorded")
        console.print(table)
        from .pipeline.report import table_prediction_words

        for line in entry.get("tables") or []:
            words = table_prediction_words(line, entry["results"])
            console.print(f"latency table: {line['words']}" + (f"; {words}" if words else ""))
        fp16 = next((r for r in entry["results"] if r.get("fp16")), None)
        if fp16:
            console.print(f"fp16 on {entry['name']}: {escape(fp16['fp16']['words'])}; "
                          + "; ".join(f"{r['artifact']} ran {r['kernels']['words']}"
                                      for r in entry["results"]
                                      if r.get("fp16") and r.get("kernels")))
        for error in entry["errors"]:
            console.print(f"[red]error:[/] {error}")
    print_recommendations(run.get("recommendations") or [])


def print_recommendations(recommendations: list[dict[str, Any]]) -> None:
    """Each device's artifact to ship, in one line, then why each other artifact lost."""
    for rec in recommendations:
        console.print(f"[bold green]recommended[/] {escape(rec['line'])}")
        for other in rec["others"]:
            console.print(f"  {escape(other['artifact'])} ×{other['threads']}: "
                          f"{escape(other['why'])}")


def inference_rss_text(summary: Any) -> str:
    """The inference process's memory beside the demo's own (where it ran in one)."""
    extra = getattr(summary, "inference_rss_mb", None)
    if extra is None:
        return ""
    return (f", + {extra:.0f} MB in the inference process "
            f"({summary.rss_end_mb + extra:.0f} MB in all)")


def _in_flight(summary: Any) -> str:
    n = getattr(summary, "in_flight", 0)
    return f" · {n} in flight at the stop (not dropped)" if n else ""


def print_demo_summary(summary: Any) -> None:
    stages = " · ".join(f"{k} {v:.2f}" for k, v in summary.stage_ms.items())
    counts = [("captured", summary.captured), ("inferred", summary.inferred),
              ("shown", summary.shown)]
    if summary.written is not None:
        counts.append(("written", summary.written))
    def rate(per_second: float | None) -> str:  # one frame has no rate: not 0.0/s
        return "—" if per_second is None else f"{per_second:.1f}"

    frames = " · ".join(f"{name} {n} ({rate(summary.rates.get(name))}/s)"
                        for name, n in counts)
    dropped = ", ".join(f"{n} {where}" for where, n in summary.dropped.items())
    console.print(
        f"[bold]demo summary[/]: {summary.artifact} on {summary.runtime}, source "
        f"{summary.source}\n  {summary.seconds:.1f} s · frames {frames}\n"
        f"  dropped: {dropped or 'none'}{_in_flight(summary)} · inference "
        f"{rate(summary.fps)} FPS\n"
        f"  mean ms: {stages}\n  RSS {summary.rss_start_mb:.0f} MB at start, "
        f"{summary.rss_end_mb:.0f} MB at end{inference_rss_text(summary)}")
    if getattr(summary, "frames", ""):
        console.print(f"  frames: {summary.frames}")
    if getattr(summary, "camera_order", None):
        console.print(f"  camera byte order: {summary.camera_order}")
    if getattr(summary, "video_seconds", None) is not None:
        console.print(f"  the annotated video spans {summary.video_seconds:.2f} s")
    for note in [*summary.guesses, *summary.display_notes]:
        console.print(f"  note: {note}")
    for warning in summary.warnings:
        console.print(f"  [bold red]warning:[/] {warning}")


def print_evaluation(summary: dict[str, Any]) -> None:
    """Per artifact: top-1/top-5 with 95 % intervals, flip rate against PyTorch, what
    changed most (``edgepipe evaluate``)."""
    console.print(f"data: {escape(summary['data'])}; device: {summary['device']}")
    table = Table(title="on the device, % (95 % interval)")
    segmentation = any(a["task"] == "segmentation" for a in summary["artifacts"])
    columns = ["artifact", "images", "top-1", "top-5", "flips vs PyTorch",
               "flips where PyTorch holds"]
    if segmentation:  # one task per evaluation: the other's columns would stay empty
        columns = ["artifact", "images", "mIoU (masks)", "pixel accuracy (masks)",
                   "pixels as PyTorch", "mIoU vs PyTorch"]
    for col in columns:
        table.add_column(col, justify="left" if col == "artifact" else "right",
                         overflow="fold")
    labelled = summary.get("labelled")
    not_native = (summary.get("fp16") or {}).get("native") is not True
    for a in [*(summary.get("pytorch") or [] if labelled else []), *summary["artifacts"]]:
        name = a["artifact"]
        if a.get("precision") == "fp16" and summary.get("fp16") and not_native:
            name += " [yellow](fp16 not native)[/]"
        if segmentation:
            table.add_row(name, str(a["images"]), rate_text(a.get("miou")),
                          rate_text(a.get("pixel_accuracy")),
                          share_text(a["pixel_agreement"]), share_text(a["miou_vs_pytorch"]))
        else:
            table.add_row(name, str(a["images"]), rate_text(a["top1"]),
                          rate_text(a["top5"]), rate_text(a["flip_rate"]),
                          rate_text(a.get("flip_rate_stable")))
    console.print(table)
    if summary.get("fp16") and any(a.get("precision") == "fp16" for a in summary["artifacts"]):
        console.print(f"  fp16 on {summary['device']}: {escape(summary['fp16']['words'])}")
    for line in dict.fromkeys(floor_text(a) for a in summary["artifacts"]):
        if line:
            console.print(f"  floor: {line}")
    for a in summary["artifacts"]:
        if a["changed"]:
            console.print(f"  {a['artifact']}: most changed " + "; ".join(
                f"{c['from']} → {c['to']} ({c['count']} image{'s' * (c['count'] > 1)})"
                for c in a["changed"]))
        if a["failed"]:
            console.print(f"  {a['artifact']}: {len(a['failed'])} image(s) not decoded on the "
                          f"device, e.g. {a['failed'][0]}")
        if a["note"]:
            console.print(f"  {a['artifact']}: {escape(a['note'])}")
    for note in summary.get("skipped", []):
        console.print(f"  skipped {note}")


def print_int8_analysis(report: dict[str, Any], top: int = 10) -> None:
    """``convert --sensitivity`` / ``--keep-float``: the layers int8 hurts most, the layers
    kept in float and what they cost."""
    analysis = report["int8_analysis"]
    ranking = analysis.get("sensitivity")
    if ranking:
        base = ranking["int8"]
        table = Table(title=f"int8 sensitivity, worst {min(top, len(ranking['layers']))} of "
                            f"{len(ranking['layers'])} layers (all int8: SQNR "
                            f"{base['sqnr_db']:.1f} dB, top-1 agreement "
                            f"{base['agreement']:.0%}; {ranking['images']} images)")
        for col in ("rank", "layer", "MMACs", "alone int8 dB", "alone int8 agree",
                    "alone float dB", "alone float agree"):
            table.add_column(col, justify="left" if col == "layer" else "right")
        for r in ranking["layers"][:top]:
            table.add_row(str(r["rank"]), r["layer"], f"{r['macs'] / 1e6:.2f}",
                          f"{r['alone_int8']['sqnr_db']:.1f}",
                          f"{r['alone_int8']['agreement']:.0%}",
                          f"{r['alone_float']['sqnr_db']:.1f}",
                          f"{r['alone_float']['agreement']:.0%}")
        console.print(table)
    tensors = (ranking or {}).get("activations")
    if tensors:
        rows = tensors["tensors"]
        table = Table(title=f"int8 activations, worst {min(top, len(rows))} of {len(rows)} "
                            "(the tensors requantized between layers)")
        for col in ("rank", "tensor", "scale", "alone int8 dB", "alone int8 agree",
                    "alone float dB", "alone float agree"):
            table.add_column(col, justify="left" if col == "tensor" else "right")
        for r in rows[:top]:
            table.add_row(str(r["rank"]), r["tensor"], f"{r['scale']:.3g}",
                          f"{r['alone_int8']['sqnr_db']:.1f}",
                          f"{r['alone_int8']['agreement']:.0%}",
                          f"{r['alone_float']['sqnr_db']:.1f}",
                          f"{r['alone_float']['agreement']:.0%}")
        console.print(table)
        a, w, q = tensors["activations_float"], tensors["weights_float"], tensors["int8"]
        console.print(f"  split: all int8 {q['sqnr_db']:.1f} dB ({q['agreement']:.0%} agree); "
                      f"weights int8, activations float {a['sqnr_db']:.1f} dB "
                      f"({a['agreement']:.0%}); activations int8, weights float "
                      f"{w['sqnr_db']:.1f} dB ({w['agreement']:.0%})")
    choice = analysis.get("keep_float")
    if choice:
        target = choice["target"]
        got = choice["fidelity"]
        verdict = "reached" if choice["reached"] else "[bold red]NOT reached[/]"
        console.print(f"keep-float auto: target {target['metric']} ≥ {target['value']:g} "
                      f"{verdict} with {len(choice['float_layers'])} layer(s) in float: "
                      f"{', '.join(choice['float_layers']) or 'none'} (SQNR "
                      f"{got['sqnr_db']:.1f} dB, agreement {got['agreement']:.0%}; all int8 "
                      f"{choice['int8']['sqnr_db']:.1f} dB, {choice['int8']['agreement']:.0%})")
        ceiling = choice.get("ceiling")
        if ceiling and not choice["reached"]:
            console.print(f"  with every layer in float the model reaches only "
                          f"{ceiling['sqnr_db']:.1f} dB, agreement {ceiling['agreement']:.0%}: "
                          "the rest of the error is in int8 activations between the layers "
                          "(adds, pools, the input), which --keep-float does not change")
    for a in report["artifacts"]:
        cost = a.get("latency_cost")
        if a.get("float_layers") and cost:
            ratio = cost.get("ratio")
            console.print(f"  {a['file']}: {len(a['float_layers'])} float layer(s), latency "
                          + (f"×{ratio:.3f} of all-int8 ({cost['median_ms']:.3f} vs "
                             f"{cost['plain_int8_median_ms']:.3f} ms, {cost['measured']})"
                             if ratio else cost.get("why", "not measured")))
