"""Which part of the source model each profiled op belongs to, where the runtime tells.

LiteRT: litert-torch names every op's output tensor by the module path it came from,
``Wrapper/pkg.MobileNet_wrapped/torch.nn.modules.container.Sequential_features/
pkg.InvertedResidual_1/...`` (a segment is ``qualified.Class_attribute``; fused ops join several
paths with ``;``). The profiler's events carry no op index for XNNPACK's kernels, only their
execution order and XNNPACK's name, and XNNPACK fuses some ops (a PAD into the convolution
after it) or elides them (a RESHAPE): events are matched to the .tflite's ops by a global
alignment (Needleman-Wunsch) of the two sequences, with XNNPACK's kernel names made to agree
with TFLite's op names. Builtin-op events carry their node index and are pinned to it.

ExecuTorch: XNNPACK's kernels are named by strings, which ``executorch.devtools``' Inspector
maps to no debug handle (its ``module_hierarchy`` is empty for them), so the rows are aligned
the same way with the ETRecord's edge program, whose nodes keep ``nn_module_stack`` (ops run
outside the delegate match by their ATen name); XNNPACK's own layout transposes and the
graph's quantize/dequantize nodes it folds stay unmatched.

A block is the module under the model's root; where that module's children have modules of
their own (a ``Sequential`` of blocks), one level deeper: MobileNetV3's
``features.0`` … ``features.12``, ``avgpool``, ``classifier``. An op whose output names no
module (a model's last op, ``serving_default_output_0``) takes its input's, marked ``after
classifier.1``. Ops the runtime names no module for stay unmapped (``None``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WRAPPERS = {"ChannelLastIOWrapper"}  # litert-torch's NHWC wrapper: its child is the model

# XNNPACK kernel family (op_type of its event name) -> the TFLite ops it runs
XNNPACK_TO_TFLITE = {
    "convolution": {"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV"},
    "deconvolution": {"TRANSPOSE_CONV"},
    "fully connected": {"FULLY_CONNECTED", "CONV_2D", "BATCH_MATMUL"},
    "batch matrix multiply": {"BATCH_MATMUL"},
    "constant pad": {"PAD", "PADV2"},
    "copy": {"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "CONCATENATION"},
    "sigmoid": {"LOGISTIC"},
    "clamp": {"RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1", "MINIMUM", "MAXIMUM"},
    "convert": {"QUANTIZE", "DEQUANTIZE"},
    "mean": {"MEAN"},
    "sum": {"SUM"},
    "multiply": {"MUL"},
    "subtract": {"SUB"},
    "divide": {"DIV"},
    "softmax": {"SOFTMAX"},
    "average pooling": {"AVERAGE_POOL_2D", "MEAN"},
    "max pooling": {"MAX_POOL_2D"},
    "global average pooling": {"MEAN"},
    "square root": {"SQRT"},
    # a unary kernel XNNPACK's name table lacks: int8 HardSwish (which the .tflite holds as
    # ADD, MUL, MUL that XNNPACK fuses) comes out under this name
    "invalid unary op": {"HARD_SWISH", "ADD", "MUL", "LOGISTIC", "RELU", "RELU6", "TANH",
                         "QUANTIZE", "DEQUANTIZE"},
}


@dataclass(frozen=True)
class ModuleRef:
    """A module path in the source model (``features.1.block.0.0``; ``""`` the model itself)
    and its block (``features.1``)."""

    path: str
    block: str


def module_of_tensor(name: str) -> ModuleRef | None:
    """The module a litert-torch tensor name points at: the first of its ``;``-joined paths
    that goes below the model's root, else the root itself (``""``: an op in the model's own
    ``forward``); None for names without a module path (``serving_default_output_0``)."""
    root = None
    for fragment in name.split(";"):
        segments = fragment.split("/")
        if len(segments) == 1:
            if "." in fragment:
                root = ModuleRef("", "")
            continue
        parts: list[str] = []  # attributes under the root
        for segment in segments[1:]:
            last = segment.rsplit(".", 1)[-1]
            if "_" not in last:
                break
            parts.append(last.split("_", 1)[1])
        else:
            if segments[0].rsplit(".", 1)[-1] in WRAPPERS:
                parts = parts[1:]
            return ModuleRef(".".join(parts), "")  # its block: settle_blocks
    return root


def settle_blocks(paths: list[str | None]) -> list[str | None]:
    """The block of each module path (see the module doc), from all of a model's paths."""
    deep = set()
    for path in paths:
        parts = (path or "").removeprefix("after ").split(".")
        if len(parts) >= 3:
            deep.add(parts[0])
    blocks: list[str | None] = []
    for path in paths:
        if path is None:
            blocks.append(None)
            continue
        parts = path.removeprefix("after ").split(".")
        if not parts[0]:
            blocks.append("(model)")
        elif parts[0] in deep and len(parts) >= 2:
            blocks.append(f"{parts[0]}.{parts[1]}")
        else:
            blocks.append(parts[0])
    return blocks


