"""Run an artifact with the device's runtime: LiteRT (``.tflite``) or ExecuTorch (``.pte``).

Light by design: numpy at import time, the runtime itself only when a runner is opened,
so the agent starts on a Pi without torch. Every runner takes the float32 NCHW batch that
:func:`edgepipe.preprocess.preprocess` makes and returns float32 outputs: layout changes
and int8 (de)quantization at the edges happen here, once, for every caller. An integer
tensor without quantization (scale 0, e.g. a uint8 input of raw 0-255 pixels) is fed the
integer values themselves: the manifest's preprocessing then makes 0-255 (range "0,255").
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import EdgepipeError, missing_extra

RUNTIME_FOR_SUFFIX = {".tflite": "litert", ".pte": "executorch"}

# The environment of a process that runs programs. ExecuTorch's Python bindings load
# libtorch, whose OpenMP workers (one per other core) copy large tensors in and out of a
# method in parallel and then spin between runs: a "1 thread" run of a program with a
# 16x112x112 input had 0.27 of a second core beside it in the agent's workers, a whole one in
# the demo's inference process. No runtime run here uses OpenMP (XNNPACK and LiteRT have
# their own thread pools): such processes get one OpenMP thread, none beside the runtime.
# Read by libgomp when it loads, so it is set before the process starts.
RUNNER_PROCESS_ENV = {"OMP_NUM_THREADS": "1"}


class Runner(Protocol):
    runtime: str

    def run(self, x: np.ndarray) -> list[np.ndarray]: ...

    def invoke(self) -> None: ...


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def installed_runtimes() -> dict[str, str]:
    """Runtimes importable here, with versions (what a device reports about itself)."""
    found = {}
    for runtime, candidates in (
            ("litert", (("ai-edge-litert", "ai_edge_litert"),
                        ("tflite-runtime", "tflite_runtime"))),
            ("executorch", (("executorch", "executorch"),))):
        for dist, module in candidates:
            if (v := _version(dist)) is not None and _importable(module):
                found[runtime] = f"{dist} {v}"
                break
    return found


def _quantize(x: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    """float → the tensor's integer type. Scale 0 marks an integer tensor without
    quantization (raw 0-255 pixels): the values are the integers themselves."""
    info = np.iinfo(dtype)
    q = np.round(x / scale + zero_point) if scale else np.rint(x)
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """The tensor's integer type → float32; without quantization (scale 0) the values as
    they are (class indices, raw scores), never all zeros."""
    if not scale:
        return y.astype(np.float32)
    return (y.astype(np.float32) - zero_point) * np.float32(scale)


def litert_interpreter(path: Path, threads: int = 1):  # -> Interpreter
    """A LiteRT interpreter (tensors not allocated yet), with a clear error for a bad file."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:  # tflite-runtime: no wheels for Python >= 3.12, kept for old Pi images
            from tflite_runtime.interpreter import Interpreter  # type: ignore
        except ImportError:
            raise missing_extra("the LiteRT runtime (ai-edge-litert)", "device") from None
    try:
        return Interpreter(model_path=str(path), num_threads=threads)
    except (ValueError, RuntimeError) as exc:
        raise EdgepipeError(f"LiteRT cannot load {Path(path).name}: {exc}") from None


