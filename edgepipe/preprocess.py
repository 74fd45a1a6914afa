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


def preprocess(image: np.ndarray | Image.Image, pre: Preprocessing) -> np.ndarray:
    """One RGB image (HWC uint8 or PIL) → float32 NCHW batch of one."""
    img = to_pil(image)
    w, h = img.size
    scale = pre.resize / min(w, h)
    img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    th, tw = pre.size
    left, top = (img.width - tw) // 2, (img.height - th) // 2
    img = img.crop((left, top, left + tw, top + th))
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])
