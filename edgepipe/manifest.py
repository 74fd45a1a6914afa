"""The manifest: the plain-data contract between converters, device, demo and reports.

Light on purpose (standard library only): the device agent and the demo read it on a Pi
that has no torch. One ``<artifact>.json`` beside each artifact file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import EdgepipeError

MANIFEST_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Preprocessing:
    """How a camera frame becomes the model input.

    Resize the shorter side to ``resize``, center-crop ``size``, scale to [0, 1], then
    ``(x - mean) / std`` per RGB channel.
    """

    size: tuple[int, int]
    resize: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    color: str = "RGB"


@dataclass
class TensorSpec:
    name: str
    shape: list[int]
    dtype: str  # the dtype the caller feeds/reads: "float32" even when int8 inside
    layout: str = "NCHW"
    # set when the artifact's own tensor is quantized: real = scale * (q - zero_point)
    quantization: dict[str, float] | None = None


@dataclass
class Manifest:
    format: str  # "executorch" | "tflite" | "coreml"
    precision: str  # "fp32" | "int8" | "fp16"
    file: str
    file_sha256: str
    model: str
    task: str  # "classification" | "segmentation"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocessing: Preprocessing
    output_kind: str = "logits"  # "logits" | "probabilities" | "mask"
    label_set: str | None = None
    labels: list[str] | None = None
    quantization: dict[str, Any] | None = None
    source_weights_sha256: str | None = None
    tool_versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        data["inputs"] = [TensorSpec(**t) for t in data["inputs"]]
        data["outputs"] = [TensorSpec(**t) for t in data["outputs"]]
        pre = dict(data["preprocessing"])
        for key in ("size", "mean", "std"):
            pre[key] = tuple(pre[key])
        data["preprocessing"] = Preprocessing(**pre)
        return cls(**data)


def tensor_layout(shape: tuple[int, ...] | list[int]) -> str:
    """How PyTorch lays a tensor out: NCHW images/masks, NC logits."""
    return "NCHW" if len(shape) == 4 else "NC"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_files(path: str | Path) -> list[Path]:
    """The files of an artifact: itself, or those inside a folder such as an ``.mlpackage``,
    in a stable order."""
    path = Path(path)
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def artifact_sha256(path: str | Path) -> str:
    """sha256 of an artifact: a file, or a folder such as an ``.mlpackage``.

    A folder hashes its files' relative paths and hashes in sorted order, so the value does
    not depend on the file system's listing order.
    """
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for p in artifact_files(path):
        digest.update(str(p.relative_to(path)).encode())
        digest.update(file_sha256(p).encode())
    return digest.hexdigest()


def manifest_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write a file so that readers see the old content or the new, never half of it."""
    path = Path(path)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_manifest(manifest: Manifest, artifact: str | Path) -> Path:
    path = manifest_path(artifact)
    write_atomic(path, manifest.to_json())
    return path


def load_manifest(artifact_or_manifest: str | Path) -> Manifest:
    """Read the manifest of an artifact (or a manifest path itself)."""
    path = Path(artifact_or_manifest)
    if path.suffix != ".json":
        path = manifest_path(path)
    if not path.is_file():
        raise EdgepipeError(
            f"no manifest at {path}: convert with `edgepipe convert` or write one "
            "beside the artifact"
        )
    try:
        return Manifest.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise EdgepipeError(f"manifest {path} is not valid ({exc}): regenerate it") from None
