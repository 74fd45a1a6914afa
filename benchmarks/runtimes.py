"""Single-image latency of MobileNetV3-Small/-Large on this machine, every runtime side by side.

    python benchmarks/runtimes.py [--runs 200] [--threads 1 2] [--models small large]

Converts with edgepipe's own converters (cached in benchmarks/.cache), then times, in one
process and one run: torch eager, ExecuTorch XNNPACK fp32/int8, LiteRT fp32/int8, and ONNX
Runtime as an outside peer. Prints medians and each entry's ratio to the fastest entry of
its model and thread count, and whether each graph is whole (XNNPACK partitions).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from edgepipe.converters.convert import ConvertRequest, convert
from edgepipe.device.bench import LatencyStats, measure_latency
from edgepipe.device.identity import machine_line
from edgepipe.device.runtimes import open_runner

CACHE = Path(__file__).parent / ".cache"


class TorchEager:
    runtime = "torch eager"

    def __init__(self, module: torch.nn.Module, threads: int) -> None:
        torch.set_num_threads(threads)
        self.module, self.x = module.eval(), None

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        self.x = torch.from_numpy(x)
        return [self.invoke()]

    @torch.no_grad()
    def invoke(self):
        return self.module(self.x).numpy()


class OnnxRuntime:
    runtime = "onnxruntime"

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.name = self.session.get_inputs()[0].name
        self.feed: dict = {}

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        self.feed = {self.name: x}
        return self.session.run(None, self.feed)

    def invoke(self) -> None:
        self.session.run(None, self.feed)


def converted(model: str) -> tuple[Path, dict]:
    out = CACHE / model
    if not (out / "report.json").is_file():
        print(f"converting {model} (cached in {out}) ...", file=sys.stderr)
        convert(ConvertRequest(model=model, out=out, formats=["executorch", "tflite"],
                               int8=True))
    return out, json.loads((out / "report.json").read_text())


def onnx_file(model: str, module: torch.nn.Module) -> Path:
    path = CACHE / f"{model}.onnx"
    if not path.is_file():
        torch.onnx.export(module, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=True,
                          optimize=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["small", "large"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    from edgepipe.converters.images import builtin_calibration_images
    from edgepipe.converters.source import load_source_model

    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    rows = []
    for short in args.models:
        model = f"mobilenet_v3_{short}"
        out, report = converted(model)
        src = load_source_model(model, bn_images=builtin_calibration_images(16))
        onnx = onnx_file(model, src.module)
        for threads in args.threads:
            entries: list[tuple[str, str, object, dict]] = [
                ("torch eager", "fp32", TorchEager(src.module, threads), {})]
            for a in report["artifacts"]:
                name = {"executorch": "ExecuTorch XNNPACK", "tflite": "LiteRT"}[a["format"]]
                entries.append((name, a["precision"], open_runner(out / a["file"], threads),
                                a["graph"]))
            entries.append(("ONNX Runtime", "fp32", OnnxRuntime(onnx, threads), {}))
            for name, precision, runner, graph in entries:
                stats: LatencyStats = measure_latency(runner, x, args.warmup, args.runs)
                rows.append({"model": model, "threads": threads, "runtime": name,
                             "precision": precision, "median_ms": stats.median_ms,
                             "p90_ms": stats.p90_ms, "p99_ms": stats.p99_ms,
                             "partitions": graph.get("delegate_partitions")})
                time.sleep(0.2)
    for row in rows:
        fastest = min(r["median_ms"] for r in rows
                      if r["model"] == row["model"] and r["threads"] == row["threads"])
        row["ratio_to_fastest"] = row["median_ms"] / fastest
    print(f"\n{machine_line()}\ntorch {torch.__version__}, {args.runs} runs after "
          f"{args.warmup} warm-up\n")
    print("| model | threads | runtime | precision | median ms | p90 ms | p99 ms | × fastest "
          "| XNNPACK partitions |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        parts = "—" if r["partitions"] is None else str(r["partitions"])
        print(f"| {r['model'].removeprefix('mobilenet_v3_')} | {r['threads']} | {r['runtime']} "
              f"| {r['precision']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
              f"{r['p99_ms']:.2f} | {r['ratio_to_fastest']:.2f} | {parts} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
