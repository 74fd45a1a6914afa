"""Deploy artifacts to an agent and profile them there (host side)."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..device.store import RUNNABLE_SUFFIXES
from ..errors import EdgepipeError
from ..manifest import load_manifest, manifest_path
from .client import AgentClient
from .op_map import executorch_modules, litert_modules
from .op_table import (
    OpRow,
    benchmark_model_op_table,
    executorch_op_table,
    kernel_precisions,
    litert_op_table,
    overhead,
)

DEVICE_FIELDS = ("hostname", "fingerprint", "identity_words", "machine", "cpu_model", "cores",
                 "runtimes", "fp16")
REPLICABLE_PCT = 5.0  # MLPerf Mobile: repeated runs' results within 5 % of each other


def deployable(out_dir: Path) -> tuple[list[Path], list[str]]:
    """The runnable artifacts (with manifests) of a ``convert`` output, and what is skipped."""
    if not out_dir.is_dir():
        if out_dir.is_file() and out_dir.suffix in RUNNABLE_SUFFIXES:
            return [out_dir], []
        raise EdgepipeError(f"{out_dir} is not a convert output folder or a .tflite/.pte file")
    found, skipped = [], []
    for path in sorted(out_dir.iterdir()):
        if path.suffix in RUNNABLE_SUFFIXES:
            if manifest_path(path).is_file():
                found.append(path)
            else:
                skipped.append(f"{path.name}: no manifest (`edgepipe manifest init {path}`)")
        elif path.suffix == ".mlpackage":
            skipped.append(f"{path.name}: Core ML runs on Apple devices, not on the agent")
    if not found:
        raise EdgepipeError(f"nothing to deploy in {out_dir}: no .tflite or .pte with a manifest")
    return found, skipped


def deploy(client: AgentClient, paths: list[Path],
           on_step: Callable[[str], None] | None = None) -> list[dict]:
    uploaded = []
    for path in paths:
        if on_step:
            on_step(f"uploading {path.name}")
        uploaded.append(client.upload(path))
    return uploaded


@dataclass
class ProfileResult:
    artifact: str
    format: str
    precision: str
    model: str
    device: dict[str, Any]
    job_id: str
    runtime: str
    threads: int
    latency: dict[str, float]
    memory: dict[str, float]
    load_ms: float
    per_op: list[OpRow] | None = None
    measured_by: str | None = None  # which path on the device: a runtime's Python API or
    # the lean ExecuTorch runner (edgepipe.device.native_runner), in words
    per_op_total_ms: float | None = None
    per_op_note: str | None = None
    per_op_source: str | None = None  # "ETDump" or "LiteRT profiler"
    per_op_overhead: dict[str, Any] | None = None  # profiled / unprofiled run time
    per_op_placed: str | None = None  # how the ops were placed in the model, in words
    device_state: dict[str, Any] | None = None  # the job's start/end state and its flags
    flags: list[str] | None = None  # every repeat's device-state flags, in words
    repeats: list[dict[str, Any]] | None = None  # per repeat: job, latency, flags
    replicability: dict[str, Any] | None = None  # with more than one repeat
    # fp16 artifacts: whether the device computes fp16 natively (device.identity.fp16_support);
    # where it does not, the artifact ran without fp16's speed, and every table says so
    fp16: dict[str, Any] | None = None
    # the arithmetic its XNNPACK kernels ran in, from the per-op names (kernel_precisions)
    kernels: dict[str, Any] | None = None
    # ExecuTorch: how much of the program its delegates run (inspect_artifact.Delegation)
    delegation: dict[str, Any] | None = None


def artifact_delegation(artifact: Path, manifest: Any) -> dict[str, Any] | None:
    """For a ``.pte``: how much its delegates run, read from the program here
    (:func:`edgepipe.device.inspect_artifact.pte_delegation`), else what its manifest
    recorded; None for other formats or where neither says."""
    if artifact.suffix != ".pte":
        return None
    from ..device.inspect_artifact import pte_delegation

    try:
        return pte_delegation(artifact).to_dict()
    except EdgepipeError:  # no ExecuTorch package on this host: what convert / init wrote
        return (manifest.extra.get("delegation")
                or manifest.extra.get("graph", {}).get("delegation"))


def replicability(medians: list[float], within_pct: float = REPLICABLE_PCT) -> dict[str, Any]:
    """Whether repeated measurements agree: (largest − smallest median) / smallest within
    ``within_pct`` (MLPerf Mobile's rule for a result to count)."""
    spread = (max(medians) - min(medians)) / min(medians) * 100
    return {"repeats": len(medians), "medians_ms": medians, "spread_pct": spread,
            "within_pct": within_pct, "replicable": spread <= within_pct}


def profile(client: AgentClient, artifact: Path, *, threads: int = 1, warmup: int = 10,
            runs: int = 50, affinity: list[int] | None = None, per_op: bool = True,
            on_progress: Callable[[dict], None] | None = None,
            device_info: dict[str, Any] | None = None, repeat: int = 1,
            cooldown_s: float = 0.0, min_seconds: float = 0.0, raw: bool = False,
            runner: str = "auto",
            before_sitting: Callable[[int], dict[str, Any] | None] | None = None
            ) -> ProfileResult:
    """Measure an artifact on the device ``repeat`` times (``cooldown_s`` apart, each in a
    job of its own: at least ``runs`` runs and ``min_seconds`` of timed runs); the per-op
    profile comes from the first. ``latency`` is the repeat with the median median.
    ``runner`` (ExecuTorch): "native" the lean C++ runner, "python" the bindings, "auto" the
    runner where the device has one. ``before_sitting(i)``, called before repeat ``i``: what
    the device's speed was then (``edgepipe.lab.reference``), kept with that repeat."""
    artifact = Path(artifact)
    manifest = load_manifest(artifact)
    meta = client.upload(artifact)
    jobs, references, times = [], [], []
    for i in range(repeat):
        if i and cooldown_s:
            time.sleep(cooldown_s)
        references.append(before_sitting(i) if before_sitting else None)
        times.append(time.time())
        job = client.submit(artifact=meta["sha256"], threads=threads, warmup=warmup,
                            runs=runs, affinity=affinity, profile=per_op and i == 0,
                            min_seconds=min_seconds, raw=raw, runner=runner)
        jobs.append(client.wait(job["id"], on_progress))
    first = jobs[0]
    result = first["result"]
    medians = [j["result"]["latency"]["median_ms"] for j in jobs]
    known = None not in medians  # benchmark_model builds that print no median: null
    middle = jobs[medians.index(statistics.median_low(medians))] if known else first
    flags = [f"repeat {i + 1}: {f}" if repeat > 1 else f for i, j in enumerate(jobs)
             for f in j["result"].get("device_state", {}).get("flags", [])]
    info = device_info or client.info()
    out = ProfileResult(
        artifact=artifact.name, format=manifest.format, precision=manifest.precision,
        model=manifest.model, device={k: info.get(k) for k in DEVICE_FIELDS},
        job_id=first["id"], runtime=result["runtime"], threads=result["threads"],
        latency=middle["result"]["latency"], memory=result["memory"],
        load_ms=result["load_ms"], device_state=result.get("device_state"), flags=flags,
        measured_by=(result.get("measured_by") or {}).get("words"),
        repeats=[{"job_id": j["id"], "latency": j["result"]["latency"], "time": t,
                  "flags": j["result"].get("device_state", {}).get("flags", []),
                  **({"reference": ref} if ref else {})}
                 for j, t, ref in zip(jobs, times, references, strict=True)],
        replicability=replicability(medians) if repeat > 1 and known else None)
    out.delegation = artifact_delegation(artifact, manifest)
    if manifest.precision == "fp16":
        from ..device.identity import fp16_support

        # an agent says it with the result; a device without one is judged by its identity
        out.fp16 = result.get("fp16") or info.get("fp16") or fp16_support(info.get("identity"))
    per_op = result["per_op"]
    if not per_op.get("available"):
        out.per_op_note = per_op.get("reason")
    elif per_op.get("source") == "litert-profiler":
        out.per_op, out.per_op_total_ms = litert_op_table(per_op)
        out.per_op_source = f"LiteRT profiler, {per_op['library']}"
        out.per_op_overhead = overhead(per_op)
        out.per_op_placed = litert_modules(out.per_op, per_op, artifact)
    elif per_op.get("source") == "benchmark_model":
        out.per_op, out.per_op_total_ms = benchmark_model_op_table(per_op)
        out.per_op_source = (f"{per_op['tool']}'s op profile, means; [times called] read "
                             f"as {per_op['times_called']}")
        out.per_op_overhead = overhead(per_op)
        out.per_op_note = ("ops not placed in the model: benchmark_model's table names "
                           "the runtime's ops only")
    elif per_op.get("source") == "etdump":
        etrecord = manifest.extra.get("etrecord")
        etrecord_path = artifact.with_name(etrecord) if etrecord else None
        with tempfile.TemporaryDirectory() as tmp:
            dump = Path(tmp) / "etdump.etdp"
            dump.write_bytes(client.etdump(first["id"]))
            out.per_op, out.per_op_total_ms = executorch_op_table(dump, etrecord_path)
        out.per_op_source = "ETDump"
        out.per_op_overhead = overhead(per_op, result["latency"]["median_ms"])
        out.per_op_placed = executorch_modules(out.per_op, etrecord_path)
        if etrecord_path is None or not etrecord_path.is_file():
            out.per_op_note = ("no ETRecord beside the artifact: ops are named by the "
                               "runtime's events only")
    else:
        out.per_op_note = f"per-op not available because the agent sent an unknown kind " \
                          f"({per_op.get('source')!r}): update the host"
    if out.per_op:
        out.kernels = kernel_precisions(out.per_op)
    return out
