"""``edgepipe lut adapt``: a table for a new target from existing tables and minutes of
measurement on it.

The target is a device with a runtime, precision and thread count; the sources are tables of
the same search space measured elsewhere (another CPU, runtime, precision or thread count).
Within ``budget_s`` seconds of measurement on the device:

1. whole networks (the seeds and a few random networks of the space, at every resolution where
   one program takes them all) are measured in a first sitting;
2. units are measured in the order :func:`.transfer.measurement_order` gives (time-weighted
   coverage interleaved with random picks), job after job, for as long as the budget leaves
   room for what follows;
3. the networks are measured in a second sitting (a third where two disagree: a disturbed
   device is measured again, and flagged when it never agrees with itself);
4. the ratio model (:mod:`.transfer`) learns target/source on the measured units and
   transfers every other unit, each with its expected error; the network model
   (:mod:`.model`) is fitted on the networks; the sentinels are measured so that
   ``lut check`` can tell later whether the table still holds.

Conversion happens on the host and does not count against the budget; programs converted for
an earlier table of the same runtime and precision are reused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgepipeError
from ..host.client import AgentClient
from ..models.space import SearchSpace
from .collect import (
    CollectRequest,
    calibration_architectures,
    check_runtime,
    fit_network_model,
    network_points,
    open_table,
    reference_unit,
    space_units,
)
from .measure import (
    MeasureSettings,
    Progress,
    measure_items,
    measure_sitting,
    pooled,
    upload_programs,
)
from .model import architecture_group
from .programs import (
    convert_programs,
    program_for,
    program_path,
    takes_dynamic_size,
    unit_programs,
)
from .sentinels import measure_sentinels, sentinel_definitions, sentinel_program
from .table import LatencyTable
from .transfer import (
    METHOD_NAME,
    family,
    fit_transfer,
    measurement_order,
    suspect_units,
    time_weights,
    transfer,
)
from .units import units_of

# the fewest units a ratio model is fitted on, and networks a network model
MIN_UNITS = 8
MIN_NETWORK_POINTS = 3
# sittings whose medians differ by more than this are measured again (the device disturbed)
SITTING_AGREEMENT_PCT = 8.0
JOB_OVERHEAD_S = 2.5  # starting a worker (importing the runtime) and the reference unit


@dataclass
class AdaptRequest:
    sources: list[Path]
    runtime: str
    precision: str
    threads: int
    table_path: Path
    workdir: Path
    budget_s: float = 120.0
    jobs: int = 2
    networks: int = 4  # random networks beside the seeds
    seed: int = 0
    max_units: int | None = None  # the most units measured (default: what the budget holds)


def load_sources(paths: list[Path]) -> tuple[list[LatencyTable], SearchSpace]:
    """The source tables, refused in one line when they are not of one space or lack units."""
    if not paths:
        raise EdgepipeError("lut adapt needs at least one source table: --from TABLE[,TABLE]")
    tables = [LatencyTable.load(p) for p in paths]
    space = SearchSpace.from_dict(tables[0].space)
    for path, table in zip(paths, tables, strict=True):
        other = SearchSpace.from_dict(table.space)
        if other.digest() != space.digest():
            raise EdgepipeError(
                f"source table {path} is of another search space ({other.name}, digest "
                f"{other.digest()[:12]}) than {paths[0]} ({space.name}, {space.digest()[:12]}):"
                " give tables of one space")
        keys = {u.key for u in space_units(space)}
        missing = keys - set(table.units)
        if missing:
            raise EdgepipeError(
                f"source table {path} lacks {len(missing)} of the space's {len(keys)} units "
                f"(e.g. {sorted(missing)[0]}): an unfinished collection? finish it with "
                "`edgepipe lut collect --out` on it, or leave it out")
    return tables, space


def _source_record(path: Path, table: LatencyTable) -> dict[str, Any]:
    return {"name": path.name, "path": str(path), "fingerprint": table.device["fingerprint"],
            "identity_words": table.device.get("identity_words"), "runtime": table.runtime,
            "precision": table.precision, "threads": table.threads, "created": table.created,
            "provenance": table.provenance()}


class Budget:
    """Seconds of measurement on the device, spent job by job, and on what (``phases``:
    seconds by phase name, recorded in the table so an overrun says where it came from)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.phases: dict[str, float] = {}
        self._since: float | None = None  # when the phase running now began

    @property
    def spent(self) -> float:
        """Seconds spent in finished phases."""
        return sum(self.phases.values())

    def left(self) -> float:
        """Seconds left, the phase running now included: a retry asked for inside a phase
        sees the jobs that phase has run so far."""
        running = time.perf_counter() - self._since if self._since is not None else 0.0
        return self.seconds - self.spent - running

    def run(self, fn, phase: str):  # type: ignore[no-untyped-def]
        began = self._since = time.perf_counter()
        try:
            return fn()
        finally:
            took = time.perf_counter() - began
            self._since = None
            self.phases[phase] = self.phases.get(phase, 0.0) + took


