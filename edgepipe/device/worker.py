"""One benchmark job, run in its own process by the agent.

A process per job: a runtime that crashes on a bad artifact takes the job down, not the
agent; the peak memory is the job's own; and the job pins its CPUs without touching the
agent's. Progress goes to stdout as JSON lines; the result to ``result.json`` in the job folder.

    python -m edgepipe.device.worker JOB_FOLDER ARTIFACT MANIFEST
    python -m edgepipe.device.worker JOB_FOLDER      (a batch: JOB_FOLDER/batch.json)
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgepipeError
from ..manifest import Manifest, write_atomic
from .bench import LatencyStats, measure_latency, measure_until_stable, peak_rss_mb, rss_mb
from .info import device_state, state_changes
from .runtimes import import_runtime, open_runner


def report(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def example_input(manifest: Manifest, seed: int = 0) -> np.ndarray:
    """What the runner takes: the manifest's float32 input (its layout), random but seeded."""
    spec = manifest.inputs[0]
    return np.random.default_rng(seed).standard_normal(spec.shape).astype(np.float32)


def executorch_etdump(artifact: Path, x: np.ndarray, dim_orders: list[list[int]],
                      threads: int, runs: int, out: Path, half: bool = False
                      ) -> dict[str, Any]:
    """Run with ETDump on; the host turns the dump into a table with the ETRecord. The same
    runs through the same API without ETDump (after 3 warm-up runs) give its overhead.
    ``dim_orders``: the program's input dim orders (``ExecuTorchRunner.dim_orders``);
    ``half``: it takes float16 (``ExecuTorchRunner.half``)."""
    from .runtimes import executorch_bindings, executorch_inputs, reset_threadpool

    portable_lib = executorch_bindings()
    reset_threadpool(portable_lib, threads)
    inputs = executorch_inputs(x, dim_orders, half)

    def timed(module: Any, count: int) -> list[float]:
        times = []
        for _ in range(count):
            start = time.perf_counter()
            module.forward(inputs)
            times.append((time.perf_counter() - start) * 1000)
        return times

    plain = portable_lib._load_for_executorch(str(artifact), enable_etdump=False)
    timed(plain, 3)
    unprofiled = timed(plain, runs)
    del plain
    module = portable_lib._load_for_executorch(str(artifact), enable_etdump=True,
                                               debug_buffer_size=0)
    profiled = timed(module, runs)
    module.write_etdump_result_to_file(str(out))
    return {"available": True, "source": "etdump", "file": out.name, "runs": runs,
            "profiled_ms": profiled, "unprofiled_ms": unprofiled}


def litert_per_op(artifact: Path, x: np.ndarray, threads: int, runs: int) -> dict[str, Any]:
    """Per-op events of ``runs`` runs from LiteRT's CompiledModel profiler
    (:func:`.litert_profiler.profile_ops`), or ``available: false`` with the reason."""
    from .litert_profiler import PerOpUnavailable, profile_ops

    try:
        return profile_ops(artifact, x, threads=threads, runs=runs).to_dict()
    except PerOpUnavailable as exc:
        return {"available": False, "reason": str(exc)}
    except Exception as exc:  # the latency stands; a profiler that breaks gives no numbers
        return {"available": False, "reason": f"per-op not available because the LiteRT "
                                              f"profiler failed: {type(exc).__name__}: {exc}"}


def _start(job_dir: Path) -> dict[str, Any]:
    """The job's spec, with the process pinned to the CPUs it asks for."""
    spec = json.loads((job_dir / "job.json").read_text())["spec"]
    if spec.get("affinity"):
        os.sched_setaffinity(0, spec["affinity"])
    return spec


# below this share of the wall time on the CPU, a measurement did not have its core to itself
CPU_SHARE_FLAG = 0.85


def shared_cpu_flags(stats: list[dict[str, Any]]) -> list[str]:
    """A flag when runs had the CPU less than :data:`CPU_SHARE_FLAG` of their wall time."""
    shares = [s["cpu_share"] for s in stats if s.get("cpu_share") is not None]
    low = [v for v in shares if v < CPU_SHARE_FLAG]
    if not low:
        return []
    what = "the runs" if len(shares) == 1 else f"{len(low)} of {len(shares)} items' runs"
    return [f"{what} had the CPU only {min(low):.0%} of their wall time: another process "
            "shares the core"]


# at one thread the runtime has no pool: another thread of the process using more than this
# share of a core during the runs spins beside the measurement
HELPER_CPU_FLAG = 0.1


