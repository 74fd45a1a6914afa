"""One conversion run: model → artifacts + manifests + parity report, in one output folder.

The folder is built under a temporary name beside its destination and renamed at the end,
so a failed or interrupted run never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EdgepipeError
from ..manifest import (
    Manifest,
    artifact_files,
    artifact_sha256,
    save_manifest,
    umask,
    write_atomic,
)
from . import CONVERTERS
from .base import Converted, Converter
from .images import builtin_calibration_images, folder_images, parity_photos
from .parity import ParityReference, check_artifact
from .report_html import render_report
from .source import SourceModel, load_source_model


@dataclass
class ConvertRequest:
    model: str
    out: Path
    formats: list[str] = field(default_factory=lambda: ["executorch", "tflite", "coreml"])
    int8: bool = False
    fp16: bool = False  # also fp16 artifacts (ExecuTorch, LiteRT; Core ML's are fp16 always)
    weights: Path | None = None
    width_mult: float = 1.0
    size: int | str | tuple[int, int] | None = None  # 224, "96x128" (height x width)
    task: str | None = None
    output: str | None = None  # a dict key or tuple index, for models returning several
    input_range: str | None = None  # "imagenet" (default), "0,1", "-1,1", "0,255"
    calib_dir: Path | None = None
    calib_count: int = 32
    threads: int = 1
    keep_float: str | None = None  # int8: "NAME,NAME" (module names) or "auto[:TARGET]"
    sensitivity: bool = False  # int8: rank the layers by the error each adds
    bias_correction: bool = False  # int8: batch norms absorb the weights' rounding shift


@dataclass
class ArtifactResult:
    format: str
    precision: str
    file: str
    size_mb: float
    parity: dict[str, Any]
    latency: dict[str, float] | None
    graph: dict[str, Any]
    float_layers: list[str] | None = None  # int8 with --keep-float: the layers left float
    latency_cost: dict[str, Any] | None = None  # ... and what they cost, measured here


def check_formats(formats: list[str]) -> list[Converter]:
    unknown = [f for f in formats if f not in CONVERTERS]
    if unknown:
        raise EdgepipeError(f"unsupported format {', '.join(unknown)}: "
                            f"use {', '.join(CONVERTERS)} (comma-separated)")
    converters = [CONVERTERS[f] for f in formats]
    for c in converters:
        c.check_installed()
    return converters


def conversion_jobs(converters: list[Converter], int8: bool = False, fp16: bool = False
                    ) -> list[tuple[Converter, str]]:
    """(converter, precision) pairs to write: each converter's base precision (fp32; Core
    ML's fp16), and int8 and fp16 where asked for and the format has them. Raises
    :class:`EdgepipeError` when fp16 is asked for and no format gains an artifact from it."""
    wanted = {"int8": int8, "fp16": fp16}
    jobs = [(c, p) for c in converters for p in c.precisions
            if p == c.base_precision or wanted.get(p, False)]
    if fp16 and not any(p == "fp16" and p != c.base_precision for c, p in jobs):
        raise EdgepipeError(f"--fp16 adds nothing to --to {','.join(c.format for c in converters)}"
                            ": Core ML artifacts are fp16 already; fp16 is for executorch and "
                            "tflite, add them to --to or leave --fp16 out")
    return jobs


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in artifact_files(path)) / 1e6


def build_manifest(src: SourceModel, converter: Converter, c: Converted) -> Manifest:
    return Manifest(
        format=converter.format,
        precision=c.precision,
        file=c.path.name,
        file_sha256=artifact_sha256(c.path),
        model=src.name,
        task=src.task,
        inputs=c.inputs,
        outputs=c.outputs,
        preprocessing=src.preprocessing,
        output_kind="logits",
        label_set=src.info.label_set,
        labels=src.labels,
        quantization=c.quantization,
        source_weights_sha256=src.weights_sha256,
        tool_versions=converter.tool_versions(),
        extra={"graph": c.graph, "width_mult": src.width_mult, **c.companions,
               **({"output": src.output} if src.output is not None else {}),
               **({"notes": src.notes} if src.notes else {})},
    )


@contextmanager
def native_output_to(log: Path) -> Iterator[None]:
    """Send what converters print (C++ logs, progress lines, warnings) to a log file."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def check_output_folder(out: Path) -> None:
    """Refuse an ``-o`` that a finished conversion would destroy: a file, or a folder holding
    anything but an earlier conversion's report and artifacts (the folder is replaced whole)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise EdgepipeError(f"{out} is a file: give -o a folder (a new one, or one that "
                            "`edgepipe convert` wrote)")
    entries = [p.name for p in out.iterdir()]
    if not entries:
        return
    try:
        report = json.loads((out / "report.json").read_text())
        stems = [Path(a["file"]).stem for a in report["artifacts"]]
    except (OSError, ValueError, KeyError, TypeError):
        stems = None
    if stems is None:
        raise EdgepipeError(f"{out} holds files edgepipe did not write ({', '.join(entries[:3])}"
                            f"{', …' if len(entries) > 3 else ''}): the conversion replaces "
                            "the folder whole; give -o a new folder, or empty this one")
    foreign = [n for n in entries if n not in ("report.json", "report.html")
               and not any(n.startswith(stem) for stem in stems)]
    if foreign:
        raise EdgepipeError(f"{out} holds an earlier conversion and files it did not write "
                            f"({', '.join(foreign[:3])}{', …' if len(foreign) > 3 else ''}): "
                            "the conversion replaces the folder whole; move them, or give -o "
                            "a new folder")


def _replace_dir(built: Path, dest: Path) -> None:
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(old)
    built.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class Progress:
    """What a conversion reports while it works (the CLI draws it as a progress bar)."""

    def start(self, total: int) -> None: ...

    def step(self, description: str) -> None: ...


# names a factory, its module or its file often has that say nothing about the model
_GENERIC_NAMES = {"make", "build", "create", "model", "models", "get_model", "make_model",
                  "build_model", "create_model", "load", "load_model", "main", "factory",
                  "net", "network", "get", "new", "export", "module", "__init__"}


def artifact_stem(model: str) -> str:
    """What the artifacts of ``model`` are named (``<stem>_fp32.tflite``), as a person would
    name them: a built-in model or a model file (a searched network) by its own name; a
    ``module:factory`` or ``path/file.py:factory`` by the factory (``shufflenet_v2_x0_5``),
    or where the factory's name says nothing (``make``, ``build``, ``model`` …) by the file or
    module, then by the folder it is in (``litert-threads-noeffect/make.py:make`` →
    ``litert-threads-noeffect``). Letters, digits, ``-`` and ``_`` only."""
    if model.endswith(".json"):
        return _file_safe(Path(model).stem)
    where, colon, factory = model.rpartition(":")
    if not colon:
        return _file_safe(model)
    if where.endswith(".py"):
        parts = [*Path(where).resolve().parent.parts[-1:], Path(where).stem]
    else:
        parts = where.split(".")
    for name in (factory, *reversed(parts)):
        if name and name.lower() not in _GENERIC_NAMES and _file_safe(name):
            return _file_safe(name)
    return _file_safe(factory) or "model"


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_-")


def int8_quantizer() -> tuple[Any, Any]:
    """(a PT2E quantizer class, the int8 config the converters set globally): ExecuTorch's
    XNNPACK quantizer, else litert-torch's (the same symmetric scheme)."""
    try:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

        return XNNPACKQuantizer, get_symmetric_quantization_config(is_per_channel=True)
    except ImportError:
        from litert_torch.quantize import pt2e_quantizer

        return (pt2e_quantizer.PT2EQuantizer,
                pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))


