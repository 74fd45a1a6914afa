"""Micro-models on disk: units and whole networks converted by the same converters as any
model, in parallel worker processes, cached by content so a resumed run converts nothing twice.

Lowering, not timing, is what a table costs (an ExecuTorch lowering takes 1.5 s for one block
and 30-60 s for a whole network with its ETRecord). Three things keep it down: an ExecuTorch
program is exported with a dynamic height/width and measured at every resolution of the space
(one lowering instead of one per resolution; XNNPACK runs it at static speed, measured: within
1%); no ETRecord (only per-op profiling needs it); and two processes convert side by side.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgepipeError
from ..models.space import Architecture
from .units import Unit

SUFFIX = {"executorch": ".pte", "litert": ".tflite"}
FORMAT = {"executorch": "executorch", "litert": "tflite"}
# how the converters lay out a program's image input (a table records it: a table of programs
# laid out otherwise measured an input transpose the programs edgepipe makes do not run)
PROGRAM_INPUT = {"executorch": "channels-last", "litert": "NHWC"}
# tables written before the method recorded it: ExecuTorch programs then took NCHW-contiguous
PROGRAM_INPUT_BEFORE = {"executorch": "NCHW-contiguous", "litert": "NHWC"}


@dataclass(frozen=True)
class ProgramSpec:
    """One program to convert: a unit (at a size range) or a whole architecture."""

    key: str  # the unit's program key, or "arch-<digest>"
    kind: str  # "unit" | "arch"
    payload: tuple  # (Unit, (min, max) | None) or (Architecture,)
    input_shape: tuple[int, ...]

    def file_stem(self) -> str:
        # the input layout is part of the name: programs cached before channels-last inputs
        # are not picked up again
        return hashlib.sha256(f"{self.key}|channels-last".encode()).hexdigest()[:20]


# torch.export specialises sizes 1 and 2 (broadcasts, an output of size 1): units smaller than
# this get programs of their own
MIN_DYNAMIC_SIZE = 4


def unit_programs(units: list[Unit], dynamic: bool) -> dict[str, ProgramSpec]:
    """Programs to convert, by program key; with ``dynamic`` one per unit shape, exported at
    the largest size it is measured at and accepting every smaller one."""
    groups: dict[str, list[Unit]] = {}
    for u in units:
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


def takes_dynamic_size(runtime: str) -> bool:
    """Whether one program of this runtime runs at every input size (see the converters)."""
    from ..converters import CONVERTERS

    return CONVERTERS[FORMAT[runtime]].dynamic_size


def program_path(folder: Path, spec: ProgramSpec, runtime: str) -> Path:
    return folder / f"{spec.file_stem()}{SUFFIX[runtime]}"


def is_converted(folder: Path, spec: ProgramSpec, runtime: str) -> bool:
    """Converted = the manifest exists: it is written last, atomically."""
    path = program_path(folder, spec, runtime)
    return path.is_file() and path.with_name(path.name + ".json").is_file()


def _convert_one(spec: ProgramSpec, runtime: str, precision: str, folder: str) -> str:
    """In a worker process: build the module, convert it, write the manifest last."""
    import torch

    from ..converters import CONVERTERS
    from ..converters.convert import build_manifest
    from ..converters.source import source_from_module
    from ..manifest import save_manifest
    from ..models.space import build_architecture

    torch.set_num_threads(1)
    if spec.kind == "unit":
        unit, dynamic = spec.payload
        module = unit.module()
    else:
        module, dynamic = build_architecture(spec.payload[0]), None
    with torch.random.fork_rng():
        torch.manual_seed(0)
        src = source_from_module(spec.key, module, list(spec.input_shape), dynamic)
        calibration = [torch.randn(*spec.input_shape) for _ in range(4)] \
            if precision == "int8" else []
    converter = CONVERTERS[FORMAT[runtime]]
    path = program_path(Path(folder), spec, runtime)
    converted = converter.convert(src, precision, calibration, path, debug_info=False)
    save_manifest(build_manifest(src, converter, converted), path)
    return spec.key


def _quiet_worker() -> None:
    # converters print C++ logs and warnings per program: thousands of lines otherwise
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)


def convert_programs(specs: list[ProgramSpec], runtime: str, precision: str, folder: Path,
                     jobs: int, on_done: Callable[[str], None] | None = None) -> None:
    """Convert every spec not converted yet, ``jobs`` at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    todo = [s for s in specs if not is_converted(folder, s, runtime)]
    if not todo:
        return
    # spawn: a forked torch with threads running is not safe
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=context,
                             initializer=_quiet_worker) as pool:
        futures = {pool.submit(_convert_one, s, runtime, precision, str(folder)): s
                   for s in todo}
        for future in as_completed(futures):
            try:
                key = future.result()
            except Exception as exc:  # a converter's failure, with its own type
                for f in futures:
                    f.cancel()
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise EdgepipeError(f"converting {futures[future].key} for {runtime} "
                                    f"{precision} failed: {first[:300]}") from None
            if on_done:
                on_done(key)
