"""The manifest: the plain-data contract between converters, device, demo and reports.

Light on purpose (the standard library, and jsonschema when one is read or written): the
device agent and the demo read it on a Pi that has no torch. One ``<artifact>.json`` beside
each artifact file, valid against :data:`edgepipe.schemas.MANIFEST`.
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


# Input ranges a model may expect, as the (mean, std) that maps [0, 1] pixels onto them:
# x = (pixel / 255 - mean) / std. "0,255" is raw pixels (std 1/255), as uint8-input models take.
RANGES: dict[str, tuple[float, float]] = {"0,1": (0.0, 1.0), "-1,1": (0.5, 0.5),
                                          "0,255": (0.0, 1 / 255)}
COLORS = ("RGB", "GRAY")
# ImageNet's statistics for one grey channel: the means of the RGB ones
IMAGENET_GRAY = ((sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,))


@dataclass
class Preprocessing:
    """How a camera frame becomes the model input.

    Resize so that the shorter side is ``resize`` pixels (or more, so that the crop fits:
    a landscape ``size`` on a portrait frame), center-crop ``size`` (height, width), convert
    to ``color`` (RGB, or GRAY for one-channel models), scale to [0, 1], then
    ``(x - mean) / std`` per channel (one value per channel of ``color``).
    """

    size: tuple[int, int]
    resize: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    color: str = "RGB"

    @property
    def channels(self) -> int:
        return 1 if self.color == "GRAY" else 3

    def input_range(self) -> str:
        """The range the model input spans: a key of RANGES, "imagenet", or "custom"."""
        n = self.channels
        for name, (mean, std) in RANGES.items():
            if self.mean == (mean,) * n and _close(self.std, (std,) * n):
                return name
        if (self.mean, self.std) in ((IMAGENET_MEAN, IMAGENET_STD), IMAGENET_GRAY):
            return "imagenet"
        return "custom"


def parse_size(value: int | str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """An input size as (height, width): 224, "224", "96x128" (height x width) or a pair.
    Raises EdgepipeError outside 32 to 2048 pixels or for anything else."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        h, w = value
    elif isinstance(value, int):
        h = w = value
    else:
        text = str(value).strip().lower()
        try:
            h, w = (int(v) for v in text.split("x")) if "x" in text else (int(text),) * 2
        except ValueError:
            raise EdgepipeError(f"input size {value!r}: give one number (224) or height x "
                                "width (96x128)") from None
    if not all(isinstance(v, int) and 32 <= v <= 2048 for v in (h, w)):
        raise EdgepipeError(f"input size {h}x{w} is out of range: use 32 to 2048 pixels")
    return int(h), int(w)


def _close(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= 1e-6 * max(1.0, abs(y))
                                    for x, y in zip(a, b, strict=True))


def range_preprocessing(size: tuple[int, int], resize: int, input_range: str,
                        color: str = "RGB") -> Preprocessing:
    """Preprocessing for an input range by name: one of RANGES or "imagenet"."""
    n = 1 if color == "GRAY" else 3
    if input_range == "imagenet":
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if n == 3 else IMAGENET_GRAY
    elif input_range in RANGES:
        m, s = RANGES[input_range]
        mean, std = (m,) * n, (s,) * n
    else:
        raise EdgepipeError(f"unknown input range {input_range!r}: use "
                            f"{', '.join([*RANGES, 'imagenet'])}")
    return Preprocessing(size=size, resize=resize, mean=mean, std=std, color=color)


@dataclass
class TensorSpec:
    name: str
    shape: list[int]
    # what the caller feeds/reads: "float32", also for int8 tensors with a scale (the runner
    # (de)quantizes); the integer type itself ("uint8") for an integer tensor without
    # quantization (scale 0: raw pixel values, class indices)
    dtype: str
    layout: str = "NCHW"
    # set when the artifact's own tensor is quantized: real = scale * (q - zero_point)
    quantization: dict[str, float] | None = None
    # the order of the dims in the artifact's memory when it is not the shape's own:
    # [0, 2, 3, 1] for an ExecuTorch program exported channels-last (the shape stays NCHW;
    # the runner lays the input out, see edgepipe.device.runtimes.executorch_inputs)
    dim_order: list[int] | None = None
    # the sizes the file accepts where it leaves some free: -1 for a free dim (a .tflite's
    # shape_signature; an ExecuTorch program exported with dynamic shapes). ``shape`` is
    # then the size edgepipe runs it at (`manifest init --size`), and every runner resizes
    # its input to the shape it is given
    shape_signature: list[int] | None = None


