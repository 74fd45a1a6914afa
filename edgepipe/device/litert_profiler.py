"""LiteRT per-operator timing from Python, through the wheel's own ``libLiteRt.so``.

ai-edge-litert's Python API has no profiler, but the C library it ships (≥ 2.2) exports the
CompiledModel API with one: ``LiteRtCompiledModelGetProfiler``, ``LiteRtStartProfiler``,
``LiteRtGetProfilerEvents``, ``LiteRtGetProfileSummary``. Profiling is switched on through an
opaque runtime option (identifier ``runtime_options_string``, a TOML payload ``enable_profiling
= true`` the options own and free with libc's ``free``); the thread count through the
``xnnpack`` option the same way. This module drives that API with :mod:`ctypes` (no new
dependency on the device) and returns the events of N runs.

What comes out: one event per XNNPACK operator (type DELEGATE_PROFILED_OPERATOR_INVOKE, named by
XNNPACK: "Convolution (NHWC, F32) IGEMM"), and ops XNNPACK did not take as builtin-op events
(type OPERATOR_INVOKE, TFLite names, ``meta1`` = the node index), in execution order; XNNPACK
reports whole microseconds. Everything read is checked: a NULL profiler, no events, an
unknown library version or a struct that does not read back sensibly raise
:class:`PerOpUnavailable` with the reason, never made-up numbers.

Layouts (ai-edge-litert 2.3.0, x86-64 and aarch64 alike: LP64): ``LiteRtRankedTensorType``
is 72 bytes (element type, then a 68-byte layout: a word holding rank and has_strides, 8 int32
dimensions, 8 uint32 strides); ``ProfiledEventData`` 104 bytes (tag, type, start, elapsed,
memory at begin and end, two metadata words, source).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgepipeError

MIN_VERSION = (2, 2)  # ≤ 2.1 named the runtime option differently and took a C struct

# ProfiledEventData::EventType
DEFAULT_EVENT = 1
OPERATOR_INVOKE = 2
DELEGATE_OPERATOR_INVOKE = 4
DELEGATE_PROFILED_OPERATOR_INVOKE = 8
OP_EVENTS = (OPERATOR_INVOKE, DELEGATE_OPERATOR_INVOKE, DELEGATE_PROFILED_OPERATOR_INVOKE)

HW_CPU = 1
LOCK_READ, LOCK_WRITE = 0, 1
# LiteRtElementType -> numpy
ELEMENT_TYPES = {1: np.float32, 2: np.int32, 3: np.uint8, 9: np.int8, 7: np.int16,
                 4: np.int64, 10: np.float16, 6: np.bool_}


class PerOpUnavailable(EdgepipeError):
    """Why LiteRT gives no per-op table here (the job says so, and measures the rest): the
    message reads "per-op not available because <reason>"."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"per-op not available because {reason}")
        self.reason = reason


class Layout(ctypes.Structure):
    _fields_ = [("rank_bits", ctypes.c_uint32), ("dimensions", ctypes.c_int32 * 8),
                ("strides", ctypes.c_uint32 * 8)]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.dimensions[:self.rank_bits & 0x7F])


class RankedTensorType(ctypes.Structure):
    _fields_ = [("element_type", ctypes.c_int), ("layout", Layout)]


class EventData(ctypes.Structure):
    _fields_ = [("tag", ctypes.c_char_p), ("event_type", ctypes.c_int),
                ("start_us", ctypes.c_uint64), ("elapsed_us", ctypes.c_uint64),
                ("begin_mem", ctypes.c_size_t * 3), ("end_mem", ctypes.c_size_t * 3),
                ("meta1", ctypes.c_uint64), ("meta2", ctypes.c_uint64),
                ("source", ctypes.c_int)]


assert ctypes.sizeof(RankedTensorType) == 72 and ctypes.sizeof(EventData) == 104


def library_version() -> tuple[int, ...] | None:
    try:
        text = importlib.metadata.version("ai-edge-litert")
    except importlib.metadata.PackageNotFoundError:
        return None
    return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())


def library_path() -> Path:
    """``libLiteRt.so`` of the installed ai-edge-litert, or why it cannot be used."""
    version = library_version()
    if version is None:
        raise PerOpUnavailable("ai-edge-litert is not installed here "
                               "(tflite-runtime has no CompiledModel profiler)")
    if version[:2] < MIN_VERSION:
        raise PerOpUnavailable(
            f"ai-edge-litert {'.'.join(map(str, version))} is older than "
            f"{'.'.join(map(str, MIN_VERSION))}, whose libLiteRt.so first has the profiler "
            "option this reads; install ai-edge-litert>=2.2 on the device")
    import importlib.util

    spec = importlib.util.find_spec("ai_edge_litert")
    if spec is None or not spec.origin:
        raise PerOpUnavailable("ai_edge_litert cannot be imported")
    path = Path(spec.origin).with_name("libLiteRt.so")
    if not path.is_file():
        raise PerOpUnavailable(f"no libLiteRt.so in {path.parent}")
    return path


