"""The device's own speed, measured beside every sitting of a result.

On a shared host the same network measured twice minutes apart differs by up to 20 % (the
latency-table evaluation's worst pair): the host, not the network, moved. So each sitting of a
measurement is preceded by the latency tables' sentinels (:mod:`edgepipe.latency_tables.
sentinels`: the reference unit and three whole networks of the ``tiny`` space, each measured
twice, the faster pass kept), and ``diff`` divides out how much slower the device was in one
sitting than in the others (:func:`edgepipe.lab.stats.drift_offsets`).

The sentinels run on ExecuTorch where the device has it (four small programs, converted once
into ``EDGEPIPE_HOME/lut-work``), else on LiteRT; at the measurement's thread count and CPUs.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from ..host.client import AgentClient
from ..latency_tables.collect import reference_unit, space_units
from ..latency_tables.measure import MeasureSettings, Progress
from ..latency_tables.programs import convert_programs, is_converted, takes_dynamic_size
from ..latency_tables.sentinels import (
    measure_definitions,
    sentinel_definitions,
    sentinel_program,
)
from ..models.space import SPACES

SPACE = SPACES["tiny"]
_CONVERTING = threading.Lock()  # devices measured at once share one cache of programs


def reference_runtime(info: dict[str, Any]) -> str | None:
    runtimes = info.get("runtimes") or {}
    return next((r for r in ("executorch", "litert") if r in runtimes), None)


class Reference:
    """Measures the sentinels on one device, as often as asked (``measure()``)."""

    def __init__(self, client: AgentClient, info: dict[str, Any], home: Path,
                 threads: int = 1, affinity: list[int] | None = None, jobs: int = 2,
                 progress: Progress | None = None) -> None:
        self.client, self.threads, self.affinity, self.jobs = client, threads, affinity, jobs
        self.runtime = reference_runtime(info)
        self.workdir = home / "lut-work" / SPACE.digest()[:12]  # shared with `lut collect`
        self.progress = progress
        self.definitions = sentinel_definitions(
            SPACE, reference_unit(space_units(SPACE)),
            takes_dynamic_size(self.runtime) if self.runtime else False)

    def measure(self) -> dict[str, Any] | None:
        """One reference: each sentinel's 10th percentile of run times (ms) by name
        (``sentinels``; medians and sustained times beside them); None where the device has no
        runtime for them."""
        if self.runtime is None:
            return None
        self._convert()
        # one pass of at least 20 runs or half a second each: a few seconds beside a sitting
        # (the drift it tracks moves over minutes; a table's check takes longer, once)
        job = {**MeasureSettings().sitting_job(self.threads), "min_runs": 20,
               "max_seconds": 0.5}
        rows = measure_definitions(self.definitions, self.runtime, "fp32", job, self.client,
                                   self.workdir, self.jobs, self.progress, self.affinity,
                                   "measure without references (reference = false)",
                                   "reference sentinels", passes=1)
        # the 10th percentile of runs: the device's speed, not a neighbour's burst (on this
        # shared host a burst moved the sentinels' medians by up to 80 % for seconds, which
        # the sitting after them did not see); not the sustained time either, which counts
        # the waits between runs that a short run's own time does not
        return {"time": time.time(), "runtime": self.runtime, "threads": self.threads,
                "statistic": "p10", "sentinels": {r["name"]: r.get("p10_ms") or r["median_ms"]
                                                  for r in rows},
                "median_ms": {r["name"]: r["median_ms"] for r in rows},
                "sustained_ms": {r["name"]: r.get("sustained_ms") for r in rows}}

    def _convert(self) -> None:
        """The sentinels' programs converted once, whichever device thread asks first."""
        assert self.runtime is not None
        folder = self.workdir / f"{self.runtime}-fp32"
        with _CONVERTING:
            specs = [sentinel_program(d) for d in self.definitions]
            todo = [s for s in specs if not is_converted(folder, s, self.runtime)]
            if todo:
                convert_programs(todo, self.runtime, "fp32", folder, self.jobs)
