"""Measuring on a device whose speed moves: heat, clocks, and (on shared machines) neighbours.

Every segment of a batch is bracketed by a fixed reference unit: ``[ref, seg1, ref, seg2,
ref ...]``. A segment counts only when the references on both sides agree, within
``limit_pct``, with the reference's running median; otherwise it is measured again (up to
``retries`` times), and when it never settles it is kept, marked, and the table is flagged.

Why: on this shared host the reference unit ran at 0.32 ms for minutes, then at 0.52-0.55 ms
for a few seconds at a time; units measured in those seconds were 1.5-1.7x too slow and the
predictions built on them were off by 20 %.

The baseline is the median of the recent references that run at the device's own speed
(:func:`undisturbed`: the last ``WINDOW``, those within ``CLUSTER_PCT`` of their fastest
tenth), not of references that agreed with it: such a baseline could not move, and a first job
that ran in a slow episode held it there (a MobileNetV2 collection's first 31 references at
0.232 ms, every later one at 0.150 ms: 340 of 368 "disturbed", 82 segments "unsettled", the
table flagged while the host had been calm since its fourth second). Nor of every reference:
on a host that alternates between two speeds, that median lands in either, or between them.
Each result records the references around it (``reference_ms``), so what was measured before
the baseline settled can be found and measured again (:meth:`DriftGuard.off_baseline`).

The limit follows the reference's own noise: ``limit_pct`` is its floor, and once
``NOISE_MIN_REFERENCES`` undisturbed references are known it is three times their median
absolute deviation from the baseline (:func:`noise_of`), capped at ``cap_pct``. Why: on a
host whose reference wanders ±5 % both ways from one measurement to the next, a fixed 3 %
called 222 of 234 checks disturbed (110 of them faster), measured every segment four times
and settled none: the retries met the same noise. Replayed job by job on the references of
recorded collections (the rule before: the median of every reference, 3 %): on Intel family 6
model 207, 13 % of the checks called disturbed instead of 32 % (noise 1.4 %); on model 167,
15 % instead of 58 % (noise 3.7 %, limit 10 %); on the calm AMD host 8 % instead of 7 % (noise
0.7 %, limit 3 %). On a host at half speed about half of the time (model 207, two runs of
2026-12-06), 61-63 % instead of 85-89 %: those are the slow halves, measured again and,
where they never settle, flagged: a neighbour's share of the host is not averaged into a table
silently.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Measure = Callable[[list[dict[str, Any]]], list[dict[str, float]]]

# the reference's noise is estimated from at least this many of its measurements (fewer: the
# floor); a limit is 3 median absolute deviations (≈ 2 standard deviations of a normal
# noise), never more than the cap
NOISE_MIN_REFERENCES = 10
NOISE_WIDTH = 3.0
# the baseline is taken from the last WINDOW references (a device that settles at a new speed
# for good, a Pi throttled by heat, gets a new baseline within about two jobs) ...
WINDOW = 60
# ... and only from those within CLUSTER_PCT of their fastest tenth: the device's own speed,
# not a neighbour's share of it
CLUSTER_PCT = 25.0


def undisturbed(values: list[float]) -> list[float]:
    """The references of the last ``WINDOW`` that run at the device's own speed: within
    ``CLUSTER_PCT`` % of the window's 10th percentile.

    Why not all of them: a shared host alternates between its own speed and about half of it
    every few seconds (2026-12-06, Intel family 6 model 207: references at 0.42 and 0.83 ms,
    about half of each). The median of every reference fell in whichever half had the
    majority, or between them (0.469 ms), and which half was called disturbed could flip
    during a collection. Units measured between fast references agreed with a calm
    collection's (×1.07), those between slow ones did not (×1.6)."""
    window = values[-WINDOW:]
    if not window:
        return []
    anchor = sorted(window)[int(0.1 * (len(window) - 1))]
    kept = [v for v in window if v <= anchor * (1 + CLUSTER_PCT / 100)]
    # under 20 references the anchor is the fastest one: alone, it is one odd measurement,
    # not a speed
    return kept if len(kept) >= 2 else window


def baseline_of(values: list[float]) -> float | None:
    """The reference's usual time (ms): the median of :func:`undisturbed` (None: no
    references)."""
    kept = undisturbed(values)
    return statistics.median(kept) if kept else None


def noise_of(values: list[float]) -> float | None:
    """The reference's noise (%): the median absolute deviation of :func:`undisturbed` from
    their median (None: fewer than ``NOISE_MIN_REFERENCES`` of them)."""
    kept = undisturbed(values)
    if len(kept) < NOISE_MIN_REFERENCES:
        return None
    baseline = statistics.median(kept)
    return statistics.median(abs(v - baseline) for v in kept) / baseline * 100


def _shares(measured: list[dict[str, Any]], job_s: float) -> list[float]:
    """Each item's share of a job's wall time (s), by its runs × median (a result without a
    run count counts one run); equal shares where no item says its time."""
    work = [max(0.0, float(m.get("count", 1)) * float(m.get("median_ms", 0.0)))
            for m in measured]
    total = sum(work)
    if total <= 0:
        return [job_s / max(1, len(measured))] * len(measured)
    return [job_s * w / total for w in work]


