"""Shared fixtures: conversions are slow (tens of seconds to minutes each), so each is done
once per run here, and once per content across runs (tests/artifacts.py): a test reads a
session fixture's folder instead of converting again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgepipe.converters.convert import ConvertRequest

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
    home = tmp_path_factory.mktemp("lut") / "home"
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
