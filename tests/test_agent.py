"""The device agent as a real process on loopback: deploy, profile, per-op, restart, errors."""

from __future__ import annotations

import csv
import http.client
import json
import os
import shutil
import signal
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest

from edgepipe import schemas
from edgepipe.errors import EdgepipeError
from edgepipe.host.client import AgentClient
from edgepipe.host.local import start_agent, stop_agent
from edgepipe.manifest import file_sha256, load_manifest, new_token

from .conftest import artifact, own_cpu, run_cli, wide_input_program
from .test_device_light import BLOCK_TORCH

TOKEN = "test-token-123"


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    data = tmp_path_factory.mktemp("agent")
    url, proc = start_agent(data, TOKEN, extra_args=("--max-upload-mb", "8"))
    yield AgentClient(url, TOKEN), data
    stop_agent(proc)


@pytest.fixture
def cli_env(tmp_path, agent):
    """A device registry with the loopback agent in it, as `edgepipe device add` writes it."""
    env = {"EDGEPIPE_HOME": str(tmp_path / "home")}
    client, _ = agent
    done = run_cli("device", "add", "loop", "--url", client.url, "--token", TOKEN, env=env)
    assert done.returncode == 0, done.stderr
    return env


def raw(client: AgentClient, method: str, path: str, body: bytes | None = None,
        headers: dict | None = None) -> tuple[int, dict]:
    """A request without the client's checks, to send what a bad client would send."""
    url = urlsplit(client.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    payload = json.loads(response.read() or b"{}")
    conn.close()
    return response.status, payload


def auth(**extra: str) -> dict:
    return {"Authorization": f"Bearer {TOKEN}", **extra}


def test_deploy_then_profile_round_trip(small_conversion, agent, cli_env, tmp_path):
    out, report = small_conversion
    client, _ = agent
    done = run_cli("deploy", str(out), "--device", "loop", env=cli_env)
    assert done.returncode == 0, done.stderr
    stored = {a["name"]: a for a in client.artifacts()}
    for fmt in ("executorch", "tflite"):
        for precision in ("fp32", "int8"):
            name = artifact(report, fmt, precision)["file"]
            assert stored[name]["sha256"] == file_sha256(out / name)
            assert stored[name]["has_manifest"]
    assert "skipped" in done.stdout and ".mlpackage" in done.stdout  # Core ML is not shipped

    tflite = out / artifact(report, "tflite", "int8")["file"]
    done = run_cli("profile", str(tflite), "--device", "loop", "--runs", "20", env=cli_env)
    assert done.returncode == 0, done.stderr
    assert "median" in done.stdout and "LiteRT profiler" in done.stdout
    job = client.jobs()[-1]
    assert job["state"] == "done" and job["result"]["latency"]["count"] == 20
    assert job["result"]["latency"]["median_ms"] > 0
    assert job["result"]["memory"]["peak_rss_mb"] > job["result"]["memory"]["rss_before_load_mb"]


def test_executorch_per_op_table(small_conversion, agent, cli_env, tmp_path):
    out, report = small_conversion
    pte = out / artifact(report, "executorch", "int8")["file"]
    assert (out / load_manifest(pte).extra["etrecord"]).is_file()  # written at conversion
    table_csv, table_json = tmp_path / "ops.csv", tmp_path / "ops.json"
    done = run_cli("profile", str(pte), "--device", "loop", "--runs", "20", "--out",
                   str(table_csv), "--out", str(table_json), env=cli_env)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(table_csv.open()))
    assert len(rows) > 30  # every XNNPACK kernel of the network, in order
    assert set(rows[0]) >= {"name", "type", "delegated", "median_ms", "p90_ms", "share"}
    assert all(float(r["median_ms"]) <= float(r["p90_ms"]) for r in rows)
    types = {r["type"] for r in rows}
    assert {"Convolution DWConv", "HardSwish"} <= types or any("Convolution" in t for t in types)
    assert all(r["delegated"] == "True" for r in rows)  # one XNNPACK partition
    share = sum(float(r["share"]) for r in rows)
    # per-op medians of a tiny model: microsecond ops, some timed as 0, and time between ops
    # is not in any op; so they add up to part of the whole run, never to much more than it
    assert 0.2 < share < 1.5, share
    assert max(float(r["median_ms"]) for r in rows) > 0
    assert json.loads(table_json.read_text())[0].keys() == rows[0].keys()
    assert "slowest" in done.stdout and "ETDump" in done.stdout
    assert "profiling overhead" in done.stdout
    # placed through the ETRecord's edge program: XNNPACK's own layout transposes stay unplaced
    placed = [r for r in rows if r["block"]]
    assert len(placed) > len(rows) / 2, len(placed)
    assert {"features.0", "features.1", "classifier"} <= {r["block"] for r in placed}
    client, _ = agent
    per_op = client.jobs()[-1]["result"]["per_op"]
    assert per_op["source"] == "etdump" and len(per_op["unprofiled_ms"]) == 10
    jsonschema.validate(per_op, schemas.PER_OP)