def _with_blocks(ops: list[TfliteOp]) -> list[TfliteOp]:
    blocks = settle_blocks([o.module.path if o.module else None for o in ops])
    return [TfliteOp(o.index, o.op, ModuleRef(o.module.path, b) if o.module and b else None)
            for o, b in zip(ops, blocks, strict=True)]


# XNNPACK kernel family -> words of the ATen / quantized_decomposed ops it runs
XNNPACK_TO_ATEN = {
    "convolution": ("convolution",),
    "fully connected": ("convolution", "linear", "addmm", "mm"),
    "transpose": ("permute",),
    "clamp": ("relu", "hardtanh", "clamp"),
    "convert": ("quantize_per_tensor", "dequantize_per_tensor"),
    "static reshape": ("view", "reshape", "squeeze", "unsqueeze"),
    "copy": ("view", "clone", "cat"),
    "multiply": ("mul",),
    "add": ("add",),
    "subtract": ("sub",),
    "divide": ("div",),
    "mean": ("mean",),
    "sum": ("sum",),
    "hardswish": ("hardswish",),
    "sigmoid": ("sigmoid", "hardsigmoid"),
    "constant pad": ("constant_pad_nd", "pad"),
    "softmax": ("softmax",),
    "average pooling": ("avg_pool2d", "mean"),
    "global average pooling": ("mean", "adaptive_avg_pool2d"),
    "max pooling": ("max_pool2d",),
    "invalid unary op": ("hardswish", "add", "mul", "hardtanh", "relu", "sigmoid",
                         "quantize_per_tensor", "dequantize_per_tensor"),
}


@dataclass(frozen=True)
class TfliteOp:
    """An op of the source side: a TFLite op, or a node of ExecuTorch's edge program."""

    index: int
    op: str  # TFLite builtin name (CONV_2D) or the edge op (aten.convolution.default)
    module: ModuleRef | None