def _is_auto(keep_float: str | None) -> bool:
    """``--keep-float auto`` or ``auto:TARGET`` (not a list of layer names)."""
    keep = (keep_float or "").strip()
    return keep == "auto" or keep.startswith("auto:")


def bias_corrected(src: Any, calibration: list[Any]) -> Any:
    """``src`` with a bias-corrected copy of its module (:func:`.quantize.correct_biases`),
    for the int8 artifacts; the float ones and every parity check use the original."""
    from .quantize import correct_biases

    module, corrected = correct_biases(src.module, calibration)
    if not corrected:
        raise EdgepipeError(f"--bias-correction: {src.name} has no Conv2d followed by a "
                            "BatchNorm2d in an nn.Sequential to correct; leave it out")
    return dataclasses.replace(src, module=module, notes=list(src.notes),
                               bias_corrected=corrected)


def without_correction(corrected: Any, src: Any, names: tuple[str, ...]) -> Any:
    """``corrected`` (from :func:`bias_corrected`) with the batch norms of ``names`` given
    back their original biases, in place: the input means were measured in the float model
    before any correction, so this equals correcting every other layer from scratch."""
    import torch

    from .quantize import conv_bn_pairs

    originals = {name: bn for name, _, bn in conv_bn_pairs(src.module)}
    with torch.no_grad():
        for name, _, bn in conv_bn_pairs(corrected.module):
            if name in names:
                bn.bias.copy_(originals[name].bias)
    corrected.bias_corrected = [n for n in corrected.bias_corrected if n not in names]
    return corrected


