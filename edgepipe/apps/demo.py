"""``edgepipe demo``: a converted model on live frames, with FPS and where the time goes.

Three stages on their own threads, each handing over only its newest result (a slow stage
drops frames instead of building up lag):

    capture + preprocess  →  inference  →  decode + draw + display (main thread: GUI toolkits
                                                                    want windows there)
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..decode import Classification, OutputDecoder, Plausibility
from ..device.bench import rss_mb
from ..errors import EdgepipeError
from ..manifest import Manifest, load_manifest
from ..preprocess import preprocess
from .draw import stage_words
from .inference_process import ProcessRunner
from .sources import FrameSource, open_source

STAGES = ("capture", "preprocess", "inference", "postprocess")


class Latest:
    """A hand-over slot of one item. ``drop``: a new item replaces one not yet taken (a live
    source: the newest frame is the one worth inferring); otherwise ``put`` waits until the
    last item was taken (a file: every frame goes through every stage)."""

    def __init__(self, drop: bool = True) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._seq = 0
        self._taken = 0
        self._ended = False
        self.drop = drop
        # items a newer one replaced before they were taken: dropped by the policy (an item
        # overwritten because the demo stopped was in flight, not dropped)
        self.replaced = 0

    def put(self, item: Any, stop: threading.Event | None = None) -> None:
        with self._cond:
            while not self.drop and self._taken != self._seq and \
                    not (stop is not None and stop.is_set()):
                self._cond.wait(0.1)
            if self.drop and self._taken != self._seq:
                self.replaced += 1
            self._item, self._seq = item, self._seq + 1
            self._cond.notify_all()

    def end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def take(self, seen: int, stop: threading.Event) -> tuple[int, Any] | None:
        """The newest item after ``seen``; None once the producer ended (or on stop)."""
        with self._cond:
            while self._seq == seen and not self._ended and not stop.is_set():
                self._cond.wait(0.1)
            if self._seq != seen and not stop.is_set():
                self._taken = self._seq
                self._cond.notify_all()
                return self._seq, self._item
            return None


@dataclass
class DemoSummary:
    """What a demo run did. Frames are counted at each hand-over, and each count has its own
    rate (per second, from its first to its last frame): a slow stage drops frames, and the
    rate of frames inferred is not the rate of frames shown or written."""

    source: str
    runtime: str
    artifact: str
    seconds: float
    captured: int
    inferred: int
    shown: int
    fps: float | None  # inferences per second, first start to last end (None: < 2 frames)
    stage_ms: dict[str, float]  # mean per stage
    rss_start_mb: float
    rss_end_mb: float  # this process's
    written: int | None = None  # frames in the --display file (None: not a file display)
    # frames lost between stages: "capture→inference" (a newer frame replaced it before
    # inference took it), "inference→display", "display→file"
    dropped: dict[str, int] = field(default_factory=dict)
    # frames captured or inferred that had not gone through every stage when the demo
    # stopped (--duration, Ctrl-C): not dropped, the stop came first
    in_flight: int = 0
    # per second: captured, inferred...; None where fewer than two frames give no rate
    rates: dict[str, float | None] = field(default_factory=dict)
    display_notes: list[str] = field(default_factory=list)  # e.g. frames letterboxed
    warnings: list[str] = field(default_factory=list)  # implausible outputs (Plausibility)
    # manifest init's low-confidence guesses that decide the answer (unchecked_guesses)
    guesses: list[str] = field(default_factory=list)
    # "every frame" (a file or folder: each frame waits for the stages) or "newest frame"
    # (a live source, --realtime or --drop-frames: a slow stage drops frames), and why
    frames: str = ""
    # the camera's byte order as read (picamera2): which, and why (given, reported, checked)
    camera_order: str | None = None
    video_seconds: float | None = None  # the --display file's span, first frame to last
    # the inference process's resident memory at the end (MB; None: inference ran in this
    # process): ExecuTorch's runtime and libtorch live there, not in rss_end_mb
    inference_rss_mb: float | None = None


# guesses that change what the model is fed or how its output is read (labels, resize do not)
_DECISIVE = ("range", "output kind", "task", "layout")


def unchecked_guesses(manifest: Manifest) -> list[str]:
    """manifest init's guesses of low confidence that decide the answer, one line each: a
    float input does not say its range, so a [-1, 1] model fed ImageNet mean/std answers wrong
    and looks right; the demo says so at its start and in its summary."""
    return [f"{g['name']} {g['value']} is a low-confidence guess of manifest init "
            f"({g['reason']}): if it is wrong, so are the answers"
            for g in manifest.extra.get("guessed", [])
            if g.get("confidence") == "low" and g.get("name") in _DECISIVE]


def pick_artifact(folder: Path, runtimes: dict[str, str]) -> Path:
    """From a convert output: the fastest kind here, LiteRT int8 first (see the benchmarks)."""
    order = ["_int8.tflite", "_fp32.tflite", "_int8.pte", "_fp32.pte"]
    candidates = [p for suffix in order for p in sorted(folder.glob(f"*{suffix}"))
                  if (p.suffix == ".tflite" and "litert" in runtimes)
                  or (p.suffix == ".pte" and "executorch" in runtimes)]
    if not candidates:
        raise EdgepipeError(f"no .tflite or .pte in {folder} that this machine can run "
                            f"(runtimes here: {', '.join(runtimes) or 'none'})")
    return candidates[0]


def open_model(target: str, runtime: str | None, threads: int, weights: str | None,
               inference_process: str = "auto") -> tuple[Any, Manifest, str]:
    """(runner, manifest, what it is) for an artifact, a convert folder, or with
    ``runtime='torch'`` the PyTorch model named by an artifact's manifest or by name.

    ``inference_process``: ``auto`` runs ExecuTorch in a process of its own (its bindings hold
    the GIL while computing, which would stall capture), ``on`` does so for any runtime.
    """
    from ..device.runtimes import RUNTIME_FOR_SUFFIX, installed_runtimes, open_runner

    path = Path(target)
    if path.is_dir():
        path = pick_artifact(path, installed_runtimes())
    if runtime == "torch":
        from ..converters.reference import torch_reference

        return torch_reference(path if path.is_file() else None, target, threads, weights)
    if not path.is_file():
        raise EdgepipeError(f"{target} is not an artifact or a convert output folder (for a "
                            f"built-in model on PyTorch pass --runtime torch)")
    manifest = load_manifest(path)
    manifest.check()  # the preprocessing must be able to feed this input
    own = RUNTIME_FOR_SUFFIX.get(path.suffix)
    if runtime and own and runtime != own:
        raise EdgepipeError(f"{path.name} runs on {own}, not {runtime}")
    if inference_process not in ("auto", "on", "off"):
        raise EdgepipeError(f"--inference-process is auto, on or off, not {inference_process}")
    OutputDecoder(manifest)  # refuse what the demo cannot decode before loading anything
    if inference_process == "on" or (inference_process == "auto" and own == "executorch"):
        pre = manifest.preprocessing
        shape = (1, pre.channels, *pre.size)
        return ProcessRunner(path, threads, shape), manifest, path.name
    return open_runner(path, threads), manifest, path.name


class Rate:
    """A count of frames and its rate, first frame to last."""

    def __init__(self) -> None:
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None

    def tick(self, now: float | None = None, n: int = 1) -> None:
        now = time.perf_counter() if now is None else now
        self.first = now if self.first is None else self.first
        self.last = now
        self.count += n

    def per_second(self) -> float | None:
        """Frames per second; None from fewer than two frames (one frame has no rate)."""
        span = (self.last - self.first) if self.first is not None and self.last else 0.0
        return (self.count - 1) / span if span > 0 and self.count > 1 else None


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.recent = {s: deque(maxlen=30) for s in STAGES}
        # running sums, not lists: a camera demo runs for hours
        self.sums = {s: 0.0 for s in STAGES}
        self.counts = {s: 0 for s in STAGES}
        self.done_times: deque[float] = deque(maxlen=60)
        self.captured = self.inferred = self.shown = 0
        self.first_start: float | None = None
        self.last_end: float | None = None
        self.rates = {k: Rate() for k in ("captured", "inferred", "shown", "written")}

    def add(self, stage: str, ms: float) -> None:
        with self.lock:
            self.recent[stage].append(ms)
            self.sums[stage] += ms
            self.counts[stage] += 1

    def fps(self) -> float | None:
        """Inferences per second over the last 60; None before two (one frame has no rate)."""
        with self.lock:
            t = list(self.done_times)
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else None

    def now_ms(self) -> dict[str, float | None]:
        """Each stage's mean over its last 30 frames, in ms; None before its first (the HUD
        of the first frame is drawn before that frame's postprocess is timed)."""
        with self.lock:
            return {s: statistics.fmean(v) if v else None for s, v in self.recent.items()}

    def snapshot(self) -> dict[str, Any]:
        return {"fps": self.fps(), "frames": self.inferred, "stages": self.now_ms()}