_LIB: ctypes.CDLL | None = None
P = ctypes.c_void_p
PP = ctypes.POINTER(ctypes.c_void_p)
SIZE = ctypes.c_size_t


def _library() -> ctypes.CDLL:
    """The library with the signatures this module calls (checked against the headers of
    ai-edge-litert 2.3; every call returns a status, 0 = OK)."""
    global _LIB
    if _LIB is not None:
        return _LIB
    try:
        lib = ctypes.CDLL(str(library_path()))
    except OSError as exc:
        raise PerOpUnavailable(f"libLiteRt.so does not load ({exc})") \
            from None
    signatures: dict[str, list[Any]] = {
        "LiteRtCreateEnvironment": [ctypes.c_int, P, PP],
        "LiteRtCreateModelFromFile": [P, ctypes.c_char_p, PP],
        "LiteRtCreateOptions": [PP],
        "LiteRtSetOptionsHardwareAccelerators": [P, ctypes.c_int],
        "LiteRtCreateOpaqueOptions": [ctypes.c_char_p, P, P, PP],
        "LiteRtAddOpaqueOptions": [P, P],
        "LiteRtCreateCompiledModel": [P, P, P, PP],
        "LiteRtCompiledModelGetProfiler": [P, PP],
        "LiteRtStartProfiler": [P],
        "LiteRtStopProfiler": [P],
        "LiteRtResetProfiler": [P],
        "LiteRtGetNumProfilerEvents": [P, ctypes.POINTER(ctypes.c_int)],
        "LiteRtGetProfilerEvents": [P, ctypes.c_int, ctypes.POINTER(EventData)],
        "LiteRtGetProfileSummary": [P, P, ctypes.POINTER(ctypes.c_char_p)],
        "LiteRtGetModelSignature": [P, SIZE, PP],
        "LiteRtGetNumSignatureInputs": [P, ctypes.POINTER(SIZE)],
        "LiteRtGetNumSignatureOutputs": [P, ctypes.POINTER(SIZE)],
        "LiteRtGetSignatureInputTensorByIndex": [P, SIZE, PP],
        "LiteRtGetSignatureOutputTensorByIndex": [P, SIZE, PP],
        "LiteRtGetRankedTensorType": [P, ctypes.POINTER(RankedTensorType)],
        "LiteRtGetCompiledModelInputBufferRequirements": [P, SIZE, SIZE, PP],
        "LiteRtGetCompiledModelOutputBufferRequirements": [P, SIZE, SIZE, PP],
        "LiteRtCreateManagedTensorBufferFromRequirements": [
            P, ctypes.POINTER(RankedTensorType), P, PP],
        "LiteRtGetTensorBufferPackedSize": [P, ctypes.POINTER(SIZE)],
        "LiteRtLockTensorBuffer": [P, PP, ctypes.c_int],
        "LiteRtUnlockTensorBuffer": [P],
        "LiteRtRunCompiledModel": [P, SIZE, SIZE, PP, SIZE, PP],
    }
    voids = {"LiteRtDestroyEnvironment", "LiteRtDestroyModel", "LiteRtDestroyOptions",
             "LiteRtDestroyCompiledModel", "LiteRtDestroyTensorBuffer"}
    try:
        for name, args in signatures.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, ctypes.c_int
        for name in voids:
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = [P], None
    except AttributeError as exc:
        raise PerOpUnavailable(f"libLiteRt.so lacks {exc.name}: another "
                               "LiteRT version than this reader knows") from None
    # (compiled model, signature, input, dims, rank): only for inputs of free sizes, which
    # a library without it does not profile
    resize = getattr(lib, "LiteRtCompiledModelResizeInputTensor", None)
    if resize is not None:
        resize.argtypes = [P, SIZE, SIZE, ctypes.POINTER(ctypes.c_int), SIZE]
        resize.restype = ctypes.c_int
    _LIB = lib
    return lib


_LIBC = ctypes.CDLL(None)
_LIBC.malloc.argtypes, _LIBC.malloc.restype = [ctypes.c_size_t], ctypes.c_void_p
_LIBC.free.argtypes, _LIBC.free.restype = [ctypes.c_void_p], None
_FREE = ctypes.cast(_LIBC.free, ctypes.c_void_p).value


