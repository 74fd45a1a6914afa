"""Single-image latency of MobileNetV3-Small/-Large on this machine, every runtime side by side.

    python benchmarks/runtimes.py [--runs 200] [--threads 1 2] [--models small large]

Converts with edgepipe's own converters (cached in benchmarks/.cache), then times, in one
process and one run: torch eager, ExecuTorch XNNPACK fp32/fp16/int8, LiteRT fp32/fp16/int8,
and the peers users pick instead, at every precision they run here: ONNX Runtime fp32, fp16
(onnxruntime.transformers.float16, float32 inputs and outputs) and int8 (static QDQ,
per-channel weights, the same calibration photos as edgepipe's int8), OpenVINO fp32, bf16,
f16 and int8 (the same ONNX files; OpenVINO runs a QDQ graph in int8; each float precision
pinned with INFERENCE_PRECISION_HINT and read back: a hint the CPU cannot take is skipped
with what OpenVINO ran instead), NCNN fp32 (exported by ``pnnx`` from the same module) and
MNN fp32 (``mnnconvert`` from the same ONNX file; int8 through ``mnnquant`` on the same
calibration photos where it works). Each peer is optional: where it is not installed or does
not convert, it is skipped and the reason printed. Prints medians and each entry's ratio to
the fastest entry of its model and thread count, and whether each graph is whole (XNNPACK
partitions); then, per precision, edgepipe's best artifact against the fastest peer, and
the artifact ``edgepipe run`` would recommend (edgepipe.pipeline.recommend, on parity alone:
random-init models have no accuracy figure) against the fastest entry of the table (the
issue's goals: within 1.1× each). fp16 entries say whether this CPU computes fp16 natively.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from edgepipe.converters.convert import ConvertRequest, convert
from edgepipe.device.bench import LatencyStats, measure_latency
from edgepipe.device.identity import fp16_support, local_identity, machine_line
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


class OpenVino:
    runtime = "openvino"

    def __init__(self, path: Path, threads: int, precision_hint: str | None = "f32") -> None:
        """``precision_hint`` None: OpenVINO's default, which on a CPU with bf16 (AVX512-BF16,
        AMX) runs an fp32 model in bf16; ``precision`` says what it chose."""
        import openvino as ov

        config: dict = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                        "PERFORMANCE_HINT": "LATENCY"}
        if precision_hint:
            config["INFERENCE_PRECISION_HINT"] = precision_hint
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        chosen = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.precision = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}.get(
            chosen.split("'")[1] if "'" in chosen else chosen, chosen)
        self.request = self.compiled.create_infer_request()
        self.x: np.ndarray | None = None

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        self.x = x
        self.request.infer({0: x})
        return [self.request.get_output_tensor(0).data.copy()]

    def invoke(self) -> None:
        self.request.infer({0: self.x})


class Ncnn:
    runtime = "ncnn"

    def __init__(self, param: Path, weights: Path, threads: int) -> None:
        import ncnn

        self.net = ncnn.Net()
        self.net.opt.num_threads = threads
        self.net.opt.use_vulkan_compute = False
        if self.net.load_param(str(param)) or self.net.load_model(str(weights)):
            raise RuntimeError(f"ncnn cannot load {param.name}")
        self.input, self.output = self.net.input_names()[0], self.net.output_names()[0]
        self.mat = None

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        import ncnn

        self.mat = ncnn.Mat(np.ascontiguousarray(x[0])).clone()  # ncnn takes CHW
        return [self._extract()[None]]

    def _extract(self) -> np.ndarray:
        ex = self.net.create_extractor()
        ex.input(self.input, self.mat)
        _, out = ex.extract(self.output)
        return np.array(out)

    def invoke(self) -> None:
        self._extract()


class Mnn:
    runtime = "MNN"

    def __init__(self, path: Path, threads: int) -> None:
        import MNN

        self.mnn = MNN
        self.interp = MNN.Interpreter(str(path))
        # precision "high": fp32 arithmetic (MNN's "low" may pick fp16/bf16 where the CPU has it)
        self.session = self.interp.createSession(
            {"numThread": threads, "precision": "high", "backend": "CPU"})
        self.input = self.interp.getSessionInput(self.session)
        self.tensor = None

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        self.tensor = self.mnn.Tensor(x.shape, self.mnn.Halide_Type_Float, x,
                                      self.mnn.Tensor_DimensionType_Caffe)
        self.input.copyFrom(self.tensor)
        self.interp.runSession(self.session)
        return [np.array(self.interp.getSessionOutput(self.session).getData())[None]]

    def invoke(self) -> None:
        self.interp.runSession(self.session)


def openvino_capabilities() -> list[str]:
    import openvino as ov

    return [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def ncnn_files(model: str, module: torch.nn.Module) -> tuple[Path, Path]:
    """NCNN's param/bin, exported by pnnx (TorchScript → pnnx → ncnn) from the same module."""
    import pnnx

    stem = CACHE / "ncnn" / model
    param, weights = stem.with_suffix(".ncnn.param"), stem.with_suffix(".ncnn.bin")
    if not (param.is_file() and weights.is_file()):
        stem.parent.mkdir(parents=True, exist_ok=True)
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            pnnx.export(module.eval(), str(stem.with_suffix(".pt")),
                        (torch.zeros(1, 3, 224, 224),))
    return param, weights


