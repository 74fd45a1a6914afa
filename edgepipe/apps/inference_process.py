"""A runner in its own process, for runtimes that hold Python's GIL while they compute.

executorch 1.5.1's Python bindings keep the GIL for the whole of a method's execution
(``Method.execute``, ``Module.forward`` and ``run_method`` alike): a capture thread in the same
process then waits for every inference. In a process of its own the runtime holds only its own
GIL. The input crosses in shared memory (one copy), the small outputs through a pipe. The
process starts with one OpenMP thread, as the agent's workers do
(:data:`~edgepipe.device.runtimes.RUNNER_PROCESS_ENV`): nothing spins beside the runtime.
"""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np

from ..device.bench import rss_mb
from ..device.runtimes import RUNNER_PROCESS_ENV
from ..errors import EdgepipeError


def _serve(path: str, threads: int, conn: Connection, shm_name: str,
           shape: tuple[int, ...]) -> None:
    from ..device.runtimes import open_runner

    try:
        runner = open_runner(path, threads)
    except EdgepipeError as exc:
        conn.send(("error", str(exc)))
        return
    shm = SharedMemory(name=shm_name)
    x = np.ndarray(shape, np.float32, buffer=shm.buf)
    conn.send(("ready", runner.runtime))
    try:
        while conn.recv_bytes() == b"run":
            try:
                conn.send(("ok", runner.run(x)))
            except Exception as exc:  # reported to the caller, which raises it
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    except EOFError:
        pass  # the demo went away
    finally:
        del x
        shm.close()


class ProcessRunner:
    """``run(x)`` like any runner, computed in a child process."""

    def __init__(self, path: Path, threads: int, input_shape: tuple[int, ...]) -> None:
        self.input_shape = tuple(input_shape)
        nbytes = int(np.prod(self.input_shape)) * 4
        self._shm = SharedMemory(create=True, size=nbytes)
        self._x = np.ndarray(self.input_shape, np.float32, buffer=self._shm.buf)
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding threads
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, daemon=True, name="edgepipe-inference",
                                 args=(str(path), threads, child, self._shm.name,
                                       self.input_shape))
        # the child inherits this environment when it starts; libgomp reads it as it loads
        saved = {k: os.environ.get(k) for k in RUNNER_PROCESS_ENV}
        os.environ.update(RUNNER_PROCESS_ENV)
        try:
            self._proc.start()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        child.close()
        status, value = self._receive()
        if status != "ready":
            self.close()
            raise EdgepipeError(value)
        self.runtime = value

    def _receive(self) -> tuple[str, object]:
        try:
            return self._conn.recv()
        except EOFError:
            raise EdgepipeError(f"the inference process ended (exit code "
                                f"{self._proc.exitcode}): the runtime crashed") from None

    def rss_mb(self) -> float:
        """The inference process's resident memory now, in MB (it holds the runtime and, for
        ExecuTorch, libtorch: ~0.5 GB that the demo's own process does not show)."""
        return rss_mb(self._proc.pid)

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        np.copyto(self._x, x.reshape(self.input_shape))
        self._conn.send_bytes(b"run")
        status, value = self._receive()
        if status != "ok":
            raise EdgepipeError(f"inference failed: {value}")
        return value  # type: ignore[return-value]

    def close(self) -> None:
        try:
            self._conn.send_bytes(b"stop")
        except (OSError, ValueError):
            pass
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()
        del self._x
        self._shm.close()
        self._shm.unlink()