def run_demo(target: str, source: str | FrameSource, display_spec: str = "none",
             runtime: str | None = None, threads: int = 1, weights: str | None = None,
             loop: bool = False, realtime: bool = False, duration: float | None = None,
             max_frames: int | None = None, web_host: str = "127.0.0.1", web_port: int = 8080,
             token: str | None = None, log: Path | None = None, log_every: float = 2.0,
             on_ready: Any = None, inference_process: str = "auto",
             drop_frames: bool | None = None, camera_order: str | None = None,
             camera_check: str | None = None) -> DemoSummary:
    """Run the demo until the source ends (or ``duration``, ``max_frames``, Ctrl-C).
    ``drop_frames``: hand over only the newest frame between stages (None: for live sources
    and ``realtime`` files, which play as a camera would; a file or folder otherwise goes
    through whole, each frame written at its own time). ``camera_order`` / ``camera_check``:
    the picamera2 byte order, given or checked on a scene of a known colour."""
    rss_start = rss_mb()
    runner, manifest, what = open_model(target, runtime, threads, weights, inference_process)
    try:
        decoder = OutputDecoder(manifest)
        plausibility = Plausibility(manifest)
        guesses = unchecked_guesses(manifest)
        for guess in guesses:
            print(f"demo: note: {guess}", file=sys.stderr, flush=True)
        frames = source if not isinstance(source, str) else open_source(
            source, realtime, loop, camera_order=camera_order, camera_check=camera_check)
        live = bool(getattr(frames, "live", False))
        drop = (live or realtime) if drop_frames is None else drop_frames
        policy = ("newest frame: " + ("--drop-frames" if drop_frames else
                                      "a live source" if live else "--realtime")
                  + ", a stage that cannot keep up drops frames (counted)") if drop else \
            ("every frame: " + ("a file or folder" if drop_frames is None else
                                "--drop-frames off") + ", the stages wait for each other")
        print(f"demo: frames: {policy}", file=sys.stderr, flush=True)
        if getattr(frames, "order_words", None):
            print(f"demo: camera byte order: {frames.order_words}",  # type: ignore[attr-defined]
                  file=sys.stderr, flush=True)
        stats, stop = Stats(), threading.Event()
        captured, inferred = Latest(drop), Latest(drop)
        errors: list[BaseException] = []
        from .draw import draw_classification, draw_hud, draw_segmentation
        from .sources import import_cv2

        cv2 = import_cv2()
        display = _open_display(cv2, display_spec, frames, web_host, web_port, token, what, stats)
        if on_ready:
            on_ready(display)

        def capture() -> None:
            pace = getattr(frames, "pace", None)
            try:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    frame = frames.read()
                    t1 = time.perf_counter()
                    if frame is None:
                        break
                    if pace:  # --realtime: held until its time; not capture time
                        pace()
                    t2 = time.perf_counter()
                    x = preprocess(frame, manifest.preprocessing)
                    stats.add("capture", (t1 - t0) * 1000)
                    stats.add("preprocess", (time.perf_counter() - t2) * 1000)
                    stats.captured += 1
                    stats.rates["captured"].tick(t2)
                    captured.put((stats.captured, frame, x,
                                  getattr(frames, "timestamp_ms", None)), stop)
                    if max_frames and stats.captured >= max_frames:
                        break
            except BaseException as exc:
                errors.append(exc)
            finally:
                captured.end()

        def infer() -> None:
            seen = 0
            try:
                while (item := captured.take(seen, stop)) is not None:
                    seen, (index, frame, x, t_ms) = item
                    t0 = time.perf_counter()
                    outputs = runner.run(x)
                    t1 = time.perf_counter()
                    stats.add("inference", (t1 - t0) * 1000)
                    with stats.lock:
                        stats.first_start = stats.first_start or t0
                        stats.last_end = t1
                        stats.done_times.append(t1)
                        stats.inferred += 1
                        stats.rates["inferred"].tick(t1)
                    inferred.put((index, frame, outputs, t_ms), stop)
            except BaseException as exc:
                errors.append(exc)
                stop.set()
            finally:
                inferred.end()

        threads_ = [threading.Thread(target=capture, name="capture", daemon=True),
                    threading.Thread(target=infer, name="inference", daemon=True)]
        for t in threads_:
            t.start()
        log_file = open(log, "w") if log else None  # noqa: SIM115 - closed below
        started = last_log = time.perf_counter()
        ok = False
        try:
            seen = 0
            while (item := inferred.take(seen, stop)) is not None:
                seen, (index, frame, outputs, t_ms) = item
                t0 = time.perf_counter()
                result = decoder(outputs)
                for warning in plausibility.check(outputs, result):
                    print(f"demo: warning: {warning}", file=sys.stderr, flush=True)
                if display.draws:
                    canvas = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
                    if isinstance(result, Classification):
                        draw_classification(cv2, canvas, result)
                    else:
                        draw_segmentation(cv2, canvas, result, manifest.preprocessing)
                    draw_hud(cv2, canvas, stats.fps(), stats.now_ms(), runner.runtime)
                stats.add("postprocess", (time.perf_counter() - t0) * 1000)
                if display.draws:
                    written = display.frames
                    display.show(canvas, t_ms)
                    if display.frames > written:
                        stats.rates["written"].tick()
                stats.shown += 1
                stats.rates["shown"].tick()
                if log_file:  # per frame, for checking what the model said when
                    log_file.write(json.dumps({"frame": index, **_prediction(result)}) + "\n")
                now = time.perf_counter()
                if log_every and now - last_log >= log_every:
                    last_log = now
                    print(_hud_line(stats), file=sys.stderr, flush=True)
                if display.stopped() or (duration and now - started >= duration):
                    break
            ok = not errors
        except KeyboardInterrupt:
            ok = True  # Ctrl-C is the normal way to stop a camera demo
        finally:
            stop.set()
            for t in threads_:
                t.join(timeout=5)
            frames.close()
            display.close(ok=ok)
            if log_file:
                log_file.close()
        for warning in plausibility.finish():
            print(f"demo: warning: {warning}", file=sys.stderr, flush=True)
        if errors:
            exc = errors[0]
            if isinstance(exc, EdgepipeError):
                raise exc
            raise EdgepipeError(f"the demo stopped: {type(exc).__name__}: {exc}") from None
        span = (stats.last_end - stats.first_start) if stats.first_start and stats.last_end else 0
        written = display.frames if display.writes_file else None
        dropped = {"capture→inference": captured.replaced,
                   "inference→display": inferred.replaced}
        in_flight = stats.captured - stats.shown - captured.replaced - inferred.replaced
        if written is not None:
            dropped["display→file"] = stats.shown - written
        return DemoSummary(
            source=frames.name, runtime=runner.runtime, artifact=what,
            seconds=time.perf_counter() - started, captured=stats.captured,
            inferred=stats.inferred, shown=stats.shown,
            fps=(stats.inferred - 1) / span if span > 0 and stats.inferred > 1 else None,
            stage_ms={s: stats.sums[s] / stats.counts[s] if stats.counts[s] else 0.0
                      for s in STAGES},
            rss_start_mb=rss_start, rss_end_mb=rss_mb(), written=written, dropped=dropped,
            in_flight=in_flight,
            rates={k: r.per_second() for k, r in stats.rates.items()
                   if k != "written" or written is not None},
            display_notes=display.notes(), warnings=plausibility.warnings, guesses=guesses,
            frames=policy, camera_order=getattr(frames, "order_words", None),
            video_seconds=display.seconds() if written is not None else None,
            inference_rss_mb=runner.rss_mb() if isinstance(runner, ProcessRunner) else None)

    finally:
        if isinstance(runner, ProcessRunner):
            runner.close()

