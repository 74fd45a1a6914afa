"""The agent under a fleet's load: concurrent clients on loopback mixing uploads, job
submissions and polls against a real agent process, for a fixed time.

    python benchmarks/agent_load.py [--clients 50] [--seconds 30]

Prints the CPU first, then the agent's throughput (requests/s, MB/s of uploads), the median
and p99 response time, and every status seen (a 5xx or a broken connection is a failure).
The clients share this machine's cores with the agent: the figures are of the pair.
``tests/test_agent_load.py`` runs the same load, then kills the agent mid-upload and mid-job.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

UPLOAD_BYTES = (64 << 10, 256 << 10)


@dataclass
class LoadResult:
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # broken connections, timeouts
    bytes_up: int = 0
    uploads: dict[str, str] = field(default_factory=dict)  # sha256: name, stored intact
    jobs: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, float | int]:
        ordered = sorted(self.latencies_ms)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else 0.0
        return {"requests": len(ordered), "requests_per_s": len(ordered) / self.seconds,
                "upload_mb_per_s": self.bytes_up / 1e6 / self.seconds,
                "median_ms": statistics.median(ordered) if ordered else 0.0, "p99_ms": p99,
                "server_errors": sum(n for s, n in self.statuses.items() if s >= 500),
                "connection_errors": len(self.errors)}


class _Client:
    """One client: a keep-alive connection, reopened when the agent closes it."""

    def __init__(self, url: str, token: str, result: LoadResult, lock: threading.Lock) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.auth = {"Authorization": f"Bearer {token}"}
        self.result, self.lock = result, lock
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        began = time.perf_counter()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            self.conn.request(method, path, body=body, headers=self.auth)
            response = self.conn.getresponse()
            data = response.read()
            if response.getheader("Connection", "").lower() == "close":
                self.close()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            with self.lock:
                self.result.errors.append(f"{method} {path[:40]}: {exc!r}")
            return 0, b""
        with self.lock:
            self.result.latencies_ms.append((time.perf_counter() - began) * 1000)
            self.result.statuses[response.status] += 1
            self.result.bytes_up += len(body or b"") if method == "PUT" else 0
        return response.status, data

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def run_load(url: str, token: str, job_artifact: str, manifest: dict, clients: int = 50,
             seconds: float = 30.0, max_jobs: int = 30, seed: int = 0) -> LoadResult:
    """``clients`` threads for ``seconds``: 4 in 10 upload random 64-256 kB artifacts with a
    manifest, 2 in 10 submit short jobs on ``job_artifact`` (at most ``max_jobs`` in all, then
    they poll), the rest poll jobs and lists. ``manifest``: a valid manifest to adapt."""
    result, lock = LoadResult(), threading.Lock()
    deadline = time.monotonic() + seconds
    start = threading.Barrier(clients)

    def upload(client: _Client, rng: random.Random, i: int, n: int) -> None:
        blob = rng.randbytes(rng.randint(*UPLOAD_BYTES))
        sha = hashlib.sha256(blob).hexdigest()
        name = f"load {i}-{n} é.tflite"
        status, _ = client.request("PUT", f"/v1/artifacts/{sha}?name={quote(name)}", blob)
        if status in (200, 201):
            body = json.dumps({**manifest, "file": name, "file_sha256": sha}).encode()
            if client.request("PUT", f"/v1/artifacts/{sha}/manifest", body)[0] == 200:
                with lock:
                    result.uploads[sha] = name

    def submit(client: _Client) -> bool:
        with lock:
            if len(result.jobs) >= max_jobs:
                return False
            result.jobs.append("")  # a place taken; the id follows
            place = len(result.jobs) - 1
        spec = {"artifact": job_artifact, "warmup": 1, "runs": 3, "profile": False}
        status, data = client.request("POST", "/v1/jobs", json.dumps(spec).encode())
        with lock:
            result.jobs[place] = json.loads(data)["id"] if status == 202 else ""
        return True

    def poll(client: _Client, rng: random.Random) -> None:
        with lock:
            ids = [j for j in result.jobs if j]
        what = rng.random()
        if ids and what < 0.6:
            client.request("GET", f"/v1/jobs/{rng.choice(ids)}")
        elif what < 0.8:
            client.request("GET", "/v1/artifacts")
        elif what < 0.9:
            client.request("GET", "/v1/jobs")
        else:
            client.request("GET", "/health")

    def run(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        client = _Client(url, token, result, lock)
        role, n = i % 10, 0
        start.wait()
        while time.monotonic() < deadline:
            if role < 4:
                upload(client, rng, i, n)
            elif role < 6 and submit(client):
                time.sleep(0.2)
            else:
                poll(client, rng)
                time.sleep(0.05)  # a poller's pace: a few a second, as `wait` does
            n += 1
        client.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.monotonic() - began
    result.jobs = [j for j in result.jobs if j]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()

    from edgepipe.converters.convert import ConvertRequest, convert
    from edgepipe.device.identity import machine_line
    from edgepipe.host.client import AgentClient
    from edgepipe.host.local import start_agent, stop_agent
    from edgepipe.manifest import manifest_path

    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "small"
        print("converting MobileNetV3-Small x0.5 @96 to .tflite for the jobs ...", file=sys.stderr)
        report = convert(ConvertRequest(model="mobilenet_v3_small", width_mult=0.5, size=96,
                                        formats=["tflite"], out=out))
        tflite = out / report["artifacts"][0]["file"]
        token = "load-benchmark"
        url, proc = start_agent(Path(tmp) / "agent", token)
        try:
            sha = AgentClient(url, token).upload(tflite)["sha256"]
            manifest = json.loads(manifest_path(tflite).read_text())
            result = run_load(url, token, sha, manifest, args.clients, args.seconds)
        finally:
            stop_agent(proc)
    s = result.summary()
    print(f"{args.clients} clients for {result.seconds:.1f} s on loopback: "
          f"{s['requests']} requests, {s['requests_per_s']:.0f} requests/s, "
          f"{s['upload_mb_per_s']:.1f} MB/s of uploads ({len(result.uploads)} artifacts), "
          f"{len(result.jobs)} jobs")
    print(f"response time: median {s['median_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms")
    print(f"statuses: {dict(sorted(result.statuses.items()))}; 5xx: {s['server_errors']}; "
          f"broken connections: {s['connection_errors']}")
    for error in result.errors[:5]:
        print(f"  {error}")


if __name__ == "__main__":
    main()
