"""The device side (manifest, preprocessing, LiteRT runner) must work without torch."""

import subprocess
import sys

import pytest

from edgepipe.errors import EdgepipeError
from edgepipe.manifest import Manifest, load_manifest, manifest_path, save_manifest

from .conftest import artifact

BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchvision', 'executorch'):
            raise ImportError(f'{name} is blocked: the device has no torch')
sys.meta_path.insert(0, _NoTorch())
"""


def test_device_modules_import_and_run_without_torch(small_conversion):
    out, report = small_conversion
    tflite = out / artifact(report, "tflite", "int8")["file"]
    code = BLOCK_TORCH + f"""
from edgepipe.device.runtimes import open_runner, installed_runtimes
from edgepipe.device.bench import measure_latency
from edgepipe.manifest import load_manifest
from edgepipe.preprocess import preprocess
import numpy as np
m = load_manifest({str(tflite)!r})
x = preprocess(np.full((120, 160, 3), 128, np.uint8), m.preprocessing)
runner = open_runner({str(tflite)!r})
y = runner.run(x)[0]
assert y.shape == (1, 1000) and y.dtype == np.float32
assert measure_latency(runner, x, 1, 3).count == 3
assert 'litert' in installed_runtimes()
assert not any(k.split('.')[0] == 'torch' for k in sys.modules)
print('ok')
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")


def test_manifest_round_trip_and_atomic_write(small_conversion, tmp_path):
    out, report = small_conversion
    path = out / artifact(report, "executorch", "fp32")["file"]
    manifest = load_manifest(path)
    assert isinstance(manifest, Manifest)
    copy = tmp_path / path.name
    save_manifest(manifest, copy)
    assert load_manifest(copy) == manifest
    assert [p.name for p in tmp_path.iterdir()] == [manifest_path(copy).name]  # no temp left
    # the mode open() would give, not the temporary file's 0o600 (a newcomer's manifests and
    # reports were readable by their owner alone)
    import os

    for mask, expected in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        old = os.umask(mask)
        try:
            save_manifest(manifest, copy)
        finally:
            os.umask(old)
        assert manifest_path(copy).stat().st_mode & 0o777 == expected


def test_invalid_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "m.tflite.json").write_text('{"format": "tflite"}')
    with pytest.raises(EdgepipeError, match="is not valid"):
        load_manifest(tmp_path / "m.tflite")
    with pytest.raises(EdgepipeError, match="no manifest"):
        load_manifest(tmp_path / "other.tflite")


def test_executorch_thread_pool_logs_are_left_out_of_stderr_and_nothing_else(small_conversion):
    out, report = small_conversion
    pte = out / artifact(report, "executorch", "fp32")["file"]
    code = f"""
import os, sys
from pathlib import Path
from edgepipe.device.runtimes import THREADPOOL_LOG, ExecuTorchRunner, native_stderr_without
with native_stderr_without(THREADPOOL_LOG):
    os.write(2, b"[threadpool.cpp:66] Resetting threadpool to 9 threads.\\n")
    os.write(2, b"a native warning a user must see\\n")
    print("a Python warning too", file=sys.stderr)
ExecuTorchRunner(Path({str(pte)!r}), 1)
ExecuTorchRunner(Path({str(pte)!r}), 2)
print("loaded twice")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded twice" in done.stdout
    # before: "[cpuinfo_utils.cpp:125] CPU info and manual query on # of cpus dont match."
    # and the rest of the thread pool's info lines, on every runner's start
    assert "cpuinfo_utils.cpp" not in done.stderr and "threadpool.cpp" not in done.stderr
    assert "a native warning a user must see" in done.stderr
    assert "a Python warning too" in done.stderr
