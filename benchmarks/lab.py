"""The device lab, measured: does ``edgepipe diff`` tell noise from a real slowdown, how fast
``edgepipe history`` answers, and how much a second identical device speeds a table up.

    python benchmarks/lab.py [--parts diff,history,collect] [--trials 40] [--sittings 3]
                             [--space tiny] [--programs-from DIR] [--out out/bench-lab]

One run, the CPU printed first (edgepipe.device.identity.machine_line):

* ``diff``: MobileNetV3-Small ×0.54 (A) and a slightly wider one, ×0.55 (B: 6.8 % more
  multiply-adds; its true slowdown is measured here as the median of all B's sitting medians
  over A's), at 96 px, converted once to ExecuTorch fp32. (Tried first against ×0.5: ×0.53
  was +2.4 %, ×0.55 +11 %, and 96 px against 92 px +1.5 %: channel counts round to
  multiples of 8, and the later stages keep their size.) Each of ``--trials`` trials
  measures A, A again and B on an agent started here, in a random order, each ``--sittings``
  sittings (the device's reference sentinels before each sitting, as ``edgepipe run`` with
  repeat ≥ 2 does), stores them in a fresh SQLite store and asks the store's ``diff``: A vs A
  must say "no difference" in ≥ 95 % of trials, A vs B "slower" in ≥ 90 %. The same data is
  also judged without the drift correction (``--no-drift``), to show what it buys.
* ``history``: 1,000 results (3 sittings of 50 runs each, a 120-op per-op table: the size a
  real one has) written to a fresh SQLite store; ``edgepipe history`` timed in-process (the
  query and the HTML page) and as the command (with Python's start and imports).
* ``collect``: the ``--space`` (tiny) ExecuTorch table collected on one local agent, then on two
  (each agent and its workers pinned to its own core), programs converted beforehand (both
  reuse them); the measuring time of each, each table's network model scored on its
  left-out networks (10: 5 networks at both sizes), and the two tables' units compared.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from edgepipe.device.identity import machine_line
from edgepipe.manifest import new_token


def log(line: str) -> None:
    print(line, flush=True)


# --- diff ------------------------------------------------------------------------------------
def bench_diff(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from edgepipe.converters.convert import ConvertRequest, convert
    from edgepipe.host.client import AgentClient
    from edgepipe.host.local import start_agent, stop_agent
    from edgepipe.host.profiling import profile
    from edgepipe.lab.diff import run_diff, select
    from edgepipe.lab.reference import Reference
    from edgepipe.lab.store import add_results, open_store

    home = out / "home"
    os.environ["EDGEPIPE_HOME"] = str(home)
    arts = {}
    for name, width in (("A", 0.54), ("B", 0.55)):
        folder = out / f"convert-{name}-{width}"
        if not (folder / "done").is_file():
            convert(ConvertRequest(model="mobilenet_v3_small", width_mult=width, size=96,
                                   out=folder, formats=["executorch"], int8=False))
            (folder / "done").write_text("")
        arts[name] = next(folder.glob("*.pte"))
    token = new_token(12)
    url, proc = start_agent(out / "agent", token)
    store = open_store(f"sqlite:///{out / 'diff.db'}")
    verdicts: list[dict[str, Any]] = []
    if (out / "diff.json").is_file():  # a benchmark stopped half-way goes on where it was
        verdicts = json.loads((out / "diff.json").read_text())
    try:
        client = AgentClient(url, token)
        info = client.info()
        reference = Reference(client, info, home)
        for trial in range(len(verdicts), args.trials):
            began = time.perf_counter()
            order = ["A", "A2", "B"]
            random.Random(trial).shuffle(order)
            ids = {}
            for which in order:
                path = arts["B" if which == "B" else "A"]
                for _attempt in range(3):  # a flagged result is measured again, as a user would
                    result = profile(client, path, warmup=10, runs=50, per_op=False, raw=True,
                                     repeat=args.sittings, device_info=info,
                                     before_sitting=lambda _i: reference.measure())
                    if not result.flags:
                        break
                    log(f"  flagged, measured again: {result.flags[0]}")
                done = add_results(store, "run", [{"name": "this-machine", "info": info,
                                                   "results": [{**asdict(result),
                                                                "created": time.time()}]}],
                                   {path.name: path})
                ids[which] = done.result_ids[0]
            row: dict[str, Any] = {"trial": trial, "order": order, "ids": ids}
            for label, b in (("same", "A2"), ("slower", "B")):
                for drift in (True, False):
                    a_side = select(store, f"#{ids['A']}", {})
                    b_side = select(store, f"#{ids[b]}", {})
                    c = run_diff(store, a_side, b_side, force=False,
                                 correct_drift=drift)[0].comparison
                    row[f"{label}{'' if drift else '_nodrift'}"] = c.to_dict()
            verdicts.append(row)
            same, slow = row["same"], row["slower"]
            log(f"trial {trial + 1}/{args.trials} ({time.perf_counter() - began:.0f} s): "
                f"A vs A {same['verdict']}; A vs B {slow['verdict']}")
            (out / "diff.json").write_text(json.dumps(verdicts, indent=1))
    finally:
        stop_agent(proc)
    return analyse(args, out)


VARIANTS = {"as edgepipe diff does": {},
            "no drift correction": {"correct_drift": False},
            "no disturbed sittings left out": {"disturbed_pct": None},
            "neither": {"correct_drift": False, "disturbed_pct": None}}


def analyse(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Every trial of ``out/diff.db`` judged by edgepipe's statistics as they are now, and by
    the variants without drift correction / without leaving disturbed sittings out."""
    from edgepipe.lab.stats import compare
    from edgepipe.lab.store import open_store, query_results, sittings_of

    store = open_store(f"sqlite:///{out / 'diff.db'}")
    rows = query_results(store)
    sit = sittings_of(store, [r.id for r in rows])
    trials = json.loads((out / "diff.json").read_text())
    by_id = {r.id: r for r in rows}
    shas = {}
    summary: dict[str, Any] = {"trials": len(trials)}
    for t in trials:  # the ids in the order measured (older records: 3 a trial, in order)
        ids = t.get("ids") or {w: 3 * t["trial"] + 1 + k for k, w in enumerate(t["order"])}
        t["ids"] = ids
        shas.setdefault("A", by_id[ids["A"]].sha256)
        shas.setdefault("B", by_id[ids["B"]].sha256)
    med: dict[str, list[float]] = {"A": [], "B": []}
    for r in rows:
        med["B" if r.sha256 == shas["B"] else "A"] += [s["median_ms"] for s in sit[r.id]]
    true_ratio = float(np.median(med["B"]) / np.median(med["A"]))
    summary["true_ratio"] = true_ratio
    summary["sittings"] = len(sit[rows[0].id])
    log(f"{len(trials)} trials; the true slowdown of B (median of all its sittings' medians "
        f"over A's): {(true_ratio - 1) * 100:+.1f} %")
    for name, options in VARIANTS.items():
        figures = {}
        for label, other in (("same", "A2"), ("slower", "B")):
            cs = [compare(sit[t["ids"]["A"]], sit[t["ids"][other]], **options) for t in trials]
            figures[label] = {
                "no_difference": float(np.mean([not c.significant for c in cs])),
                "slower": float(np.mean([c.low > 1 for c in cs])),
                "median_halfwidth_pct": float(np.median([(c.high - c.low) / 2 * 100
                                                         for c in cs])),
                "left_out": float(np.mean([sum(c.left_out) for c in cs]))}
        summary[name] = figures
        same, slow = figures["same"], figures["slower"]
        log(f"{name}: A vs A no difference {same['no_difference']:.1%} (goal ≥ 95 %), A vs B "
            f"slower {slow['slower']:.1%} (goal ≥ 90 %); median interval ±"
            f"{same['median_halfwidth_pct']:.1f} % / ±{slow['median_halfwidth_pct']:.1f} %")
    store.close()
    return summary


