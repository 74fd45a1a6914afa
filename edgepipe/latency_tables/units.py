"""Units: the pieces a network's latency is summed from, each with one readable key.

A unit is what the runtime runs as one fused piece: a whole inverted-residual block with its
SE and activations (XNNPACK fuses conv + BN + activation and keeps the block's tensors in
cache), the stem, and the head (last 1x1 conv, pooling, classifier). MobileNetV2's blocks are
the same unit with ReLU6 and no SE, its head has one linear layer. Keys follow
Once-for-All's tables and say everything that changes the time::

    ir-in:56x56x24-out:56x56x24-e:72-k:5-s:1-se:1-act:hs

The naive alternative, one entry per conv or activation, is here too (:func:`naive_ops`): the
evaluation measures it to show what fusion does to a per-op sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from torch import nn

from ..models.blocks import (
    BlockConfig,
    HardSigmoid,
    HardSwish,
    InvertedResidual,
    conv_norm_act,
    se_channels,
)
from ..models.space import Architecture

_norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


def _out_hw(hw: int, stride: int) -> int:
    return (hw - 1) // stride + 1  # a "same"-padded conv


@dataclass(frozen=True)
class Unit:
    """One table entry: a kind, its parameters, and the input's spatial size."""

    kind: str  # "stem" | "ir" | "head" | naive ops: "conv" | "act" | "se" | "add"
    hw: int
    params: tuple  # kind-specific, see ``_describe``

    @property
    def key(self) -> str:
        return f"{self.kind}-{_describe(self, self.hw)}"

    @property
    def program_key(self) -> str:
        """The key without the input size: units that share it share one lowered program,
        measured at each size (the program is exported with a dynamic height and width)."""
        return f"{self.kind}-{_describe(self, None)}"

    @property
    def in_channels(self) -> int:
        return self.params[0]

    def input_shape(self) -> list[int]:
        return [1, self.in_channels, self.hw, self.hw]

    @property
    def boundary_elements(self) -> int:
        """Elements of the unit's input and output: alone, a unit converts both between the
        runtime's layout (NHWC) and the program's (NCHW); inside a network it does not."""
        out_channels = {"stem": 1, "ir": 3, "conv": 1}.get(self.kind)
        stride = {"stem": 2, "ir": 6, "conv": 3}.get(self.kind)
        if out_channels is None or stride is None:
            return self.hw * self.hw * self.in_channels * 2
        out_hw = _out_hw(self.hw, 2 if self.kind == "stem" else self.params[stride])
        return self.hw * self.hw * self.in_channels + out_hw * out_hw * self.params[out_channels]

    def module(self) -> nn.Module:
        return _MODULES[self.kind](*self.params).eval()


def _hw(hw: int | None, channels: int) -> str:
    return f"{hw}x{hw}x{channels}" if hw is not None else f"x{channels}"


def _describe(u: Unit, hw: int | None) -> str:
    p = u.params
    out = None if hw is None else _out_hw(hw, 2 if u.kind == "stem" else 1)
    if u.kind == "stem":
        cin, cout, act = p
        return f"in:{_hw(hw, cin)}-out:{_hw(out, cout)}-k:3-s:2-act:{act.lower()}"
    if u.kind == "ir":
        b = BlockConfig(*p)
        out = None if hw is None else _out_hw(hw, b.stride)
        return (f"in:{_hw(hw, b.in_channels)}-out:{_hw(out, b.out_channels)}"
                f"-e:{b.expanded_channels}-k:{b.kernel}-s:{b.stride}-se:{int(b.se)}"
                f"-act:{b.activation.lower()}")
    if u.kind == "head":
        cin, conv, act, hidden, classes = p
        fc = f"-fc:{classes}" if hidden is None else f"-fc:{hidden}-fc:{classes}"  # V2: one
        return f"in:{_hw(hw, cin)}-conv:{conv}-act:{act.lower()}{fc}"
    if u.kind == "conv":
        cin, cout, k, s, groups, act = p
        out = None if hw is None else _out_hw(hw, s)
        return (f"in:{_hw(hw, cin)}-out:{_hw(out, cout)}-k:{k}-s:{s}-g:{groups}"
                f"-act:{(act or 'none').lower()}")
    if u.kind == "act":
        cin, act = p
        return f"in:{_hw(hw, cin)}-fn:{act.lower()}"
    if u.kind in ("se", "add"):
        return f"in:{_hw(hw, p[0])}"
    raise ValueError(f"unknown unit kind {u.kind!r}")


