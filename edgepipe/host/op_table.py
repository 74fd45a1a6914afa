"""Per-operator tables, one shape for every runtime (host side).

ExecuTorch: the device sends back the ETDump; the host reads it with the ETRecord written at
conversion (``executorch.devtools``, so the device never needs devtools). XNNPACK reports its
own kernels ("Convolution (NHWC, F32) DWConv #3"); operators outside the delegate appear under
their ATen names. LiteRT: the device sends the CompiledModel profiler's events per run
(:mod:`edgepipe.device.litert_profiler`): XNNPACK's kernels under the same names, ops XNNPACK
did not take under their TFLite names. A runtime with no per-op profiler gets no table and a
reason, never numbers made up from something else.

Per op: the median and p90 over the profiled runs (ms) and the share of the whole run (the
runtime's own whole-run event: ExecuTorch's ``Method::execute``, LiteRT's ``Invoke``). LiteRT's
``benchmark_model`` prints one mean per op and no per-run times: its rows carry ``mean_ms``
with the median and p90 null (:func:`benchmark_model_op_table`).
"""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import EdgepipeError
from ..manifest import write_atomic


@dataclass
class OpRow:
    name: str
    type: str
    delegated: bool  # run by the delegate (XNNPACK), else a runtime's own kernel
    median_ms: float | None  # null where the runtime gives no per-run times
    p90_ms: float | None
    share: float  # this op's time (``ms``) over the whole model's time
    module: str | None = None  # the source model's module it ran (edgepipe.host.op_map)
    block: str | None = None  # that module's block: features.3, classifier
    mean_ms: float | None = None  # per run; where the runtime gives only means

    @property
    def ms(self) -> float:
        """The op's time per run: its median, or its mean where no median is known."""
        return self.median_ms if self.median_ms is not None else float(self.mean_ms or 0.0)

    @property
    def stat(self) -> str:
        return "median" if self.median_ms is not None else "mean"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linearly interpolated (numpy's default method)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def op_type(event_name: str) -> str:
    """'Convolution (NHWC, QC8) DWConv #1' -> 'Convolution DWConv'."""
    name = re.sub(r"\s*#\d+$", "", event_name)
    name = re.sub(r"\s*\([^)]*\)", "", name)
    # the two runtimes' XNNPACK builds name one reduction differently: "Mean (ND) Reduce"
    # (LiteRT) and "Mean (ND)" (ExecuTorch)
    name = re.sub(r"\s+Reduce$", "", name)
    return " ".join(name.split()) or event_name


def executorch_op_table(etdump: Path, etrecord: Path | None) -> tuple[list[OpRow], float]:
    """Rows in execution order, each op once (:func:`edgepipe.etdump.kernel_events`), and
    the whole model's median time (ms)."""
    from ..etdump import kernel_events

    events, total = kernel_events(etdump, etrecord)
    rows = []
    for event in events:
        median = float(statistics.median(event.raw_ms))
        kind = (op_type(event.name) if event.delegated else
                event.op_types[0] if event.op_types else event.op)
        rows.append(OpRow(event.name, kind, event.delegated, median,
                          percentile(event.raw_ms, 90), 0.0))
    if not total:
        total = sum(r.median_ms for r in rows)
    for r in rows:
        r.share = r.median_ms / total if total else 0.0
    return rows, float(total)


def litert_op_table(per_op: dict[str, Any]) -> tuple[list[OpRow], float]:
    """Rows in execution order and the median of the runtime's ``Invoke`` time (ms), from a
    LiteRT job's ``per_op`` (``source: litert-profiler``). Raises :class:`EdgepipeError` when
    the record does not hold one time per op and run."""
    runs = per_op.get("runs")
    ops = per_op.get("ops") or []
    invoke = per_op.get("invoke_us") or []
    if not ops or not runs or any(len(o.get("times_us") or []) != runs for o in ops):
        raise EdgepipeError(f"the LiteRT per-op record holds no time per op and run "
                            f"({len(ops)} ops, {runs} runs)")
    rows = []
    for o in ops:
        times = [t / 1000 for t in o["times_us"]]
        name = f"{o['name']} #{o['position']}"
        kind = op_type(o["name"]) if o["delegated"] else o["name"]
        rows.append(OpRow(name, kind, bool(o["delegated"]), float(statistics.median(times)),
                          percentile(times, 90), 0.0))
    total = statistics.median(invoke) / 1000 if invoke else sum(r.median_ms for r in rows)
    for r in rows:
        r.share = r.median_ms / total if total else 0.0
    return rows, float(total)


def benchmark_model_op_table(per_op: dict[str, Any]) -> tuple[list[OpRow], float]:
    """Rows in run order and the profiled runs' mean time (ms), from an agentless LiteRT job's
    ``per_op`` (``source: benchmark_model``, :mod:`edgepipe.host.benchmark_model`). Each
    row's time is its mean per run; the median and p90 are null (the tool prints none)."""
    ops = per_op.get("ops") or []
    total = float(per_op.get("run_ms") or 0.0)
    if not ops or not total:
        raise EdgepipeError("the benchmark_model per-op record holds no ops or no run time")
    rows = []
    for o in ops:
        node = o["type"].removeprefix("Delegate/")
        delegated = o["type"].startswith("Delegate/") or "Delegate" in o["name"]
        rows.append(OpRow(o["name"], op_type(node) if delegated else node, delegated,
                          None, None, o["ms_per_run"] / total, mean_ms=o["ms_per_run"]))
    return rows, total


def overhead(per_op: dict[str, Any], unprofiled_ms: float | None = None) -> dict[str, Any] | None:
    """What profiling costs: the median profiled run over the median unprofiled one, both
    timed by the job through the same API (LiteRT: the same compiled model with the profiler
    stopped; ExecuTorch: the program loaded without ETDump); from an older agent that sent
    no unprofiled runs, the job's latency median (``unprofiled_ms``)."""
    profiled = per_op.get("profiled_ms")
    unprofiled = per_op.get("unprofiled_ms")
    base = statistics.median(unprofiled) if unprofiled else unprofiled_ms
    if not profiled or not base:
        return None
    median = statistics.median(profiled)
    return {"profiled_ms": median, "unprofiled_ms": base, "ratio": median / base,
            "runs": len(profiled), "stat": per_op.get("stat", "median")}


UNPLACED = "(not placed)"


# the datatype XNNPACK writes in an operator's name: "Convolution (NHWC, F16) IGEMM",
# "Fully Connected (NC, PF32) GEMM" (packed), "Transpose (ND, X16)" (16-bit data movement),
# "Convolution (NHWC, QC8) IGEMM"; element-wise ops ("Add (ND)") name none
_KERNEL_DTYPE = re.compile(r"\((?:[A-Z]+,\s*)?(P?F16|P?F32|BF16|Q[A-Z]*\d+|X\d+)\)")


def kernel_precisions(rows: list[OpRow]) -> dict[str, Any]:
    """The arithmetic an artifact's XNNPACK kernels ran in, read from their per-op names:
    ``{"F16": n, "F32": n, "int8": n, "ms": {...}, "words": ...}`` (packed kernels counted
    with their type). The per-op evidence of what an fp16 artifact got on a device: F16
    kernels, or F32 ones behind converts where the CPU or the runtime keeps fp32."""
    counts: dict[str, int] = {}
    ms: dict[str, float] = {}
    for r in rows:
        match = _KERNEL_DTYPE.search(r.name)
        if not match:
            continue
        token = match.group(1).removeprefix("P")
        kind = ("int8" if token.startswith("Q") else token if token in ("F16", "F32", "BF16")
                else None)  # X16/X32: moving data, no arithmetic
        if kind:
            counts[kind] = counts.get(kind, 0) + 1
            ms[kind] = ms.get(kind, 0.0) + r.ms
    total = sum(counts.values())
    words = (", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))
             + f" of {total} arithmetic kernels" if total else
             "no XNNPACK kernel names with a datatype")
    return {**counts, "ms": {k: round(v, 4) for k, v in ms.items()}, "words": words}


def by_block(rows: list[OpRow]) -> list[dict[str, Any]]:
    """Time per block of the model, in the order the blocks first run."""
    totals: dict[str, dict[str, Any]] = {}
    for r in rows:
        key = r.block or UNPLACED
        t = totals.setdefault(key, {"block": key, "count": 0, "ms": 0.0, "share": 0.0})
        t["count"] += 1
        t["ms"] += r.ms
        t["share"] += r.share
    return list(totals.values())


def by_type(rows: list[OpRow]) -> list[dict[str, Any]]:
    """Time per operator type, largest first (what a bar chart shows)."""
    totals: dict[str, dict[str, Any]] = {}
    for r in rows:
        t = totals.setdefault(r.type, {"type": r.type, "count": 0, "ms": 0.0, "share": 0.0})
        t["count"] += 1
        t["ms"] += r.ms
        t["share"] += r.share
    return sorted(totals.values(), key=lambda t: -t["ms"])


def write_table(rows: list[OpRow], path: Path) -> None:
    """CSV or JSON by the file's suffix."""
    if path.suffix == ".json":
        write_atomic(path, json.dumps([asdict(r) for r in rows], indent=1))
    elif path.suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(OpRow.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
        write_atomic(path, buffer.getvalue())
    else:
        raise EdgepipeError(f"write the per-op table as .csv or .json, not {path.suffix or path}")