# --- history ---------------------------------------------------------------------------------
def bench_history(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from edgepipe.lab.history import write_history_html
    from edgepipe.lab.store import add_results, open_store, query_results

    db = out / "history.db"
    db.unlink(missing_ok=True)
    store = open_store(f"sqlite:///{db}")
    rng = np.random.default_rng(0)
    info = {"hostname": "bench", "fingerprint": "f" * 16, "identity_words": "bench device",
            "runtimes": {"executorch": "1.5.1"}}
    ops = [{"name": f"op{i}", "type": "conv", "delegated": True, "median_ms": 0.01,
            "p90_ms": 0.012, "share": 0.008, "module": f"features.{i % 12}",
            "block": f"features.{i % 12}"} for i in range(120)]
    began = time.perf_counter()
    for batch in range(10):  # ten runs of 100 results, three devices
        entries = []
        for d in range(3):
            results = []
            for k in range(100 // 3 + (d < 100 % 3)):
                raw = [list(np.round(1.0 + 0.05 * rng.standard_normal(50), 4))
                       for _ in range(3)]
                results.append({
                    "artifact": f"m{k % 4}.pte", "format": "executorch", "precision": "fp32",
                    "model": f"model{k % 4}", "job_id": f"{batch}-{d}-{k}", "runtime":
                    "executorch", "threads": 1, "created": time.time() - 86400 * (10 - batch),
                    "latency": {"median_ms": float(np.median(raw[0])), "p90_ms": 1.1,
                                "min_ms": 0.9, "count": 50},
                    "memory": {"peak_rss_mb": 40}, "load_ms": 5.0, "per_op": ops,
                    "flags": [], "repeats": [{"job_id": f"{batch}-{d}-{k}-{s}",
                                              "latency": {"median_ms": float(np.median(r)),
                                                          "raw_ms": r}, "flags": []}
                                             for s, r in enumerate(raw)]})
            entries.append({"name": f"dev{d}", "info": {**info, "hostname": f"dev{d}"},
                            "results": results})
        add_results(store, "run", entries, {})
    write_s = time.perf_counter() - began
    began = time.perf_counter()
    rows = query_results(store)
    query_s = time.perf_counter() - began
    write_history_html(rows, out / "history.html", "bench", {})
    page_s = time.perf_counter() - began
    store.close()
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "edgepipe.cli", "history", "--db",
                           f"sqlite:///{db}", "--html", str(out / "history-cli.html")],
                          capture_output=True, text=True)
    cli_s = time.perf_counter() - began
    assert done.returncode == 0, done.stderr
    import_s = subprocess.run([sys.executable, "-X", "importtime", "-c",
                               "import edgepipe.cli"], capture_output=True, text=True)
    said = done.stdout.strip().splitlines()[-1]
    log(f"history: {len(rows)} results written in {write_s:.1f} s; query {query_s * 1000:.0f} "
        f"ms, query + HTML page {page_s * 1000:.0f} ms in-process; the command "
        f"{cli_s:.2f} s wall ({said})")
    del import_s
    return {"results": len(rows), "write_s": write_s, "query_s": query_s, "page_s": page_s,
            "command_s": cli_s}


