"""The PyTorch model a conversion starts from, with what its manifests will say about it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import EdgepipeError
from ..manifest import Preprocessing
from ..models import ModelInfo, create_model, load_weights
from ..models.batchnorm import recalibrate_batchnorm
from ..models.blocks import HardSwish
from ..preprocess import preprocess


@dataclass
class SourceModel:
    name: str
    module: nn.Module
    info: ModelInfo
    preprocessing: Preprocessing
    labels: list[str] | None
    weights_sha256: str | None
    output_shape: tuple[int, ...] = ()  # set by load_source_model from a real forward pass
    width_mult: float = 1.0
    in_channels: int = 3
    # (min, max) height and width the program accepts; None: only the example's size.
    # Latency-table units are lowered once and measured at every resolution of the space.
    dynamic_size: tuple[int, int] | None = None

    @property
    def task(self) -> str:
        return self.info.task

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, self.in_channels, *self.preprocessing.size)

    def dynamic_shapes(self) -> tuple[dict[int, object], ...] | None:
        """torch.export's description of a dynamic height and width (None: static)."""
        if self.dynamic_size is None:
            return None
        low, high = self.dynamic_size
        return ({2: torch.export.Dim("height", min=low, max=high),
                 3: torch.export.Dim("width", min=low, max=high)},)

    def batches(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """Images → preprocessed single-image batches, as every runtime will see them."""
        return [torch.from_numpy(preprocess(img, self.preprocessing)) for img in images]

    @torch.no_grad()
    def reference(self, batch: torch.Tensor) -> np.ndarray:
        return self.module(batch).numpy()


def label_names(label_set: str | None) -> list[str] | None:
    if label_set == "imagenet":
        from torchvision.models._meta import _IMAGENET_CATEGORIES

        return list(_IMAGENET_CATEGORIES)
    if label_set == "voc":
        from torchvision.models._meta import _VOC_CATEGORIES

        return list(_VOC_CATEGORIES)
    return None


def default_preprocessing(task: str, size: int) -> Preprocessing:
    # Classification: torchvision's resize-256/crop-224 ratio; segmentation: no crop margin.
    resize = round(size * 256 / 224) if task == "classification" else size
    return Preprocessing(size=(size, size), resize=resize)


def load_source_model(
    name: str,
    weights: str | Path | None = None,
    width_mult: float = 1.0,
    size: int | None = None,
    task: str | None = None,
    bn_images: list[np.ndarray] | None = None,
) -> SourceModel:
    """Build the model, load weights (or re-estimate BN stats for a random init)."""
    module, info = create_model(name, width_mult, task)
    size = size or info.default_size
    if not 32 <= size <= 2048:
        raise EdgepipeError(f"input size {size} is out of range: use 32 to 2048 pixels")
    pre = default_preprocessing(info.task, size)
    sha = load_weights(module, weights) if weights else None
    labels = list(info.labels) if info.labels else label_names(info.label_set)
    source = SourceModel(name, module, info, pre, labels, sha)
    if sha is None and bn_images:
        recalibrate_batchnorm(module, source.batches(bn_images))
    try:
        out = source.reference(source.example_input())
    except Exception as exc:  # a user model that rejects the input shape
        raise EdgepipeError(f"model {name} fails on a 1x3x{size}x{size} input: {exc}") from None
    if info.task == "classification" and out.ndim != 2:
        raise EdgepipeError(f"model {name} returns shape {out.shape}: a classifier must "
                            "return (batch, classes); pass --task segmentation for masks")
    source.output_shape = tuple(out.shape)
    source.width_mult = width_mult
    return source


def source_from_module(name: str, module: nn.Module, input_shape: list[int],
                       dynamic_size: tuple[int, int] | None = None) -> SourceModel:
    """A bare module (a latency-table unit, a searched network) as converters take it:
    random weights, no labels, no preprocessing beyond the input size."""
    module = module.eval()
    size = (int(input_shape[2]), int(input_shape[3]))
    source = SourceModel(name, module, ModelInfo(name, "classification", None, size[0]),
                         Preprocessing(size=size, resize=size[0]), None, None,
                         in_channels=int(input_shape[1]), dynamic_size=dynamic_size)
    source.output_shape = tuple(source.reference(source.example_input()).shape)
    return source


@contextmanager
def hswish_form(module: nn.Module, decomposed: bool) -> Iterator[nn.Module]:
    """Temporarily pick the h-swish form a target runtime runs best (see HardSwish)."""
    acts = [m for m in module.modules() if isinstance(m, HardSwish)]
    before = [a.decomposed for a in acts]
    for a in acts:
        a.decomposed = decomposed
    try:
        yield module
    finally:
        for a, b in zip(acts, before, strict=True):
            a.decomposed = b
