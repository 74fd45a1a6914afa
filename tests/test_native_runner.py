"""The lean ExecuTorch runner (C++, built here against the executorch wheel's runtime, no
torch in its process): the same outputs as the Python bindings, the agent's ExecuTorch jobs
through it with the same per-op table, and every way a runner can be unusable refused in
one line."""

from __future__ import annotations

import os
import shutil
import stat
import sys

import numpy as np
import pytest

from edgepipe.device.native_runner import (
    build_runner,
    check_runner,
    elf_machine,
    run_runner,
)
from edgepipe.device.runtimes import open_runner
from edgepipe.errors import EdgepipeError
from edgepipe.host.local import start_agent, stop_agent

from .conftest import artifact, run_cli
from .test_agent import TOKEN, agent, cli_env  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (apt install g++)")


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    return build_runner(tmp_path_factory.mktemp("runner"))


def test_runner_outputs_equal_the_python_bindings(small_conversion, runner, tmp_path):
    out, report = small_conversion
    x = np.random.default_rng(3).standard_normal((1, 3, 96, 96)).astype(np.float32)
    for precision in ("fp32", "int8"):
        path = out / artifact(report, "executorch", precision)["file"]
        expected = open_runner(path).run(x)[0]
        result = run_runner(runner, path, x, runs=5, warmup=1, output=True)
        np.testing.assert_array_equal(result["output"].reshape(expected.shape), expected)
        assert result["inputs"] == [{"sizes": [1, 3, 96, 96], "dim_order": [0, 2, 3, 1]}]
        assert len(result["times_ms"]) == 5 and min(result["times_ms"]) > 0
        # no libtorch in the process: tens of MB, not the ~730 MB of the bindings
        assert 0 < result["peak_rss_kb"] / 1024 < 200 and result["load_ms"] > 0
    # a time floor adds runs, as the Python measurement's does
    floor = run_runner(runner, path, x, runs=2, warmup=0, min_seconds=0.05)
    assert sum(floor["times_ms"]) >= 50 and len(floor["times_ms"]) > 2
    # a dynamic-size program at a size of its range, as latency-table batches measure
    small = np.zeros((1, 3, 64, 64), np.float32)
    with pytest.raises(EdgepipeError, match="the ExecuTorch runner failed on .*exit 2"):
        run_runner(runner, path, small, runs=1)  # this program is static: 96x96 only


def test_agent_jobs_run_through_the_runner_with_the_same_per_op_table(
        small_conversion, agent, cli_env, tmp_path):  # noqa: F811
    client, _ = agent
    runner_info = client.info()["executorch_runner"]
    assert runner_info["path"] and "built here" in runner_info["how"]
    out, report = small_conversion
    pte = out / artifact(report, "executorch", "int8")["file"]
    tables = {}
    for path in ("native", "python"):
        csv = tmp_path / f"{path}.csv"
        done = run_cli("profile", str(pte), "--device", "loop", "--runs", "20", "--runner",
                       path, "--out", str(csv), env=cli_env)
        assert done.returncode == 0, done.stderr
        words = " ".join(done.stdout.split())
        assert ("lean C++ runner" if path == "native" else "Python bindings") in words
        tables[path] = [line.split(",")[:2] for line in csv.read_text().splitlines()[1:]]
        rss = float(words.split("peak RSS ")[1].split(" MB")[0])
        assert rss < 200 if path == "native" else rss > 300, (path, rss)
    assert len(tables["native"]) > 60 and tables["native"] == tables["python"]


def test_unusable_runners_are_refused_in_one_line(tmp_path, small_conversion):
    fake = tmp_path / "et_runner"
    # an aarch64 ELF header: built for another architecture
    fake.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(9) + (2).to_bytes(2, "little")
                     + (183).to_bytes(2, "little") + bytes(44))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    assert elf_machine(fake) == "aarch64"
    with pytest.raises(EdgepipeError, match="built for aarch64; this device is x86_64"):
        check_runner(fake)
    fake.write_text("#!/bin/sh\necho 'Segmentation fault (core dumped)' >&2\nexit 139\n")
    with pytest.raises(EdgepipeError, match="not an executable program"):
        check_runner(fake)
    fake.chmod(0o644)
    with pytest.raises(EdgepipeError, match="not executable"):
        check_runner(fake)
    with pytest.raises(EdgepipeError, match="does not exist"):
        check_runner(tmp_path / "missing")
    with pytest.raises(EdgepipeError, match="is not a file"):
        check_runner(tmp_path)
    from edgepipe.host.runner_build import build_for

    with pytest.raises(EdgepipeError, match="executorch publishes no wheel for riscv64"):
        build_for("riscv64", tmp_path / "x", tmp_path / "cache")
    assert not (tmp_path / "x").exists()
    # a runner whose output cannot be read: its own last lines, no number made up
    fake.chmod(0o755)
    out, report = small_conversion
    pte = out / artifact(report, "executorch", "fp32")["file"]
    x = np.zeros((1, 3, 96, 96), np.float32)
    with pytest.raises(EdgepipeError, match=r"failed on .*exit 139\): Segmentation fault"):
        run_runner(fake, pte, x)
    fake.write_text("#!/bin/sh\necho 'loading...'\necho '{\"times_ms\": []}'\n")
    with pytest.raises(EdgepipeError, match=r"output cannot be read \(no times_ms\)"):
        run_runner(fake, pte, x)
    # the agent: a runner given that cannot run here stops it with that line; switched off,
    # a job asking for the runner is refused
    done = run_cli("agent", "serve", "--port", "0", "--data", str(tmp_path / "a"),
                   "--et-runner", str(tmp_path / "missing"))
    assert done.returncode == 2 and "does not exist" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    url, proc = start_agent(tmp_path / "b", TOKEN, extra_args=("--et-runner", "off"))
    try:
        from edgepipe.host.client import AgentClient

        client = AgentClient(url, TOKEN)
        assert client.info()["executorch_runner"]["path"] is None
        sha = client.upload(pte)["sha256"]
        with pytest.raises(EdgepipeError, match=r"no lean ExecuTorch runner \(switched off"):
            client.submit(artifact=sha, runner="native", runs=1)
        done = client.wait(client.submit(artifact=sha, runs=2, warmup=0, profile=False)["id"])
        assert "Python bindings" in done["result"]["measured_by"]["words"]
    finally:
        stop_agent(proc)


def test_runner_builds_without_torch_importable(tmp_path):
    """What a Pi has: the executorch wheel installed --no-deps and a compiler; torch absent.
    Building and running the runner must not need it."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from edgepipe.device.native_runner import build_runner\n"
            f"print(build_runner(__import__('pathlib').Path({str(tmp_path)!r})))")
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    built = done.stdout.strip().splitlines()[-1]
    assert os.access(built, os.X_OK) and elf_machine(__import__("pathlib").Path(built))
