"""``edgepipe agent serve``: the HTTP agent that runs on the device.

A small WSGI application served by cheroot (CherryPy's pure-Python HTTP server: no web
framework on a Pi), JSON everywhere, versioned paths under ``/v1``, a token on every call
except ``/health``. The server brings what a network-facing agent needs and a hand-written
one lacked: an idle timeout on every read (a stalled upload is cut, its temp file removed),
a listen backlog and a worker pool sized for a fleet's bursts, bounded request headers.
Methods a path does not declare get a 405 JSON answer with ``Allow``. The agent binds to
127.0.0.1 unless told otherwise: from the host it is reached through an ssh tunnel or
``adb forward``; ``--tls`` serves HTTPS with a certificate the agent makes itself.

Protocol errors the server answers before the application sees the request (a malformed
request line, headers over the limit, a CONNECT) are cheroot's own plain-text answers.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from .. import __version__
from ..errors import EdgepipeError
from ..manifest import new_token, write_atomic, write_secret
from . import DEFAULT_PORT
from .info import cpu_frequencies, device_info, memory_mb, temperatures
from .jobs import JobQueue
from .openapi import openapi_document
from .store import ArtifactStore, JobSpec, JobStore, StoreError

API = "/v1"
MAX_JSON_BYTES = 16 << 20  # a manifest with 1000 labels is ~40 kB; this is generous
DRAIN_LIMIT = 64 << 20  # a refused body up to this size is read and dropped, not cut off
MAX_HEADER_BYTES = 64 << 10
STATUS_TEXT = {200: "OK", 201: "Created", 202: "Accepted", 400: "Bad Request",
               401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
               408: "Request Timeout", 409: "Conflict", 411: "Length Required",
               413: "Content Too Large", 500: "Internal Server Error"}


@dataclass
class AgentConfig:
    data: Path
    token: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_upload_mb: int = 1024
    idle_timeout: float = 30.0  # seconds without a byte from a client before it is cut
    threads: int = 16  # requests served at once (uploads stream at network speed)
    backlog: int = 128  # connections the kernel queues before accept
    tls: bool = False  # HTTPS with the agent's own certificate (edgepipe.device.tls)
    # the lean ExecuTorch runner: "auto" (the one named by EDGEPIPE_ET_RUNNER, else one built
    # here before, else one built now where a compiler and the executorch wheel are), "off",
    # or a path to a runner (cross-built on the host)
    et_runner: str = "auto"


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None
                 ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


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
    allowed = sorted({m for m, p, _ in ROUTES if p.match(path)})
    if allowed:
        raise ApiError(405, f"{method[:20]} is not allowed on {path} (use "
                            f"{', '.join(allowed)})", {"Allow": ", ".join(allowed)})
    raise ApiError(404, f"no such endpoint {path}: see {API}/openapi.json")


def resolve_et_runner(config: AgentConfig) -> dict[str, Any]:
    """The lean ExecuTorch runner this agent's ExecuTorch jobs run through, as
    ``{"path", "how"}``, or ``{"path": None, "reason"}``."""
    from .native_runner import (
        build_runner,
        cache_folder,
        check_runner,
        executorch_root,
        find_runner,
    )

    if config.et_runner == "off":
        return {"path": None, "reason": "switched off (agent serve --et-runner off)"}
    try:
        if config.et_runner != "auto":
            # expanded here: a systemd unit passes "~/..." as it is
            path, how = check_runner(Path(config.et_runner).expanduser()), "given (--et-runner)"
        elif (path := find_runner(cache_folder())) is not None:
            how = "EDGEPIPE_ET_RUNNER" if os.environ.get("EDGEPIPE_ET_RUNNER") else \
                "built here earlier"
        elif executorch_root() is None:
            return {"path": None, "reason": "executorch is not installed here"}
        else:
            path, how = build_runner(cache_folder()), "built here at the agent's start"
    except (EdgepipeError, OSError) as exc:
        if config.et_runner != "auto":
            raise EdgepipeError(str(exc)) from None
        return {"path": None, "reason": str(exc)}
    return {"path": str(path), "how": how}


class Agent:
    """The agent's state, shared by the request threads."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.artifacts = ArtifactStore(config.data)
        self.jobs = JobStore(config.data)
        self.et_runner = resolve_et_runner(config)
        runner = self.et_runner["path"]
        self.queue = JobQueue(self.artifacts, self.jobs, Path(runner) if runner else None,
                              self.et_runner.get("reason", ""))
        self._info: dict[str, Any] | None = None

    def info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = {**device_info(), "agent_version": __version__,
                          "max_upload_mb": self.config.max_upload_mb,
                          "executorch_runner": self.et_runner}
            return self._info
        # clocks and heat change between calls: read them fresh, keep the rest
        return {**self._info, "cpu_frequencies": cpu_frequencies(),
                "temperatures_c": temperatures(), "memory": memory_mb()}


