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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..device.client import AgentClient
from ..errors import EdgepipeError
from ..manifest import file_sha256
from ..models.space import Architecture, SearchSpace
from .drift import DriftGuard
from .programs import (
    ProgramSpec,
    convert_programs,
    is_converted,
    program_path,
    takes_dynamic_size,
)
from .table import LatencyTable, Overhead, Target, boundary_melements
from .units import Unit, block_unit, head_unit, stem_unit, units_of

MIN_DYNAMIC_SIZE = 4


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


def unit_programs(units: list[Unit], dynamic: bool) -> dict[str, ProgramSpec]:
    """Programs to convert, by program key; with ``dynamic`` one per unit shape, exported at
    the largest size it is measured at and accepting every smaller one."""
    groups: dict[str, list[Unit]] = {}
    for u in units:
        # torch.export specialises sizes 1 and 2 (broadcasts, an output of size 1): those
        # few tiny inputs get programs of their own
        shared = dynamic and u.hw >= MIN_DYNAMIC_SIZE
        groups.setdefault(u.program_key if shared else u.key, []).append(u)
    specs = {}
    for key, members in groups.items():
        biggest = max(members, key=lambda u: u.hw)
        size_range = (MIN_DYNAMIC_SIZE, biggest.hw) if len(members) > 1 else None
        specs[key] = ProgramSpec(key, "unit", (biggest, size_range),
                                 tuple(biggest.input_shape()))
    return specs


def program_for(programs: dict[str, ProgramSpec], unit: Unit) -> ProgramSpec:
    """The program that measures ``unit`` (its own, or its shape's dynamic one)."""
    if unit.key in programs:
        return programs[unit.key]
    return programs[unit.program_key]


def arch_program(arch: Architecture) -> ProgramSpec:
    return ProgramSpec(f"arch-{arch.digest()[:16]}", "arch", (arch,),
                       (1, 3, arch.resolution, arch.resolution))


def calibration_architectures(space: SearchSpace, count: int) -> list[Architecture]:
    """The seeds plus random networks: what the per-model overhead is fitted on."""
    seeds = [space.seed_architecture(s, max(space.resolutions), max(space.width_mults))
             for s in space.seeds]
    seeds = [a for a in seeds if space.contains(a)]
    return (seeds + space.architectures(count, seed=10_000))[:max(count, len(seeds))]


@dataclass
class MeasureSettings:
    warmup: int = 5
    min_runs: int = 15
    max_runs: int = 200
    stable_pct: float = 1.0  # stop once the median's 95 % CI is within ±1 %
    max_seconds: float = 1.0  # ... or after a second (the slowest units)
    batch: int = 240  # units per agent job (one worker process)
    segment: int = 30  # units between two reference measurements
    whole_model_runs: int = 60
    drift_limit_pct: float = 3.0
    retries: int = 3

    def job(self, threads: int) -> dict[str, Any]:
        return {"threads": threads, "warmup": self.warmup, "runs": self.max_runs,
                "min_runs": self.min_runs, "stable_pct": self.stable_pct,
                "max_seconds": self.max_seconds, "profile": False}

    def whole_job(self, threads: int) -> dict[str, Any]:
        return {**self.job(threads), "min_runs": self.whole_model_runs, "stable_pct": 0.5,
                "max_seconds": 3.0}

    def guard(self, reference_item: dict[str, Any], saved: dict[str, Any] | None = None
              ) -> DriftGuard:
        saved = saved or {}
        return DriftGuard(reference_item, self.drift_limit_pct, self.retries,
                          list(saved.get("samples", [])), saved.get("unsettled_segments", 0))


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


