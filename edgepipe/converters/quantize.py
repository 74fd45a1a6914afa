"""PT2E static int8 quantization, shared by the ExecuTorch and LiteRT converters."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import EdgepipeError

# ops that only move or view values: they keep whatever precision their input has
# (and dropout, a no-op in an eval graph; in-place variants end with "_")
_LAYOUT_OPS = {"view", "reshape", "_unsafe_view", "permute", "flatten", "squeeze", "unsqueeze",
               "expand", "clone", "contiguous", "t", "transpose", "dropout", "feature_dropout",
               "alpha_dropout", "alias", "detach", "getitem", "size", "sym_size",
               "_assert_tensor_metadata", "slice", "select"}


_FUSED_ACTIVATIONS = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "clamp"}


def op_name(target: object) -> str:
    """A graph node's op as people write it: ``hardswish`` for ``aten.hardswish.default``,
    ``mean`` for ``aten.mean.dim``, ``_to_dim_order_copy`` for
    ``dim_order_ops._to_dim_order_copy.default``."""
    # an op overload (aten or edge dialect) names its op in its packet; its own __name__
    # ends in the overload ("mean.dim", "add.Tensor", "transpose.int")
    packet = getattr(getattr(target, "overloadpacket", None), "__name__", None)
    if packet:
        return packet
    name = getattr(target, "__name__", None) or str(target)
    parts = name.split("(")[0].split("::")[-1].split(".")
    return parts[-2] if len(parts) >= 3 or (len(parts) == 2 and parts[-1] == "default") \
        else parts[-1]


def float_ops(graph_module: nn.Module) -> dict[str, int]:
    """Ops of a converted PT2E graph that compute in float: an input that is a float tensor
    not coming from a dequantize (through views). Each is a float island in an int8 graph.
    Constants (biases, scalars) and the model's float input feeding a quantize are not ops."""
    graph = graph_module.graph  # type: ignore[attr-defined]

    def source(node: object) -> object:
        while getattr(node, "op", None) == "call_function" and \
                op_name(node.target).rstrip("_") in _LAYOUT_OPS \
                and node.args:  # type: ignore[attr-defined]
            node = node.args[0]  # type: ignore[attr-defined]
        return node

    def fused(src: object, node: object) -> bool:
        # conv/linear/add/mul + ReLU: quantizers annotate the pair, XNNPACK fuses it; the
        # float tensor between the two never exists at run time
        return (op_name(node.target) in _FUSED_ACTIVATIONS  # type: ignore[attr-defined]
                and getattr(src, "op", None) == "call_function"
                and len(src.users) == 1)  # type: ignore[attr-defined]

    found: Counter[str] = Counter()
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        name = op_name(node.target)
        if "quantize" in name or name.rstrip("_") in _LAYOUT_OPS:
            continue
        for arg in node.all_input_nodes:
            src = source(arg)
            if src.op == "get_attr" or fused(src, node):
                continue
            val = src.meta.get("val")
            is_float = isinstance(val, torch.Tensor) and val.dtype.is_floating_point
            if is_float and not (src.op == "call_function" and "dequantize" in op_name(src.target)):
                found[name] += 1
                break
    return dict(found)


def capture_for_quantization(module: nn.Module, example: torch.Tensor) -> nn.Module:
    """The graph a PT2E quantizer annotates.

    Strict (dynamo) export records ``source_fn_stack``, which quantizers use to find
    patterns such as ``operator.add``: without it litert-torch leaves every residual add in
    float. Models dynamo cannot trace fall back to non-strict export.
    """
    try:
        return torch.export.export(module, (example,), strict=True).module()
    except Exception:  # dynamo's failures have many types; non-strict is the fallback
        return torch.export.export(module, (example,), strict=False).module()


# clamps a convolution or linear layer's output is quantized after, as it is after a ReLU:
# the bounds both runtimes fuse into the layer (TFLite: RELU6, RELU_N1_TO_1, RELU_0_TO_1)
_CLAMPS = {"hardtanh", "hardtanh_"}
_FUSED_BOUNDS = {(0.0, 6.0), (-1.0, 1.0), (0.0, 1.0)}
_CLAMPED_PRODUCERS = {"conv1d", "conv2d", "convolution", "linear"}