def helper_thread_flags(stats: list[dict[str, Any]], threads: int) -> list[str]:
    """A flag when, at one thread, other threads of the measuring process used the CPU
    during the runs (``helper_cpu``, :class:`.bench.LatencyStats`)."""
    shares = [s["helper_cpu"] for s in stats if s.get("helper_cpu") is not None]
    if threads != 1 or not shares or max(shares) <= HELPER_CPU_FLAG:
        return []
    return [f"another thread of the measuring process used {max(shares):.2f} of a core during "
            "the runs (at 1 thread the runtime has no pool): it competes for the device"]


def state_record(start: dict[str, Any], stats: list[dict[str, Any]],
                 threads: int) -> dict[str, Any]:
    """The device's state at the job's start and end, and what changed between them
    (``flags``: a fallen frequency, a changed governor, throttling that began, a core shared
    with another process, at ``threads`` 1 another thread working beside the runtime).
    ``readable`` says what the device exposes: with nothing readable, no flag of that kind
    means nothing."""
    end = device_state()
    return {"start": start, "end": end,
            "flags": (state_changes(start, end) + shared_cpu_flags(stats)
                      + helper_thread_flags(stats, threads)),
            "readable": {"frequency": any(c["cur_mhz"] for c in start["cpu"]),
                         "governor": any(c["governor"] for c in start["cpu"]),
                         "temperature": bool(start["temperatures_c"]),
                         "throttling": start["throttled"] is not None}}


NOT_ASKED = {"available": False,
             "reason": "per-op not available because it was not asked for (profile=false)"}


def job_fields(spec: dict[str, Any], x: np.ndarray) -> dict[str, Any]:
    """What every job's result says the same way, whichever path measured it."""
    return {"threads": spec["threads"],
            "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else None,
            "input": {"shape": list(x.shape), "dtype": "float32",
                      "data": "seeded normal noise"}}


def precision_fields(manifest: Manifest) -> dict[str, Any]:
    """The artifact's precision, and for fp16 whether this CPU computes fp16 natively
    (:func:`.identity.fp16_support`): where it does not, the result says so."""
    fields: dict[str, Any] = {"precision": manifest.precision}
    if manifest.precision == "fp16":
        from .identity import fp16_support, local_identity

        fields["fp16"] = fp16_support(local_identity())
    return fields


PYTHON_PATHS = {"executorch": "ExecuTorch Python bindings (portable_lib; libtorch in the "
                               "process)",
                "litert": "ai-edge-litert Interpreter (Python)"}


def run_job_native(spec: dict[str, Any], job_dir: Path, artifact: Path, x: np.ndarray,
                   runner: Path) -> dict[str, Any]:
    """An ExecuTorch job on the lean C++ runner: its own process, no torch; load time and
    memory are the runner's (what an app on the C++ runtime pays)."""
    from .native_runner import run_runner

    report(phase="measuring (lean runner)", done=0, total=1)
    etdump = job_dir / "etdump.etdp" if spec["profile"] else None
    out = run_runner(runner, artifact, x, threads=spec["threads"], warmup=spec["warmup"],
                     runs=spec["runs"], min_seconds=spec.get("min_seconds", 0.0),
                     etdump=etdump, profiled_runs=spec["profile_runs"])
    return native_result(spec, out, x, runner.name,
                         etdump.name if etdump is not None else None)


def native_result(spec: dict[str, Any], out: dict[str, Any], x: np.ndarray, runner: str,
                  etdump: str | None, where: str = "") -> dict[str, Any]:
    """A job's result from the lean runner's JSON (``out``): here, or on a device driven
    without an agent (``where`` says how it was reached, in words)."""
    stats = LatencyStats.from_seconds([t / 1000 for t in out["times_ms"]],
                                      spec.get("raw", False), out["wall_ms"] / 1000)
    result: dict[str, Any] = {
        "runtime": "executorch",
        "measured_by": {"path": "native", "runner": runner,
                        "words": f"lean C++ runner {runner} (ExecuTorch's C++ runtime, "
                                 f"no torch){where}"},
        **job_fields(spec, x),
        "latency": stats.to_dict(),
        "load_ms": out["load_ms"],
        "memory": {"rss_before_load_mb": out["rss_before_load_kb"] / 1024,
                   "peak_rss_mb": out["peak_rss_kb"] / 1024 if out["peak_rss_kb"] > 0
                   else None, "process": "the runner"},
    }
    if etdump is None:
        result["per_op"] = NOT_ASKED
    else:
        result["per_op"] = {"available": True, "source": "etdump", "file": etdump,
                            "runs": spec["profile_runs"],
                            "profiled_ms": out["etdump"]["profiled_ms"],
                            # as many unprofiled runs as profiled ones (the Python path's
                            # contract): the last of the timed runs
                            "unprofiled_ms": out["times_ms"][-spec["profile_runs"]:]}
    return result


