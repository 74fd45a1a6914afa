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
    """``live``: frames come at the world's pace (a camera, a stream), and a stage that
    cannot keep up must drop some; a file's or folder's frames wait for the stages.
    ``timestamp_ms``: the time of the frame ``read`` returned last, on the source's own clock
    (a file's presentation time; a camera's arrival), None where it has none (images)."""

    name: str
    live: bool
    timestamp_ms: float | None

    def read(self) -> np.ndarray | None: ...  # None: the source has ended

    def close(self) -> None: ...


class _Clock:
    """Arrival times of a live source's frames, ms from its first."""

    def __init__(self) -> None:
        self._start: float | None = None
        self.timestamp_ms: float | None = None

    def tick(self) -> None:
        now = time.perf_counter()
        self._start = now if self._start is None else self._start
        self.timestamp_ms = (now - self._start) * 1000


def import_cv2():  # -> the cv2 module, or the error naming the extra
    try:
        import cv2
    except ImportError:
        raise missing_extra("OpenCV (opencv-python)", "demo") from None
    return cv2


# libcamera's formats name the bytes of a pixel from the most significant end (DRM
# fourcc): "RGB888" lies B, G, R in memory, "BGR888" R, G, B; the X variants add a padding
# byte (picamera2's default preview format is XBGR8888). What a setup really delivers differs
# between kernels and sensors (raspberrypi/picamera2#848, #1325; raspberrypi/libcamera#122).
CAMERA_ORDERS = {"RGB888": "bgr", "BGR888": "rgb", "XRGB8888": "bgr", "XBGR8888": "rgb"}
# colours whose order in memory tells B, G, R from R, G, B (green is the middle byte of both)
CHECK_COLOURS = ("red", "blue")


def check_camera_order(frame: np.ndarray, colour: str, order: str) -> tuple[str, str]:
    """(the byte order that makes ``frame`` of a scene of ``colour`` that colour, why) from
    the frame as the camera delivered it (H x W x 3 or 4, bytes in memory order). Raises
    EdgepipeError when neither order makes it that colour (the scene is something else)."""
    means = frame[..., :3].reshape(-1, 3).mean(axis=0)
    first, last = float(means[0]), float(means[2])
    words = f"bytes 0/1/2 average {first:.0f}/{float(means[1]):.0f}/{last:.0f}"
    # in memory order, red is byte 0 of R, G, B and byte 2 of B, G, R; blue the other one
    wanted_first = (colour == "red") == (order == "rgb")
    strong = max(first, last) >= 1.3 * max(min(first, last), float(means[1]), 1.0)
    if not strong:
        raise EdgepipeError(f"--camera-check {colour}: the first frame is not {colour} in "
                            f"either byte order ({words}): point the camera at something "
                            f"{colour} that fills the frame, or leave --camera-check out")
    if (first > last) == wanted_first:
        return order, f"checked on a {colour} scene (--camera-check {colour}): {words}"
    other = "bgr" if order == "rgb" else "rgb"
    return other, (f"checked on a {colour} scene (--camera-check {colour}): {words}, "
                   f"{colour} only as {other.upper()}: the camera delivers {other.upper()}, "
                   f"not the {order.upper()} its format names")


class Picamera2Source:
    """The Pi camera through picamera2, RGB frames of ``size``.

    The byte order of its frames (``order``: "bgr" or "rgb" in memory) is, in turn: given
    (``--camera-order``), or read from the format the camera reports after configuration
    (``RGB888`` is B, G, R in libcamera's naming; a setup may report another format than
    asked), and then checked on the first frame where the scene's colour is known
    (``check``: red or blue; a swapped order is corrected and said). ``order_words`` says
    which and why, for the demo's start and summary. A 4-byte format's padding is dropped.
    """

    def __init__(self, size: tuple[int, int] = (640, 480), order: str | None = None,
                 check: str | None = None) -> None:
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
        config = self._camera.create_preview_configuration(
            main={"size": size, "format": "RGB888"})
        self._camera.configure(config)
        reported = "RGB888"
        if hasattr(self._camera, "camera_configuration"):  # what the setup really gives
            main = (self._camera.camera_configuration() or {}).get("main") or {}
            reported = str(main.get("format") or reported)
        if reported not in CAMERA_ORDERS:
            self._camera.close()
            raise EdgepipeError(f"the camera gives {reported} frames, not one of "
                                f"{', '.join(CAMERA_ORDERS)}: edgepipe reads RGB frames")
        self.format = reported
        if order is not None:
            self.order, self.order_words = order, (
                f"{order.upper()} in memory (--camera-order {order}; the camera reports "
                f"{reported})")
        else:
            self.order = CAMERA_ORDERS[reported]
            self.order_words = (f"{self.order.upper()} in memory (the camera reports "
                                f"{reported}, which libcamera lays out "
                                f"{', '.join(self.order.upper())}; --camera-order "
                                f"{'rgb' if self.order == 'bgr' else 'bgr'} if colours look "
                                "swapped, --camera-check red on a red scene to check)")
        if check is not None:
            self.order_words += f"; to be checked on the first frame (--camera-check {check})"
        self._check = check
        self.live, self._clock = True, _Clock()
        self._camera.start()

    @property
    def timestamp_ms(self) -> float | None:
        return self._clock.timestamp_ms

    def read(self) -> np.ndarray | None:
        frame = self._camera.capture_array()
        self._clock.tick()
        if self._check is not None:  # the first frame decides, once
            self.order, why = check_camera_order(frame, self._check, self.order)
            self.order_words = f"{self.order.upper()} in memory, {why}"
            self._check = None
        frame = frame[..., :3]
        return np.ascontiguousarray(frame[..., ::-1] if self.order == "bgr" else frame)

    def close(self) -> None:
        self._camera.stop()
        self._camera.close()


