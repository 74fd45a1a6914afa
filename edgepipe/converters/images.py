"""Real images for calibration and parity, from packages (nothing is downloaded).

The parity photos and the built-in calibration photos are disjoint, so that int8 parity
is not measured on the images its ranges were calibrated on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import EdgepipeError
from ..images import IMAGE_SUFFIXES, read_image, to_rgb8

PARITY_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")  # skimage.data
_CALIBRATION_PHOTOS = ("hubble_deep_field", "immunohistochemistry", "retina", "colorwheel",
                       "camera", "brick", "grass", "gravel", "coins", "moon")


def _rgb(a: np.ndarray) -> np.ndarray:
    return to_rgb8(a, "a packaged photo")


def parity_photos() -> dict[str, np.ndarray]:
    """Named real photos (HWC uint8 RGB): what parity and the README's examples use."""
    import skimage.data

    return {name: _rgb(getattr(skimage.data, name)()) for name in PARITY_PHOTOS}


def builtin_calibration_images(count: int = 32, seed: int = 0) -> list[np.ndarray]:
    """Random crops and flips of real photos shipped by scikit-learn and scikit-image."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = [_rgb(a) for a in load_sample_images().images]
    photos += [_rgb(getattr(skimage.data, name)()) for name in _CALIBRATION_PHOTOS]
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(min(h, w) * rng.uniform(0.5, 1.0))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = photo[top:top + side, left:left + side]
        images.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return images


def folder_images(folder: str | Path, limit: int = 200) -> list[np.ndarray]:
    """Images of a user's calibration folder (recursively), as RGB arrays read by
    :func:`edgepipe.images.read_image` (upright, bit depth scaled)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgepipeError(f"calibration folder {folder} does not exist: give a folder of images")
    try:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as exc:
        raise EdgepipeError(f"cannot read calibration folder {folder}: {exc.strerror}") from None
    if not files:
        raise EdgepipeError(
            f"calibration folder {folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    images = []
    for path in files[:limit]:
        try:
            images.append(read_image(path))
        except EdgepipeError as exc:
            raise EdgepipeError(f"calibration {exc}") from None
    return images
