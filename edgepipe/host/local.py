"""An agent on this machine, as a real process on loopback (``edgepipe run`` with no device,
tests, benchmarks)."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import EdgepipeError
from ..manifest import new_token
from .client import AgentClient
from .registry import LOCAL, connect, get_device, stop_process

__all__ = ["LOCAL", "local_agent", "open_device", "start_agent", "stop_agent"]

READY = "edgepipe agent listening on "


def start_agent(data: Path, token: str, python: list[str] | None = None,
                env: dict[str, str] | None = None, timeout: float = 60.0,
                extra_args: tuple[str, ...] = (), prelude: str = ""
                ) -> tuple[str, subprocess.Popen]:
    """Start ``edgepipe agent serve --port 0`` and wait for the URL it prints.

    ``python``: the interpreter command (an emulator prefix works); ``prelude``: code run in
    the agent's process before it starts (tests use it to hide packages).
    """
    entry = (["-c", f"import sys\n{prelude}\nfrom edgepipe.cli import main\n"
                    f"sys.exit(main(sys.argv[1:]))"] if prelude else ["-m", "edgepipe.cli"])
    proc = subprocess.Popen(
        [*(python or [sys.executable]), *entry, "agent", "serve", "--port", "0",
         "--data", str(data), *extra_args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, **(env or {}), "EDGEPIPE_AGENT_TOKEN": token})
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        if line.startswith(READY):  # the first line says where it listens
            return line[len(READY):].split()[0], proc
    proc.kill()
    raise EdgepipeError(f"the local agent did not start (exit code {proc.wait()}); run "
                        f"`edgepipe agent serve --data {data}` to see why")


def stop_agent(proc: subprocess.Popen) -> None:
    stop_process(proc, grace=10.0)


@contextmanager
def local_agent(data: Path, token: str | None = None) -> Iterator[tuple[str, str]]:
    """(url, token) of an agent running while the block runs."""
    token = token or new_token(16)
    url, proc = start_agent(data, token)
    try:
        yield url, token
    finally:
        stop_agent(proc)


@contextmanager
def device_client(name: str) -> Iterator[AgentClient]:
    """A client for the device named ``name``: a registered one, or ``LOCAL`` (an agent
    started here for the block, its data in a temporary folder removed after it)."""
    if name != LOCAL:
        with connect(get_device(name)) as client:
            yield client
        return
    with tempfile.TemporaryDirectory(prefix="edgepipe-this-machine-") as tmp, \
            open_device(name, Path(tmp)) as client:
        yield client


@contextmanager
def open_device(name: str, workdir: Path) -> Iterator[AgentClient]:
    """A client for a registered device, or for an agent started here (``LOCAL``) whose data
    folder is ``workdir/agent``."""
    if name == LOCAL:
        with local_agent(workdir / "agent") as (url, token):
            yield AgentClient(url, token)
    else:
        with connect(get_device(name)) as client:
            yield client
