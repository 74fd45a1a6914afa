"""Image → model input, exactly as a manifest's :class:`Preprocessing` says (numpy + Pillow).

Shared by the converters' parity checks, the device and the demo, so that every runtime
sees the same pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .images import pil_to_rgb8, to_rgb8
from .manifest import Preprocessing


def to_pil(image: np.ndarray | Image.Image) -> Image.Image:
    """An RGB Pillow image of a frame: any depth scaled to 8 bits (:mod:`edgepipe.images`)."""
    if isinstance(image, Image.Image):
        return Image.fromarray(pil_to_rgb8(image))
    return Image.fromarray(to_rgb8(image))


def _resized(w: int, h: int, pre: Preprocessing) -> tuple[int, int]:
    """The frame's size after the resize: shorter side ``pre.resize``, or larger where the
    crop would not fit (a landscape model on a portrait frame: the crop spans the width)."""
    th, tw = pre.size
    scale = max(pre.resize / min(w, h), tw / w, th / h)
    return max(tw, round(w * scale)), max(th, round(h * scale))


def crop_box(w: int, h: int, pre: Preprocessing) -> tuple[float, float, float, float]:
    """The part of a ``w``×``h`` frame the model sees (left, top, right, bottom), in frame
    pixels: where a segmentation mask goes back onto the frame."""
    rw, rh = _resized(w, h, pre)
    th, tw = pre.size
    left, top = (rw - tw) // 2, (rh - th) // 2
    sx, sy = w / rw, h / rh
    return left * sx, top * sy, (left + tw) * sx, (top + th) * sy


def preprocess(image: np.ndarray | Image.Image, pre: Preprocessing) -> np.ndarray:
    """One image (HWC uint8 RGB, any array :func:`edgepipe.images.to_rgb8` takes, or PIL) →
    float32 NCHW batch of one, with ``pre.channels`` channels (3, or 1 for GRAY).

    Resizing only the crop box straight to the model size samples the same points as resizing
    the whole frame and cropping after, for a quarter less time (the demo does it per frame).
    """
    img = to_pil(image)
    if pre.color == "GRAY":
        img = img.convert("L")  # ITU-R 601 luma, as Pillow and OpenCV make grey
    th, tw = pre.size
    img = img.resize((tw, th), Image.BILINEAR, box=crop_box(*img.size, pre))
    std = np.asarray(pre.std, np.float32)
    x = np.asarray(img, dtype=np.float32)  # a new array: scaled in place, no temporaries
    if x.ndim == 2:
        x = x[..., None]
    x *= 1 / (255 * std)
    x -= np.asarray(pre.mean, np.float32) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])
