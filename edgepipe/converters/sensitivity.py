"""Which layers int8 hurts, and which to keep in float (``convert --int8 --sensitivity``,
``--keep-float NAME,…|auto[:TARGET]``).

A layer is a module with weights that PT2E quantizes (``nn.Conv2d``, ``nn.Linear``), named as
in the model (``features.3.block.0.0``). The same PT2E flow the converters use (XNNPACK's
symmetric config: weights int8 per-channel, activations int8 per-tensor; litert-torch's
quantizer uses the same scheme) is run in PyTorch on q/dq graphs, whose arithmetic simulates
the runtime's int8: for every layer, the output error when it **alone** is quantized, and when
it alone is kept in **float** with the rest int8, measured against the float model on the
calibration images as SQNR (dB; higher is better), cosine and top-1 agreement. The figures
rank layers for one model; a runtime's own kernels round slightly differently (``edgepipe
evaluate`` measures the artifacts themselves on the device).

``auto`` keeps layers in float until the int8 model agrees with float on the images (top-1
agreement ≥ TARGET, default 0.99; or ``sqnr=DB``): greedily, each step adding the cheapest
layer (by multiply-accumulates, the latency proxy at conversion time) whose float copy alone
reached the target, else the layer that loses most when it alone is int8, and measuring
again. The
latency the chosen set costs is then measured on the converted artifacts and reported.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..errors import EdgepipeError
from .quantize import (
    capture_for_quantization,
    keep_in_float,
    litert_module_names,
    op_name,
    prepare,
)

LAYER_TYPES = (nn.Conv2d, nn.Linear)
# ops a quantizer fuses into the layer before them (conv-bn-relu, linear-relu)
FOLLOWERS = {"batch_norm", "_native_batch_norm_legit_no_training", "getitem", "relu", "relu_",
             "relu6", "hardtanh", "hardtanh_", "clamp"}
DEFAULT_AGREEMENT = 0.99


def quantizable_layers(module: nn.Module) -> list[str]:
    """The names of the layers PT2E quantizes, in module order."""
    return [name for name, m in module.named_modules() if isinstance(m, LAYER_TYPES) and name]


def layer_macs(module: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates of each layer for one ``example`` (a forward pass with hooks)."""
    macs: dict[str, int] = {}
    hooks = []
    for name, m in module.named_modules():
        if isinstance(m, LAYER_TYPES) and name:
            def hook(mod: nn.Module, _: Any, out: torch.Tensor, name: str = name) -> None:
                per_output = mod.weight[0].numel()  # one output value: one filter (per group)
                macs[name] = int(out.numel() * per_output)
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            module(example)
    finally:
        for h in hooks:
            h.remove()
    return macs


@dataclass
class Fidelity:
    """A quantized variant against the float model on the evaluation images."""

    sqnr_db: float  # 10·log10(Σ float² / Σ (float − int8)²) over every output value
    cosine: float  # mean over images of the outputs' cosine similarity
    agreement: float  # share of images whose top-1 class is the float model's


def fidelity(reference: list[torch.Tensor], outputs: list[torch.Tensor]) -> Fidelity:
    ref = torch.cat([r.flatten(1) for r in reference]).double()
    out = torch.cat([o.flatten(1) for o in outputs]).double()
    noise = float(((ref - out) ** 2).sum())
    signal = float((ref ** 2).sum())
    sqnr = math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-30) / noise)
    cosine = float(nn.functional.cosine_similarity(ref, out, dim=1).mean())
    agree = float((ref.argmax(1) == out.argmax(1)).double().mean()) if ref.shape[1] > 1 \
        else float(((ref > 0) == (out > 0)).double().mean())
    return Fidelity(round(sqnr, 3), round(cosine, 6), agree)


