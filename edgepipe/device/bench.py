"""Latency statistics of a runner (numpy only: runs on the device)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .runtimes import Runner


def _status_mb(field: str, pid: int | None = None) -> float:
    try:
        status = Path(f"/proc/{pid or 'self'}/status").read_text()
        for line in status.splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def rss_mb(pid: int | None = None) -> float:
    """Resident memory of this process (or of process ``pid``) now, in MB (Linux /proc; NaN
    elsewhere, or where the process is gone)."""
    return _status_mb("VmRSS", pid)


def peak_rss_mb() -> float:
    """This process's own peak resident memory, in MB (Linux ``VmHWM``; NaN elsewhere).
    Not ``getrusage``'s ``ru_maxrss``: Linux carries it over ``execve``, so a process started
    by a large one reports the parent's peak (the lean runner's first figure was 517 MB that
    way, and this benchmark's Python path 1.4 GB after converting in the parent)."""
    return _status_mb("VmHWM")


@dataclass
class LatencyStats:
    """One measurement's run times, in ms: median, p90 and p99 (MLPerf Mobile reports p90),
    mean and spread (std), the span measured (s), and every run's time when kept (``raw_ms``).
    Percentiles interpolate linearly (numpy's default).

    ``sustained_ms`` is the wall time of the timed runs, back to back, per run: it counts
    what a single run's timer cannot see, the time the process was not running between two
    runs. A run shorter than the scheduler's slice (a few ms) is rarely interrupted, so a
    core shared with another busy process halves the throughput and leaves the median as it
    was. ``cpu_share`` (Σ runs / wall) says how much of the wall time the runs had the CPU:
    ~1 on a quiet device, 0.5 on a core shared with one busy process. ``helper_cpu`` is the
    CPU the process's other threads used meanwhile, in cores (CPU seconds per wall second):
    the runtime's own thread pool at more than one thread; at one thread, anything above 0 is
    another thread working beside the runtime (libtorch's OpenMP worker, loaded with
    ExecuTorch's Python bindings, used 0.27-0.77 of a core during 1-thread runs until the
    agent started its workers with one OpenMP thread).
    """

    median_ms: float
    mean_ms: float
    std_ms: float
    p10_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    count: int
    span_s: float  # the sum of the timed runs
    sustained_ms: float | None = None
    cpu_share: float | None = None
    helper_cpu: float | None = None
    raw_ms: list[float] | None = None
    # the median's 95 % confidence interval [low, high] (median_interval); None under 6 runs
    median_ci95_ms: list[float] | None = None

    @classmethod
    def from_seconds(cls, samples: list[float], raw: bool = False,
                     wall_s: float | None = None,
                     helper_cpu_s: float | None = None) -> LatencyStats:
        """From run times in seconds; ``wall_s``: the wall time the runs took back to back;
        ``helper_cpu_s``: the CPU seconds the process's other threads used meanwhile."""
        ms = np.asarray(samples) * 1000.0
        return cls(
            median_ms=float(np.median(ms)), mean_ms=float(ms.mean()), std_ms=float(ms.std()),
            p10_ms=float(np.percentile(ms, 10)), p90_ms=float(np.percentile(ms, 90)),
            p99_ms=float(np.percentile(ms, 99)), min_ms=float(ms.min()),
            max_ms=float(ms.max()), count=len(ms), span_s=float(ms.sum() / 1000),
            sustained_ms=wall_s * 1000 / len(ms) if wall_s else None,
            cpu_share=min(1.0, float(ms.sum() / 1000 / wall_s)) if wall_s else None,
            helper_cpu=round(helper_cpu_s / wall_s, 4)
            if wall_s and helper_cpu_s is not None else None,
            raw_ms=[round(float(v), 5) for v in ms] if raw else None,
            median_ci95_ms=list(ci) if (ci := median_interval(list(ms))) else None,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["raw_ms"] is None:
            del data["raw_ms"]
        return data


def measure_latency(runner: Runner, x: np.ndarray, warmup: int = 5, runs: int = 30,
                    on_progress: Callable[[int, int], None] | None = None,
                    min_seconds: float = 0.0, raw: bool = False) -> LatencyStats:
    """Time ``invoke`` alone: input copies and (de)quantization are set up once, outside.

    At least ``runs`` timed runs, and more until the timed runs add up to ``min_seconds``
    (MLPerf Mobile's floor on a measurement's span). ``on_progress(done, total)`` is called
    now and then between runs, outside the timed part.
    """
    runner.run(x)
    total = warmup + runs
    every = max(1, total // 20)
    for i in range(warmup):
        runner.invoke()
        if on_progress and i % every == 0:
            on_progress(i + 1, total)
    samples: list[float] = []
    wall = helpers = 0.0
    while len(samples) < runs or sum(samples) < min_seconds:
        left = runs - len(samples)  # exactly ``runs`` when no time floor asks for more
        block, cpu = timed_runs(runner, min(every, left) if left > 0 else every, samples)
        wall, helpers = wall + block, helpers + cpu
        if on_progress:
            on_progress(warmup + len(samples), max(total, warmup + len(samples)))
    return LatencyStats.from_seconds(samples, raw, wall, helpers)


def timed_runs(runner: Runner, n: int, samples: list[float]) -> tuple[float, float]:
    """``n`` runs back to back, each one's time appended to ``samples``. Returns the wall
    time of the whole block (with whatever the process waited between runs) and the CPU time
    the process's other threads used in it, in seconds."""
    block, process, own = time.perf_counter(), time.process_time(), time.thread_time()
    for _ in range(n):
        start = time.perf_counter()
        runner.invoke()
        samples.append(time.perf_counter() - start)
    others = (time.process_time() - process) - (time.thread_time() - own)
    return time.perf_counter() - block, max(0.0, others)


def median_interval(samples: list[float]) -> tuple[float, float] | None:
    """The median's 95% confidence interval (low, high), in the samples' unit, from order
    statistics (the normal approximation to the binomial: ranks n/2 ± 1.96·√n/2; no
    assumption about the shape of the distribution). None under 6 samples."""
    ordered = sorted(samples)
    n = len(ordered)
    if n < 6:
        return None
    spread = 1.96 * n ** 0.5 / 2
    low, high = int(max(0, n / 2 - spread)), int(min(n - 1, n / 2 + spread))
    return float(ordered[low]), float(ordered[high])


def median_ci_pct(samples: list[float]) -> float:
    """Half-width of the median's 95% confidence interval, in % of the median (from order
    statistics: no assumption about the shape of the distribution)."""
    ordered = sorted(samples)
    n = len(ordered)
    if n < 6:
        return float("inf")
    spread = 1.96 * n ** 0.5 / 2
    low, high = int(max(0, n / 2 - spread)), int(min(n - 1, n / 2 + spread))
    middle = ordered[n // 2]
    return (ordered[high] - ordered[low]) / 2 / middle * 100 if middle > 0 else float("inf")


def measure_until_stable(runner: Runner, x: np.ndarray, warmup: int, min_runs: int,
                         max_runs: int, stable_pct: float, max_seconds: float = 5.0,
                         raw: bool = False) -> tuple[LatencyStats, float]:
    """Run until the median is known to within ``stable_pct`` % (95% confidence), or
    ``max_runs`` / ``max_seconds`` is reached. Returns the statistics and that half-width."""
    runner.run(x)
    for _ in range(warmup):
        runner.invoke()
    samples: list[float] = []
    wall = helpers = 0.0
    began = time.perf_counter()
    while len(samples) < max_runs:
        block, cpu = timed_runs(runner, min(10, max_runs - len(samples)), samples)
        wall, helpers = wall + block, helpers + cpu
        if len(samples) < min_runs:
            continue
        if median_ci_pct(samples) <= stable_pct or time.perf_counter() - began > max_seconds:
            break
    return LatencyStats.from_seconds(samples, raw, wall, helpers), median_ci_pct(samples)
