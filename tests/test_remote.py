"""The agent reached the ways a real device is: through a real sshd, and on aarch64.

sshd: Debian's openssh-server started by the test on a loopback port with keys made for it.
aarch64: an arm64 Debian Python with the aarch64 wheels, run under qemu-aarch64-static
(software emulation, ~100x slower: it proves the device side works on ARM, not its speed).
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgepipe.errors import EdgepipeError
from edgepipe.host.client import AgentClient
from edgepipe.host.local import start_agent, stop_agent
from edgepipe.host.registry import free_port

from .conftest import artifact, run_cli

TOKEN = "remote-token"
REPO = Path(__file__).resolve().parent.parent


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {proc.stderr.read().decode()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("sshd did not listen")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    binary = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(binary).exists() or not shutil.which("ssh-keygen"):
        pytest.skip("openssh-server is not installed (.ci/run installs it)")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)],
                       check=True)
    shutil.copy(d / "user_key.pub", d / "authorized_keys")
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"PidFile {d / 'sshd.pid'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nAllowTcpForwarding yes\n")
    proc = subprocess.Popen([binary, "-D", "-e", "-f", str(d / "sshd_config")],
                            stderr=subprocess.PIPE)
    _wait_port(port, proc)
    yield port, d / "user_key"
    proc.terminate()
    proc.wait()


def test_deploy_and_profile_through_a_real_sshd(small_conversion, sshd, tmp_path):
    """The agent listens on loopback only; the host reaches it through an ssh tunnel."""
    out, report = small_conversion
    ssh_port, key = sshd
    url, agent = start_agent(tmp_path / "data", TOKEN)
    try:
        agent_port = int(url.rsplit(":", 1)[1])
        env = {"EDGEPIPE_HOME": str(tmp_path / "home")}
        done = run_cli("device", "add", "pi", "--ssh", f"{getpass.getuser()}@127.0.0.1",
                       "--ssh-port", str(ssh_port), "--identity", str(key),
                       "--ssh-option", "StrictHostKeyChecking=no",
                       "--ssh-option", "UserKnownHostsFile=/dev/null",
                       "--agent-port", str(agent_port), "--token", TOKEN, env=env)
        assert done.returncode == 0, done.stderr
        done = run_cli("deploy", str(out), "--device", "pi", env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("deployed ") == 4
        direct = AgentClient(url, TOKEN)
        assert len(direct.artifacts()) == 4
        info = run_cli("device", "info", "pi", "--json", env=env)
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout)["fingerprint"] == direct.info()["fingerprint"]
        words = run_cli("device", "info", "pi", env=env)  # the identity, field by field
        assert words.returncode == 0 and direct.info()["identity_words"] in words.stdout
        assert "fingerprint " + direct.info()["fingerprint"] in words.stdout
        tflite = out / artifact(report, "tflite", "int8")["file"]
        done = run_cli("profile", str(tflite), "--device", "pi", "--runs", "5", env=env)
        assert done.returncode == 0, done.stderr
        assert direct.jobs()[-1]["result"]["latency"]["count"] == 5
        # a wrong key: the tunnel fails with ssh's own reason, in one line
        run_cli("device", "add", "bad", "--ssh", "nobody-here@127.0.0.1", "--ssh-port",
                str(ssh_port), "--identity", str(key), "--ssh-option",
                "StrictHostKeyChecking=no", "--ssh-option", "UserKnownHostsFile=/dev/null",
                "--agent-port", str(agent_port), "--token", TOKEN, env=env)
        bad = run_cli("deploy", str(out), "--device", "bad", env=env)
        assert bad.returncode == 2 and "ssh tunnel to nobody-here@127.0.0.1 failed" in bad.stderr
        assert "Traceback" not in bad.stderr
    finally:
        stop_agent(agent)


def test_runners_over_a_real_sshd_without_an_agent(small_conversion, sshd, tmp_path):
    """No agent: the lean ExecuTorch runner (built here) copied over scp and run over ssh."""
    if shutil.which("g++") is None:
        pytest.skip("needs g++ to build the lean runner")
    from edgepipe.device.native_runner import build_runner

    out, report = small_conversion
    ssh_port, key = sshd
    runner = tmp_path / "runners" / "et_runner"
    runner.parent.mkdir()
    shutil.copy2(build_runner(tmp_path / "built"), runner)
    env = {"EDGEPIPE_HOME": str(tmp_path / "home")}
    work = tmp_path / "device-work"
    done = run_cli("device", "add", "bare", "--ssh", f"{getpass.getuser()}@127.0.0.1",
                   "--ssh-port", str(ssh_port), "--identity", str(key),
                   "--ssh-option", "StrictHostKeyChecking=no",
                   "--ssh-option", "UserKnownHostsFile=/dev/null",
                   "--runner", str(runner), "--work-dir", str(work), env=env)
    assert done.returncode == 0, done.stderr
    pte = out / artifact(report, "executorch", "int8")["file"]
    table = tmp_path / "ops.csv"
    done = run_cli("profile", str(pte), "--device", "bare", "--runs", "10", "--out",
                   str(table), env=env)
    assert done.returncode == 0, done.stderr
    words = " ".join(done.stdout.split())
    assert "lean C++ runner et_runner" in words and "over ssh" in words and "no agent" in words
    assert len(table.read_text().splitlines()) > 60 and not work.exists()
    tflite = out / artifact(report, "tflite", "int8")["file"]
    done = run_cli("profile", str(tflite), "--device", "bare", env=env)
    assert done.returncode == 2 and "has no runner for" in done.stderr


def aarch64_python() -> tuple[list[str], dict[str, str]]:
    """The arm64 Python under qemu (built once, cached), and the environment it needs."""
    qemu = shutil.which("qemu-aarch64-static")
    if qemu is None:
        pytest.skip("qemu-user-static is not installed (.ci/run installs it)")
    cache = Path(os.environ.get("EDGEPIPE_AARCH64_CACHE",
                                Path.home() / ".cache" / "edgepipe-tests" / "aarch64"))
    subprocess.run([str(REPO / "tests" / "aarch64" / "build_rootfs.sh"), str(cache)],
                   check=True, env={**os.environ, "PYTHON": sys.executable})
    root = cache / "rootfs"
    python = [qemu, "-L", str(root), str(root / "usr" / "bin" / "python3.11")]
    env = {"PYTHONPATH": f"{cache / 'site'}:{REPO}", "PYTHONNOUSERSITE": "1",
           "EDGEPIPE_WORKER_PYTHON": " ".join(python)}
    return python, env


@pytest.mark.slow
def test_agent_on_aarch64_under_emulation(small_conversion, tmp_path):
    out, report = small_conversion
    python, env = aarch64_python()
    url, agent = start_agent(tmp_path / "data", TOKEN, python=python, env=env, timeout=300)
    try:
        client = AgentClient(url, TOKEN, timeout=300)
        info = client.info()
        assert info["machine"] == "aarch64"
        assert info["runtimes"] == {"litert": "ai-edge-litert 2.1.6"}  # no torch, no ExecuTorch
        sha = client.upload(out / artifact(report, "tflite", "int8")["file"])["sha256"]
        job = client.wait(client.submit(artifact=sha, warmup=1, runs=5)["id"], timeout=900,
                          poll=1.0)
        assert job["result"]["latency"]["count"] == 5 and job["result"]["runtime"] == "litert"
        # 2.1.x's libLiteRt.so has no profiler option this reads: a reason, no numbers
        per_op = job["result"]["per_op"]
        assert not per_op["available"] and "ops" not in per_op
        assert per_op["reason"].startswith("per-op not available because ai-edge-litert 2.1.6 "
                                           "is older than 2.2")
        pte = client.upload(out / artifact(report, "executorch", "int8")["file"])["sha256"]
        with pytest.raises(EdgepipeError, match="executorch is not installed on this device"):
            client.submit(artifact=pte)
    finally:
        stop_agent(agent)


@pytest.mark.slow
def test_lean_runner_cross_built_answers_on_aarch64_under_emulation(small_conversion, tmp_path):
    """The Pi route without a compiler there: the runner cross-built here (Debian's
    aarch64-linux-gnu-g++, the aarch64 executorch wheel's lib/ and include/), executorch
    installed on the "device" with --no-deps (no torch), ExecuTorch jobs through the runner."""
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("g++-aarch64-linux-gnu is not installed (.ci/run installs it)")
    from edgepipe.device.native_runner import elf_machine, executorch_version
    from edgepipe.host.runner_build import build_for

    python, env = aarch64_python()
    cache = Path(env["PYTHONPATH"].split(":")[0]).parent
    version = executorch_version()
    site = cache / f"site-executorch-{version}"
    if not (site / "executorch" / "lib").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(site),
                        "--no-deps", "--only-binary=:all:", "--platform",
                        "manylinux_2_28_aarch64", "--implementation", "cp", "--python-version",
                        "3.11", f"executorch=={version}"], check=True)
    runner = build_for("aarch64", tmp_path / "et_runner", cache)
    assert elf_machine(runner) == "aarch64"
    qemu, root = python[0], python[2]
    env = {**env, "PYTHONPATH": f"{site}:{env['PYTHONPATH']}",
           "EDGEPIPE_RUNNER_PREFIX": f"{qemu} -L {root}"}
    url, agent = start_agent(tmp_path / "data", TOKEN, python=python, env=env, timeout=300,
                             extra_args=("--et-runner", str(runner)))
    try:
        client = AgentClient(url, TOKEN, timeout=300)
        info = client.info()
        assert info["machine"] == "aarch64" and "executorch" in info["runtimes"]
        assert info["executorch_runner"]["path"] == str(runner)
        out, report = small_conversion
        sha = client.upload(out / artifact(report, "executorch", "fp32")["file"])["sha256"]
        job = client.wait(client.submit(artifact=sha, warmup=1, runs=3, profile_runs=2)["id"],
                          timeout=900, poll=1.0)
        result = job["result"]
        assert result["measured_by"]["path"] == "native" and result["latency"]["count"] == 3
        assert result["per_op"]["available"] and len(result["per_op"]["profiled_ms"]) == 2
        assert len(client.etdump(job["id"])) > 1000  # the aarch64 runner's ETDump
        assert 0 < result["memory"]["peak_rss_mb"] < 200
    finally:
        stop_agent(agent)


def _bootstrap(sshd, agent_port: int, remote: Path, env: dict[str, str], *extra: str):
    """`device bootstrap` over the test's sshd as device "pi", host keys not checked."""
    ssh_port, key = sshd
    return run_cli("device", "bootstrap", "--ssh", f"{getpass.getuser()}@127.0.0.1",
                   "--ssh-port", str(ssh_port), "--identity", str(key),
                   "--ssh-option", "StrictHostKeyChecking=no",
                   "--ssh-option", "UserKnownHostsFile=/dev/null",
                   "--agent-port", str(agent_port), "--remote-dir", str(remote),
                   "--name", "pi", *extra, env=env)


def test_bootstrap_installs_a_working_agent_over_ssh(small_conversion, sshd, tmp_path):
    """A wheel of this tree, a venv with the device extra, the agent started, registered."""
    out, report = small_conversion
    remote = tmp_path / "remote"
    env = {"EDGEPIPE_HOME": str(tmp_path / "home")}
    agent_port = free_port()
    try:
        done = _bootstrap(sshd, agent_port, remote, env)
        assert done.returncode == 0, done.stderr
        assert "registered device pi" in done.stdout
        assert (remote / "venv" / "bin" / "edgepipe").is_file()
        assert not (REPO / "build").exists()  # the wheel is built from a copy
        done = run_cli("profile", str(out / artifact(report, "tflite", "int8")["file"]),
                       "--device", "pi", "--runs", "5", env=env)
        assert done.returncode == 0, done.stderr
        assert "median" in done.stdout
    finally:
        _stop_bootstrapped(remote)


def _stop_bootstrapped(remote: Path) -> None:
    """Stop the agent bootstrap started: by the pid it left when started with nohup, else the
    systemd user service it installed (the test's own unit replaced any earlier one)."""
    pid_file = remote / "agent.pid"
    if pid_file.is_file():
        subprocess.run(["kill", pid_file.read_text().strip()])
    elif shutil.which("systemctl"):
        subprocess.run(["systemctl", "--user", "disable", "--now", "edgepipe-agent"],
                       capture_output=True)


def test_bootstrap_with_tls_registers_a_pinned_https_agent(sshd, tmp_path):
    from edgepipe.device.tls import certificate_fingerprint

    remote = tmp_path / "remote"
    env = {"EDGEPIPE_HOME": str(tmp_path / "home")}
    agent_port = free_port()
    try:
        done = _bootstrap(sshd, agent_port, remote, env, "--tls")
        assert done.returncode == 0, done.stderr
        pin = certificate_fingerprint(remote / "data" / "tls" / "cert.pem")
        assert f"certificate fingerprint {pin}: pinned" in done.stdout
        device = json.loads((tmp_path / "home" / "devices.json").read_text())["pi"]
        assert device["kind"] == "url" and device["fingerprint"] == pin
        assert device["target"] == f"https://127.0.0.1:{agent_port}"
        info = run_cli("device", "info", "pi", "--json", env=env)
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout)["cores"] >= 1
    finally:
        _stop_bootstrapped(remote)
