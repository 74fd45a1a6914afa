"""``edgepipe agent serve``: the HTTP agent that runs on the device.

Standard library HTTP (no web framework to install on a Pi), JSON everywhere, versioned paths
under ``/v1``, a token on every call except ``/health``. The agent binds to 127.0.0.1 unless told
otherwise: from the host it is reached through an ssh tunnel or ``adb forward``.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .. import __version__
from ..errors import EdgepipeError
from ..manifest import write_atomic
from . import DEFAULT_PORT
from .info import cpu_frequencies, device_info, memory_mb, temperatures
from .jobs import JobQueue
from .openapi import openapi_document
from .store import ArtifactStore, JobSpec, JobStore, StoreError

API = "/v1"
MAX_JSON_BYTES = 16 << 20  # a manifest with 1000 labels is ~40 kB; this is generous
DRAIN_LIMIT = 64 << 20  # a refused body up to this size is read and dropped, not cut off


@dataclass
class AgentConfig:
    data: Path
    token: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_upload_mb: int = 1024


class _CountingReader:
    """The request body, counting what has been read of it."""

    def __init__(self, raw: Any) -> None:
        self.raw, self.count = raw, 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.count += len(data)
        return data


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


Route = tuple[str, re.Pattern[str], str]
ROUTES: list[Route] = [
    (method, re.compile(f"^{pattern}$"), handler) for method, pattern, handler in [
        ("GET", "/health", "health"),
        ("GET", f"{API}/health", "health"),
        ("GET", f"{API}/openapi.json", "openapi"),
        ("GET", f"{API}/info", "info"),
        ("GET", f"{API}/artifacts", "list_artifacts"),
        ("PUT", f"{API}/artifacts/(?P<sha>[^/]+)", "upload"),
        ("GET", f"{API}/artifacts/(?P<sha>[^/]+)", "get_artifact"),
        ("DELETE", f"{API}/artifacts/(?P<sha>[^/]+)", "delete_artifact"),
        ("PUT", f"{API}/artifacts/(?P<sha>[^/]+)/manifest", "put_manifest"),
        ("GET", f"{API}/artifacts/(?P<sha>[^/]+)/manifest", "get_manifest"),
        ("POST", f"{API}/jobs", "submit_job"),
        ("GET", f"{API}/jobs", "list_jobs"),
        ("GET", f"{API}/jobs/(?P<job>[^/]+)", "get_job"),
        ("GET", f"{API}/jobs/(?P<job>[^/]+)/etdump", "get_etdump"),
    ]
]
OPEN_HANDLERS = {"health"}


def _route(method: str, path: str) -> tuple[str, re.Match[str]]:
    for route_method, pattern, name in ROUTES:
        match = pattern.match(path)
        if match and route_method == method:
            return name, match
    allowed = [m for m, p, _ in ROUTES if p.match(path)]
    if allowed:
        raise ApiError(405, f"{method} is not allowed on {path} (use {', '.join(allowed)})")
    raise ApiError(404, f"no such endpoint {path}: see {API}/openapi.json")


class Agent:
    """The agent's state, shared by the request threads."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.artifacts = ArtifactStore(config.data)
        self.jobs = JobStore(config.data)
        self.queue = JobQueue(self.artifacts, self.jobs)
        self._info: dict[str, Any] | None = None

    def info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = {**device_info(), "agent_version": __version__,
                          "max_upload_mb": self.config.max_upload_mb}
            return self._info
        # clocks and heat change between calls: read them fresh, keep the rest
        return {**self._info, "cpu_frequencies": cpu_frequencies(),
                "temperatures_c": temperatures(), "memory": memory_mb()}


