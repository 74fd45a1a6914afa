"""Inputs as users have them: .tflite files converted outside edgepipe (litert-torch directly,
as other tools' exports look) and image files as cameras and scanners write them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn


def _export(module: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """litert-torch's own export of ``module``, or the same file from the tests' artifact
    cache: keyed by the module's class, weights and buffers, the example's shape and dtype,
    and what tests/artifacts.py keys every conversion by (edgepipe's source, the versions)."""
    import hashlib
    import io
    import shutil

    import litert_torch

    from .artifacts import _entry, _key

    state = io.BytesIO()
    torch.save(module.state_dict(), state)
    entry = _entry(_key({"foreign": type(module).__qualname__,
                         "source": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
                         "state": hashlib.sha256(state.getvalue()).hexdigest(),
                         "example": [list(example.shape), str(example.dtype)]}))
    cached = entry / "model.tflite" if entry is not None else None
    if cached is not None and cached.is_file():
        shutil.copyfile(cached, path)
        return path
    litert_torch.convert(module.eval(), (example,)).export(str(path))
    if entry is not None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.name}.partial")
        tmp.mkdir(exist_ok=True)
        shutil.copyfile(path, tmp / "model.tflite")
        try:
            tmp.rename(entry)
        except OSError:  # stored meanwhile by another run
            shutil.rmtree(tmp, ignore_errors=True)
    return path


class _RawPixels(nn.Module):
    """uint8 NHWC pixels in (no quantization scale: raw 0-255), 5 scores out that depend on the
    colour means, as TF Hub / EfficientDet-Lite style models take their input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = (x.permute(0, 3, 1, 2).float() / 255.0).mean(dim=(2, 3))
        return torch.stack([m[:, 0], m[:, 1], m[:, 2], 1 - m.mean(1), m.mean(1)], dim=1) * 10


def raw_uint8_classifier(path: Path, size: int = 64) -> Path:
    return _export(_RawPixels(), torch.zeros(1, size, size, 3, dtype=torch.uint8), path)


class _Detector(nn.Module):
    """Four outputs like TF's SSD / EfficientDet-Lite: boxes, classes, scores, count."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.box, self.cls = nn.Linear(8, 10 * 4), nn.Linear(8, 10 * 3)

    def forward(self, x: torch.Tensor):
        f = self.body(x.permute(0, 3, 1, 2))
        boxes = torch.sigmoid(self.box(f)).reshape(1, 10, 4)
        scores, classes = self.cls(f).reshape(1, 10, 3).softmax(-1).max(-1)
        return boxes, classes.float(), scores, torch.full((1,), 10.0)


def detector(path: Path) -> Path:
    return _export(_Detector(), torch.zeros(1, 96, 96, 3), path)


class _Boxes(_Detector):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[0]


def boxes_only(path: Path) -> Path:
    """One output, [1, 10, 4] box corners: neither class scores nor a mask."""
    return _export(_Boxes(), torch.zeros(1, 96, 96, 3), path)


class _NHWC(nn.Module):
    """An NHWC float input, as TensorFlow-made models take images."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(channels, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x.permute(0, 3, 1, 2))).mean(dim=(2, 3)))


def nhwc_classifier(path: Path, height: int, width: int, channels: int = 3,
                    classes: int = 4) -> Path:
    return _export(_NHWC(channels, classes), torch.zeros(1, height, width, channels), path)


class _Bright(nn.Module):
    """RGB in [0, 1] (NHWC) → [1, H, W, 1] probability that a pixel is bright (> 0.6)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(40 * (x.mean(dim=3, keepdim=True) - 0.6))


def bright_segmenter(path: Path, size: int = 64) -> Path:
    return _export(_Bright(), torch.zeros(1, size, size, 3), path)


class _Signed(nn.Module):
    """Float NHWC input in [-1, 1] (TensorFlow MobileNet style) → 4 scores: the red, green and
    blue means, and "dark" (minus the mean), so a black frame is class 3 only in that range."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2))
        return torch.cat([m, -m.mean(1, keepdim=True)], 1) * 5


def signed_classifier(path: Path, size: int = 32) -> Path:
    return _export(_Signed(), torch.zeros(1, size, size, 3), path)


class _MultiLabel(nn.Module):
    """NHWC float input → 5 independent sigmoids (a multi-label classifier: tags that may all
    be present, or none): per-class probabilities that need not sum to 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2))
        return torch.sigmoid(torch.cat([m, m.mean(1, keepdim=True), -m.mean(1, keepdim=True)],
                                       1) * 4)


def multi_label(path: Path, size: int = 32) -> Path:
    return _export(_MultiLabel(), torch.zeros(1, size, size, 3), path)


def exif_portrait(path: Path) -> np.ndarray:
    """A phone JPEG: an upright 300x400 portrait (red bar at its top) stored sideways (400x300)
    with EXIF orientation 6. Returns the upright pixels."""
    from skimage import data

    up = np.asarray(Image.fromarray(data.chelsea()).resize((300, 400))).copy()
    up[:40] = (255, 0, 0)
    stored = Image.fromarray(up).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, exif=exif.tobytes(), quality=95)
    return up


class _WithCumsum(nn.Module):
    """Convolutions around a cumulative sum, which XNNPACK has no kernel for: LiteRT runs it
    as a builtin op between two XNNPACK partitions."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cumsum(torch.relu(self.stem(x.permute(0, 3, 1, 2))), dim=1)
        return self.head(y).mean(dim=(2, 3))


def with_builtin_op(path: Path, size: int = 32) -> Path:
    """NHWC float in, 4 logits out, a CUMSUM in the middle."""
    return _export(_WithCumsum(), torch.zeros(1, size, size, 3), path)