def _owned_text(text: str) -> int:
    """A NUL-terminated copy in libc memory: the options take it and free it with free()."""
    data = text.encode() + b"\0"
    address = _LIBC.malloc(len(data))
    ctypes.memmove(address, data, len(data))
    return address


def _check(status: int, what: str) -> None:
    if status != 0:
        raise PerOpUnavailable(f"LiteRT {what} failed (status {status})")


@dataclass(frozen=True)
class Event:
    tag: str
    event_type: int
    elapsed_us: int
    meta1: int


@dataclass
class OpEvent:
    """One operator of the run, as the profiler names it."""

    position: int  # in execution order, from 0
    name: str
    delegated: bool  # XNNPACK's own kernel (else a builtin TFLite op)
    node: int | None  # the TFLite node index, where the runtime gives it (builtin ops)
    times_us: list[int] = field(default_factory=list)  # one per profiled run


@dataclass
class OpProfile:
    ops: list[OpEvent]
    invoke_us: list[float]  # the runtime's own Invoke event per run
    profiled_ms: list[float]  # wall time of each profiled run
    unprofiled_ms: list[float]  # the same runs with the profiler stopped
    summary: str  # LiteRT's profile summary (benchmark_model's text format)
    version: str

    def to_dict(self) -> dict[str, Any]:
        return {"available": True, "source": "litert-profiler", "runs": len(self.invoke_us),
                "library": f"ai-edge-litert {self.version}",
                "ops": [{"position": o.position, "name": o.name, "delegated": o.delegated,
                         "node": o.node, "times_us": o.times_us} for o in self.ops],
                "invoke_us": self.invoke_us, "profiled_ms": self.profiled_ms,
                "unprofiled_ms": self.unprofiled_ms, "summary": self.summary}


