"""The agent's OpenAPI 3.1 description, served at ``/v1/openapi.json``.

The request bodies are the schemas the agent validates with (:mod:`edgepipe.schemas`), and
each operation lists every status the agent answers it with: the tests run a fuzzer against
this document (``tests/test_agent_fuzz.py``).
"""

from __future__ import annotations

from typing import Any

from .. import schemas

SHA = {"name": "sha", "in": "path", "required": True, "schema": schemas.SHA256}
JOB = {"name": "job", "in": "path", "required": True,
       "schema": {"type": "string", "pattern": "^[0-9a-f]{12}$"}}
NAME = {"name": "name", "in": "query", "required": True,
        "description": "the file name to store: UTF-8, no / or \\, no control character, no "
                       "leading dot, at most 255 bytes, ending in .tflite or .pte",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                   "pattern": r"^[^./\\\x00-\x1f\x7f][^/\\\x00-\x1f\x7f]*\.(tflite|pte)$"}}
ERROR_TEXT = {
    400: "the request is malformed or a field is wrong (the message names it)",
    401: "missing or wrong token",
    404: "no such artifact, job or endpoint",
    405: "the method is not declared for this path (the Allow header lists those that are)",
    408: "the client sent nothing for longer than the idle timeout",
    409: "the artifact has no manifest yet",
    411: "no Content-Length header",
    413: "the body is over the agent's limit",
}

ARTIFACT = {"type": "object", "required": ["sha256", "name", "size", "uploaded", "has_manifest"],
            "properties": {"sha256": schemas.SHA256, "name": {"type": "string"},
                           "size": {"type": "integer", "minimum": 0},
                           "uploaded": {"type": "number"},
                           "has_manifest": {"type": "boolean"}}}
JOB_STATE = {"type": "object", "required": ["id", "state", "spec"], "properties": {
    "id": {"type": "string"}, "state": {"enum": ["queued", "running", "done", "failed"]},
    "spec": {"type": "object", "description": "the JobSpec, with its defaults filled in"},
    "progress": {"type": "object"},
    "result": {"type": ["object", "null"], "description": "a benchmark's figures (a batch's: "
               "items); a single artifact's per_op as PerOp",
               "properties": {"per_op": {"$ref": "#/components/schemas/PerOp"}}},
    "error": {"type": ["string", "null"]}, "created": {"type": "number"},
    "started": {"type": ["number", "null"]}, "finished": {"type": ["number", "null"]}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(summary: str, ok: dict[str, Any], *, params: list | None = None,
        body: dict | None = None, errors: tuple[int, ...] = (), ok_status: str = "200",
        open_call: bool = False, more_ok: dict[str, Any] | None = None) -> dict[str, Any]:
    codes = set(errors) | {405} | (set() if open_call else {401})
    if params or body:
        codes.add(400)
    if body:
        codes |= {411, 413}
    responses = {ok_status: ok, **(more_ok or {})}
    for code in sorted(codes):
        responses[str(code)] = _json(_ref("Error"), ERROR_TEXT[code])
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = body
    if open_call:
        op["security"] = []
    return op


def openapi_document(version: str) -> dict[str, Any]:
    job_body = {"required": True, "content": {"application/json": {"schema": _ref("JobSpec")}}}
    manifest_body = {"required": True,
                     "content": {"application/json": {"schema": _ref("Manifest")}}}
    upload_body = {"required": True, "content": {"application/octet-stream": {
        "schema": {"type": "string", "format": "binary"}}}}
    health = _json({"type": "object", "required": ["status"],
                    "properties": {"status": {"const": "ok"},
                                   "agent_version": {"type": "string"}}})
    return {
        "openapi": "3.1.0",
        "info": {"title": "edgepipe device agent", "version": version,
                 "description": "Upload artifacts, run benchmark jobs one at a time, read "
                                "latency, memory and per-operator profiles."},
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}},
                          "required": ["error"]},
                "Object": {"type": "object"},
                "JobSpec": schemas.JOB_SPEC,
                "BatchItem": schemas.BATCH_ITEM,
                "Manifest": schemas.MANIFEST,
                "TensorSpec": schemas.TENSOR_SPEC,
                "Preprocessing": schemas.PREPROCESSING,
                "Quantization": schemas.QUANTIZATION,
                "Artifact": ARTIFACT,
                "Job": JOB_STATE,
                "PerOp": schemas.PER_OP,
            },
        },
        "security": [{"token": []}],
        "paths": {
            "/health": {"get": _op("liveness (no token)", health, open_call=True)},
            "/v1/health": {"get": _op("liveness (no token)", health, open_call=True)},
            "/v1/openapi.json": {"get": _op("this description", _json(_ref("Object")))},
            "/v1/info": {"get": _op("CPU, clocks, heat, memory, OS, runtimes, fingerprint",
                                    _json(_ref("Object")))},
            "/v1/artifacts": {"get": _op("list uploaded artifacts", _json(
                {"type": "object", "required": ["artifacts"],
                 "properties": {"artifacts": {"type": "array", "items": _ref("Artifact")}}}))},
            "/v1/artifacts/{sha}": {
                "put": _op("upload an artifact; the body's sha256 must equal {sha}",
                           _json(_ref("Artifact"), "already stored"), params=[SHA, NAME],
                           body=upload_body, errors=(408,),
                           more_ok={"201": _json(_ref("Artifact"), "stored")}),
                "get": _op("one artifact", _json(_ref("Artifact")), params=[SHA],
                           errors=(404,)),
                "delete": _op("delete an artifact", _json(
                    {"type": "object", "required": ["deleted"],
                     "properties": {"deleted": schemas.SHA256}}), params=[SHA],
                    errors=(404,))},
            "/v1/artifacts/{sha}/manifest": {
                "put": _op("attach the artifact's manifest", _json(_ref("Artifact")),
                           params=[SHA], body=manifest_body, errors=(404,)),
                "get": _op("the artifact's manifest", _json(_ref("Manifest")), params=[SHA],
                           errors=(404,))},
            "/v1/jobs": {
                "post": _op("queue a benchmark job", _json(_ref("Job"), "queued"),
                            ok_status="202", body=job_body, errors=(404, 409)),
                "get": _op("all jobs", _json({"type": "object", "required": ["jobs"],
                                              "properties": {"jobs": {
                                                  "type": "array", "items": _ref("Job")}}}))},
            "/v1/jobs/{job}": {"get": _op("a job: state, progress, result", _json(_ref("Job")),
                                          params=[JOB], errors=(404,))},
            "/v1/jobs/{job}/etdump": {"get": _op(
                "the ExecuTorch ETDump of a profiled job",
                {"description": "ETDump bytes",
                 "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                      "format": "binary"}}}},
                params=[JOB], errors=(404,))},
        },
    }
