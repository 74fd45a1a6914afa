"""Shared fixtures: conversions are slow (tens of seconds to minutes each), so each is done
once per run here, and once per content across runs (tests/artifacts.py): a test reads a
session fixture's folder instead of converting again.

The suite runs in parallel (pytest-xdist, ``-n auto --dist loadfile`` in pyproject.toml):
most of its time is single-threaded Python (tracing, lowering, starting a process that imports
torch). Each worker takes whole test files (a file's module- and session-scoped fixtures are
made once), the files known to take longest first (``tests/durations.json``: longest first is
what keeps the last worker from finishing alone). conftest's conversions are shared between
workers through the content-addressed cache (tests/artifacts.py, one lock per entry);
``collected`` through :func:`shared_once`.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if os.environ.get("PYTEST_XDIST_WORKER"):
    # each worker on cores of its own (worker gwN: the N-th slice of the CPUs this process may
    # use), it and every process it starts (agents, runners, the searches' workers): the tests
    # that measure compare times taken minutes apart, and a process of the other worker
    # preempting a measured one made a network ×1.8 slower (the netadapt device check), where a
    # busy process pinned to the other core costs 0-5 % on this project's 2-core hosts
    _cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        list(range(os.cpu_count() or 1))
    _share = len(_cpus) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    _index = int(os.environ["PYTEST_XDIST_WORKER"].removeprefix("gw") or 0)
    _cores = _cpus[_index * _share:(_index + 1) * _share] if _share else _cpus
    if hasattr(os, "sched_setaffinity"):
        for _tid in os.listdir("/proc/self/task"):  # threads a plugin started already too
            os.sched_setaffinity(int(_tid), _cores)
    # torch's own threads (conversion, calibration, training) to match: with a thread per
    # core of the machine, OpenMP's spinning threads oversubscribe the worker's cores
    os.environ.setdefault("OMP_NUM_THREADS", str(len(_cores)))
    if "torch" in sys.modules:  # imported already by a plugin: too late for the variable
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

import pytest
from filelock import FileLock

from edgepipe.converters.convert import ConvertRequest

DURATIONS = Path(__file__).with_name("durations.json")


def own_cpu() -> int:
    """A CPU this test process may pin a measurement to (its worker's first)."""
    return min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0


@pytest.fixture(scope="session", autouse=True)
def _own_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A home of the worker's own: tests never read or write the user's devices and tables,
    and two workers never share a registry (a test that needs another sets its own)."""
    if "EDGEPIPE_HOME" not in os.environ:
        os.environ["EDGEPIPE_HOME"] = str(tmp_path_factory.mktemp("edgepipe-home"))


@pytest.fixture(scope="session", autouse=True)
def _second_worker_converts_first(request: pytest.FixtureRequest, _own_home: None) -> None:
    """The conversion most files read, made first thing by the second worker: the first
    takes the longest file (the latency tables', which builds ``collected``), and a worker
    that reached ``small_conversion`` while the other was making it waited 134 s idle."""
    if os.environ.get("PYTEST_XDIST_WORKER") == "gw1" and any(
            "small_conversion" in item.fixturenames for item in request.session.items):
        request.getfixturevalue("small_conversion")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The files known to take longest first (xdist hands out whole files in this order:
    ``--dist loadfile --no-loadscope-reorder``), each file's tests in their own order; last,
    so that a file is weighed by the tests of this tier only (``-m`` has deselected the rest)."""
    known = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
    weight: dict[str, float] = {}
    for item in items:
        weight[item.location[0]] = weight.get(item.location[0], 0.0) + known.get(item.nodeid, 5.0)
    # deterministic on every worker (xdist checks that they all collected the same order)
    items.sort(key=lambda item: (-weight[item.location[0]], item.location[0]))


_times: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # the controller sees every worker's reports: setup + call + teardown of each test
    _times[report.nodeid] = _times.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    """``EDGEPIPE_TEST_DURATIONS=write``: keep this run's durations for the next runs'
    order (seconds per test; the CPU does not matter, only their ranking)."""
    if os.environ.get("EDGEPIPE_TEST_DURATIONS") == "write" and _times and \
            not os.environ.get("PYTEST_XDIST_WORKER"):
        work = DURATIONS.with_suffix(".tmp")
        work.write_text(json.dumps({k: round(v, 1) for k, v in sorted(_times.items())},
                                   indent=0) + "\n")
        work.replace(DURATIONS)


def shared_once(factory: pytest.TempPathFactory, name: str,
                build: Callable[[Path], Any]) -> Any:
    """``build(folder)`` once for the whole run, its result shared by every xdist worker: the
    first worker to ask builds under a lock, the others wait and read its (pickled) result.
    Without xdist, simply ``build`` in a fresh folder."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(factory.mktemp(name))
    root = Path(factory.getbasetemp()).parent / "shared"  # the run's, above each worker's
    root.mkdir(exist_ok=True)
    done = root / f"{name}.pickle"
    with FileLock(str(root / f"{name}.lock")):
        if not done.is_file():
            folder = root / name
            folder.mkdir()
            work = done.with_suffix(".tmp")
            work.write_bytes(pickle.dumps(build(folder)))
            work.replace(done)
        return pickle.loads(done.read_bytes())


# Narrow and low-resolution: the real converters and runtimes, at a fraction of the cost.
SMALL = dict(model="mobilenet_v3_small", width_mult=0.5, size=96)


@pytest.fixture(scope="session")
def small_conversion(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """MobileNetV3-Small x0.5 @96 to every format, fp32 and int8."""
    from .artifacts import convert_cached

    out = tmp_path_factory.mktemp("convert") / "small"
    report = convert_cached(ConvertRequest(out=out, int8=True, calib_count=16, **SMALL))
    return out, report


@pytest.fixture(scope="session")
def small_segmentation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """LR-ASPP on MobileNetV3-Small x0.5 @128 (random init) to LiteRT, fp32 and int8."""
    from .artifacts import convert_cached

    out = tmp_path_factory.mktemp("convert") / "seg"
    report = convert_cached(ConvertRequest(model="lraspp_mobilenet_v3_small", out=out,
                                           formats=["tflite"], int8=True, width_mult=0.5,
                                           size=128, calib_count=8))
    return out, report


@pytest.fixture(scope="session")
def real_v2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """torchvision's trained ImageNet MobileNetV2 through the real `edgepipe convert` command,
    every format, fp32 and int8 (slow: ~2 minutes)."""
    from .artifacts import convert_cli_cached

    out = tmp_path_factory.mktemp("real_v2") / "v2"
    proc = convert_cli_cached("mobilenet_v2", "--weights", "imagenet", "--int8", "-o", str(out))
    return out, proc


def artifact(report: dict, fmt: str, precision: str) -> dict:
    return next(a for a in report["artifacts"]
                if a["format"] == fmt and a["precision"] == precision)


def run_cli(*args: str, env: dict | None = None, timeout: int = 900,
            prelude: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real ``edgepipe`` command in a subprocess (``prelude`` runs first, in-process)."""
    code = f"import sys\n{prelude}\nfrom edgepipe.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd)


@pytest.fixture(scope="session")
def fp16_conversion(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """MobileNetV3-Small x0.5 @96 to ExecuTorch and LiteRT, fp32 and fp16."""
    from .artifacts import convert_cached

    out = tmp_path_factory.mktemp("convert") / "small_fp16"
    report = convert_cached(ConvertRequest(out=out, fp16=True, formats=["executorch", "tflite"],
                                    calib_count=16, **SMALL))
    return out, report


def wide_input_program(folder: Path) -> Path:
    """A real .pte whose 16x112x112 input (200,704 elements, above ATen's parallel grain of
    32,768) is big enough for libtorch to lay it out on its OpenMP workers."""
    import torch

    from edgepipe.converters import CONVERTERS
    from edgepipe.converters.convert import build_manifest
    from edgepipe.converters.source import source_from_module
    from edgepipe.manifest import save_manifest

    module = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU()).eval()
    src = source_from_module("wide-input", module, [1, 16, 112, 112], None)
    converter = CONVERTERS["executorch"]
    pte = folder / "wide-input.pte"
    save_manifest(build_manifest(src, converter, converter.convert(src, "fp32", [], pte,
                                                                   debug_info=False)), pte)
    return pte


def home_with_programs(home: Path, tmp_path: Path) -> Path:
    """A fresh EDGEPIPE_HOME (``tmp_path/home``) holding ``home``'s converted latency-table
    programs (its ``lut-work``, without the agent's own folder): no conversion again."""
    fresh = tmp_path / "home"
    shutil.copytree(home / "lut-work", fresh / "lut-work", ignore=shutil.ignore_patterns("agent"))
    return fresh


def _collect(home: Path, *extra: str) -> subprocess.Popen:
    code = "import sys\nfrom edgepipe.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, "lut", "collect", "--space", "tiny", "--out",
         str(home / "t.json"), "--calibration", "3", *extra],
        env={**os.environ, "EDGEPIPE_HOME": str(home)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.fixture(scope="session")
def collected(tmp_path_factory):
    """The tiny space's table, collected on a local agent, killed after 6 units and resumed:
    (EDGEPIPE_HOME, table file, the partial table at the kill, the resumed run's stdout).
    Session-wide: its converted programs (EDGEPIPE_HOME/lut-work) serve test_lab too."""
    return shared_once(tmp_path_factory, "lut", _collect_killed_and_resumed)


def _collect_killed_and_resumed(folder: Path) -> tuple[Path, Path, dict, str]:
    home = folder / "home"
    table_file = home / "t.json"
    first = _collect(home, "--batch", "6")
    deadline = time.monotonic() + 1800  # converting every program first: minutes when loaded
    while time.monotonic() < deadline and first.poll() is None:
        if table_file.is_file() and len(json.loads(table_file.read_text())["units"]) >= 6:
            break
        time.sleep(0.2)
    assert first.poll() is None, first.communicate()
    os.killpg(first.pid, signal.SIGKILL)  # the command, its converters and its agent
    first.wait()
    partial = json.loads(table_file.read_text())  # written atomically: whole, readable
    second = _collect(home, "--batch", "6")
    out, err = second.communicate(timeout=900)
    assert second.returncode == 0, err
    return home, table_file, partial, out
