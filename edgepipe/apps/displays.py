"""Where annotated frames go: a window, a web page (MJPEG), a video file, or nowhere."""

from __future__ import annotations

import hmac
import json
import os
import tempfile
import threading
from collections.abc import Callable
from fractions import Fraction
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from ..errors import EdgepipeError


class NoDisplay:
    """``--display none``: nothing is drawn; the demo only measures."""

    draws = False
    name = "none"
    writes_file = False
    frames = 0  # frames written (a file display)

    def show(self, frame_bgr: np.ndarray, t_ms: float | None = None) -> None:
        """Show one annotated frame; ``t_ms``: its time in the source (ms from the source's
        start; None where the source has no clock: a file display spaces those evenly)."""

    def notes(self) -> list[str]:
        """What the display changed about the frames, for the summary."""
        return []

    def stopped(self) -> bool:
        return False

    def close(self, ok: bool = True) -> None:
        pass


def letterbox(cv2, frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``frame`` scaled to fit ``size`` (w, h) whole, centred on black: a portrait frame in a
    landscape video keeps its proportions."""
    w, h = size
    fh, fw = frame.shape[:2]
    scale = min(w / fw, h / fh)
    nw, nh = max(1, round(fw * scale)), max(1, round(fh * scale))
    out = np.zeros((h, w, 3), np.uint8)
    left, top = (w - nw) // 2, (h - nh) // 2
    out[top:top + nh, left:left + nw] = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA)
    return out


class _TimedWriter:
    """Frames encoded at their own times (PyAV: MPEG-4 part 2 in .mp4, MJPEG in .avi, a
    millisecond time base): a variable-rate source keeps its timing, every frame stays one
    frame (opencv/opencv#24000: OpenCV's writer has one constant rate)."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float) -> None:
        import av

        self._av = av
        self._container = av.open(str(path), "w", format="mp4" if path.suffix.lower() ==
                                  ".mp4" else "avi")
        mjpeg = path.suffix.lower() == ".avi"
        self._stream = self._container.add_stream("mjpeg" if mjpeg else "mpeg4",
                                                  rate=max(1, round(fps)))
        self._stream.width, self._stream.height = size
        self._stream.pix_fmt = "yuvj420p" if mjpeg else "yuv420p"
        self._stream.time_base = self._stream.codec_context.time_base = Fraction(1, 1000)
        self._stream.bit_rate = 4_000_000
        self._last = -1

    def write(self, frame_bgr: np.ndarray, t_ms: float) -> None:
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_bgr), format="bgr24")
        self._last = max(int(round(t_ms)), self._last + 1)  # a muxer takes rising times only
        frame.pts, frame.time_base = self._last, Fraction(1, 1000)
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def release(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()


def timed_writer_available() -> bool:
    """Whether PyAV is installed (the ``demo`` extra): without it, files are written at one
    constant rate by OpenCV."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


class FileDisplay(NoDisplay):
    """The annotated video, written under a temporary name and renamed when complete.

    Each frame is written at its own time in the source (``show(frame, t_ms)``; frames of a
    source without a clock, an image folder, ``1/fps`` apart), so a variable-rate file keeps
    its timing and the video lasts as long as the source (PyAV; without it, OpenCV's writer at
    the constant ``fps``, and the summary says so). A video has one frame size, the first
    frame's (rounded down to even for .mp4, which MPEG-4 needs): frames of another size (a
    folder mixing landscape and portrait photos) are letterboxed to it, and counted.
    """

    draws = True
    writes_file = True

    def __init__(self, cv2, path: Path, fps: float, timed: bool | None = None) -> None:
        self._cv2, self.path, self.fps = cv2, Path(path), fps
        if self.path.suffix.lower() not in (".mp4", ".avi"):
            raise EdgepipeError(f"write the video as .mp4 or .avi, not {self.path.name}")
        self.timed = timed_writer_available() if timed is None else timed
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.partial-",
                                   suffix=self.path.suffix, dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        self._writer: Any = None
        self._size: tuple[int, int] | None = None
        self.frames = 0
        self.letterboxed = 0
        self.first_ms: float | None = None
        self.last_ms: float | None = None
        self.name = f"file {self.path}"

    def _open(self, frame_bgr: np.ndarray) -> None:
        h, w = frame_bgr.shape[:2]
        mp4 = self.path.suffix.lower() == ".mp4"
        if mp4:  # MPEG-4 frames have even sizes: a 641x479 video came out 640x478
            w, h = max(2, w - w % 2), max(2, h - h % 2)
        self._size = (w, h)
        if self.timed:
            try:
                self._writer = _TimedWriter(self._tmp, (w, h), self.fps)
                return
            except Exception as exc:  # PyAV's own errors (an encoder missing from its build)
                raise EdgepipeError(f"PyAV cannot write {self.path.name} here: "
                                    f"{type(exc).__name__}: {exc}") from None
        fourcc = "mp4v" if mp4 else "MJPG"
        self._writer = self._cv2.VideoWriter(str(self._tmp),
                                             self._cv2.VideoWriter_fourcc(*fourcc),
                                             self.fps, (w, h))
        if not self._writer.isOpened():
            raise EdgepipeError(f"OpenCV cannot write {self.path.name} here")

    def show(self, frame_bgr: np.ndarray, t_ms: float | None = None) -> None:
        if self._writer is None:
            self._open(frame_bgr)
        if (frame_bgr.shape[1], frame_bgr.shape[0]) != self._size:
            frame_bgr = letterbox(self._cv2, frame_bgr, self._size)  # type: ignore[arg-type]
            self.letterboxed += 1
        if t_ms is None:
            t_ms = self.frames * 1000.0 / self.fps
        self.first_ms = t_ms if self.first_ms is None else self.first_ms
        if self.timed:
            self._writer.write(frame_bgr, t_ms - self.first_ms)
        else:
            self._writer.write(frame_bgr)
        self.last_ms = t_ms
        self.frames += 1

    def seconds(self) -> float | None:
        """The written video's span, first frame to last, in the source's time."""
        if self.first_ms is None or self.last_ms is None:
            return None
        return (self.last_ms - self.first_ms) / 1000 if self.timed else \
            (self.frames - 1) / self.fps

    def notes(self) -> list[str]:
        notes = []
        if self.letterboxed and self._size is not None:
            notes.append(f"{self.letterboxed} frame(s) of another size letterboxed to the "
                         f"video's {self._size[0]}x{self._size[1]}")
        if not self.timed and self.frames:
            notes.append(f"PyAV is not installed: {self.path.name} was written at a constant "
                         f"{self.fps:g} frames/s, not at each frame's own time (a variable-"
                         "rate source plays at another speed); pip install av")
        return notes

    def close(self, ok: bool = True) -> None:
        if self._writer is not None:
            self._writer.release()
        if ok and self.frames:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)


class WindowDisplay(NoDisplay):
    """An OpenCV window (needs a screen and an OpenCV built with a GUI). q or Esc stops."""

    draws = True
    name = "window"
    TITLE = "edgepipe demo (q to quit)"

    def __init__(self, cv2) -> None:
        self._cv2, self._stop = cv2, False
        try:
            cv2.namedWindow(self.TITLE, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise EdgepipeError("no window here (no screen, or opencv-python-headless): use "
                                "--display web, --display file:OUT.mp4 or --display none"
                                ) from None

    def show(self, frame_bgr: np.ndarray, t_ms: float | None = None) -> None:
        self._cv2.imshow(self.TITLE, frame_bgr)
        if self._cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self._stop = True

    def stopped(self) -> bool:
        return self._stop

    def close(self, ok: bool = True) -> None:
        self._cv2.destroyAllWindows()


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>edgepipe demo</title>
<style>body{{background:#111;color:#ddd;font-family:system-ui,sans-serif;margin:1em}}
img{{max-width:100%;border:1px solid #444}}#stats{{font-family:monospace;margin:.5em 0}}
</style></head><body><h3>edgepipe demo: {title}</h3>
<img id="live" src="/stream.mjpg{query}" alt="live stream">
<div id="stats">waiting for frames…</div>
<script>
const img = document.getElementById("live");
img.addEventListener("load", () => document.body.dataset.live = "1");
async function poll() {{
  try {{
    const s = await (await fetch("/stats.json{query}")).json();
    document.getElementById("stats").textContent =
      `${{s.fps === null ? "—" : s.fps.toFixed(1)}} FPS · frames ${{s.frames}} · ` +
      Object.entries(s.stages)
        .map(([k, v]) => `${{k}} ${{v === null ? "—" : v.toFixed(1)}} ms`).join(" · ");
  }} catch (e) {{}}
  setTimeout(poll, 1000);
}}
poll();
</script></body></html>"""