def test_made_tokens_never_start_with_a_dash():
    """A token is pasted after ``--token``; one starting with ``-`` is read by argparse as an
    option (CI saw ``device add … --token -…``: "expected one argument"). 1 in 64 of
    ``secrets.token_urlsafe`` does, so 4,000 tokens would hold ~62 of them."""
    tokens = [new_token(12) for _ in range(4000)]
    assert not [t for t in tokens if t.startswith("-")]
    assert len(set(tokens)) == len(tokens) and all(len(t) == 16 for t in tokens)


def test_openapi_describes_every_route(agent):
    from edgepipe.device.agent import ROUTES

    client, _ = agent
    status, doc = raw(client, "GET", "/v1/openapi.json", headers=auth())
    assert status == 200 and doc["openapi"].startswith("3.")
    documented = {(m.lower(), p) for p, ops in doc["paths"].items() for m in ops}
    for method, pattern, _ in ROUTES:
        path = pattern.pattern.strip("^$").replace("(?P<sha>[^/]+)", "{sha}").replace(
            "(?P<job>[^/]+)", "{job}")
        assert (method.lower(), path) in documented, path


def test_bad_requests_get_clear_4xx_and_the_agent_keeps_serving(small_conversion, agent,
                                                                 tmp_path):
    out, report = small_conversion
    client, data = agent
    tflite = out / artifact(report, "tflite", "int8")["file"]
    sha = file_sha256(tflite)
    body = tflite.read_bytes()

    assert raw(client, "GET", "/health")[0] == 200  # the one call without a token
    status, err = raw(client, "GET", "/v1/info")
    assert status == 401 and "token" in err["error"]
    status, err = raw(client, "GET", "/v1/info", headers={"Authorization": "Bearer nope"})
    assert status == 401

    # oversized: refused from the header, before the body is read
    status, err = raw(client, "PUT", f"/v1/artifacts/{sha}?name=big.tflite",
                      headers=auth(**{"Content-Length": str(9 << 20)}))
    assert status == 413 and "limit" in err["error"]
    big = tmp_path / "big.tflite"
    big.write_bytes(b"\0" * (9 << 20))
    shutil.copy(out / (tflite.name + ".json"), tmp_path / "big.tflite.json")
    manifest = json.loads((tmp_path / "big.tflite.json").read_text())
    manifest["file_sha256"] = file_sha256(big)
    (tmp_path / "big.tflite.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgepipeError, match="over the agent's upload limit of 8 MiB"):
        client.upload(big)  # the client says so before sending 9 MB for nothing

    # names that try to leave the data folder
    for name in ("../../evil.tflite", "..%2F..%2Fevil.tflite", "/etc/passwd.tflite",
                 ".hidden.tflite", "model.sh"):
        status, err = raw(client, "PUT", f"/v1/artifacts/{sha}?name={name}", body, auth())
        assert status == 400 and "invalid artifact name" in err["error"], name
    status, err = raw(client, "GET", "/v1/artifacts/..%2F..%2Fetc", headers=auth())
    assert status == 400 and "sha256" in err["error"]
    assert not list(Path(data).parent.glob("evil*")) and not list(Path(data).glob("evil*"))

    # corrupted in transit: the body does not hash to the name it was sent under
    status, err = raw(client, "PUT", f"/v1/artifacts/{sha}?name=m.tflite", body[:-10] + b"x" * 10,
                      auth())
    assert status == 400 and "corrupted" in err["error"]

    # malformed JSON, unknown fields, unknown runtime, unknown endpoint and method
    assert raw(client, "POST", "/v1/jobs", b"{not json", auth())[0] == 400
    status, err = raw(client, "POST", "/v1/jobs", json.dumps({"artifact": sha, "speed": 1})
                      .encode(), auth())
    assert status == 400 and "speed" in err["error"]
    status, err = raw(client, "POST", "/v1/jobs", json.dumps({"artifact": sha, "threads": 0})
                      .encode(), auth())
    assert status == 400 and "threads" in err["error"]
    client.upload(tflite)
    status, err = raw(client, "POST", "/v1/jobs", json.dumps(
        {"artifact": sha, "runtime": "tensorrt"}).encode(), auth())
    assert status == 400 and "tensorrt" in err["error"]
    status, err = raw(client, "POST", "/v1/jobs", json.dumps(
        {"artifact": sha, "runtime": "executorch"}).encode(), auth())
    assert status == 400 and "cannot run on executorch" in err["error"]
    assert raw(client, "GET", "/v1/nothing", headers=auth())[0] == 404
    assert raw(client, "DELETE", "/v1/jobs", headers=auth())[0] == 405
    status, err = raw(client, "POST", "/v1/jobs", json.dumps({"artifact": "0" * 64}).encode(),
                      auth())
    assert status == 404 and "upload it first" in err["error"]

    # a file that is not a model, uploaded intact: the job fails, clearly; the agent goes on
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x00not a flatbuffer" * 200)
    shutil.copy(out / (tflite.name + ".json"), tmp_path / "junk.tflite.json")
    run = run_cli("manifest", "init", str(junk), "--force")
    assert run.returncode == 2 and "cannot load junk.tflite" in run.stderr
    manifest = json.loads((tmp_path / "junk.tflite.json").read_text())
    manifest["file_sha256"] = file_sha256(junk)
    (tmp_path / "junk.tflite.json").write_text(json.dumps(manifest))
    job = client.submit(artifact=client.upload(junk)["sha256"], runs=3)
    with pytest.raises(EdgepipeError, match="junk.tflite"):
        client.wait(job["id"], timeout=120)
    assert client.job(job["id"])["state"] == "failed"

    assert client.health()["status"] == "ok"
    assert client.info()["cores"] >= 1
    client.delete(sha)
    assert raw(client, "GET", f"/v1/artifacts/{sha}", headers=auth())[0] == 404
    with pytest.raises(EdgepipeError, match="answered 400: affinity"):
        client.submit(artifact=file_sha256(junk), affinity=[4096])


def test_runtime_not_installed_and_agent_without_torch(small_conversion, tmp_path):
    """An agent on a device with no torch (so no ExecuTorch): it starts, and refuses a .pte."""
    out, report = small_conversion
    url, proc = start_agent(tmp_path / "data", TOKEN, prelude=BLOCK_TORCH)
    try:
        client = AgentClient(url, TOKEN)
        assert set(client.info()["runtimes"]) == {"litert"}
        pte = out / artifact(report, "executorch", "fp32")["file"]
        sha = client.upload(pte)["sha256"]
        with pytest.raises(EdgepipeError, match="executorch is not installed on this device"):
            client.submit(artifact=sha)
        tflite = client.upload(out / artifact(report, "tflite", "fp32")["file"])
        job = client.wait(client.submit(artifact=tflite["sha256"], runs=5)["id"], timeout=120)
        assert job["result"]["latency"]["count"] == 5
    finally:
        stop_agent(proc)


def test_finished_job_survives_a_killed_agent(small_conversion, tmp_path):
    out, report = small_conversion
    data = tmp_path / "data"
    url, proc = start_agent(data, TOKEN)
    client = AgentClient(url, TOKEN)
    fingerprint = client.info()["fingerprint"]
    sha = client.upload(out / artifact(report, "tflite", "fp32")["file"])["sha256"]
    cpu = own_cpu()
    finished = client.wait(client.submit(artifact=sha, runs=7, affinity=[cpu])["id"],
                           timeout=120)
    assert finished["result"]["affinity"] == [cpu]  # pinned to that CPU
    os.kill(proc.pid, signal.SIGKILL)  # no clean shutdown
    proc.wait()
    url, proc = start_agent(data, TOKEN)
    try:
        client = AgentClient(url, TOKEN)
        again = client.job(finished["id"])
        assert again["state"] == "done" and again["result"] == finished["result"]
        assert client.artifacts()[0]["sha256"] == sha
        assert client.info()["fingerprint"] == fingerprint  # stable across restarts
    finally:
        stop_agent(proc)


def test_manifest_init_makes_a_foreign_artifact_deployable(small_conversion, agent, tmp_path):
    """A .tflite and a .pte that edgepipe did not convert: no manifest until `manifest init`."""
    out, report = small_conversion
    client, _ = agent
    for fmt, layout in (("tflite", "NHWC"), ("executorch", "NCHW")):
        source = out / artifact(report, fmt, "int8")["file"]
        foreign = tmp_path / f"foreign{source.suffix}"
        shutil.copy(source, foreign)
        with pytest.raises(EdgepipeError, match="manifest init"):
            client.upload(foreign)
        labels = tmp_path / "labels.txt"
        labels.write_text("\n".join(f"class {i}" for i in range(1000)))
        done = run_cli("manifest", "init", str(foreign), "--labels", str(labels))
        assert done.returncode == 0, done.stderr
        manifest = load_manifest(foreign)
        assert manifest.inputs[0].layout == layout and manifest.task == "classification"
        assert manifest.preprocessing.size == (96, 96) and len(manifest.labels) == 1000
        if fmt == "tflite":
            assert manifest.precision == "int8" and manifest.inputs[0].quantization
        job = client.wait(client.submit(artifact=client.upload(foreign)["sha256"], runs=3,
                                        profile=False)["id"], timeout=120)
        assert job["result"]["latency"]["count"] == 3
        again = run_cli("manifest", "init", str(foreign))
        assert again.returncode == 2 and "--force" in again.stderr


def test_a_one_thread_run_has_no_thread_working_beside_it(tmp_path):
    """ExecuTorch's Python bindings load libtorch, whose OpenMP workers copied a large input
    in parallel and then kept 0.27 of a core busy beside a "1 thread" run. The agent starts
    its workers with one OpenMP thread, even where its own environment asks for more."""
    pte = wide_input_program(tmp_path)
    url, proc = start_agent(tmp_path / "data", TOKEN, env={"OMP_NUM_THREADS": "2"})
    try:
        client = AgentClient(url, TOKEN)
        sha = client.upload(pte)["sha256"]
        # a batch, as latency tables measure (a single program's job runs on the C++ runner,
        # which has no torch)
        job = client.wait(client.submit(items=[{"artifact": sha, "shape": [1, 16, 112, 112]}],
                                        threads=1, runs=60, min_runs=60, profile=False)["id"],
                          timeout=120)
        latency = job["result"]["items"][0]
        assert latency["count"] >= 60 and latency["helper_cpu"] is not None
        assert latency["helper_cpu"] < 0.05
        assert not any("another thread" in f for f in job["result"]["device_state"]["flags"])
    finally:
        stop_agent(proc)
