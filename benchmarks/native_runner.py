"""The lean ExecuTorch runner against the Python bindings, side by side in one run: start-up,
peak memory and latency of the same .pte, each path in a process of its own.

    python benchmarks/native_runner.py [--models small large] [--runs 200] [--rounds 3]

Start-up is the wall time from starting the process to the program loaded and ready to run
(the Python path: interpreter, ``executorch.runtime`` import, load; the runner: process start
and load). Peak RSS is each process's own maximum. Latency: the median of ``--runs`` timed
runs after 20 warm-up runs, the two paths alternating for ``--rounds`` rounds (the median of
the rounds' medians is reported), 1 thread. Goals (issue): the same median within 2 %,
start-up ≤ 0.5 s, peak RSS ≤ 60 MB + the program's size for MobileNetV3-Small.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgepipe.device.identity import machine_line
from edgepipe.device.native_runner import build_runner, run_runner

CACHE = Path(__file__).parent / ".cache"

PYTHON_PATH = """
import json, sys, time
start = float(sys.argv[1])
import numpy as np
from edgepipe.device.runtimes import open_runner
from edgepipe.device.bench import measure_latency, peak_rss_mb
runner = open_runner(sys.argv[2], 1)
ready = time.time() - start
x = np.fromfile(sys.argv[3], dtype=np.float32).reshape(json.loads(sys.argv[4]))
stats = measure_latency(runner, x, 20, int(sys.argv[5]))
print(json.dumps({"startup_s": ready, "median_ms": stats.median_ms,
                  "peak_rss_mb": peak_rss_mb()}))
"""


def python_path(program: Path, x: np.ndarray, runs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "x.f32"
        x.tofile(src)
        done = subprocess.run([sys.executable, "-c", PYTHON_PATH, repr(time.time()),
                               str(program), str(src), json.dumps(list(x.shape)), str(runs)],
                              capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def native_path(runner: Path, program: Path, x: np.ndarray, runs: int) -> dict:
    start = time.time()
    # start-up: the process and the load, measured on a run of its own with no timed runs
    # to speak of (the runner reports its load time; the rest is process start)
    first = run_runner(runner, program, x, warmup=0, runs=1)
    startup = time.time() - start - sum(first["times_ms"]) / 1000
    out = run_runner(runner, program, x, warmup=20, runs=runs)
    return {"startup_s": startup, "median_ms": statistics.median(out["times_ms"]),
            "peak_rss_mb": out["peak_rss_kb"] / 1024, "load_ms": out["load_ms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["small", "large"])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from runtimes import converted  # the same cached artifacts as the runtimes benchmark

    runner = build_runner(CACHE / "bin")
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    rows = []
    for short in args.models:
        out, report = converted(f"mobilenet_v3_{short}")
        for a in report["artifacts"]:
            if a["format"] != "executorch":
                continue
            program = out / a["file"]
            rounds: dict[str, list[dict]] = {"python": [], "native": []}
            for _ in range(args.rounds):
                rounds["python"].append(python_path(program, x, args.runs))
                rounds["native"].append(native_path(runner, program, x, args.runs))
            row = {"model": short, "precision": a["precision"],
                   "program_mb": program.stat().st_size / 2**20}
            for path, results in rounds.items():
                for key in ("startup_s", "median_ms", "peak_rss_mb"):
                    row[f"{path}_{key}"] = statistics.median(r[key] for r in results)
            rows.append(row)
            print(f"{short} {a['precision']}: done", file=sys.stderr)
    print(f"\n{machine_line()}\n1 thread, {args.runs} runs after 20 warm-up, median of "
          f"{args.rounds} alternating rounds\n")
    print("| model | precision | program MB | start-up s (Python / runner) | peak RSS MB "
          "(Python / runner) | median ms (Python / runner) | runner / Python |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['precision']} | {r['program_mb']:.1f} | "
              f"{r['python_startup_s']:.2f} / {r['native_startup_s']:.3f} | "
              f"{r['python_peak_rss_mb']:.0f} / {r['native_peak_rss_mb']:.0f} | "
              f"{r['python_median_ms']:.3f} / {r['native_median_ms']:.3f} | "
              f"{r['native_median_ms'] / r['python_median_ms']:.3f} |")


if __name__ == "__main__":
    main()
