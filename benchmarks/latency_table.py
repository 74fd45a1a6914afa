"""Latency tables, measured: how long a table costs, and how well it predicts what users
measure (the median and p90 of a network's runs), collected or adapted.

    python benchmarks/latency_table.py [--count 200] [--count-other 60] [--budget-s 120]
                                       [--parts collect,cpu,threads,int8,litert,offline]
                                       [--cache DIR] [--out out/bench-lut]

One run, on an agent started on this machine, the CPU printed first:

* ``collect``: the default space's ExecuTorch fp32 1-thread table collected from scratch (an
  empty EDGEPIPE_HOME: every program converted), timed; then ``--count`` seeded networks of
  the space (not the table's own seeds), each measured whole in two sittings minutes apart
  (a third where they were more than 10 % apart, the far one left out: ``lut evaluate``'s
  rule), the runs of those that agree pooled, after a ``lut check`` of the table (a row
  rescaled by its factor, as ``--rescale`` does, where it finds drift). Scored: the predicted
  median and p90 against the pooled ones, beside the device against itself (sitting 2 against
  sitting 1, as measured: how far one sitting of this host is from another), and apart on the
  networks whose first two sittings agreed within ±10 % (where the reference itself holds).
* ``cpu``: ``lut adapt`` from the other CPU's shipped table (``--budget-s`` of measurement),
  scored on the same networks, beside the other CPU's table times one global factor (fitted
  on 3 networks measured here, the way a user would rescale it) and the full collection.
* ``threads``, ``int8``, ``litert``: ``lut adapt`` from the full table to 2 threads, int8 and
  LiteRT on this machine, each scored on ``--count-other`` networks measured in that setting
  (``threads`` and ``int8``: beside a full collection in that setting, which reuses the
  programs converted before).
* ``offline``: the two shipped tables (AMD family 25 and Intel family 6 model 167, the same
  units measured on both) transferred one to the other from 1, 2, 5 and 10 % of the units;
  and, where the int8 part's full collection is in ``--out``, this CPU's fp32 table to its
  int8 one the same way.

After ``collect``, the full table's errors on the networks are recorded in it, as ``lut
evaluate`` records its own (``lut list`` shows them; later predictions take their intervals
from them). ``--parts record --reuse-table`` does only that, from the networks measured
before (``networks-fp32-t1.json`` in ``--out``).

``--cache``: where converted programs are kept between runs (the evaluation networks, the
int8 and LiteRT programs); the collection itself always starts from an empty home.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgepipe.device.identity import machine_line

GOALS = {"median_10": 0.95, "median_5": 0.70, "p90_10": 0.90, "adapted_10": 0.90}


def edgepipe(*args: str, home: Path) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", "edgepipe.cli", *args], text=True,
                         env={**os.environ, "EDGEPIPE_HOME": str(home)}, capture_output=True)
    sys.stdout.write(run.stdout[-3000:])
    if run.returncode != 0:
        raise SystemExit(f"edgepipe {' '.join(args)} failed: {run.stderr.strip()[-2000:]}")
    return run


def shares(predicted: list[float], measured: list[float]) -> dict[str, float]:
    p, m = np.asarray(predicted), np.asarray(measured)
    rel = (p - m) / m * 100
    return {"n": len(m), "within_5": float(np.mean(np.abs(rel) <= 5)),
            "within_10": float(np.mean(np.abs(rel) <= 10)), "mean": float(rel.mean()),
            "rmse": float(np.sqrt(np.mean(rel ** 2))), "worst": float(np.abs(rel).max())}


def sittings_agree(network: dict[str, Any]) -> bool:
    """Whether a network's first two sittings were within ±10 % of each other."""
    first, second = network["passes_ms"][:2]
    return abs(second / first - 1) <= 0.10


