"""Latency statistics of a runner (numpy only: runs on the device)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from .runtimes import Runner


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


def measure_latency(runner: Runner, x: np.ndarray, warmup: int = 5, runs: int = 30
                    ) -> LatencyStats:
    """Time ``invoke`` alone: input copies and (de)quantization are set up once, outside."""
    runner.run(x)
    for _ in range(warmup):
        runner.invoke()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.invoke()
        samples.append(time.perf_counter() - start)
    return LatencyStats.from_seconds(samples)
