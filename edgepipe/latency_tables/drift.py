"""Measuring on a device whose speed moves: heat, clocks, and (on shared machines) neighbours.

Every segment of a batch is bracketed by a fixed reference unit: ``[ref, seg1, ref, seg2,
ref ...]``. A segment counts only when the references on both sides agree, within
``limit_pct``, with the reference's running median; otherwise it is measured again (up to
``retries`` times), and when it never settles it is kept, marked, and the table is flagged.

Why: on this shared host the reference unit ran at 0.32 ms for minutes, then at 0.52-0.55 ms
for a few seconds at a time; units measured in those seconds were 1.5-1.7x too slow and the
predictions built on them were off by 20 %.

The baseline is the median of every reference measured so far, not only of those that agreed
with it: a baseline taken from references that agreed with it could not move, and a first job
that ran in a slow episode held it there (a MobileNetV2 collection's first 31 references at
0.232 ms, every later one at 0.150 ms: 340 of 368 "disturbed", 82 segments "unsettled", the
table flagged while the host had been calm since its fourth second). Each result records the
references around it (``reference_ms``), so what was measured before the baseline settled can
be found and measured again (:meth:`DriftGuard.off_baseline`).
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Measure = Callable[[list[dict[str, Any]]], list[dict[str, float]]]


@dataclass
class DriftGuard:
    reference_item: dict[str, Any]  # the agent job item of the reference unit
    limit_pct: float = 3.0
    retries: int = 3
    samples: list[dict[str, Any]] = field(default_factory=list)  # every reference measured
    unsettled: int = 0  # segments kept although their references disagreed

    @property
    def baseline_ms(self) -> float | None:
        """The reference unit's usual time (ms): the median of every reference measured."""
        values = [s["median_ms"] for s in self.samples]
        return statistics.median(values) if values else None

    def off_baseline(self, stats: dict[str, Any]) -> bool:
        """Whether a result was measured between references that the baseline, as it stands
        now, calls disturbed (a result without ``reference_ms``: never)."""
        baseline, around = self.baseline_ms, stats.get("reference_ms")
        return bool(baseline and around) and not self._close(around, baseline)

    def _close(self, value: float, baseline: float) -> bool:
        return abs(value - baseline) / baseline * 100 <= self.limit_pct

    def measure(self, measure: Measure, segments: list[list[dict[str, Any]]],
                on_segment: Callable[[int, list[dict[str, float]]], None] | None = None,
                per_job: int | None = None, after_job: Callable[[], None] | None = None,
                may_retry: Callable[[], bool] | None = None) -> list[list[dict[str, float]]]:
        """Results for each segment, measured between references until they agree.

        Segments go to the device ``per_job`` items at a time (one worker process each);
        a segment to measure again goes into the next job rather than a job of its own
        (a worker start costs seconds: importing the runtime). ``may_retry()`` false (a time
        budget spent): a disturbed segment is kept, marked unsettled, as when its retries
        ran out.
        """
        results: list[list[dict[str, float]] | None] = [None] * len(segments)
        queue = deque((i, 0) for i in range(len(segments)))
        while queue:
            taken: list[tuple[int, int]] = []
            size = 0
            while queue and (not taken or per_job is None
                             or size + len(segments[queue[0][0]]) <= per_job):
                taken.append(queue.popleft())
                size += len(segments[taken[-1][0]])
            items = [self.reference_item]
            for i, _ in taken:
                items += segments[i] + [self.reference_item]
            measured = measure(items)
            refs, cursor, parts = [measured[0]["median_ms"]], 1, []
            for i, _ in taken:
                parts.append(measured[cursor:cursor + len(segments[i])])
                cursor += len(segments[i])
                refs.append(measured[cursor]["median_ms"])
                cursor += 1
            baseline = statistics.median([s["median_ms"] for s in self.samples] + refs)
            retry = []
            for n, (i, attempt) in enumerate(taken):
                settled = self._close(refs[n], baseline) and self._close(refs[n + 1], baseline)
                for stats in parts[n]:
                    stats["reference_ms"] = (refs[n] + refs[n + 1]) / 2
                if not settled and attempt < self.retries and (may_retry is None
                                                              or may_retry()):
                    retry.append((i, attempt + 1))
                    continue
                if not settled:
                    self.unsettled += 1
                    for stats in parts[n]:
                        stats["unsettled"] = True
                results[i] = parts[n]
                if on_segment:
                    on_segment(i, parts[n])
            queue.extendleft(reversed(retry))  # first in the next job
            now = time.time()
            self.samples += [{"time": now, "median_ms": r, "accepted": self._close(r, baseline)}
                             for r in refs]
            if after_job:
                after_job()
        return [r for r in results if r is not None]

    def summary(self) -> dict[str, Any]:
        # judged against the baseline as it ends: a reference that agreed with an early,
        # still moving baseline may not agree with the settled one
        baseline = self.baseline_ms
        accepted = [s["median_ms"] for s in self.samples
                    if baseline and self._close(s["median_ms"], baseline)]
        spread = (max(accepted) - min(accepted)) / statistics.median(accepted) * 100 \
            if accepted else 0.0
        disturbed = len(self.samples) - len(accepted)
        # either way off: a reference faster than usual is as much a sign of a moving host
        # (on a shared Intel host, 54 of 100 disturbed references were faster)
        slower = sum(1 for s in self.samples if baseline and s["median_ms"] > baseline
                     and not self._close(s["median_ms"], baseline))
        return {"limit_pct": self.limit_pct, "baseline_ms": baseline,
                "references": len(self.samples), "disturbed_references": disturbed,
                "slower_references": slower, "faster_references": disturbed - slower,
                "accepted_spread_pct": round(spread, 2), "unsettled_segments": self.unsettled,
                "flagged": self.unsettled > 0}