def tflite_ops(path: Path) -> list[TfliteOp]:
    """The ops of a .tflite's first subgraph in execution (node) order with their modules:
    from the op's output tensor name, else its first input that names one."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    names = {t["index"]: t["name"] for t in interp.get_tensor_details()}
    found = []
    for op in interp._get_ops_details():  # no public API lists ops with their tensors
        module = None
        for index in op["outputs"]:
            module = module or module_of_tensor(names.get(index, ""))
        for index in op["inputs"]:
            if module is None and index >= 0:
                found_in = module_of_tensor(names.get(index, ""))
                if found_in is not None:
                    module = ModuleRef(f"after {found_in.path}", found_in.block)
        found.append(TfliteOp(op["index"], op["op_name"], module))
    return _with_blocks(found)


def _family(event_type: str) -> str:
    return re.sub(r"\s+(IGEMM|GEMM|DWConv|Reduce\w*|VMulCAddC|SpMM)$", "", event_type).lower()


def compatible(event_type: str, tflite_op: str) -> bool:
    """Whether an XNNPACK kernel family (``Convolution DWConv``) can run a TFLite op."""
    kind = _family(event_type)
    if tflite_op in XNNPACK_TO_TFLITE.get(kind, set()):
        return True
    a, b = re.sub(r"[^a-z]", "", kind), re.sub(r"[^a-z]", "", tflite_op.lower())
    return len(a) >= 3 and len(b) >= 3 and a[:4] == b[:4]


def _aten_base(op: str) -> str:
    name = op.rsplit("::", 1)[-1].split(".")
    base = name[1] if len(name) > 1 and name[0] in ("aten", "quantized_decomposed") else name[0]
    return base.removesuffix("_copy").removesuffix("_")


def compatible_aten(event_type: str, edge_op: str) -> bool:
    """Whether an XNNPACK kernel family (or an op ExecuTorch ran itself, by its ATen name) can
    run an edge op (``aten.convolution.default``)."""
    base = _aten_base(edge_op)
    if event_type.startswith(("aten", "quantized_decomposed")):
        return _aten_base(event_type) == base
    return any(base == w or base.startswith(w + "_") for w in
               XNNPACK_TO_ATEN.get(_family(event_type), ()))


def align(events: list[dict[str, Any]], ops: list[TfliteOp],
          fits: Any = compatible) -> list[int | None]:
    """For each event (``type``, ``delegated``, ``node``) the position in ``ops`` it ran, or
    None: a global alignment that keeps both orders, scores a match of compatible kinds +3, of
    incompatible kinds −1 (XNNPACK's names are not all known), an event left out −2 and an
    op left out 0 (fused or elided); a builtin event only matches its own node."""
    n, m = len(events), len(ops)
    low = float("-inf")
    score = [[0.0] * (m + 1) for _ in range(n + 1)]
    step = [[""] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        score[i][0], step[i][0] = score[i - 1][0] - 2, "e"
    for j in range(1, m + 1):
        step[0][j] = "o"
    for i in range(1, n + 1):
        event = events[i - 1]
        for j in range(1, m + 1):
            op = ops[j - 1]
            if not event["delegated"] and event.get("node") is not None:
                gain = 10.0 if op.index == event["node"] else low
            else:
                gain = 3.0 if fits(event["type"], op.op) else -1.0
            best, move = score[i - 1][j - 1] + gain, "m"
            if score[i][j - 1] > best:
                best, move = score[i][j - 1], "o"
            if score[i - 1][j] - 2 > best:
                best, move = score[i - 1][j] - 2, "e"
            score[i][j], step[i][j] = best, move
    mapping: list[int | None] = [None] * n
    i, j = n, m
    while i > 0 and j >= 0:
        move = step[i][j] if j > 0 else "e"
        if move == "m":
            mapping[i - 1] = j - 1
            i, j = i - 1, j - 1
        elif move == "o":
            j -= 1
        else:
            i -= 1
    return mapping


def edge_ops(etrecord: Path) -> list[TfliteOp]:
    """The call nodes of the ETRecord's edge program in graph order, with their modules; the
    dequantize nodes of constant weights (no module below the root) are left out."""
    from executorch.devtools.etrecord import parse_etrecord

    program = parse_etrecord(str(etrecord)).edge_dialect_program
    found = []
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        module = executorch_module({0: node.meta.get("nn_module_stack") or {}})
        if module is None and "dequantize_per_channel" in str(node.target):
            continue
        name = getattr(node.target, "__name__", None) or str(node.target)
        found.append(TfliteOp(len(found), str(name), module))
    return _with_blocks(found)


def executorch_module(stack: Any) -> ModuleRef | None:
    """The deepest module below the root in a dict of ``nn_module_stack`` s (each: name ->
    (path, qualified class)), or None."""
    stacks = stack.values() if isinstance(stack, dict) else []
    deepest: list[tuple[str, str]] = []
    for entry in stacks:
        if isinstance(entry, dict):
            entry = list(entry.values())
        levels = [(str(v[0]), str(v[1])) for v in entry
                  if isinstance(v, (tuple, list)) and len(v) == 2]
        if len(levels) > len(deepest):
            deepest = levels
    deepest = [level for level in deepest if level[0]]  # the root (and export's wrapper)
    if not deepest:
        return None
    return ModuleRef(deepest[-1][0], "")  # its block: settle_blocks


def attach_modules(rows: list[Any], ops: list[TfliteOp], fits: Any,
                   nodes: list[int | None] | None = None) -> str:
    """Set each row's ``module`` and ``block`` (rows of :class:`~.op_table.OpRow`) from the
    op it is aligned with; ``nodes``: the op index a row is known to be (builtin LiteRT ops).
    Returns how many rows were placed, in words."""
    events = [{"type": r.type, "delegated": r.delegated,
               "node": nodes[i] if nodes else None} for i, r in enumerate(rows)]
    mapping = align(events, ops, fits)
    placed = 0
    for row, j in zip(rows, mapping, strict=True):
        module = ops[j].module if j is not None else None
        if module is not None:
            row.module, row.block = module.path, module.block
            placed += 1
    return f"{placed} of {len(rows)} ops placed in the model's modules"


def litert_modules(rows: list[Any], per_op: dict[str, Any], tflite: Path) -> str:
    """Place LiteRT rows by the .tflite's tensor names (see the module doc)."""
    try:
        ops = tflite_ops(tflite)
    except (ImportError, ValueError, RuntimeError) as exc:
        return f"ops not placed in the model: the .tflite's ops do not read here ({exc})"
    if not any(o.module for o in ops):
        return "ops not placed in the model: its tensor names carry no module paths"
    nodes = [o.get("node") for o in per_op["ops"]]
    return attach_modules(rows, ops, compatible, nodes) + " (litert-torch tensor names, op order)"


def executorch_modules(rows: list[Any], etrecord: Path | None) -> str:
    """Place ExecuTorch rows by the ETRecord's edge program (see the module doc)."""
    if etrecord is None or not etrecord.is_file():
        return "ops not placed in the model: no ETRecord beside the artifact"
    try:
        ops = edge_ops(etrecord)
    except Exception as exc:  # devtools raises bare Exceptions on a damaged record
        return f"ops not placed in the model: the ETRecord does not read ({exc})"
    if not any(o.module for o in ops):
        return "ops not placed in the model: the ETRecord's graph has no nn_module_stack"
    return attach_modules(rows, ops, compatible_aten) + " (ETRecord edge program, op order)"