@dataclass
class QuantizationStudy:
    """What quantizing the model costs in fidelity, layer by layer."""

    module: nn.Module
    example: torch.Tensor
    calibration: list[torch.Tensor]
    quantizer_class: Callable[[], Any]  # a PT2E quantizer class (XNNPACK's, litert-torch's)
    config: Any  # the int8 config: set globally, or for one layer alone
    prefix: str = ""  # how the quantized graph names the model's modules
    # what the variants are measured against (default: ``module``; the original model where
    # ``module`` is a bias-corrected copy)
    float_module: nn.Module | None = None

    def __post_init__(self) -> None:
        self._graph = capture_for_quantization(self.module, self.example)
        with torch.no_grad():
            self.reference = [(self.float_module or self.module)(b) for b in self.calibration]

    def converted(self, quantizer: Any, fold_quantize: bool = True) -> torch.fx.GraphModule:
        """The q/dq graph ``quantizer`` makes, calibrated on the study's images."""
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        names = (litert_module_names() if type(quantizer).__module__.startswith("litert_torch")
                 else contextlib.nullcontext())
        with names:
            prepared = prepare(copy.deepcopy(self._graph), quantizer)
        with torch.no_grad():
            for batch in self.calibration:
                prepared(batch)
            return convert_pt2e(prepared, fold_quantize=fold_quantize)

    def measure(self, graph: nn.Module, limit: int | None = None) -> Fidelity:
        """``graph`` against the float model on the first ``limit`` images (default all)."""
        images = self.calibration[:limit]
        with torch.no_grad():
            return fidelity(self.reference[:len(images)], [graph(b) for b in images])

    def run(self, quantizer: Any) -> Fidelity:
        return self.measure(self.converted(quantizer))

    def int8(self, keep_float: list[str] = ()) -> Fidelity:
        """Everything int8 but ``keep_float``."""
        quantizer = self.quantizer_class().set_global(self.config)
        for name in keep_float:
            keep_in_float(quantizer, self.prefix + name)
        return self.run(quantizer)

    def layer_nodes(self, name: str) -> set[str]:
        """The graph nodes that quantizing layer ``name`` annotates: its own, and the batch
        norm and activation that follow it (the quantizers' conv-bn-relu patterns span
        modules, so a filter on the layer's module alone would match no pattern)."""
        fqn = self.prefix + name

        def owner(node: Any) -> str | None:
            stack = node.meta.get("nn_module_stack")
            return list(stack.values())[-1][0] if stack else None

        own = [n for n in self._graph.graph.nodes
               if n.op == "call_function" and owner(n) == fqn]
        found = {n.name for n in own}
        for node in own:
            while len(node.users) == 1:
                node = next(iter(node.users))
                if getattr(node.target, "__name__", str(node.target)).split(".")[0] \
                        not in FOLLOWERS:
                    break
                found.add(node.name)
        return found

    def alone(self, name: str) -> Fidelity:
        """Only ``name`` int8 (with the batch norm and activation fused into it), the rest
        float."""
        quantizer = self.quantizer_class().set_global(self.config)
        if hasattr(quantizer, "set_filter_function"):
            nodes = self.layer_nodes(name)
            # the annotators check every node of a pattern, weights and biases included, and
            # folding batch norms into convolutions makes new ones: constants always pass
            # (they are annotated only as inputs of an op that itself passed)
            quantizer.set_filter_function(
                lambda node: node.op == "get_attr" or node.name in nodes)
        else:  # litert-torch's quantizer has no filter: every other layer kept float
            for other in quantizable_layers(self.module):
                if other != name:
                    keep_in_float(quantizer, self.prefix + other)
        return self.run(quantizer)


def sensitivity(study: QuantizationStudy, on_layer: Callable[[str], None] | None = None
                ) -> dict[str, Any]:
    """Per layer: fidelity when it alone is int8, and when it alone stays float; ranked by the
    error it adds alone (lowest SQNR first). ``{"int8": Fidelity, "layers": [...]}``."""
    layers = quantizable_layers(study.module)
    if not layers:
        raise EdgepipeError("the model has no Conv2d or Linear layer to quantize")
    macs = layer_macs(study.module, study.example)
    rows = []
    for name in layers:
        if on_layer:
            on_layer(name)
        rows.append({"layer": name, "macs": macs.get(name, 0),
                     "alone_int8": asdict(study.alone(name)),
                     "alone_float": asdict(study.int8([name]))})
    rows.sort(key=lambda r: r["alone_int8"]["sqnr_db"])
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return {"int8": asdict(study.int8()), "images": len(study.calibration),
            "method": "PT2E q/dq graphs in PyTorch against the float model, on the "
                      "calibration images", "layers": rows}


