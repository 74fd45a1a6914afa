"""Commands that run the whole pipeline or the live demo: ``run``, ``demo``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import EdgepipeError


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the whole job: convert, deploy, profile on every device, "
                                   "HTML report",
                       description="Convert a model, deploy it to every configured device, "
                                   "profile it there and write OUT/report.html. With no config "
                                   "and no device: MobileNetV3-Small on an agent started on "
                                   "this machine.")
    p.add_argument("config", nargs="?", type=Path, help="a TOML config (see docs/run.toml)")
    p.add_argument("-o", "--out", type=Path, default=Path("out/run"),
                   help="output folder (default out/run)")
    p.set_defaults(func=_run_pipeline)


def _run_pipeline(args: argparse.Namespace) -> int:
    from ..pipeline.config import load_config
    from ..pipeline.run import run_pipeline
    from ..ui import ProgressBar, console, print_run_summary

    run = run_pipeline(load_config(args.config), args.out, ProgressBar)
    print_run_summary(run)
    for entry in run["devices"]:
        for note in entry.get("notes") or []:
            console.print(f"[yellow]{entry['name']}:[/] {note}")
    stored = run.get("stored") or {}
    if stored.get("result_ids"):
        console.print(f"stored {len(stored['result_ids'])} results as run {stored['run_id']} "
                      f"in {stored['database']} (`edgepipe history`, `edgepipe diff`)")
    console.print(f"wrote {args.out / 'report.html'} (and run.json, artifacts/)")
    return 0 if all(not d["errors"] for d in run["devices"]) else 1


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a converted model on a camera, video or images, with "
                                    "FPS and per-stage timing on screen",
                       description="Live classification or segmentation. The artifact's "
                                   "manifest chooses the runtime, the preprocessing and how "
                                   "outputs are read.")
    p.add_argument("target", help="a .tflite/.pte with its manifest, a convert output folder "
                                  "(picks the fastest artifact here), or with --runtime torch a "
                                  "built-in model name")
    p.add_argument("--source", required=True,
                   help="picamera2 | a camera index (0) | a video file or stream URL | an image "
                        "folder")
    p.add_argument("--display", default="window",
                   help="window | web | file:OUT.mp4 | none (default window)")
    p.add_argument("--runtime", choices=["litert", "executorch", "torch"],
                   help="torch: PyTorch eager, as a reference (default: the artifact's)")
    p.add_argument("--weights", help="with --runtime torch: the trained weights (.pth or "
                                     "`imagenet`)")
    p.add_argument("--threads", type=int, default=1, help="threads the runtime uses (default 1)")
    p.add_argument("--loop", action="store_true", help="start a file or folder again at its end")
    p.add_argument("--realtime", action="store_true",
                   help="play a video file at its frames' own times, like a camera (and drop "
                        "what a slow stage cannot take, as a camera must)")
    p.add_argument("--drop-frames", action=argparse.BooleanOptionalAction, default=None,
                   help="hand over only the newest frame between stages, dropping (and "
                        "counting) what a slow stage cannot take (default: for cameras, "
                        "streams and --realtime; a file or folder goes through whole)")
    p.add_argument("--camera-order", choices=["bgr", "rgb"],
                   help="picamera2: the byte order of its RGB888 frames in memory (default: "
                        "from the format the camera reports; RGB888 is B, G, R in libcamera)")
    p.add_argument("--camera-check", choices=["red", "blue"],
                   help="picamera2: the scene in front of the camera at start is this colour: "
                        "the first frame checks the byte order (and corrects a swapped one)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--max-frames", type=int, help="stop after this many captured frames")
    p.add_argument("--host", default="127.0.0.1",
                   help="web display: address to bind (default 127.0.0.1: it streams a camera)")
    p.add_argument("--port", type=int, default=8080, help="web display port (0: any free one)")
    p.add_argument("--token", help="web display: require ?token=TOKEN on every request")
    p.add_argument("--log", type=Path, help="write each frame's prediction as JSON lines")
    p.add_argument("--summary", type=Path, help="write the summary as JSON")
    p.add_argument("--inference-process", choices=["auto", "on", "off"], default="auto",
                   help="run inference in a process of its own (auto: for ExecuTorch, whose "
                        "Python bindings hold the GIL while computing)")
    p.set_defaults(func=_run_demo)


def _output_file(path: Path, option: str) -> None:
    """An output file the demo writes at its end: refused now (not after the run) when it is a
    folder or its folder cannot be made."""
    if path.is_dir():
        raise EdgepipeError(f"{option} {path} is a folder: give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgepipeError(f"{option} {path}: cannot make its folder ({exc.strerror})") from None


def _check_demo_args(args: argparse.Namespace) -> None:
    for option, value, low in (("--threads", args.threads, 1), ("--max-frames", args.max_frames, 1),
                               ("--port", args.port, 0)):
        if value is not None and value < low:
            raise EdgepipeError(f"{option} {value}: must be {low} or more")
    if args.duration is not None and not args.duration > 0:
        raise EdgepipeError(f"--duration {args.duration}: must be more than 0 seconds")
    for option, path in (("--log", args.log), ("--summary", args.summary)):
        if path is not None:
            _output_file(path, option)
    if args.display.startswith("file:"):
        _output_file(Path(args.display.removeprefix("file:")), "--display file:")


def _run_demo(args: argparse.Namespace) -> int:
    import json

    from ..apps.demo import run_demo, summary_dict
    from ..ui import console, print_demo_summary

    _check_demo_args(args)
    import signal

    # Ctrl-C (SIGINT) and `kill` (SIGTERM) stop the demo the same clean way, with its summary.
    # A shell starts a background job (`edgepipe demo … &`) with SIGINT ignored, and Python
    # then installs no KeyboardInterrupt handler: such a demo ran on until --duration.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)

    def ready(display: object) -> None:
        console.print(f"demo: showing on {getattr(display, 'name', args.display)}; Ctrl-C stops")

    summary = run_demo(args.target, args.source, args.display, args.runtime, args.threads,
                       args.weights, args.loop, args.realtime, args.duration, args.max_frames,
                       args.host, args.port, args.token, args.log, on_ready=ready,
                       inference_process=args.inference_process, drop_frames=args.drop_frames,
                       camera_order=args.camera_order, camera_check=args.camera_check)
    print_demo_summary(summary)
    if args.summary:
        from ..manifest import write_atomic

        write_atomic(args.summary, json.dumps(summary_dict(summary), indent=1))
    return 0