def fuse_clamp_annotations(graph: torch.fx.GraphModule) -> int:
    """Quantize a conv/linear → ReLU6 (hardtanh) output once, after the clamp.

    XNNPACK's and litert-torch's PT2E quantizers fuse conv → ReLU (one observer, after the
    ReLU) but not conv → hardtanh: the convolution's output is observed before the clamp, and
    the clamp shares those parameters, so int8 spans the conv's whole range (MobileNetV2's
    ReLU6 layers: [-20, 15] and more) while only [0, 6] is ever used — 3 to 6 times coarser
    steps. Both runtimes run the clamp fused into the convolution (XNNPACK's output min/max,
    TFLite's fused RELU6), so one observer after the clamp is what they execute. Measured on
    torchvision's ImageNet MobileNetV2, 60 natural crops, simulated int8: logit cosine to fp32
    0.935 → 0.972 (``benchmarks/accuracy.py`` has the on-device figures).

    Rewrites the annotations in place, between the quantizer's ``annotate`` and observer
    insertion; returns how many pairs it fused. A producer with other users, or one left in
    float (not annotated), is left as it is.
    """
    key = "quantization_annotation"
    fused = 0
    for clamp in graph.graph.nodes:
        if clamp.op != "call_function" or op_name(clamp.target) not in _CLAMPS:
            continue
        bounds = (float(clamp.args[1]) if len(clamp.args) > 1 else -1.0,
                  float(clamp.args[2]) if len(clamp.args) > 2 else 1.0)
        if bounds not in _FUSED_BOUNDS:
            continue
        producer = clamp.args[0]
        if (not isinstance(producer, torch.fx.Node) or producer.op != "call_function"
                or op_name(producer.target) not in _CLAMPED_PRODUCERS
                or len(producer.users) != 1):
            continue
        annotation = producer.meta.get(key)
        if annotation is None or annotation.output_qspec is None:
            continue
        output_qspec, annotation.output_qspec = annotation.output_qspec, None
        clamp.meta[key] = type(annotation)(input_qspec_map={}, output_qspec=output_qspec,
                                           _annotated=True)
        fused += 1
    return fused


def _clamp_fusing(quantizer: Any) -> Any:
    """``quantizer`` with :func:`fuse_clamp_annotations` run after its annotation."""
    from torchao.quantization.pt2e.quantizer import Quantizer

    class ClampFusing(Quantizer):
        def transform_for_annotation(self, model: torch.fx.GraphModule
                                     ) -> torch.fx.GraphModule:
            return quantizer.transform_for_annotation(model)

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = quantizer.annotate(model)
            fuse_clamp_annotations(model)
            return model

        def validate(self, model: torch.fx.GraphModule) -> None:
            quantizer.validate(model)

    return ClampFusing()


