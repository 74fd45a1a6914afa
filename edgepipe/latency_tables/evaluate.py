"""``edgepipe lut evaluate``: how well a table predicts whole networks measured on the device.

N random architectures of the table's space (seeded) are converted and measured whole; the
prediction is compared with the measurement: share within ±5 % and ±10 %, RMSE %, Kendall's
tau (what a search needs: the right order), and a scatter plot. The naive alternative, a sum of
separately measured convs and activations, is measured on the first few of them. The table's
sentinels are measured right before the networks (a check, :mod:`.sentinels`): the predictions
are also scored rescaled by its factor, which takes out how much the whole device moved since
collection, and the device against itself (each network measured twice) is scored beside them.
A network whose sittings disagree by more than ``AGREE_PCT`` is measured once more and a
sitting far from its median sitting is left out of its runs (``sittings_left_out``).
"""

from __future__ import annotations

import json
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..host.client import AgentClient
from ..manifest import write_atomic
from ..models.space import Architecture, SearchSpace
from ..plotting import pyplot, save_figure
from .drift import DriftGuard
from .measure import (
    AGREE_PCT,
    MeasureSettings,
    Progress,
    agreeing,
    chunks,
    measure_items,
    pooled,
    prepare_programs,
    sitting_record,
)
from .model import size_trend
from .programs import (
    ProgramSpec,
    arch_program,
    program_for,
    program_path,
    takes_dynamic_size,
    unit_programs,
)
from .table import LatencyTable
from .units import Unit, naive_ops, units_of


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b (ties counted on neither side): the share of pairs ranked alike."""
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif da == db:
                concordant += 1
            else:
                discordant += 1
    denominator = np.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return float((concordant - discordant) / denominator) if denominator else float("nan")


def error_metrics(predicted: list[float], measured: list[float]) -> dict[str, float]:
    p, m = np.asarray(predicted), np.asarray(measured)
    rel = (p - m) / m * 100
    return {"count": len(m), "within_5pct": float(np.mean(np.abs(rel) <= 5)),
            "within_10pct": float(np.mean(np.abs(rel) <= 10)),
            "rmse_pct": float(np.sqrt(np.mean(rel ** 2))),
            "mean_error_pct": float(rel.mean()), "max_abs_error_pct": float(np.abs(rel).max()),
            "kendall_tau": kendall_tau(list(p), list(m))}


@dataclass
class EvaluateRequest:
    table_path: Path
    out: Path
    workdir: Path
    count: int = 100
    seed: int = 0
    naive_count: int = 10
    jobs: int = 2
    sittings: int = 2


def _reference(table: LatencyTable) -> Unit | None:
    saved = (table.reference or {}).get("unit")
    return Unit(saved["kind"], saved["hw"], tuple(saved["params"])) if saved else None


def _prepare(specs: list[ProgramSpec], table: LatencyTable, client: AgentClient, folder: Path,
             jobs: int, progress: Progress, what: str) -> dict[Path, str]:
    return prepare_programs(specs, table.runtime, table.precision, client, folder, jobs,
                            progress, what)


def measure_networks(archs: list[Architecture], table: LatencyTable, client: AgentClient,
                     workdir: Path, jobs: int = 2, progress: Progress | None = None,
                     sittings: int = 2) -> tuple[list[dict[str, Any]], DriftGuard | None]:
    """Whole networks converted for the table's runtime and measured on the device as the
    table's networks were (same settings, the same reference unit bracketing them): every
    network in ``sittings`` passes minutes apart, their runs pooled (``measured_ms`` is the
    median of all runs, ``p90_ms`` and ``min_ms`` likewise); the passes' medians say how
    repeatable a measurement is here."""
    progress = progress or Progress()
    folder = workdir / f"{table.runtime}-{table.precision}"
    specs = [arch_program(a) for a in archs]
    reference = _reference(table)
    ref_specs = unit_programs([reference], takes_dynamic_size(table.runtime)) \
        if reference else {}
    shas = _prepare(specs + list(ref_specs.values()), table, client, folder, jobs, progress,
                    "networks")
    settings = MeasureSettings.of_table(table.method)
    guard = None
    if reference:
        path = program_path(folder, program_for(ref_specs, reference), table.runtime)
        guard = settings.guard({"artifact": shas[path], "shape": reference.input_shape()})
    whole = {**settings.sitting_job(table.threads), "raw": True}
    progress.phase(f"measuring networks ({sittings} sittings)", len(archs) * sittings)
    segments = [[{"artifact": shas[program_path(folder, spec, table.runtime)],
                  "shape": list(spec.input_shape)}] for spec in specs]

    def sitting(indices: list[int]) -> list[dict[str, Any]]:
        measured = []
        for chunk in chunks([segments[i] for i in indices], 20):  # a worker per 20 networks
            measured += _measure(client, guard, whole, chunk, per_job=20)
            progress.advance(len(chunk))
        return [sitting_record(m[0]) for m in measured]

    everyone = list(range(len(archs)))
    mine: list[list[dict[str, Any]]] = [[] for _ in archs]
    for _ in range(sittings):
        for i, record in zip(everyone, sitting(everyone), strict=True):
            mine[i].append(record)
    # a sitting in a slow episode between calm references (sittings 2.3x apart on a shared
    # host) would pull the pooled median: networks whose sittings disagree get one more, and
    # the sittings far from the median sitting are left out of the pool (said in the row)
    disagree = [i for i in everyone if len(agreeing(mine[i])) < len(mine[i])]
    if disagree:  # never with one sitting: agreeing() keeps a lone sitting
        progress.phase(f"measuring networks again (sittings over {AGREE_PCT:g} % apart)",
                       len(disagree))
        for i, record in zip(disagree, sitting(disagree), strict=True):
            mine[i].append(record)
    rows = []
    for i, arch in enumerate(archs):
        stats = pooled(mine[i], outvote=True)
        rows.append({"arch": arch.to_dict(), "name": f"{arch.seed}@{arch.resolution}",
                     "measured_ms": stats["median_ms"], "p90_ms": stats["p90_ms"],
                     "min_ms": stats["min_ms"], "runs": stats["count"],
                     "passes_ms": stats["sitting_medians_ms"],
                     "passes_p90_ms": [s["p90_ms"] for s in mine[i]],
                     "sittings_left_out": stats["sittings_left_out"],
                     "unsettled": all(s["unsettled"] for s in mine[i])})
    return rows, guard


def evaluate(req: EvaluateRequest, client: AgentClient, progress: Progress | None = None
             ) -> dict[str, Any]:
    from .estimate import Estimator
    from .sentinels import check_table

    progress = progress or Progress()
    table = LatencyTable.load(req.table_path)
    space = SearchSpace.from_dict(table.space)
    archs = space.architectures(req.count, seed=req.seed)
    folder = req.workdir / f"{table.runtime}-{table.precision}"
    _prepare([arch_program(a) for a in archs], table, client, folder, req.jobs, progress,
             "networks")  # converted before the check, so that it is measured just before
    check = check_table(table, client, req.workdir, req.jobs, progress) \
        if table.sentinels else None
    rows, guard = measure_networks(archs, table, client, req.workdir, req.jobs, progress,
                                   req.sittings)
    estimator = Estimator(table)
    for row, arch in zip(rows, archs, strict=True):
        row["unit_sum_ms"] = table.unit_sum_ms(arch)
        p = estimator.prediction(arch)
        row["predicted_ms"] = p.median
        row["predicted_p90_ms"] = p.p90
        row["predicted_best_ms"] = p.best
        row["interval_ms"] = p.intervals.get("median")
        row["transferred_share"] = p.transferred_share

    naive: dict[str, Any] = {"count": 0}
    naive_units = {op.key: op for a in archs[:req.naive_count] for u in units_of(a)
                   for op in naive_ops(u)}
    if naive_units:
        op_times = dict(table.units)
        missing = [u for u in naive_units.values() if u.key not in op_times]
        folder = req.workdir / f"{table.runtime}-{table.precision}"
        naive_specs = unit_programs(missing, takes_dynamic_size(table.runtime))
        shas = _prepare(list(naive_specs.values()), table, client, folder, req.jobs, progress,
                        "naive ops")
        settings = MeasureSettings.of_table(table.method)

        def item(unit: Unit) -> dict[str, Any]:
            path = program_path(folder, program_for(naive_specs, unit), table.runtime)
            return {"artifact": shas[path], "shape": unit.input_shape()}

        progress.phase("measuring naive ops", len(missing))
        segments = list(chunks(missing, settings.segment))
        results = _measure(client, guard, settings.job(table.threads),
                           [[item(u) for u in seg] for seg in segments],
                           settings.batch)
        for seg, stats in zip(segments, results, strict=True):
            for u, s in zip(seg, stats, strict=True):
                op_times[u.key] = s
        progress.advance(len(missing))
        for row, arch in zip(rows[:req.naive_count], archs[:req.naive_count], strict=True):
            row["naive_sum_ms"] = sum(op_times[op.key]["median_ms"] for u in units_of(arch)
                                      for op in naive_ops(u))
        naive_rows = rows[:req.naive_count]
        naive = error_metrics([r["naive_sum_ms"] for r in naive_rows],
                              [r["measured_ms"] for r in naive_rows])
        naive["units_same_networks"] = error_metrics(
            [r["predicted_ms"] for r in naive_rows], [r["measured_ms"] for r in naive_rows])

    measured = [r["measured_ms"] for r in rows]
    first, second = ([r["passes_ms"][i] for r in rows] for i in (0, 1))
    has_model = table.network_model is not None
    report = {
        # how well the device agrees with itself: the ceiling of any prediction's accuracy
        "repeatability": error_metrics(second, first),
        "repeatability_p90": error_metrics([r["passes_p90_ms"][1] for r in rows],
                                           [r["passes_p90_ms"][0] for r in rows]),
        "table": str(req.table_path), "device": table.describe(),
        "provenance": table.provenance(), "table_flags": table.flags(),
        "seed": req.seed, "sittings": req.sittings,
        "statistic": (f"median of every run of the sittings that agree (within {AGREE_PCT:g} % "
                      "of their median sitting; one more sitting where they disagree)"),
        "networks_measured_again": sum(len(r["passes_ms"]) > req.sittings for r in rows),
        "sittings_left_out": sum(r.get("sittings_left_out", 0) for r in rows),
        "prediction": error_metrics([r["predicted_ms"] for r in rows], measured),
        "prediction_p90": error_metrics([r["predicted_p90_ms"] for r in rows],
                                        [r["p90_ms"] for r in rows]) if has_model else None,
        "prediction_best": error_metrics([r["predicted_best_ms"] for r in rows],
                                         [r["min_ms"] for r in rows]) if has_model else None,
        "interval_coverage": float(np.mean([r["interval_ms"][0] <= r["measured_ms"]
                                            <= r["interval_ms"][1] for r in rows]))
        if has_model else None,
        "check": check,
        "prediction_rescaled": error_metrics(
            [r["predicted_ms"] * check["factor"] for r in rows], measured) if check else None,
        "unit_sum_without_overhead": error_metrics([r["unit_sum_ms"] for r in rows], measured),
        "naive_per_op_sum": naive,
        "model": table.network_model.describe() if has_model else None,
        "drift": guard.summary() if guard else None,
        "networks": rows,
    }
    report["prediction"]["size_trend"] = size_trend(
        [r["predicted_ms"] / r["measured_ms"] - 1 for r in rows], measured)
    req.out.mkdir(parents=True, exist_ok=True)
    write_atomic(req.out / "evaluation.json", json.dumps(report, indent=1))
    scatter_plot(rows, table.describe(), req.out / "scatter.png")
    return report


def evaluation_record(report: dict[str, Any]) -> dict[str, Any]:
    """What a table keeps of an evaluation: the relative errors of each statistic (they give
    later predictions their intervals), when, on which device, how many networks."""
    rows = report["networks"]

    def errors(predicted: str, measured: str) -> list[float]:
        return [round(r[predicted] / r[measured] - 1, 5) for r in rows
                if r.get(predicted) is not None]

    return {"time": time.time(), "device": report["device"], "count": len(rows),
            "sittings": report["sittings"],
            "median": {"errors": errors("predicted_ms", "measured_ms"),
                       **_shares(report["prediction"])},
            "p90": {"errors": errors("predicted_p90_ms", "p90_ms"),
                    **_shares(report.get("prediction_p90"))},
            "best": {"errors": errors("predicted_best_ms", "min_ms"),
                     **_shares(report.get("prediction_best"))},
            "repeatability": _shares(report["repeatability"])}


def _shares(metrics: dict[str, Any] | None) -> dict[str, float]:
    keys = ("within_5pct", "within_10pct", "rmse_pct", "mean_error_pct")
    return {k: metrics[k] for k in keys} if metrics else {}


def _measure(client: AgentClient, guard: DriftGuard | None, job: dict[str, Any],
             segments: list[list[dict[str, Any]]], per_job: int | None = None
             ) -> list[list[dict[str, float]]]:
    def measure(items: list[dict[str, Any]]) -> list[dict[str, float]]:
        return measure_items(client, items, job)

    if guard is None:  # a table without a reference (hand-made): measured as it comes
        flat = measure([i for seg in segments for i in seg])
        out, cursor = [], 0
        for seg in segments:
            out.append(flat[cursor:cursor + len(seg)])
            cursor += len(seg)
        return out
    return guard.measure(measure, segments, per_job=per_job)


def scatter_plot(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    """Predicted vs measured, the ±5/10 % bands, and the naive per-op sums where measured."""
    plt = pyplot()

    measured = np.array([r["measured_ms"] for r in rows])
    predicted = np.array([r["predicted_ms"] for r in rows])
    low, high = measured.min() * 0.85, measured.max() * 1.15
    naive = [(r["measured_ms"], r["naive_sum_ms"]) for r in rows if "naive_sum_ms" in r]
    if naive:
        high = max(high, max(n for _, n in naive) * 1.05)
        low = min(low, min(n for _, n in naive) * 0.95)
    line = np.geomspace(low, high, 50)
    fig, ax = plt.subplots(figsize=(6.4, 6.0), dpi=110)
    ax.fill_between(line, line * 0.9, line * 1.1, color="#dbe9f6", label="±10 %")
    ax.fill_between(line, line * 0.95, line * 1.05, color="#a9cbe8", label="±5 %")
    ax.plot(line, line, color="#555", lw=0.8)
    ax.scatter(measured, predicted, s=14, color="#1f5fa8", zorder=3,
               label=f"units + overhead ({len(rows)} networks)")
    if naive:
        ax.scatter(*zip(*naive, strict=True), s=18, marker="x", color="#c0392b", zorder=3,
                   label=f"naive per-op sum ({len(naive)})")
    ax.set_xscale("log")  # networks span 1 to 40 ms: on a log scale ±5 % is one width
    ax.set_yscale("log")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    # plain milliseconds at 1-2-5 steps: matplotlib's default labels every minor tick of a
    # log axis as 2×10^0, 3×10^0 ... and they overlap
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("measured latency (ms, median)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(textwrap.fill(title, 95), fontsize=7)  # the device's identity is long
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
