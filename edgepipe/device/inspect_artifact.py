"""Read an artifact's inputs and outputs, and write a starting manifest for it.

For artifacts edgepipe did not convert: a ``.tflite`` or ``.pte`` from elsewhere deploys,
profiles and runs in the demo once it has a manifest. What a file cannot tell (mean/std,
labels, task) is guessed from its shapes, and the guesses are listed for the user to check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import EdgepipeError, missing_extra
from ..manifest import (
    Manifest,
    Preprocessing,
    TensorSpec,
    file_sha256,
    manifest_path,
    save_manifest,
    tensor_layout,
)
from .runtimes import RUNTIME_FOR_SUFFIX, litert_interpreter

FORMAT_FOR_SUFFIX = {".tflite": "tflite", ".pte": "executorch"}


def litert_tensor_specs(interp: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs (NHWC, as LiteRT takes images) and outputs of a LiteRT interpreter; int8
    tensors carry the scale/zero-point the runner (de)quantizes with."""
    def spec(d: dict, layout: str) -> TensorSpec:
        scale, zero = d["quantization"]
        q = {"scale": float(scale), "zero_point": int(zero),
             "dtype": np.dtype(d["dtype"]).name} if scale else None
        return TensorSpec(name=d["name"], shape=[int(s) for s in d["shape"]],
                          dtype="float32", layout=layout, quantization=q)

    inputs = [spec(d, "NHWC") for d in interp.get_input_details()]
    outputs = [spec(d, tensor_layout(d["shape"])) for d in interp.get_output_details()]
    return inputs, outputs


def executorch_tensor_specs(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    try:
        from executorch.extension.pybindings.portable_lib import _load_for_executorch
    except ImportError:
        raise missing_extra("the ExecuTorch runtime", "executorch") from None
    try:
        meta = _load_for_executorch(str(path)).method_meta("forward")
    except (RuntimeError, ValueError) as exc:
        raise EdgepipeError(f"ExecuTorch cannot load {path.name}: {exc}") from None

    def spec(name: str, info: Any) -> TensorSpec:
        shape = [int(s) for s in info.sizes()]
        return TensorSpec(name=name, shape=shape, dtype="float32", layout=tensor_layout(shape))

    return ([spec(f"input_{i}", meta.input_tensor_meta(i)) for i in range(meta.num_inputs())],
            [spec(f"output_{i}", meta.output_tensor_meta(i)) for i in range(meta.num_outputs())])


def tensor_specs(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    if RUNTIME_FOR_SUFFIX.get(path.suffix) == "litert":
        return litert_tensor_specs(litert_interpreter(path))
    return executorch_tensor_specs(path)


def _image_size(spec: TensorSpec) -> tuple[int, int]:
    shape = spec.shape
    if len(shape) != 4:
        raise EdgepipeError(f"input {spec.name} has shape {shape}: a vision model takes one "
                            f"4-D image batch")
    if shape[-1] in (1, 3) and shape[1] not in (1, 3):
        spec.layout = "NHWC"
        return shape[1], shape[2]
    spec.layout = "NCHW"
    return shape[2], shape[3]


def init_manifest(path: Path, labels: Path | None = None, force: bool = False
                  ) -> tuple[Path, list[str]]:
    """Write ``<file>.json`` for an artifact; returns its path and the guesses to check."""
    path = Path(path)
    if path.suffix not in FORMAT_FOR_SUFFIX or not path.is_file():
        raise EdgepipeError(f"{path} is not a .tflite or .pte file")
    target = manifest_path(path)
    if target.exists() and not force:
        raise EdgepipeError(f"{target.name} already exists: pass --force to replace it")
    inputs, outputs = tensor_specs(path)
    h, w = _image_size(inputs[0])
    out_shape = outputs[0].shape
    task = "segmentation" if len(out_shape) == 4 else "classification"
    label_list = None
    if labels is not None:
        try:
            label_list = [line.strip() for line in labels.read_text().splitlines()
                          if line.strip()]
        except OSError as exc:
            raise EdgepipeError(f"cannot read labels {labels}: {exc.strerror}") from None
    quantized = any(t.quantization for t in inputs + outputs)
    guesses = [f"task={task} (from the output shape {out_shape})",
               "preprocessing: ImageNet mean/std, RGB, resize shorter side to size/0.875",
               "output_kind=logits"]
    if label_list is None:
        guesses.append("no labels (pass --labels FILE, one per line)")
    manifest = Manifest(
        format=FORMAT_FOR_SUFFIX[path.suffix], precision="int8" if quantized else "fp32",
        file=path.name, file_sha256=file_sha256(path), model=path.stem, task=task,
        inputs=inputs, outputs=outputs,
        preprocessing=Preprocessing(size=(h, w), resize=round(min(h, w) / 0.875)),
        labels=label_list, tool_versions={"edgepipe": __version__},
        extra={"written_by": "edgepipe manifest init", "guessed": guesses},
    )
    return save_manifest(manifest, path), guesses