def mnn_files(model: str, onnx: Path, calibration: list[torch.Tensor],
              mean: tuple[float, ...], std: tuple[float, ...],
              skipped: dict[str, str]) -> tuple[Path, Path | None]:
    """MNN fp32 from the ONNX file, and int8 by ``mnnquant`` (KL activations, max-abs
    weights) calibrated on the same photos as edgepipe's int8 (None, reason in ``skipped``,
    where it fails)."""
    if shutil.which("mnnconvert") is None:
        raise RuntimeError("mnnconvert not on PATH")
    folder = CACHE / "mnn"
    folder.mkdir(parents=True, exist_ok=True)
    fp32, int8 = folder / f"{model}.mnn", folder / f"{model}_int8.mnn"
    if not fp32.is_file():
        run = subprocess.run(["mnnconvert", "-f", "ONNX", "--modelFile", str(onnx),
                              "--MNNModel", str(fp32), "--bizCode", "edgepipe"],
                             capture_output=True, text=True)
        if run.returncode or not fp32.is_file():
            raise RuntimeError(f"mnnconvert failed: {run.stdout[-200:]} {run.stderr[-200:]}")
    if not int8.is_file():
        from PIL import Image

        photos = folder / "calibration"
        photos.mkdir(exist_ok=True)
        m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        for i, t in enumerate(calibration):  # back to the 224x224 pixels edgepipe fed
            img = (t.numpy()[0].transpose(1, 2, 0) * s + m) * 255
            Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8)).save(
                photos / f"{i:03d}.png")
        config = folder / "quant.json"
        config.write_text(json.dumps({
            "format": "RGB", "mean": [float(v) for v in m * 255],
            "normal": [float(v) for v in 1 / (255 * s)], "width": 224, "height": 224,
            "path": f"{photos}/", "used_image_num": len(calibration),
            "feature_quantize_method": "KL", "weight_quantize_method": "MAX_ABS"}))
        run = subprocess.run(["mnnquant", str(fp32), str(int8), str(config)],
                             capture_output=True, text=True)
        if run.returncode or not int8.is_file():
            int8.unlink(missing_ok=True)
            last = (run.stderr.strip().splitlines() or run.stdout.strip().splitlines()
                    or ["no output"])[-1]
            skipped["MNN int8"] = f"mnnquant exited {run.returncode}: {last[:200]}"
            return fp32, None
    return fp32, int8


def onnx_int8_file(model: str, onnx: Path, calibration: list[torch.Tensor]) -> Path:
    """Static QDQ int8 (uint8 activations, per-channel int8 weights: ONNX Runtime's choice
    for x86), calibrated on the photos edgepipe's own int8 converters use."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    path = CACHE / f"{model}_int8.onnx"
    if path.is_file():
        return path
    pre = CACHE / f"{model}_pre.onnx"
    quant_pre_process(str(onnx), str(pre))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            import onnxruntime as ort

            name = ort.InferenceSession(str(pre)).get_inputs()[0].name
            self.items = iter([{name: t.numpy()} for t in calibration])

        def get_next(self) -> dict | None:
            return next(self.items, None)

    tmp = path.with_suffix(".tmp.onnx")
    quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    tmp.replace(path)
    return path


def onnx_fp16_file(model: str, onnx: Path) -> Path:
    """The ONNX model in float16 (weights and activations; float32 inputs and outputs, cast
    at the edges), by onnxruntime's own converter."""
    import onnx as onnx_lib
    from onnxruntime.transformers.float16 import convert_float_to_float16

    path = CACHE / f"{model}_fp16.onnx"
    if not path.is_file():
        half = convert_float_to_float16(onnx_lib.load(str(onnx)), keep_io_types=True)
        tmp = path.with_suffix(".tmp.onnx")
        onnx_lib.save(half, str(tmp))
        tmp.replace(path)
    return path


