"""Does the demo's pipelining hide capture and drawing? And does its memory stay flat?

    python benchmarks/demo_fps.py [--seconds 20] [--memory-seconds 120]

For each artifact (MobileNetV3-Small/-Large, LiteRT and ExecuTorch, from the cached conversions
of benchmarks/runtimes.py), in one run: the pure inference rate (the runner alone, on one
preprocessed frame, as many times as fits in the time), then the demo on a 640x480 video made
from real photos with ``--display none``, same artifact and threads. Prints both rates and
demo / pure (goal >= 0.90). Then one long demo run printing RSS at start, every 20 s and at
the end (goal: flat).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from runtimes import converted  # benchmarks/runtimes.py: cached conversions

from edgepipe.apps.demo import run_demo
from edgepipe.device.bench import rss_mb
from edgepipe.device.identity import machine_line
from edgepipe.device.runtimes import open_runner
from edgepipe.manifest import load_manifest
from edgepipe.preprocess import preprocess


def make_video(path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.media import make_video as write

    write(path, frames_each=30, fps=30)


def pure_rate(path: Path, frame: np.ndarray, threads: int, seconds: float) -> float:
    runner = open_runner(path, threads)
    x = preprocess(frame, load_manifest(path).preprocessing)
    for _ in range(10):
        runner.run(x)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        runner.run(x)  # what the demo's inference stage calls, (de)quantization included
        n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--memory-seconds", type=float, default=120)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["large", "small"])
    args = parser.parse_args()
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "photos.mp4"
        make_video(video)
        from tests.media import photo

        frame = photo("chelsea")
        rows = []
        for model in args.models:
            out, report = converted(f"mobilenet_v3_{model}")
            for a in report["artifacts"]:
                path = out / a["file"]
                pure = pure_rate(path, frame, args.threads, args.seconds)
                # frames handed over as from a camera (newest only), as the README's
                # figures were measured; a file otherwise goes through whole
                demo = run_demo(str(path), str(video), "none", threads=args.threads, loop=True,
                                duration=args.seconds, log_every=0, drop_frames=True)
                ratio = demo.fps / pure
                rows.append(ratio)
                stages = " ".join(f"{k} {v:.2f}" for k, v in demo.stage_ms.items())
                print(f"{model:5s} {a['format']:10s} {a['precision']}: pure {pure:7.1f}/s  "
                      f"demo {demo.fps:7.1f} FPS  ratio {ratio:.3f}  (mean ms: {stages})",
                      flush=True)
        print(f"worst demo/pure {min(rows):.3f} (goal >= 0.90)\n")
        if args.memory_seconds <= 0:
            return

        out, report = converted(f"mobilenet_v3_{args.models[0]}")
        path = out / next(a["file"] for a in report["artifacts"]
                          if a["format"] == "tflite" and a["precision"] == "int8")
        samples: list[tuple[float, float]] = []
        stop = threading.Event()

        def sample() -> None:
            start = time.perf_counter()
            while not stop.wait(20):
                samples.append((time.perf_counter() - start, rss_mb()))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        demo = run_demo(str(path), str(video), "file:" + str(Path(tmp) / "annotated.mp4"),
                        loop=True, duration=args.memory_seconds, log_every=0)
        stop.set()
        print(f"memory, {args.memory_seconds:.0f} s demo of {path.name} writing an annotated "
              f"video ({demo.inferred} frames, {demo.fps:.1f} FPS):")
        print(f"  RSS at start {demo.rss_start_mb:.1f} MB (before the model), "
              + ", ".join(f"{t:.0f} s {m:.1f} MB" for t, m in samples)
              + f", at end {demo.rss_end_mb:.1f} MB")


if __name__ == "__main__":
    main()
