"""Micro-models on disk: units and whole networks converted by the same converters as any
model, in parallel worker processes, cached by content so a resumed run converts nothing twice.

Lowering, not timing, is what a table costs (an ExecuTorch lowering takes 1.5 s for one block
and 30-60 s for a whole network with its ETRecord). Three things keep it down: an ExecuTorch
program is exported with a dynamic height/width and measured at every resolution of the space
(one lowering instead of one per resolution; XNNPACK runs it at static speed, measured: within
1%); no ETRecord (only per-op profiling needs it); BatchNorm folded into its convolution
before export (XNNPACK would fold it anyway: the same delegate graph, lowered in 67-79 % of
the time, :func:`~edgepipe.models.batchnorm.fold_batchnorm`); and two processes convert side
by side.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
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


def arch_program(arch: Architecture, size_range: tuple[int, int] | None = None
                 ) -> ProgramSpec:
    """A whole network's program: at its own resolution, or (``size_range``) exported at the
    largest size of the range and taking any size in it. A range of one size (a space of one
    resolution) is a static program at that size: torch.export makes no dimension whose
    minimum equals its maximum."""
    if size_range is not None and size_range[0] == size_range[1]:
        arch, size_range = replace(arch, resolution=size_range[1]), None
    if size_range is None:
        return ProgramSpec(f"arch-{arch.digest()[:16]}", "arch", (arch, None),
                           (1, 3, arch.resolution, arch.resolution))
    low, high = size_range
    sized = replace(arch, resolution=high)
    return ProgramSpec(f"archdyn-{sized.digest()[:16]}-{low}-{high}", "arch",
                       (sized, (low, high)), (1, 3, high, high))


def takes_dynamic_size(runtime: str) -> bool:
    """Whether one program of this runtime runs at every input size (see the converters)."""
    from ..converters import CONVERTERS

    return CONVERTERS[FORMAT[runtime]].dynamic_size


def program_path(folder: Path, spec: ProgramSpec, runtime: str) -> Path:
    """Where ``spec``'s program is (or will be written).

    A unit's program is named by its key and the input sizes it takes (``<stem>-<min>-<max>``):
    units that share a key are grouped differently by a collection, an adaptation's subset and
    an evaluation's naive ops, so one name per key let a program exported for sizes up to 32
    be picked up for a unit measured at 48 (the runtime refused its input). A converted
    program of the same key whose sizes cover the spec's is used rather than converting again
    (a collection's programs serve the subsets measured after it)."""
    suffix = SUFFIX[runtime]
    if spec.kind != "unit":
        return folder / f"{spec.file_stem()}{suffix}"
    low, high = unit_sizes(spec)
    for (c_low, c_high), name in _converted_units(folder, suffix).get(spec.file_stem(), ()):
        if c_low <= low and high <= c_high:
            return folder / name
    return folder / f"{spec.file_stem()}-{low}-{high}{suffix}"


def unit_sizes(spec: ProgramSpec) -> tuple[int, int]:
    """The smallest and largest input height/width a unit's program takes."""
    _, size_range = spec.payload
    return tuple(size_range) if size_range else (spec.input_shape[-1], spec.input_shape[-1])


_listings: dict[tuple[str, str], tuple[int, dict[str, list]]] = {}


def _converted_units(folder: Path, suffix: str) -> dict[str, list]:
    """The folder's converted unit programs by stem: [((min, max), file name)], narrowest
    first; listed again only when the folder changed (its mtime: a file added or renamed)."""
    try:
        stamp = folder.stat().st_mtime_ns
    except FileNotFoundError:
        return {}
    cached = _listings.get((str(folder), suffix))
    if cached and cached[0] == stamp:
        return cached[1]
    # a folder changed within the last seconds may change again within its mtime's tick
    recent = time.time_ns() - stamp < 2_000_000_000
    names = set(os.listdir(folder))
    found: dict[str, list] = {}
    for name in names:
        parts = name[:-len(suffix)].split("-") if name.endswith(suffix) else []
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit() \
                and f"{name}.json" in names:  # the manifest is written last: converted
            found.setdefault(parts[0], []).append(((int(parts[1]), int(parts[2])), name))
    for programs in found.values():
        programs.sort(key=lambda p: p[0][1] - p[0][0])
    if not recent:
        _listings[(str(folder), suffix)] = (stamp, found)
    return found


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
    from ..models.batchnorm import fold_batchnorm
    from ..models.space import build_architecture

    torch.set_num_threads(1)
    if spec.kind == "unit":
        unit, dynamic = spec.payload
        module = unit.module()
    else:
        arch, *size_range = spec.payload  # (arch,) in programs cached before size ranges
        module, dynamic = build_architecture(arch), (size_range or [None])[0]
    # a table needs the program's time, not its BatchNorm nodes: XNNPACK folds them anyway
    # (the same delegate graph), and lowering skips tracing them (fold_batchnorm)
    module, _ = fold_batchnorm(module)
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
    memoise_cia_ops()


def memoise_cia_ops() -> bool:
    """Make torch.export's list of decomposable CompositeImplicitAutograd ops computed once
    per state of the operator registry, instead of on every decomposition.

    torch 2.14 walks every operator namespace and the C++ dispatcher's registrations each
    time it decomposes (six times a program): 0.5 s of a unit's ~2.5 s lowering. The list
    depends only on which ops are registered, so it is kept per (namespaces, op count): an op
    registered later makes a new entry. Checked: the same 6 unit programs lowered to the same
    bytes with and without it, 15-30 % faster. Returns whether it was installed (a torch
    without these internals converts as before)."""
    try:
        import torch
        import torch.export.decomp_utils as decomp_utils
        import torch.export.exported_program as exported_program
    except ImportError:
        return False
    original = getattr(exported_program, "_collect_all_valid_cia_ops", None)
    if original is None or getattr(original, "_edgepipe_memo", False) \
            or not hasattr(decomp_utils, "_collect_all_valid_cia_ops"):
        return False
    cache: dict[tuple, object] = {}

    def collect():  # type: ignore[no-untyped-def]
        key = (tuple(torch.ops._dir), len(torch._C._dispatch_get_all_op_names()))
        if key not in cache:
            cache[key] = original()
        return cache[key]

    collect._edgepipe_memo = True  # type: ignore[attr-defined]
    exported_program._collect_all_valid_cia_ops = collect
    decomp_utils._collect_all_valid_cia_ops = collect
    return True


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
