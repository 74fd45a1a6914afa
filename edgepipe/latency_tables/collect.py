"""``edgepipe lut collect``: measure every unit of a search space on a device.

1. Enumerate the distinct units the space needs (each block choice at each position and
   resolution, stems, heads) and group them into programs (one per unit shape for ExecuTorch,
   whose programs take any resolution; one per unit for LiteRT).
2. Convert the programs in parallel (:mod:`.programs`), plus a few whole networks.
3. Ship them to the agent and measure in batches: warm-up, then runs until the median is known
   to ±1 % (95 %), at most ``max_runs`` or a second. A fixed reference unit brackets every
   segment of 30 units: a segment measured while the device was slower is measured again, and
   the table is flagged when it never settles (:mod:`.drift`).
4. Fit the per-model overhead on the whole networks. The table is saved after every batch:
   a killed collection resumes where it stopped, losing nothing already measured.
5. Measure the sentinels (:mod:`.sentinels`): what every later check compares with.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import EdgepipeError
from ..host.client import AgentClient
from ..models.space import Architecture, SearchSpace
from .drift import DriftGuard
from .measure import (
    MeasureSettings,
    Progress,
    chunks,
    measure_items,
    measure_sitting,
    pooled,
    upload_programs,
)
from .model import NetworkModel
from .programs import (
    PROGRAM_INPUT,
    ProgramSpec,
    arch_program,
    convert_programs,
    is_converted,
    program_for,
    program_path,
    takes_dynamic_size,
    unit_programs,
)
from .sentinels import TableUse, measure_sentinels, sentinel_definitions
from .table import LatencyTable, Target, table_name
from .units import Unit, block_unit, head_unit, stem_unit, units_of

__all__ = ["CollectRequest", "MeasureSettings", "Progress", "collect", "recollect",
           "space_units", "unit_programs"]


def _halve(hw: int, times: int) -> int:
    for _ in range(times):
        hw = (hw - 1) // 2 + 1
    return hw


def space_units(space: SearchSpace) -> list[Unit]:
    """Every unit some architecture of the space contains, at every resolution."""
    found: dict[str, Unit] = {}
    for resolution in space.resolutions:
        for *_, reduction, block in space.block_slots():
            hw = _halve(resolution, reduction.bit_length() - 1)
            unit = block_unit(block, hw)
            found.setdefault(unit.key, unit)
        for seed in space.seeds:
            for width in space.width_mults:
                arch = space.seed_architecture(seed, resolution, width)
                for unit in (stem_unit(arch), head_unit(arch, units_of(arch)[-1].hw)):
                    found.setdefault(unit.key, unit)
    return list(found.values())


def calibration_architectures(space: SearchSpace, count: int) -> list[Architecture]:
    """The seeds plus random networks: what the network model is fitted on (each measured at
    every resolution of the space where its program takes any size)."""
    seeds = [space.seed_architecture(s, max(space.resolutions), max(space.width_mults))
             for s in space.seeds]
    seeds = [a for a in seeds if space.contains(a)]
    return (seeds + space.architectures(count, seed=10_000))[:max(count, len(seeds))]


@dataclass(frozen=True)
class NetworkPoint:
    """One whole network measured for the model: an architecture at one resolution and the
    program that runs it (shared by its resolutions where the runtime takes any size)."""

    name: str
    arch: Architecture
    spec: ProgramSpec


def network_points(archs: list[Architecture], space: SearchSpace, dynamic: bool
                   ) -> list[NetworkPoint]:
    """Every calibration network at every resolution of the space (one dynamic-size program
    each: three sizes for one conversion), or at its own resolution (one program each)."""
    points = []
    for arch in archs:
        if dynamic:
            spec = arch_program(arch, (min(space.resolutions), max(space.resolutions)))
            for r in sorted(space.resolutions):
                sized = replace(arch, resolution=r)
                points.append(NetworkPoint(_arch_name(sized), sized, spec))
        else:
            points.append(NetworkPoint(_arch_name(arch), arch, arch_program(arch)))
    return points


@dataclass
class CollectRequest:
    space: SearchSpace
    runtime: str
    precision: str
    threads: int
    table_path: Path
    workdir: Path
    jobs: int = 2
    calibration_models: int = 10
    settings: MeasureSettings = field(default_factory=MeasureSettings)
    sittings: int = 3  # of every calibration network: before, between and after the units


def check_runtime(client: AgentClient, runtime: str) -> dict[str, Any]:
    info = client.info()
    if runtime not in info.get("runtimes", {}):
        have = ", ".join(info.get("runtimes", {})) or "none"
        raise EdgepipeError(f"runtime {runtime} is not installed on the device (it has: {have})"
                            f": install it there or choose --runtime {have.split(',')[0]}")
    return info


def open_table(req: CollectRequest, info: dict[str, Any]) -> LatencyTable:
    """The table being collected: the saved one when it matches (resume), else a new one."""
    device = {k: info.get(k) for k in ("fingerprint", "identity", "identity_words",
                                       "cpu_model", "machine", "cores", "hostname")}
    if not device["identity"]:
        raise EdgepipeError("the device's agent reports no identity (an older edgepipe): "
                            "update edgepipe on the device, a table needs its identity")
    target = Target(device["fingerprint"], req.runtime, req.precision, req.threads)
    if req.table_path.is_file():
        table = LatencyTable.load(req.table_path)
        if table.target != target or SearchSpace.from_dict(table.space) != req.space:
            raise EdgepipeError(
                f"{req.table_path} holds a table for {table.describe()} and another space or "
                "settings: choose another --out, or delete it to start over")
        return table
    versions = info.get("runtimes", {})
    return LatencyTable(
        device=device, runtime=req.runtime, runtime_version=versions.get(req.runtime, "?"),
        precision=req.precision, threads=req.threads, space=req.space.to_dict(),
        method={**req.settings.__dict__, "programs": "dynamic height/width"
                if takes_dynamic_size(req.runtime) else "one per unit",
                "input": "seeded normal noise", "statistic": "median",
                "network_sittings": req.sittings, "calibration_models": req.calibration_models,
                "program_input": PROGRAM_INPUT[req.runtime]})


@dataclass
class Plan:
    """What a collection measures, its programs converted: the units, their programs, the
    whole networks of the model, and where the programs are."""

    units: list[Unit]
    programs: dict[str, ProgramSpec]
    points: list[NetworkPoint]
    arch_specs: list[ProgramSpec]
    folder: Path
    convert_s: float

    def paths(self, runtime: str) -> list[Path]:
        return [program_path(self.folder, s, runtime)
                for s in [*self.programs.values(), *self.arch_specs]]


def plan_collection(req: CollectRequest, progress: Progress) -> Plan:
    """Enumerate the units and networks and convert every program not converted yet."""
    dynamic = takes_dynamic_size(req.runtime)
    units = space_units(req.space)
    programs = unit_programs(units, dynamic)
    points = network_points(calibration_architectures(req.space, req.calibration_models),
                            req.space, dynamic)
    arch_specs = list({p.spec.key: p.spec for p in points}.values())
    folder = req.workdir / f"{req.runtime}-{req.precision}"
    todo_specs = [s for s in [*programs.values(), *arch_specs]
                  if not is_converted(folder, s, req.runtime)]
    progress.phase("converting programs", len(todo_specs))
    convert_started = time.perf_counter()
    convert_programs(todo_specs, req.runtime, req.precision, folder, req.jobs,
                     on_done=lambda _key: progress.advance())
    return Plan(units, programs, points, arch_specs, folder,
                time.perf_counter() - convert_started)


def collect(req: CollectRequest, client: AgentClient, progress: Progress | None = None
            ) -> LatencyTable:
    progress = progress or Progress()
    began = time.perf_counter()
    info = check_runtime(client, req.runtime)
    table = open_table(req, info)
    dynamic = takes_dynamic_size(req.runtime)
    plan = plan_collection(req, progress)
    units, programs, points, arch_specs, folder = (plan.units, plan.programs, plan.points,
                                                   plan.arch_specs, plan.folder)
    convert_s = plan.convert_s
    all_paths = plan.paths(req.runtime)
    progress.phase("uploading", len(all_paths))
    shas = upload_programs(client, all_paths, progress.advance)

    def item(unit: Unit) -> dict[str, Any]:
        spec = program_for(programs, unit)
        return {"artifact": shas[program_path(folder, spec, req.runtime)],
                "shape": unit.input_shape()}

    reference = reference_unit(units)
    guard = req.settings.guard(item(reference), table.reference)
    job = req.settings.job(req.threads)
    whole = req.settings.sitting_job(req.threads)
    flags = table.method.setdefault("device_state_flags", [])
    sittings = table.method.setdefault("sittings", [])  # per sitting: one record per point
    network_items = [{"artifact": shas[program_path(folder, p.spec, req.runtime)],
                      "shape": [1, 3, p.arch.resolution, p.arch.resolution]} for p in points]

    def save() -> None:  # after every job: a killed collection loses one job at most
        table.reference = _reference_record(reference, guard)
        table.save(req.table_path)

    def sitting(number: int) -> None:
        if len(sittings) >= number:
            return  # measured before a resume
        progress.phase(f"measuring whole networks (sitting {number} of {req.sittings})",
                       len(points))
        sittings.append({"time": time.time(), "networks": measure_sitting(
            client, guard, network_items, whole, flags)})
        progress.advance(len(points))
        save()

    measure_started = time.perf_counter()
    sitting(1)
    todo = sorted((u for u in units if u.key not in table.units),
                  key=lambda u: (u.program_key, u.hw))  # a program stays open across sizes
    segments = list(chunks(todo, min(req.settings.segment, req.settings.batch)))
    # the middle sittings fall between the unit jobs: the networks meet the host as it was
    # over the whole collection, not at one moment of it
    parts = max(1, req.sittings - 1)
    bounds = [round(len(segments) * i / parts) for i in range(parts + 1)]
    for part in range(parts):
        chunk = segments[bounds[part]:bounds[part + 1]]
        # one bar per part: a sitting between parts has its own
        progress.phase("measuring units" if parts == 1 else
                       f"measuring units (part {part + 1} of {parts})",
                       sum(len(seg) for seg in chunk))

        def keep(i: int, results: list[dict[str, float]], chunk=chunk) -> None:
            for unit, stats in zip(chunk[i], results, strict=True):
                table.units[unit.key] = stats
            progress.advance(len(results))

        guard.measure(lambda items: measure_items(client, items, job, flags),
                      [[item(u) for u in seg] for seg in chunk], keep, req.settings.batch, save)
        sitting(part + 2)
    redo_off_baseline(guard, table, todo, item, job, req.settings, client, flags, progress,
                      save)
    for number, record in enumerate(sittings):
        stale = [i for i, n in enumerate(record["networks"]) if accepted_early(guard, n)]
        if stale:
            progress.phase(f"measuring whole networks of sitting {number + 1} again (accepted "
                           "before the reference's baseline settled)", len(stale))
            again = measure_sitting(client, guard, [network_items[i] for i in stale], whole,
                                    flags)
            for i, result in zip(stale, again, strict=True):
                record["networks"][i] = {**result, "again": True}
            progress.advance(len(stale))
            save()
    table.model = fit_network_model(table, points, sittings).to_dict()
    table.reference = _reference_record(reference, guard)
    table.save(req.table_path)
    if not table.sentinels:
        definitions = sentinel_definitions(req.space, reference, dynamic)
        table.sentinels = measure_sentinels(definitions, table, client, req.workdir, req.jobs,
                                            progress)
    table.method["collection_s"] = {
        "convert": round(convert_s, 1), "measure": round(time.perf_counter() - measure_started,
                                                         1),
        "total": round(time.perf_counter() - began, 1), "units": len(units),
        "programs": len(programs), "network_programs": len(arch_specs),
        "network_points": len(points)}
    table.save(req.table_path)
    return table


def accepted_early(guard: DriftGuard, stats: dict[str, Any]) -> bool:
    """A result accepted against a baseline that had not settled yet: its references agreed
    with the baseline then and disagree with it now (a first job in a slow episode). A result
    left unsettled had its retries already; it stays as it is, flagged."""
    return guard.off_baseline(stats) and not stats.get("unsettled")


def redo_off_baseline(guard: DriftGuard, table: LatencyTable, units: list[Unit],
                      item: Any, job: dict[str, Any], settings: MeasureSettings,
                      client: AgentClient, flags: list[str], progress: Progress,
                      save: Any) -> None:
    """Measure once more the units of this collection (``units``) accepted before the
    reference's baseline settled (:func:`accepted_early`), in the collection's segments and
    batches."""
    redo = [u for u in units if u.key in table.units
            and accepted_early(guard, table.units[u.key])]
    if not redo:
        return
    progress.phase("measuring units again (accepted before the reference's baseline "
                   "settled)", len(redo))
    segments = list(chunks(redo, min(settings.segment, settings.batch)))

    def keep(i: int, results: list[dict[str, float]]) -> None:
        for unit, stats in zip(segments[i], results, strict=True):
            table.units[unit.key] = {**stats, "again": True}
        progress.advance(len(results))

    guard.measure(lambda items: measure_items(client, items, job, flags),
                  [[item(u) for u in seg] for seg in segments], keep, settings.batch, save)


def fit_network_model(table: LatencyTable, points: list[NetworkPoint],
                      sittings: list[dict[str, Any]]) -> NetworkModel:
    """The network model fitted on every point's runs over the sittings that agree (a sitting
    far from the point's median sitting is a disturbance: :func:`.measure.agreeing`; see
    :mod:`.model`)."""
    networks = []
    for i, point in enumerate(points):
        measured = pooled([s["networks"][i] for s in sittings], outvote=True)
        features = table.features(units_of(point.arch))
        networks.append({"name": point.name, "arch": point.arch.to_dict(),
                         "features": features.__dict__, **measured})
    return NetworkModel.fit(networks)


def recollect(stale: LatencyTable, target: Target, client: AgentClient, home: Path,
              workdir: Path, use: TableUse, progress: Progress | None = None) -> TableUse:
    """Collect a stale table's space again on the device, with the settings it was collected
    with, into ``home/tables/<name>``: built under a temporary name (resumable) and renamed
    over a stale table of the same name only once complete. The new table, as used."""
    space = SearchSpace.from_dict(stale.space)
    out = home / "tables" / table_name(target, space.family)
    partial = out.with_name(out.stem + ".collecting.json")
    table = collect(CollectRequest(space, target.runtime, target.precision, target.threads,
                                   partial, workdir,
                                   calibration_models=stale.method.get("calibration_models",
                                                                       10),
                                   settings=MeasureSettings.of_table(stale.method),
                                   sittings=stale.method.get("network_sittings", 3)),
                    client, progress)
    os.replace(partial, out)
    fresh = TableUse(out, table, use.policy, fresh=True)
    fresh.warnings = use.warnings + [f"collected again now into {out}"]
    return fresh


def _arch_name(arch: Architecture) -> str:
    return f"{arch.seed}@{arch.resolution}-{arch.digest()[:8]}"


def _reference_record(unit: Unit, guard: DriftGuard) -> dict[str, Any]:
    return {"key": unit.key, "unit": {"kind": unit.kind, "hw": unit.hw,
                                      "params": list(unit.params)},
            **guard.summary(), "samples": guard.samples}


def reference_unit(units: list[Unit]) -> Unit:
    """A fixed, mid-sized unit re-measured at the start of every batch (drift check)."""
    ordered = sorted(units, key=lambda u: (u.kind != "ir", u.key))
    return ordered[len(ordered) // 2]
