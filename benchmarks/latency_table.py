"""The latency table's two targets, measured: collection time from scratch, and prediction
accuracy on random networks measured whole.

    python benchmarks/latency_table.py [--space default] [--count 100] [--naive 10]
                                       [--table EXISTING.json]   # skip the collection
                                       [--home DIR]  # reuse converted programs of an earlier run

Collects the space's ExecuTorch fp32 1-thread table on an agent started on this machine, in a
fresh EDGEPIPE_HOME (nothing cached: every program converted), then evaluates it on ``--count``
seeded random networks. Targets: collection under 15 minutes; >= 95 % of networks within
±5 % and >= 99 % within ±10 %.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def edgepipe(*args: str, home: Path) -> None:
    subprocess.run([sys.executable, "-m", "edgepipe.cli", *args], check=True,
                   env={**os.environ, "EDGEPIPE_HOME": str(home)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="default")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--naive", type=int, default=10)
    parser.add_argument("--table", type=Path)
    parser.add_argument("--out", type=Path, default=Path("out/bench-lut"))
    parser.add_argument("--home", type=Path, help="an EDGEPIPE_HOME whose converted programs "
                                                  "are reused (default: a new, empty one)")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="edgepipe-bench-lut-"))
    table = args.table
    if table is None:
        table = args.out / "table.json"
        began = time.perf_counter()
        edgepipe("lut", "collect", "--space", args.space, "--out", str(table), home=home)
        minutes = (time.perf_counter() - began) / 60
        units = len(json.loads(table.read_text())["units"])
        print(f"collection: {units} units in {minutes:.1f} min "
              f"({'meets' if minutes < 15 else 'MISSES'} the 15-minute target)")
    edgepipe("lut", "evaluate", "--table", str(table), "--count", str(args.count), "--naive",
             str(args.naive), "--out", str(args.out), home=home)
    report = json.loads((args.out / "evaluation.json").read_text())
    p = report["prediction"]
    print(f"within ±5 %: {p['within_5pct']:.1%} (target ≥ 95 %), within ±10 %: "
          f"{p['within_10pct']:.1%} (target ≥ 99 %), RMSE {p['rmse_pct']:.2f} %, "
          f"Kendall tau {p['kendall_tau']:.3f}, {p['count']} networks")
    n = report["naive_per_op_sum"]
    if n.get("count"):
        print(f"naive per-op sum on {n['count']} of them: within ±10 % {n['within_10pct']:.1%}, "
              f"RMSE {n['rmse_pct']:.1f} % (units on the same networks: RMSE "
              f"{n['units_same_networks']['rmse_pct']:.2f} %)")


if __name__ == "__main__":
    main()
