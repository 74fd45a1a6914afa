"""The building blocks of MobileNetV2/V3: one small class or function per idea.

Module and parameter names follow torchvision exactly (``block.0.0.weight``,
``block.2.fc1.weight`` ...) so that torchvision checkpoints load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

ACTIVATIONS = ("RE", "HS", "R6")  # ReLU, h-swish, ReLU6 (MobileNetV2)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of ``divisor`` without losing more than 10%."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class BlockConfig:
    """One inverted-residual block: a row of the block table and a point of the search space.

    Frozen and made of plain values, so it hashes: the latency tables key on it.
    """

    in_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    se: bool
    activation: str
    stride: int
    dilation: int = 1

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {self.stride}")
        if self.kernel % 2 != 1:
            raise ValueError(f"kernel must be odd, got {self.kernel}")

    @property
    def has_residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels

    @property
    def depthwise_stride(self) -> int:
        # Dilated (segmentation) backbones keep the resolution: dilation replaces the stride.
        return 1 if self.dilation > 1 else self.stride

    def scaled(self, width_mult: float) -> BlockConfig:
        """The same block with every channel count scaled by ``width_mult``."""
        return replace(
            self,
            in_channels=make_divisible(self.in_channels * width_mult),
            expanded_channels=make_divisible(self.expanded_channels * width_mult),
            out_channels=make_divisible(self.out_channels * width_mult),
        )


def _constant(value: float, rank: int) -> torch.Tensor:
    return torch.full((1,) * rank, value)


class HardSigmoid(nn.Module):
    """hard-sigmoid(x) = ReLU6(x + 3) / 6, written with ops every quantizer keeps int8.

    ``nn.Hardsigmoid`` stays float in PT2E int8 graphs (and costs 18 un-delegated
    ``_to_dim_order_copy`` ops in ExecuTorch fp32): add / clamp / mul do not.
    The constants are (1,1,1,1) tensors, not Python scalars: a quantized scalar becomes a
    0-d tensor, and litert-torch then wraps the op in NCHW<->NHWC transposes.
    """

    def __init__(self, rank: int = 4) -> None:
        super().__init__()
        self.register_buffer("three", _constant(3.0, rank), persistent=False)
        self.register_buffer("sixth", _constant(1.0 / 6.0, rank), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + self.three) * self.sixth


class HardSwish(HardSigmoid):
    """h-swish(x) = x * hard-sigmoid(x).

    Two forms, chosen per target by the converters (measured, MobileNetV3-Small):
    ``decomposed=False`` is the runtime's native op, fastest where the runtime has one for
    the precision (XNNPACK fp32, ExecuTorch int8); ``decomposed=True`` is add/clamp/mul,
    needed for LiteRT int8, whose XNNPACK delegate rejects int8 HARD_SWISH and would split
    the graph at every activation.
    """

    def __init__(self, rank: int = 4, decomposed: bool = False) -> None:
        super().__init__(rank)
        self.decomposed = decomposed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.decomposed:
            return x * super().forward(x)
        return F.hardswish(x)


class SiLU(nn.Module):
    """SiLU / swish(x) = x * sigmoid(x) (EfficientNet's activation).

    ``decomposed=True`` writes it as a sigmoid and a multiply, which PT2E quantizers annotate
    (LiteRT then runs an int8 LOGISTIC and MUL); ``aten.silu`` is annotated by none and stays
    float in an int8 graph (49 LOGISTIC + 49 MUL left float in EfficientNet-B0 on LiteRT).
    ``decomposed=False`` is the native op, for targets that keep float activations anyway.
    """

    def __init__(self, decomposed: bool = False) -> None:
        super().__init__()
        self.decomposed = decomposed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.decomposed:
            return x * torch.sigmoid(x)
        return F.silu(x)


def make_activation(name: str | None) -> nn.Module | None:
    """The module for an activation code of the block table (None: a linear layer)."""
    if name is None:
        return None
    if name == "HS":
        return HardSwish()
    return {"RE": nn.ReLU, "R6": nn.ReLU6}[name](inplace=True)


NormFactory = Callable[[int], nn.Module]


def conv_norm_act(
    in_channels: int,
    out_channels: int,
    kernel: int,
    norm: NormFactory,
    activation: str | None,
    stride: int = 1,
    groups: int = 1,
    dilation: int = 1,
) -> nn.Sequential:
    """Conv2d + norm + activation, named ``0/1/2`` like torchvision's Conv2dNormActivation."""
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel,
            stride,
            padding=(kernel - 1) // 2 * dilation,
            dilation=dilation,
            groups=groups,
            bias=False,
        ),
        norm(out_channels),
    ]
    act = make_activation(activation)
    if act is not None:
        layers.append(act)
    seq = nn.Sequential(*layers)
    seq.out_channels = out_channels  # type: ignore[assignment]
    return seq


class SqueezeExcite(nn.Module):
    """Channel attention: global pool, 1x1 bottleneck (ReLU), 1x1 back, hard-sigmoid gate."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = HardSigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


def se_channels(expanded_channels: int) -> int:
    """The SE bottleneck: 1/4 of the expansion channels (MobileNetV3 paper, sec. 5.3)."""
    return make_divisible(expanded_channels // 4)


class InvertedResidual(nn.Module):
    """MobileNetV3 block: 1x1 expand, kxk depthwise, optional SE, 1x1 linear projection."""

    _container = "block"  # torchvision's attribute name for the layer sequence

    def __init__(self, cfg: BlockConfig, norm: NormFactory) -> None:
        super().__init__()
        self.cfg = cfg
        self.use_res_connect = cfg.has_residual
        self.out_channels = cfg.out_channels
        self._is_cn = cfg.stride > 1  # torchvision marks stage starts this way
        self.add_module(self._container, nn.Sequential(*self._layers(cfg, norm)))

    def _layers(self, cfg: BlockConfig, norm: NormFactory) -> list[nn.Module]:
        layers: list[nn.Module] = []
        if cfg.expanded_channels != cfg.in_channels:
            layers.append(
                conv_norm_act(cfg.in_channels, cfg.expanded_channels, 1, norm, cfg.activation)
            )
        layers.append(
            conv_norm_act(
                cfg.expanded_channels,
                cfg.expanded_channels,
                cfg.kernel,
                norm,
                cfg.activation,
                stride=cfg.depthwise_stride,
                groups=cfg.expanded_channels,
                dilation=cfg.dilation,
            )
        )
        if cfg.se:
            layers.append(SqueezeExcite(cfg.expanded_channels, se_channels(cfg.expanded_channels)))
        layers.extend(self._projection(cfg, norm))
        return layers

    def _projection(self, cfg: BlockConfig, norm: NormFactory) -> list[nn.Module]:
        return [conv_norm_act(cfg.expanded_channels, cfg.out_channels, 1, norm, None)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = getattr(self, self._container)(x)
        return out + x if self.use_res_connect else out


class InvertedResidualV2(InvertedResidual):
    """MobileNetV2 block: the same idea, laid out as torchvision's V2 (``conv.N``, a bare
    projection conv followed by its BatchNorm)."""

    _container = "conv"

    def _projection(self, cfg: BlockConfig, norm: NormFactory) -> list[nn.Module]:
        return [nn.Conv2d(cfg.expanded_channels, cfg.out_channels, 1, bias=False),
                norm(cfg.out_channels)]