def int8_analysis(req: ConvertRequest, src: Any, calibration: list[Any], work: Path,
                  progress: Progress, float_module: Any = None
                  ) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
    """``--sensitivity`` and ``--keep-float``: (what the report says, the layers kept float).
    ``float_module``: the model the variants are measured against (default ``src.module``;
    the original where ``src`` is bias-corrected). Writes ``sensitivity.json`` and
    ``sensitivity.png`` into ``work``."""
    from .sensitivity import (
        QuantizationStudy,
        activation_sensitivity,
        choose_float_layers,
        parse_target,
        quantizable_layers,
        sensitivity,
    )

    keep = (req.keep_float or "").strip()
    if not (req.sensitivity or keep):
        return None, ()
    if not req.int8:
        raise EdgepipeError("--sensitivity and --keep-float are about int8 artifacts: add "
                            "--int8")
    layers = quantizable_layers(src.module)
    auto = _is_auto(keep)
    if auto:
        parse_target(keep)  # a bad target fails before minutes of analysis
    chosen: tuple[str, ...] = ()
    if keep and not auto:
        chosen = tuple(n.strip() for n in keep.split(",") if n.strip())
        unknown = [n for n in chosen if n not in layers]
        if unknown:
            raise EdgepipeError(f"--keep-float names no quantized layer of {req.model}: "
                                f"{', '.join(unknown[:3])} (layers: "
                                f"{', '.join(layers[:6])}{' …' if len(layers) > 6 else ''}; "
                                "`--sensitivity` lists them all)")
    analysis: dict[str, Any] = {}
    if req.sensitivity or auto:
        quantizer_class, config = int8_quantizer()
        study = QuantizationStudy(src.module, src.example_input(), calibration,
                                  quantizer_class, config, float_module=float_module)
        progress.step(f"int8 sensitivity of {len(layers)} layers")
        ranking = sensitivity(study)
        if req.sensitivity:
            progress.step("int8 sensitivity of the activations between layers")
            ranking["activations"] = activation_sensitivity(study)
        analysis["sensitivity"] = ranking
        write_atomic(work / "sensitivity.json", json.dumps(ranking, indent=1))
        plot_sensitivity(ranking, work / "sensitivity.png")
        if auto:
            progress.step("choosing the layers to keep in float")
            choice = choose_float_layers(study, keep, ranking)
            analysis["keep_float"] = choice
            chosen = tuple(choice["float_layers"])
    analysis["float_layers"] = list(chosen)
    return analysis, chosen


def plot_sensitivity(ranking: dict[str, Any], path: Path, top: int = 25) -> None:
    """The layers' SQNR alone int8 and alone float, worst first (a temporary file, renamed)."""
    from ..plotting import pyplot, save_figure

    plt = pyplot()
    rows = ranking["layers"][:top]
    names = [r["layer"] for r in rows][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(rows) + 1.5))
    y = range(len(rows))
    ax.barh([i + 0.2 for i in y], [min(r["alone_int8"]["sqnr_db"], 80) for r in rows][::-1],
            height=0.4, label="only this layer int8")
    ax.barh([i - 0.2 for i in y], [min(r["alone_float"]["sqnr_db"], 80) for r in rows][::-1],
            height=0.4, label="only this layer float")
    ax.axvline(ranking["int8"]["sqnr_db"], color="k", ls="--", lw=1, label="all int8")
    ax.set_yticks(list(y), names, fontsize=7)
    ax.set_xlabel("output SQNR vs float, dB (higher is better)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def plain_int8_latency(converter: Converter, src: Any, calibration: list[Any], work: Path,
                       reference: ParityReference, threads: int) -> dict[str, float] | None:
    """The host latency of the same artifact with every layer int8 (what keeping layers in
    float is measured against); the file is not kept."""
    path = work / f".plain-int8{converter.suffix}"
    try:
        plain = converter.convert(src, "int8", calibration, path, debug_info=False)
        return check_artifact(reference, plain, threads)[1]
    finally:
        for f in artifact_files(path):
            if f.is_dir():
                shutil.rmtree(f, ignore_errors=True)
            else:
                f.unlink(missing_ok=True)


def latency_cost(latency: dict[str, float] | None, plain: dict[str, float] | None,
                 threads: int) -> dict[str, Any]:
    """What the float layers cost: median host latency with them, over all-int8."""
    if not latency or not plain:
        return {"ratio": None, "why": "not measured: the artifact does not run here"}
    return {"median_ms": latency["median_ms"], "plain_int8_median_ms": plain["median_ms"],
            "ratio": latency["median_ms"] / plain["median_ms"],
            "measured": f"on this host, {threads} thread(s), side by side at conversion"}


# int8 activation ranges come from the calibration images alone: from fewer than this, other
# inputs clip more often (the built-in set has ConvertRequest.calib_count)
FEW_CALIBRATION_IMAGES = 16


