"""The agent's OpenAPI 3.1 description, served at ``/v1/openapi.json``."""

from __future__ import annotations

from typing import Any

SHA = {"name": "sha", "in": "path", "required": True,
       "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}
JOB = {"name": "job", "in": "path", "required": True,
       "schema": {"type": "string", "pattern": "^[0-9a-f]{12}$"}}
ERROR = {"description": "a clear message", "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(schema: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _op(summary: str, ok: dict[str, Any], *, params: list | None = None,
        body: dict | None = None, errors: tuple[int, ...] = (401, 404), ok_status: str = "200",
        open_call: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary,
                          "responses": {ok_status: ok, **{str(e): ERROR for e in errors}}}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = body
    if open_call:
        op["security"] = []
    return op


def openapi_document(version: str) -> dict[str, Any]:
    job_body = {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/JobSpec"}}}}
    upload_body = {"required": True, "content": {"application/octet-stream": {
        "schema": {"type": "string", "format": "binary"}}}}
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
                "JobSpec": {"type": "object", "additionalProperties": False,
                            "description": "artifact, or items (a batch) is required",
                            "properties": {
                                "artifact": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                                "runtime": {"enum": ["litert", "executorch", None]},
                                "threads": {"type": "integer", "minimum": 1, "maximum": 256},
                                "warmup": {"type": "integer", "minimum": 0},
                                "runs": {"type": "integer", "minimum": 1},
                                "min_seconds": {"type": "number", "minimum": 0,
                                                "maximum": 3600},
                                "raw": {"type": "boolean"},
                                "affinity": {"type": ["array", "null"],
                                             "items": {"type": "integer", "minimum": 0}},
                                "profile": {"type": "boolean"},
                                "profile_runs": {"type": "integer", "minimum": 1},
                                "items": {"type": ["array", "null"], "maxItems": 5000,
                                          "items": {"type": "object", "properties": {
                                              "artifact": {"type": "string"},
                                              "shape": {"type": "array",
                                                        "items": {"type": "integer"}}}}},
                                "min_runs": {"type": "integer", "minimum": 1},
                                "stable_pct": {"type": "number", "minimum": 0,
                                               "maximum": 100},
                                "max_seconds": {"type": "number", "minimum": 0}}},
                "Job": {"type": "object", "properties": {
                    "id": {"type": "string"}, "state": {
                        "enum": ["queued", "running", "done", "failed"]},
                    "spec": {"$ref": "#/components/schemas/JobSpec"},
                    "progress": {"type": "object"}, "result": {"type": ["object", "null"]},
                    "error": {"type": ["string", "null"]}}},
            },
        },
        "security": [{"token": []}],
        "paths": {
            "/health": {"get": _op("liveness (no token)", _json("Object"), errors=(),
                                   open_call=True)},
            "/v1/health": {"get": _op("liveness (no token)", _json("Object"), errors=(),
                                      open_call=True)},
            "/v1/openapi.json": {"get": _op("this description", _json("Object"),
                                            errors=(401,))},
            "/v1/info": {"get": _op("CPU, clocks, heat, memory, OS, runtimes, fingerprint",
                                    _json("Object"), errors=(401,))},
            "/v1/artifacts": {"get": _op("list uploaded artifacts", _json("Object"),
                                         errors=(401,))},
            "/v1/artifacts/{sha}": {
                "put": _op("upload an artifact; the body's sha256 must equal {sha}",
                           _json("Object", "already stored"), ok_status="200",
                           params=[SHA, {"name": "name", "in": "query", "required": True,
                                         "schema": {"type": "string"}}],
                           body=upload_body, errors=(400, 401, 411, 413)),
                "get": _op("one artifact", _json("Object"), params=[SHA]),
                "delete": _op("delete an artifact", _json("Object"), params=[SHA])},
            "/v1/artifacts/{sha}/manifest": {
                "put": _op("attach the artifact's manifest", _json("Object"), params=[SHA],
                           body={"required": True, "content": {"application/json": {
                               "schema": {"type": "object"}}}}, errors=(400, 401, 404)),
                "get": _op("the artifact's manifest", _json("Object"), params=[SHA])},
            "/v1/jobs": {
                "post": _op("queue a benchmark job", _json("Job", "queued"), ok_status="202",
                            body=job_body, errors=(400, 401, 404, 409)),
                "get": _op("all jobs", _json("Object"), errors=(401,))},
            "/v1/jobs/{job}": {"get": _op("a job: state, progress, result", _json("Job"),
                                          params=[JOB])},
            "/v1/jobs/{job}/etdump": {"get": _op(
                "the ExecuTorch ETDump of a profiled job",
                {"description": "ETDump bytes",
                 "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                      "format": "binary"}}}},
                params=[JOB])},
        },
    }
