"""Where frames come from, behind one interface: ``read() -> RGB uint8 HxWx3 | None``.

``picamera2`` (the Raspberry Pi camera) is imported only when chosen: it needs libcamera,
which exists only on a Pi. OpenCV opens camera indices, video files and stream URLs.
"""

from __future__ import annotations

import glob
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import EdgepipeError, missing_extra
from ..images import IMAGE_SUFFIXES, read_image

STREAM_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "tcp://")


class FrameSource(Protocol):
    name: str

    def read(self) -> np.ndarray | None: ...  # None: the source has ended

    def close(self) -> None: ...


def import_cv2():  # -> the cv2 module, or the error naming the extra
    try:
        import cv2
    except ImportError:
        raise missing_extra("OpenCV (opencv-python)", "demo") from None
    return cv2


class Picamera2Source:
    """The Pi camera through picamera2, RGB frames of ``size``."""

    def __init__(self, size: tuple[int, int] = (640, 480)) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise EdgepipeError("picamera2 is not installed: it comes with Raspberry Pi OS "
                                "(`sudo apt install python3-picamera2`; create the venv "
                                "with --system-site-packages)") from None
        self.name = "picamera2"
        try:
            self._camera = Picamera2()
        except (RuntimeError, IndexError) as exc:
            raise EdgepipeError(f"no Raspberry Pi camera found ({exc}): check the cable and "
                                f"`rpicam-hello --list-cameras`") from None
        # RGB888 in libcamera's naming is BGR in memory: ask for it and flip once
        config = self._camera.create_preview_configuration(
            main={"size": size, "format": "RGB888"})
        self._camera.configure(config)
        self._camera.start()

    def read(self) -> np.ndarray | None:
        frame = self._camera.capture_array()
        return np.ascontiguousarray(frame[..., 2::-1])

    def close(self) -> None:
        self._camera.stop()
        self._camera.close()


class OpenCVSource:
    """A camera index, a video file or a stream URL. ``realtime`` paces a file at its FPS."""

    def __init__(self, target: int | str, realtime: bool = False, loop: bool = False) -> None:
        cv2 = import_cv2()
        self._cv2 = cv2
        self.name = f"camera {target}" if isinstance(target, int) else str(target)
        self._target, self._loop = target, loop
        self._capture = cv2.VideoCapture(target)
        if not self._capture.isOpened():
            raise EdgepipeError(f"cannot open {self.name}: " + (
                f"no such camera. {available_sources()}" if isinstance(target, int)
                else "not a video file or stream OpenCV can read"))
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and fps > 0 else None
        self._period = 1.0 / self.fps if (realtime and self.fps) else 0.0
        self._next = time.perf_counter()

    def wait(self) -> None:
        """Pace a file like a camera (``realtime``); not counted as capture time."""
        if self._period:
            self._next += self._period
            delay = self._next - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    def read(self) -> np.ndarray | None:
        ok, frame = self._capture.read()
        if not ok and self._loop and not isinstance(self._target, int):
            self._capture.set(self._cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._capture.read()
        if not ok:
            return None
        return self._cv2.cvtColor(frame, self._cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self._capture.release()


class ImageFolderSource:
    """The images of a folder, in name order, or one image file (``loop`` starts again at
    the end). Read by Pillow, upright as their EXIF orientation says: OpenCV's video reader
    would read a phone photo sideways."""

    def __init__(self, folder: Path, loop: bool = False) -> None:
        self.name = str(folder)
        self._files = [folder] if folder.is_file() else sorted(
            p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise EdgepipeError(f"no images in {folder} (looked for "
                                f"{', '.join(sorted(IMAGE_SUFFIXES))})")
        self._loop, self._index = loop, 0

    def read(self) -> np.ndarray | None:
        if self._index >= len(self._files):
            if not self._loop:
                return None
            self._index = 0
        path = self._files[self._index]
        self._index += 1
        return read_image(path)  # upright (EXIF), bit depth scaled

    def close(self) -> None:
        pass


def available_sources() -> str:
    cameras = sorted(glob.glob("/dev/video*"))
    return ("Sources: `picamera2` (Raspberry Pi camera), a camera index "
            f"({'found ' + ', '.join(cameras) if cameras else 'no /dev/video* here'}), "
            "a video file or stream URL, or a folder of images.")


def open_source(spec: str, realtime: bool = False, loop: bool = False,
                size: tuple[int, int] = (640, 480)) -> FrameSource:
    """``picamera2`` | camera index | video file / URL | image folder."""
    if spec == "picamera2":
        return Picamera2Source(size)
    if spec.isdigit():
        return OpenCVSource(int(spec))
    if spec.startswith(STREAM_PREFIXES):
        return OpenCVSource(spec, realtime=False)
    path = Path(spec)
    if path.is_dir() or (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES):
        return ImageFolderSource(path, loop)
    if path.is_file():
        return OpenCVSource(str(path), realtime=realtime, loop=loop)
    raise EdgepipeError(f"no source '{spec}'. {available_sources()}")