def peers(model: str, module: torch.nn.Module, onnx: Path, calibration: list[torch.Tensor],
          mean: tuple[float, ...], std: tuple[float, ...], threads: int,
          skipped: dict[str, str]) -> list[tuple[str, str, object, dict]]:
    """The optional peers that install and convert here; the others go to ``skipped``."""
    entries: list[tuple[str, str, object, dict]] = []
    try:
        int8 = onnx_int8_file(model, onnx, calibration)
    except Exception as exc:  # a peer's own failure skips it, not the benchmark
        skipped["ONNX QDQ int8"] = f"{type(exc).__name__}: {exc}"
        int8 = None
    entries.append(("ONNX Runtime", "fp32", OnnxRuntime(onnx, threads), {}))
    try:
        entries.append(("ONNX Runtime", "fp16",
                        OnnxRuntime(onnx_fp16_file(model, onnx), threads), {}))
    except Exception as exc:
        skipped["ONNX Runtime fp16"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    if int8:
        entries.append(("ONNX Runtime", "int8", OnnxRuntime(int8, threads), {}))
    try:
        import openvino  # noqa: F401
    except ImportError:
        skipped["OpenVINO"] = "not installed (pip install openvino)"
    else:
        hints = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
        for precision, path in (("fp32", onnx), ("bf16", onnx), ("fp16", onnx),
                                ("int8", int8)):
            if path is None:
                continue
            try:  # int8: the layers OpenVINO keeps float in f32, as before
                runner = OpenVino(path, threads, precision_hint=hints.get(precision, "f32"))
            except Exception as exc:
                skipped[f"OpenVINO {precision}"] = f"{type(exc).__name__}: {exc}"
                continue
            if precision in hints and runner.precision != precision:
                # OpenVINO runs what the CPU has: a hint it cannot follow is not that precision
                skipped[f"OpenVINO {precision}"] = (
                    f"hint {hints[precision]} ran as {runner.precision} on this CPU (CPU "
                    f"capabilities: {', '.join(openvino_capabilities())})")
                continue
            entries.append(("OpenVINO", precision, runner, {}))
        try:
            default = OpenVino(onnx, threads, precision_hint=None)
            skipped.setdefault("OpenVINO (default hint)", f"runs {default.precision} here: "
                               f"the OpenVINO {default.precision} entry")
        except Exception as exc:
            skipped["OpenVINO (default hint)"] = f"{type(exc).__name__}: {exc}"
    try:
        entries.append(("NCNN", "fp32", Ncnn(*ncnn_files(model, module), threads), {}))
    except ImportError:
        skipped["NCNN"] = "not installed (pip install ncnn pnnx)"
    except Exception as exc:
        skipped["NCNN"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    skipped.setdefault("NCNN int8", "ncnn's int8 needs its C++ tools ncnn2table and ncnn2int8, "
                                    "which neither the ncnn nor the pnnx wheel ships")
    try:
        fp32, int8_mnn = mnn_files(model, onnx, calibration, mean, std, skipped)
        entries.append(("MNN", "fp32", Mnn(fp32, threads), {}))
        if int8_mnn:
            entries.append(("MNN", "int8", Mnn(int8_mnn, threads), {}))
    except ImportError:
        skipped["MNN"] = "not installed (pip install MNN)"
    except Exception as exc:
        skipped["MNN"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return entries


def converters_digest() -> str:
    """What edgepipe's converters are now: a cache made by other converters is not reused."""
    import edgepipe.converters as package

    h = hashlib.sha256()
    for f in sorted(Path(package.__file__).parent.glob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def converted(model: str) -> tuple[Path, dict]:
    out = CACHE / model
    stamp = CACHE / f"{model}.converters.sha"
    if not (out / "report.json").is_file() or not stamp.is_file() \
            or stamp.read_text() != converters_digest():
        print(f"converting {model} (cached in {out}) ...", file=sys.stderr)
        convert(ConvertRequest(model=model, out=out, formats=["executorch", "tflite"],
                               int8=True, fp16=True))
        stamp.write_text(converters_digest())
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
    skipped: dict[str, str] = {}
    reports: dict[str, dict] = {}
    fp16 = fp16_support(local_identity())
    for short in args.models:
        model = f"mobilenet_v3_{short}"
        out, report = converted(model)
        reports[model] = report
        src = load_source_model(model, bn_images=builtin_calibration_images(16))
        onnx = onnx_file(model, src.module)
        calibration = src.batches(builtin_calibration_images(32))  # as convert
        for threads in args.threads:
            entries: list[tuple[str, str, object, dict]] = [
                ("torch eager", "fp32", TorchEager(src.module, threads), {})]
            for a in report["artifacts"]:
                name = {"executorch": "ExecuTorch XNNPACK", "tflite": "LiteRT"}[a["format"]]
                entries.append((name, a["precision"], open_runner(out / a["file"], threads),
                                {**a["graph"], "artifact": a}))
            entries += peers(model, src.module, onnx, calibration, src.preprocessing.mean,
                             src.preprocessing.std, threads, skipped)
            for name, precision, runner, graph in entries:
                stats: LatencyStats = measure_latency(runner, x, args.warmup, args.runs)
                a = graph.get("artifact")
                rows.append({"model": model, "threads": threads, "runtime": name,
                             "precision": precision, "median_ms": stats.median_ms,
                             "p90_ms": stats.p90_ms, "p99_ms": stats.p99_ms,
                             "partitions": graph.get("delegate_partitions"),
                             "latency": stats.to_dict(),
                             "edgepipe": a["file"] if a else None,
                             "format": a["format"] if a else None})
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
        flag = " (not native here)" if r["precision"] == "fp16" and not fp16["native"] else ""
        print(f"| {r['model'].removeprefix('mobilenet_v3_')} | {r['threads']} | {r['runtime']} "
              f"| {r['precision']}{flag} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
              f"{r['p99_ms']:.2f} | {r['ratio_to_fastest']:.2f} | {parts} |")
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    print(f"\nfp16 on this CPU: {fp16['words']}")
    goals = summarize(rows, reports, fp16)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "skipped": skipped, "goals": goals,
                                         "machine": machine_line()}, indent=2))


GOAL_RATIO = 1.1  # the goals: within 1.1× of the fastest peer / the fastest entry


def summarize(rows: list[dict], reports: dict[str, dict], fp16: dict) -> list[dict]:
    """Per model and thread count: at each precision, edgepipe's best artifact against the
    fastest peer (torch eager is the source, not a peer), and the artifact `edgepipe run`
    would recommend (on parity alone) against the fastest entry of the table."""
    from edgepipe.pipeline.recommend import recommend_device

    goals = []
    print("\n| model | threads | precision | edgepipe best | peer best | ratio | ≤ 1.1× |")
    print("|---|---|---|---|---|---|---|")
    for key in dict.fromkeys((r["model"], r["threads"]) for r in rows):
        group = [r for r in rows if (r["model"], r["threads"]) == key]
        for precision in dict.fromkeys(r["precision"] for r in group):
            ours = [r for r in group if r["precision"] == precision and r["edgepipe"]]
            theirs = [r for r in group if r["precision"] == precision and not r["edgepipe"]
                      and r["runtime"] != "torch eager"]
            if theirs and not ours:
                print(f"| {key[0].removeprefix('mobilenet_v3_')} | {key[1]} | {precision} | "
                      f"— (edgepipe makes no {precision} artifact) | "
                      f"{min(theirs, key=lambda r: r['median_ms'])['runtime']} | — | — |")
            if not ours or not theirs:
                continue
            best = min(ours, key=lambda r: r["median_ms"])
            peer = min(theirs, key=lambda r: r["median_ms"])
            ratio = best["median_ms"] / peer["median_ms"]
            goals.append({"model": key[0], "threads": key[1], "precision": precision,
                          "edgepipe": best["runtime"], "peer": peer["runtime"],
                          "ratio": ratio, "met": ratio <= GOAL_RATIO})
            print(f"| {key[0].removeprefix('mobilenet_v3_')} | {key[1]} | {precision} | "
                  f"{best['runtime']} {best['median_ms']:.2f} | {peer['runtime']} "
                  f"{peer['median_ms']:.2f} | {ratio:.2f} | "
                  f"{'yes' if ratio <= GOAL_RATIO else 'no'} |")
        entry = {"name": f"{key[0]} ×{key[1]}", "results": [
            {"artifact": r["edgepipe"], "format": r["format"], "precision": r["precision"],
             "runtime": r["runtime"], "threads": r["threads"], "latency": r["latency"],
             "fp16": fp16 if r["precision"] == "fp16" else None}
            for r in group if r["edgepipe"]]}
        rec = recommend_device(entry, reports[key[0]], None)
        fastest = min(group, key=lambda r: r["median_ms"])
        pick = rec["pick"]
        ratio = pick["median_ms"] / fastest["median_ms"] if pick else None
        goals.append({"model": key[0], "threads": key[1], "recommendation": rec["line"],
                      "fastest": f"{fastest['runtime']} {fastest['precision']}",
                      "ratio": ratio, "met": ratio is not None and ratio <= GOAL_RATIO})
        print(f"\nrecommended {rec['line']}")
        if pick:
            print(f"  ×{ratio:.2f} the fastest entry ({fastest['runtime']} "
                  f"{fastest['precision']}, {fastest['median_ms']:.2f} ms): "
                  f"{'within' if ratio <= GOAL_RATIO else 'NOT within'} 1.1×")
        for other in rec["others"]:
            print(f"  {other['artifact']}: {other['why']}")
    return goals


if __name__ == "__main__":
    main()
