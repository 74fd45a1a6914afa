"""The PyTorch model a conversion starts from, with what its manifests will say about it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import EdgepipeError
from ..manifest import Preprocessing, parse_size, range_preprocessing
from ..models import ModelInfo, create_model, load_weights
from ..models.batchnorm import recalibrate_batchnorm
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
    # which of several outputs is converted (a dict key or a tuple index), None: the only one
    output: str | int | None = None
    notes: list[str] = field(default_factory=list)  # what the report must say about the model
    # int8 only: the layers whose batch norms took a bias correction (converters.quantize)
    bias_corrected: list[str] | None = None

    @property
    def task(self) -> str:
        return self.info.task

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, self.in_channels, *self.preprocessing.size)

    def dynamic_shapes(self) -> tuple[dict[int, object], ...] | None:
        """torch.export's description of a dynamic height and width (None: static, also for a
        range of one size, which torch.export refuses as a Dim with min == max)."""
        if self.dynamic_size is None or self.dynamic_size[0] == self.dynamic_size[1]:
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


def default_preprocessing(task: str, size: tuple[int, int], channels: int = 3,
                          input_range: str | None = None) -> Preprocessing:
    # Classification: torchvision's resize-256/crop-224 ratio; segmentation: no crop margin.
    short = min(size)
    resize = round(short * 256 / 224) if task == "classification" else short
    return range_preprocessing(size, resize, input_range or "imagenet",
                               "GRAY" if channels == 1 else "RGB")


def _image_channels(module: nn.Module) -> int:
    """Channels of the image a model takes: its first convolution's (3 without one).
    Grey models (MNIST-like, infrared cameras) take 1."""
    first = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None and first.in_channels in (1, 3) else 3


class PickOutput(nn.Module):
    """One output of a model that returns several (a dict or a tuple), as a plain tensor:
    what converters export and runtimes run."""

    def __init__(self, module: nn.Module, key: str | int) -> None:
        super().__init__()
        self.model = module
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[self.key]


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return "x".join(str(s) for s in value.shape)
    return type(value).__name__


def pick_output(name: str, out: object, wanted: str | None) -> tuple[str | int | None, str]:
    """Which output to convert: (key or index, or None for a plain tensor; what to tell).

    A dict gives ``wanted``, else "out" (torchvision's segmentation models), else its first
    key; a tuple or list gives index ``wanted``, else 0. Anything else is refused in one line.
    """
    if isinstance(out, torch.Tensor):
        if wanted is not None:
            raise EdgepipeError(f"model {name} returns one tensor: --output {wanted} is for "
                                "models that return a dict or a tuple")
        return None, ""
    if isinstance(out, Mapping):
        keys = list(out)
        shown = ", ".join(f"{k!r} ({_describe(v)})" for k, v in out.items())
        if wanted is not None and wanted not in keys:
            raise EdgepipeError(f"model {name} returns a dict with keys {shown}: --output "
                                f"{wanted} is not one of them")
        key = wanted if wanted is not None else ("out" if "out" in keys else keys[0])
        how = "--output" if wanted is not None else (
            "torchvision's segmentation output" if key == "out" else "the first key")
        note = (f"model {name} returns a dict with keys {shown}: converted {key!r} ({how}; "
                "--output KEY picks another)")
    elif isinstance(out, (tuple, list)):
        fields = list(getattr(out, "_fields", ()))  # a namedtuple: its fields name the outputs
        kind = f"namedtuple {type(out).__name__}" if fields else type(out).__name__
        shown = ", ".join(f"{f!r} {_describe(v)}" if fields else _describe(v)
                          for f, v in zip(fields or [None] * len(out), out, strict=True))
        if wanted in fields:
            wanted = str(fields.index(wanted))
        try:
            key = int(wanted) if wanted is not None else 0
        except ValueError:
            takes = f"a field ({', '.join(fields)}) or an index" if fields else "an index"
            raise EdgepipeError(f"model {name} returns a {kind} ({shown}): "
                                f"--output takes {takes}, 0 to {len(out) - 1}") from None
        if not 0 <= key < len(out):
            raise EdgepipeError(f"model {name} returns {len(out)} outputs ({shown}): --output "
                                f"{key} is not an index of them (0 to {len(out) - 1})")
        note = (f"model {name} returns a {kind} of {len(out)} ({shown}): converted output "
                f"{key}" + (f" ({fields[key]!r})" if fields else "")
                + ("" if wanted is not None else " (the first; --output INDEX picks another)"))
    else:
        raise EdgepipeError(f"model {name} returns a {type(out).__name__}: edgepipe converts "
                            "a tensor, or one tensor of a dict or tuple of tensors")
    if not isinstance(out[key], torch.Tensor):  # type: ignore[index]
        raise EdgepipeError(f"output {key!r} of model {name} is a {_describe(out[key])}, not a "  # type: ignore[index]
                            "tensor: pick a tensor with --output")
    return key, note


def load_source_model(
    name: str,
    weights: str | Path | None = None,
    width_mult: float = 1.0,
    size: int | str | tuple[int, int] | None = None,
    task: str | None = None,
    bn_images: list[np.ndarray] | None = None,
    output: str | None = None,
    input_range: str | None = None,
) -> SourceModel:
    """Build the model, load weights (or re-estimate BN stats for a random init).

    ``size``: (height, width), one number for a square, or "HxW". ``output``: which output of
    a model returning a dict or tuple to convert (default "out", else the first).
    ``input_range``: what the model's input spans (a key of ``manifest.RANGES``, default
    "imagenet": ImageNet mean/std). A model whose first convolution takes one channel gets
    grey frames.
    """
    module, info = create_model(name, width_mult, task)
    size = parse_size(size or info.default_size)
    sha = load_weights(module, weights) if weights else None
    labels = list(info.labels) if info.labels else label_names(info.label_set)
    guess = _image_channels(module)
    failure = None
    tried = list(dict.fromkeys((guess, 3, 1)))  # the first conv's channels, then RGB, grey
    for channels in tried:
        try:
            with torch.no_grad():
                raw = module(torch.zeros(1, channels, *size))
            break
        except Exception as exc:  # a user model that rejects the input shape
            failure = failure or (channels, exc)
    else:
        channels, exc = failure  # type: ignore[misc]
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EdgepipeError(f"model {name} fails on a 1x{channels}x{size[0]}x{size[1]} input "
                            f"(tried {' and '.join(map(str, tried))} channels): "
                            f"{first[:300]}") from None
    pre = default_preprocessing(info.task, size, channels, input_range)
    source = SourceModel(name, module, info, pre, labels, sha, in_channels=channels)
    key, note = pick_output(name, raw, output)
    if key is not None:
        source.module = PickOutput(module, key)
        source.output = key
        source.notes.append(note)
    if sha is None and bn_images:
        recalibrate_batchnorm(source.module, source.batches(bn_images))
    out = source.reference(source.example_input())
    if info.task == "classification" and out.ndim != 2:
        raise EdgepipeError(f"model {name} returns shape {out.shape}: a classifier must "
                            "return (batch, classes); pass --task segmentation for masks")
    if info.task == "segmentation" and out.ndim != 4:
        raise EdgepipeError(f"model {name} returns shape {out.shape}: a segmentation model "
                            "must return (batch, classes, height, width)")
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