@dataclass
class LiteRTRunner:
    """A ``.tflite`` on ai-edge-litert (or tflite-runtime on old images)."""

    path: Path
    threads: int = 1
    runtime: str = "litert"

    def __post_init__(self) -> None:
        self._interp = litert_interpreter(self.path, self.threads)
        try:
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise EdgepipeError(f"LiteRT cannot run {self.path.name}: {exc}") from None
        self._inputs = self._interp.get_input_details()
        self._outputs = self._interp.get_output_details()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self._inputs[0]["shape"])

    def _resized(self, x: np.ndarray) -> np.ndarray:
        """``x`` as the input takes it (NHWC where the file does), the interpreter resized to
        it first where the file leaves the input's dims free (``shape_signature`` -1:
        tensorflow/tensorflow#58622, a placeholder of [1, 1, 1, 3] for a free height and
        width). A shape that fits neither stays as given: the runtime says what is wrong."""
        detail = self._inputs[0]
        shape = tuple(int(d) for d in detail["shape"])
        signature = [int(d) for d in detail.get("shape_signature", shape)]
        candidates = [x] + ([x.transpose(0, 2, 3, 1)] if x.ndim == 4 else [])
        for y in candidates:
            if y.shape == shape:
                return y
        for y in candidates:
            if fits_signature(y.shape, signature):
                try:
                    self._interp.resize_tensor_input(detail["index"], list(y.shape),
                                                     strict=True)
                    self._interp.allocate_tensors()
                except (ValueError, RuntimeError) as exc:
                    raise EdgepipeError(f"LiteRT cannot resize {self.path.name}'s input to "
                                        f"{list(y.shape)}: {exc}") from None
                self._inputs = self._interp.get_input_details()
                self._outputs = self._interp.get_output_details()
                return y
        return x

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        x = self._resized(x)
        detail = self._inputs[0]
        if np.dtype(detail["dtype"]).kind in "iu":
            scale, zero = detail["quantization"]
            x = _quantize(x, scale, zero, detail["dtype"])
        self._interp.set_tensor(detail["index"], np.ascontiguousarray(x, dtype=detail["dtype"]))
        self._interp.invoke()
        outs = []
        for d in self._outputs:
            y = self._interp.get_tensor(d["index"])
            if np.dtype(d["dtype"]).kind in "iub":
                y = _dequantize(y, *d["quantization"])
            outs.append(y.astype(np.float32, copy=False))
        return outs

    def invoke(self) -> None:
        """Run on whatever input is set: the timed part of a benchmark."""
        self._interp.invoke()


@dataclass
class LiteRTForcedFP16Runner:
    """A ``.tflite`` on LiteRT's CompiledModel API with XNNPACK's ``FORCE_FP16`` flag: every
    float operator in fp16, natively where the CPU has fp16 arithmetic, emulated on x86 with
    AVX2 (fp32 arithmetic rounded to fp16 after each operation; not bit-exact, slower). What
    an fp16 artifact's numbers are on a device that computes fp16, seen from a host that does
    not; not what a device without fp16 runs (the Interpreter: fp32). Float inputs/outputs."""

    path: Path
    threads: int = 1
    runtime: str = "litert"

    def __post_init__(self) -> None:
        try:
            from ai_edge_litert.compiled_model import (
                CompiledModel,
                CpuOptions,
                HardwareAccelerator,
                Options,
            )
        except ImportError:
            raise missing_extra("ai-edge-litert ≥ 2.2 (its CompiledModel API)",
                                "device") from None
        force_fp16 = 0x4  # TFLITE_XNNPACK_DELEGATE_FLAG_FORCE_FP16
        try:
            self._model = CompiledModel.from_file(str(self.path), options=Options(
                HardwareAccelerator.CPU,
                cpu_options=CpuOptions(num_threads=self.threads, xnnpack_flags=force_fp16)))
        except (RuntimeError, ValueError) as exc:
            raise EdgepipeError(f"LiteRT cannot run {self.path.name} with fp16 forced "
                                f"(XNNPACK FORCE_FP16): {exc}") from None
        self._key = next(iter(self._model.get_signature_list()))
        self._in = list(self._model.get_input_tensor_details(self._key).values())
        self._out = list(self._model.get_output_tensor_details(self._key).values())
        if any(d["dtype"] != "float32" for d in self._in + self._out):
            raise EdgepipeError(f"{self.path.name}: fp16 is forced on float32 inputs and "
                                "outputs only")
        self._inputs = self._model.create_input_buffers(0)
        self._outputs = self._model.create_output_buffers(0)

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        shape = tuple(self._in[0]["shape"])
        if x.shape != shape and x.ndim == 4 and x.transpose(0, 2, 3, 1).shape == shape:
            x = x.transpose(0, 2, 3, 1)  # the artifact takes NHWC
        self._inputs[0].write(np.ascontiguousarray(x, dtype=np.float32))
        self.invoke()
        return [buf.read(int(np.prod(d["shape"])), np.float32).reshape(d["shape"])
                for buf, d in zip(self._outputs, self._out, strict=True)]

    def invoke(self) -> None:
        self._model.run_by_index(0, self._inputs, self._outputs)

    def close(self) -> None:
        """Release the model and its LiteRT environment now (LiteRT logs as it tears them
        down: inside a caller's log redirection, not at interpreter exit)."""
        environment = self._model.environment
        self._inputs, self._outputs = [], []
        self._model.close()
        environment.close()