class _Head(nn.Module):
    """The last stage: 1x1 conv, pool, then the classifier (as MobileNet): MobileNetV3's two
    linear layers, or MobileNetV2's one (``hidden`` None)."""

    def __init__(self, cin: int, conv: int, act: str, hidden: int | None, classes: int
                 ) -> None:
        super().__init__()
        self.conv = conv_norm_act(cin, conv, 1, _norm, act)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(conv, classes) if hidden is None else nn.Sequential(
            nn.Linear(conv, hidden), HardSwish(rank=2), nn.Linear(hidden, classes))

    def forward(self, x):
        return self.classifier(self.pool(self.conv(x)).flatten(1))


class _SE(nn.Module):
    """Squeeze-excite alone (pool, two 1x1 convs, gate, scale): one naive 'op' group."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, se_channels(channels), 1)
        self.fc2 = nn.Conv2d(se_channels(channels), channels, 1)
        self.relu = nn.ReLU()
        self.gate = HardSigmoid()

    def forward(self, x):
        return self.gate(self.fc2(self.relu(self.fc1(self.pool(x))))) * x


class _Add(nn.Module):
    def forward(self, x):
        return x + x


_MODULES = {
    "stem": lambda cin, cout, act: conv_norm_act(cin, cout, 3, _norm, act, stride=2),
    "ir": lambda *p: InvertedResidual(BlockConfig(*p), _norm),
    "head": _Head,
    "conv": lambda cin, cout, k, s, g, act: conv_norm_act(cin, cout, k, _norm, act, s, g),
    # not in place: an exported graph cannot write over its own input
    "act": lambda cin, act: {"RE": nn.ReLU, "R6": nn.ReLU6, "HS": HardSwish}[act](),
    "se": _SE,
    "add": lambda cin: _Add(),
}


def block_unit(block: BlockConfig, hw: int) -> Unit:
    return Unit("ir", hw, (block.in_channels, block.kernel, block.expanded_channels,
                           block.out_channels, block.se, block.activation, block.stride,
                           block.dilation))


def stem_unit(arch: Architecture) -> Unit:
    net = arch.network
    return Unit("stem", arch.resolution, (3, net.stem_channels, net.stem_activation))


def head_unit(arch: Architecture, hw: int) -> Unit:
    net = arch.network
    return Unit("head", hw, (net.blocks[-1].out_channels, net.last_conv_channels,
                             net.last_conv_activation, net.classifier_hidden,
                             net.num_classes))


def units_of(arch: Architecture) -> list[Unit]:
    """The units an architecture's latency is summed from, in network order."""
    hw = _out_hw(arch.resolution, 2)
    units = [stem_unit(arch)]
    for block in arch.network.blocks:
        units.append(block_unit(block, hw))
        hw = _out_hw(hw, block.stride)
    units.append(head_unit(arch, hw))
    return units


def naive_ops(unit: Unit) -> list[Unit]:
    """The same unit as separately measured ops (each conv with its folded BN, each
    activation, SE, residual add): what a per-op table would sum."""
    if unit.kind != "ir":
        return [unit]
    b, hw = BlockConfig(*unit.params), unit.hw
    ops = []
    if b.expanded_channels != b.in_channels:
        ops += [Unit("conv", hw, (b.in_channels, b.expanded_channels, 1, 1, 1, None)),
                Unit("act", hw, (b.expanded_channels, b.activation))]
    ops += [Unit("conv", hw, (b.expanded_channels, b.expanded_channels, b.kernel, b.stride,
                              b.expanded_channels, None))]
    out = _out_hw(hw, b.stride)
    ops += [Unit("act", out, (b.expanded_channels, b.activation))]
    if b.se:
        ops.append(Unit("se", out, (b.expanded_channels,)))
    ops.append(Unit("conv", out, (b.expanded_channels, b.out_channels, 1, 1, 1, None)))
    if b.has_residual:
        ops.append(Unit("add", out, (b.out_channels,)))
    return ops
