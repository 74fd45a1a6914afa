"""PyTorch → Core ML ``.mlpackage`` (ML program; fp16, or int8 weights).

Core ML converts on Linux but predicts only on macOS: here the artifact is validated
(spec loads, inputs/outputs, op count) and reported as not executed on this platform.
"""

from __future__ import annotations

import platform
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from ..manifest import TensorSpec
from .base import Converted, Converter, float_spec
from .forms import Forms, runtime_forms
from .source import SourceModel


def validate_mlpackage(path: Path) -> dict[str, Any]:
    """What can be checked without running: the spec, its tensors and its ops."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    ops: Counter[str] = Counter()
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                ops[op.type] += 1
    return {
        "spec_version": spec.specificationVersion,
        "inputs": [i.name for i in spec.description.input],
        "outputs": [o.name for o in spec.description.output],
        "op_count": sum(ops.values()),
        "ops": dict(ops),
        "executed": False,
        "reason": f"not executed on this platform ({platform.system()}): "
                  "Core ML prediction needs macOS",
    }


class CoreMLConverter(Converter):
    format = "coreml"
    suffix = ".mlpackage"
    extra = "coreml"
    requires = ("coremltools",)
    distributions = ("coremltools",)
    precisions = ("fp16", "int8")
    base_precision = "fp16"  # Core ML computes in fp16: its base artifact is fp16

    def convert(self, src: SourceModel, precision: str, calibration: list[torch.Tensor],
                path: Path, debug_info: bool = True, keep_float: tuple[str, ...] = ()
                ) -> Converted:
        import coremltools as ct

        example = src.example_input()
        with runtime_forms(src.module, example, Forms()):
            program = torch.export.export(src.module, (example,)).run_decompositions({})
        model = ct.convert(
            program,
            inputs=[ct.TensorType(name="input", shape=tuple(example.shape))],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16,
            minimum_deployment_target=ct.target.iOS16,
        )
        quant = {"weights": "fp16", "activations": "fp16"}
        if precision == "int8":
            config = ct.optimize.coreml.OptimizationConfig(
                global_config=ct.optimize.coreml.OpLinearQuantizerConfig(
                    mode="linear_symmetric", dtype="int8", granularity="per_channel"))
            model = ct.optimize.coreml.linear_quantize_weights(model, config=config)
            quant = {"weights": "int8 per-channel (linear symmetric)", "activations": "fp16"}
            if keep_float:
                quant["keep_float"] = ("not applied: Core ML int8 here quantizes weights only; "
                                       "activations stay fp16")
        if path.exists():
            shutil.rmtree(path)
        model.save(str(path))
        validation = validate_mlpackage(path)
        outputs = [float_spec(validation["outputs"][0], src.output_shape)]
        inputs: list[TensorSpec] = [float_spec("input", example.shape)]
        return Converted(path=path, precision=precision, inputs=inputs, outputs=outputs,
                         quantization=quant, graph={"op_count": validation["op_count"]},
                         runnable_here=False, validation=validation)
