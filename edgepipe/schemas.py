"""JSON Schemas (2020-12) of the objects that cross between host and device: a job and a
manifest. The agent validates every request body with them and publishes the same objects in
``/v1/openapi.json``; ``edgepipe convert`` and ``manifest init`` validate a manifest before
writing it.

Validation is jsonschema's (imported when first used: the agent and the demo import this
module at start). :func:`schema_error` gives the most relevant failure as the field's name and
the problem, e.g. ``items[0].artifact`` and ``must be a string, not 5``.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

SHA256_PATTERN = "^[0-9a-f]{64}$"
SHA256: dict[str, Any] = {"type": "string", "pattern": SHA256_PATTERN}
MAX_BATCH = 5000


def _int(low: int, high: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high}


def _number(low: float, high: float) -> dict[str, Any]:
    return {"type": "number", "minimum": low, "maximum": high}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


BATCH_ITEM: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["artifact", "shape"],
    "description": "one program of a batch: an uploaded artifact and its input shape",
    "properties": {"artifact": SHA256,
                   "shape": {"type": "array", "minItems": 1, "maxItems": 6,
                             "items": _int(1, 65536)}}}

MAX_EVAL_IMAGES = 256
EVAL_IMAGE: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["name", "data"],
    "description": "one image of an evaluation: its name and its encoded file (PNG, JPEG, "
                   "...), base64",
    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 1024},
                   "data": {"type": "string", "minLength": 1, "maxLength": 16 << 20}}}

JOB_SPEC: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "description": "a benchmark: one artifact (artifact), or a batch of them (items)",
    "anyOf": [{"required": ["artifact"]}, {"required": ["items"]}],
    "properties": {
        "artifact": SHA256,
        "runtime": {"enum": ["litert", "executorch", None],
                    "description": "default: the artifact's own, by its suffix"},
        "threads": _int(1, 256),
        "warmup": _int(0, 100_000),
        "runs": _int(1, 1_000_000),
        "min_seconds": _number(0, 3600),
        "raw": {"type": "boolean"},
        "affinity": _nullable({"type": "array", "minItems": 1, "maxItems": 4096,
                               "items": _int(0, 65535)}),
        "profile": {"type": "boolean"},
        "profile_runs": _int(1, 10_000),
        "items": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH, "items": BATCH_ITEM},
        "min_runs": _int(1, 1_000_000),
        "stable_pct": _number(0, 100),
        "max_seconds": _number(0, 3600),
        "runner": {"enum": ["auto", "python", "native"],
                   "description": "ExecuTorch: the lean C++ runner (native), the Python "
                                  "bindings (python), or the runner where present (auto)"},
        "kind": {"enum": ["benchmark", "evaluate"],
                 "description": "benchmark (default): time the artifact; evaluate: run it on "
                                "the images given, preprocessed on the device as its "
                                "manifest says, and return the top-k or the mask of each"},
        "images": {"type": "array", "minItems": 1, "maxItems": MAX_EVAL_IMAGES,
                   "items": EVAL_IMAGE},
        "top_k": _int(1, 100),
    },
}

_MS_LIST = {"type": "array", "items": {"type": "number", "minimum": 0}}
PER_OP: dict[str, Any] = {
    "description": "a job result's per-operator profile: a reason instead of numbers, "
                   "ExecuTorch's ETDump (fetched from /v1/jobs/{job}/etdump, read on the host "
                   "with the ETRecord) or LiteRT's CompiledModel profiler events per run",
    "oneOf": [
        {"type": "object", "required": ["available", "reason"],
         "properties": {"available": {"const": False},
                        "reason": {"type": "string",
                                   "description": "per-op not available because …"}}},
        {"type": "object", "required": ["available", "source", "file", "runs"],
         "properties": {"available": {"const": True}, "source": {"const": "etdump"},
                        "file": {"type": "string"}, "runs": {"type": "integer"},
                        "profiled_ms": {**_MS_LIST, "description": "each ETDump run's wall "
                                                                   "time (ms)"},
                        "unprofiled_ms": {**_MS_LIST, "description": "the same runs without "
                                                                     "ETDump"}}},
        {"type": "object",
         "required": ["available", "source", "runs", "library", "ops", "invoke_us",
                      "profiled_ms", "unprofiled_ms"],
         "properties": {
             "available": {"const": True}, "source": {"const": "litert-profiler"},
             "runs": {"type": "integer", "minimum": 1},
             "library": {"type": "string", "description": "ai-edge-litert VERSION"},
             "ops": {"type": "array", "description": "in execution order", "items": {
                 "type": "object",
                 "required": ["position", "name", "delegated", "node", "times_us"],
                 "properties": {
                     "position": {"type": "integer", "minimum": 0},
                     "name": {"type": "string", "description": "XNNPACK's kernel name, or "
                                                               "the TFLite op's"},
                     "delegated": {"type": "boolean",
                                   "description": "run by XNNPACK (else a builtin op)"},
                     "node": {"type": ["integer", "null"],
                              "description": "the TFLite node index (builtin ops)"},
                     "times_us": {"type": "array", "items": {"type": "integer", "minimum": 0},
                                  "description": "one per run, whole µs as XNNPACK times"}}}},
             "invoke_us": {**_MS_LIST, "description": "the runtime's Invoke event per run"},
             "profiled_ms": {**_MS_LIST, "description": "wall time of each profiled run"},
             "unprofiled_ms": {**_MS_LIST, "description": "the same model's runs with the "
                                                          "profiler stopped"},
             "summary": {"type": "string", "description": "LiteRT's profile summary "
                                                          "(benchmark_model's text)"}}},
    ]}

QUANTIZATION: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["scale", "zero_point"],
    "description": "a quantized tensor: real = scale * (q - zero_point)",
    "properties": {"scale": {"type": "number", "minimum": 0},
                   "zero_point": {"type": "integer"},
                   "dtype": {"type": "string", "maxLength": 16}}}

TENSOR_SPEC: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["name", "shape", "dtype"],
    "properties": {
        "name": {"type": "string", "maxLength": 1024},
        "shape": {"type": "array", "maxItems": 8, "items": _int(1, 1 << 24)},
        "dtype": {"type": "string", "pattern": "^[a-z][a-z0-9]{0,15}$"},
        "layout": {"type": "string", "pattern": "^[A-Z]{1,8}$"},
        "quantization": _nullable(QUANTIZATION),
        "dim_order": _nullable({"type": "array", "maxItems": 8, "items": _int(0, 7)}),
        "shape_signature": _nullable({"type": "array", "maxItems": 8,
                                      "items": _int(-1, 1 << 24)})}}

PREPROCESSING: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["size", "resize"],
    "properties": {
        "size": {"type": "array", "minItems": 2, "maxItems": 2, "items": _int(1, 65536)},
        "resize": _int(1, 65536),
        "mean": {"type": "array", "minItems": 1, "maxItems": 4, "items": {"type": "number"}},
        "std": {"type": "array", "minItems": 1, "maxItems": 4,
                "items": {"type": "number", "exclusiveMinimum": 0}},
        "color": {"enum": ["RGB", "GRAY"]}}}

MANIFEST: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "description": "what an artifact is and how to feed it (edgepipe.manifest.Manifest)",
    "required": ["format", "precision", "file", "file_sha256", "model", "task", "inputs",
                 "outputs", "preprocessing"],
    "properties": {
        "format": {"enum": ["executorch", "tflite", "coreml"]},
        "precision": {"enum": ["fp32", "fp16", "int8"]},
        "file": {"type": "string", "minLength": 1, "maxLength": 255},
        "file_sha256": SHA256,
        "model": {"type": "string", "maxLength": 1024},
        "task": {"enum": ["classification", "segmentation", "unknown"]},
        "inputs": {"type": "array", "minItems": 1, "maxItems": 64, "items": TENSOR_SPEC},
        "outputs": {"type": "array", "minItems": 1, "maxItems": 64, "items": TENSOR_SPEC},
        "preprocessing": PREPROCESSING,
        "output_kind": {"enum": ["logits", "probabilities", "mask"]},
        "label_set": _nullable({"type": "string", "maxLength": 256}),
        "labels": _nullable({"type": "array", "maxItems": 100_000,
                             "items": {"type": "string", "maxLength": 1024}}),
        "quantization": _nullable({"type": "object"}),
        "source_weights_sha256": _nullable({"type": "string", "maxLength": 64}),
        "tool_versions": {"type": "object",
                          "additionalProperties": {"type": "string", "maxLength": 256}},
        "extra": {"type": "object"},
        "version": {"const": 1},
    },
}


@cache
def _validator(name: str) -> Any:
    from jsonschema import Draft202012Validator, validators

    # JSON Schema counts 1.0 as an integer; the code that runs the job (range(runs), a
    # thread count, a tensor's shape) does not: here an integer is a JSON number without a
    # decimal point or exponent
    checker = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))
    strict = validators.extend(Draft202012Validator, type_checker=checker)
    schema = {"JobSpec": JOB_SPEC, "Manifest": MANIFEST}[name]
    strict.check_schema(schema)
    return strict(schema)


def field_path(path: Any) -> str:
    """A JSON path as the field's name: ``items[0].artifact``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def schema_error(name: str, data: Any) -> tuple[str, str] | None:
    """Why ``data`` is not a valid ``name`` ("JobSpec" or "Manifest"): (the field, as
    :func:`field_path` writes it, "" for the object itself; the problem, in a few words), or
    None when it is valid."""
    from jsonschema.exceptions import best_match

    error = best_match(_validator(name).iter_errors(data))
    if error is None:
        return None
    where = field_path(error.absolute_path)
    if error.validator == "anyOf" and not error.absolute_path and name == "JobSpec":
        problem = 'needs "artifact" (the sha256 of an uploaded file) or "items" (a batch)'
    elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {})
        unknown = sorted(k for k in error.instance if k not in known)
        problem = f"unknown field(s) {', '.join(unknown)}"
    elif error.validator == "type":
        problem = (f"must be {_types(error.validator_value)}, not "
                   f"{json.dumps(error.instance)[:40]}")
    else:
        problem = error.message if len(error.message) <= 160 else error.message[:157] + "..."
    return where, problem


def _types(value: str | list[str]) -> str:
    names = {"string": "a string", "integer": "an integer", "number": "a number",
             "boolean": "true or false", "array": "a list", "object": "an object",
             "null": "null"}
    values = [value] if isinstance(value, str) else value
    return " or ".join(names.get(v, v) for v in values)