class _CompiledModel:
    """A .tflite compiled for the CPU with profiling on; freed in reverse order."""

    def __init__(self, path: Path, threads: int,
                 input_shape: tuple[int, ...] | None = None) -> None:
        """``input_shape``: the first input's shape where the file leaves its dims free (-1):
        the compiled model is resized to it before its buffers are made."""
        self.lib = _library()
        self.input_shape = input_shape
        lib = self.lib
        self.handles: list[tuple[str, int]] = []
        env, model, options, compiled = P(), P(), P(), P()
        _check(lib.LiteRtCreateEnvironment(0, None, ctypes.byref(env)), "environment")
        self.handles.append(("LiteRtDestroyEnvironment", env.value))
        _check(lib.LiteRtCreateModelFromFile(env, str(path).encode(), ctypes.byref(model)),
               f"loading {path.name}")
        self.handles.append(("LiteRtDestroyModel", model.value))
        _check(lib.LiteRtCreateOptions(ctypes.byref(options)), "options")
        self.handles.append(("LiteRtDestroyOptions", options.value))
        _check(lib.LiteRtSetOptionsHardwareAccelerators(options, HW_CPU), "CPU option")
        for identifier, toml in (("runtime_options_string", "enable_profiling = true\n"),
                                 ("xnnpack", f"num_threads = {threads}\n")):
            opaque = P()
            payload = _owned_text(toml)
            status = lib.LiteRtCreateOpaqueOptions(identifier.encode(), payload, _FREE,
                                                   ctypes.byref(opaque))
            if status != 0:
                _LIBC.free(payload)
                _check(status, f"option {identifier}")
            _check(lib.LiteRtAddOpaqueOptions(options, opaque), f"option {identifier}")
        _check(lib.LiteRtCreateCompiledModel(env, model, options, ctypes.byref(compiled)),
               "compiling the model")
        self.handles.append(("LiteRtDestroyCompiledModel", compiled.value))
        self.env, self.model, self.compiled = env, model, compiled
        profiler = P()
        _check(lib.LiteRtCompiledModelGetProfiler(compiled, ctypes.byref(profiler)),
               "getting the profiler")
        if not profiler.value:
            raise PerOpUnavailable("LiteRT compiled the model without a "
                                   "profiler (the runtime option was not understood)")
        self.profiler = profiler  # owned by the compiled model
        self._resize_free_input()
        self.inputs = self._buffers("Input")
        self.outputs = self._buffers("Output")

    def _signature_tensor_type(self, kind: str, index: int) -> RankedTensorType:
        lib = self.lib
        signature, tensor, tensor_type = P(), P(), RankedTensorType()
        _check(lib.LiteRtGetModelSignature(self.model, 0, ctypes.byref(signature)), "signature")
        _check(getattr(lib, f"LiteRtGetSignature{kind}TensorByIndex")(
            signature, index, ctypes.byref(tensor)), f"{kind.lower()} tensor")
        _check(lib.LiteRtGetRankedTensorType(tensor, ctypes.byref(tensor_type)),
               f"{kind.lower()} type")
        return tensor_type

    def _resize_free_input(self) -> None:
        """Resize the first input to ``input_shape`` where the file leaves its dims free (a
        tensor type of -1 dims: tensorflow/tensorflow#58622); nothing for a fixed input."""
        free = self._signature_tensor_type("Input", 0).layout.shape
        if -1 not in free:
            return
        resize = getattr(self.lib, "LiteRtCompiledModelResizeInputTensor", None)
        if self.input_shape is None or resize is None:
            raise PerOpUnavailable(f"the input's size is free ({list(free)}) and "
                                   + ("no size was given" if resize is None else
                                      "this libLiteRt.so cannot resize a compiled model"))
        dims = (ctypes.c_int * len(self.input_shape))(*self.input_shape)
        _check(resize(self.compiled, 0, 0, dims, len(self.input_shape)),
               f"resizing the input to {list(self.input_shape)}")

    def _buffers(self, kind: str) -> list[tuple[int, RankedTensorType, int]]:
        lib = self.lib
        signature, count = P(), SIZE()
        _check(lib.LiteRtGetModelSignature(self.model, 0, ctypes.byref(signature)), "signature")
        _check(getattr(lib, f"LiteRtGetNumSignature{kind}s")(signature, ctypes.byref(count)),
               f"{kind.lower()} count")
        found = []
        for i in range(count.value):
            tensor, tensor_type, requirements, buffer, size = (
                P(), RankedTensorType(), P(), P(), SIZE())
            _check(getattr(lib, f"LiteRtGetSignature{kind}TensorByIndex")(
                signature, i, ctypes.byref(tensor)), f"{kind.lower()} tensor")
            _check(lib.LiteRtGetRankedTensorType(tensor, ctypes.byref(tensor_type)),
                   f"{kind.lower()} type")
            if kind == "Input" and i == 0 and -1 in tensor_type.layout.shape \
                    and self.input_shape is not None:  # resized: the buffer has its size
                for axis, d in enumerate(self.input_shape):
                    tensor_type.layout.dimensions[axis] = d
            _check(getattr(lib, f"LiteRtGetCompiledModel{kind}BufferRequirements")(
                self.compiled, 0, i, ctypes.byref(requirements)), f"{kind.lower()} buffer")
            _check(lib.LiteRtCreateManagedTensorBufferFromRequirements(
                self.env, ctypes.byref(tensor_type), requirements, ctypes.byref(buffer)),
                f"{kind.lower()} buffer")
            self.handles.append(("LiteRtDestroyTensorBuffer", buffer.value))
            _check(lib.LiteRtGetTensorBufferPackedSize(buffer, ctypes.byref(size)),
                   f"{kind.lower()} size")
            found.append((buffer.value, tensor_type, size.value))
        return found

    def write_input(self, index: int, x: np.ndarray) -> None:
        buffer, tensor_type, size = self.inputs[index]
        dtype = ELEMENT_TYPES.get(tensor_type.element_type)
        shape = tensor_type.layout.shape
        if dtype is None:
            raise PerOpUnavailable(f"input element type "
                                   f"{tensor_type.element_type} is not one this reader knows")
        data = np.ascontiguousarray(x, dtype=dtype)
        if data.nbytes != size or (shape and data.size != int(np.prod(shape))):
            raise PerOpUnavailable(f"the input buffer holds {size} bytes "
                                   f"({shape}), the data {data.nbytes}")
        address = P()
        _check(self.lib.LiteRtLockTensorBuffer(buffer, ctypes.byref(address), LOCK_WRITE),
               "locking the input")
        try:
            ctypes.memmove(address.value, data.ctypes.data, data.nbytes)
        finally:
            self.lib.LiteRtUnlockTensorBuffer(buffer)

    def input_spec(self, index: int) -> tuple[tuple[int, ...], type]:
        _, tensor_type, _ = self.inputs[index]
        return tensor_type.layout.shape, ELEMENT_TYPES.get(tensor_type.element_type, np.float32)

    def run(self) -> None:
        ins = (ctypes.c_void_p * len(self.inputs))(*[b for b, _, _ in self.inputs])
        outs = (ctypes.c_void_p * len(self.outputs))(*[b for b, _, _ in self.outputs])
        _check(self.lib.LiteRtRunCompiledModel(self.compiled, 0, len(self.inputs), ins,
                                               len(self.outputs), outs), "running the model")

    def events(self) -> list[Event]:
        """The profiler's events, copied out (their tags live in the profiler's memory, which
        goes with the compiled model)."""
        count = ctypes.c_int()
        _check(self.lib.LiteRtGetNumProfilerEvents(self.profiler, ctypes.byref(count)),
               "counting events")
        if count.value <= 0:
            return []
        array = (EventData * count.value)()
        _check(self.lib.LiteRtGetProfilerEvents(self.profiler, count.value, array),
               "reading events")
        return [Event(e.tag.decode(errors="replace") if e.tag else "", e.event_type,
                      int(e.elapsed_us), int(e.meta1)) for e in array]

    def summary(self) -> str:
        text = ctypes.c_char_p()
        status = self.lib.LiteRtGetProfileSummary(self.profiler, self.compiled,
                                                  ctypes.byref(text))
        if status != 0 or not text.value:
            return ""
        value = text.value.decode(errors="replace")
        _LIBC.free(ctypes.cast(text, ctypes.c_void_p))
        return value

    def close(self) -> None:
        while self.handles:
            name, handle = self.handles.pop()
            getattr(self.lib, name)(handle)


