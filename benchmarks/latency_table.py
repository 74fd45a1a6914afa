"""The latency table's targets, measured: collection time from scratch, whether the table
passes its own check, and prediction accuracy on random networks measured whole, beside the
device's own repeatability in the same run.

    python benchmarks/latency_table.py [--space default] [--count 200] [--naive 10]
                                       [--table EXISTING.json]   # skip the collection
                                       [--home DIR]  # reuse converted programs of an earlier run

Collects the space's ExecuTorch fp32 1-thread table on an agent started on this machine, in a
fresh EDGEPIPE_HOME (nothing cached: every program converted), checks it (`lut check`), then
evaluates it on ``--count`` seeded random networks, each measured whole twice. Targets:
collection under 15 minutes; >= 95 % of networks within ±5 % and >= 99 % within ±10 %.
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

from edgepipe.device.identity import machine_line


def edgepipe(*args: str, home: Path, check: bool = True) -> int:
    return subprocess.run([sys.executable, "-m", "edgepipe.cli", *args], check=check,
                          env={**os.environ, "EDGEPIPE_HOME": str(home)}).returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="default")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--naive", type=int, default=10)
    parser.add_argument("--table", type=Path)
    parser.add_argument("--out", type=Path, default=Path("out/bench-lut"))
    parser.add_argument("--home", type=Path, help="an EDGEPIPE_HOME whose converted programs "
                                                  "are reused (default: a new, empty one)")
    args = parser.parse_args()
    print(machine_line())
    # a home made here holds several GB of converted programs: removed at the end
    home = args.home or Path(tempfile.mkdtemp(prefix="edgepipe-bench-lut-"))
    try:
        run(args, home)
    finally:
        if args.home is None:
            shutil.rmtree(home, ignore_errors=True)


def run(args: argparse.Namespace, home: Path) -> None:
    table = args.table
    lines = []
    if table is None:
        table = args.out / "table.json"
        began = time.perf_counter()
        edgepipe("lut", "collect", "--space", args.space, "--out", str(table), home=home)
        minutes = (time.perf_counter() - began) / 60
        units = len(json.loads(table.read_text())["units"])
        lines.append(f"collection: {units} units in {minutes:.1f} min "
                     f"({'meets' if minutes < 15 else 'MISSES'} the 15-minute target)")
    code = edgepipe("lut", "check", "--table", str(table), home=home, check=False)
    checks = json.loads(Path(table).read_text())["checks"]
    if checks:
        c = checks[-1]
        lines.append(f"lut check: {c['verdict']}, factor ×{c['factor']:.3f}, spread "
                     f"{c['spread_pct']:.1f} %, {c['seconds']:.0f} s (exit {code})")
    edgepipe("lut", "evaluate", "--table", str(table), "--count", str(args.count), "--naive",
             str(args.naive), "--out", str(args.out), home=home)
    report = json.loads((args.out / "evaluation.json").read_text())
    if report.get("check"):
        lines.append(f"check right before the networks: factor ×{report['check']['factor']:.3f}"
                     f" ({report['check']['verdict']})")
    for key, label in (("prediction", "prediction (units + overhead)"),
                       ("prediction_rescaled", "prediction rescaled by that check"),
                       ("repeatability", "the device against itself (pass 2 vs pass 1)")):
        m = report.get(key)
        if not m:
            continue
        lines.append(f"{label}: within ±5 % {m['within_5pct']:.1%}, within ±10 % "
                     f"{m['within_10pct']:.1%}, RMSE {m['rmse_pct']:.2f} %, mean error "
                     f"{m['mean_error_pct']:+.2f} %, worst {m['max_abs_error_pct']:.1f} %, "
                     f"Kendall tau {m['kendall_tau']:.3f}, {m['count']} networks")
    n = report["naive_per_op_sum"]
    if n.get("count"):
        lines.append(f"naive per-op sum on {n['count']} of them: within ±10 % "
                     f"{n['within_10pct']:.1%}, RMSE {n['rmse_pct']:.1f} % (units on the same "
                     f"networks: RMSE {n['units_same_networks']['rmse_pct']:.2f} %)")
    p = report["prediction"]
    lines.append(f"targets: ≥ 95 % within ±5 % {'met' if p['within_5pct'] >= 0.95 else 'NOT met'}"
                 f", ≥ 99 % within ±10 % {'met' if p['within_10pct'] >= 0.99 else 'NOT met'}")
    print("\n" + machine_line())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
