"""The agent against hostile input: wrong types, undeclared methods, bursts of clients, stalled
uploads, names with spaces and non-ASCII letters. The agent is a real process on loopback; the
artifacts are random bytes (the store does not open them; only jobs do)."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import threading
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from edgepipe.host.client import AgentClient
from edgepipe.host.local import start_agent, stop_agent

TOKEN = "hostile-token-0123"
IDLE_TIMEOUT_S = 2


def auth(**extra: str) -> dict:
    return {"Authorization": f"Bearer {TOKEN}", **extra}


def raw(url: str, method: str, path: str, body: bytes | None = None,
        headers: dict | None = None) -> tuple[int, dict, bytes]:
    """One request as a bad client would send it: (status, headers, body)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def manifest_for(blob: bytes, name: str, **changes) -> dict:
    """A valid manifest of a blob (a float32 NCHW input, 1000 logits), with ``changes``."""
    tensor = {"name": "x", "shape": [1, 3, 32, 32], "dtype": "float32", "layout": "NCHW",
              "quantization": None}
    manifest = {
        "format": "tflite", "precision": "fp32", "file": name,
        "file_sha256": hashlib.sha256(blob).hexdigest(), "model": "blob", "task": "unknown",
        "inputs": [tensor], "outputs": [{**tensor, "shape": [1, 1000], "layout": "NC"}],
        "preprocessing": {"size": [32, 32], "resize": 36, "mean": [0.485, 0.456, 0.406],
                          "std": [0.229, 0.224, 0.225], "color": "RGB"},
        "output_kind": "logits", "label_set": None, "labels": None, "quantization": None,
        "source_weights_sha256": None, "tool_versions": {}, "extra": {}, "version": 1}
    return {**manifest, **changes}


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    data = tmp_path_factory.mktemp("hostile")
    url, proc = start_agent(data, TOKEN, extra_args=("--max-upload-mb", "4", "--idle-timeout",
                                                     str(IDLE_TIMEOUT_S)))
    yield url, data
    stop_agent(proc)


@pytest.fixture(scope="module")
def blob(agent) -> tuple[str, bytes]:
    """An uploaded artifact (random bytes named .tflite) with its manifest."""
    url, _ = agent
    data = bytes(range(256)) * 64
    sha = hashlib.sha256(data).hexdigest()
    status, _, body = raw(url, "PUT", f"/v1/artifacts/{sha}?name=blob.tflite", data, auth())
    assert status in (200, 201), body
    status, _, body = raw(url, "PUT", f"/v1/artifacts/{sha}/manifest",
                          json.dumps(manifest_for(data, "blob.tflite")).encode(), auth())
    assert status == 200, body
    return sha, data


@pytest.mark.parametrize("job, field", [
    ({"artifact": 5}, "artifact"),
    ({"artifact": None}, "artifact"),
    ({"artifact": ["a"]}, "artifact"),
    ({"items": [{"artifact": 5, "shape": [1, 3, 8, 8]}]}, "items[0].artifact"),
    ({"items": [{"artifact": None, "shape": [1]}]}, "items[0].artifact"),
    ({"items": [["x"]]}, "items[0]"),
    ({"artifact": "0" * 64, "threads": "2"}, "threads"),
    ({"artifact": "0" * 64, "runtime": 3}, "runtime"),
    ({"artifact": "0" * 64, "runs": 5.0}, "runs"),  # range(5.0) would fail in the worker
])
def test_wrong_types_in_a_job_are_a_400_naming_the_field(agent, job, field):
    """Case 1: a number, null or list where a string belongs was a 500 (TypeError)."""
    url, _ = agent
    status, headers, body = raw(url, "POST", "/v1/jobs", json.dumps(job).encode(), auth())
    assert status == 400, body
    assert headers["Content-Type"] == "application/json"
    error = json.loads(body)["error"]
    assert f"job field {field}" in error, error
    assert "internal" not in error


@pytest.mark.parametrize("change, field", [
    ({"file_sha256": 5}, "file_sha256"),
    ({"inputs": [{"name": 1, "shape": "x", "dtype": 2}]}, "inputs[0]"),
    ({"preprocessing": {"size": [32, 32], "resize": "big", "mean": [0.5], "std": [0.5],
                        "color": "GRAY"}}, "preprocessing.resize"),
    ({"version": "1", "surprise": True}, "manifest"),
])
def test_wrong_types_in_a_manifest_are_refused_on_upload(agent, blob, change, field):
    """Case 1: a manifest with the right sha but wrong types was a 500, or accepted and every
    later job on it failed with a Python TypeError."""
    url, _ = agent
    sha, data = blob
    manifest = manifest_for(data, "blob.tflite", **change)
    status, _, body = raw(url, "PUT", f"/v1/artifacts/{sha}/manifest",
                          json.dumps(manifest).encode(), auth())
    assert status == 400, body
    error = json.loads(body)["error"]
    assert field in error and "internal" not in error, error
    status, _, body = raw(url, "GET", f"/v1/artifacts/{sha}/manifest", headers=auth())
    assert json.loads(body)["inputs"][0]["name"] == "x"  # the valid one is kept


@pytest.mark.parametrize("method", ["TRACE", "HEAD", "PATCH", "OPTIONS", "PUT"])
def test_undeclared_methods_get_405_json_with_allow(agent, method):
    """Case 2: TRACE, HEAD, PATCH, OPTIONS were a 501 HTML page."""
    url, _ = agent
    status, headers, body = raw(url, method, "/v1/jobs", headers=auth())
    assert status == 405
    assert headers.get("Allow") == "GET, POST"
    if method != "HEAD":  # a HEAD answer has no body, by HTTP's rules
        assert headers["Content-Type"] == "application/json"
        assert f"{method} is not allowed" in json.loads(body)["error"]


