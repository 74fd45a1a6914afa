"""``edgepipe device bootstrap --ssh USER@HOST``: install the agent on a Pi and register it.

A wheel of this package is built here and copied over ssh; the device gets a venv with the
``device`` extra (no torch) and a systemd user service. Where there is no systemd user session
(Termux, containers) the agent is started with nohup instead, and the output says so.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import EdgepipeError
from ..manifest import new_token
from .registry import Device, add_device, connect, ssh_base, wait_healthy

UNIT = """[Unit]
Description=edgepipe device agent
After=network-online.target

[Service]
ExecStart={dir}/venv/bin/edgepipe agent serve --data {dir}/data --port {port}{serve}
Restart=on-failure

[Install]
WantedBy=default.target
"""

INSTALL = """set -e
dir={dir}
cd "$dir"
{python} -m venv venv
venv/bin/pip install -q --disable-pip-version-check "$dir/{wheel}[device]"
{executorch}mkdir -p data
(umask 077 && printf %s {token} > data/token)
{cert}mkdir -p "$HOME/.config/systemd/user"
cat > "$HOME/.config/systemd/user/edgepipe-agent.service" <<'UNIT'
{unit}UNIT
if systemctl --user daemon-reload 2>/dev/null \\
        && systemctl --user enable --now edgepipe-agent >/dev/null 2>&1; then
    loginctl enable-linger "$(id -un)" 2>/dev/null || true
    echo "started: systemd user service edgepipe-agent (restarts on failure and at boot)"
else
    nohup "$dir/venv/bin/edgepipe" agent serve --data "$dir/data" --port {port}{serve} \\
        > "$dir/agent.log" 2>&1 < /dev/null &
    echo $! > "$dir/agent.pid"
    echo "started: with nohup, no systemd user session here (not restarted at boot)"
fi
"""


def build_wheel(dest: Path) -> Path:
    """A wheel of this source tree (bootstrap runs from a checkout or an sdist)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise EdgepipeError("bootstrap builds a wheel of edgepipe and needs its source tree: "
                            "run it from a clone of the repository")
    # built from a copy: setuptools leaves build/ and egg-info folders where it builds
    src = dest / "src"
    shutil.copytree(root / "edgepipe", src / "edgepipe",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "--no-build-isolation", "-w", str(dest), str(src)],
                          capture_output=True, text=True)
    wheels = sorted(dest.glob("edgepipe-*.whl"))
    if done.returncode != 0 or not wheels:
        raise EdgepipeError(f"building the edgepipe wheel failed: "
                            f"{(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return wheels[-1]


def _ssh(base: list[str], script: str, stdin: bytes | None = None, what: str = "") -> str:
    done = subprocess.run([*base, script], input=stdin, capture_output=True)
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        raise EdgepipeError(f"{what} on the device failed: {err[-1] if err else done.returncode}")
    return done.stdout.decode(errors="replace")


def bootstrap(target: str, ssh_args: list[str], name: str | None = None,
              token: str | None = None, python: str = "python3",
              remote_dir: str = "~/.edgepipe", agent_port: int = 8765,
              tls: bool = False, executorch: bool = False,
              et_runner: Path | None = None) -> Device:
    """Install and start the agent on ``target`` over ssh and register it: reached through an
    ssh tunnel to its loopback port, or with ``tls`` at ``https://HOST:agent_port`` with the
    certificate made at install pinned by its fingerprint. ``executorch``: also this host's
    executorch version with ``--no-deps`` (no torch: the C++ runtime the lean runner links);
    ``et_runner``: a runner cross-built here, copied to the device and served with."""
    token = token or new_token()
    host = target.split("@")[-1]
    device = Device(name or host.replace(":", "-"), "ssh", target, token, agent_port, ssh_args)
    base = ssh_base(device)
    serve = " --tls --host 0.0.0.0" if tls else ""
    install_et = ""
    if executorch or et_runner is not None:
        from ..device.native_runner import executorch_version

        install_et = ("venv/bin/pip install -q --disable-pip-version-check --no-deps "
                      f"executorch=={executorch_version()}\n")
    if et_runner is not None:
        if not et_runner.is_file():
            raise EdgepipeError(f"runner {et_runner} does not exist: make one with "
                                "`edgepipe device build-runner --arch ARCH -o PATH`")
        serve += f" --et-runner {remote_dir}/bin/et_runner"
    cert = 'venv/bin/edgepipe agent cert --data "$dir/data"\n' if tls else ""
    # ~ must expand on the device, in its user's home
    rdir = remote_dir.replace("~", "$HOME", 1) if remote_dir.startswith("~") else \
        shlex.quote(remote_dir)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = build_wheel(Path(tmp))
        print(f"built {wheel.name}; copying to {target}:{remote_dir}", flush=True)
        _ssh(base, f'mkdir -p "{rdir}" && cat > "{rdir}/{wheel.name}"', wheel.read_bytes(),
             "copying the wheel")
        if et_runner is not None:
            _ssh(base, f'mkdir -p "{rdir}/bin" && cat > "{rdir}/bin/et_runner" && '
                       f'chmod +x "{rdir}/bin/et_runner"', et_runner.read_bytes(),
                 "copying the runner")
    script = INSTALL.format(dir=f'"{rdir}"' if rdir.startswith("$HOME") else rdir,
                            python=shlex.quote(python), wheel=wheel.name,
                            token=shlex.quote(token), port=agent_port, serve=serve, cert=cert,
                            executorch=install_et,
                            unit=UNIT.format(port=agent_port, serve=serve,
                                             dir="%h" + remote_dir[1:]
                                             if remote_dir.startswith("~") else remote_dir))
    print("installing the agent (venv, the device extra) ...", flush=True)
    said = _ssh(base, "sh -s", script.encode(), "installing the agent").strip()
    print("\n".join(line for line in said.splitlines() if not line.startswith("fingerprint ")),
          flush=True)
    if tls:
        pin = next((line.split()[1] for line in said.splitlines()
                    if line.startswith("fingerprint ")), None)
        if pin is None:
            raise EdgepipeError("the agent's certificate was not made on the device: run "
                                "`edgepipe agent cert` there to see why")
        device = Device(device.name, "url", f"https://{host}:{agent_port}", token, agent_port,
                        fingerprint=pin)
        print(f"certificate fingerprint {pin}: pinned", flush=True)
    add_device(device)
    with connect(device) as client:
        if tls:  # no tunnel that waits for it: wait for the agent's first answer here
            wait_healthy(client, None, f"the agent at {device.target}")
        info = client.info()
    print(f"registered device {device.name}: {info['cpu_model']}, {info['cores']} cores, "
          f"runtimes {', '.join(info['runtimes']) or 'none'}")
    return device
