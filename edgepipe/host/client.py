"""A client for the agent's HTTP API (standard library only).

An ``https://`` agent with a pinned fingerprint (``agent serve --tls``: a self-signed
certificate) is trusted by that fingerprint alone, checked on every connection before a byte
of the request (and its token) is sent; without a pin, the system's certificate authorities
decide as usual."""

from __future__ import annotations

import hashlib
import http.client
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import EdgepipeError
from ..manifest import Manifest, file_sha256, load_manifest, manifest_path


class CertificateChanged(OSError):
    """The agent's certificate is not the one pinned."""


class _PinnedHTTPS(urllib.request.HTTPSHandler):
    """HTTPS that accepts exactly one certificate: the one with the pinned SHA-256."""

    def __init__(self, fingerprint: str) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False  # the pin, not a name or an authority, says who it is
        context.verify_mode = ssl.CERT_NONE
        super().__init__(context=context)
        self.fingerprint = fingerprint

    def https_open(self, req: urllib.request.Request) -> Any:
        pin = self.fingerprint

        class Pinned(http.client.HTTPSConnection):
            def connect(self) -> None:
                super().connect()
                der = self.sock.getpeercert(binary_form=True) or b""
                seen = hashlib.sha256(der).hexdigest()
                if seen != pin:
                    self.close()
                    raise CertificateChanged(
                        f"the agent at {self.host}:{self.port} shows a certificate with "
                        f"fingerprint {seen[:16]}…, not the pinned {pin[:16]}…: refused (if "
                        f"the agent's certificate was made again, add the device again with "
                        f"the new --fingerprint)")

        return self.do_open(Pinned, req, context=self._context)


def checked_artifact(artifact: Path) -> tuple[Manifest, str]:
    """An artifact's manifest and sha256, once both are known to describe that file."""
    if not artifact.is_file():
        raise EdgepipeError(f"{artifact} is not a file: deploy .tflite and .pte artifacts")
    mpath = manifest_path(artifact)
    if not mpath.is_file():
        raise EdgepipeError(f"{artifact.name} has no manifest ({mpath.name}): write one "
                            f"with `edgepipe manifest init {artifact}`")
    manifest = load_manifest(artifact)
    sha = file_sha256(artifact)
    if manifest.file_sha256 != sha:
        raise EdgepipeError(f"{mpath.name} describes another file (sha256 "
                            f"{manifest.file_sha256[:12]}…): convert again or run "
                            f"`edgepipe manifest init {artifact}`")
    return manifest, sha


class AgentClient:
    def __init__(self, url: str, token: str, timeout: float = 60.0,
                 fingerprint: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._upload_limit: int | None = None
        self._limit_known = False
        handlers = [_PinnedHTTPS(fingerprint)] if fingerprint else []
        self._opener = urllib.request.build_opener(*handlers)

    def _request(self, method: str, path: str, body: bytes | Any = None,
                 content_type: str = "application/json", length: int | None = None,
                 raw: bool = False) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        data = body
        if body is not None and content_type == "application/json":
            data = json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = content_type
            headers["Content-Length"] = str(length if length is not None else len(data))
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers=headers)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]
            except (ValueError, KeyError):
                message = exc.reason
            raise EdgepipeError(f"agent at {self.url} answered {exc.code}: {message}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, CertificateChanged):
                raise EdgepipeError(str(reason)) from None
            raise EdgepipeError(f"cannot reach the agent at {self.url} ({reason}): is "
                                f"`edgepipe agent serve` running there?") from None
        return payload if raw else json.loads(payload)

    # -- calls ---------------------------------------------------------------------------
    def health(self) -> dict:
        return self._request("GET", "/health")

    def info(self) -> dict:
        return self._request("GET", "/v1/info")

    def openapi(self) -> dict:
        """The agent's OpenAPI document."""
        return self._request("GET", "/v1/openapi.json")

    def artifacts(self) -> list[dict]:
        return self._request("GET", "/v1/artifacts")["artifacts"]

    def upload(self, artifact: Path, check_present: bool = True) -> dict:
        """Upload an artifact and its manifest (``<file>.json``); skipped when already there
        (``check_present=False``: the caller knows it is not)."""
        artifact = Path(artifact)
        manifest, sha = checked_artifact(artifact)
        present = {a["sha256"]: a for a in self.artifacts()} if check_present else {}
        if sha not in present:
            size = artifact.stat().st_size
            if not self._limit_known:  # fixed for an agent's life: asked once
                self._upload_limit = self.info().get("max_upload_mb")
                self._limit_known = True
            limit = self._upload_limit
            if limit is not None and size > limit << 20:
                raise EdgepipeError(f"{artifact.name} is {size / 1e6:.1f} MB, over the agent's "
                                    f"upload limit of {limit} MiB: restart the agent with a "
                                    f"larger --max-upload-mb")
            name = quote(artifact.name, safe="")  # spaces, non-ASCII letters, # and ? too
            with open(artifact, "rb") as f:
                self._request("PUT", f"/v1/artifacts/{sha}?name={name}", f,
                              "application/octet-stream", length=size)
        return self._request("PUT", f"/v1/artifacts/{sha}/manifest", asdict(manifest))

    def delete(self, sha: str) -> dict:
        return self._request("DELETE", f"/v1/artifacts/{sha}")

    def submit(self, **spec: Any) -> dict:
        return self._request("POST", "/v1/jobs", spec)

    def job(self, job_id: str) -> dict:
        return self._request("GET", f"/v1/jobs/{job_id}")

    def jobs(self) -> list[dict]:
        return self._request("GET", "/v1/jobs")["jobs"]

    def etdump(self, job_id: str) -> bytes:
        return self._request("GET", f"/v1/jobs/{job_id}/etdump", raw=True)

    def wait(self, job_id: str, on_progress: Callable[[dict], None] | None = None,
             timeout: float = 3600.0, poll: float = 0.2) -> dict:
        """Poll a job until it is done; a failed job raises with the agent's message."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_progress:
                on_progress(job)
            if job["state"] == "done":
                return job
            if job["state"] == "failed":
                raise EdgepipeError(f"job {job_id} failed on the device: {job['error']}")
            if time.monotonic() > deadline:
                raise EdgepipeError(f"job {job_id} is still {job['state']} after {timeout:.0f}"
                                    f" s: collect it later with its id")
            time.sleep(poll)
