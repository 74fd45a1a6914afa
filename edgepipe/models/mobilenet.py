"""MobileNetV3 (Large/Small) and MobileNetV2 as tables of :class:`BlockConfig` rows.

A :class:`NetworkConfig` is the whole architecture as plain, hashable data; ``build`` turns
it into a module. The search issues sample NetworkConfigs; everything else builds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from .blocks import (
    BlockConfig,
    HardSwish,
    InvertedResidual,
    InvertedResidualV2,
    conv_norm_act,
    make_divisible,
)


@dataclass(frozen=True)
class NetworkConfig:
    """A whole MobileNet: stem, block table, last conv and classifier head."""

    family: str  # "v3" or "v2": selects the block layout, head and BatchNorm settings
    blocks: tuple[BlockConfig, ...]
    stem_channels: int
    stem_activation: str
    last_conv_channels: int
    last_conv_activation: str
    classifier_hidden: int | None  # V3: 1x1 "last channel" after pooling; V2: none
    num_classes: int = 1000
    dropout: float = 0.2

    @property
    def stage_starts(self) -> list[int]:
        """Feature indices where the resolution halves (torchvision's ``_is_cn``)."""
        return [i + 1 for i, b in enumerate(self.blocks) if b.stride > 1]


# MobileNetV3 block tables (paper, tables 1 and 2), as (in, k, exp, out, se, act, stride).
# ``tail`` marks the last stage, which the segmentation variant halves and dilates.
_V3_LARGE = (
    (16, 3, 16, 16, False, "RE", 1),
    (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2),
    (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1),
    (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2),  # tail
    (160, 5, 960, 160, True, "HS", 1),  # tail
    (160, 5, 960, 160, True, "HS", 1),  # tail
)
_V3_SMALL = (
    (16, 3, 16, 16, True, "RE", 2),
    (16, 3, 72, 24, False, "RE", 2),
    (24, 3, 88, 24, False, "RE", 1),
    (24, 5, 96, 40, True, "HS", 2),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1),
    (48, 5, 144, 48, True, "HS", 1),
    (48, 5, 288, 96, True, "HS", 2),  # tail
    (96, 5, 576, 96, True, "HS", 1),  # tail
    (96, 5, 576, 96, True, "HS", 1),  # tail
)
_V3_TABLES = {"large": (_V3_LARGE, 1280), "small": (_V3_SMALL, 1024)}
_V3_TAIL_BLOCKS = 3

# MobileNetV2 (t, c, n, s): expansion ratio, output channels, repeats, first stride.
_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1))


def mobilenet_v3_config(
    arch: str,
    width_mult: float = 1.0,
    reduced_tail: bool = False,
    dilated: bool = False,
    num_classes: int = 1000,
) -> NetworkConfig:
    """The MobileNetV3 table for ``arch`` ("large" or "small") at a width multiplier.

    ``reduced_tail`` halves the last stage and ``dilated`` swaps its stride for dilation 2:
    the segmentation backbone (paper, sec. 6.4).
    """
    if arch not in _V3_TABLES:
        raise ValueError(f"arch must be one of {sorted(_V3_TABLES)}, got {arch!r}")
    rows, last_channel = _V3_TABLES[arch]
    divider = 2 if reduced_tail else 1
    blocks = []
    for i, (cin, k, exp, cout, se, act, stride) in enumerate(rows):
        tail_index = i - (len(rows) - _V3_TAIL_BLOCKS)
        dilation = 1
        if tail_index >= 0:
            if tail_index > 0:
                cin, exp = cin // divider, exp // divider
            cout = cout // divider
            dilation = 2 if dilated else 1
        blocks.append(BlockConfig(cin, k, exp, cout, se, act, stride, dilation).scaled(width_mult))
    return NetworkConfig(
        family="v3",
        blocks=tuple(blocks),
        stem_channels=blocks[0].in_channels,
        stem_activation="HS",
        last_conv_channels=6 * blocks[-1].out_channels,
        last_conv_activation="HS",
        classifier_hidden=make_divisible(last_channel // divider * width_mult),
        num_classes=num_classes,
    )


def mobilenet_v2_config(width_mult: float = 1.0, num_classes: int = 1000) -> NetworkConfig:
    """MobileNetV2 in the same block vocabulary: inverted residuals without SE, ReLU6."""
    stem = make_divisible(32 * width_mult)
    blocks = []
    cin = stem
    for t, c, n, s in _V2_STAGES:
        cout = make_divisible(c * width_mult)
        for i in range(n):
            blocks.append(BlockConfig(cin, 3, int(round(cin * t)), cout, False, "R6",
                                      s if i == 0 else 1))
            cin = cout
    return NetworkConfig(
        family="v2",
        blocks=tuple(blocks),
        stem_channels=stem,
        stem_activation="R6",
        last_conv_channels=make_divisible(1280 * max(1.0, width_mult)),
        last_conv_activation="R6",
        classifier_hidden=None,
        num_classes=num_classes,
    )


def _norm_for(family: str):
    # torchvision trains V3 with eps=1e-3 / momentum=0.01 and V2 with the defaults;
    # eps changes the outputs, so it must match the checkpoint's.
    if family == "v3":
        return partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
    return nn.BatchNorm2d


def build_features(cfg: NetworkConfig) -> nn.Sequential:
    """Stem, blocks and last conv, as torchvision's ``features`` Sequential."""
    norm = _norm_for(cfg.family)
    block_cls = InvertedResidual if cfg.family == "v3" else InvertedResidualV2
    layers: list[nn.Module] = [
        conv_norm_act(3, cfg.stem_channels, 3, norm, cfg.stem_activation, stride=2)
    ]
    layers += [block_cls(b, norm) for b in cfg.blocks]
    layers.append(conv_norm_act(cfg.blocks[-1].out_channels, cfg.last_conv_channels, 1, norm,
                                cfg.last_conv_activation))
    return nn.Sequential(*layers)


class MobileNet(nn.Module):
    """A classification MobileNet (V2 or V3) built from a :class:`NetworkConfig`."""

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        self.config = cfg
        self.features = build_features(cfg)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = self._head(cfg)
        _init_weights(self)

    @staticmethod
    def _head(cfg: NetworkConfig) -> nn.Sequential:
        if cfg.classifier_hidden is None:  # V2: dropout + linear
            return nn.Sequential(nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.last_conv_channels, cfg.num_classes))
        # V3: the expensive 1x1 expansion moved after pooling (paper, sec. 5.1)
        return nn.Sequential(
            nn.Linear(cfg.last_conv_channels, cfg.classifier_hidden),
            HardSwish(rank=2),
            nn.Dropout(cfg.dropout, inplace=True),
            nn.Linear(cfg.classifier_hidden, cfg.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _init_weights(model: nn.Module) -> None:
    """torchvision's initialisation, so random-init models behave like theirs."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
