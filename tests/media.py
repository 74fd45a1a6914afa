"""Real media for the demo tests: videos made from real photos (scikit-image)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PHOTOS = ("chelsea", "coffee", "astronaut")


def photo(name: str, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """A scikit-image photo as an RGB frame of ``size`` (w, h)."""
    import cv2
    from skimage import data

    return cv2.resize(getattr(data, name)()[..., :3], size, interpolation=cv2.INTER_AREA)


def make_video(path: Path, photos: tuple[str, ...] = PHOTOS, frames_each: int = 10,
               fps: float = 10.0, size: tuple[int, int] = (640, 480)) -> list[str]:
    """Write a video of the photos one after another (a little camera noise on each frame);
    returns the photo name of every frame."""
    import cv2

    fourcc = "mp4v" if path.suffix == ".mp4" else "MJPG"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    rng = np.random.default_rng(0)
    names = []
    for name in photos:
        base = photo(name, size).astype(np.int16)
        for _ in range(frames_each):
            noisy = np.clip(base + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)
            writer.write(cv2.cvtColor(noisy, cv2.COLOR_RGB2BGR))
            names.append(name)
    writer.release()
    return names
