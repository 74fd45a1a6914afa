"""``lut collect --device a,b,…``: one table measured on several identical devices at once.

The devices must share one fingerprint (the same CPU, clocks, memory and ISA: what a table is
valid for), else they are refused before any work. Programs are converted once on the host and
uploaded to each device; the work (the whole networks of each sitting, and the units in jobs
of a few segments) goes into one queue that every device's thread takes from, each job
bracketed by that device's own reference unit (:mod:`.drift`) as on one device. Segments are
cut to at most a third of each device's share of the units (a small space's 32 units in one
segment of 30 would leave every device but one idle).

One scale: identical boards still differ by a few per cent (heat, a neighbour, a slower
card). The first device to measure its reference unit is the table's scale device
(``method["scale_device"]``); every time a device measures is multiplied by the scale
device's reference-unit baseline over its own, both at that moment
(``method["scale_reference_ms"]``: the scale device's baseline, kept for a resumed
collection whose scale device is not among its devices).

A device that stops answering mid-job loses that job only: the job goes back to the queue for
the others, and everything finished is in the table already (it is saved after every job). A
collection left with no device stops, its table resumable like any.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..errors import EdgepipeError
from ..host.client import AgentClient
from .collect import (
    CollectRequest,
    _reference_record,
    check_runtime,
    fit_network_model,
    open_table,
    plan_collection,
    reference_unit,
)
from .drift import DriftGuard
from .measure import Progress, chunks, measure_items, sitting_record, upload_programs
from .programs import program_for, program_path, takes_dynamic_size
from .sentinels import measure_sentinels, sentinel_definitions
from .table import LatencyTable


def same_kind(infos: dict[str, dict[str, Any]]) -> None:
    """Refuse devices of different fingerprints in one line, naming them."""
    prints = {name: info.get("fingerprint") for name, info in infos.items()}
    if len(set(prints.values())) > 1:
        said = "; ".join(f"{name}: {infos[name].get('identity_words') or '?'} (fingerprint "
                         f"{fp})" for name, fp in prints.items())
        raise EdgepipeError(f"one table is for one kind of device, and these differ: {said}: "
                            "collect a table on each kind separately")


def scaled(stats: dict[str, Any], factor: float) -> dict[str, Any]:
    """Times of a device brought to the table's scale (every *_ms, the raw runs)."""
    out = dict(stats)
    for key, value in stats.items():
        if key.endswith("_ms") and isinstance(value, (int, float)):
            out[key] = value * factor
        elif key in ("raw_ms", "passes_ms", "sitting_medians_ms") and isinstance(value, list):
            out[key] = [v * factor for v in value]
    return out


@dataclass
class Work:
    kind: str  # "units" | "sitting"
    segments: list[list[Any]]  # units: segments of units; sitting: [[point index, …]]
    sitting: int = 0


class Lab:
    """The shared state of one collection on several devices (one lock for all of it)."""

    def __init__(self, req: CollectRequest, table: LatencyTable, progress: Progress) -> None:
        self.req, self.table, self.progress = req, table, progress
        self.lock = threading.Lock()
        self.queue: deque[Work] = deque()
        self.guards: dict[str, DriftGuard] = {}
        self.pending_sittings: dict[int, list[dict[str, Any] | None]] = {}
        self.dropped: dict[str, str] = {}
        self.per_device: dict[str, int] = {}
        self.reference: Any = None  # the reference unit (a Unit)

    def scale(self, name: str) -> float:
        """What this device's times are multiplied by: the scale device's reference-unit
        baseline over this device's, both as they stand now. Both baselines settle as their
        references accumulate (:class:`.drift.DriftGuard`); a scale frozen at the first
        device's first reference put a two-device table's units 13 % below a one-device
        table's of the same host (scales 0.87 and 0.88, 2026-12-05)."""
        own = self.guards[name].baseline_ms
        device = self.table.method.get("scale_device")
        if device is None and own is not None:
            self.table.method["scale_device"] = device = name
        if device in self.guards and self.guards[device].baseline_ms:
            self.table.method["scale_reference_ms"] = self.guards[device].baseline_ms
        reference = self.table.method.get("scale_reference_ms")  # a resumed table's device
        return reference / own if reference and own else 1.0

    def save(self, primary: str) -> None:
        self.table.reference = _reference_record(self.reference, self.guards[primary])
        self.table.save(self.req.table_path)