class _Body:
    """The request body (``wsgi.input``), counting what has been read. A read that times out
    (no byte for the idle timeout) or breaks is an ApiError, so that the upload's temp file is
    removed on the way out."""

    def __init__(self, raw: Any, length: int | None, idle_timeout: float) -> None:
        self.raw, self.length, self.count = raw, length, 0
        self.idle_timeout = idle_timeout

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.raw.read(n)
        except TimeoutError:
            raise ApiError(408, f"no data for {self.idle_timeout:g} s after {self.count} "
                                f"bytes: the request was cut; send it again") from None
        except OSError as exc:
            raise ApiError(400, f"the connection broke after {self.count} bytes "
                                f"({exc})") from None
        self.count += len(data)
        return data

    @property
    def unread(self) -> int:
        return max(0, (self.length or 0) - self.count)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: _Body


class AgentApp:
    """The agent's WSGI application: routes, token, JSON in and out."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items()
                   if k.startswith("HTTP_")}
        for key in ("CONTENT_LENGTH", "CONTENT_TYPE"):
            if environ.get(key):
                headers[key.replace("_", "-").lower()] = environ[key]
        try:
            length: int | None = int(headers["content-length"])
        except (KeyError, ValueError):
            length = None
        body = _Body(environ["wsgi.input"], length, self.agent.config.idle_timeout)
        extra: dict[str, str] = {}
        try:
            request = Request(method, environ.get("PATH_INFO") or "/",
                              _query(environ.get("QUERY_STRING", "")), headers, body)
            name, match = _route(method, request.path)
            if name not in OPEN_HANDLERS:
                self._check_token(request)
            status, payload = getattr(self, f"do_{name}")(request, **match.groupdict())
        except (ApiError, StoreError) as exc:
            status, payload = exc.status, {"error": str(exc)}
            extra = dict(getattr(exc, "headers", {}))
            if not self._drained(body, status):
                extra["Connection"] = "close"  # the rest of the body is not read
        except Exception as exc:  # a bug must not take the agent down: answer and go on
            sys.stderr.write(f"agent: internal error on {method} {environ.get('PATH_INFO')}: "
                             f"{exc!r}\n")
            status = 500
            payload = {"error": f"internal agent error: {type(exc).__name__}: {exc}"}
            extra["Connection"] = "close"
        if isinstance(payload, bytes):
            data, kind = payload, "application/octet-stream"
        else:
            data, kind = json.dumps(payload, indent=1).encode(), "application/json"
        start_response(f"{status} {STATUS_TEXT.get(status, 'Error')}",
                       [("Content-Type", kind), ("Content-Length", str(len(data))),
                        *extra.items()])
        return [] if method == "HEAD" else [data]

    @staticmethod
    def _drained(body: _Body, status: int) -> bool:
        """Read what is left of a refused request's body when small, so that the client
        finishes sending and reads the answer instead of a broken pipe; False when the
        connection must close instead (a stalled, unmeasured, large or refused-as-large
        body)."""
        if status in (408, 411):
            return False
        if body.unread == 0:
            return True
        if status == 413 or body.unread > DRAIN_LIMIT:
            return False
        try:
            while body.unread and body.read(min(body.unread, 1 << 20)):
                pass
        except ApiError:
            return False
        return body.unread == 0

    def _check_token(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        given = header[7:] if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode("utf-8", "replace"),
                                   self.agent.config.token.encode()):
            raise ApiError(401, "missing or wrong token: send `Authorization: Bearer TOKEN` "
                                "(the token the agent was started with)")

    @staticmethod
    def _length(request: Request, limit: int) -> int:
        raw = request.headers.get("content-length")
        if raw is None:
            raise ApiError(411, "send a Content-Length header")
        try:
            length = int(raw)
        except ValueError:
            raise ApiError(400, f"bad Content-Length {raw[:40]!r}") from None
        if length < 0:
            raise ApiError(400, "bad Content-Length")
        if length > limit:
            raise ApiError(413, f"request body of {length / 1e6:.1f} MB is over this agent's "
                                f"limit of {limit / 1e6:.1f} MB (agent option --max-upload-mb)")
        return length

    def _json_body(self, request: Request) -> Any:
        length = self._length(request, MAX_JSON_BYTES)
        try:
            return json.loads(request.body.read(length) or b"null")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the request body is not valid JSON") from None

    # -- endpoints: each returns (status, JSON-able payload or bytes) ---------------------
    def do_health(self, request: Request) -> tuple[int, Any]:
        return 200, {"status": "ok", "agent_version": __version__}

    def do_openapi(self, request: Request) -> tuple[int, Any]:
        return 200, openapi_document(__version__)

    def do_info(self, request: Request) -> tuple[int, Any]:
        return 200, self.agent.info()

    def do_list_artifacts(self, request: Request) -> tuple[int, Any]:
        return 200, {"artifacts": self.agent.artifacts.list()}

    def do_upload(self, request: Request, sha: str) -> tuple[int, Any]:
        name = request.query.get("name")
        if not name:
            raise ApiError(400, "say the file name: PUT /v1/artifacts/SHA256?name=model.tflite")
        length = self._length(request, self.agent.config.max_upload_mb << 20)
        meta, created = self.agent.artifacts.receive(sha, name, request.body, length)
        return (201 if created else 200), meta

    def do_get_artifact(self, request: Request, sha: str) -> tuple[int, Any]:
        return 200, self.agent.artifacts.describe(sha)

    def do_delete_artifact(self, request: Request, sha: str) -> tuple[int, Any]:
        self.agent.artifacts.delete(sha)
        return 200, {"deleted": sha}

    def do_put_manifest(self, request: Request, sha: str) -> tuple[int, Any]:
        self.agent.artifacts.describe(sha)  # 404 before reading a body for nothing
        return 200, self.agent.artifacts.put_manifest(sha, self._json_body(request))

    def do_get_manifest(self, request: Request, sha: str) -> tuple[int, Any]:
        manifest = self.agent.artifacts.manifest(sha)
        if manifest is None:
            raise ApiError(404, f"artifact {sha[:12]}… has no manifest")
        return 200, manifest

    def do_submit_job(self, request: Request) -> tuple[int, Any]:
        job = self.agent.queue.submit(JobSpec.from_dict(self._json_body(request)))
        return 202, job.to_dict()

    def do_list_jobs(self, request: Request) -> tuple[int, Any]:
        return 200, {"jobs": [j.to_dict() for j in self.agent.queue.all()]}

    def do_get_job(self, request: Request, job: str) -> tuple[int, Any]:
        return 200, self.agent.queue.get(job).to_dict()

    def do_get_etdump(self, request: Request, job: str) -> tuple[int, Any]:
        path = self.agent.jobs.folder(job) / "etdump.etdp"
        if not path.is_file():
            raise ApiError(404, f"job {job} has no ETDump (not an ExecuTorch job, not "
                                f"profiled, or not finished)")
        return 200, path.read_bytes()


def _query(text: str) -> dict[str, str]:
    """The query string's parameters (UTF-8, percent-encoded); the last of a repeated one."""
    try:
        raw = text.encode("latin-1").decode("utf-8")  # WSGI hands bytes as latin-1 text
        pairs = parse_qs(raw, encoding="utf-8", errors="strict")
    except (UnicodeError, ValueError):
        raise ApiError(400, "the query string is not UTF-8: percent-encode it") from None
    return {k: v[-1] for k, v in pairs.items()}