@dataclass
class Manifest:
    format: str  # "executorch" | "tflite" | "coreml"
    precision: str  # "fp32" | "int8" | "fp16"
    file: str
    file_sha256: str
    model: str
    task: str  # "classification" | "segmentation" | "unknown" (deploy and profile only)
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
        data = asdict(self)
        for spec in data["inputs"] + data["outputs"]:
            if spec.get("shape_signature") is None:  # fixed sizes: what agents before
                spec.pop("shape_signature", None)  # free input sizes read unchanged
        return json.dumps(data, indent=2)

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

    def check(self) -> None:
        """Refuse a manifest whose preprocessing cannot feed its own input (one line each):
        channels against the color, one mean/std per channel, the size, and raw-integer
        inputs against the range. Whatever feeds images (the demo) checks first: a
        hand-written or old manifest fails there, not as a wrong answer later. (Deploy and
        profile feed noise of the input's shape and need none of it: latency-table programs
        take feature maps, not images.)"""
        pre, spec = self.preprocessing, self.inputs[0] if self.inputs else None
        where = f"manifest of {self.file or self.model}"
        if pre.color not in COLORS:
            raise EdgepipeError(f"{where}: preprocessing color {pre.color!r} is not one of "
                                f"{', '.join(COLORS)}")
        if len(pre.mean) != pre.channels or len(pre.std) != pre.channels:
            raise EdgepipeError(f"{where}: {pre.color} takes {pre.channels} mean/std value(s), "
                                f"the manifest gives {len(pre.mean)}/{len(pre.std)}")
        if any(s == 0 for s in pre.std):
            raise EdgepipeError(f"{where}: a preprocessing std is 0")
        if spec is None or len(spec.shape) != 4:
            return
        c, h, w = ((spec.shape[3], spec.shape[1], spec.shape[2]) if spec.layout == "NHWC"
                   else (spec.shape[1], spec.shape[2], spec.shape[3]))
        if c != pre.channels:
            raise EdgepipeError(
                f"{where}: the input {spec.name} takes {c} channel(s) ({spec.layout} "
                f"{spec.shape}) but the preprocessing makes {pre.color} ({pre.channels}): set "
                f"preprocessing.color to {'GRAY' if c == 1 else 'RGB'} with {c} mean/std "
                "value(s), or rerun `edgepipe manifest init --force`")
        if (h, w) != tuple(pre.size):
            raise EdgepipeError(f"{where}: the input {spec.name} is {h}x{w} but the "
                                f"preprocessing size is {pre.size[0]}x{pre.size[1]}")
        if spec.dtype == "uint8" and pre.input_range() != "0,255":
            raise EdgepipeError(
                f"{where}: the input {spec.name} takes raw uint8 pixels (no quantization "
                f"scale) but the preprocessing makes the range {pre.input_range()}: set "
                "mean 0 and std 1/255 (range 0,255), or rerun `edgepipe manifest init --force`")


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


def umask() -> int:
    """The process's umask (Linux: read from /proc, without changing it; elsewhere set and
    restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write a file so that readers see the old content or the new, never half of it. The
    file gets the mode ``open()`` would give it (0o666 less the umask), not the temporary
    file's (mkstemp makes it 0o600: manifests and reports were readable by their owner
    alone)."""
    path = Path(path)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
        try:
            os.chmod(tmp, 0o666 & ~umask())
        except OSError:
            pass  # a file system without modes (FAT on a card): the file is still whole
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_manifest_data(data: Any, where: str | Path) -> None:
    """Refuse (EdgepipeError, one line naming the field) what
    :data:`edgepipe.schemas.MANIFEST` does not describe."""
    from .schemas import schema_error

    error = schema_error("Manifest", data)
    if error is not None:
        field, problem = error
        raise EdgepipeError(f"manifest {where} is not valid ({field or 'manifest'}: {problem}): "
                            "regenerate it (`edgepipe manifest init FILE --force`)")


def new_token(nbytes: int = 24) -> str:
    """A random URL-safe token of ``nbytes`` random bytes that never starts with ``-``: argparse
    reads ``--token -x…`` as a missing value followed by an option, so a pasted token starting
    with a dash (1 in 64 of ``secrets.token_urlsafe``) would fail with a usage error."""
    import secrets

    while True:
        token = secrets.token_urlsafe(nbytes)
        if not token.startswith("-"):
            return token


def write_secret(path: str | Path, text: str) -> None:
    """Write a secret (a token, a registry of tokens) readable by its owner only from its
    first byte on: a temp file opened with mode 0600, then renamed into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_manifest(manifest: Manifest, artifact: str | Path) -> Path:
    """Write ``<artifact>.json`` atomically, after validating it against the schema."""
    path = manifest_path(artifact)
    text = manifest.to_json()
    check_manifest_data(json.loads(text), path)
    write_atomic(path, text)
    return path


def load_manifest(artifact_or_manifest: str | Path) -> Manifest:
    """Read the manifest of an artifact (or a manifest path itself)."""
    path = Path(artifact_or_manifest)
    if path.suffix != ".json":
        path = manifest_path(path)
    if not path.is_file():
        raise EdgepipeError(
            f"no manifest at {path}: convert with `edgepipe convert`, or for a file converted "
            "elsewhere `edgepipe manifest init ARTIFACT` (or write one beside the artifact)"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgepipeError(f"manifest {path} is not valid JSON ({exc}): regenerate it") from None
    check_manifest_data(data, path)
    return Manifest.from_dict(data)