def calibration_note(images: int, folder: Path | None, int8: bool) -> str | None:
    """A note for the report when int8 is calibrated on a user's folder of few images."""
    if not int8 or folder is None or images >= FEW_CALIBRATION_IMAGES:
        return None
    return (f"int8 calibrated on {images} image(s) of {folder}: its activation ranges come "
            f"from those alone, and other inputs may clip; {FEW_CALIBRATION_IMAGES} or more "
            f"are usual (the built-in set has {ConvertRequest.calib_count})")


def convert(req: ConvertRequest, progress: Progress | None = None) -> dict[str, Any]:
    """Run the conversion; returns the report also written to ``OUT/report.json``."""
    progress = progress or Progress()
    converters = check_formats(req.formats)
    if req.bias_correction and not req.int8:
        raise EdgepipeError("--bias-correction is about int8 artifacts: add --int8")
    check_output_folder(req.out.resolve())
    calib_images = folder_images(req.calib_dir) if req.calib_dir else \
        builtin_calibration_images(req.calib_count)
    jobs = conversion_jobs(converters, req.int8, req.fp16)
    auto = _is_auto(req.keep_float)
    analysis_steps = (int(req.sensitivity or auto) + int(req.sensitivity) + int(auto)
                      if req.int8 else 0)
    progress.start(2 + 2 * len(jobs) + analysis_steps)
    out = req.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    # kept only when a converter fails, and named in the error
    log = Path(tempfile.gettempdir()) / f"edgepipe-convert-{out.name}-{os.getpid()}.log"
    keep_log = False
    try:
        with native_output_to(log):
            progress.step("loading model")
            src = load_source_model(req.model, req.weights, req.width_mult, req.size, req.task,
                                    bn_images=calib_images, output=req.output,
                                    input_range=req.input_range)
            calibration = src.batches(calib_images)
            few = calibration_note(len(calib_images), req.calib_dir, req.int8)
            if few:
                src.notes.append(few)
            int8_src = src
            if req.bias_correction:
                int8_src = bias_corrected(src, calibration)
            analysis, float_layers = int8_analysis(req, int8_src, calibration, work, progress,
                                                   float_module=src.module)
            if req.bias_correction and float_layers:  # layers kept float keep their biases
                int8_src = without_correction(int8_src, src, float_layers)
            if req.fp16:  # a model whose activations overflow float16 fails here, by layer
                from .half import check_fp16_range

                check_fp16_range(src.module, calibration, req.model)
            progress.step("PyTorch reference on real photos")
            reference = ParityReference(src, parity_photos())
            results = []
            stem = artifact_stem(req.model)
            for converter, precision in jobs:
                progress.step(f"{converter.format} {precision}: converting")
                path = work / f"{stem}_{precision}{converter.suffix}"
                keep = float_layers if precision == "int8" else ()
                try:
                    converted = converter.convert(int8_src if precision == "int8" else src,
                                                  precision, calibration, path,
                                                  keep_float=keep)
                    plain = (plain_int8_latency(converter, int8_src, calibration, work,
                                                reference, req.threads)
                             if keep and converted.runnable_here else None)
                except EdgepipeError:
                    raise
                except Exception as exc:
                    keep_log = True
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    raise EdgepipeError(
                        f"{converter.format} {precision} conversion of {req.model} failed: "
                        f"{first[:300]} (full log: {log})") from None
                progress.step(f"{converter.format} {precision}: parity and latency")
                parity, latency = check_artifact(reference, converted, req.threads)
                cost = None
                if keep and converted.quantization is not None:
                    cost = latency_cost(latency, plain, req.threads)
                    converted.quantization["latency_cost"] = cost
                save_manifest(build_manifest(src, converter, converted), path)
                results.append(ArtifactResult(converter.format, precision, path.name,
                                              round(_size_mb(path), 3), parity, latency,
                                              converted.graph, list(keep) or None, cost))
        report = {
            "model": req.model,
            "task": src.task,
            "input_size": list(src.preprocessing.size),
            "input_channels": src.in_channels,
            "notes": src.notes,
            "width_mult": req.width_mult,
            "weights_sha256": src.weights_sha256,
            "threads": req.threads,
            "artifacts": [r.__dict__ for r in results],
        }
        if analysis:
            report["int8_analysis"] = analysis
        write_atomic(work / "report.json", json.dumps(report, indent=2))
        write_atomic(work / "report.html", render_report(report))
        with contextlib.suppress(OSError):  # mkdtemp's folder is private (0o700); the output
            work.chmod(0o777 & ~umask())  # is not (a file system without modes keeps its own)
        _replace_dir(work, out)
        return report
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        if not keep_log:
            log.unlink(missing_ok=True)