def _gateway() -> type:
    """cheroot's WSGI gateway, made to close the connection when the application answers
    ``Connection: close`` (cheroot would otherwise read a refused body to its end)."""
    from cheroot.wsgi import Gateway_10

    class Gateway(Gateway_10):
        def start_response(self, status: str, headers: list, exc_info: Any = None) -> Any:
            if any(k.lower() == "connection" and v.lower() == "close" for k, v in headers):
                self.req.close_connection = True
            return super().start_response(status, headers, exc_info)

    return Gateway


def make_server(config: AgentConfig) -> tuple[Any, Agent]:
    """The cheroot server, bound and listening (``config.port`` 0 picks a free port: read
    ``server.bind_addr``), and the agent's state."""
    from cheroot import wsgi

    agent = Agent(config)
    server = wsgi.Server((config.host, config.port), AgentApp(agent),
                         numthreads=config.threads, max=config.threads,
                         request_queue_size=config.backlog, timeout=config.idle_timeout,
                         server_name=f"edgepipe-agent/{__version__}")
    server.gateway = _gateway()
    server.max_request_header_size = MAX_HEADER_BYTES
    server.max_request_body_size = 0  # the application checks Content-Length itself (413 JSON)
    if config.tls:
        from cheroot.ssl.builtin import BuiltinSSLAdapter

        from .tls import ensure_certificate

        cert, key = ensure_certificate(config.data)
        server.ssl_adapter = BuiltinSSLAdapter(str(cert), str(key))
    try:
        server.prepare()
    except OSError as exc:
        agent.queue.stop()
        raise EdgepipeError(f"cannot listen on {config.host}:{config.port}: "
                            f"{exc.strerror or exc}; pick another --port") from None
    return server, agent


def load_or_create_token(data: Path, token: str | None) -> str:
    """The token given, else the one saved in the data folder, else a new one saved there."""
    path = data / "token"
    if token:
        return token
    if path.is_file():
        return path.read_text().strip()
    data.mkdir(parents=True, exist_ok=True)
    new = new_token()
    write_secret(path, new)
    return new


def serve(config: AgentConfig, ready: Callable[[str], None] | None = None) -> None:
    server, agent = make_server(config)
    host, port = server.bind_addr[:2]
    url = f"{'https' if config.tls else 'http'}://{host}:{port}"
    write_atomic(config.data / "agent.json", json.dumps({"url": url}))
    if ready:
        ready(url)
        runner = agent.et_runner
        print(f"ExecuTorch jobs: lean runner {runner['path']} ({runner['how']})"
              if runner["path"] else
              f"ExecuTorch jobs: Python bindings (no lean runner: {runner['reason']})",
              flush=True)
    try:
        server.serve()
    finally:
        agent.queue.stop()
        server.stop()
