"""PyTorch → ExecuTorch ``.pte`` lowered to XNNPACK (fp32, fp16, or int8 with PT2E).

Programs take their image input channels-last (dim order ``[0, 2, 3, 1]``, recorded in the
manifest): XNNPACK computes in NHWC, and a program exported for NCHW-contiguous input starts
with a transpose (``Transpose (ND, X8)``: 0.12 ms of MobileNetV3-Small int8's 1.43 ms at 224,
1 thread; README, "Runtimes compared layer by layer"). Such a program reads an
NCHW-contiguous tensor without complaint and computes on scrambled pixels, so every caller
lays its input out through :func:`edgepipe.device.runtimes.executorch_inputs`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from ..errors import EdgepipeError
from .base import Converted, Converter, float_spec
from .forms import Forms, runtime_forms
from .half import half_module
from .quantize import float_ops, keep_in_float, op_name, quantization_record, quantize_pt2e
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


def fp16_leftovers(lowered: object) -> dict[str, int]:
    """The float16 ops of an fp16 program that XNNPACK did not take (they run on ExecuTorch's
    portable kernels, one at a time), by op name."""
    graph = lowered.exported_program().graph_module.graph  # type: ignore[attr-defined]
    left: Counter[str] = Counter()
    for node in graph.nodes:
        if node.op != "call_function" or "executorch_call_delegate" in str(node.target) \
                or node.target.__name__ == "getitem":
            continue
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dtype == torch.float16:
            left[op_name(node.target)] += 1
    return dict(left)


def _dim_order(t: torch.Tensor) -> list[int] | None:
    """The order of ``t``'s dims in memory, None when it is the shape's own order."""
    order = sorted(range(t.ndim), key=lambda d: -t.stride(d))
    return None if order == list(range(t.ndim)) else order


def global_pools_as_means(program: torch.export.ExportedProgram) -> int:
    """Rewrite ``adaptive_avg_pool2d(x, 1)`` as ``mean(x, [-1, -2], keepdim)`` in place; the
    count rewritten. On a channels-last program the pooling decomposes into a mean and an
    ``as_strided_copy`` that XNNPACK does not take (MobileNetV3-Small: 11 partitions and 10
    copies outside them; as a mean: 1 partition). Done on the exported graph, after
    quantization: the quantizer annotates the pooling, the q/dq pair stays around the mean."""
    pool = torch.ops.aten.adaptive_avg_pool2d.default
    count = 0
    graph = program.graph_module.graph
    for node in graph.nodes:
        if node.op == "call_function" and node.target is pool \
                and list(node.args[1]) in ([1, 1], [1]):
            node.target = torch.ops.aten.mean.dim
            node.args = (node.args[0], [-1, -2], True)
            count += 1
    if count:
        program.graph_module.recompile()
    return count


class ExecuTorchConverter(Converter):
    format = "executorch"
    suffix = ".pte"
    extra = "executorch"
    requires = ("executorch",)
    distributions = ("executorch", "torchao")
    dynamic_size = True  # XNNPACK takes a dynamic height/width at static speed (measured)

    def convert(self, src: SourceModel, precision: str, calibration: list[torch.Tensor],
                path: Path, debug_info: bool = True, keep_float: tuple[str, ...] = ()
                ) -> Converted:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from executorch.exir import to_edge_transform_and_lower

        example = src.example_input()
        if example.ndim == 4 and example.shape[1] > 1:
            # one channel: NCHW and NHWC are the same bytes, and a program exported
            # channels-last from a 1-channel example fails in XNNPACK at run time (error 0x1)
            example = example.to(memory_format=torch.channels_last)
        quant, floats = None, None
        # XNNPACK runs h-swish natively in fp32 and inside int8 partitions: keep the op whole.
        # SiLU as sigmoid * x in int8: the quantizer then keeps the multiply int8
        # (EfficientNet-B0 int8 6.93 vs 8.65 ms with aten.silu: benchmarks/foreign_models.py)
        forms = Forms(decomposed_silu=precision == "int8")
        with runtime_forms(src.module, example, forms) as swapped:
            module = src.module
            if precision == "fp16":
                # the whole program in half, its input and output too (see .half)
                module, example = half_module(module), example.half()
                quant = {"weights": "fp16", "activations": "fp16",
                         "io": "float16 (the runner converts from and to float32)"}
            if precision == "int8":
                quantizer = XNNPACKQuantizer().set_global(
                    get_symmetric_quantization_config(is_per_channel=True))
                for name in keep_float:
                    keep_in_float(quantizer, name)
                module = quantize_pt2e(module, example, quantizer, calibration)
                floats = float_ops(module)
                quant = quantization_record(
                    "PT2E static, XNNPACKQuantizer symmetric", src, calibration, keep_float)
            program = torch.export.export(module, (example,),
                                          dynamic_shapes=src.dynamic_shapes())
        pools = global_pools_as_means(program)
        # the ETRecord lets the host name the ops of an ETDump profiled on the device; it
        # costs lowering time and ~10 MB, so latency-table units go without (debug_info)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                              generate_etrecord=debug_info)
        stats = {**graph_stats(lowered), "forms_swapped": swapped}
        if precision == "fp16":
            left = fp16_leftovers(lowered)
            if left:
                raise EdgepipeError(
                    f"executorch fp16: XNNPACK does not take {', '.join(sorted(left))} in "
                    f"float16 ({src.name}); these ops would run on portable kernels: convert "
                    "without --fp16, or --to tflite for fp16")
        if pools:
            stats["global_pools_as_mean"] = pools
        if floats is not None:
            stats["float_ops"] = floats
        program_et = lowered.to_executorch()
        path.write_bytes(program_et.buffer)
        companions = {}
        if debug_info:
            etrecord = path.with_name(path.stem + ".etrecord")
            program_et.get_etrecord().save(str(etrecord))
            companions["etrecord"] = etrecord.name
        dtype = "float16" if precision == "fp16" else "float32"
        return Converted(
            path=path, precision=precision,
            inputs=[float_spec("input", example.shape, dim_order=_dim_order(example),
                               dtype=dtype)],
            outputs=[float_spec("output", src.output_shape, dtype=dtype)],
            quantization=quant, graph=stats, companions=companions,
        )
