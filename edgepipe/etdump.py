"""The kernel events of an ExecuTorch ETDump, each op once (host side: ``executorch.devtools``
is imported when called, never on the device).

ExecuTorch's runtime logs an op it runs on its own kernels (outside a delegate) twice, nested:
``OPERATOR_CALL`` around the kernel's own ``native_call_<op>.out`` (a portable program of 18
ops gives 36 rows whose medians add up to ~2× the whole run). The kernel's event is kept (it
names the op); the wrapper adds only the dispatch (~0.5 µs) and is dropped wherever kernel
events exist. Whole-run and delegate-call events are aggregates, not ops.
"""

from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import EdgepipeError, missing_extra

AGGREGATE_EVENTS = {"Method::execute", "DELEGATE_CALL", "Method::init", "Program::load_method"}
WRAPPER_EVENT = "OPERATOR_CALL"
KERNEL_PREFIX = "native_call_"


@dataclass
class KernelEvent:
    """One op of the program as the ETDump timed it, over every profiled run (ms)."""

    name: str  # XNNPACK's kernel name, or "native_call_<op>.out" for ExecuTorch's own kernels
    op_types: list[str]  # the edge ops behind it (from the ETRecord), else []
    delegated: bool
    raw_ms: list[float]

    @property
    def op(self) -> str:
        """The op as people write it: ``split_with_sizes_copy`` for
        ``native_call_split_with_sizes_copy.out``, ``fmod`` for
        ``native_call_fmod.Scalar_out``; the event's name otherwise."""
        if self.name.startswith(KERNEL_PREFIX):
            return self.name[len(KERNEL_PREFIX):].split(".")[0]
        return self.name


def kernel_events(etdump: Path, etrecord: Path | None = None
                  ) -> tuple[list[KernelEvent], float]:
    """The ops of the dump's ``Execute`` block in execution order, each once, and the median
    whole run (``Method::execute``, ms; 0 when the dump has none). Raises
    :class:`EdgepipeError` for a dump devtools cannot read."""
    import logging

    # torch logs a deprecation of its own at import (pytree enums) on stderr: not the user's
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    try:
        from executorch.devtools import Inspector
    except ImportError:
        raise missing_extra("executorch.devtools (reads ETDump on the host)",
                            "executorch") from None
    try:
        with warnings.catch_warnings():  # devtools warns once per op kwarg it does not map
            warnings.simplefilter("ignore")
            inspector = Inspector(etdump_path=str(etdump), etrecord=str(etrecord)
                                  if etrecord and etrecord.is_file() else None)
            frame = inspector.to_dataframe()
    except Exception as exc:  # devtools raises bare Exceptions on a damaged dump
        raise EdgepipeError(f"cannot read the ETDump {etdump.name}: {exc}") from None
    frame = frame[frame["event_block_name"] == "Execute"]
    total_rows = frame[frame["event_name"] == "Method::execute"]
    total = statistics.median(total_rows.iloc[0]["raw"]) if len(total_rows) else 0.0
    names = set(frame["event_name"])
    wrapped = any(str(n).startswith(KERNEL_PREFIX) for n in names)
    events = []
    for _, event in frame.iterrows():
        name = event["event_name"]
        if name in AGGREGATE_EVENTS or not event["raw"] or (wrapped and name == WRAPPER_EVENT):
            continue
        types = event["op_types"] if isinstance(event["op_types"], list) else []
        events.append(KernelEvent(str(name), [str(t) for t in types],
                                  bool(event["is_delegated_op"]),
                                  [float(v) for v in event["raw"]]))
    return events, float(total)
