"""Reading LiteRT's ``benchmark_model`` (host side): what it prints, as edgepipe's records.

``benchmark_model`` (LiteRT's native benchmark tool; prebuilt for android_arm64 and
linux_aarch64) prints, for its warm-up and its timed runs, one statistics line in
microseconds (``tensorflow/tsl/util/stats_calculator.h``, ``Stat::OutputToStream``)::

    count=50 first=37483 curr=37520 min=37185 max=38165 avg=37464.5 std=198

newer builds append ``p5=… median=… p95=…`` (``StatWithPercentiles``). Nothing else per run
is printed: where a build gives no median, the median is null here, never estimated from the
mean. With ``--enable_op_profiling=true`` it prints the profile summarizer's tables after
"Operator-wise Profiling Info for Regular Benchmark Runs:" (``StatsCalculator``; the same text
LiteRT's ``LiteRtGetProfileSummary`` returns, which is how the parser is tested here): a
"Run Order" table with ``[node type] [start] [first] [avg ms] [%] [cdf%] [mem KB]
[times called] [Name]`` (``[start]`` absent in some builds), or the same as CSV
(``--profiling_output_csv_file``). ``[avg ms]`` is per call; ``[times called]`` is per run in
``benchmark_model`` and the total over the runs in LiteRT's summarizer (:func:`op_times`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import EdgepipeError

STAT_LINE = re.compile(r"\bcount=(\d+)\b(.*)$")
STAT_FIELD = re.compile(r"\b(first|curr|min|max|avg|std|p5|median|p95)=(-?[\d.]+(?:e[-+]?\d+)?)")
RUN_HEADER = "Operator-wise Profiling Info for Regular Benchmark Runs"
NUMBER = r"(-?[\d.]+(?:e[-+]?\d+)?%?)"
FOOTPRINT = re.compile(r"Memory footprint delta from the start of the tool \(MB\): "
                       r"init=([\d.]+) overall=([\d.]+)")
PEAK = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring: ([\d.]+)")
TIMINGS = re.compile(r"Inference timings in us: Init: ([\d.]+), First inference: ([\d.]+)")


OPS_OVER_RUN = 1.25  # the ops' times may exceed the run's by timer granularity, not more
OPS_UNDER_RUN = 0.1  # ... and leave at most 90 % of a run to the runtime itself


class UnreadableOutput(EdgepipeError):
    """What a runner printed does not hold what edgepipe reads from it."""


@dataclass
class OpLine:
    """One row of the "Run Order" table, as printed (times in ms)."""

    type: str
    name: str
    first_ms: float
    avg_ms: float  # per call
    percent: float
    times_called: int


@dataclass
class BenchmarkModelOutput:
    runs: dict[str, float]  # the timed runs' statistics line, µs (count, min, max, avg, ...)
    warmup: dict[str, float] | None = None
    init_ms: float | None = None
    first_ms: float | None = None
    memory_mb: dict[str, float | None] = field(default_factory=dict)
    ops: list[OpLine] | None = None  # with --enable_op_profiling


def _stat(line: str) -> dict[str, float] | None:
    match = STAT_LINE.search(line)
    if not match:
        return None
    stat = {"count": float(match.group(1))}
    stat.update({k: float(v) for k, v in STAT_FIELD.findall(match.group(2))})
    if "(all same)" in line or ("min" not in stat and "curr" in stat):
        value = stat["curr"]  # "count=N curr=X(all same)": every run took X
        stat.update(min=value, max=value, avg=value, std=0.0, first=value)
    return stat if "avg" in stat else None


def parse_output(text: str) -> BenchmarkModelOutput:
    """The records in ``benchmark_model``'s output (stdout and stderr together). Raises
    :class:`UnreadableOutput` when it holds no statistics line for the timed runs."""
    lines = text.splitlines()
    stats: list[dict[str, float]] = []
    for line in lines:
        if "Timings (microseconds)" in line:  # the summarizer's own line, not a run's
            continue
        stat = _stat(line)
        if stat is not None:
            stats.append(stat)
    if not stats:
        raise UnreadableOutput("no statistics line (count=… avg=…) for the timed runs")
    out = BenchmarkModelOutput(runs=stats[-1], warmup=stats[-2] if len(stats) > 1 else None)
    timings = TIMINGS.search(text)
    if timings:
        out.init_ms, out.first_ms = (float(timings.group(i)) / 1000 for i in (1, 2))
    footprint, peak = FOOTPRINT.search(text), PEAK.search(text)
    out.memory_mb = {"init_delta": float(footprint.group(1)) if footprint else None,
                     "overall_delta": float(footprint.group(2)) if footprint else None,
                     "peak": float(peak.group(1)) if peak else None}
    start = next((i for i, line in enumerate(lines) if RUN_HEADER in line), None)
    if start is not None:
        out.ops = parse_run_order(lines[start + 1:])
    return out


def _columns(header: str) -> list[str]:
    if "[" in header:
        return [c.strip().lower() for c in re.findall(r"\[([^\]]+)\]", header)]
    return [c.strip().lower().replace("_", " ") for c in header.split(",")]


def parse_run_order(lines: list[str]) -> list[OpLine]:
    """The "Run Order" table's rows (text or CSV), up to its first blank line. Raises
    :class:`UnreadableOutput` when the table is missing or a row does not match its header."""
    begin = next((i for i, line in enumerate(lines) if "Run Order" in line), None)
    if begin is None or begin + 1 >= len(lines):
        raise UnreadableOutput("the op profile has no 'Run Order' table")
    columns = _columns(lines[begin + 1])
    need = {"node type", "first", "avg ms", "%", "times called", "name"}
    if not need <= set(columns) or columns[0] != "node type" or columns[-1] != "name":
        raise UnreadableOutput(f"the 'Run Order' table's columns are not the known ones: "
                               f"{columns}")
    csv = "[" not in lines[begin + 1]
    row = re.compile(r"^\s*(\S.*?)\s+" + r"\s+".join([NUMBER] * (len(columns) - 2))
                     + r"\s+(\S.*?)\s*$")
    ops = []
    for line in lines[begin + 2:]:
        if not line.strip():
            break
        if csv:
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != len(columns):
                raise UnreadableOutput(f"a CSV row has {len(parts)} fields, the header "
                                       f"{len(columns)}: {line.strip()[:120]}")
            values = parts
        else:
            match = row.match(line)
            if not match:
                raise UnreadableOutput(f"a 'Run Order' row does not read: {line.strip()[:120]}")
            values = list(match.groups())
        cell = dict(zip(columns, values, strict=True))
        try:
            ops.append(OpLine(
                type=cell["node type"], name=cell["name"].replace("\t", ","),
                first_ms=float(cell["first"]), avg_ms=float(cell["avg ms"]),
                percent=float(cell["%"].rstrip("%")),
                times_called=int(float(cell["times called"]))))
        except ValueError as exc:
            raise UnreadableOutput(f"a 'Run Order' row holds {exc}: {line.strip()[:120]}") \
                from None
    if not ops:
        raise UnreadableOutput("the 'Run Order' table has no rows")
    return ops


def op_times(ops: list[OpLine], runs: int, run_ms: float) -> tuple[list[float], str]:
    """Each row's time per run (ms) and which convention its ``[times called]`` follows.

    ``[avg ms]`` is per call. ``benchmark_model`` prints calls per run (mostly 1, more for a
    row that gathers several ops), LiteRT's summarizer the total over the ``runs`` profiled
    runs: every row a multiple of ``runs``. A table where every row is a multiple of
    ``runs`` (``runs`` > 1) is read as totals, any other as calls per run. The ops run
    inside the run: a table whose times add up to more than the run (``run_ms``, the same
    runs' mean; :data:`OPS_OVER_RUN` allows for timer granularity) or to less than
    :data:`OPS_UNDER_RUN` of it is not trusted (:class:`UnreadableOutput`)."""
    per_run = [op.avg_ms * max(op.times_called, 1) for op in ops]
    if runs > 1 and all(op.times_called > 0 and op.times_called % runs == 0 for op in ops):
        times, convention = [t / runs for t in per_run], f"calls over all {runs} runs"
    else:
        times, convention = per_run, "calls per run"
    total = sum(times)
    if not OPS_UNDER_RUN * run_ms <= total <= OPS_OVER_RUN * run_ms:
        raise UnreadableOutput(f"the op table's times ({convention}) add up to {total:.3f} "
                               f"ms a run, not within the run's {run_ms:.3f} ms")
    return times, convention


def latency_record(stat: dict[str, float]) -> dict[str, Any]:
    """A job's ``latency`` record (ms) from a statistics line: what the line gives, and null
    for what it does not (p10, p90, p99 always; the median where the build prints none)."""
    ms = {k: v / 1000 for k, v in stat.items() if k != "count"}
    count = int(stat["count"])
    given = ["count", "min", "max", "avg", "std"] + [k for k in ("p5", "median", "p95")
                                                      if k in stat]
    return {"median_ms": ms.get("median"), "mean_ms": ms["avg"], "std_ms": ms.get("std"),
            "p10_ms": None, "p90_ms": None, "p99_ms": None,
            "min_ms": ms.get("min"), "max_ms": ms.get("max"), "count": count,
            "span_s": ms["avg"] * count / 1000, "sustained_ms": None, "cpu_share": None,
            "p5_ms": ms.get("p5"), "p95_ms": ms.get("p95"),
            "statistics_from": f"benchmark_model's {', '.join(given)}"}
