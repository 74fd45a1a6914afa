"""Image files and arrays as users have them → 8-bit RGB, the one way edgepipe reads pixels.

Every place that reads an image (calibration folders, the demo's image folders, search data,
sample images for ``manifest init``) goes through :func:`read_image`, and every array that
becomes a model input through :func:`to_rgb8`, so that a phone photo, a 16-bit scan or a float
TIFF gives the same pixels everywhere:

* EXIF orientation is applied (Pillow's ``ImageOps.exif_transpose``): a phone's portrait photo,
  stored sideways with orientation 6, is read upright, as viewers show it.
* Bit depth is scaled, not clipped: 16-bit values are divided by 257 (65535 → 255), float
  images in [0, 1] multiplied by 255. A float image outside [0, 255] is refused.
* Grey, grey+alpha, palette, CMYK and RGBA become RGB (alpha is dropped).

Device side: numpy and Pillow only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import EdgepipeError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
# Pillow's integer modes wider than 8 bits: their values are 16-bit samples
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _depth_to_uint8(a: np.ndarray, what: str) -> np.ndarray:
    """Samples of any depth → uint8, scaled by the depth's full range."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.integer):
        low, high = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if low < 0 or high > 65535:
            raise EdgepipeError(f"{what} has integer values from {low} to {high}: edgepipe reads "
                                "8- and 16-bit images; convert it to 8-bit")
        if a.dtype.itemsize == 1:
            return a.astype(np.uint8)
        # 16-bit samples (uint16, or Pillow's 32-bit "I" mode holding them): full scale
        return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        finite = a[np.isfinite(a)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if finite.size != a.size or low < 0 or high > 255:
            raise EdgepipeError(f"{what} has float values from {low:g} to {high:g}"
                                + ("" if finite.size == a.size else " and NaN/inf")
                                + ": edgepipe reads float images in [0, 1] (or [0, 255]); "
                                "scale it or convert it to 8-bit")
        scale = 255.0 if high <= 1.0 else 1.0
        return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    raise EdgepipeError(f"{what} has samples of type {a.dtype}: edgepipe reads 8-bit, 16-bit "
                        "and float images")


def to_rgb8(image: np.ndarray, what: str = "the image") -> np.ndarray:
    """An HxW, HxWx1..4 array of 8-bit, 16-bit, float or bool samples → HxWx3 uint8 RGB.

    A float array in [0, 1] is scaled by 255; [0, 255] is kept. Alpha is dropped.
    Raises EdgepipeError (one line) for anything else: negative or out-of-range values, more
    than 4 channels.
    """
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = _depth_to_uint8(a, what)
        return np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (2, 3, 4):
        raise EdgepipeError(f"{what} has shape {a.shape}: expected H x W (grey) or H x W x 3 "
                            "(RGB), optionally with alpha")
    if a.shape[-1] == 2:  # grey + alpha
        return np.repeat(_depth_to_uint8(a[..., 0], what)[..., None], 3, axis=-1)
    rgb = _depth_to_uint8(a[..., :3], what)
    return rgb if rgb.flags.c_contiguous else np.ascontiguousarray(rgb)


def pil_to_rgb8(img: object, what: str = "the image") -> np.ndarray:
    """A Pillow image → HxWx3 uint8 RGB: EXIF orientation applied, depth scaled."""
    from PIL import ImageOps

    img = ImageOps.exif_transpose(img)  # a new image, upright; the same one without a tag
    mode = img.mode
    if mode in _WIDE_MODES or mode == "F":
        return to_rgb8(np.asarray(img), what)
    if mode in ("RGB", "L"):
        return to_rgb8(np.asarray(img), what)
    if mode in ("1", "P", "PA", "LA", "La", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB",
                "HSV"):
        return np.asarray(img.convert("RGB"))
    raise EdgepipeError(f"{what} is a {mode} image, which edgepipe does not read: save it as "
                        "8-bit RGB or grey")


def read_image(path: str | Path) -> np.ndarray:
    """An image file → HxWx3 uint8 RGB, upright, depth scaled (see the module docstring).

    A multi-page file (TIFF, GIF) gives its first page. Raises EdgepipeError naming the file
    when it cannot be read.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return pil_to_rgb8(img, f"image {path}")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise EdgepipeError(f"image {path} cannot be read ({exc}): fix it or remove it"
                            ) from None
