"""LR-ASPP segmentation head on a dilated MobileNetV3 backbone (paper, sec. 6.4)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .mobilenet import NetworkConfig, _init_weights, build_features


class Backbone(nn.Sequential):
    """The MobileNet ``features``, returning the 1/8 ("low") and last ("high") maps.

    A Sequential so that its parameters are named ``backbone.<i>.*`` like torchvision's
    feature extractor.
    """

    def __init__(self, features: nn.Sequential, low_index: int) -> None:
        super().__init__(*features)
        self.low_index = low_index

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        low = x
        for i, layer in enumerate(self):
            x = layer(x)
            if i == self.low_index:
                low = x
        return low, x


class LRASPPHead(nn.Module):
    """1x1 conv on the high features, gated by a pooled squeeze-excite-like branch,
    upsampled and added to a 1x1 classifier on the low (1/8) features."""

    def __init__(self, low_channels: int, high_channels: int, num_classes: int,
                 inter_channels: int = 128) -> None:
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.BatchNorm2d(inter_channels),
            nn.ReLU(inplace=True),
        )
        self.scale = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.Sigmoid(),
        )
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        x = self.cbr(high) * self.scale(high)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(x)


class LRASPP(nn.Module):
    """Segmentation network: per-pixel class logits at the input resolution."""

    def __init__(self, cfg: NetworkConfig, num_classes: int = 21) -> None:
        super().__init__()
        self.config = cfg
        # low: the output of the stage at stride 8 (torchvision's stage_indices[-4])
        starts = [0, *cfg.stage_starts, len(cfg.blocks) + 1]
        low_index = starts[-4]
        features = build_features(cfg)
        self.backbone = Backbone(features, low_index)
        self.classifier = LRASPPHead(features[low_index].out_channels, cfg.last_conv_channels,
                                     num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.backbone(x)
        out = self.classifier(low, high)
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