def prepare(graph: nn.Module, quantizer: Any) -> nn.Module:
    """``prepare_pt2e`` with ReLU6 quantized as ReLU is (:func:`fuse_clamp_annotations`)."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    return prepare_pt2e(graph, _clamp_fusing(quantizer))


def quantize_pt2e(module: nn.Module, example: torch.Tensor, quantizer: object,
                  calibration: list[torch.Tensor], fold_quantize: bool = True,
                  rewrite: Callable[[torch.fx.GraphModule], object] | None = None
                  ) -> nn.Module:
    """Export, insert observers, run the calibration batches, convert to q/dq form.
    ``rewrite``: changes the captured graph in place before the quantizer annotates it (a
    converter's graph rewrites, so that the quantizer sees the ops the runtime will run)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    graph = capture_for_quantization(module, example)
    if rewrite is not None:
        rewrite(graph)  # type: ignore[arg-type]
    prepared = prepare(graph, quantizer)
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
    return convert_pt2e(prepared, fold_quantize=fold_quantize)


def keep_in_float(quantizer: Any, module_name: str) -> None:
    """Leave ``module_name`` (and what it contains) out of a PT2E quantizer's annotation.

    XNNPACK's and litert-torch's quantizers skip a module whose config is None (their
    annotation returns early for it, and the global config excludes every named module), but
    their ``set_module_name`` asserts that the config is not None ("not supported yet": the
    case they have not covered is cancelling an annotation made earlier, which cannot happen
    here, where nothing else names the module). So the entry is written directly.
    """
    if not hasattr(quantizer, "module_name_config"):
        raise EdgepipeError(f"{type(quantizer).__name__} cannot leave a module in float")
    quantizer.module_name_config[module_name] = None


@contextmanager
def litert_module_names() -> Iterator[None]:
    """Within the block, litert-torch's quantizer finds a node's modules by their qualified
    names.

    litert-torch 0.10 reads them from the keys of a node's ``nn_module_stack``
    ("L__self___features_3" → "features.3"), which torch.export no longer writes (its keys are
    ids now; the names are in the values, where XNNPACK's quantizer reads them): without this,
    ``--keep-float`` names match nothing and every layer is quantized.
    """
    from litert_torch.quantize import pt2e_quantizer

    original = pt2e_quantizer._get_module_name_filter

    def by_name(module_name: str) -> Any:
        def module_name_filter(node: Any) -> bool:
            stack = node.meta.get("nn_module_stack") or {}
            return module_name in [value[0] for value in stack.values()]

        return module_name_filter

    pt2e_quantizer._get_module_name_filter = by_name
    try:
        yield
    finally:
        pt2e_quantizer._get_module_name_filter = original


def quantization_record(scheme: str, src: Any, calibration: list[torch.Tensor],
                        keep_float: tuple[str, ...]) -> dict[str, Any]:
    """The manifest's ``quantization`` of an int8 artifact (both converters)."""
    return {"scheme": scheme, "weights": "int8 per-channel", "activations": "int8 per-tensor",
            "relu6": "quantized after the clamp (fused)",
            "calibration_images": len(calibration), "float_layers": list(keep_float),
            "bias_corrected_layers": src.bias_corrected}


# what both converters' quantizers do to weights: symmetric, per output channel, [-127, 127]
WEIGHT_QMAX = 127
WEIGHT_EPS = 2 ** -12  # the observers' smallest scale


def conv_bn_pairs(module: nn.Module) -> list[tuple[str, nn.Conv2d, nn.BatchNorm2d]]:
    """(conv name, conv, batch norm) for each ``Conv2d`` followed by a ``BatchNorm2d`` in an
    ``nn.Sequential`` — how torchvision's ``Conv2dNormActivation`` and most mobile models
    build them, and the pattern PT2E folds before quantizing the weights."""
    pairs = []
    for name, m in module.named_modules():
        if not isinstance(m, nn.Sequential):
            continue
        kids = list(m.named_children())
        for (a_name, a), (_, b) in zip(kids, kids[1:], strict=False):
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                pairs.append((f"{name}.{a_name}" if name else a_name, a, b))
    return pairs


def correct_biases(module: nn.Module, calibration: list[torch.Tensor],
                   skip: Iterable[str] = ()) -> tuple[nn.Module, list[str]]:
    """Bias correction for per-channel int8 weights: a copy of ``module`` whose batch norms
    absorb the mean shift that rounding the (BN-folded) weights adds to each output channel.

    Rounding makes W + ΔW; on average a convolution's output moves by ΔW·E[x], per output
    channel Σ over input channels and taps of ΔW times that input channel's mean. Nagel et al.
    2019 ("Data-Free Quantization Through Weight Equalization and Bias Correction", §4.2)
    subtract it; here E[x] is measured on the calibration batches (their "empirical" variant)
    in the float model, and the shift is taken off the batch norm's bias, which PT2E folds
    into the convolution's. ``skip``: layer names kept in float (not corrected). Returns
    (the copy, the corrected layers' names); the original is untouched. Borders (padding)
    and the activations' own rounding are not modelled.
    """
    model = copy.deepcopy(module).eval()
    skip = set(skip)
    # a batch norm without running statistics or a bias has nowhere to take the shift
    pairs = [(n, c, b) for n, c, b in conv_bn_pairs(model)
             if n not in skip and b.bias is not None and b.running_var is not None]
    sums: dict[str, torch.Tensor] = {}
    hooks = []
    for name, conv, _ in pairs:
        def hook(_: nn.Module, inputs: tuple[torch.Tensor, ...], name: str = name) -> None:
            x = inputs[0].detach().double()
            sums[name] = sums.get(name, 0) + x.mean(dim=(0, 2, 3))
        hooks.append(conv.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for batch in calibration:
                model(batch)
    finally:
        for h in hooks:
            h.remove()
    done = []
    with torch.no_grad():
        for name, conv, bn in pairs:
            if name not in sums:
                continue  # not on the path the images take
            mean_in = sums[name] / len(calibration)  # per input channel
            gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
            scale = (gamma / torch.sqrt(bn.running_var + bn.eps)).double()
            w = conv.weight.double() * scale.view(-1, 1, 1, 1)
            step = (w.abs().amax(dim=(1, 2, 3)) / WEIGHT_QMAX).clamp(min=WEIGHT_EPS)
            step = step.view(-1, 1, 1, 1)
            dw = (torch.round(w / step).clamp(-WEIGHT_QMAX, WEIGHT_QMAX) * step - w).sum((2, 3))
            groups = conv.groups
            per_group_in = conv.in_channels // groups
            dw = dw.view(groups, conv.out_channels // groups, per_group_in)
            shift = (dw * mean_in.view(groups, 1, per_group_in)).sum(-1).reshape(-1)
            bn.bias -= shift.to(bn.bias.dtype)
            done.append(name)
    return model, done