def _quantizers(graph: torch.fx.GraphModule) -> tuple[list[Any], list[Any]]:
    """(activation quantize nodes, weight quantize nodes) of an unfolded q/dq graph."""
    acts, weights = [], []
    for node in graph.graph.nodes:
        if node.op != "call_function" or not op_name(node.target).startswith("quantize_per_"):
            continue
        (weights if node.args[0].op == "get_attr" else acts).append(node)
    return acts, weights


def _without(graph: torch.fx.GraphModule, names: set[str]) -> torch.fx.GraphModule:
    """A copy of ``graph`` with the quantize nodes ``names`` and their dequantize nodes
    removed: those tensors flow in float."""
    graph = copy.deepcopy(graph)
    for node in list(graph.graph.nodes):
        if node.name in names:
            for dq in list(node.users):
                dq.replace_all_uses_with(node.args[0])
                graph.graph.erase_node(dq)
            graph.graph.erase_node(node)
    graph.recompile()
    return graph


def _baked(graph: torch.fx.GraphModule, weights: list[Any]) -> torch.fx.GraphModule:
    """A copy of ``graph`` whose weight quantize → dequantize pairs are replaced by their
    result (the rounded weights, in float): the same arithmetic without requantizing every
    weight on every forward pass, which made the activation study several times slower."""
    graph = copy.deepcopy(graph)
    names = {n.name for n in weights}

    def value(arg: Any) -> Any:
        if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
            obj: Any = graph
            for part in arg.target.split("."):
                obj = getattr(obj, part)
            return obj
        return arg

    for node in list(graph.graph.nodes):
        if node.name not in names:
            continue
        quantized = node.target(*[value(a) for a in node.args])
        for i, dq in enumerate(list(node.users)):
            rounded = dq.target(quantized, *[value(a) for a in dq.args[1:]])
            attr = f"_edgepipe_rounded_{node.name}_{i}"
            graph.register_buffer(attr, rounded)
            with graph.graph.inserting_before(dq):
                dq.replace_all_uses_with(graph.graph.get_attr(attr))
            graph.graph.erase_node(dq)
        graph.graph.erase_node(node)
    graph.graph.eliminate_dead_code()
    graph.recompile()
    return graph


ACTIVATION_IMAGES = 8  # images per variant in the activation ranking (2 variants per tensor)


def _tensor_name(node: Any) -> str:
    """Where an activation comes from, in the model's words: "features.3 add",
    "features.1.conv.0.0 hardtanh", "input"."""
    if node.op == "placeholder":
        return "input"
    stack = node.meta.get("nn_module_stack") or {}
    module = list(stack.values())[-1][0] if stack else ""
    return f"{module} {op_name(node.target)}".strip()


