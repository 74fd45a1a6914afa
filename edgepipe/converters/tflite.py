"""PyTorch → TFLite/LiteRT ``.tflite`` via litert-torch (fp32, fp16 weights with XNNPACK's fp16
flag (:mod:`.half`), or int8 with PT2E)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..device.inspect_artifact import litert_tensor_specs
from .base import Converted, Converter
from .forms import Forms, runtime_forms
from .quantize import keep_in_float, litert_module_names, quantization_record, quantize_pt2e
from .source import SourceModel

_EDGE_OPS = {"QUANTIZE", "DEQUANTIZE"}


def litert_graph_stats(interp: Any) -> dict[str, object]:
    """XNNPACK partitions after delegation, ops left outside, and float ops in an int8 graph.

    LiteRT lists delegate nodes after the original ones once tensors are allocated; an
    original node whose outputs feed a delegate but come from none ran outside XNNPACK.
    ``interp`` is a LiteRT Interpreter whose tensors are not allocated yet.
    """
    original = interp._get_ops_details()
    interp.allocate_tensors()
    delegates = [op for op in interp._get_ops_details()[len(original):]
                 if op["op_name"] == "DELEGATE"]
    produced = {t for d in delegates for t in d["outputs"]}
    consumed = {t for d in delegates for t in d["inputs"]}
    dtypes = {t["index"]: np.dtype(t["dtype"]).name
              for t in interp.get_tensor_details()}
    outside: Counter[str] = Counter()
    float_ops: Counter[str] = Counter()
    for op in original:
        if any(t in consumed for t in op["outputs"]) and not any(t in produced
                                                                 for t in op["outputs"]):
            outside[op["op_name"]] += 1
        first_input = next((t for t in op["inputs"] if t >= 0), None)
        if first_input is not None and dtypes[first_input] == "float32" \
                and op["op_name"] not in _EDGE_OPS:
            float_ops[op["op_name"]] += 1
    return {"delegate_partitions": len(delegates), "ops_outside_delegate": dict(outside),
            "float_ops": dict(float_ops), "ops": dict(Counter(o["op_name"] for o in original))}


def litert_outside_cost(path: Path, runs: int = 10) -> dict[str, Any] | None:
    """What the ops XNNPACK did not take cost, measured here with LiteRT's own profiler
    (:func:`edgepipe.device.litert_profiler.profile_ops`: ``runs`` runs on seeded noise, one
    thread): per op type the sum of its instances' medians, against the median ``Invoke``.
    None where the profiler is not available (the reason is the device's business)."""
    import statistics

    from ..device.litert_profiler import PerOpUnavailable, profile_ops

    try:
        profile = profile_ops(path, None, threads=1, runs=runs)
    except PerOpUnavailable:
        return None
    ops: Counter[str] = Counter()
    for op in profile.ops:
        if not op.delegated and op.times_us:
            ops[op.name] += statistics.median(op.times_us) / 1000
    total = statistics.median(profile.invoke_us) / 1000 if profile.invoke_us else 0.0
    spent = sum(ops.values())
    return {"ms": round(spent, 4), "run_ms": round(total, 4),
            "share": round(spent / total, 4) if total else None,
            "ops_ms": {k: round(v, 4) for k, v in ops.most_common()},
            "measured": f"here, LiteRT profiler, median of {runs} runs"}


class TFLiteConverter(Converter):
    format = "tflite"
    suffix = ".tflite"
    extra = "tflite"
    requires = ("litert_torch", "ai_edge_litert")
    distributions = ("litert-torch", "ai-edge-litert", "torchao", "ai-edge-quantizer")

    def convert(self, src: SourceModel, precision: str, calibration: list[torch.Tensor],
                path: Path, debug_info: bool = True, keep_float: tuple[str, ...] = ()
                ) -> Converted:
        import litert_torch

        # Images arrive HWC: an NHWC input saves the device a transpose per frame.
        example = src.example_input().permute(0, 2, 3, 1).contiguous()
        nhwc_calibration = [b.permute(0, 2, 3, 1).contiguous() for b in calibration]
        quant = None
        # int8 HARD_SWISH is not taken by LiteRT's XNNPACK delegate: decompose it for int8;
        # SiLU as sigmoid * x, which the quantizer keeps int8 (LOGISTIC and MUL)
        int8 = precision == "int8"
        with runtime_forms(src.module, src.example_input(),
                           Forms(decomposed_hswish=int8, decomposed_silu=int8)) as swapped:
            nhwc = litert_torch.to_channel_last_io(src.module, args=[0]).eval()
            if precision == "int8":
                from litert_torch.quantize import pt2e_quantizer
                from litert_torch.quantize.quant_config import QuantConfig

                quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
                    pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
                # the channels-last wrapper holds the model as a submodule: its names gain
                # the wrapper's prefix
                prefix = next(n for n, m in nhwc.named_modules() if m is src.module)
                for name in keep_float:
                    keep_in_float(quantizer, f"{prefix}.{name}" if prefix else name)
                with litert_module_names():
                    graph = quantize_pt2e(nhwc, example, quantizer, nhwc_calibration,
                                          fold_quantize=False)
                    edge = litert_torch.convert(
                        graph, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
                quant = quantization_record(
                    "PT2E static, litert-torch PT2EQuantizer symmetric", src, calibration,
                    keep_float)
            else:
                edge = litert_torch.convert(nhwc, (example,))
        edge.export(str(path))
        fp16 = None
        if precision == "fp16":
            from .half import litert_fp16_weights

            fp16 = litert_fp16_weights(path)
            quant = {"weights": "fp16 (DEQUANTIZE ops; convolutions and fully connected "
                                "layers)",
                     "activations": "fp16 where the CPU computes fp16 natively (XNNPACK, "
                                    f"metadata {fp16['metadata']}), else fp32",
                     "io": "float32"}
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=str(path), num_threads=1)
        inputs, outputs = litert_tensor_specs(interp)
        graph = {**litert_graph_stats(interp), "forms_swapped": swapped}
        if graph["ops_outside_delegate"] and debug_info:
            cost = litert_outside_cost(path)
            if cost is not None:
                graph["outside_cost"] = cost
        if fp16 is not None:
            graph["fp16_weight_tensors"] = fp16["fp16_weight_tensors"]
        return Converted(path=path, precision=precision, inputs=inputs, outputs=outputs,
                         quantization=quant, graph=graph)
