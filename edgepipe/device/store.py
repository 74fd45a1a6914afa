"""The agent's data folder: artifacts by content (sha256) and jobs, all on disk.

Everything is written to a temporary name and renamed into place, so a crash or a killed agent
leaves the old state or the new one, never half a file. Names that arrive over the network
are checked before they touch a path: nothing can be written outside the data folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..manifest import Manifest, write_atomic
from ..schemas import schema_error

SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_NAME_BYTES = 255  # what ext4, FAT and most file systems take as one file name
JOB_ID = re.compile(r"^[0-9a-f]{12}$")
RUNNABLE_SUFFIXES = (".tflite", ".pte")


class StoreError(Exception):
    """A request the store refuses: ``status`` is the HTTP status the agent answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_sha256(sha: str) -> str:
    if not SHA256.match(sha):
        raise StoreError(400, f"'{sha[:80]}' is not a sha256 (64 lowercase hex digits)")
    return sha


def check_artifact_name(name: str) -> str:
    """A file name as it arrived: any UTF-8 text, stored exactly, unless it could leave its
    folder or hide (a separator, a control character such as NUL, a leading dot), is too long
    for a file system, or is not a runnable artifact's."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        size = -1
    problem = ("it is not UTF-8" if size < 0
               else "it contains / or \\" if "/" in name or "\\" in name
               else "it contains a control character" if any(
                   ord(c) < 32 or ord(c) == 127 for c in name)
               else "it starts with a dot" if name.startswith(".")
               else f"it is {size} bytes long, over {MAX_NAME_BYTES}" if size > MAX_NAME_BYTES
               else "it does not end in .tflite or .pte" if not name.endswith(RUNNABLE_SUFFIXES)
               else None)
    if problem:
        raise StoreError(400, f"invalid artifact name {name[:80]!r}: {problem} (any other "
                              f"UTF-8 file name ending in .tflite or .pte is taken as it is)")
    return name


def _remove_temp_files(root: Path) -> None:
    """Remove the temp files of :func:`~edgepipe.manifest.write_atomic` that a killed agent
    left in ``root``'s sub-folders (``.NAME.XXXX.tmp``: never read as data)."""
    for path in root.glob("*/.*.tmp"):
        path.unlink(missing_ok=True)


@dataclass
class ArtifactStore:
    root: Path

    def __post_init__(self) -> None:
        (self.root / "artifacts").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        # what an agent killed mid-upload or mid-write left: never visible, removed at start
        for leftover in (self.root / "tmp").iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
        _remove_temp_files(self.root / "artifacts")

    def folder(self, sha: str) -> Path:
        return self.root / "artifacts" / check_sha256(sha)

    def receive(self, sha: str, name: str, body: BinaryIO, length: int) -> tuple[dict, bool]:
        """Stream an upload to disk, verify its sha256, move it into place.

        Returns (metadata, created). An artifact already stored is kept as it is.
        """
        check_artifact_name(name)
        dest = self.folder(sha)
        staging = Path(tempfile.mkdtemp(prefix="upload-", dir=self.root / "tmp"))
        try:
            digest, remaining = hashlib.sha256(), length
            with open(staging / name, "wb") as f:
                while remaining > 0:
                    chunk = body.read(min(1 << 20, remaining))
                    if not chunk:
                        raise StoreError(400, f"upload ended after {length - remaining} of "
                                              f"{length} bytes: send the whole file")
                    digest.update(chunk)
                    f.write(chunk)
                    remaining -= len(chunk)
            if digest.hexdigest() != sha:
                raise StoreError(400, f"upload of {name} is corrupted: its sha256 is "
                                      f"{digest.hexdigest()[:12]}…, not {sha[:12]}…; upload again")
            meta = {"sha256": sha, "name": name, "size": length, "uploaded": time.time()}
            (staging / "meta.json").write_text(json.dumps(meta))
            if dest.exists():
                return self.describe(sha), False
            os.replace(staging, dest)
            return self.describe(sha), True
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def put_manifest(self, sha: str, data: Any) -> dict:
        """Attach a manifest, validated by :data:`edgepipe.schemas.MANIFEST`, to an artifact."""
        folder = self._existing(sha)
        error = schema_error("Manifest", data)
        if error is not None:
            where, problem = error
            raise StoreError(400, f"not a valid edgepipe manifest ({where or 'manifest'}: "
                                  f"{problem}): write one with `edgepipe manifest init FILE`")
        manifest = Manifest.from_dict(data)
        if manifest.file_sha256 != sha:
            raise StoreError(400, f"the manifest describes file_sha256 "
                                  f"{manifest.file_sha256[:12]}…, not artifact {sha[:12]}…")
        write_atomic(folder / "manifest.json", manifest.to_json())
        return self.describe(sha)

    def _existing(self, sha: str) -> Path:
        folder = self.folder(sha)
        if not (folder / "meta.json").is_file():
            raise StoreError(404, f"no artifact {sha[:12]}… on this device: upload it first")
        return folder

    def describe(self, sha: str) -> dict:
        folder = self._existing(sha)
        meta = json.loads((folder / "meta.json").read_text())
        return {**meta, "has_manifest": (folder / "manifest.json").is_file()}

    def path(self, sha: str) -> Path:
        folder = self._existing(sha)
        return folder / json.loads((folder / "meta.json").read_text())["name"]

    def manifest(self, sha: str) -> dict | None:
        path = self._existing(sha) / "manifest.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def list(self) -> list[dict]:
        shas = [p.name for p in (self.root / "artifacts").iterdir() if SHA256.match(p.name)]
        return sorted((self.describe(s) for s in shas), key=lambda m: m["uploaded"])

    def delete(self, sha: str) -> None:
        folder = self._existing(sha)
        trash = self.root / "tmp" / f"deleted-{sha}-{os.getpid()}"
        os.replace(folder, trash)  # gone at once for readers, removed after
        shutil.rmtree(trash, ignore_errors=True)


