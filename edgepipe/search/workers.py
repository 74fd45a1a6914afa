"""Where training tasks run: this process, local worker processes, or a Ray cluster.

Proposals and samples are independent, so a step's tasks run side by side. Local workers are
spawned once per search and keep the dataset between tasks; each uses one thread (two workers
on two cores beat one worker with two threads for these small networks). Ray is an optional
extra: ``pip install 'edgepipe[ray]'``, then ``--ray ADDRESS`` (``ray start --head`` prints it).
"""

from __future__ import annotations

import multiprocessing
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import Any

from ..errors import EdgepipeError, missing_extra
from .train import TrainResult, TrainTask, run_task

OnDone = Callable[[TrainResult], None]


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class Runner:
    """Runs tasks and returns their results in task order."""

    name = "this process"

    def run(self, tasks: list[TrainTask], on_done: OnDone | None = None) -> list[TrainResult]:
        results = []
        for task in tasks:
            results.append(run_task(task))
            if on_done:
                on_done(results[-1])
        return results

    def close(self) -> None:
        pass


class LocalPool(Runner):
    def __init__(self, workers: int, threads: int = 1) -> None:
        self.name = f"{workers} local worker processes"
        # spawn: a forked torch with threads started is unsafe, and spawn is what macOS uses
        self._pool = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"),
                                         initializer=_worker_init, initargs=(threads,))

    def run(self, tasks: list[TrainTask], on_done: OnDone | None = None) -> list[TrainResult]:
        futures = {self._pool.submit(run_task, t): i for i, t in enumerate(tasks)}
        results: list[Any] = [None] * len(tasks)
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                results[futures[f]] = f.result()
                if on_done:
                    on_done(results[futures[f]])
        return results

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


class RayRunner(Runner):
    def __init__(self, address: str) -> None:
        try:
            import ray
        except ImportError:
            raise missing_extra("ray", "ray") from None
        self._ray = ray
        _check_reachable(address)  # ray.init retries an unreachable address for minutes
        try:
            # the workers import edgepipe from the same environment (as `ray start` sees it)
            ray.init(address=address, logging_level="ERROR", log_to_driver=False,
                     runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EdgepipeError(f"cannot connect to the Ray cluster at {address} ({first}): "
                                "start one with `ray start --head` and pass the address it "
                                "prints") from None
        self.name = f"Ray cluster at {address} ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"
        self._remote = ray.remote(num_cpus=1)(_ray_task)

    def run(self, tasks: list[TrainTask], on_done: OnDone | None = None) -> list[TrainResult]:
        ray = self._ray
        refs = {self._remote.remote(t): i for i, t in enumerate(tasks)}
        results: list[Any] = [None] * len(tasks)
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                results[refs[ref]] = ray.get(ref)
                if on_done:
                    on_done(results[refs[ref]])
        return results

    def close(self) -> None:
        self._ray.shutdown()


def _check_reachable(address: str) -> None:
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and the like: Ray resolves them itself
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as exc:
        raise EdgepipeError(f"cannot connect to the Ray cluster at {address} ({exc}): start "
                            "one with `ray start --head` and pass the address it prints"
                            ) from None


def _ray_task(task: TrainTask) -> TrainResult:
    import torch

    torch.set_num_threads(1)
    return run_task(task)


@contextmanager
def open_runner(workers: int, ray_address: str | None = None) -> Iterator[Runner]:
    """``ray_address`` → the cluster; ``workers`` > 1 → local processes; 1 → this process."""
    if ray_address:
        runner: Runner = RayRunner(ray_address)
    elif workers > 1:
        runner = LocalPool(workers)
    elif workers == 1:
        runner = Runner()
    else:
        raise EdgepipeError(f"--workers must be 1 or more, got {workers}")
    try:
        yield runner
    finally:
        runner.close()

