"""Latency statistics of a runner (numpy only: runs on the device)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .runtimes import Runner


def rss_mb() -> float:
    """Resident memory of this process now, in MB (Linux /proc; NaN elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


@dataclass
class LatencyStats:
    median_ms: float
    mean_ms: float
    std_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    count: int

    @classmethod
    def from_seconds(cls, samples: list[float]) -> LatencyStats:
        ms = np.asarray(samples) * 1000.0
        return cls(
            median_ms=float(np.median(ms)), mean_ms=float(ms.mean()), std_ms=float(ms.std()),
            p10_ms=float(np.percentile(ms, 10)), p90_ms=float(np.percentile(ms, 90)),
            min_ms=float(ms.min()), count=len(ms),
        )

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def measure_latency(runner: Runner, x: np.ndarray, warmup: int = 5, runs: int = 30,
                    on_progress: Callable[[int, int], None] | None = None) -> LatencyStats:
    """Time ``invoke`` alone: input copies and (de)quantization are set up once, outside.

    ``on_progress(done, total)`` is called now and then between runs, outside the timed part.
    """
    runner.run(x)
    total = warmup + runs
    every = max(1, total // 20)
    for i in range(warmup):
        runner.invoke()
        if on_progress and i % every == 0:
            on_progress(i + 1, total)
    samples = []
    for i in range(runs):
        start = time.perf_counter()
        runner.invoke()
        samples.append(time.perf_counter() - start)
        if on_progress and (warmup + i) % every == 0:
            on_progress(warmup + i + 1, total)
    return LatencyStats.from_seconds(samples)


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
                         max_runs: int, stable_pct: float, max_seconds: float = 5.0
                         ) -> tuple[LatencyStats, float]:
    """Run until the median is known to within ``stable_pct`` % (95% confidence), or
    ``max_runs`` / ``max_seconds`` is reached. Returns the statistics and that half-width."""
    runner.run(x)
    for _ in range(warmup):
        runner.invoke()
    samples: list[float] = []
    began = time.perf_counter()
    while len(samples) < max_runs:
        for _ in range(min(10, max_runs - len(samples))):
            start = time.perf_counter()
            runner.invoke()
            samples.append(time.perf_counter() - start)
        if len(samples) < min_runs:
            continue
        if median_ci_pct(samples) <= stable_pct or time.perf_counter() - began > max_seconds:
            break
    return LatencyStats.from_seconds(samples), median_ci_pct(samples)