class OpenCVSource:
    """A camera index, a video file or a stream URL. ``realtime`` paces a file by its frames'
    own times (a variable-rate file too), like a camera."""

    def __init__(self, target: int | str, realtime: bool = False, loop: bool = False) -> None:
        cv2 = import_cv2()
        self._cv2 = cv2
        self.name = f"camera {target}" if isinstance(target, int) else str(target)
        self._target, self._loop = target, loop
        self.live = isinstance(target, int) or str(target).startswith(STREAM_PREFIXES)
        self._capture = cv2.VideoCapture(target)
        if not self._capture.isOpened():
            raise EdgepipeError(f"cannot open {self.name}: " + (
                f"no such camera. {available_sources()}" if isinstance(target, int)
                else "not a video file or stream OpenCV can read"))
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        # a variable-rate file's "fps" is its average (frames / duration): a nominal figure
        self.fps = fps if fps and fps > 0 else None
        self.realtime = realtime and not self.live
        self._clock = _Clock()
        self._offset_ms = 0.0  # a looped file's time goes on from where its last pass ended
        self._last_ms = 0.0
        self._paced_from: tuple[float, float] | None = None  # (wall clock, frame time)
        self.timestamp_ms: float | None = None

    def pace(self) -> None:
        """Hold the frame just read until its own time has come since the first (``realtime``:
        a file played as a camera would deliver it); not counted as capture time."""
        if not self.realtime or self.timestamp_ms is None:
            return
        now = time.perf_counter()
        if self._paced_from is None:
            self._paced_from = (now, self.timestamp_ms)
            return
        wall, first = self._paced_from
        delay = wall + (self.timestamp_ms - first) / 1000 - now
        if delay > 0:
            time.sleep(delay)

    def read(self) -> np.ndarray | None:
        ok, frame = self._capture.read()
        if not ok and self._loop and not self.live:
            self._offset_ms = self._last_ms + 1000 / (self.fps or 30)
            self._capture.set(self._cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._capture.read()
        if not ok:
            return None
        if self.live:
            self._clock.tick()
            self.timestamp_ms = self._clock.timestamp_ms
        else:  # the frame's presentation time in the file
            own = float(self._capture.get(self._cv2.CAP_PROP_POS_MSEC))
            self._last_ms = self._offset_ms + own
            self.timestamp_ms = self._last_ms
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
        self.live, self.timestamp_ms = False, None  # photos have no time

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
                size: tuple[int, int] = (640, 480), camera_order: str | None = None,
                camera_check: str | None = None) -> FrameSource:
    """``picamera2`` | camera index | video file / URL | image folder. ``camera_order``
    ("bgr" or "rgb") and ``camera_check`` (a scene colour: red or blue) are for picamera2,
    whose byte order is a question (:class:`Picamera2Source`); OpenCV converts its own."""
    if camera_order not in (None, "bgr", "rgb"):
        raise EdgepipeError(f"--camera-order {camera_order}: use bgr or rgb (the order of "
                            "the bytes of a pixel in memory)")
    if camera_check not in (None, *CHECK_COLOURS):
        raise EdgepipeError(f"--camera-check {camera_check}: use red or blue (green lies in "
                            "the middle of both byte orders and tells them apart by nothing)")
    if spec == "picamera2":
        return Picamera2Source(size, camera_order, camera_check)
    if camera_order or camera_check:
        raise EdgepipeError("--camera-order and --camera-check are for --source picamera2: "
                            "OpenCV gives its cameras' and files' frames in a known order")
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