def collect_several(req: CollectRequest, clients: dict[str, AgentClient],
                    progress: Progress | None = None) -> LatencyTable:
    """The table of ``req`` measured on every device of ``clients`` (name → client) at once;
    see the module doc. One device works as :func:`.collect.collect` does, but through
    this queue."""
    progress = progress or Progress()
    began = time.perf_counter()
    infos = {name: check_runtime(c, req.runtime) for name, c in clients.items()}
    same_kind(infos)
    names = list(clients)
    table = open_table(req, infos[names[0]])
    table.method["devices"] = [{"name": n, "hostname": infos[n].get("hostname")} for n in names]
    plan = plan_collection(req, progress)
    paths = plan.paths(req.runtime)
    progress.phase(f"uploading to {len(clients)} devices", len(paths) * len(clients))
    shas: dict[Any, str] = {}
    for client in clients.values():  # the same files: the same sha256 on every device
        shas = upload_programs(client, paths, progress.advance)

    def item(unit: Any) -> dict[str, Any]:
        spec = program_for(plan.programs, unit)
        return {"artifact": shas[program_path(plan.folder, spec, req.runtime)],
                "shape": unit.input_shape()}

    lab = Lab(req, table, progress)
    lab.reference = reference_unit(plan.units)
    ref_item = item(lab.reference)
    for i, name in enumerate(names):  # the first device keeps the saved references
        lab.guards[name] = req.settings.guard(ref_item, table.reference if i == 0 else None)
    flags = table.method.setdefault("device_state_flags", [])
    sittings = table.method.setdefault("sittings", [])
    network_items = [{"artifact": shas[program_path(plan.folder, p.spec, req.runtime)],
                      "shape": [1, 3, p.arch.resolution, p.arch.resolution]}
                     for p in plan.points]
    whole = req.settings.sitting_job(req.threads)
    job = req.settings.job(req.threads)

    # the queue: sitting 1, units, sitting 2, units, …, sitting N (as on one device)
    todo = sorted((u for u in plan.units if u.key not in table.units),
                  key=lambda u: (u.program_key, u.hw))
    size = min(req.settings.segment, req.settings.batch)
    if len(names) > 1:  # segments small enough that every device gets units to measure
        size = max(1, min(size, math.ceil(len(todo) / (3 * len(names)))))
    segments = list(chunks(todo, size))
    per_job = max(1, min(req.settings.batch // size,
                         math.ceil(len(segments) / (3 * len(names)))))
    parts = max(1, req.sittings - 1)
    bounds = [round(len(segments) * i / parts) for i in range(parts + 1)]
    split = max(1, math.ceil(len(plan.points) / len(names)))

    def add_sitting(number: int) -> None:
        if len(sittings) >= number:
            return  # measured before a resume
        lab.pending_sittings[number] = [None] * len(plan.points)
        for part in chunks(list(range(len(plan.points))), split):
            lab.queue.append(Work("sitting", [part], number))

    add_sitting(1)
    for part in range(parts):
        for jobs in chunks(segments[bounds[part]:bounds[part + 1]], per_job):
            lab.queue.append(Work("units", jobs))
        add_sitting(part + 2)
    progress.phase(f"measuring on {len(names)} devices", len(todo) + len(plan.points) * max(
        0, req.sittings - len(sittings)))
    measure_started = time.perf_counter()

    def flush_sittings() -> None:  # complete sittings, in order
        while (nxt := len(sittings) + 1) in lab.pending_sittings and \
                None not in lab.pending_sittings[nxt]:
            sittings.append({"time": time.time(),
                             "networks": lab.pending_sittings.pop(nxt)})

    def run_device(name: str) -> None:
        client, guard = clients[name], lab.guards[name]

        def measure(batch: list[dict[str, Any]], extra: dict[str, Any]) -> list[dict]:
            return measure_items(client, batch, {**extra}, flags)

        try:
            guard.measure(lambda items: measure(items, job), [[]])  # its baseline first
            with lab.lock:
                lab.scale(name)
            while True:
                with lab.lock:
                    if not lab.queue:
                        return
                    work = lab.queue.popleft()
                done: set[int] = set()
                try:
                    if work.kind == "sitting":
                        indices = work.segments[0]
                        results = guard.measure(
                            lambda items: measure(items, {**whole, "raw": True}),
                            [[network_items[i]] for i in indices], per_job=len(indices))
                        with lab.lock:
                            factor = lab.scale(name)
                            for i, r in zip(indices, results, strict=True):
                                lab.pending_sittings[work.sitting][i] = {
                                    **sitting_record(scaled(r[0], factor)), "device": name}
                            flush_sittings()
                            progress.advance(len(indices))
                            lab.save(names[0])
                    else:
                        def keep(i: int, results: list[dict[str, float]],
                                 work: Work = work, done: set[int] = done) -> None:
                            with lab.lock:
                                factor = lab.scale(name)
                                for unit, stats in zip(work.segments[i], results, strict=True):
                                    table.units[unit.key] = {**scaled(stats, factor),
                                                             "device": name,
                                                             "scale": round(factor, 5)}
                                done.add(i)
                                lab.per_device[name] = lab.per_device.get(name, 0) + \
                                    len(results)
                                progress.advance(len(results))

                        def saved() -> None:
                            with lab.lock:
                                lab.save(names[0])

                        guard.measure(lambda items: measure(items, job),
                                      [[item(u) for u in seg] for seg in work.segments], keep,
                                      req.settings.batch, saved)
                except EdgepipeError:
                    with lab.lock:  # what it had not finished goes to the others
                        left = [seg for i, seg in enumerate(work.segments) if i not in done]
                        if left:
                            lab.queue.appendleft(Work(work.kind, left, work.sitting))
                    raise
        except EdgepipeError as exc:
            with lab.lock:
                lab.dropped[name] = str(exc)

    threads = [threading.Thread(target=run_device, args=(n,), name=f"collect-{n}",
                                daemon=True) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    alive = [n for n in names if n not in lab.dropped]
    table.method["dropped_devices"] = lab.dropped
    table.method["units_per_device"] = lab.per_device
    if lab.queue or not alive:
        lab.save(names[0])
        said = "; ".join(f"{n}: {why}" for n, why in lab.dropped.items())
        raise EdgepipeError(f"every device dropped out ({said}): the table so far is saved in "
                            f"{req.table_path}; run the same command again to resume")
    table.model = fit_network_model(table, plan.points, sittings).to_dict()
    lab.save(names[0])
    if not table.sentinels:  # on one device, brought to the table's scale
        on = alive[0]
        definitions = sentinel_definitions(req.space, lab.reference,
                                           takes_dynamic_size(req.runtime))
        rows = measure_sentinels(definitions, table, clients[on], req.workdir, req.jobs,
                                 progress)
        factor = lab.scale(on)
        table.sentinels = [{**scaled(r, factor), "device": on} for r in rows]
    table.method["collection_s"] = {
        "convert": round(plan.convert_s, 1),
        "measure": round(time.perf_counter() - measure_started, 1),
        "total": round(time.perf_counter() - began, 1), "units": len(plan.units),
        "programs": len(plan.programs), "network_programs": len(plan.arch_specs),
        "network_points": len(plan.points), "devices": len(names)}
    table.method["device_scales"] = {n: round(lab.scale(n), 5) for n in names
                                     if lab.guards[n].baseline_ms}
    table.method["device_reference_ms"] = {n: lab.guards[n].baseline_ms for n in names}
    lab.save(names[0])
    return table


def spread_words(table: LatencyTable) -> str:
    """How far apart the devices' reference units were, in words."""
    refs = {n: v for n, v in (table.method.get("device_reference_ms") or {}).items() if v}
    if len(refs) < 2:
        return ""
    lo, hi = min(refs.values()), max(refs.values())
    return (f"reference unit {', '.join(f'{n} {v:.3f} ms' for n, v in refs.items())} "
            f"(spread {(hi - lo) / statistics.median(refs.values()) * 100:.1f} %)")