def over_budget_words(spent_s: float, budget_s: float, phases: dict[str, float]) -> str | None:
    """A note where the measurement ran more than 5 % over its budget (None otherwise), naming
    the phases by the seconds they took: what a user needs to read ``--budget-s`` against."""
    if spent_s <= budget_s * 1.05:
        return None
    parts = ", ".join(f"{name} {s:.0f} s" for name, s in
                      sorted(phases.items(), key=lambda kv: -kv[1]))
    return (f"the measurement took {spent_s:.0f} s, over the {budget_s:g} s budget ({parts}): "
            "each job is sized from the ones before it, and these ran slower than those "
            "promised (a device that slowed down while measured)")


def after_units_s(sitting_s: float, sentinel_s: float) -> float:
    """What is kept back from the units for what follows them (s): the second sitting at
    1.3× the first (a device slower by then), the sentinels and one job's start."""
    return sitting_s * 1.3 + sentinel_s + JOB_OVERHEAD_S


def too_few_units_words(measured: int, budget_s: float, first_s: float, expected_first_s: float,
                        sentinel_s: float, per_unit_s: float, source: str) -> str:
    """The one line for a budget that held fewer than :data:`MIN_UNITS` units: what took it
    (the first sitting of whole networks, s, against what the source's times gave) and the
    budget that would hold them: two sittings (the second reserved at 1.3× the first),
    the sentinels, and the units at three times the time one took (s each)."""
    need = (first_s + after_units_s(first_s, sentinel_s)
            + MIN_UNITS * per_unit_s * 3 + 2 * JOB_OVERHEAD_S)
    slower = first_s / max(expected_first_s, 1e-9)
    why = (f"the whole networks' first sitting took {first_s:.0f} s of it, {slower:.1f}× "
           f"the {expected_first_s:.0f} s {source}'s times gave (a slower device, or one "
           "disturbed and measured again)" if slower > 1.5 else
           f"the whole networks' first sitting took {first_s:.0f} s of it and a unit "
           f"{per_unit_s:.2f} s")
    return (f"only {measured} units could be measured in --budget-s {budget_s:g} (at least "
            f"{MIN_UNITS} are needed): {why}; give --budget-s {int(np.ceil(need))} or more")


