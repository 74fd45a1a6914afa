"""The agent under load and killed: 50 clients on loopback for 30 s (uploads, jobs, polls:
benchmarks/agent_load.py's load), then ``kill -9`` in the middle of an upload and of a job, a
restart, and what must have held: every completed upload present and intact, no partial
file, every finished job's result unchanged, the interrupted job queued again, no 5xx."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.agent_load import run_load
from edgepipe.host.client import AgentClient
from edgepipe.host.local import start_agent
from edgepipe.manifest import manifest_path

from .conftest import artifact

TOKEN = "load-token-789"
LOAD_SECONDS = float(os.environ.get("EDGEPIPE_LOAD_SECONDS", "30"))


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (its job's worker), from /proc."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _kill_hard(proc) -> None:
    """kill -9 of the agent and its worker, as a power cut or systemd's restart of the
    service's control group would: nothing runs any cleanup."""
    workers = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    proc.wait()


def _wait(client: AgentClient, job_id: str, states: set[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.job(job_id)
        if job["state"] in states or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def test_fifty_clients_then_kill_9_mid_upload_and_mid_job(small_conversion, tmp_path):
    out, report = small_conversion
    tflite = out / artifact(report, "tflite", "fp32")["file"]
    data = tmp_path / "agent"
    url, proc = start_agent(data, TOKEN)
    try:
        client = AgentClient(url, TOKEN)
        job_sha = client.upload(tflite)["sha256"]
        manifest = json.loads(manifest_path(tflite).read_text())
        load = run_load(url, TOKEN, job_sha, manifest, clients=50, seconds=LOAD_SECONDS,
                        max_jobs=20)
        summary = load.summary()
        print(f"load: {summary}")
        assert summary["server_errors"] == 0 and not load.errors, (load.statuses, load.errors)
        assert len(load.uploads) >= 50 and len(load.jobs) == 20, summary
        assert set(load.statuses) <= {200, 201, 202}, load.statuses

        # the jobs of the load finish; then one long job runs and an upload is half sent
        for job_id in load.jobs:
            _wait(client, job_id, {"done", "failed"}, timeout=120)
        finished = {j["id"]: j for j in client.jobs() if j["state"] == "done"}
        assert set(load.jobs) <= set(finished)
        long_job = client.submit(artifact=job_sha, warmup=1, runs=1_000_000, min_seconds=0,
                                 profile=False)["id"]
        assert _wait(client, long_job, {"running"}, timeout=30)["state"] == "running"
        time.sleep(0.5)  # the worker is measuring
        parts = urlsplit(url)
        partial_sha = "cd" * 32
        sock = socket.create_connection((parts.hostname, parts.port))
        sock.sendall(f"PUT /v1/artifacts/{partial_sha}?name=half.tflite HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: Bearer {TOKEN}\r\nContent-Length: {2 << 20}\r\n\r\n"
                     .encode() + b"\1" * (1 << 20))
        deadline = time.monotonic() + 10
        while not list((data / "tmp").glob("upload-*/half.tflite")):
            assert time.monotonic() < deadline, "the upload never reached the disk"
            time.sleep(0.05)
        _kill_hard(proc)
        sock.close()
        assert list((data / "tmp").glob("upload-*"))  # what the killed agent left
    finally:
        if proc.poll() is None:
            _kill_hard(proc)

    restarted = time.time()
    url, proc = start_agent(data, TOKEN)
    try:
        client = AgentClient(url, TOKEN)
        # every completed upload is there, under its name, with its bytes
        stored = {a["sha256"]: a for a in client.artifacts()}
        for sha, name in load.uploads.items():
            assert stored[sha]["name"] == name and stored[sha]["has_manifest"], name
            path = data / "artifacts" / sha / name
            assert hashlib.sha256(path.read_bytes()).hexdigest() == sha, name
        # no partial file anywhere: the half upload is gone, no temp file is left
        assert partial_sha not in stored and not (data / "artifacts" / partial_sha).exists()
        assert not list((data / "tmp").iterdir())
        assert not [p for p in data.rglob("*") if p.name.endswith(".tmp")]
        for folder in (data / "artifacts").iterdir():
            assert (folder / "meta.json").is_file(), folder
        # finished jobs' results intact; the interrupted one queued again and run again
        for job_id, job in finished.items():
            assert client.job(job_id) == job, job_id
        again = client.job(long_job)
        assert again["state"] in ("queued", "running"), again
        again = _wait(client, long_job, {"running"}, timeout=30)
        assert again["state"] == "running" and again["started"] > restarted
        assert client.health()["status"] == "ok"
    finally:
        _kill_hard(proc)  # with the long job's worker