class Handler(BaseHTTPRequestHandler):
    agent: Agent  # set on the subclass made by make_server
    server_version = f"edgepipe-agent/{__version__}"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        sys.stderr.write(f"agent: {self.address_string()} {format % args}\n")

    # -- plumbing ------------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        self.body = _CountingReader(self.rfile)
        try:
            url = urlsplit(self.path)
            self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            name, match = _route(method, url.path)
            if name not in OPEN_HANDLERS:
                self._check_token()
            handler: Callable[..., None] = getattr(self, f"do_{name}")
            handler(**match.groupdict())
        except (ApiError, StoreError) as exc:
            if method in ("PUT", "POST"):
                if exc.status not in (411, 413):
                    self._drain()
                self.close_connection = True  # the body may be unread: drop the connection
            self._send_json({"error": str(exc)}, exc.status)
        except Exception as exc:  # a bug must not take the agent down: answer and go on
            self.close_connection = True
            self.log_message("internal error: %r", exc)
            self._send_json({"error": f"internal agent error: {type(exc).__name__}: {exc}"},
                            500)

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def _drain(self) -> None:
        """Read what is left of a refused request's body (when small), so that the client
        finishes sending and reads our answer instead of a broken pipe."""
        try:
            rest = int(self.headers.get("Content-Length", 0)) - self.body.count
        except ValueError:
            return
        if not 0 < rest <= DRAIN_LIMIT:
            return
        self.connection.settimeout(10)  # a client that lies about its length cannot hold us
        try:
            while rest > 0 and (chunk := self.body.read(min(rest, 1 << 20))):
                rest -= len(chunk)
        except OSError:
            pass

    def _check_token(self) -> None:
        header = self.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode(), self.agent.config.token.encode()):
            raise ApiError(401, "missing or wrong token: send `Authorization: Bearer TOKEN` "
                                "(the token the agent was started with)")

    def _length(self, limit: int) -> int:
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise ApiError(411, "send a Content-Length header")
        try:
            length = int(raw)
        except ValueError:
            raise ApiError(400, f"bad Content-Length {raw[:40]!r}") from None
        if length < 0:
            raise ApiError(400, "bad Content-Length")
        if length > limit:
            self.close_connection = True  # the body is not read: the connection is spent
            raise ApiError(413, f"request body of {length / 1e6:.1f} MB is over this agent's "
                                f"limit of {limit / 1e6:.1f} MB (agent option --max-upload-mb)")
        return length

    def _json_body(self) -> Any:
        length = self._length(MAX_JSON_BYTES)
        try:
            return json.loads(self.body.read(length) or b"null")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the request body is not valid JSON") from None

    def _send_json(self, data: Any, status: int = 200) -> None:
        body = json.dumps(data, indent=1).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    # -- endpoints -----------------------------------------------------------------------
    def do_health(self) -> None:
        self._send_json({"status": "ok", "agent_version": __version__})

    def do_openapi(self) -> None:
        self._send_json(openapi_document(__version__))

    def do_info(self) -> None:
        self._send_json(self.agent.info())

    def do_list_artifacts(self) -> None:
        self._send_json({"artifacts": self.agent.artifacts.list()})

    def do_upload(self, sha: str) -> None:
        name = self.query.get("name")
        if not name:
            raise ApiError(400, "say the file name: PUT /v1/artifacts/SHA256?name=model.tflite")
        length = self._length(self.agent.config.max_upload_mb << 20)
        meta, created = self.agent.artifacts.receive(sha, name, self.body, length)
        self._send_json(meta, 201 if created else 200)

    def do_get_artifact(self, sha: str) -> None:
        self._send_json(self.agent.artifacts.describe(sha))

    def do_delete_artifact(self, sha: str) -> None:
        self.agent.artifacts.delete(sha)
        self._send_json({"deleted": sha})

    def do_put_manifest(self, sha: str) -> None:
        self._send_json(self.agent.artifacts.put_manifest(sha, self._json_body()))

    def do_get_manifest(self, sha: str) -> None:
        manifest = self.agent.artifacts.manifest(sha)
        if manifest is None:
            raise ApiError(404, f"artifact {sha[:12]}… has no manifest")
        self._send_json(manifest)

    def do_submit_job(self) -> None:
        job = self.agent.queue.submit(JobSpec.from_dict(self._json_body()))
        self._send_json(job.to_dict(), 202)

    def do_list_jobs(self) -> None:
        self._send_json({"jobs": [j.to_dict() for j in self.agent.queue.all()]})

    def do_get_job(self, job: str) -> None:
        self._send_json(self.agent.queue.get(job).to_dict())

    def do_get_etdump(self, job: str) -> None:
        path = self.agent.jobs.folder(job) / "etdump.etdp"
        if not path.is_file():
            raise ApiError(404, f"job {job} has no ETDump (not an ExecuTorch job, not "
                                f"profiled, or not finished)")
        data = path.read_bytes()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def make_server(config: AgentConfig) -> tuple[ThreadingHTTPServer, Agent]:
    agent = Agent(config)
    handler = type("BoundHandler", (Handler,), {"agent": agent})
    try:
        server = ThreadingHTTPServer((config.host, config.port), handler)
    except OSError as exc:
        agent.queue.stop()
        raise EdgepipeError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}; "
                            f"pick another --port") from None
    server.daemon_threads = True
    return server, agent


def load_or_create_token(data: Path, token: str | None) -> str:
    """The token given, else the one saved in the data folder, else a new one saved there."""
    path = data / "token"
    if token:
        return token
    if path.is_file():
        return path.read_text().strip()
    data.mkdir(parents=True, exist_ok=True)
    new = secrets.token_urlsafe(24)
    write_atomic(path, new)
    path.chmod(0o600)
    return new


def serve(config: AgentConfig, ready: Callable[[str], None] | None = None) -> None:
    server, agent = make_server(config)
    host, port = server.server_address[:2]
    url = f"http://{host}:{port}"
    write_atomic(config.data / "agent.json", json.dumps({"url": url}))
    if ready:
        ready(url)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        agent.queue.stop()
        server.server_close()