class WebDisplay(NoDisplay):
    """An MJPEG stream and a small page, for a headless Pi watched from a laptop.

    It streams a camera: it binds to 127.0.0.1 unless a host is given, and with a token every
    request must carry ``?token=``.
    """

    draws = True

    def __init__(self, cv2, host: str = "127.0.0.1", port: int = 8080, token: str | None = None,
                 title: str = "", stats: Callable[[], dict[str, Any]] | None = None,
                 quality: int = 80) -> None:
        self._cv2, self._quality = cv2, quality
        self._jpeg: bytes | None = None
        self._seq = 0
        self._cond = threading.Condition()
        self._closed = False
        self.stats = stats or (lambda: {})
        display = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802
                url = urlsplit(self.path)
                given = parse_qs(url.query).get("token", [""])[-1]
                if token and not hmac.compare_digest(given.encode(), token.encode()):
                    return self._send(401, "text/plain", b"add ?token=TOKEN to the address\n")
                query = f"?token={token}" if token else ""
                if url.path == "/":
                    page = PAGE.format(title=escape(title), query=query).encode()
                    self._send(200, "text/html; charset=utf-8", page)
                elif url.path == "/stats.json":
                    self._send(200, "application/json", json.dumps(display.stats()).encode())
                elif url.path == "/snapshot.jpg" and display._jpeg:
                    self._send(200, "image/jpeg", display._jpeg)
                elif url.path == "/stream.mjpg":
                    display._stream(self)
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _send(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise EdgepipeError(f"cannot serve on {host}:{port}: {exc.strerror}; pick another "
                                f"--port") from None
        self._server.daemon_threads = True
        bound_host, bound_port = self._server.server_address[:2]
        self.url = f"http://{bound_host}:{bound_port}/" + (f"?token={token}" if token else "")
        self.name = f"web {self.url}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _stream(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        handler.send_header("Cache-Control", "no-store")
        handler.end_headers()
        seen = -1
        try:
            while True:
                with self._cond:
                    if self._seq == seen and not self._closed:
                        self._cond.wait(timeout=1)
                    if self._closed:
                        return
                    if self._seq == seen or self._jpeg is None:
                        continue
                    seen, jpeg = self._seq, self._jpeg
                handler.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                    + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            return  # the viewer closed the page

    def show(self, frame_bgr: np.ndarray, t_ms: float | None = None) -> None:
        ok, jpeg = self._cv2.imencode(".jpg", frame_bgr,
                                      [self._cv2.IMWRITE_JPEG_QUALITY, self._quality])
        if ok:
            with self._cond:
                self._jpeg, self._seq = jpeg.tobytes(), self._seq + 1
                self._cond.notify_all()

    def close(self, ok: bool = True) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
