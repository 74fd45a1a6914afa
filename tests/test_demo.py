"""The live demo on real media: videos and folders made from real photos, the real runtimes,
real files written, the web display opened in headless Chromium."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgepipe.apps.demo import run_demo
from edgepipe.errors import EdgepipeError
from edgepipe.manifest import file_sha256
from edgepipe.preprocess import crop_box
from edgepipe.ui import inference_rss_text

from .conftest import artifact, run_cli, wide_input_program
from .media import make_video, photo

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> tuple[Path, list[str]]:
    path = tmp_path_factory.mktemp("media") / "photos.mp4"
    return path, make_video(path)


def read_frames(path: Path) -> list[np.ndarray]:
    capture, frames = cv2.VideoCapture(str(path)), []
    while (got := capture.read())[0]:
        frames.append(got[1])
    capture.release()
    return frames


def log_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_real_mobilenet_v2_names_the_cat_in_the_annotated_video(real_v2, video, tmp_path):
    out, proc = real_v2
    assert proc.returncode == 0, proc.stderr
    source, names = video
    annotated, log, summary = tmp_path / "annotated.mp4", tmp_path / "log.jsonl", \
        tmp_path / "summary.json"
    done = run_cli("demo", str(out / "mobilenet_v2_fp32.tflite"), "--source", str(source),
                   "--display", f"file:{annotated}", "--log", str(log), "--summary", str(summary))
    assert done.returncode == 0, done.stderr
    assert "demo summary" in done.stdout and "FPS" in done.stdout
    predictions = log_lines(log)
    by_photo: dict[str, list[str]] = {}
    for p in predictions:
        by_photo.setdefault(names[p["frame"] - 1], []).append(p["top"][0][0])
    assert by_photo["chelsea"] and set(by_photo["chelsea"]) == {"Egyptian cat"}
    assert set(by_photo["coffee"]) == {"espresso"}
    frames = read_frames(annotated)
    stats = json.loads(summary.read_text())
    assert len(frames) == stats["shown"] == len(predictions) and stats["captured"] == 30
    assert frames[0].shape == (480, 640, 3)
    # the HUD and the labels are drawn: dark text boxes top-left and bottom-left
    first_source = cv2.cvtColor(photo(names[predictions[0]["frame"] - 1]), cv2.COLOR_RGB2BGR)
    assert np.abs(frames[0][5:45, 5:200].astype(int) - first_source[5:45, 5:200]).mean() > 30
    assert frames[0][440:470, 5:200].mean() < first_source[440:470, 5:200].mean()
    assert not list(tmp_path.glob(".annotated.partial-*"))  # renamed into place


def test_segmentation_blends_the_mask_and_draws_a_legend(small_segmentation, tmp_path):
    """LR-ASPP (random init: the mask means nothing, the drawing is what is tested)."""
    out, _ = small_segmentation
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chelsea", "astronaut"):
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(photo(name), cv2.COLOR_RGB2BGR))
    annotated, log = tmp_path / "seg.avi", tmp_path / "seg.jsonl"
    summary = run_demo(str(out / "lraspp_mobilenet_v3_small_fp32.tflite"), str(folder),
                       f"file:{annotated}", log=log)
    assert summary.captured == 2 and summary.runtime == "litert"
    for line in log_lines(log):
        shares = line["classes"]
        assert 0.5 < sum(shares.values()) <= 1.0001  # the five largest of 21 VOC classes
        assert all(label in ("background", "aeroplane", "bicycle", "bird", "boat", "bottle",
                             "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
                             "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
                             "train", "tvmonitor") for label in shares)
    frames = read_frames(annotated)
    assert len(frames) == summary.shown >= 1
    # the crop the model saw is outlined; outside it the frame is untouched but for text
    left, top, right, bottom = (round(v) for v in crop_box(640, 480, _seg_pre(out)))
    assert abs((right - left) - 480) <= 1 and (top, bottom) == (0, 480)  # the centre square
    assert frames[0][:, left - 1].mean() != frames[0][:, left - 30].mean()


def _seg_pre(out: Path):
    from edgepipe.manifest import load_manifest

    return load_manifest(out / "lraspp_mobilenet_v3_small_fp32.tflite").preprocessing


class StandInPicamera2:
    """A stand-in for picamera2.Picamera2: there is no camera here. It behaves as the real
    one does for the demo: configure with RGB888, start, capture_array (BGR in memory), stop."""

    instances: list = []

    def __init__(self) -> None:
        self.config, self.started, self.closed = None, False, False
        self.frame = cv2.cvtColor(photo("chelsea"), cv2.COLOR_RGB2BGR)  # what RGB888 gives
        StandInPicamera2.instances.append(self)

    def create_preview_configuration(self, main: dict) -> dict:
        return {"main": main}

    def configure(self, config: dict) -> None:
        self.config = config

    def start(self) -> None:
        self.started = True

    def capture_array(self) -> np.ndarray:
        assert self.started
        return self.frame.copy()

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.closed = True


def test_picamera2_source_with_a_stand_in_camera(small_conversion, tmp_path, monkeypatch):
    out, report = small_conversion
    tflite = str(out / artifact(report, "tflite", "fp32")["file"])
    monkeypatch.setitem(sys.modules, "picamera2",
                        types.SimpleNamespace(Picamera2=StandInPicamera2))
    camera_log = tmp_path / "camera.jsonl"
    summary = run_demo(tflite, "picamera2", "none", max_frames=5, log=camera_log)
    camera = StandInPicamera2.instances[-1]
    assert camera.config["main"]["format"] == "RGB888" and camera.closed
    assert summary.source == "picamera2" and summary.captured == 5 and summary.inferred >= 1
    # the same photo from a folder (RGB from disk) gives the same answer: colours not swapped
    folder = tmp_path / "still"
    folder.mkdir()
    cv2.imwrite(str(folder / "chelsea.png"), camera.frame)
    folder_log = tmp_path / "folder.jsonl"
    run_demo(tflite, str(folder), "none", log=folder_log)
    assert log_lines(camera_log)[0]["top"] == log_lines(folder_log)[0]["top"]


def test_a_hand_written_manifest_drives_a_foreign_mask_model(tmp_path, video):
    """A .tflite converted outside edgepipe (litert-torch directly) with a manifest written by
    hand: NCHW input in [0, 1], a one-channel probability mask of the bright pixels."""
    import litert_torch
    import torch

    class Bright(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(40 * (x.mean(dim=1, keepdim=True) - 0.6))

    model = tmp_path / "bright.tflite"
    litert_torch.convert(Bright().eval(), (torch.zeros(1, 3, 64, 64),)).export(str(model))
    manifest = {
        "format": "tflite", "precision": "fp32", "file": model.name,
        "file_sha256": file_sha256(model), "model": "bright-pixels", "task": "segmentation",
        "inputs": [{"name": "x", "shape": [1, 3, 64, 64], "dtype": "float32", "layout": "NCHW"}],
        "outputs": [{"name": "mask", "shape": [1, 1, 64, 64], "dtype": "float32",
                     "layout": "NCHW"}],
        # range [0, 1]: mean 0, std 1
        "preprocessing": {"size": [64, 64], "resize": 64, "mean": [0, 0, 0], "std": [1, 1, 1]},
        "output_kind": "mask", "labels": ["dark", "bright"],
    }
    (tmp_path / "bright.tflite.json").write_text(json.dumps(manifest))
    log = tmp_path / "bright.jsonl"
    source, names = video
    summary = run_demo(str(model), str(source), "file:" + str(tmp_path / "bright.mp4"), log=log)
    assert summary.inferred >= 3
    from edgepipe.manifest import Preprocessing
    from edgepipe.preprocess import preprocess

    pre = Preprocessing(size=(64, 64), resize=64, mean=(0, 0, 0), std=(1, 1, 1))
    for line in log_lines(log):
        x = preprocess(photo(names[line["frame"] - 1]), pre)
        expected = float((x.mean(axis=1) > 0.6).mean())
        assert line["classes"].get("bright", 0.0) == pytest.approx(expected, abs=0.03)


def test_bad_sources_and_displays_say_what_to_do(small_conversion, video, tmp_path):
    out, report = small_conversion
    tflite = str(out / artifact(report, "tflite", "int8")["file"])
    for source, message in (("nowhere.mp4", "no source 'nowhere.mp4'. Sources: `picamera2`"),
                            ("7", "cannot open camera 7: no such camera"),
                            ("picamera2", "picamera2 is not installed")):
        done = run_cli("demo", tflite, "--source", source, "--display", "none")
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    for display, message in (("bogus", "unknown display 'bogus'"),
                             ("window", "no window here"),
                             (f"file:{tmp_path / 'x.gif'}", "as .mp4 or .avi")):
        done = run_cli("demo", tflite, "--source", str(video[0]), "--display", display)
        assert done.returncode == 2 and message in done.stderr, done.stderr
    done = run_cli("demo", tflite, "--source", str(empty))
    assert done.returncode == 2 and "no images in" in done.stderr
    with pytest.raises(EdgepipeError, match="not an artifact"):
        run_demo(str(tmp_path / "missing.tflite"), str(empty), "none")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_web_display_shows_a_live_image_in_headless_chromium(small_conversion, video,
                                                             tmp_path):
    out, report = small_conversion
    source, _ = video
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgepipe.cli", "demo", str(out), "--source", str(source),
         "--loop", "--realtime", "--display", "web", "--port", "0", "--token", "s3cret",
         "--duration", "120"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        # started as a shell starts a background job, with SIGINT ignored (pytest-xdist's
        # workers pass it on so too): Ctrl-C must still stop it, not --duration
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        line = ""
        while "showing on web" not in line:
            line = proc.stdout.readline()
            assert line, "the demo exited before serving"
        url = line.split("showing on web ")[1].split(";")[0]
        base = url.split("?")[0]
        import urllib.error
        import urllib.request

        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(base + "snapshot.jpg")
        time.sleep(1.5)
        jpeg = urllib.request.urlopen(base + "snapshot.jpg?token=s3cret").read()
        assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (480, 640, 3)
        shot = tmp_path / "page.png"
        subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / 'chromium'}",
             "--window-size=800,700", "--timeout=4000", f"--screenshot={shot}", url],
            capture_output=True, timeout=120, check=True)
        page = cv2.imread(str(shot))
        # the page is dark (#111); the live frame is a photo: bright, varied pixels where the
        # <img> is, and the stats line under it has been filled in by /stats.json
        picture = page[80:500, 20:650].astype(float)
        assert picture.mean() > 60 and picture.std() > 30
        assert page[600:700].mean() < 40
        proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop with a summary
        sent = time.monotonic()
        # generous: stopping joins the capture and inference threads (5 s each) and the
        # ExecuTorch child (10 s); late in a long CI session that took over 30 s
        stdout, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "demo summary" in stdout
        assert time.monotonic() - sent < 60  # stopped by the signal, not by --duration 120
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_executorch_runs_in_a_process_of_its_own_with_the_same_answers(small_conversion,
                                                                       tmp_path):
    """ExecuTorch's bindings hold the GIL while computing: the demo runs it in a child
    process by default. Same frames, same predictions as in-process; the child is gone after."""
    import multiprocessing

    out, report = small_conversion
    pte = str(out / artifact(report, "executorch", "int8")["file"])
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chelsea", "coffee", "astronaut"):
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(photo(name), cv2.COLOR_RGB2BGR))
    logs, summaries = {}, {}
    for mode in ("auto", "off"):
        logs[mode] = tmp_path / f"{mode}.jsonl"
        summary = run_demo(pte, str(folder), "none", log=logs[mode], inference_process=mode)
        assert summary.runtime == "executorch" and summary.captured == 3
        summaries[mode] = summary
    # the runtime and libtorch live in the child: its memory is reported beside the demo's
    # own (it was left out, ~0.5 GB on a newcomer's run), and in-process there is none
    child = summaries["auto"].inference_rss_mb
    assert child is not None and child > 100, child
    assert summaries["off"].inference_rss_mb is None
    assert f"+ {child:.0f} MB in the inference process" in inference_rss_text(summaries["auto"])
    assert inference_rss_text(summaries["off"]) == ""
    by_frame = [{p["frame"]: p["top"] for p in log_lines(logs[m])} for m in ("auto", "off")]
    shared = set(by_frame[0]) & set(by_frame[1])
    assert shared and all(by_frame[0][f] == by_frame[1][f] for f in shared)
    assert not [p for p in multiprocessing.active_children() if p.name == "edgepipe-inference"]


def _thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU time (user + system, seconds) of each of ``pid``'s threads, from /proc."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    times = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        times[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return times


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_the_inference_process_has_no_thread_working_beside_a_one_thread_runner(
        tmp_path, monkeypatch):
    """The demo's inference process opens ExecuTorch's bindings, which load libtorch: a large
    input laid out channels-last on libtorch's OpenMP workers left them spinning beside a
    "1 thread" runner (as in the agent's workers). Started from an environment that asks for
    two OpenMP threads, the child's other threads use (nearly) no CPU while it runs."""
    from edgepipe.apps.inference_process import ProcessRunner

    pte = wide_input_program(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    shape = (1, 16, 112, 112)
    runner = ProcessRunner(pte, 1, shape)
    try:
        pid = runner._proc.pid
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        for _ in range(5):
            runner.run(x)
        before, start = _thread_cpu_s(pid), time.perf_counter()
        while time.perf_counter() - start < 0.5:  # 50 clock ticks: one stray tick is 2 %
            runner.run(x)
        wall = time.perf_counter() - start
        after = _thread_cpu_s(pid)
        main = after[pid] - before.get(pid, 0.0)
        others = sum(t - before.get(tid, 0.0) for tid, t in after.items() if tid != pid)
        assert main > 0.2 * wall, (main, wall)  # the runs happened on the main thread
        assert others < 0.05 * wall, f"other threads used {others / wall:.2f} of a core"
    finally:
        runner.close()


def test_frames_in_flight_at_a_stop_are_not_counted_as_dropped(small_conversion, video):
    """A looped file stopped by --duration: the frames still between stages were counted as
    "dropped" beside "every frame: the stages wait for each other" (a newcomer's run). Dropped
    is what the newest-frame policy replaced; the rest is said to be in flight."""
    from edgepipe.apps.demo import Latest

    slot, stop = Latest(drop=True), threading.Event()
    slot.put("a")
    slot.put("b")  # "a" was never taken: dropped by the policy
    assert slot.take(0, stop) == (2, "b") and slot.replaced == 1
    slot.put("c")  # "b" was taken: nothing dropped
    assert slot.replaced == 1
    waits = Latest(drop=False)
    waits.put("a")
    stop.set()
    waits.put("b", stop)  # the stop came before "a" was taken: in flight, not dropped
    assert waits.replaced == 0

    out, report = small_conversion
    tflite = str(out / artifact(report, "tflite", "fp32")["file"])
    summary = run_demo(tflite, str(video[0]), "none", loop=True, duration=1.0, log_every=0)
    assert summary.frames.startswith("every frame") and summary.captured > summary.shown > 0
    assert set(summary.dropped.values()) == {0}
    assert summary.in_flight == summary.captured - summary.shown


def test_the_hud_has_no_rate_for_one_frame_and_wraps_on_a_narrow_frame():
    from edgepipe.apps.demo import STAGES, Stats
    from edgepipe.apps.draw import FONT_SCALE, draw_hud, hud_lines

    stats = Stats()
    stats.done_times.append(1.0)
    assert stats.fps() is None  # one frame has no rate (the HUD said 0.0 FPS)
    stats.done_times.append(1.05)
    assert stats.fps() == pytest.approx(20.0)
    stages = {s: 12.345 for s in STAGES}

    def width(text: str) -> int:
        return cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, FONT_SCALE, 1)[0][0]

    wide = hud_lines(cv2, 1280, 20.0, stages, "executorch")
    assert wide == [" 20.0 FPS  executorch", "ms: " + "  ".join(f"{s} 12.3" for s in STAGES)]
    narrow = hud_lines(cv2, 300, None, stages, "executorch")
    assert narrow[0] == "-- FPS  executorch"
    assert len(narrow) > 2 and all(width(line) <= 300 - 16 for line in narrow)
    assert " ".join(narrow[1:]).split() == wide[1].split()  # every stage, in order
    # drawn: the boxes stay inside the frame (the last line was cut at the right edge)
    img = np.full((300, 300, 3), 128, np.uint8)
    draw_hud(cv2, img, None, stages, "executorch")
    assert (img[:22 * len(narrow), -4:] == 128).all()
    # 160 px: the rate and the runtime part too (the first line was cut: "executorc")
    tiny = hud_lines(cv2, 160, 360.9, stages, "executorch")
    assert tiny[:2] == ["360.9 FPS", "executorch"] and all(width(t) <= 144 for t in tiny)
    # a stage not timed yet says so (the first frame's HUD is drawn before its postprocess
    # is timed: it said "postprocess 0.0" beside a summary of 12.6 ms)
    assert stats.now_ms()["postprocess"] is None
    first = hud_lines(cv2, 1280, None, {**stages, "postprocess": None}, "litert")
    assert first[1].endswith("postprocess --")