def run_job(job_dir: Path, artifact: Path, manifest_path: Path) -> dict[str, Any]:
    spec = _start(job_dir)
    state = device_state()
    manifest = Manifest.from_dict(json.loads(manifest_path.read_text()))
    if spec.get("kind") == "evaluate":
        from .evaluate import run_evaluation

        return {**run_evaluation(spec, artifact, manifest, report),
                **precision_fields(manifest)}
    x = example_input(manifest)
    if artifact.suffix == ".pte" and spec.get("runner", "auto") != "python":
        from .native_runner import find_runner

        runner = find_runner(None)  # the agent names it in EDGEPIPE_ET_RUNNER
        if runner is not None:
            result = run_job_native(spec, job_dir, artifact, x, runner)
            result.update(precision_fields(manifest))
            result["device_state"] = state_record(state, [result["latency"]], spec["threads"])
            return result
        if spec.get("runner") == "native":
            raise EdgepipeError("runner native asked for, but the agent named no lean runner")
    report(phase="loading", done=0, total=1)
    import_runtime(artifact)
    rss_before = rss_mb()  # with the runtime imported: what the model itself adds is peak - this
    load_start = time.perf_counter()
    runner = open_runner(artifact, spec["threads"])
    load_ms = (time.perf_counter() - load_start) * 1000
    stats = measure_latency(
        runner, x, spec["warmup"], spec["runs"],
        on_progress=lambda done, total: report(phase="measuring", done=done, total=total),
        min_seconds=spec.get("min_seconds", 0.0), raw=spec.get("raw", False))
    result: dict[str, Any] = {
        "runtime": runner.runtime,
        "measured_by": {"path": "python", "words": PYTHON_PATHS[runner.runtime]},
        **job_fields(spec, x),
        "latency": stats.to_dict(),
        "load_ms": load_ms,
        "memory": {"rss_before_load_mb": rss_before, "peak_rss_mb": peak_rss_mb()},
        **precision_fields(manifest),
    }
    if not spec["profile"]:
        result["per_op"] = NOT_ASKED
    elif runner.runtime == "executorch":
        report(phase="profiling per op", done=0, total=1)
        result["per_op"] = executorch_etdump(artifact, x, runner.dim_orders, spec["threads"],
                                             spec["profile_runs"], job_dir / "etdump.etdp",
                                             runner.half)
    else:
        report(phase="profiling per op", done=0, total=1)
        result["per_op"] = litert_per_op(artifact, x, spec["threads"], spec["profile_runs"])
    result["device_state"] = state_record(state, [result["latency"]], spec["threads"])
    return result


def run_batch(job_dir: Path) -> dict[str, Any]:
    """Measure each item (an artifact at an input shape) until its median is stable."""
    spec = _start(job_dir)
    state = device_state()
    items = json.loads((job_dir / "batch.json").read_text())
    import_runtime(items[0]["path"])
    runners: dict[str, Any] = {}
    measured = []
    began = time.perf_counter()
    for i, item in enumerate(items):
        report(phase="measuring", done=i, total=len(items))
        path = item["path"]
        if path not in runners:
            runners = {path: open_runner(path, spec["threads"])}  # one program open at a time
        x = np.random.default_rng(0).standard_normal(item["shape"]).astype(np.float32)
        try:
            stats, ci_pct = measure_until_stable(
                runners[path], x, spec["warmup"], spec["min_runs"], spec["runs"],
                spec["stable_pct"], spec["max_seconds"], raw=spec.get("raw", False))
        except (RuntimeError, ValueError) as exc:
            raise EdgepipeError(f"{Path(path).name} at shape {item['shape']}: {exc}") from None
        measured.append({**stats.to_dict(), "ci95_pct": round(ci_pct, 3)})
    return {"runtime": next(iter(runners.values())).runtime, "threads": spec["threads"],
            "items": measured, "seconds": time.perf_counter() - began,
            "device_state": state_record(state, measured, spec["threads"])}


def main(argv: list[str]) -> int:
    job_dir = Path(argv[0])
    try:
        result = run_batch(job_dir) if len(argv) == 1 else run_job(job_dir, *map(Path, argv[1:]))
    except EdgepipeError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    write_atomic(job_dir / "result.json", json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
