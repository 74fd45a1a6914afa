"""The lean ExecuTorch runner: ``native/et_runner.cpp`` built against the C++ runtime the
executorch wheel ships (``executorch/lib``, ``executorch/include``; no libtorch), and run as
a process per measurement (device side; standard library only).

Why: ExecuTorch's Python bindings link libtorch, 5.2 s and ~730 MB before a model loads; the
same program on the C++ runtime loads in milliseconds with a peak RSS of tens of MB, which is
what an app pays. The runner reads the program's input dim order from its metadata and lays
the input out itself; it times ``Module::execute`` with the inputs, as the bindings'
``Method.execute`` is timed, with the same warm-up, run count and time floor
(:func:`edgepipe.device.bench.measure_latency`).

Where it comes from: :func:`build_runner` compiles it on the device (a compiler and the
executorch wheel installed with ``--no-deps`` are all it needs), or a runner cross-built on
the host is copied there (``edgepipe device bootstrap``). :func:`find_runner` picks one up:
``EDGEPIPE_ET_RUNNER``, else the one built for this source and this executorch version (in
:func:`cache_folder`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgepipeError
from .runtimes import _version

SOURCE = Path(__file__).parent / "native" / "et_runner.cpp"
NAME = "et_runner"
# the libraries link with --no-as-needed: the backend and kernel libraries register
# themselves when loaded and have no symbol the runner calls
LIBRARIES = ("executorch_backend_xnnpack", "executorch_kernels_optimized",
             "executorch_kernels_quantized", "executorch_etdump", "executorch_threadpool",
             "executorch")
# e_machine of an ELF header -> platform.machine()
ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm", 3: "i386"}


def cache_folder() -> Path:
    """Where runners built here are kept, shared by every agent of this user (a runner's name
    says what it was built from: :func:`runner_key`)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgepipe" / "bin"


def executorch_root() -> Path | None:
    """The installed executorch package's folder, found without importing it (its
    ``__init__`` imports torch)."""
    try:
        spec = importlib.util.find_spec("executorch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def executorch_version() -> str:
    """The installed executorch's version ("?" where it is not installed)."""
    return _version("executorch") or "?"


def runner_key(machine: str | None = None, version: str | None = None) -> str:
    """What a built runner is for: this source, an executorch version, an architecture."""
    h = hashlib.sha256(SOURCE.read_bytes() if SOURCE.is_file() else b"no source")
    h.update(f"{version or executorch_version()}|{machine or platform.machine()}".encode())
    return h.hexdigest()[:12]


def compile_command(out: Path, root: Path, cxx: str = "g++") -> list[str]:
    """The compiler line (the definitions and include folders of the wheel's CMake config:
    ``lib/cmake/executorch/executorch-config.cmake``)."""
    lib = root / "lib"
    return [cxx, "-O2", "-std=c++17", "-DC10_USING_CUSTOM_GENERATED_MACROS",
            "-DET_EVENT_TRACER_ENABLED", "-DET_USE_THREADPOOL",
            f"-I{root / 'include'}",
            f"-I{root / 'include/executorch/runtime/core/portable_type/c10'}",
            str(SOURCE), "-o", str(out), f"-L{lib}", "-Wl,--no-as-needed",
            *(f"-l{name}" for name in LIBRARIES), "-Wl,--as-needed", f"-Wl,-rpath,{lib}"]


def build_runner(folder: Path, cxx: str | None = None) -> Path:
    """Compile the runner into ``folder`` (``et_runner-<key>``; written to a temporary name,
    then renamed). Raises :class:`EdgepipeError` without the wheel or a compiler, or with the
    compiler's last lines when it fails."""
    root = executorch_root()
    if root is None or not (root / "include").is_dir() or not (root / "lib").is_dir():
        raise EdgepipeError("the lean ExecuTorch runner needs the executorch wheel (its "
                            "include/ and lib/): pip install --no-deps executorch")
    if not SOURCE.is_file():
        raise EdgepipeError(f"the runner's source {SOURCE.name} is not installed with edgepipe "
                            "here: reinstall edgepipe")
    cxx = cxx or os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise EdgepipeError("no C++ compiler here to build the lean ExecuTorch runner "
                            "(apt install g++), or copy one cross-built on the host")
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{NAME}-{runner_key()}"
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".build-")) / NAME
    try:
        run = subprocess.run(compile_command(tmp, root, cxx), capture_output=True, text=True)
        if run.returncode:
            last = " | ".join(run.stderr.strip().splitlines()[-3:])
            raise EdgepipeError(f"building the lean ExecuTorch runner failed: {last[:400]}")
        tmp.replace(dest)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)
    return dest


