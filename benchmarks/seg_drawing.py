"""Segmentation decode + drawing against inference, side by side on one machine, in one run.

    python benchmarks/seg_drawing.py [--size 256] [--runs 100]

LR-ASPP-Small (random init: the mask's content does not change the cost) converted at
``--size`` to LiteRT fp32 and int8 (cached in benchmarks/.cache). For each: inference alone
(the runner on a preprocessed 640x480 frame), the demo's decode (argmax over 21 class maps,
shares) and drawing (mask blended over the crop of the 640x480 frame, outline, legend), and,
as a reference, the decode and drawing edgepipe had before (numpy argmax over the class axis,
colours at mask size, blending through a boolean index). Goal: decode + drawing cost less
than inference. Prints the CPU first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from edgepipe.apps.draw import PALETTE, draw_segmentation
from edgepipe.converters.convert import ConvertRequest, convert
from edgepipe.decode import OutputDecoder
from edgepipe.device.identity import machine_line
from edgepipe.device.runtimes import open_runner
from edgepipe.manifest import load_manifest
from edgepipe.preprocess import crop_box, preprocess

CACHE = Path(__file__).parent / ".cache"


def timed(fn, runs: int) -> float:
    """Median ms of ``runs`` calls after 5 warm-up calls."""
    for _ in range(5):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def before_decode(y: np.ndarray) -> np.ndarray:
    """The decode edgepipe had before: numpy argmax over the outer (class) axis."""
    return y[0].argmax(axis=0).astype(np.int32)


def before_draw(img: np.ndarray, classes: np.ndarray, pre, alpha: float = 0.5) -> None:
    """The blending edgepipe had before: colours at mask size, resized, boolean index."""
    h, w = img.shape[:2]
    left, top, right, bottom = (int(round(v)) for v in crop_box(w, h, pre))
    colours = PALETTE[classes % len(PALETTE)][..., ::-1]
    mask = cv2.resize(colours, (right - left, bottom - top), interpolation=cv2.INTER_NEAREST)
    fg = cv2.resize((classes > 0).astype(np.uint8), (right - left, bottom - top),
                    interpolation=cv2.INTER_NEAREST).astype(bool)
    region = img[top:bottom, left:right]
    blended = cv2.addWeighted(region, 1 - alpha, mask, alpha, 0)
    region[fg] = blended[fg]


def measure(path: Path, frame: np.ndarray, runs: int) -> dict[str, float]:
    """Median ms of inference, and of the demo's postprocess stage now and before: decode,
    the frame to BGR, the mask and legend, the HUD (what runs between inference and display)."""
    from edgepipe.apps.draw import draw_hud

    manifest = load_manifest(path)
    runner = open_runner(path)
    outputs = runner.run(preprocess(frame, manifest.preprocessing))
    decoder = OutputDecoder(manifest)
    stages = {"capture": 0.8, "preprocess": 2.0, "inference": 4.5, "postprocess": 1.0}

    def now() -> None:
        result = decoder(outputs)
        canvas = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        draw_segmentation(cv2, canvas, result, manifest.preprocessing)
        draw_hud(cv2, canvas, 100.0, stages, "litert")

    def before() -> None:
        classes = before_decode(outputs[0])
        canvas = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        before_draw(canvas, classes, manifest.preprocessing)
        draw_hud(cv2, canvas, 100.0, stages, "litert")

    result = decoder(outputs)
    canvas = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    return {"inference": timed(runner.invoke, runs),
            "decode": timed(lambda: decoder(outputs), runs),
            "draw": timed(lambda: draw_segmentation(cv2, canvas, result,
                                                    manifest.preprocessing), runs),
            "postprocess": timed(now, runs), "before": timed(before, runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    print(machine_line())
    cv2.setNumThreads(1)  # as the demo's drawing thread: one core
    out = CACHE / f"lraspp_small_{args.size}"
    if not (out / "report.json").is_file():
        convert(ConvertRequest(model="lraspp_mobilenet_v3_small", out=out, formats=["tflite"],
                               int8=True, size=args.size))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.media import photo

    frame = photo("astronaut")  # 640x480 RGB
    print(f"\nLR-ASPP-Small {args.size}x{args.size} on a 640x480 frame, 1 thread, median of "
          f"{args.runs} runs (ms). postprocess = decode + frame to BGR + mask + legend + HUD\n")
    print("| artifact | inference | decode | mask drawing | postprocess | / inference "
          "| before: postprocess | / inference |")
    print("|---|---|---|---|---|---|---|---|")
    for precision in ("fp32", "int8"):
        m = measure(out / f"lraspp_mobilenet_v3_small_{precision}.tflite", frame, args.runs)
        inf = m["inference"]
        print(f"| LiteRT {precision} | {inf:.2f} | {m['decode']:.2f} | {m['draw']:.2f} | "
              f"{m['postprocess']:.2f} | {m['postprocess'] / inf:.2f} | {m['before']:.2f} | "
              f"{m['before'] / inf:.2f} |")


if __name__ == "__main__":
    main()
