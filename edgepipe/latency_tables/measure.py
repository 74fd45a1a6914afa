"""Measuring programs on a device's agent, the way every table, check and evaluation does:
the same stopping rule, the same job settings, programs converted once and uploaded once."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..host.client import AgentClient
from ..manifest import file_sha256
from .drift import DriftGuard
from .programs import ProgramSpec, convert_programs, is_converted, program_path

# two sittings of a network further apart than this (%) are not both trusted: on the AMD host
# 99 % of networks measured twice agreed within 10 %, on a shared Intel host 92 %
AGREE_PCT = 10.0


@dataclass
class MeasureSettings:
    warmup: int = 5
    min_runs: int = 15
    max_runs: int = 200
    stable_pct: float = 1.0  # stop once the median's 95 % CI is within ±1 %
    max_seconds: float = 1.0  # ... or after a second (the slowest units)
    batch: int = 480  # units per agent job (one worker process: ~2 s to start)
    segment: int = 30  # units between two reference measurements
    whole_model_runs: int = 60
    sitting_runs: int = 40
    drift_limit_pct: float = 3.0
    retries: int = 3

    @classmethod
    def of_table(cls, method: dict[str, Any]) -> MeasureSettings:
        """The settings a table was collected with (its ``method``)."""
        return cls(**{k: v for k, v in method.items() if k in cls.__dataclass_fields__})

    def job(self, threads: int) -> dict[str, Any]:
        return {"threads": threads, "warmup": self.warmup, "runs": self.max_runs,
                "min_runs": self.min_runs, "stable_pct": self.stable_pct,
                "max_seconds": self.max_seconds, "profile": False}

    def whole_job(self, threads: int) -> dict[str, Any]:
        return {**self.job(threads), "min_runs": self.whole_model_runs, "stable_pct": 0.5,
                "max_seconds": 3.0}

    def sitting_job(self, threads: int) -> dict[str, Any]:
        """A whole network in one sitting of several: its runs are pooled with the other
        sittings', so one sitting need not pin its own median down to ±0.5 %."""
        return {**self.job(threads), "min_runs": self.sitting_runs, "stable_pct": 2.0,
                "max_seconds": 1.5}

    def guard(self, reference_item: dict[str, Any], saved: dict[str, Any] | None = None
              ) -> DriftGuard:
        saved = saved or {}
        return DriftGuard(reference_item, self.drift_limit_pct, self.retries,
                          list(saved.get("samples", [])), saved.get("unsettled_segments", 0))


class Progress:
    """What a collection reports (the CLI draws bars with ETA)."""

    def phase(self, name: str, total: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...


def upload_programs(client: AgentClient, paths: list[Path],
                    on_done: Callable[[], None] | None = None) -> dict[Path, str]:
    """Upload what the agent does not have yet; the sha256 of each path."""
    present = {a["sha256"] for a in client.artifacts()}
    shas = {}
    for path in paths:
        shas[path] = file_sha256(path)
        if shas[path] not in present:
            client.upload(path, check_present=False)
            present.add(shas[path])
        if on_done:
            on_done()
    return shas


def prepare_programs(specs: list[ProgramSpec], runtime: str, precision: str,
                     client: AgentClient, folder: Path, jobs: int, progress: Progress,
                     what: str) -> dict[Path, str]:
    """Convert what is not converted yet, upload what the agent lacks: sha256 per program."""
    unconverted = [s for s in specs if not is_converted(folder, s, runtime)]
    progress.phase(f"converting {what}", len(unconverted))
    convert_programs(unconverted, runtime, precision, folder, jobs,
                     on_done=lambda _k: progress.advance())
    paths = [program_path(folder, s, runtime) for s in specs]
    progress.phase("uploading", len(paths))
    return upload_programs(client, paths, progress.advance)


def measure_items(client: AgentClient, items: list[dict[str, Any]], job: dict[str, Any],
                  flags: list[str] | None = None) -> list[dict[str, float]]:
    """One batch job's per-item statistics; the job's device-state flags (a fallen clock,
    throttling, a shared core) are appended to ``flags``."""
    done = client.wait(client.submit(items=items, **job)["id"])
    if flags is not None:
        flags += done["result"].get("device_state", {}).get("flags", [])
    return done["result"]["items"]


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# --- whole networks measured in sittings ---------------------------------------------------
def sitting_record(stats: dict[str, Any]) -> dict[str, Any]:
    """What a sitting keeps of one network's job statistics: its runs (ms, rounded to 0.1 µs),
    their summary, and the reference unit's time around them where measured so."""
    raw = [round(float(v), 4) for v in stats.get("raw_ms") or []]
    record = {"median_ms": stats["median_ms"], "p90_ms": stats["p90_ms"],
              "min_ms": stats["min_ms"], "count": stats["count"], "raw_ms": raw,
              "unsettled": bool(stats.get("unsettled", False))}
    if "reference_ms" in stats:
        record["reference_ms"] = stats["reference_ms"]
    return record


def pooled(sittings: list[dict[str, Any]], outvote: bool = False) -> dict[str, float]:
    """The median, p90 and minimum of every run of every sitting (what a user measures over
    time, not one moment of the host), and how far apart the sittings' medians were.
    ``outvote``: the runs of the sittings that agree only (:func:`agreeing`; all where none
    do), every sitting's median still on record and ``sittings_left_out`` saying how many
    were not pooled."""
    import numpy as np

    kept = (agreeing(sittings) or sittings) if outvote else sittings
    runs = np.concatenate([np.asarray(s["raw_ms"] or [s["median_ms"]], float) for s in kept])
    medians = [s["median_ms"] for s in sittings]
    return {"median_ms": float(np.median(runs)), "p90_ms": float(np.percentile(runs, 90)),
            "min_ms": float(runs.min()), "count": int(runs.size),
            "sitting_medians_ms": medians,
            "sitting_spread_pct": (max(medians) - min(medians)) / min(medians) * 100,
            "sittings_left_out": len(sittings) - len(kept)}


def agreeing(sittings: list[dict[str, Any]], pct: float | None = None
             ) -> list[dict[str, Any]]:
    """The sittings whose medians are within ``pct`` % (``AGREE_PCT``) of the median of the
    sittings' medians: with three or more, a disturbed one is outvoted; of two that disagree,
    none (neither can be told the disturbed one: a third sitting decides); one, itself."""
    pct = AGREE_PCT if pct is None else pct
    if len(sittings) < 3:
        medians = [s["median_ms"] for s in sittings]
        apart = (max(medians) - min(medians)) / min(medians) * 100 if medians else 0.0
        return sittings if apart <= pct or len(sittings) < 2 else sittings[:0]
    middle = statistics.median(s["median_ms"] for s in sittings)
    return [s for s in sittings if abs(s["median_ms"] - middle) / middle * 100 <= pct]


def measure_sitting(client: AgentClient, guard: DriftGuard, items: list[dict[str, Any]],
                    job: dict[str, Any], flags: list[str] | None = None, per_job: int = 40,
                    may_retry: Callable[[float], bool] | None = None) -> list[dict[str, Any]]:
    """One sitting: every item measured once as a whole network (its runs kept), bracketed
    by the reference unit like any segment (a sitting in a slow episode is measured again)."""
    results = guard.measure(lambda batch: measure_items(client, batch, {**job, "raw": True},
                                                        flags),
                            [[item] for item in items], per_job=per_job, may_retry=may_retry)
    return [sitting_record(r[0]) for r in results]