def adapt(req: AdaptRequest, client: AgentClient, progress: Progress | None = None
          ) -> LatencyTable:
    """The adapted table, written to ``req.table_path`` (see the module doc)."""
    progress = progress or Progress()
    began = time.perf_counter()
    sources, space = load_sources(req.sources)
    info = check_runtime(client, req.runtime)
    if req.table_path.exists():
        raise EdgepipeError(f"{req.table_path} exists: adapt writes a new table; choose "
                            "another --out or delete it")
    settings = MeasureSettings()
    table = open_table(CollectRequest(space, req.runtime, req.precision, req.threads,
                                       req.table_path, req.workdir, settings=settings), info)
    for path, source in zip(req.sources, sources, strict=True):
        if source.target == table.target:
            raise EdgepipeError(f"{path} is already a table of this device, runtime, precision "
                                "and thread count: use it, or `lut collect` to measure it "
                                "again")
    dynamic = takes_dynamic_size(req.runtime)
    units = space_units(space)
    times = [np.array([src.units[u.key]["median_ms"] for u in units]) for src in sources]
    weights = time_weights(units, times[0], space.architectures(300, seed=req.seed + 1))
    order = measurement_order(units, times[0], weights, req.seed)
    reference = reference_unit(units)
    points = network_points(calibration_architectures(space, 2 + req.networks), space, dynamic)

    # what the budget can hold, estimated from the first source (its device may be faster or
    # slower than the target: the jobs below are sized again from what they took)
    index = {u.key: i for i, u in enumerate(units)}
    whole_ms = [sum(times[0][index[u.key]] for u in units_of(p.arch)) for p in points]
    runs = settings.warmup + 1.5 * settings.sitting_runs
    network_s = 2 * (sum(runs * t / 1000 for t in whole_ms) + JOB_OVERHEAD_S)  # two sittings
    unit_s = np.array([settings.min_runs * t / 1000 + 0.01 for t in times[0]])
    minimum = network_s + float(np.sort(unit_s)[:MIN_UNITS].sum()) * 3 + 2 * JOB_OVERHEAD_S
    if req.budget_s < minimum:
        raise EdgepipeError(
            f"--budget-s {req.budget_s:g} is too small to fit anything: {len(points)} whole "
            f"networks in two sittings and at least {MIN_UNITS} units need about "
            f"{minimum:.0f} s on a device as fast as {req.sources[0].name}'s: give "
            f"--budget-s {int(np.ceil(minimum))} or more")
    expected = int(np.searchsorted(np.cumsum(unit_s[order]), max(0.0, req.budget_s - network_s)))
    cap = req.max_units if req.max_units is not None else len(units)
    if cap < MIN_UNITS:
        raise EdgepipeError(f"--units {cap}: the ratio model needs at least {MIN_UNITS} "
                            "measured units; give more")
    to_convert = order[:min(len(units), cap, max(MIN_UNITS, int(expected * 1.5)))]
    if reference not in [units[i] for i in to_convert]:
        to_convert.append(units.index(reference))

    folder = req.workdir / f"{req.runtime}-{req.precision}"
    # the programs a full collection makes (each covering all of its shape's sizes: a cached
    # one serves any later table), of the units chosen
    every = unit_programs(units, dynamic)
    programs = {spec.key: spec for spec in (program_for(every, units[i]) for i in to_convert)}
    net_specs = list({p.spec.key: p.spec for p in points}.values())
    sentinels = sentinel_definitions(space, reference, dynamic)
    # converted now, with the rest: the budget is for measuring
    sentinel_specs = [sentinel_program(d) for d in sentinels]
    net_specs += [s for s in sentinel_specs if s.key not in {n.key for n in net_specs}]
    convert_started = time.perf_counter()
    specs = [*programs.values(), *net_specs]
    progress.phase("converting programs", len(specs))
    convert_programs(specs, req.runtime, req.precision, folder, req.jobs,
                     on_done=lambda _k: progress.advance())
    convert_s = time.perf_counter() - convert_started
    progress.phase("uploading", len(specs))
    shas = upload_programs(client, [program_path(folder, s, req.runtime) for s in specs],
                           progress.advance)

    def item(u: Any) -> dict[str, Any]:
        path = program_path(folder, program_for(programs, u), req.runtime)
        return {"artifact": shas[path], "shape": u.input_shape()}

    budget = Budget(req.budget_s)
    guard = settings.guard(item(reference))
    job = settings.job(req.threads)
    whole = settings.sitting_job(req.threads)
    flags = table.method.setdefault("device_state_flags", [])
    net_items = [{"artifact": shas[program_path(folder, p.spec, req.runtime)],
                  "shape": [1, 3, p.arch.resolution, p.arch.resolution]} for p in points]
    sittings: list[dict[str, Any]] = []
    progress.phase("measuring whole networks (sitting 1)", len(points))
    # a disturbed first sitting is measured again while most of the budget is left: the
    # units are what the budget is for
    half = 0.75 * req.budget_s
    first = budget.run(lambda: measure_sitting(client, guard, net_items, whole, flags,
                                               may_retry=lambda t: budget.left() - t > half),
                       "sitting 1")
    sittings.append({"time": time.time(), "networks": first})
    first_s = budget.phases["sitting 1"]
    progress.advance(len(points))
    # what the second sitting will take: this one's, but not its retries beyond a quarter of
    # the budget (a disturbed first sitting must not leave no room for units)
    sitting_s = min(first_s, 0.25 * req.budget_s)
    # the sentinels: each network twice with the table's whole-network settings, the longest
    # of them (a stable median may take up to max_seconds)
    sentinel_ms = [r["median_ms"] for r, p in zip(first, points, strict=True)
                   if p.arch.resolution == max(space.resolutions)][:3]
    sentinel_s = sum(2 * min(settings.whole_model_runs * 3 * t / 1000, 3.0)
                     for t in sentinel_ms) + JOB_OVERHEAD_S
    measured: dict[int, dict[str, Any]] = {}
    # after the chosen units, the others their programs already run (a dynamic-size program
    # measures its shape at every size): more measured units for no more conversion
    chosen = set(to_convert)
    siblings = [i for i in order if i not in chosen and
                program_for(every, units[i]).key in programs] if req.max_units is None else []
    queue = list(to_convert) + siblings
    progress.phase("measuring units", len(queue))
    per_unit_s = float(np.mean(unit_s[queue[:50]])) * 2
    reserve = after_units_s(sitting_s, sentinel_s)
    probe = True
    while queue:
        room = budget.left() - reserve - JOB_OVERHEAD_S
        take = int(min(len(queue), settings.batch, room / per_unit_s))
        if probe:
            # the first job is one segment: what a unit costs here (its program's load and
            # warm-up beside its runs, another precision) is learnt before the budget is
            # spent on it; twice the sources' runs put an int8 unit at 0.12 s where one took
            # 0.38 s, and one job of 174 units ran 28 s past its room (Intel family 6 model 106)
            take, probe = min(take, settings.segment), False
        if take < 5:
            break
        batch, queue = queue[:take], queue[take:]
        # one program stays open across its sizes (a load costs more than a small unit)
        batch.sort(key=lambda i: (units[i].program_key, units[i].hw))
        segs = [batch[i:i + settings.segment] for i in range(0, len(batch), settings.segment)]
        job_began = budget.spent
        enough = reserve + per_unit_s * settings.segment  # room to measure a segment again
        results = budget.run(lambda segs=segs, enough=enough: guard.measure(
            lambda items: measure_items(client, items, job, flags),
            [[item(units[i]) for i in seg] for seg in segs], per_job=settings.batch,
            may_retry=lambda t, enough=enough: budget.left() - t > enough), "units")
        for seg, stats in zip(segs, results, strict=True):
            for i, s in zip(seg, stats, strict=True):
                measured[i] = s
        progress.advance(len(batch))
        per_unit_s = max(1e-3, (budget.spent - job_began - JOB_OVERHEAD_S) / len(batch))
    if len(measured) < MIN_UNITS:
        raise EdgepipeError(too_few_units_words(
            len(measured), req.budget_s, first_s, network_s / 2, sentinel_s, per_unit_s,
            req.sources[0].name))

    progress.phase("measuring whole networks (sitting 2)", len(points))
    second = budget.run(lambda: measure_sitting(
        client, guard, net_items, whole, flags,
        may_retry=lambda t: budget.left() - t > sentinel_s), "sitting 2")
    sittings.append({"time": time.time(), "networks": second})
    progress.advance(len(points))
    disagree = _disagreeing(first, second)
    notes = []
    # a third sitting costs what the quicker of the two took (retries included), and the
    # sentinels still follow it
    if disagree and budget.left() > min(first_s, budget.phases["sitting 2"]) + sentinel_s:
        progress.phase("measuring whole networks again (sittings disagreed)", len(points))
        third = budget.run(lambda: measure_sitting(client, guard, net_items, whole, flags,
                                                   may_retry=lambda _s: False),
                           "sitting 3")
        sittings.append({"time": time.time(), "networks": third})
        notes.append(f"{len(disagree)} network(s) disagreed by more than "
                     f"{SITTING_AGREEMENT_PCT:g} % between two sittings: measured a third time")
        disagree = _disagreeing(second, third)
    if disagree:
        names = ", ".join(points[i].name for i in disagree[:3]) + (
            f" and {len(disagree) - 3} more" if len(disagree) > 3 else "")
        flags.append(f"the device disagreed with itself: {len(disagree)} network(s) ({names}) "
                     f"differed by more than {SITTING_AGREEMENT_PCT:g} % between sittings; the "
                     "table's network model includes them (re-run adapt on a quieter device)")

    # units far outside their family's ratio: measured again while the budget lasts, never
    # fitted on unconfirmed
    idx = np.array(sorted(measured))
    target = np.array([measured[i]["median_ms"] for i in idx])
    suspect = suspect_units(units, times, idx, target)
    if suspect.any():
        odd = [int(i) for i in idx[suspect]]
        again: dict[int, dict[str, Any]] = {}
        if budget.left() > len(odd) * per_unit_s * 2 + JOB_OVERHEAD_S + sentinel_s:
            progress.phase("measuring again units far from their family's ratio", len(odd))
            segs = [odd[i:i + settings.segment] for i in range(0, len(odd), settings.segment)]
            results = budget.run(lambda segs=segs: guard.measure(
                lambda items: measure_items(client, items, job, flags),
                [[item(units[i]) for i in seg] for seg in segs], per_job=settings.batch,
                may_retry=lambda _s: False), "units again")
            for seg, stats in zip(segs, results, strict=True):
                again.update(zip(seg, stats, strict=True))
            progress.advance(len(odd))
        confirmed = replaced = dropped = 0
        dropped_units: dict[int, dict[str, Any]] = {}
        for i in odd:
            first_ms, second = measured[i]["median_ms"], again.get(i)
            if second is not None and abs(second["median_ms"] / first_ms - 1) <= 0.10:
                confirmed += 1  # twice the same: the device's own, kept
                continue
            if second is not None:  # the second measurement judged among all the others
                at = int(np.searchsorted(idx, i))
                trial = target.copy()
                trial[at] = second["median_ms"]
                if not suspect_units(units, times, idx, trial)[at]:
                    measured[i] = second
                    replaced += 1
                    continue
            dropped_units[i] = measured.pop(i)  # transferred instead, like any unit not measured
            dropped += 1
        if len(measured) < MIN_UNITS:  # too few left to fit: kept, and said
            measured.update(dropped_units)
            notes.append(f"{dropped} unconfirmed unit(s) kept: without them fewer than "
                         f"{MIN_UNITS} would be left to fit")
            dropped = 0
        notes.append(f"{len(odd)} measured unit(s) lay far outside their family's ratio to the "
                     f"sources: {confirmed} confirmed by a second measurement, {replaced} "
                     f"replaced by it, {dropped} not used (transferred instead)")
        table.method["suspect_units"] = {"found": len(odd), "confirmed": confirmed,
                                         "replaced": replaced, "dropped": dropped,
                                         "keys": [units[i].key for i in odd][:50]}
        idx = np.array(sorted(measured))
        target = np.array([measured[i]["median_ms"] for i in idx])

    # transfer: the regressor chosen by the networks measured whole (each architecture's
    # resolutions one group), the sittings that agree pooled as for the network model
    index = {u.key: i for i, u in enumerate(units)}
    networks = [(np.array([index[u.key] for u in units_of(p.arch)]),
                 pooled([s["networks"][i] for s in sittings], outvote=True)["median_ms"],
                 architecture_group(p.arch.to_dict()))
                for i, p in enumerate(points)]
    model = fit_transfer(units, times, idx, target, req.seed, networks)
    base = sources[model.base]
    moved = transfer(units, times, model)
    for i, u in enumerate(units):
        if i in measured:
            table.units[u.key] = {**measured[i], "source": "measured"}
            continue
        ratio = moved[i] / times[model.base][i]
        entry = base.units[u.key]
        table.units[u.key] = {
            "median_ms": float(moved[i]),
            "min_ms": float(entry.get("min_ms", entry["median_ms"]) * ratio),
            "p90_ms": float(entry.get("p90_ms", entry["median_ms"]) * ratio),
            "source": "transferred",
            "expected_error_pct": round(model.expected_error_pct(family(u)), 2)}
    table.model = fit_network_model(table, points, sittings).to_dict()
    table.method["sittings"] = sittings
    table.adapted = {
        "sources": [_source_record(p, t) for p, t in zip(req.sources, sources, strict=True)],
        "method_name": METHOD_NAME, "base": req.sources[model.base].name,
        "regressor": model.kind, "measured_units": len(measured), "units": len(units),
        "transfer_cv": model.cv_summary, "budget_s": req.budget_s, "notes": notes,
        "network_points": len(points), "flags": [f for f in flags if "disagreed" in f]}
    table.reference = {"key": reference.key, "unit": {"kind": reference.kind,
                                                      "hw": reference.hw,
                                                      "params": list(reference.params)},
                       **guard.summary(), "samples": guard.samples}
    progress.phase("measuring sentinels", 1)
    table.sentinels = budget.run(lambda: measure_sentinels(
        sentinels, table, client, req.workdir, req.jobs, progress), "sentinels")
    table.adapted["measurement_s"] = round(budget.spent, 1)
    table.adapted["measurement_phases_s"] = {k: round(v, 1) for k, v in budget.phases.items()}
    if (over := over_budget_words(budget.spent, req.budget_s, budget.phases)) is not None:
        table.adapted["notes"].append(over)
    table.method["collection_s"] = {"convert": round(convert_s, 1),
                                    "measure": round(budget.spent, 1),
                                    "total": round(time.perf_counter() - began, 1),
                                    "units": len(units), "programs": len(programs)}
    table.save(req.table_path)
    return table


def _disagreeing(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[int]:
    """Networks whose two sittings' medians differ by more than the agreement bound."""
    return [i for i, (x, y) in enumerate(zip(a, b, strict=True))
            if abs(x["median_ms"] - y["median_ms"]) / min(x["median_ms"], y["median_ms"]) * 100
            > SITTING_AGREEMENT_PCT]
