"""PyTorch → ExecuTorch ``.pte`` lowered to XNNPACK (fp32, or int8 with PT2E)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from .base import Converted, Converter, float_spec
from .forms import Forms, runtime_forms
from .quantize import float_ops, op_name, quantize_pt2e
from .source import SourceModel


def graph_stats(lowered: object) -> dict[str, object]:
    """Delegate partitions and the ops XNNPACK left outside them (each one costs a copy)."""
    graph = lowered.exported_program().graph_module.graph  # type: ignore[attr-defined]
    delegates, outside = 0, Counter()
    for node in graph.nodes:
        if node.op != "call_function" or node.target.__name__ == "getitem":
            continue
        if "executorch_call_delegate" in str(node.target):
            delegates += 1
        else:
            outside[op_name(node.target)] += 1
    return {"delegate_partitions": delegates, "ops_outside_delegate": dict(outside)}


class ExecuTorchConverter(Converter):
    format = "executorch"
    suffix = ".pte"
    extra = "executorch"
    requires = ("executorch",)
    distributions = ("executorch", "torchao")
    dynamic_size = True  # XNNPACK takes a dynamic height/width at static speed (measured)

    def convert(self, src: SourceModel, precision: str, calibration: list[torch.Tensor],
                path: Path, debug_info: bool = True) -> Converted:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from executorch.exir import to_edge_transform_and_lower

        example = src.example_input()
        quant, floats = None, None
        # XNNPACK runs h-swish natively in fp32 and inside int8 partitions: keep the op whole.
        # SiLU as sigmoid * x in int8: the quantizer then keeps the multiply int8
        # (EfficientNet-B0 int8 6.93 vs 8.65 ms with aten.silu: benchmarks/foreign_models.py)
        forms = Forms(decomposed_silu=precision == "int8")
        with runtime_forms(src.module, example, forms) as swapped:
            module = src.module
            if precision == "int8":
                quantizer = XNNPACKQuantizer().set_global(
                    get_symmetric_quantization_config(is_per_channel=True))
                module = quantize_pt2e(module, example, quantizer, calibration)
                floats = float_ops(module)
                quant = {"scheme": "PT2E static, XNNPACKQuantizer symmetric",
                         "weights": "int8 per-channel", "activations": "int8 per-tensor",
                         "calibration_images": len(calibration)}
            program = torch.export.export(module, (example,),
                                          dynamic_shapes=src.dynamic_shapes())
        # the ETRecord lets the host name the ops of an ETDump profiled on the device; it
        # costs lowering time and ~10 MB, so latency-table units go without (debug_info)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                              generate_etrecord=debug_info)
        stats = {**graph_stats(lowered), "forms_swapped": swapped}
        if floats is not None:
            stats["float_ops"] = floats
        program_et = lowered.to_executorch()
        path.write_bytes(program_et.buffer)
        companions = {}
        if debug_info:
            etrecord = path.with_name(path.stem + ".etrecord")
            program_et.get_etrecord().save(str(etrecord))
            companions["etrecord"] = etrecord.name
        return Converted(
            path=path, precision=precision,
            inputs=[float_spec("input", example.shape)],
            outputs=[float_spec("output", src.output_shape)],
            quantization=quant, graph=stats, companions=companions,
        )