def agreeing(predicted: list[float], rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """:func:`shares` on the networks whose first two sittings agreed (None: none did)."""
    calm = [i for i, r in enumerate(rows) if sittings_agree(r)]
    return shares([predicted[i] for i in calm],
                  [rows[i]["measured_ms"] for i in calm]) if calm else None


def row(label: str, s: dict[str, float]) -> str:
    return (f"| {label} | {s['within_5']:.1%} | {s['within_10']:.1%} | {s['rmse']:.2f} % | "
            f"{s['mean']:+.2f} % | {s['worst']:.1f} % | {s['n']} |")


HEADER = ("| predictor | within ±5 % | within ±10 % | RMSE | mean error | worst | networks |\n"
          "|---|---|---|---|---|---|---|")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.cache = args.cache
        self.lines: list[str] = []
        self.results: dict[str, Any] = {"machine": machine_line()}

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)

    # --- measuring networks once, scoring every predictor on them ------------------------
    def networks(self, table_path: Path, count: int, seed: int, threads_label: str
                 ) -> tuple[list[Any], list[dict[str, Any]]]:
        """``count`` seeded networks measured whole in two sittings on this machine, in the
        table's runtime/precision/threads (cached in the output folder: a rerun scores
        again without measuring)."""
        from edgepipe.host.local import open_device
        from edgepipe.latency_tables.evaluate import measure_networks
        from edgepipe.latency_tables.sentinels import check_table
        from edgepipe.latency_tables.table import LatencyTable
        from edgepipe.models.space import Architecture, SearchSpace
        from edgepipe.ui import PhaseProgress

        saved = self.out / f"networks-{threads_label}.json"
        table = LatencyTable.load(table_path)
        if saved.is_file():
            rows = json.loads(saved.read_text())
            return [Architecture.from_dict(r["arch"]) for r in rows], rows
        space = SearchSpace.from_dict(table.space)
        archs = space.architectures(count, seed=seed)
        workdir = self.cache / "lut-work" / space.digest()[:12]
        with open_device("this-machine", workdir) as client, PhaseProgress() as progress:
            if table.sentinels:
                # what a user does before trusting a table: `lut check`, right before the
                # networks (its factor is what `--rescale` applies)
                check = check_table(table, client, workdir, progress=progress)
                (self.out / f"check-{threads_label}.json").write_text(json.dumps(check))
            rows, _ = measure_networks(archs, table, client, workdir, progress=progress)
        saved.write_text(json.dumps(rows))
        return archs, rows

    def check_before(self, threads_label: str) -> dict[str, Any] | None:
        """The `lut check` of the table made right before its networks were measured."""
        path = self.out / f"check-{threads_label}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def score(self, label: str, table_path: Path, archs: list[Any],
              rows: list[dict[str, Any]], factor: float = 1.0) -> dict[str, Any]:
        from edgepipe.latency_tables.estimate import Estimator
        from edgepipe.latency_tables.table import LatencyTable

        est = Estimator(LatencyTable.load(table_path), factor=factor)
        preds = [est.prediction(a) for a in archs]
        median = shares([p.median for p in preds], [r["measured_ms"] for r in rows])
        out = {"median": median}
        # where the device agreed with itself (its first two sittings within ±10 %), the
        # measured median is a trustworthy reference; on a two-speed host the rest is not
        if (calm := agreeing([p.median for p in preds], rows)) is not None:
            out["agreeing"] = calm
        if preds[0].p90 is not None:
            out["p90"] = shares([p.p90 for p in preds], [r["p90_ms"] for r in rows])
            inside = [p.intervals["median"][0] <= r["measured_ms"] <= p.intervals["median"][1]
                      for p, r in zip(preds, rows, strict=True)]
            out["interval_coverage"] = float(np.mean(inside))
        self.results[label] = out
        return out

    def ceiling(self, label: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        out = {"median": shares([r["passes_ms"][1] for r in rows],
                                [r["passes_ms"][0] for r in rows]),
               "p90": shares([r["passes_p90_ms"][1] for r in rows],
                             [r["passes_p90_ms"][0] for r in rows])}
        self.results[label] = out
        return out

    def table_lines(self, title: str, entries: list[tuple[str, dict[str, Any]]]) -> None:
        self.say(f"\n{title} — median of the runs of the sittings that agree (two, a third "
                 "where they were > 10 % apart and the far one left out)")
        self.say(HEADER)
        for label, s in entries:
            self.say(row(label, s["median"]))
        if any("p90" in s for _, s in entries):
            self.say("\np90 of the same runs")
            self.say(HEADER)
            for label, s in entries:
                if "p90" in s:
                    self.say(row(label, s["p90"]))
        for label, s in entries:
            if "agreeing" in s:
                a = s["agreeing"]
                self.say(f"{label}: on the {a['n']} networks whose first two sittings agreed "
                         f"within ±10 %: median within ±5 % {a['within_5']:.1%}, ±10 % "
                         f"{a['within_10']:.1%}, mean error {a['mean']:+.2f} %")
        for label, s in entries:
            if "interval_coverage" in s:
                self.say(f"{label}: measured medians inside their predicted 95 % interval "
                         f"{s['interval_coverage']:.1%}")

    # --- the parts --------------------------------------------------------------------------
    def collect(self) -> Path:
        table = self.out / "table.json"
        if table.is_file() and self.args.reuse_table:
            return table
        home = Path(tempfile.mkdtemp(prefix="edgepipe-bench-lut-"))
        try:
            began = time.perf_counter()
            edgepipe("lut", "collect", "--out", str(table), home=home)
            minutes = (time.perf_counter() - began) / 60
            times = json.loads(table.read_text())["method"]["collection_s"]
            self.results["collection"] = {**times, "minutes": minutes}
            self.say(f"collection from scratch: {times['units']} units, {times['programs']} "
                     f"programs: converted in {times['convert']:.0f} s, measured in "
                     f"{times['measure']:.0f} s, {minutes:.1f} min in all "
                     f"({'meets' if minutes <= 10 else 'MISSES'} the 10-minute goal); a "
                     f"second device of this host (programs converted): {times['measure']:.0f}"
                     " s of measurement")
            # the programs stay for the other parts (a second device reuses them)
            for sub in ("lut-work",):
                target = self.cache / sub
                for src in (home / sub).glob("*/*"):
                    if src.name == "agent":
                        continue
                    dst = target / src.parent.name / src.name
                    dst.mkdir(parents=True, exist_ok=True)
                    for f in src.iterdir():
                        if not (dst / f.name).exists():
                            shutil.copy2(f, dst / f.name)
        finally:
            shutil.rmtree(home, ignore_errors=True)
        return table

    def adapt(self, sources: list[Path], name: str, *flags: str) -> Path:
        out = self.out / f"{name}.json"
        if out.is_file():
            out.unlink()
        run = edgepipe("lut", "adapt", "--from", ",".join(map(str, sources)), "--budget-s",
                       str(self.args.budget_s), "--out", str(out), *flags, home=self.cache)
        record = json.loads(out.read_text())
        adapted, times = record["adapted"], record["method"]["collection_s"]
        self.results[f"adapt-{name}"] = {
            **{k: adapted[k] for k in ("measured_units", "units", "measurement_s", "regressor",
                                       "transfer_cv", "base")},
            "convert_s": times["convert"], "programs": times["programs"],
            "total_s": times["total"]}
        # conversion is the host's and outside the budget; a cached program costs nothing
        self.say(f"adapt {name}: {adapted['measured_units']} of {adapted['units']} units "
                 f"measured in {adapted['measurement_s']:.0f} s (budget "
                 f"{self.args.budget_s:g} s), regressor {adapted['regressor']}, base "
                 f"{adapted['base']}; {times['programs']} unit programs, converted in "
                 f"{times['convert']:.0f} s (cached ones free), {times['total'] / 60:.1f} min "
                 "in all")
        del run
        return out

    def record(self, table_path: Path, archs: list[Any], rows: list[dict[str, Any]]) -> None:
        """The full table's errors on these networks recorded in it (``lut list`` shows them,
        later predictions take their intervals from them), as ``lut evaluate`` records its
        own; the predicted-vs-measured plot beside it."""
        from edgepipe.latency_tables.estimate import Estimator
        from edgepipe.latency_tables.evaluate import (
            error_metrics,
            evaluation_record,
            scatter_plot,
        )
        from edgepipe.latency_tables.table import LatencyTable

        table = LatencyTable.load(table_path)
        if table.network_model is None:
            return
        table.network_model.evaluation = None  # the intervals of the fit, not of a record
        est = Estimator(table)
        scored = []
        for arch, r in zip(archs, rows, strict=True):
            p = est.prediction(arch)
            scored.append({**r, "predicted_ms": p.median, "predicted_p90_ms": p.p90,
                           "predicted_best_ms": p.best})
        report = {
            "device": table.describe(), "sittings": 2, "networks": scored,
            "prediction": error_metrics([r["predicted_ms"] for r in scored],
                                        [r["measured_ms"] for r in scored]),
            "prediction_p90": error_metrics([r["predicted_p90_ms"] for r in scored],
                                            [r["p90_ms"] for r in scored]),
            "prediction_best": error_metrics([r["predicted_best_ms"] for r in scored],
                                             [r["min_ms"] for r in scored]),
            "repeatability": error_metrics([r["passes_ms"][1] for r in scored],
                                           [r["passes_ms"][0] for r in scored])}
        table.network_model.evaluation = evaluation_record(report)
        table.save(table_path)
        scatter_plot(scored, table.describe(), self.out / "scatter.png")
        self.say(f"the full table's errors on these {len(rows)} networks recorded in it; "
                 f"plot: {self.out / 'scatter.png'}")

    def global_factor(self, source: Path, archs: list[Any], rows: list[dict[str, Any]]
                      ) -> dict[str, Any]:
        """The other CPU's table times one factor fitted on 3 networks measured here."""
        from edgepipe.latency_tables.table import LatencyTable

        table = LatencyTable.load(source)
        sums = [table.unit_sum_ms(a) for a in archs]
        fit = [r["measured_ms"] / s for r, s in zip(rows[:3], sums[:3], strict=True)]
        factor = float(np.mean(fit))
        out = {"median": shares([s * factor for s in sums], [r["measured_ms"] for r in rows]),
               "factor": factor}
        if (calm := agreeing([s * factor for s in sums], rows)) is not None:
            out["agreeing"] = calm
        self.results["global_factor"] = out
        return out


def offline(bench: Bench) -> None:
    """AMD family 25 ↔ Intel family 6 model 167 from the two shipped tables; and fp32 → int8
    on this CPU where both of its tables are in ``--out`` (the int8 part's full collection)."""
    from edgepipe.latency_tables.table import SHIPPED, LatencyTable

    amd = LatencyTable.load(next(SHIPPED.glob("82660cc886a34a83-*.json")))
    intel = LatencyTable.load(next(SHIPPED.glob("60a219bdfc5a6978-*.json")))
    bench.say("\noffline, unit level and network sums (200 networks), from the shipped tables")
    bench.results["offline"] = unit_transfer(bench, (("AMD → Intel", amd, intel),
                                                     ("Intel → AMD", intel, amd)))
    fp32, int8 = bench.out / "table.json", bench.out / "table-int8.json"
    if fp32.is_file() and int8.is_file():
        bench.say("\noffline, fp32 → int8 on this CPU, from its two full collections")
        bench.results["offline_int8"] = unit_transfer(
            bench, (("fp32 → int8", LatencyTable.load(fp32), LatencyTable.load(int8)),))


def unit_transfer(bench: Bench, pairs: tuple[tuple[str, Any, Any], ...]
                  ) -> dict[str, list[float]]:
    """Each target table transferred from its source by ``lut adapt``'s ratio model, from 1,
    2, 5 and 10 % of the units (in the order adapt measures them), scored on the units not
    measured and on the unit sums of 200 networks of the space, beside one global factor.
    The regressor is chosen as adapt chooses it, by whole networks: here the target's unit
    sums of adapt's 18 calibration networks (6 architectures at 3 resolutions) stand in for
    the networks adapt measures."""
    from edgepipe.latency_tables.adapt import AdaptRequest
    from edgepipe.latency_tables.collect import calibration_architectures, network_points
    from edgepipe.latency_tables.features import unit_from_key
    from edgepipe.latency_tables.model import architecture_group
    from edgepipe.latency_tables.transfer import (
        fit_transfer,
        measurement_order,
        time_weights,
        transfer,
    )
    from edgepipe.latency_tables.units import units_of
    from edgepipe.models.space import SPACES

    space = SPACES["default"]
    archs = space.architectures(200, seed=1)
    # adapt's calibration networks: the seeds and AdaptRequest.networks random ones
    points = network_points(calibration_architectures(space, 2 + AdaptRequest.networks), space,
                            dynamic=True)
    bench.say("| direction | units measured | units ±5 % | units ±10 % | networks ±5 % | "
              "networks ±10 % | one factor: units ±10 % | networks ±10 % |")
    bench.say("|---|---|---|---|---|---|---|---|")
    out = {}
    for label, source, target in pairs:
        keys = sorted(set(source.units) & set(target.units))
        units = [unit_from_key(k) for k in keys]
        index = {k: i for i, k in enumerate(keys)}
        nets = [[index[u.key] for u in units_of(a)] for a in archs]
        calibration_ix = [(np.array([index[u.key] for u in units_of(p.arch)]),
                           architecture_group(p.arch.to_dict())) for p in points]
        s = np.array([source.units[k]["median_ms"] for k in keys])
        t = np.array([target.units[k]["median_ms"] for k in keys])
        order = measurement_order(units, s, time_weights(units, s, archs[:100]))
        calibration = [(ix, float(t[ix].sum()), group) for ix, group in calibration_ix]
        for pct in (1, 2, 5, 10):
            idx = np.array(order[:max(8, round(len(keys) * pct / 100))])
            model = fit_transfer(units, [s], idx, t[idx], networks=calibration)
            moved = transfer(units, [s], model)
            rest = np.ones(len(keys), bool)
            rest[idx] = False
            unit_err = np.abs(moved[rest] / t[rest] - 1)
            moved[idx] = t[idx]
            net = np.array([moved[n].sum() for n in nets])
            actual = np.array([t[n].sum() for n in nets])
            net_err = np.abs(net / actual - 1)
            factor = np.exp(np.median(np.log(t[idx] / s[idx])))
            flat_units = np.abs(s[rest] * factor / t[rest] - 1)
            flat_nets = np.abs(np.array([s[n].sum() for n in nets]) * factor / actual - 1)
            out[f"{label} {pct}"] = [float(np.mean(unit_err <= 0.05)),
                                     float(np.mean(unit_err <= 0.10)),
                                     float(np.mean(net_err <= 0.05)),
                                     float(np.mean(net_err <= 0.10))]
            bench.say(f"| {label} | {pct} % ({len(idx)}) | {np.mean(unit_err <= .05):.0%} | "
                      f"{np.mean(unit_err <= .10):.0%} | {np.mean(net_err <= .05):.0%} | "
                      f"{np.mean(net_err <= .10):.0%} | {np.mean(flat_units <= .10):.0%} | "
                      f"{np.mean(flat_nets <= .10):.0%} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--count-other", type=int, default=60)
    parser.add_argument("--budget-s", type=float, default=120.0)
    parser.add_argument("--parts", default="collect,cpu,threads,int8,litert,offline")
    parser.add_argument("--cache", type=Path, default=Path("out/bench-lut-cache"))
    parser.add_argument("--out", type=Path, default=Path("out/bench-lut"))
    parser.add_argument("--reuse-table", action="store_true",
                        help="score the table an earlier run collected instead of collecting")
    args = parser.parse_args()
    parts = args.parts.split(",")
    bench = Bench(args)
    bench.say(machine_line())
    from edgepipe.device.info import device_info
    from edgepipe.latency_tables.table import SHIPPED

    # the other CPUs' tables: sources for `lut adapt` (all of them, where none is this CPU's)
    here = device_info()["fingerprint"]
    others = [p for p in sorted(SHIPPED.glob("*-executorch-fp32-t1.json"))
              if not p.name.startswith(here)]
    needs_table = {"collect", "record", "cpu", "threads", "int8", "litert"}
    table = bench.collect() if needs_table & set(parts) else None
    if table is not None:
        archs, rows = bench.networks(table, args.count, 123, "fp32-t1")
        entries = [("the full collection (this CPU)", bench.score("full", table, archs, rows))]
        check = bench.check_before("fp32-t1")
        if check is not None:
            # --rescale applies the factor only where the check found drift (lut check)
            factor = check["factor"] if check["verdict"] == "drift" else 1.0
            bench.results["check"] = {k: check[k] for k in ("factor", "drift_pct",
                                                            "spread_pct", "verdict")}
            bench.say(f"lut check right before the networks: ×{check['factor']:.3f} "
                      f"({check['verdict']}, sentinels {check['spread_pct']:.0f} % apart)")
            if factor != 1.0:
                entries.append((f"the full collection, checked and rescaled ×{factor:.3f}",
                                bench.score("full_rescaled", table, archs, rows, factor)))
        bench.record(table, archs, rows)
        if "cpu" in parts:
            names = ", ".join(p.name for p in others)
            try:
                adapted = bench.adapt(others, "cpu")
                entries.append((f"adapted from {names} ({args.budget_s:g} s)",
                                bench.score("adapted_cpu", adapted, archs, rows)))
            except SystemExit as exc:
                bench.say(f"\ncpu: {exc}")
                bench.results["adapt-cpu"] = {"failed": str(exc)}
            entries.append((f"{others[0].name} × one factor from 3 networks",
                            bench.global_factor(others[0], archs, rows)))
        entries.append(("the device against itself (sitting 2 vs 1)", bench.ceiling(
            "ceiling", rows)))
        bench.table_lines(f"ExecuTorch fp32, 1 thread, {len(rows)} networks", entries)
        for name, flags in (("threads", ("--threads", "2")),
                            # int8 units are fast: the budget would measure (and the host
                            # convert, calibrating each) most of the space; 200 is plenty
                            ("int8", ("--precision", "int8", "--units", "200")),
                            ("litert", ("--runtime", "litert", "--units", "400"))):
            if name not in parts:
                continue
            try:
                adapted = bench.adapt([table], name, *flags)
            except SystemExit as exc:  # one part failing says so and leaves the others
                bench.say(f"\n{name}: {exc}")
                bench.results[f"adapt-{name}"] = {"failed": str(exc)}
                continue
            archs_o, rows_o = bench.networks(adapted, args.count_other, 321, name)
            entries = [(f"adapted from the full fp32 1-thread table ({args.budget_s:g} s)",
                        bench.score(f"adapted_{name}", adapted, archs_o, rows_o))]
            if name in ("threads", "int8"):  # beside the full collection of that setting
                what = {"threads": ("2-thread", "table-t2.json", ("--threads", "2")),
                        "int8": ("int8", "table-int8.json", ("--precision", "int8"))}[name]
                full = bench.out / what[1]
                if not full.is_file():
                    began = time.perf_counter()
                    edgepipe("lut", "collect", *what[2], "--out", str(full), home=bench.cache)
                    bench.say(f"full {what[0]} collection (the programs the adaptation "
                              f"converted reused): {(time.perf_counter() - began) / 60:.1f} min")
                entries.append((f"the full {what[0]} collection",
                                bench.score(f"full_{name}", full, archs_o, rows_o)))
            entries.append(("the device against itself", bench.ceiling(f"ceiling_{name}",
                                                                        rows_o)))
            bench.table_lines(f"{name}: {len(rows_o)} networks", entries)
    if "offline" in parts:
        offline(bench)
    bench.say("\n" + machine_line())
    (args.out / "results.json").write_text(json.dumps(bench.results, indent=1))
    (args.out / "summary.md").write_text("\n".join(bench.lines) + "\n")


if __name__ == "__main__":
    main()
