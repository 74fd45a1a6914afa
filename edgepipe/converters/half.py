"""fp16 artifacts: what both converters share (the model in half, the range check), and
LiteRT's fp16 weights with the flag that lets XNNPACK compute in fp16.

How each runtime does fp16 on a CPU (executorch 1.5.1, ai-edge-litert 2.3.0):

* ExecuTorch: the model is exported in half (weights, activations, input and output float16)
  and lowered to XNNPACK, whose partitioner takes float16 nodes as it takes float32 ones.
  The program's tensors are float16 end to end: a cast from the caller's float32 would stay
  outside the delegate (XNNPACK's partitioner takes no dtype conversion) as a portable-kernel
  copy, 1-2 ms on MobileNetV3-Small at 224 here, so the runner rounds the input to float16
  itself, once, outside the timed runs. XNNPACK's fp16 operators run native fp16 kernels on
  ARM with fp16 arithmetic (``neonfp16arith``), and on x86 convert to fp32 around each kernel
  (F16C): slower than fp32 there.
* LiteRT: the weights of convolutions and fully connected layers are stored as float16 with
  a DEQUANTIZE op each (ai-edge-quantizer's ``float_casting``; TensorFlow's "float16
  quantization"), and the model carries the metadata ``reduced_precision_support =
  fp16accfp16``. XNNPACK's delegate reads it and computes in fp16 where the CPU has native
  fp16 arithmetic (``XNN_FLAG_HINT_FP16_INFERENCE``: ARM with FEAT_FP16; never on x86, even
  with AVX512-FP16); elsewhere it dequantizes the weights once at load and computes in fp32.
  Its ``FORCE_FP16`` flag (emulated on x86 with AVX2) is not reachable from the Python
  Interpreter; the CompiledModel API takes it (``CpuOptions.xnnpack_flags``), which the
  parity check uses to see fp16 arithmetic's error on a host without native fp16.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import EdgepipeError

FP16_MAX = 65504.0  # the largest finite float16
# LiteRT metadata: fp16 inference with fp16 accumulation allowed (XNNPACK's delegate asks for
# both before it hints fp16 inference: tensorflow/lite/delegates/xnnpack/xnnpack_delegate.cc)
REDUCED_PRECISION_KEY = "reduced_precision_support"
REDUCED_PRECISION_FP16 = "fp16accfp16"
# TFLITE_XNNPACK_DELEGATE_FLAG_FORCE_FP16 (xnnpack_delegate.h)
XNNPACK_FORCE_FP16 = 0x4


def half_module(module: nn.Module) -> nn.Module:
    """A float16 copy of ``module`` (the original stays float32 for the other artifacts)."""
    return copy.deepcopy(module).half().eval()


def _largest(value: Any) -> float:
    tensors = [value] if isinstance(value, torch.Tensor) else (
        list(value.values()) if isinstance(value, dict) else
        list(value) if isinstance(value, (tuple, list)) else [])
    found = [float(t.detach().abs().max()) for t in tensors
             if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()]
    return max(found, default=0.0)


@torch.no_grad()
def check_fp16_range(module: nn.Module, inputs: list[torch.Tensor], model: str) -> None:
    """Refuse, in one line naming the layer, a model whose weights or activations do not fit
    in float16 (|x| > 65504 becomes inf, then NaN): found with fp32 forward passes over
    ``inputs`` (the calibration images), each leaf module's output checked."""
    for name, p in module.named_parameters():
        largest = _largest(p)
        if largest > FP16_MAX:
            raise EdgepipeError(
                f"fp16: {model}'s parameter {name} reaches |w| = {largest:.3g}, past float16's "
                f"{FP16_MAX:.0f}: it cannot be fp16; convert without --fp16 (fp32, int8)")
    worst: dict[str, tuple[float, str]] = {}
    handles = []
    for name, m in module.named_modules():
        if name and not list(m.children()):
            def hook(mod: nn.Module, args: tuple, out: Any, name: str = name) -> None:
                largest = _largest(out)
                if largest > worst.get(name, (0.0, ""))[0]:
                    worst[name] = (largest, type(mod).__name__)
            handles.append(m.register_forward_hook(hook))
    try:
        for x in inputs:
            module(x)
    finally:
        for h in handles:
            h.remove()
    order = [n for n, m in module.named_modules() if n in worst]
    for name in order:
        largest, kind = worst[name]
        if largest > FP16_MAX:
            raise EdgepipeError(
                f"fp16: {model}'s {name} ({kind}) outputs |x| up to {largest:.3g} on the "
                f"calibration images, past float16's {FP16_MAX:.0f} (it would give inf): "
                "this model cannot run in fp16; convert without --fp16 (fp32, int8)")


def litert_fp16_weights(path: Path) -> dict[str, Any]:
    """Rewrite the fp32 ``.tflite`` at ``path`` in place: float16 weights for every
    convolution and fully connected layer (DEQUANTIZE ops in front), and the metadata that
    lets XNNPACK compute in fp16. Returns what was done (for the graph statistics)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils
    from ai_edge_quantizer import qtyping, quantizer

    q = quantizer.Quantizer(path.read_bytes())
    q.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                             num_bits=16, algorithm_key="float_casting")
    model = flatbuffer_utils.read_model_from_bytearray(
        bytearray(q.quantize(enable_progress_report=False).quantized_model))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(REDUCED_PRECISION_FP16.encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = REDUCED_PRECISION_KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or [])
                      if m.name != REDUCED_PRECISION_KEY.encode()
                      and m.name != REDUCED_PRECISION_KEY] + [entry]
    halves = sum(1 for g in model.subgraphs for t in g.tensors
                 if t.type == schema.TensorType.FLOAT16)
    tmp = path.with_name(f".{path.name}.fp16")
    tmp.write_bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    tmp.replace(path)
    return {"fp16_weight_tensors": halves,
            "metadata": {REDUCED_PRECISION_KEY: REDUCED_PRECISION_FP16}}


def litert_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a ``.tflite`` (name → value), read without the runtime."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(Path(path).read_bytes()))
    found = {}
    for m in model.metadata or []:
        name = m.name.decode() if isinstance(m.name, bytes) else str(m.name)
        data = model.buffers[m.buffer].data
        if data is not None and len(data) < 256:
            found[name] = bytes(np.asarray(data, dtype=np.uint8)).decode(errors="replace")
    return found