def fits_signature(shape: tuple[int, ...] | list[int], signature: list[int]) -> bool:
    """Whether ``shape`` is one a tensor of ``signature`` takes (-1: any size there)."""
    return len(shape) == len(signature) and all(s == -1 or s == d
                                                for d, s in zip(shape, signature, strict=True))


@dataclass
class PteInput:
    """A tensor input of a program's ``forward`` as the program describes it."""

    dim_order: list[int]  # memory order: [0, 1, 2, 3] NCHW-contiguous, [0, 2, 3, 1] channels-last
    sizes: list[int]  # the sizes; for a dynamic input their upper bound
    dynamic: bool  # exported with dynamic shapes (shape_dynamism DYNAMIC_BOUND or UNBOUND)


def _unreadable(what: str, path: Path, exc: Exception) -> EdgepipeError:
    # a foreign or damaged file: say which and why, no traceback
    return EdgepipeError(f"cannot read {what} {Path(path).name} ({type(exc).__name__}: {exc}): "
                         "is it an ExecuTorch program written by executorch ≥ 1.0?")


def pte_forward_plan(path: Path, what: str = "the program"):  # -> (Program, ExecutionPlan)
    """An ExecuTorch program and its ``forward`` execution plan, read by ExecuTorch's own
    serializer (which imports torch): the plan's values, inputs, operators, delegates and
    chains; the program's delegate payloads (``backend_delegate_data``).
    ``what`` names what is being read in the error line ("the program", "the input layout
    of"). Raises :class:`EdgepipeError` where the package is missing, the file cannot be read
    or has no ``forward``."""
    import logging

    # torch logs a deprecation of its own at import (pytree enums) on stderr: not the user's
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    try:
        from executorch.exir._serialize._program import deserialize_pte_binary
    except ImportError:
        raise missing_extra("the ExecuTorch package", "executorch") from None
    try:
        program = deserialize_pte_binary(Path(path).read_bytes()).program
        return program, next(p for p in program.execution_plan if p.name == "forward")
    except StopIteration:
        raise EdgepipeError(f"{Path(path).name} has no forward method") from None
    except Exception as exc:
        raise _unreadable(what, path, exc) from None


class _Table:
    """A FlatBuffers table read by slot (a field's order in the schema; a union takes two,
    its type then its value), over the ``flatbuffers`` package's own reader."""

    def __init__(self, buf: bytearray, pos: int) -> None:
        from flatbuffers.table import Table

        self.t = Table(buf, pos)

    def _at(self, slot: int) -> int:
        return self.t.Offset(4 + 2 * slot)  # 0: absent (an older schema), the default

    def scalar(self, slot: int) -> int:
        from flatbuffers import number_types as n

        at = self._at(slot)
        return self.t.Get(n.Uint8Flags, self.t.Pos + at) if at else 0

    def ints(self, slot: int, size: int) -> list[int]:
        from flatbuffers import number_types as n

        at = self._at(slot)
        flags = {1: n.Uint8Flags, 4: n.Int32Flags, 8: n.Int64Flags}[size]
        return [int(v) for v in self.t.GetVectorAsNumpy(flags, at)] if at else []

    def tables(self, slot: int) -> list[_Table]:
        at = self._at(slot)
        if not at:
            return []
        first = self.t.Vector(at)
        return [self._wrap(self.t.Indirect(first + 4 * i)) for i in range(self.t.VectorLen(at))]

    def table(self, slot: int) -> _Table | None:
        at = self._at(slot)
        return self._wrap(self.t.Indirect(self.t.Pos + at)) if at else None

    def _wrap(self, pos: int) -> _Table:
        return _Table(self.t.Bytes, pos)

    def string(self, slot: int) -> str:
        at = self._at(slot)
        return self.t.String(self.t.Pos + at).decode() if at else ""


