"""The agent's job queue: one measurement at a time, each in its own worker process.

Two measurements on one device must never overlap (they would share cores and caches), so a
single thread takes jobs in order. Every change of state is saved to disk first: a client
that went away, or an agent that was killed and started again, still finds the result.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import replace
from pathlib import Path

from ..manifest import write_atomic
from .runtimes import RUNNER_PROCESS_ENV, RUNTIME_FOR_SUFFIX, installed_runtimes
from .store import ArtifactStore, Job, JobSpec, JobStore, StoreError

RESTARTED = "the agent restarted while this job ran: it was queued again"


def worker_command() -> list[str]:
    """How to start a worker: this Python, unless ``EDGEPIPE_WORKER_PYTHON`` says otherwise
    (an emulator prefix such as ``qemu-aarch64-static -L ROOTFS ROOTFS/usr/bin/python3``,
    where the kernel cannot start the emulated interpreter by itself)."""
    custom = os.environ.get("EDGEPIPE_WORKER_PYTHON")
    return shlex.split(custom) if custom else [sys.executable]


class JobQueue:
    def __init__(self, artifacts: ArtifactStore, jobs: JobStore,
                 et_runner: Path | None = None, no_runner_reason: str = "") -> None:
        """``et_runner``: the lean ExecuTorch runner ExecuTorch jobs run through (unless a job
        asks for the Python bindings), None where the device has none (``no_runner_reason``
        says why)."""
        self.artifacts, self.jobs = artifacts, jobs
        self.et_runner, self.no_runner_reason = et_runner, no_runner_reason
        self._pending: deque[str] = deque()
        self._live: dict[str, Job] = {}  # queued and running jobs, with fresh progress
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self.runtimes = installed_runtimes()
        for job in self.jobs.all():
            if job.state in ("queued", "running"):
                if job.state == "running":
                    job.state, job.progress = "queued", {"note": RESTARTED}
                    self.jobs.save(job)
                self._pending.append(job.id)
                self._live[job.id] = job
        self._thread = threading.Thread(target=self._loop, name="edgepipe-jobs", daemon=True)
        self._thread.start()

    def submit(self, spec: JobSpec) -> Job:
        runtime = None
        for sha in dict.fromkeys(spec.artifacts):
            runtime = self._check_artifact(sha, spec.runtime or runtime)  # one per batch
        if spec.affinity is not None and hasattr(os, "sched_getaffinity"):
            allowed = os.sched_getaffinity(0)
            if not set(spec.affinity) <= allowed:
                raise StoreError(400, f"affinity {spec.affinity} names CPUs this device does "
                                      f"not offer (allowed: {sorted(allowed)})")
        if runtime == "executorch" and spec.runner == "native" and self.et_runner is None:
            raise StoreError(400, "this device has no lean ExecuTorch runner ("
                                  f"{self.no_runner_reason or 'see /v1/info executorch_runner'}"
                                  "); ask for runner python or auto")
        if (spec.kind == "evaluate") != bool(spec.images) or (spec.items and spec.images):
            raise StoreError(400, "an evaluation (kind evaluate) takes images and one "
                                  "artifact; a benchmark takes no images")
        if spec.runner == "native" and spec.items:
            raise StoreError(400, "batches run through the Python bindings: runner native "
                                  "takes one artifact")
        spec.runtime = runtime
        job = Job(id=uuid.uuid4().hex[:12], spec=spec)
        with self._lock:
            self.jobs.save(job)
            self._live[job.id] = job
            self._pending.append(job.id)
            self._wake.notify()
        return job

    def _check_artifact(self, sha: str, asked: str | None) -> str:
        """The runtime that runs this uploaded artifact, or why it cannot run here."""
        path = self.artifacts.path(sha)  # 404 when not uploaded
        own = RUNTIME_FOR_SUFFIX[path.suffix]
        runtime = asked or own
        if runtime not in ("litert", "executorch"):
            raise StoreError(400, f"unknown runtime '{runtime}': use litert or executorch")
        if runtime != own:
            raise StoreError(400, f"{path.name} is a {own} artifact; it cannot run on {runtime}")
        if runtime not in self.runtimes:
            have = ", ".join(self.runtimes) or "none"
            raise StoreError(400, f"runtime {runtime} is not installed on this device "
                                  f"(installed: {have}); install it or deploy another format")
        if self.artifacts.manifest(sha) is None:
            raise StoreError(409, f"{path.name} has no manifest on this device: upload one "
                                  f"(`edgepipe manifest init FILE` writes a starting one)")
        return runtime

    def get(self, job_id: str) -> Job:
        with self._lock:
            if job_id in self._live:
                return self._live[job_id]
        return self.jobs.load(job_id)

    def all(self) -> list[Job]:
        with self._lock:
            live = dict(self._live)
        return [live.get(j.id, j) for j in self.jobs.all()]

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._wake.notify()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                job = self._live[self._pending.popleft()]
            self._run(job)
            with self._lock:
                self._live.pop(job.id, None)

    def _run(self, job: Job) -> None:
        job.state, job.started = "running", time.time()
        self.jobs.save(job)
        folder = self.jobs.folder(job.id)
        try:
            paths = {sha: (self.artifacts.path(sha),
                           self.artifacts.folder(sha) / "manifest.json")
                     for sha in job.spec.artifacts}
        except StoreError as exc:  # deleted while queued
            self._finish(job, error=str(exc))
            return
        (folder / "result.json").unlink(missing_ok=True)
        if job.spec.items:  # the worker reads the batch's file paths from the job folder
            write_atomic(folder / "batch.json", json.dumps(
                [{"path": str(paths[i["artifact"]][0]), "shape": i["shape"]}
                 for i in job.spec.items]))
            args = [str(folder)]
            artifact = Path(f"a batch of {len(job.spec.items)}")
        else:
            artifact, manifest = paths[job.spec.artifact]
            args = [str(folder), str(artifact), str(manifest)]
        env = dict(os.environ)
        env.pop("EDGEPIPE_ET_RUNNER", None)
        env.update(RUNNER_PROCESS_ENV)  # no OpenMP thread beside the runtime: see there
        if self.et_runner is not None and job.spec.runner != "python":
            env["EDGEPIPE_ET_RUNNER"] = str(self.et_runner)
        proc = subprocess.Popen(
            [*worker_command(), "-m", "edgepipe.device.worker", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        stderr: list[str] = []
        drain = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)
        drain.start()
        for line in proc.stdout:  # progress, as JSON lines
            try:
                job.progress = json.loads(line)
            except ValueError:
                continue
        code = proc.wait()
        drain.join()
        result = folder / "result.json"
        if code == 0 and result.is_file():
            self._finish(job, result=json.loads(result.read_text()))
        else:
            self._finish(job, error=_worker_error(code, stderr, artifact.name))

    def _finish(self, job: Job, result: dict | None = None, error: str | None = None) -> None:
        # stored before anyone is told: a client that saw "done" must find it done after the
        # agent is killed (the state set first, a SIGKILL before the save left "running" on
        # disk); the state last, so a reader never sees "done" without its result
        finished = replace(job, result=result, error=error, finished=time.time(),
                           state="done" if error is None else "failed")
        self.jobs.save(finished)
        job.result, job.error, job.finished = result, error, finished.finished
        job.state = finished.state


def _worker_error(code: int, stderr: list[str], name: str) -> str:
    lines = [s.strip() for s in stderr if s.strip()]
    if code < 0:
        return (f"the runtime crashed on {name} (signal {-code}): the artifact is corrupted or "
                f"was made for another runtime version")
    last = lines[-1] if lines else f"exit code {code}"
    return f"{name}: {last[:400]}"
