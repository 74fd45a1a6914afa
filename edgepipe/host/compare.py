"""One model's layers across runtimes: each artifact's per-op profile on one device in one
sitting, rolled up to the model's blocks and to op types, side by side (host side).

The ratio of a block is its time in an artifact over its time in the first artifact (the
baseline); ``None`` where the baseline spent no measurable time there. Times are the sums of
the ops' medians (ms), each runtime's own profiler (ExecuTorch's ETDump, LiteRT's CompiledModel
profiler), so they include each profiler's overhead (printed per artifact); ops that could
not be placed in the model count under ``(not placed)``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EdgepipeError
from ..manifest import write_atomic
from ..plotting import pyplot, save_figure
from .client import AgentClient
from .op_table import by_block, by_type
from .profiling import ProfileResult, profile


@dataclass
class Comparison:
    labels: list[str]  # one per artifact: "litert int8"
    results: list[ProfileResult]
    blocks: list[dict[str, Any]] = field(default_factory=list)  # name, ms (per label), ratio
    types: list[dict[str, Any]] = field(default_factory=list)
    # what explains the gap, in words (delegation that differs between the artifacts)
    findings: list[str] = field(default_factory=list)

    def run_ratios(self) -> list[float | None]:
        """Each artifact's unprofiled median run over the first's (None where unknown)."""
        medians = [r.latency.get("median_ms") or r.latency.get("mean_ms")
                   for r in self.results]
        return [m / medians[0] if m and medians[0] else None for m in medians]


def delegated_share(delegation: dict[str, Any] | None) -> float | None:
    """The share of a program's ops its delegates run; None where not counted."""
    if not delegation:
        return None
    if not delegation.get("partitions"):
        return 0.0
    ops, inside = delegation.get("ops"), delegation.get("delegated_ops")
    return inside / ops if ops and inside is not None else None


# delegated shares this far apart make delegation the first explanation of a gap
DELEGATION_GAP = 0.25


def delegation_findings(labels: list[str], results: list[ProfileResult],
                        ratios: list[float | None]) -> list[str]:
    """One line per artifact whose delegation differs from the first's: ExecuTorch's own
    kernels against a delegate's are a gap of another kind than two runtimes' kernels
    (pytorch/executorch#1231: a program without the XNNPACK partitioner, ×100 and more)."""
    base = delegated_share(results[0].delegation)
    found = []
    for k in range(1, len(results)):
        share = delegated_share(results[k].delegation)
        if base is None or share is None or abs(share - base) < DELEGATION_GAP:
            continue
        slower, faster = (k, 0) if share < base else (0, k)
        ratio = ratios[k]
        found.append(
            f"the gap between {labels[0]} and {labels[k]} is delegation"
            + (f" (whole run ×{ratio:.2f})" if ratio else "") + ": "
            f"{results[slower].artifact} runs {results[slower].delegation['words']}; "
            f"{results[faster].artifact} {results[faster].delegation['words']} (the op-type table "
            "sets ExecuTorch's own kernels against the delegate's)"
            + ("; export it with the XNNPACK partitioner"
               if not results[slower].delegation.get("partitions") else ""))
    return found


def labels_for(results: list[ProfileResult]) -> list[str]:
    """"runtime precision" per artifact, the file name where that is not unique."""
    labels = [f"{r.runtime} {r.precision}" for r in results]
    return [label if labels.count(label) == 1 else f"{label} ({r.artifact})"
            for label, r in zip(labels, results, strict=True)]


def side_by_side(groups: list[list[dict[str, Any]]], key: str) -> list[dict[str, Any]]:
    """Rows of one level (block or type) across artifacts, in the order they first appear;
    a name an artifact lacks has 0 ms there."""
    names: list[str] = []
    for group in groups:
        names += [g[key] for g in group if g[key] not in names]
    table = []
    for name in names:
        ms = [next((g["ms"] for g in group if g[key] == name), 0.0) for group in groups]
        count = [next((g["count"] for g in group if g[key] == name), 0) for group in groups]
        ratio = [m / ms[0] if ms[0] > 0 else None for m in ms]
        table.append({"name": name, "ms": ms, "ops": count, "ratio": ratio})
    return table


def compare(client: AgentClient, artifacts: list[Path], *, threads: int = 1, warmup: int = 10,
            runs: int = 50, affinity: list[int] | None = None,
            on_progress: Callable[[dict], None] | None = None) -> Comparison:
    """Profile each artifact on the agent, one after the other, and line their blocks and op
    types up. Raises :class:`EdgepipeError` naming an artifact without a per-op profile."""
    if len(artifacts) < 2:
        raise EdgepipeError("--compare takes two or more artifacts (.pte, .tflite)")
    info = client.info()
    results = []
    for path in artifacts:
        result = profile(client, path, threads=threads, warmup=warmup, runs=runs,
                         affinity=affinity, on_progress=on_progress, device_info=info)
        if not result.per_op:
            raise EdgepipeError(f"{path.name} has no per-op profile to compare: "
                                f"{result.per_op_note}")
        results.append(result)
    rows = [r.per_op or [] for r in results]
    # an artifact whose ops could not be placed in the model has no blocks, not one
    # "(not placed)" block to be compared with the others' leftovers
    comparison = Comparison(labels_for(results), results,
                            side_by_side([by_block(r) if any(op.block for op in r) else []
                                          for r in rows], "block"),
                            side_by_side([by_type(r) for r in rows], "type"))
    comparison.findings = delegation_findings(comparison.labels, results,
                                              comparison.run_ratios())
    return comparison


def write_comparison(comparison: Comparison, path: Path) -> None:
    """CSV: level (block or type), name, then each artifact's ms and ratio to the first."""
    if path.suffix != ".csv":
        raise EdgepipeError(f"write the comparison as .csv, not {path.suffix or path}")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["level", "name"]
    for label in comparison.labels:
        header += [f"{label} ms", f"{label} ops", f"{label} ratio"]
    writer.writerow(header)
    for level, table in (("block", comparison.blocks), ("type", comparison.types)):
        for row in table:
            cells: list[Any] = [level, row["name"]]
            for ms, ops, ratio in zip(row["ms"], row["ops"], row["ratio"], strict=True):
                cells += [f"{ms:.4f}", ops, "" if ratio is None else f"{ratio:.3f}"]
            writer.writerow(cells)
    write_atomic(path, buffer.getvalue())


def plot_comparison(comparison: Comparison, path: Path, top_types: int = 12) -> None:
    """Grouped horizontal bars, ms per block (left) and per op type (right), one colour per
    artifact; written to a temporary file, then renamed."""
    plt = pyplot()
    types = sorted(comparison.types, key=lambda t: -max(t["ms"]))[:top_types]
    tall = max(len(comparison.blocks), len(types))
    fig, axes = plt.subplots(1, 2, figsize=(13, 1.5 + 0.32 * tall * len(comparison.labels)))
    for ax, table, title in ((axes[0], comparison.blocks, "by block"),
                             (axes[1], types, "by op type")):
        count = len(comparison.labels)
        height = 0.8 / count
        for k, label in enumerate(comparison.labels):
            ax.barh([i + k * height for i in range(len(table))], [r["ms"][k] for r in table],
                    height=height, label=label)
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(table))],
                      [r["name"] for r in table], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("ms (sum of per-op times)")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    device = comparison.results[0].device
    fig.suptitle(f"{comparison.results[0].model} on {device.get('hostname')} "
                 f"({device.get('cpu_model') or device.get('machine')}), "
                 f"{comparison.results[0].threads} thread(s)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
