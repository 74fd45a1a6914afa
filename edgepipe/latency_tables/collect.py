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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EdgepipeError
from ..host.client import AgentClient
from ..models.space import Architecture, SearchSpace
from .drift import DriftGuard
from .measure import MeasureSettings, Progress, chunks, measure_items, upload_programs
from .programs import (
    PROGRAM_INPUT,
    arch_program,
    convert_programs,
    is_converted,
    program_for,
    program_path,
    takes_dynamic_size,
    unit_programs,
)
from .sentinels import TableUse, measure_sentinels, sentinel_definitions
from .table import LatencyTable, Overhead, Target, boundary_melements, table_name
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
    """The seeds plus random networks: what the per-model overhead is fitted on."""
    seeds = [space.seed_architecture(s, max(space.resolutions), max(space.width_mults))
             for s in space.seeds]
    seeds = [a for a in seeds if space.contains(a)]
    return (seeds + space.architectures(count, seed=10_000))[:max(count, len(seeds))]


@dataclass
class CollectRequest:
    space: SearchSpace
    runtime: str
    precision: str
    threads: int
    table_path: Path
    workdir: Path
    jobs: int = 2
    calibration_models: int = 12
    settings: MeasureSettings = field(default_factory=MeasureSettings)


def _check_runtime(client: AgentClient, runtime: str) -> dict[str, Any]:
    info = client.info()
    if runtime not in info.get("runtimes", {}):
        have = ", ".join(info.get("runtimes", {})) or "none"
        raise EdgepipeError(f"runtime {runtime} is not installed on the device (it has: {have})"
                            f": install it there or choose --runtime {have.split(',')[0]}")
    return info


def _open_table(req: CollectRequest, info: dict[str, Any]) -> LatencyTable:
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
                "input": "seeded normal noise", "statistic": "min",
                "program_input": PROGRAM_INPUT[req.runtime]})


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

    flags = table.method.setdefault("device_state_flags", [])
    guard.measure(lambda items: measure_items(client, items, job, flags),
                  [[item(u) for u in seg] for seg in segments], keep, req.settings.batch, save)

    if table.overhead is None:
        progress.phase("measuring whole networks", len(calib))
        whole = req.settings.whole_job(req.threads)
        segments = [[{"artifact": shas[program_path(folder, spec, req.runtime)],
                      "shape": list(spec.input_shape)}] for spec in arch_specs]
        # twice, apart, keeping the faster: a slowdown of the device only ever adds time
        measured = guard.measure(lambda items: measure_items(client, items, whole, flags),
                                 segments + segments)
        table.overhead = fit_overhead([
            {"name": _arch_name(arch), "sum_ms": table.unit_sum_ms(arch),
             "boundary_m": boundary_melements(units_of(arch)),
             "measured_ms": min(first[0]["median_ms"], second[0]["median_ms"])}
            for arch, first, second in zip(calib, measured[:len(calib)],
                                           measured[len(calib):], strict=True)])
        table.reference = _reference_record(reference, guard)
        progress.advance(len(calib))
        table.save(req.table_path)
    if not table.sentinels:
        table.sentinels = measure_sentinels(sentinel_definitions(req.space, reference), table,
                                            client, req.workdir, req.jobs, progress)
    table.method["collection_s"] = {
        "convert": round(convert_s, 1), "measure": round(time.perf_counter() - measure_started,
                                                         1),
        "total": round(time.perf_counter() - began, 1), "units": len(units),
        "programs": len(programs)}
    table.save(req.table_path)
    return table


def recollect(stale: LatencyTable, target: Target, client: AgentClient, home: Path,
              workdir: Path, use: TableUse, progress: Progress | None = None) -> TableUse:
    """Collect a stale table's space again on the device, with the settings it was collected
    with, into ``home/tables/<name>``: built under a temporary name (resumable) and renamed
    over a stale table of the same name only once complete. The new table, as used."""
    space = SearchSpace.from_dict(stale.space)
    out = home / "tables" / table_name(target)
    partial = out.with_name(out.stem + ".collecting.json")
    table = collect(CollectRequest(space, target.runtime, target.precision, target.threads,
                                   partial, workdir,
                                   settings=MeasureSettings.of_table(stale.method)),
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


def fit_overhead(models: list[dict[str, float]]) -> Overhead:
    """Relative least squares of measured on (Σ units, 1), or (Σ units, boundary elements, 1)
    where that predicts the calibration networks better, left out one at a time.

    A unit run alone is not the same unit inside a network: alone, it converts its input and
    output between the program's layout and the runtime's (inside a network tensors stay in
    the runtime's layout), it pays a call, and its weights are hot in cache. The boundary term
    halved the share of networks outside ±5 % on one host (AVX2) and did nothing on another
    (AVX-512), where a fourth parameter fitted on a dozen noisy networks only added error:
    leave-one-out error decides. Relative: every network counts the same, whatever its size.
    Fewer than 3 networks: the offset alone.
    """
    import numpy as np

    sums = np.array([m["sum_ms"] for m in models])
    boundary = np.array([m["boundary_m"] for m in models])
    measured = np.array([m["measured_ms"] for m in models])
    ones = np.ones_like(sums)
    if len(models) < 3:
        return Overhead(1.0, float(np.mean(measured - sums)), models)

    def solve(design: np.ndarray, keep: np.ndarray) -> np.ndarray:
        coef, *_ = np.linalg.lstsq(design[keep] / measured[keep, None], ones[keep], rcond=None)
        return coef

    def loo_rmse(design: np.ndarray) -> float:
        errors = []
        for i in range(len(models)):
            keep = np.arange(len(models)) != i
            errors.append((design[i] @ solve(design, keep) - measured[i]) / measured[i])
        return float(np.sqrt(np.mean(np.square(errors))))

    designs = [np.stack([sums, 0 * ones, ones], axis=1)]
    if len(models) >= 5:
        designs.append(np.stack([sums, boundary, ones], axis=1))
    design = min(designs, key=loo_rmse)
    scale, per_m, offset = (float(c) for c in solve(design, np.ones(len(models), bool)))
    return Overhead(scale, offset, models, per_m)