def _prediction(result: Any) -> dict[str, Any]:
    if isinstance(result, Classification):
        return {"top": [[label, round(p, 4)] for label, p in result.top]}
    return {"classes": {k: round(v, 4) for k, v in list(result.shares.items())[:5]}}


def _hud_line(stats: Stats) -> str:
    stages = " · ".join(stage_words(stats.now_ms(), "—"))
    fps = stats.fps()
    rate = "     —" if fps is None else f"{fps:6.1f}"
    return f"demo: {rate} FPS · ms {stages} · frames {stats.inferred}"


def _open_display(cv2, spec: str, frames: FrameSource, host: str, port: int,
                  token: str | None, title: str, stats: Stats):
    from .displays import FileDisplay, NoDisplay, WebDisplay, WindowDisplay

    if spec == "none":
        return NoDisplay()
    if spec == "window":
        return WindowDisplay(cv2)
    if spec == "web":
        return WebDisplay(cv2, host, port, token, title, stats.snapshot)
    if spec.startswith("file:") and len(spec) > 5:
        return FileDisplay(cv2, Path(spec[5:]), getattr(frames, "fps", None) or 15.0)
    raise EdgepipeError(f"unknown display '{spec}': use window, web, file:OUT.mp4 or none")


def summary_dict(summary: DemoSummary) -> dict[str, Any]:
    return asdict(summary)
