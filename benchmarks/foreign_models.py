"""Models from elsewhere: torchvision's own MobileNetV3-Small and EfficientNet-B0 (``module:
factory``), int8 against fp32, with edgepipe's activation forms and without, in one run.

    python benchmarks/foreign_models.py [--runs 200] [--size 224] [--models NAME ...]

Each model is converted twice with edgepipe's converters (cached in benchmarks/.cache): as
``edgepipe convert`` does it (``nn.Hardswish``/``nn.Hardsigmoid``/``nn.SiLU`` swapped for the
forms of ``edgepipe.converters.forms``), and with the swap turned off (what edgepipe did
before). Every artifact is then timed here, 1 thread, median of ``--runs`` after 20 warm-up
runs, and its graph statistics printed: XNNPACK partitions, ops outside the delegate, float ops
left in int8. Goal: whole graphs and int8 not slower than fp32. Prints the CPU first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import edgepipe.converters.executorch as et_converter
import edgepipe.converters.tflite as tflite_converter
from edgepipe.converters.convert import ConvertRequest, convert
from edgepipe.converters.images import parity_photos
from edgepipe.device.bench import measure_latency
from edgepipe.device.identity import machine_line
from edgepipe.device.runtimes import open_runner
from edgepipe.manifest import load_manifest
from edgepipe.preprocess import preprocess

CACHE = Path(__file__).parent / ".cache"
MODELS = {"mobilenet_v3_small": "torchvision.models:mobilenet_v3_small",
          "efficientnet_b0": "torchvision.models:efficientnet_b0"}


@contextlib.contextmanager
def no_forms(*_args, **_kwargs):
    yield {}


def converted(name: str, forms: bool, size: int) -> tuple[Path, dict]:
    out = CACHE / f"foreign_{name}_{size}_{'forms' if forms else 'as_is'}"
    if not (out / "report.json").is_file():
        saved = et_converter.runtime_forms, tflite_converter.runtime_forms
        if not forms:
            et_converter.runtime_forms = tflite_converter.runtime_forms = no_forms
        try:
            convert(ConvertRequest(model=MODELS[name], out=out, formats=["executorch", "tflite"],
                                   int8=True, size=size))
        finally:
            et_converter.runtime_forms, tflite_converter.runtime_forms = saved
    return out, json.loads((out / "report.json").read_text())


def ops(counts: dict | None) -> str:
    if counts is None:
        return "—"
    return ", ".join(f"{n} {op}" for op, n in sorted(counts.items(), key=lambda kv: -kv[1])) \
        or "0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    print(machine_line())
    photo = parity_photos()["chelsea"]
    print(f"\n{args.size}x{args.size}, 1 thread, median of {args.runs} runs after 20 warm-up\n")
    print("| model | forms | runtime | precision | median ms | p10–p90 ms | int8 / fp32 "
          "| partitions | outside delegate | float ops (int8) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        for forms in (True, False):
            out, report = converted(name, forms, args.size)
            medians: dict[tuple[str, str], float] = {}
            rows = []
            for a in report["artifacts"]:
                path = out / a["file"]
                x = preprocess(photo, load_manifest(path).preprocessing)
                stats = measure_latency(open_runner(path), x, warmup=20, runs=args.runs)
                medians[(a["format"], a["precision"])] = stats.median_ms
                rows.append((a, stats))
            for a, stats in rows:
                g = a["graph"]
                ratio = (f"{stats.median_ms / medians[(a['format'], 'fp32')]:.2f}"
                         if a["precision"] == "int8" else "")
                floats = g.get("float_ops") if a["precision"] == "int8" else None
                runtime = {"executorch": "ExecuTorch", "tflite": "LiteRT"}[a["format"]]
                print(f"| {name} | {'edgepipe' if forms else 'as is'} | {runtime} | "
                      f"{a['precision']} | {stats.median_ms:.2f} | {stats.p10_ms:.2f}–"
                      f"{stats.p90_ms:.2f} | {ratio} | {g['delegate_partitions']} | "
                      f"{ops(g['ops_outside_delegate'])} | {ops(floats)} |")


if __name__ == "__main__":
    main()
