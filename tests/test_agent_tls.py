"""Secrets: the token and the device registry are owner-only from their first byte; an agent
started with --tls serves HTTPS with its own certificate, pinned by fingerprint on the host."""

from __future__ import annotations

import os
import shutil
import stat

import pytest

from edgepipe.device.agent import load_or_create_token
from edgepipe.device.tls import certificate_fingerprint
from edgepipe.errors import EdgepipeError
from edgepipe.host.client import AgentClient
from edgepipe.host.local import start_agent, stop_agent

from .conftest import run_cli

TOKEN = "tls-token-456"


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_token_file_is_owner_only_even_with_an_open_umask(tmp_path):
    old = os.umask(0)  # what would make a plain open() write a world-readable file
    try:
        token = load_or_create_token(tmp_path / "agent", None)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "agent" / "token") == 0o600
    assert load_or_create_token(tmp_path / "agent", None) == token  # kept across starts
    assert [p.name for p in (tmp_path / "agent").iterdir()] == ["token"]  # no temp left


@pytest.fixture(scope="module")
def tls_agent(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    data = tmp_path_factory.mktemp("tls")
    url, proc = start_agent(data, TOKEN, extra_args=("--tls",))
    yield url, data
    stop_agent(proc)


def test_tls_agent_is_reached_by_its_pinned_fingerprint_only(tls_agent, tmp_path):
    url, data = tls_agent
    assert url.startswith("https://127.0.0.1:")
    assert _mode(data / "tls" / "key.pem") == 0o600
    pin = certificate_fingerprint(data / "tls" / "cert.pem")
    assert AgentClient(url, TOKEN, fingerprint=pin).health()["status"] == "ok"
    with pytest.raises(EdgepipeError, match="CERTIFICATE_VERIFY_FAILED"):
        AgentClient(url, TOKEN).info()  # self-signed: no authority vouches for it

    env = {"EDGEPIPE_HOME": str(tmp_path / "home")}
    colons = ":".join(pin[i:i + 2] for i in range(0, 64, 2)).upper()  # as openssl prints it
    done = run_cli("device", "add", "pi", "--url", url, "--token", TOKEN,
                   "--fingerprint", colons, env=env)
    assert done.returncode == 0, done.stderr
    assert _mode(tmp_path / "home" / "devices.json") == 0o600
    info = run_cli("device", "info", "pi", "--json", env=env)
    assert info.returncode == 0 and '"cores"' in info.stdout, info.stderr

    # the same device name and token, another certificate at the URL: refused in one line
    other = tmp_path / "other"
    url2, proc = start_agent(other, TOKEN, extra_args=("--tls",))
    try:
        assert certificate_fingerprint(other / "tls" / "cert.pem") != pin
        run_cli("device", "add", "pi", "--url", url2, "--token", TOKEN, "--fingerprint", pin,
                env=env)
        changed = run_cli("device", "info", "pi", env=env)
    finally:
        stop_agent(proc)
    assert changed.returncode == 2
    lines = changed.stderr.strip().splitlines()
    assert len(lines) == 1 and "not the pinned" in lines[0] and "Traceback" not in lines[0]

    refused = run_cli("device", "add", "x", "--url", "http://127.0.0.1:1", "--token", TOKEN,
                      "--fingerprint", pin, env=env)
    assert refused.returncode == 2 and "https" in refused.stderr