# --- collect on two devices ------------------------------------------------------------------
def bench_collect(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One device, then two, the same table; programs converted before (copied from
    --programs-from, else by a first collection that is not timed)."""
    import shutil

    from edgepipe.host.local import start_agent, stop_agent
    from edgepipe.latency_tables.model import error_summary
    from edgepipe.latency_tables.table import LatencyTable

    home = out / "collect-home"
    env = {**os.environ, "EDGEPIPE_HOME": str(home)}
    if args.programs_from and not (home / "lut-work").is_dir():
        shutil.copytree(args.programs_from / "lut-work", home / "lut-work",
                        ignore=shutil.ignore_patterns("agent"))
    tokens = [new_token(12) for _ in range(2)]
    agents = []
    runs = [("one device", "dev0"), ("two devices", "dev0,dev1")]
    if not args.programs_from:
        runs.insert(0, ("warm-up (conversion)", "dev0"))
    try:
        for i, token in enumerate(tokens):
            url, proc = start_agent(out / f"agent{i}", token,
                                    prelude=f"import os; os.sched_setaffinity(0, {{{i}}})")
            agents.append(proc)
            subprocess.run([sys.executable, "-m", "edgepipe.cli", "device", "add", f"dev{i}",
                            "--url", url, "--token", token], env=env, check=True,
                           capture_output=True)
        figures: dict[str, Any] = {}
        for label, devices in runs:
            table = out / f"table-{label.split()[0]}.json"
            table.unlink(missing_ok=True)
            began = time.perf_counter()
            # the tiny space with 5 calibration networks; another space with its own default
            # count, so that programs another collection converted are reused
            calibration = ["--calibration", "5"] if args.space == "tiny" else []
            done = subprocess.run([sys.executable, "-m", "edgepipe.cli", "lut", "collect",
                                   "--space", args.space, "--device", devices, *calibration,
                                   "--out", str(table)], env=env, capture_output=True,
                                  text=True)
            wall = time.perf_counter() - began
            if done.returncode != 0:
                raise SystemExit(f"collect on {devices} failed: {done.stderr[-2000:]}")
            t = LatencyTable.load(table)
            model = t.network_model
            measured = [n["median_ms"] for n in model.networks]
            loo = error_summary(model.median.loo_errors, measured)
            figures[label] = {"wall_s": wall, **t.method["collection_s"],
                              "loo_within_10": loo["within_10pct"],
                              "loo_within_5": loo["within_5pct"], "loo_rmse": loo["rmse_pct"],
                              "units_per_device": t.method.get("units_per_device"),
                              "scales": t.method.get("device_scales")}
            log(f"collect on {devices} ({label}): measured in "
                f"{t.method['collection_s']['measure']:.0f} s, "
                f"{t.method['collection_s']['total']:.0f} s in all; left-out networks within "
                f"±5 % {loo['within_5pct']:.0%}, ±10 % {loo['within_10pct']:.0%}, RMSE "
                f"{loo['rmse_pct']:.1f} %")
        one, two = figures["one device"], figures["two devices"]
        ratio = two["measure"] / one["measure"]
        a = LatencyTable.load(out / "table-one.json")
        b = LatencyTable.load(out / "table-two.json")
        rel = np.array([b.units[k]["median_ms"] / a.units[k]["median_ms"] for k in a.units])
        log(f"two devices / one: measuring ×{ratio:.2f} (goal ≤ 0.6), in all "
            f"×{two['total'] / one['total']:.2f}; units of the two tables: median ratio "
            f"{np.median(rel):.3f}, within ±10 % {np.mean(np.abs(rel - 1) <= 0.1):.0%}")
        return {"figures": figures, "ratio": ratio,
                "unit_ratio_median": float(np.median(rel))}
    finally:
        for proc in agents:
            stop_agent(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="history,diff,collect",
                        help="history, diff, collect; analyse: judge the trials of an earlier "
                             "diff part again (OUT/diff.db, OUT/diff.json)")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--sittings", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("out/bench-lab"))
    parser.add_argument("--space", default="tiny",
                        help="collect: the search space of the table (tiny: 13 µs reference "
                             "unit; default: 0.3 ms, its units long enough to time steadily)")
    parser.add_argument("--programs-from", type=Path,
                        help="collect: an EDGEPIPE_HOME (or benchmarks/latency_table.py's "
                             "--cache) whose lut-work holds the space's programs (else a "
                             "first, untimed collection converts them)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log(f"CPU: {machine_line()}")
    summary = {"cpu": machine_line()}
    for part in args.parts.split(","):
        summary[part] = {"diff": bench_diff, "history": bench_history, "analyse": analyse,
                         "collect": bench_collect}[part](args, args.out)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    log(f"wrote {args.out / 'summary.json'}")


if __name__ == "__main__":
    tempfile.tempdir = None
    main()
