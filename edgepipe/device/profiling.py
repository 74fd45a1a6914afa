"""Deploy artifacts to an agent and profile them there (host side)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EdgepipeError
from ..manifest import load_manifest, manifest_path
from .client import AgentClient
from .op_table import OpRow, executorch_op_table
from .store import RUNNABLE_SUFFIXES

DEVICE_FIELDS = ("hostname", "fingerprint", "machine", "cpu_model", "cores", "runtimes")


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
    per_op_total_ms: float | None = None
    per_op_note: str | None = None


def profile(client: AgentClient, artifact: Path, *, threads: int = 1, warmup: int = 10,
            runs: int = 50, affinity: list[int] | None = None, per_op: bool = True,
            on_progress: Callable[[dict], None] | None = None,
            device_info: dict[str, Any] | None = None) -> ProfileResult:
    artifact = Path(artifact)
    manifest = load_manifest(artifact)
    meta = client.upload(artifact)
    job = client.submit(artifact=meta["sha256"], threads=threads, warmup=warmup, runs=runs,
                        affinity=affinity, profile=per_op)
    done = client.wait(job["id"], on_progress)
    result = done["result"]
    info = device_info or client.info()
    out = ProfileResult(
        artifact=artifact.name, format=manifest.format, precision=manifest.precision,
        model=manifest.model, device={k: info.get(k) for k in DEVICE_FIELDS},
        job_id=job["id"], runtime=result["runtime"], threads=result["threads"],
        latency=result["latency"], memory=result["memory"], load_ms=result["load_ms"])
    if not result["per_op"].get("available"):
        out.per_op_note = result["per_op"].get("reason")
    elif result["per_op"].get("source") == "etdump":
        etrecord = manifest.extra.get("etrecord")
        etrecord_path = artifact.with_name(etrecord) if etrecord else None
        with tempfile.TemporaryDirectory() as tmp:
            dump = Path(tmp) / "etdump.etdp"
            dump.write_bytes(client.etdump(job["id"]))
            out.per_op, out.per_op_total_ms = executorch_op_table(dump, etrecord_path)
        if etrecord_path is None or not etrecord_path.is_file():
            out.per_op_note = ("no ETRecord beside the artifact: ops are named by the "
                               "runtime's events only")
    return out
