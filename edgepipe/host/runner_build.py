"""The lean ExecuTorch runner built on the host for a device: here, or cross-built for another
architecture (``edgepipe device build-runner --arch aarch64``) against that architecture's
executorch wheel (its ``lib/`` and ``include/``, taken from PyPI's manylinux wheel) with
Debian's cross-compiler (``g++-aarch64-linux-gnu``). The device then needs the same executorch
version installed with ``--no-deps`` (its libraries), not a compiler.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..device.native_runner import build_runner, compile_command, executorch_version
from ..errors import EdgepipeError

WHEEL_PLATFORMS = {"aarch64": ("manylinux_2_28_aarch64", "manylinux2014_aarch64"),
                   "x86_64": ("manylinux_2_28_x86_64", "manylinux2014_x86_64")}


def wheel_runtime(arch: str, version: str, cache: Path) -> Path:
    """The executorch package folder (``lib/``, ``include/``) of ``version`` for ``arch``,
    downloaded once into ``cache``."""
    root = cache / f"executorch-{version}-{arch}" / "executorch"
    if (root / "lib").is_dir() and (root / "include").is_dir():
        return root
    if arch not in WHEEL_PLATFORMS:
        raise EdgepipeError(f"no executorch wheel for {arch}: use one of "
                            f"{', '.join(WHEEL_PLATFORMS)}")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", f"executorch=={version}",
               "--no-deps", "--only-binary=:all:", "--implementation", "cp",
               "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}",
               "-d", tmp]
        for tag in WHEEL_PLATFORMS[arch]:
            cmd += ["--platform", tag]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("executorch-*.whl"))
        if done.returncode or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise EdgepipeError(f"cannot download executorch {version} for {arch}: {last}")
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=".partial-"))
        with zipfile.ZipFile(wheels[0]) as z:
            z.extractall(staging, [n for n in z.namelist()
                                   if n.startswith(("executorch/lib/", "executorch/include/"))])
        (staging / "executorch").replace(root)
        shutil.rmtree(staging, ignore_errors=True)
    return root


def build_for(arch: str, out: Path, cache: Path, version: str | None = None) -> Path:
    """A runner for ``arch`` at ``out``: built with this machine's compiler when ``arch`` is
    this machine's, else cross-built with ``{arch}-linux-gnu-g++``. Raises
    :class:`EdgepipeError` naming what is missing (the cross-compiler, the wheel)."""
    version = version or executorch_version()
    if arch == platform.machine():
        built = build_runner(cache / "bin")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, out)
        return out
    if arch not in WHEEL_PLATFORMS:  # before the compiler: without a wheel, no runtime
        raise EdgepipeError(f"executorch publishes no wheel for {arch} (its runtime libraries "
                            f"come from one): build for one of {', '.join(WHEEL_PLATFORMS)}")
    cxx = shutil.which(f"{arch}-linux-gnu-g++")
    if cxx is None:
        raise EdgepipeError(f"no cross-compiler for {arch} here: apt install "
                            f"g++-{arch.replace('_', '-')}-linux-gnu")
    root = wheel_runtime(arch, version, cache)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    done = subprocess.run(compile_command(tmp, root, cxx), capture_output=True, text=True)
    if done.returncode:
        tmp.unlink(missing_ok=True)
        last = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise EdgepipeError(f"cross-building the runner for {arch} failed: {last[:400]}")
    tmp.replace(out)
    return out
