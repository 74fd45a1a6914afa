"""Image → model input, exactly as a manifest's :class:`Preprocessing` says (numpy + Pillow).

Shared by the converters' parity checks, the device and the demo, so that every runtime
sees the same pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .manifest import Preprocessing


def to_pil(image: np.ndarray | Image.Image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.dtype != np.uint8:
        array = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return Image.fromarray(array[..., :3])


def _resized(w: int, h: int, pre: Preprocessing) -> tuple[int, int]:
    scale = pre.resize / min(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def crop_box(w: int, h: int, pre: Preprocessing) -> tuple[float, float, float, float]:
    """The part of a ``w``×``h`` frame the model sees (left, top, right, bottom), in frame
    pixels: where a segmentation mask goes back onto the frame."""
    rw, rh = _resized(w, h, pre)
    th, tw = pre.size
    left, top = (rw - tw) // 2, (rh - th) // 2
    sx, sy = w / rw, h / rh
    return left * sx, top * sy, (left + tw) * sx, (top + th) * sy


def preprocess(image: np.ndarray | Image.Image, pre: Preprocessing) -> np.ndarray:
    """One RGB image (HWC uint8 or PIL) → float32 NCHW batch of one.

    Resizing only the crop box straight to the model size samples the same points as resizing
    the whole frame and cropping after, for a quarter less time (the demo does it per frame).
    """
    img = to_pil(image)
    th, tw = pre.size
    img = img.resize((tw, th), Image.BILINEAR, box=crop_box(*img.size, pre))
    std = np.asarray(pre.std, np.float32)
    x = np.asarray(img, dtype=np.float32)  # a new array: scaled in place, no temporaries
    x *= 1 / (255 * std)
    x -= np.asarray(pre.mean, np.float32) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])