def elf_machine(path: Path) -> str | None:
    """The architecture an ELF executable is for (None: not an ELF file)."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    order = "little" if head[5] == 1 else "big"
    code = int.from_bytes(head[18:20], order)
    return ELF_MACHINES.get(code, f"ELF machine {code}")


def check_runner(path: Path) -> Path:
    """``path`` if it is a runner this device can execute, else one line saying why."""
    here = platform.machine()
    if not path.exists():
        raise EdgepipeError(f"ExecuTorch runner {path} does not exist")
    if not path.is_file():
        raise EdgepipeError(f"ExecuTorch runner {path} is not a file (a folder?): give the "
                            "runner program itself")
    if not os.access(path, os.X_OK):
        raise EdgepipeError(f"ExecuTorch runner {path} is not executable (chmod +x it)")
    machine = elf_machine(path)
    if machine is None:
        raise EdgepipeError(f"ExecuTorch runner {path} is not an executable program (not ELF)")
    if machine != here:
        raise EdgepipeError(f"ExecuTorch runner {path} is built for {machine}; this device is "
                            f"{here}")
    return path


def find_runner(folder: Path | None) -> Path | None:
    """``EDGEPIPE_ET_RUNNER`` (checked: an error if it names an unusable file), else the
    runner built in ``folder`` for this source and executorch version, else None."""
    named = os.environ.get("EDGEPIPE_ET_RUNNER")
    if named:
        return check_runner(Path(named))
    if folder is None:
        return None
    built = folder / f"{NAME}-{runner_key()}"
    return built if built.is_file() and os.access(built, os.X_OK) else None


def runner_arguments(program: str, input_path: str, shape: tuple[int, ...], *,
                     threads: int = 1, warmup: int = 5, runs: int = 30,
                     min_seconds: float = 0.0, etdump: str | None = None,
                     profiled_runs: int | None = None, output: str | None = None) -> list[str]:
    """The runner's arguments (after its own path); paths as the device sees them."""
    args = [program, "--threads", str(threads), "--warmup", str(warmup), "--runs", str(runs),
            "--min-seconds", str(min_seconds), "--input", input_path,
            "--shape", ",".join(str(d) for d in shape)]
    if output:
        args += ["--output", output]
    if etdump is not None:
        args += ["--etdump", etdump, "--profiled-runs", str(profiled_runs or runs)]
    return args


def read_runner_output(code: int, stdout: str, stderr: str, program: str) -> dict[str, Any]:
    """The runner's JSON result (its last line of stdout). Raises :class:`EdgepipeError`
    quoting the runner's last lines when it failed or printed what cannot be read."""
    last = " | ".join((stderr.strip() or stdout.strip()).splitlines()[-3:])
    if code:
        raise EdgepipeError(f"the ExecuTorch runner failed on {program} (exit {code}): "
                            f"{last[:400] or 'no output'}")
    try:
        result = json.loads(stdout.strip().splitlines()[-1])
        if not isinstance(result.get("times_ms"), list) or not result["times_ms"]:
            raise ValueError("no times_ms")
    except (ValueError, IndexError, AttributeError) as exc:
        raise EdgepipeError(f"the ExecuTorch runner's output cannot be read ({exc}): "
                            f"{last[:400] or 'no output'}") from None
    return result


def run_runner(runner: Path, program: Path, x: np.ndarray, *, threads: int = 1,
               warmup: int = 5, runs: int = 30, min_seconds: float = 0.0,
               etdump: Path | None = None, profiled_runs: int | None = None,
               output: bool = False, timeout: float | None = None) -> dict[str, Any]:
    """Run ``program`` on the runner with input ``x`` (float32, NCHW); the runner's JSON:
    ``times_ms`` (per timed run), ``load_ms``, ``peak_rss_kb``, ``rss_before_load_kb``,
    ``inputs``/``outputs`` (sizes, dim order), ``etdump`` (file, profiled_ms) when asked, and
    ``output`` (the first output, float32) when ``output``. Raises :class:`EdgepipeError`
    quoting the runner's last lines when it fails or prints what cannot be read."""
    with tempfile.TemporaryDirectory(prefix="edgepipe-et-") as tmp:
        src, dst = Path(tmp) / "x.f32", Path(tmp) / "y.f32"
        np.ascontiguousarray(x, dtype=np.float32).tofile(src)
        cmd = [str(runner), *runner_arguments(
            str(program), str(src), x.shape, threads=threads, warmup=warmup, runs=runs,
            min_seconds=min_seconds, etdump=None if etdump is None else str(etdump),
            profiled_runs=profiled_runs, output=str(dst) if output else None)]
        # the device's own executorch libraries (a runner cross-built on the host has the
        # host's folder as its rpath); EDGEPIPE_RUNNER_PREFIX: an emulator in front of it
        env = dict(os.environ)
        root = executorch_root()
        if root is not None:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                p for p in (str(root / "lib"), env.get("LD_LIBRARY_PATH")) if p)
        prefix = shlex.split(os.environ.get("EDGEPIPE_RUNNER_PREFIX", ""))
        try:
            run = subprocess.run([*prefix, *cmd], capture_output=True, text=True,
                                 timeout=timeout, env=env)
        except OSError as exc:
            raise EdgepipeError(f"cannot start the ExecuTorch runner {runner}: "
                                f"{exc.strerror}") from None
        result = read_runner_output(run.returncode, run.stdout, run.stderr, program.name)
        if output:
            result["output"] = np.fromfile(dst, dtype=np.float32)
        return result