def activation_sensitivity(study: QuantizationStudy,
                           on_tensor: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Per quantized activation (a layer's output, a residual add's, the model's input):
    fidelity when it alone is int8 (weights and every other activation float), and when it
    alone stays float (the rest int8); ranked by the error it adds alone. These are the
    tensors a runtime requantizes between layers; ``--keep-float`` keeps layers, not tensors,
    in float, so this ranking diagnoses: an error spread over many activations (no tensor
    alone recovers much) says per-tensor int8 activations, not one layer, cost the accuracy.
    ``{"int8": Fidelity, "tensors": [...]}``."""
    quantizer = study.quantizer_class().set_global(study.config)
    graph = study.converted(quantizer, fold_quantize=False)
    acts, weights = _quantizers(graph)
    baked = _baked(graph, weights)  # weights int8, computed once
    act_names = {n.name for n in acts}
    float_weights = _without(graph, {n.name for n in weights})  # activations int8 only
    rows = []
    for node in acts:
        name = _tensor_name(node.args[0])
        if on_tensor:
            on_tensor(name)
        alone_int8 = _without(float_weights, act_names - {node.name})
        rows.append({"tensor": name, "node": node.args[0].name,
                     "scale": float(node.args[1]),
                     "alone_int8": asdict(study.measure(alone_int8, ACTIVATION_IMAGES)),
                     "alone_float": asdict(study.measure(_without(baked, {node.name}),
                                                         ACTIVATION_IMAGES))})
    rows.sort(key=lambda r: r["alone_int8"]["sqnr_db"])
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return {"int8": asdict(study.measure(baked)),
            "activations_float": asdict(study.measure(_without(baked, act_names))),
            "weights_float": asdict(study.measure(float_weights)),
            "images": len(study.calibration),
            "images_per_tensor": min(ACTIVATION_IMAGES, len(study.calibration)),
            "tensors": rows}


def parse_target(text: str) -> tuple[str, float]:
    """``auto`` → ("agreement", 0.99); ``auto:0.995`` or ``auto:99.5`` → agreement;
    ``auto:sqnr=30`` → ("sqnr_db", 30)."""
    if text == "auto":
        return "agreement", DEFAULT_AGREEMENT
    spec = text.removeprefix("auto:")
    try:
        if spec.startswith("sqnr="):
            return "sqnr_db", float(spec.removeprefix("sqnr=").removesuffix("dB"))
        value = float(spec.rstrip("%"))
    except ValueError:
        raise EdgepipeError(f"--keep-float {text}: give auto, auto:0.99 (top-1 agreement "
                            "with float) or auto:sqnr=30 (dB)") from None
    value = value / 100 if value > 1 else value
    if not 0 < value <= 1:
        raise EdgepipeError(f"--keep-float {text}: an agreement between 0 and 1 (or 100 %)")
    return "agreement", value


PLATEAU_STEPS = 3  # steps without improvement before the search gives up


def choose_float_layers(study: QuantizationStudy, target: str = "auto",
                        ranking: dict[str, Any] | None = None,
                        on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Layers whose float copies bring the int8 model to ``target``, chosen greedily (see the
    module's text). ``ranking``: a :func:`sensitivity` result to reuse.

    First the ceiling: every layer in float, the ops between them (residual adds, pools, the
    model's input) still int8. A target above the ceiling cannot be reached by keeping layers
    in float, and is not chased: the search keeps the prefix of layers that did best, stops
    after :data:`PLATEAU_STEPS` steps without improvement, and says so (``reached`` false,
    ``ceiling``)."""
    metric, goal = parse_target(target)
    ranking = ranking or sensitivity(study, on_step)
    base = study.int8()
    ceiling = study.int8([r["layer"] for r in ranking["layers"]])
    steps = [{"float_layers": [], **asdict(base)}]
    current, chosen = base, []
    best, best_at, since = getattr(base, metric), 0, 0
    alone = {r["layer"]: r for r in ranking["layers"]}
    left = set(alone)
    while left and getattr(current, metric) < goal and since < PLATEAU_STEPS:
        # the cheapest layer whose float copy alone reached the target; else the layer that
        # alone int8 loses most (the single-layer figures guide; each step is measured)
        enough = [n for n in left if alone[n]["alone_float"][metric] >= goal]
        name = (min(enough, key=lambda n: (alone[n]["macs"], n)) if enough else
                min(left, key=lambda n: (alone[n]["alone_int8"][metric],
                                         -alone[n]["alone_float"][metric])))
        left.discard(name)
        if on_step:
            on_step(f"keeping {name} in float")
        chosen.append(name)
        current = study.int8(chosen)
        steps.append({"float_layers": list(chosen), **asdict(current)})
        if getattr(current, metric) > best:
            best, best_at, since = getattr(current, metric), len(chosen), 0
        else:
            since += 1
    reached = getattr(current, metric) >= goal
    if not reached:  # the prefix that did best, not the layers tried after it
        chosen = chosen[:best_at]
        current = Fidelity(**{k: v for k, v in steps[best_at].items() if k != "float_layers"})
    return {"target": {"metric": metric, "value": goal}, "float_layers": chosen,
            "reached": reached, "fidelity": asdict(current), "int8": asdict(base),
            "ceiling": asdict(ceiling), "steps": steps,
            "order": "the cheapest layer (MACs) whose float copy alone reaches the target, "
                     "else the layer that loses most alone int8; measured after each step; "
                     f"stops after {PLATEAU_STEPS} steps without improvement"}