def pte_inputs(path: Path) -> list[PteInput]:
    """The tensor inputs of a program's ``forward``, read from the program itself: the
    runtime's method metadata gives neither the memory order (a program fed a tensor of
    another order runs without complaint on scrambled data) nor whether its sizes are fixed
    or an upper bound.

    Read from the program's FlatBuffer here (ExecuTorch's ``schema/program.fbs``: Program →
    execution_plan → values[inputs] → Tensor's sizes, dim_order, shape_dynamism), not by
    ExecuTorch's serializer, which imports ``executorch.exir`` (4 s, in every agent job's
    worker process). Raises :class:`EdgepipeError` for a file it cannot read."""
    try:
        buf = bytearray(Path(path).read_bytes())
        if buf[4:8] != b"ET12":
            raise ValueError(f"file identifier {bytes(buf[4:8])!r}, not ET12")
        program = _Table(buf, int.from_bytes(buf[0:4], "little"))
        # schema slots: Program.execution_plan 1; ExecutionPlan name 0, values 2, inputs 3;
        # EValue val_type 0 (5: Tensor, after the union's implicit NONE), val 1; Tensor
        # sizes 2, dim_order 3, shape_dynamism 8
        plan = next((p for p in program.tables(1) if p.string(0) == "forward"), None)
        if plan is None:
            raise EdgepipeError(f"{Path(path).name} has no forward method")
        values = plan.tables(2)
        inputs = []
        for index in plan.ints(3, 4):
            value = values[index]
            if value.scalar(0) != 5:
                continue  # not a tensor (a scalar input)
            tensor = value.table(1)
            inputs.append(PteInput(tensor.ints(3, 1), tensor.ints(2, 4),
                                   tensor.scalar(8) != 0))
        return inputs
    except EdgepipeError:
        raise
    except Exception as exc:
        raise _unreadable("the input layout of", path, exc) from None


def pte_dim_orders(path: Path) -> list[list[int]]:
    """The memory order of each tensor input of a program's ``forward`` (``[0, 1, 2, 3]``:
    NCHW-contiguous, ``[0, 2, 3, 1]``: channels-last): :func:`pte_inputs`."""
    return [i.dim_order for i in pte_inputs(path)]


# ExecuTorch's ScalarType codes of the float types a program may take (c10's numbering)
ET_HALF, ET_FLOAT = 5, 6