def _split_runs(events: list[Event]) -> tuple[list[list[Event]], list[float]]:
    """Operator events per run, each run opened by its DEFAULT "Invoke" event (recorded when
    the run starts, its time filled in when it ends), and that event's time per run."""
    runs: list[list[Event]] = []
    invokes: list[float] = []
    for e in events:
        if e.event_type == DEFAULT_EVENT and e.tag == "Invoke":
            runs.append([])
            invokes.append(float(e.elapsed_us))
        elif e.event_type in OP_EVENTS and runs:
            runs[-1].append(e)
    return runs, invokes


def profile_ops(path: str | Path, x: np.ndarray | None, threads: int = 1, warmup: int = 3,
                runs: int = 10) -> OpProfile:
    """Per-op times of ``runs`` runs of a ``.tflite`` on LiteRT's CPU path (XNNPACK), after
    ``warmup``; the same runs timed once more with the profiler stopped, for its overhead.

    ``x``: the input (its dtype is converted to the model's), or ``None`` for seeded noise.
    Raises :class:`PerOpUnavailable` with the reason when anything does not read back.
    """
    model = _CompiledModel(Path(path), threads,
                           tuple(int(d) for d in x.shape) if x is not None else None)
    try:
        shape, dtype = model.input_spec(0)
        if x is None:
            rng = np.random.default_rng(0)
            x = (rng.standard_normal(shape) if np.issubdtype(dtype, np.floating)
                 else rng.integers(0, 127, shape)).astype(dtype)
        model.write_input(0, x)
        for i in range(1, len(model.inputs)):
            model.write_input(i, np.zeros(model.input_spec(i)[0], model.input_spec(i)[1]))
        for _ in range(warmup):
            model.run()
        unprofiled = []
        for _ in range(runs):
            start = time.perf_counter()
            model.run()
            unprofiled.append((time.perf_counter() - start) * 1000)
        lib = model.lib
        _check(lib.LiteRtResetProfiler(model.profiler), "resetting the profiler")
        _check(lib.LiteRtStartProfiler(model.profiler), "starting the profiler")
        profiled = []
        for _ in range(runs):
            start = time.perf_counter()
            model.run()
            profiled.append((time.perf_counter() - start) * 1000)
        _check(lib.LiteRtStopProfiler(model.profiler), "stopping the profiler")
        per_run, invokes = _split_runs(model.events())
        summary = model.summary()
    finally:
        model.close()
    if not per_run or not any(per_run):
        raise PerOpUnavailable("the LiteRT profiler recorded no operator "
                               "events for this model")
    lengths = {len(r) for r in per_run}
    if len(per_run) != runs or len(lengths) != 1:
        raise PerOpUnavailable(f"the profiler's events do not split into "
                               f"{runs} runs of one length (got {len(per_run)} runs of "
                               f"{sorted(lengths)} ops)")
    ops = []
    for i, e in enumerate(per_run[0]):
        delegated = e.event_type != OPERATOR_INVOKE
        ops.append(OpEvent(i, e.tag or "?", delegated, None if delegated else e.meta1))
    for run in per_run:
        for op, e in zip(ops, run, strict=True):
            op.times_us.append(e.elapsed_us)
    version = ".".join(map(str, library_version() or ()))
    return OpProfile(ops, invokes, profiled, unprofiled, summary, version)
