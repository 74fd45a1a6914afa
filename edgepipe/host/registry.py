"""The host's list of devices, and how to reach each one's agent.

``url``: the agent is reachable as is (same machine, or a trusted network).
``ssh``: an ssh tunnel to the agent's loopback port (the agent never listens outside).
``adb``: ``adb forward`` to an Android phone's agent (Termux with a Debian userland).

A device with ``runners`` has no agent: ``ssh`` or ``adb`` then carry files and commands, and
the runners measure (:mod:`edgepipe.host.agentless`). No phone was used to build this: the
tests drive a stand-in ``adb`` that maps ``push``/``shell``/``pull`` to a local folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..device import DEFAULT_PORT
from ..device.tls import normalize_fingerprint
from ..errors import EdgepipeError
from ..manifest import write_secret
from .client import AgentClient

DEVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# the device name of an agent started on this machine for the duration of one command
# (`profile`, `run`, `lut`, `evaluate`, `device info`: every command that takes --device)
LOCAL = "this-machine"


def config_home() -> Path:
    return Path(os.environ.get("EDGEPIPE_HOME") or Path.home() / ".config" / "edgepipe")


@dataclass
class Device:
    name: str
    kind: str  # "url" | "ssh" | "adb"
    target: str  # the URL, USER@HOST, or adb serial
    token: str
    agent_port: int = DEFAULT_PORT  # the agent's port on the device (ssh, adb)
    ssh_options: list[str] = field(default_factory=list)  # extra `ssh` arguments
    fingerprint: str | None = None  # an https agent's pinned certificate (SHA-256, hex)
    runners: list[str] = field(default_factory=list)  # no agent: runner programs (host paths)
    work_dir: str | None = None  # ... and the device's folder they run in


def _registry_path() -> Path:
    return config_home() / "devices.json"


def load_devices() -> dict[str, Device]:
    path = _registry_path()
    if not path.is_file():
        return {}
    try:
        return {name: Device(**d) for name, d in json.loads(path.read_text()).items()}
    except (ValueError, TypeError) as exc:
        raise EdgepipeError(f"device registry {path} is not valid ({exc}): fix or delete "
                            f"it and add the devices again") from None


def save_devices(devices: dict[str, Device]) -> None:
    path = _registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_secret(path, json.dumps({n: asdict(d) for n, d in devices.items()}, indent=2))


def add_device(device: Device) -> None:
    if not DEVICE_NAME.match(device.name):
        raise EdgepipeError(f"invalid device name '{device.name}': letters, digits, . _ -")
    if device.name == LOCAL:
        raise EdgepipeError(f"'{LOCAL}' names the agent edgepipe starts on this machine for "
                            "a command (--device this-machine): give the device another name")
    if device.kind == "url" and not device.target.startswith(("http://", "https://")):
        raise EdgepipeError(f"--url must start with http:// or https://, got {device.target}")
    if device.runners:
        from .agentless import DEFAULT_WORK, runner_runtime

        if device.kind not in ("adb", "ssh"):
            raise EdgepipeError("--runner drives a device without an agent, over --adb SERIAL "
                                "or --ssh USER@HOST (not --url)")
        runtimes: dict[str, str] = {}
        for path in device.runners:
            runtime = runner_runtime(Path(path))[0]
            if runtime in runtimes:
                raise EdgepipeError(f"two runners for {runtime}: {runtimes[runtime]} and "
                                    f"{path}; give one")
            runtimes[runtime] = path
        device.runners = [str(Path(p).resolve()) for p in device.runners]
        device.work_dir = device.work_dir or DEFAULT_WORK[device.kind]
    elif not device.token:
        raise EdgepipeError("--token is required for a device with an agent (or give "
                            "--runner PATH to drive it without one)")
    if device.fingerprint is not None:
        if not (device.kind == "url" and device.target.startswith("https://")):
            raise EdgepipeError("--fingerprint pins an https agent's certificate: give it with "
                                "--url https://HOST:PORT (an agent started with --tls)")
        device.fingerprint = normalize_fingerprint(device.fingerprint)
    devices = load_devices()
    devices[device.name] = device
    save_devices(devices)


def remove_device(name: str) -> None:
    devices = load_devices()
    get_device(name, devices)
    del devices[name]
    save_devices(devices)


def get_device(name: str, devices: dict[str, Device] | None = None) -> Device:
    devices = load_devices() if devices is None else devices
    if name not in devices:
        known = ", ".join(devices) or "none yet"
        raise EdgepipeError(f"no device named '{name}' (known: {known}; and {LOCAL}, an "
                            f"agent started here for the command): add it with "
                            f"`edgepipe device add {name} --url URL --token T`")
    return devices[name]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(client: AgentClient, proc: subprocess.Popen | None, what: str,
                  timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.health()
            return
        except EdgepipeError as exc:
            if proc is not None and proc.poll() is not None:
                err = (proc.stderr.read() if proc.stderr else b"").decode().strip()
                raise EdgepipeError(f"{what} failed: {err.splitlines()[-1] if err else exc}"
                                    ) from None
            if time.monotonic() > deadline:
                raise EdgepipeError(f"{what}: no agent answered within {timeout:.0f} s "
                                    f"({exc})") from None
            time.sleep(0.2)


def stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL: ssh can linger on a forwarded channel it still thinks open."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise EdgepipeError(f"`{tool}` is not installed on this host: install {package}")
    return path


def ssh_base(device: Device) -> list[str]:
    return [_need("ssh", "openssh-client"), "-o", "BatchMode=yes", *device.ssh_options,
            device.target]


@contextmanager
def agentless(device: Device) -> Iterator[Any]:
    """A client that measures on a device without an agent; its work folder is removed on
    exit."""
    from .agentless import AdbTransport, AgentlessClient, SshTransport, runner_runtime

    runners = {}
    for path in device.runners:
        runners[runner_runtime(Path(path))[0]] = Path(path)
    if device.kind == "adb":
        transport: Any = AdbTransport(_need("adb", "Android platform-tools (adb)"),
                                      device.target)
    else:
        transport = SshTransport(ssh_base(device), device.target)
    client = AgentlessClient(device.name, transport, runners, device.work_dir or "")
    try:
        yield client
    finally:
        client.close()


@contextmanager
def connect(device: Device) -> Iterator[AgentClient]:
    """A client for the device's agent, with the tunnel or forward open while in use."""
    if device.runners:
        with agentless(device) as client:
            yield client
        return
    if device.kind == "url":
        client = AgentClient(device.target, device.token, fingerprint=device.fingerprint)
        yield client
        return
    local = free_port()
    client = AgentClient(f"http://127.0.0.1:{local}", device.token)
    if device.kind == "ssh":
        base = ssh_base(device)
        proc = subprocess.Popen(
            [*base[:-1], "-N", "-o", "ExitOnForwardFailure=yes",
             "-L", f"127.0.0.1:{local}:127.0.0.1:{device.agent_port}", base[-1]],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_healthy(client, proc, f"ssh tunnel to {device.target}")
            yield client
        finally:
            stop_process(proc)
    elif device.kind == "adb":
        adb = _need("adb", "Android platform-tools (adb)")
        forward = [adb, "-s", device.target, "forward"]
        result = subprocess.run([*forward, f"tcp:{local}", f"tcp:{device.agent_port}"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise EdgepipeError(f"adb forward to {device.target} failed: "
                                f"{result.stderr.strip() or result.stdout.strip()}")
        try:
            wait_healthy(client, None, f"adb forward to {device.target}")
            yield client
        finally:
            subprocess.run([*forward, "--remove", f"tcp:{local}"], capture_output=True)
    else:
        raise EdgepipeError(f"device {device.name} has unknown kind {device.kind}")