@dataclass
class JobSpec:
    """One benchmark: the artifact, how to run it, and how many times.

    A batch (``items``) measures many artifacts, each at given input shapes, in one worker:
    what a latency table needs (thousands of small programs, one process start).
    """

    artifact: str = ""
    runtime: str | None = None  # default: the artifact's own (by suffix)
    threads: int = 1
    warmup: int = 10
    runs: int = 50  # the fewest timed runs; in a batch: the most runs per item
    min_seconds: float = 0.0  # ... and more until the timed runs add up to this (not batches)
    raw: bool = False  # keep every run's time in the result (``raw_ms``)
    affinity: list[int] | None = None
    profile: bool = True  # a per-operator table where the runtime can make one
    profile_runs: int = 10
    items: list[dict[str, Any]] | None = None  # [{"artifact": SHA256, "shape": [1, C, H, W]}]
    min_runs: int = 20  # batch items stop once their median is known to within stable_pct
    stable_pct: float = 1.0
    max_seconds: float = 5.0  # ... or after this long (per item)
    # ExecuTorch: "native" the lean C++ runner (edgepipe.device.native_runner), "python" the
    # Python bindings, "auto" the runner where the device has one (batches: Python)
    runner: str = "auto"
    kind: str = "benchmark"  # or "evaluate": run on ``images``, return the top-k / masks
    images: list[dict[str, str]] | None = None  # [{"name": ..., "data": base64 file}]
    top_k: int = 5

    @property
    def artifacts(self) -> list[str]:
        return [i["artifact"] for i in self.items] if self.items else [self.artifact]

    @classmethod
    def from_dict(cls, data: Any) -> JobSpec:
        """A job from a request body, validated by :data:`edgepipe.schemas.JOB_SPEC`
        (StoreError 400 naming the field)."""
        if not isinstance(data, dict):
            raise StoreError(400, "a job is a JSON object: {\"artifact\": SHA256, ...}")
        error = schema_error("JobSpec", data)
        if error is not None:
            where, problem = error
            raise StoreError(400, f"job field {where}: {problem}" if where else f"job: {problem}")
        return cls(**data)


@dataclass
class Job:
    id: str
    spec: JobSpec
    state: str = "queued"  # queued | running | done | failed
    progress: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        data = dict(data)
        data["spec"] = JobSpec(**data["spec"])
        return cls(**data)


@dataclass
class JobStore:
    root: Path

    def __post_init__(self) -> None:
        (self.root / "jobs").mkdir(parents=True, exist_ok=True)
        _remove_temp_files(self.root / "jobs")

    def folder(self, job_id: str) -> Path:
        if not JOB_ID.match(job_id):
            raise StoreError(404, f"no job {job_id[:40]}")
        return self.root / "jobs" / job_id

    def save(self, job: Job) -> None:
        folder = self.folder(job.id)
        folder.mkdir(exist_ok=True)
        write_atomic(folder / "job.json", json.dumps(job.to_dict(), indent=1))

    def load(self, job_id: str) -> Job:
        path = self.folder(job_id) / "job.json"
        if not path.is_file():
            raise StoreError(404, f"no job {job_id} on this device")
        return Job.from_dict(json.loads(path.read_text()))

    def all(self) -> list[Job]:
        jobs = []
        for path in (self.root / "jobs").glob("*/job.json"):
            try:
                jobs.append(Job.from_dict(json.loads(path.read_text())))
            except (ValueError, TypeError, KeyError):
                continue  # a job file from another version: skipped, not fatal
        return sorted(jobs, key=lambda j: j.created)