class Progress:
    """What a collection reports (the CLI draws bars with ETA)."""

    def phase(self, name: str, total: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...


def _check_runtime(client: AgentClient, runtime: str) -> dict[str, Any]:
    info = client.info()
    if runtime not in info.get("runtimes", {}):
        have = ", ".join(info.get("runtimes", {})) or "none"
        raise EdgepipeError(f"runtime {runtime} is not installed on the device (it has: {have})"
                            f": install it there or choose --runtime {have.split(',')[0]}")
    return info


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


def measure_items(client: AgentClient, items: list[dict[str, Any]], job: dict[str, Any]
                  ) -> list[dict[str, float]]:
    done = client.wait(client.submit(items=items, **job)["id"])
    return done["result"]["items"]


def _open_table(req: CollectRequest, info: dict[str, Any]) -> LatencyTable:
    """The table being collected: the saved one when it matches (resume), else a new one."""
    device = {k: info.get(k) for k in ("fingerprint", "cpu_model", "machine", "cores",
                                       "hostname")}
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
                "input": "seeded normal noise", "statistic": "median"})


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def collect(req: CollectRequest, client: AgentClient, progress: Progress | None = None
            ) -> LatencyTable:
    progress = progress or Progress()
    began = time.perf_counter()
    info = _check_runtime(client, req.runtime)
    table = _open_table(req, info)
    dynamic = takes_dynamic_size(req.runtime)
    units = space_units(req.space)
    programs = unit_programs(units, dynamic)
    calib = calibration_architectures(req.space, req.calibration_models)
    arch_specs = [arch_program(a) for a in calib]
    folder = req.workdir / f"{req.runtime}-{req.precision}"

    todo_specs = [s for s in [*programs.values(), *arch_specs]
                  if not is_converted(folder, s, req.runtime)]
    progress.phase("converting programs", len(todo_specs))
    convert_started = time.perf_counter()
    convert_programs(todo_specs, req.runtime, req.precision, folder, req.jobs,
                     on_done=lambda _key: progress.advance())
    convert_s = time.perf_counter() - convert_started

    all_paths = [program_path(folder, s, req.runtime)
                 for s in [*programs.values(), *arch_specs]]
    progress.phase("uploading", len(all_paths))
    shas = upload_programs(client, all_paths, progress.advance)

    def item(unit: Unit) -> dict[str, Any]:
        spec = program_for(programs, unit)
        return {"artifact": shas[program_path(folder, spec, req.runtime)],
                "shape": unit.input_shape()}

    reference = reference_unit(units)
    guard = req.settings.guard(item(reference), table.reference)
    todo = sorted((u for u in units if u.key not in table.units),
                  key=lambda u: (u.program_key, u.hw))  # a program stays open across sizes
    progress.phase("measuring units", len(todo))
    job = req.settings.job(req.threads)
    measure_started = time.perf_counter()
    segments = list(chunks(todo, min(req.settings.segment, req.settings.batch)))

    def keep(i: int, results: list[dict[str, float]]) -> None:
        for unit, stats in zip(segments[i], results, strict=True):
            table.units[unit.key] = stats
        progress.advance(len(results))

    def save() -> None:  # after every job: a killed collection loses one job at most
        table.reference = _reference_record(reference, guard)
        table.save(req.table_path)

    guard.measure(lambda items: measure_items(client, items, job),
                  [[item(u) for u in seg] for seg in segments], keep, req.settings.batch, save)

    if table.overhead is None:
        progress.phase("measuring whole networks", len(calib))
        whole = req.settings.whole_job(req.threads)
        segments = [[{"artifact": shas[program_path(folder, spec, req.runtime)],
                      "shape": list(spec.input_shape)}] for spec in arch_specs]
        # twice, apart, keeping the faster: a slowdown of the device only ever adds time
        measured = guard.measure(lambda items: measure_items(client, items, whole),
                                 segments + segments)
        table.overhead = fit_overhead([
            {"name": _arch_name(arch), "sum_ms": table.unit_sum_ms(arch),
             "boundary_m": boundary_melements(units_of(arch)),
             "measured_ms": min(first[0]["median_ms"], second[0]["median_ms"])}
            for arch, first, second in zip(calib, measured[:len(calib)],
                                           measured[len(calib):], strict=True)])
        table.reference = _reference_record(reference, guard)
        progress.advance(len(calib))
    table.method["collection_s"] = {
        "convert": round(convert_s, 1), "measure": round(time.perf_counter() - measure_started,
                                                         1),
        "total": round(time.perf_counter() - began, 1), "units": len(units),
        "programs": len(programs)}
    table.save(req.table_path)
    return table


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


def fit_overhead(models: list[dict[str, float]]) -> Overhead:
    """Relative least squares of measured on (Σ units, boundary elements, 1).

    A unit run alone is not the same unit inside a network: alone, it converts its input and
    output between the program's layout and the runtime's (inside a network tensors stay in
    the runtime's layout), it pays a call, and its weights are hot in cache. Fitted on 100
    networks here, the boundary term halved the share outside ±5 %. Relative: every network
    counts the same, whatever its size. Fewer than 5 networks: scale and offset (3 or 4) or
    the offset alone.
    """
    import numpy as np

    sums = np.array([m["sum_ms"] for m in models])
    boundary = np.array([m["boundary_m"] for m in models])
    measured = np.array([m["measured_ms"] for m in models])
    ones = np.ones_like(sums)
    if len(models) >= 5:
        design = np.stack([sums, boundary, ones], axis=1)
    elif len(models) >= 3:
        design = np.stack([sums, 0 * ones, ones], axis=1)
    else:
        return Overhead(1.0, float(np.mean(measured - sums)), models)
    coef, *_ = np.linalg.lstsq(design / measured[:, None], ones, rcond=None)
    scale, per_m, offset = (float(c) for c in coef)
    return Overhead(scale, offset, models, per_m)
