"""What the agent adds to a measurement: the same artifact, runtime and threads, timed
directly in this process and through a real agent on loopback, interleaved in one run.

    python benchmarks/agent_overhead.py [--rounds 3] [--runs 300] [--models small large]

Prints the median latency each way and the ratio agent / direct (goal: <= 1.02). The agent
times inside its worker process exactly as a direct call does, so what this catches is the
cost of the agent's machinery around the timed loop: a worker process, progress reporting,
another Python in the way.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
from runtimes import converted  # benchmarks/runtimes.py: cached conversions

from edgepipe.device.bench import measure_latency
from edgepipe.device.identity import machine_line
from edgepipe.device.runtimes import open_runner
from edgepipe.host.client import AgentClient
from edgepipe.host.local import start_agent, stop_agent
from edgepipe.manifest import load_manifest


def direct_ms(path: Path, threads: int, warmup: int, runs: int) -> float:
    runner = open_runner(path, threads)
    spec = load_manifest(path).inputs[0]
    x = np.random.default_rng(0).standard_normal(spec.shape).astype(np.float32)
    return measure_latency(runner, x, warmup, runs).median_ms


def agent_ms(client: AgentClient, sha: str, threads: int, warmup: int, runs: int) -> float:
    job = client.submit(artifact=sha, threads=threads, warmup=warmup, runs=runs, profile=False)
    return client.wait(job["id"], timeout=600)["result"]["latency"]["median_ms"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["small", "large"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as data:
        url, proc = start_agent(Path(data), "bench")
        client = AgentClient(url, "bench")
        rows = []
        try:
            for model in args.models:
                out, report = converted(f"mobilenet_v3_{model}")
                for a in report["artifacts"]:
                    path = out / a["file"]
                    sha = client.upload(path)["sha256"]
                    direct, via_agent = [], []
                    for _ in range(args.rounds):  # interleaved: drift hits both sides alike
                        direct.append(direct_ms(path, args.threads, args.warmup, args.runs))
                        via_agent.append(agent_ms(client, sha, args.threads, args.warmup,
                                                  args.runs))
                    d, g = statistics.median(direct), statistics.median(via_agent)
                    rows.append((f"{model} {a['format']} {a['precision']}", d, g, g / d))
                    print(f"{rows[-1][0]:28s} direct {d:7.3f} ms   agent {g:7.3f} ms   "
                          f"ratio {g / d:.3f}", flush=True)
        finally:
            stop_agent(proc)
    worst = max(r[3] for r in rows)
    print(f"\n{machine_line()}")
    print(f"{args.threads} thread(s), {args.runs} runs after {args.warmup} warm-up, median of "
          f"{args.rounds} interleaved rounds. Worst ratio agent/direct: {worst:.3f} "
          f"(goal <= 1.02: {'met' if worst <= 1.02 else 'NOT met'}); geometric mean "
          f"{statistics.geometric_mean(r[3] for r in rows):.3f}")


if __name__ == "__main__":
    main()