@dataclass
class DriftGuard:
    reference_item: dict[str, Any]  # the agent job item of the reference unit
    limit_pct: float = 3.0  # the floor of the limit (%)
    retries: int = 3
    samples: list[dict[str, Any]] = field(default_factory=list)  # every reference measured
    unsettled: int = 0  # segments kept although their references disagreed
    cap_pct: float = 10.0  # the limit never grows beyond this (%)

    @property
    def baseline_ms(self) -> float | None:
        """The reference unit's usual time (ms): see :func:`baseline_of`."""
        return baseline_of([s["median_ms"] for s in self.samples])

    def limit_for(self, values: list[float]) -> float:
        """The drift limit (%) for references ``values`` (in the order measured): the floor,
        widened to ``NOISE_WIDTH`` times their noise (:func:`noise_of`), at most the cap."""
        noise = noise_of(values)
        if noise is None:
            return self.limit_pct
        return min(max(self.limit_pct, NOISE_WIDTH * noise), max(self.cap_pct, self.limit_pct))

    @property
    def current_limit_pct(self) -> float:
        """The limit (%) as the references measured so far set it."""
        return self.limit_for([s["median_ms"] for s in self.samples])

    def off_baseline(self, stats: dict[str, Any]) -> bool:
        """Whether a result was measured between references that the baseline, as it stands
        now, calls disturbed (a result without ``reference_ms``: never)."""
        baseline, around = self.baseline_ms, stats.get("reference_ms")
        return bool(baseline and around) and not self._close(around, baseline,
                                                             self.current_limit_pct)

    @staticmethod
    def _close(value: float, baseline: float, limit_pct: float) -> bool:
        return abs(value - baseline) / baseline * 100 <= limit_pct

    def measure(self, measure: Measure, segments: list[list[dict[str, Any]]],
                on_segment: Callable[[int, list[dict[str, float]]], None] | None = None,
                per_job: int | None = None, after_job: Callable[[], None] | None = None,
                may_retry: Callable[[float], bool] | None = None
                ) -> list[list[dict[str, float]]]:
        """Results for each segment, measured between references until they agree.

        Segments go to the device ``per_job`` items at a time (one worker process each);
        a segment to measure again goes into the next job rather than a job of its own
        (a worker start costs seconds: importing the runtime). ``may_retry(s)`` is asked
        before each retry with the seconds that the retries approved after this job would
        take, this one included (each segment's share of the job's wall time, by its runs ×
        median); false (a time budget that cannot hold them): the disturbed segment is kept,
        marked unsettled, as when its retries ran out. Asked with the sum, not the segment
        alone: a job whose every segment was disturbed must not be approved a whole job of
        retries by one look at the budget.
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
            began = time.perf_counter()
            measured = measure(items)
            costs = _shares(measured, time.perf_counter() - began)
            refs, cursor, parts, part_s = [measured[0]["median_ms"]], 1, [], []
            for i, _ in taken:
                parts.append(measured[cursor:cursor + len(segments[i])])
                # a retry measures the segment and one more reference
                part_s.append(sum(costs[cursor:cursor + len(segments[i]) + 1]))
                cursor += len(segments[i])
                refs.append(measured[cursor]["median_ms"])
                cursor += 1
            known = [s["median_ms"] for s in self.samples] + refs
            baseline, limit = baseline_of(known), self.limit_for(known)
            retry, approved_s = [], 0.0
            for n, (i, attempt) in enumerate(taken):
                settled = (self._close(refs[n], baseline, limit)
                           and self._close(refs[n + 1], baseline, limit))
                for stats in parts[n]:
                    stats["reference_ms"] = (refs[n] + refs[n + 1]) / 2
                if not settled and attempt < self.retries and (
                        may_retry is None or may_retry(approved_s + part_s[n])):
                    approved_s += part_s[n]
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
            self.samples += [{"time": now, "median_ms": r,
                              "accepted": self._close(r, baseline, limit)} for r in refs]
            if after_job:
                after_job()
        return [r for r in results if r is not None]

    def summary(self) -> dict[str, Any]:
        # judged against the baseline as it ends: a reference that agreed with an early,
        # still moving baseline may not agree with the settled one
        baseline, limit = self.baseline_ms, self.current_limit_pct
        values = [s["median_ms"] for s in self.samples]
        noise = noise_of(values)
        accepted = [v for v in values if baseline and self._close(v, baseline, limit)]
        spread = (max(accepted) - min(accepted)) / statistics.median(accepted) * 100 \
            if accepted else 0.0
        disturbed = len(self.samples) - len(accepted)
        # either way off: a reference faster than usual is as much a sign of a moving host
        # (on a shared Intel host, 54 of 100 disturbed references were faster)
        slower = sum(1 for v in values if baseline and v > baseline
                     and not self._close(v, baseline, limit))
        return {"limit_pct": round(limit, 2), "limit_floor_pct": self.limit_pct,
                "limit_cap_pct": self.cap_pct,
                "noise_pct": None if noise is None else round(noise, 2),
                "baseline_ms": baseline,
                "references": len(self.samples), "disturbed_references": disturbed,
                "slower_references": slower, "faster_references": disturbed - slower,
                "accepted_spread_pct": round(spread, 2), "unsettled_segments": self.unsettled,
                "flagged": self.unsettled > 0}