def executorch_inputs(x: np.ndarray, dim_orders: list[list[int]],
                      half: bool = False):  # -> list[torch.Tensor]
    """The float32 NCHW batch ``x`` laid out in the program's memory order (the tensor's
    shape stays NCHW; its strides follow ``dim_orders[0]``: ExecuTorch derives the dim order
    it checks from the strides). ``half``: the program takes float16 (an fp16 program: its
    XNNPACK partition starts at the input, without a cast the delegate cannot take); the
    values are rounded to float16 here, once, outside any timed run."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float16 if half else np.float32))
    order = dim_orders[0] if dim_orders else list(range(t.ndim))
    if len(order) == t.ndim and order != list(range(t.ndim)):
        inverse = sorted(range(len(order)), key=order.__getitem__)
        t = t.permute(*order).contiguous().permute(*inverse)
    return [t]


def executorch_bindings():
    """ExecuTorch's compiled Python bindings, ``executorch.extension.pybindings._C`` (what
    ``portable_lib`` and ``executorch.runtime`` wrap), imported after torch, which the
    extension links against.

    Imported directly because ``portable_lib`` first imports ``executorch.exir`` for a
    warning class, and exir parses the edge dialect's operator YAML: 6.0 s to import against
    1.8 s for torch and the extension (AMD EPYC, executorch 1.5.1), paid by each agent job's
    worker process (a collection's job of 6 units took 5.5 s, nearly all of it that import).

    Raises:
        EdgepipeError: executorch (or torch) is not installed, naming the extra.
    """
    try:
        import torch  # noqa: F401  (loads libtorch for the extension)
        from executorch.extension.pybindings import _C
    except ImportError:
        raise missing_extra("the ExecuTorch runtime", "executorch") from None
    return _C


# ExecuTorch's thread pool logs at info level from C++ on stderr as it starts and as it is
# reset: six lines the first time in a process ("[cpuinfo_utils.cpp:125] CPU info and manual
# query on # of cpus dont match.", the /sys files it looked for on an ARM board), one at each
# reset ("[threadpool.cpp:66] Resetting threadpool to 1 threads."). Nothing a user can act
# on, printed by every demo, evaluation and agent job: filtered out of fd 2, nothing else.
THREADPOOL_LOG = re.compile(rb"^\[(cpuinfo_utils|threadpool)\.cpp:\d+\] ")


@contextmanager
def native_stderr_without(pattern: re.Pattern[bytes]) -> Iterator[None]:
    """Hold file descriptor 2 while native code runs, then write back every line it got
    except those ``pattern`` matches (what another thread wrote meanwhile is kept, late).
    Where fd 2 cannot be duplicated, nothing is held."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = b"".join(line for line in held if not pattern.match(line))
            if kept:
                os.write(2, kept)


def reset_threadpool(bindings: Any, threads: int) -> None:
    """Size ExecuTorch's process-wide XNNPACK thread pool (``_unsafe_reset_threadpool``)
    without its C++ info lines on stderr (:data:`THREADPOOL_LOG`)."""
    with native_stderr_without(THREADPOOL_LOG):
        bindings._unsafe_reset_threadpool(threads)


@dataclass
class ExecuTorchRunner:
    """A ``.pte`` on the ExecuTorch runtime (its Python bindings need torch)."""

    path: Path
    threads: int = 1
    runtime: str = "executorch"

    def __post_init__(self) -> None:
        bindings = executorch_bindings()
        # XNNPACK's thread pool is process-wide: set it for this runner's measurements
        reset_threadpool(bindings, self.threads)
        try:  # as executorch.runtime.Runtime.load_program does, verifying the program
            self._program = bindings._load_program(
                str(self.path), program_verification=bindings.Verification.InternalConsistency)
            self._method = self._program.load_method("forward")
        except (RuntimeError, ValueError) as exc:
            raise EdgepipeError(f"ExecuTorch cannot load {self.path.name}: {exc}") from None
        self.dim_orders = pte_dim_orders(self.path)
        meta = self._method.method_meta()
        # an fp16 program takes and gives float16: converted here, so every caller feeds and
        # reads float32 whatever the precision (as int8 tensors are (de)quantized for LiteRT)
        self.half = meta.num_inputs() > 0 and meta.input_tensor_meta(0).dtype() == ET_HALF
        self._last: list = []

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        self._last = executorch_inputs(x, self.dim_orders, self.half)
        # outputs of a channels-last program come back channels-last: numpy keeps the strides
        return [np.ascontiguousarray(o.numpy(), dtype=np.float32)
                if o.dtype.is_floating_point else np.ascontiguousarray(o.numpy())
                for o in self._method(self._last)]

    def invoke(self) -> None:
        self._method(self._last)


def import_runtime(path: str | Path) -> None:
    """Import the runtime an artifact needs, so that loading it can be timed alone
    (ExecuTorch's bindings import torch: seconds, not model loading)."""
    suffix = Path(path).suffix
    if suffix == ".pte":
        try:
            executorch_bindings()
        except EdgepipeError:
            pass  # open_runner says which extra to install
        return
    module = {".tflite": "ai_edge_litert.interpreter"}.get(suffix)
    if module:
        try:
            importlib.import_module(module)
        except ImportError:
            pass  # open_runner says which extra to install


def open_runner(path: str | Path, threads: int = 1) -> Runner:
    """A runner for an artifact file, chosen by its suffix."""
    path = Path(path)
    runtime = RUNTIME_FOR_SUFFIX.get(path.suffix)
    if runtime is None:
        raise EdgepipeError(
            f"no runtime runs {path.name} here: use a .tflite or .pte artifact"
        )
    if not path.is_file():
        raise EdgepipeError(f"artifact {path} does not exist")
    return LiteRTRunner(path, threads) if runtime == "litert" else ExecuTorchRunner(path, threads)