def test_openapi_document_says_what_the_agent_does(agent):
    """Case 3: no ``required`` lists, and 400s the agent gives left undocumented."""
    from edgepipe import schemas

    url, _ = agent
    status, _, body = raw(url, "GET", "/v1/openapi.json", headers=auth())
    doc = json.loads(body)
    components = doc["components"]["schemas"]
    # the very objects the agent validates with
    assert components["JobSpec"] == schemas.JOB_SPEC
    assert components["Manifest"] == schemas.MANIFEST
    for name in ("JobSpec", "Manifest", "TensorSpec", "Preprocessing", "BatchItem"):
        assert components[name]["additionalProperties"] is False, name
        if name != "JobSpec":
            assert components[name]["required"], name
    # a job names one artifact or a batch of them: neither field alone is required
    assert components["JobSpec"]["anyOf"] == [{"required": ["artifact"]},
                                              {"required": ["items"]}]
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            documented = set(op["responses"])
            if "requestBody" in op or op.get("parameters"):
                assert "400" in documented, (method, path)
            if op.get("security") != []:
                assert "401" in documented, (method, path)
            assert "405" in documented, (method, path)
    assert {"200", "201", "411", "413"} <= set(doc["paths"]["/v1/artifacts/{sha}"]["put"]
                                               ["responses"])


def _upload_at_once(parts, burst: int, i: int, start: threading.Barrier,
                    outcomes: list[object]) -> None:
    data = f"burst {burst} client {i} ".encode() * 2500  # ~50 kB
    sha = hashlib.sha256(data).hexdigest()
    start.wait()
    try:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        conn.request("PUT", f"/v1/artifacts/{sha}?name=b{burst}-{i}.tflite", data, auth())
        outcomes.append(conn.getresponse().status)
        conn.close()
    except OSError as exc:
        outcomes.append(repr(exc))


def test_a_burst_of_twenty_uploads_is_not_reset(agent):
    """Case 4: 20 clients uploading 50 kB at once; 1 to 6 got ConnectionResetError in every
    burst (a listen backlog of 5)."""
    url, _ = agent
    parts = urlsplit(url)
    for burst in range(5):
        start = threading.Barrier(20)
        outcomes: list[object] = []
        threads = [threading.Thread(target=_upload_at_once, args=(parts, burst, i, start,
                                                                  outcomes))
                   for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(map(str, outcomes)) == ["201"] * 20, (burst, outcomes)


def test_a_stalled_upload_is_cut_and_leaves_no_temp_file(agent):
    """Case 5: 300 kB of a declared 1 MB, then silence, held a worker and a temp file for as
    long as the client liked."""
    url, data = agent
    parts = urlsplit(url)
    sha = "ab" * 32
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(f"PUT /v1/artifacts/{sha}?name=stall.tflite HTTP/1.1\r\n"
                     f"Host: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                     f"Content-Length: {1 << 20}\r\n\r\n".encode() + b"\0" * 300_000)
        began = time.monotonic()
        while not list((data / "tmp").glob("upload-*")):  # streaming to its temp folder
            assert time.monotonic() - began < IDLE_TIMEOUT_S, "the upload never reached disk"
            time.sleep(0.05)
        answer = b""
        while chunk := sock.recv(4096):  # the agent answers, then closes
            answer += chunk
        waited = time.monotonic() - began
    assert waited < IDLE_TIMEOUT_S + 5, waited
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"no data for" in answer
    deadline = time.monotonic() + 5
    while list((data / "tmp").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list((data / "tmp").iterdir())
    assert not (data / "artifacts" / sha).exists()
    assert raw(url, "GET", "/health")[0] == 200


@pytest.mark.parametrize("name", ["my model.tflite", "modèle_ü.tflite", "a#b.tflite",
                                  "日本語 モデル?.pte", "100%.tflite"])
def test_names_with_spaces_non_ascii_and_hash_are_stored_exactly(agent, tmp_path, name):
    """Case 6: a space or a non-ASCII letter failed in the client (InvalidURL,
    UnicodeEncodeError); a ``#`` made the agent store another name."""
    url, data = agent
    path = tmp_path / name
    path.write_bytes(name.encode() * 100)
    (tmp_path / f"{name}.json").write_text(json.dumps(manifest_for(path.read_bytes(), name)))
    client = AgentClient(url, TOKEN)
    meta = client.upload(path)
    assert meta["name"] == name and meta["has_manifest"]
    assert (data / "artifacts" / meta["sha256"] / name).read_bytes() == path.read_bytes()


@pytest.mark.parametrize("name", ["a/b.tflite", "a\\b.tflite", ".hidden.tflite", "x\0.tflite",
                                  "é" * 130 + ".tflite", "tab\there.tflite", "model.sh"])
def test_unsafe_names_are_refused(agent, blob, name):
    url, data = agent
    sha, body = blob
    status, _, answer = raw(url, "PUT", f"/v1/artifacts/{sha}?name={quote(name, safe='')}",
                            body, auth())
    assert status == 400 and "invalid artifact name" in json.loads(answer)["error"], answer
    assert not [p for p in Path(data).rglob("*") if p.name == name]
