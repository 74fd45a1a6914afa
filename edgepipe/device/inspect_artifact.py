"""Read an artifact's inputs and outputs, and write a starting manifest for it.

For artifacts edgepipe did not convert: a ``.tflite`` or ``.pte`` from elsewhere deploys,
profiles and runs in the demo once it has a manifest. What the file does not state (the task,
the output layout and kind, the input range) is guessed from the model itself and each guess
is listed with its reason and a confidence, for the user to check or override:

* shapes: one 4-D image input (its layout and channels: RGB or grey); an output of the input's
  spatial proportions is a mask (and where its class axis is), a ``[1, C]`` one class scores;
* dtypes and quantization: a uint8 input without quantization takes raw 0-255 pixels; a
  quantized input's representable range tells the range it was calibrated on;
* the op that makes the output (LiteRT): LOGISTIC or SOFTMAX means probabilities;
* values on a few real images: probabilities lie in [0, 1] (and sum to 1 over classes).

What edgepipe cannot decode (several outputs, as detectors have; an output that is neither
class scores nor a mask) is refused in one line that says what was seen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import EdgepipeError, missing_extra
from ..manifest import (
    RANGES,
    Manifest,
    TensorSpec,
    file_sha256,
    manifest_path,
    range_preprocessing,
    save_manifest,
    tensor_layout,
)
from .runtimes import RUNTIME_FOR_SUFFIX, litert_interpreter, pte_dim_orders

FORMAT_FOR_SUFFIX = {".tflite": "tflite", ".pte": "executorch"}
TASKS = ("classification", "segmentation", "unknown")
OUTPUT_KINDS = ("logits", "probabilities", "mask")
LAYOUTS = ("NCHW", "NHWC")
# ops that only move or re-type values: the op that gives an output its meaning is behind them
_PASS_THROUGH = {"DEQUANTIZE", "QUANTIZE", "RESHAPE", "TRANSPOSE", "SQUEEZE", "CAST",
                 "EXPAND_DIMS"}
# representable input ranges of the usual normalisations (ImageNet: (0 - 0.485) / 0.229 ...)
_RANGE_SPANS = {"0,1": (0.0, 1.0), "-1,1": (-1.0, 1.0), "0,255": (0.0, 255.0),
                "imagenet": (-2.12, 2.64)}


def litert_tensor_specs(interp: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs (NHWC, as LiteRT takes images) and outputs of a LiteRT interpreter.

    A quantized tensor (a scale) is fed and read as float32 and carries the scale/zero-point
    the runner (de)quantizes with; an integer tensor without a scale (raw 0-255 pixels, class
    indices) keeps its own dtype, e.g. "uint8"."""
    def spec(d: dict, layout: str) -> TensorSpec:
        scale, zero = d["quantization"]
        dtype = np.dtype(d["dtype"])
        q = {"scale": float(scale), "zero_point": int(zero), "dtype": dtype.name} \
            if scale else None
        raw = dtype.kind in "iub" and not scale
        return TensorSpec(name=d["name"], shape=[int(s) for s in d["shape"]],
                          dtype=dtype.name if raw else "float32", layout=layout, quantization=q)

    inputs = [spec(d, "NHWC") for d in interp.get_input_details()]
    outputs = [spec(d, tensor_layout(d["shape"])) for d in interp.get_output_details()]
    return inputs, outputs


def _litert_output_ops(interp: Any) -> list[str | None]:
    """For each output, the op that gives it its values (behind reshapes, casts, dequantize)."""
    ops = interp._get_ops_details()
    producer = {int(t): op for op in ops for t in op["outputs"]}
    names = []
    for d in interp.get_output_details():
        op = producer.get(int(d["index"]))
        for _ in range(8):
            if op is None or op["op_name"] not in _PASS_THROUGH:
                break
            op = producer.get(int(op["inputs"][0]))
        names.append(op["op_name"] if op else None)
    return names


def executorch_tensor_specs(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    try:
        from executorch.extension.pybindings.portable_lib import _load_for_executorch
    except ImportError:
        raise missing_extra("the ExecuTorch runtime", "executorch") from None
    try:
        meta = _load_for_executorch(str(path)).method_meta("forward")
    except (RuntimeError, ValueError) as exc:
        raise EdgepipeError(f"ExecuTorch cannot load {path.name}: {exc}") from None

    def spec(name: str, info: Any, dim_order: list[int] | None = None) -> TensorSpec:
        shape = [int(s) for s in info.sizes()]
        if dim_order == list(range(len(shape))):
            dim_order = None
        return TensorSpec(name=name, shape=shape, dtype="float32", layout=tensor_layout(shape),
                          dim_order=dim_order)

    orders = pte_dim_orders(path)
    orders += [None] * (meta.num_inputs() - len(orders))
    return ([spec(f"input_{i}", meta.input_tensor_meta(i), orders[i])
             for i in range(meta.num_inputs())],
            [spec(f"output_{i}", meta.output_tensor_meta(i)) for i in range(meta.num_outputs())])


def tensor_specs(path: Path) -> tuple[list[TensorSpec], list[TensorSpec], list[str | None]]:
    """(inputs, outputs, the op behind each output where the format lists ops)."""
    if RUNTIME_FOR_SUFFIX.get(path.suffix) == "litert":
        interp = litert_interpreter(path)
        inputs, outputs = litert_tensor_specs(interp)
        return inputs, outputs, _litert_output_ops(interp)
    inputs, outputs = executorch_tensor_specs(path)
    return inputs, outputs, [None] * len(outputs)


@dataclass
class Guess:
    """One thing ``manifest init`` decided, why, and how sure it is.

    confidence: "certain" (the file states it), "high" (the model shows it, e.g. a LOGISTIC
    output), "low" (a convention; check it), "given" (from the command line).
    """

    name: str
    value: str
    confidence: str
    reason: str

    def line(self) -> str:
        return f"{self.name} = {self.value} [{self.confidence}] {self.reason}"


def _shape(spec: TensorSpec) -> str:
    return "x".join(str(s) for s in spec.shape) + f" {spec.dtype}"


def _describe_outputs(outputs: list[TensorSpec], ops: list[str | None]) -> str:
    return ", ".join(f"[{_shape(o)}]" + (f" from {op}" if op else "")
                     for o, op in zip(outputs, ops, strict=True))


def _input_layout(spec: TensorSpec, default: str) -> tuple[str, int, Guess]:
    """(layout, channels, guess) of the image input."""
    shape = spec.shape
    if len(shape) != 4:
        raise EdgepipeError(f"input {spec.name} has shape {shape}: a vision model takes one "
                            "4-D image batch")
    nhwc, nchw = shape[3] in (1, 3), shape[1] in (1, 3)
    if nhwc and not nchw:
        layout, confidence = "NHWC", "certain"
    elif nchw and not nhwc:
        layout, confidence = "NCHW", "certain"
    else:
        layout, confidence = default, "low"
    channels = shape[3] if layout == "NHWC" else shape[1]
    if channels not in (1, 3):
        raise EdgepipeError(f"input {spec.name} has shape {shape}: edgepipe feeds images of 3 "
                            "(RGB) or 1 (grey) channels")
    spec.layout = layout
    reason = (f"input {shape}: {channels} channel(s) on axis {3 if layout == 'NHWC' else 1}"
              if confidence == "certain" else
              f"input {shape} could be either; {default} is the format's usual layout")
    return layout, channels, Guess("input layout", layout, confidence, reason)


def _input_range(spec: TensorSpec) -> Guess:
    """The input range from the input's dtype and quantization (a float says nothing)."""
    if spec.dtype == "uint8":
        return Guess("range", "0,255", "certain",
                     "uint8 input without quantization: raw 0-255 pixels, fed as they are")
    if spec.dtype != "float32":
        raise EdgepipeError(f"input {spec.name} is {spec.dtype} without quantization: edgepipe "
                            "feeds float32, quantized int8/uint8, or raw uint8 pixels")
    q = spec.quantization
    if q:
        info = np.iinfo(q["dtype"])
        low = q["scale"] * (info.min - q["zero_point"])
        high = q["scale"] * (info.max - q["zero_point"])
        best = min(_RANGE_SPANS, key=lambda r: abs(_RANGE_SPANS[r][0] - low)
                   + abs(_RANGE_SPANS[r][1] - high))
        span_low, span_high = _RANGE_SPANS[best]
        close = (abs(span_low - low) + abs(span_high - high)) <= 0.1 * (span_high - span_low)
        return Guess("range", best, "high" if close else "low",
                     f"{q['dtype']} input quantized to [{low:.3g}, {high:.3g}]"
                     + ("" if close else ", nearest of the usual ranges"))
    return Guess("range", "imagenet", "low",
                 "a float32 input does not say its range; ImageNet mean/std is PyTorch's usual "
                 f"(others: --range {', '.join(RANGES)})")


def _output_layout(out: TensorSpec, size: tuple[int, int], default: str
                   ) -> tuple[str, int, Guess] | None:
    """(layout, classes, guess) of a mask output: its spatial axes have the input's
    proportions. None: not a mask."""
    shape = out.shape
    if len(shape) != 4 or shape[0] != 1:
        return None
    h, w = size

    def spatial(a: int, b: int) -> bool:
        return a > 1 and b > 1 and abs(a * w - b * h) <= max(h, w)  # same aspect, ±1 px

    as_nhwc, as_nchw = spatial(shape[1], shape[2]), spatial(shape[2], shape[3])
    if as_nhwc and not as_nchw:
        layout, confidence = "NHWC", "high"
    elif as_nchw and not as_nhwc:
        layout, confidence = "NCHW", "high"
    elif as_nhwc and as_nchw:
        layout, confidence = default, "low"
    else:
        return None
    classes = shape[3] if layout == "NHWC" else shape[1]
    reason = (f"output {shape}: axes {'1-2' if layout == 'NHWC' else '2-3'} have the input's "
              f"{h}x{w} proportions, {classes} class channel(s)" if confidence == "high" else
              f"output {shape} fits both layouts; {default} is the format's usual one")
    return layout, classes, Guess("layout", layout, confidence, reason)


def _sample_images(folder: Path | None, count: int = 3) -> tuple[list[np.ndarray], str]:
    """A few real photos for the value checks: the user's folder, or scikit-image's."""
    from ..images import IMAGE_SUFFIXES, read_image

    if folder is not None:
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise EdgepipeError(f"no images in {folder} for --images")
        return [read_image(p) for p in files[:count]], f"{min(count, len(files))} of {folder}"
    try:
        from skimage import data
    except ImportError:
        return [], "no sample images (pass --images DIR)"
    names = ("chelsea", "coffee", "astronaut")[:count]
    return [np.asarray(getattr(data, n)())[..., :3] for n in names], \
        f"{len(names)} scikit-image photos"


def _class_axis_sums_to_one(y: np.ndarray, layout: str) -> bool:
    axis = -1 if layout in ("NHWC", "NC") else 1
    return bool(np.allclose(y.sum(axis=axis), 1.0, atol=2e-2))


def init_manifest(path: Path, labels: Path | None = None, force: bool = False,
                  task: str | None = None, layout: str | None = None,
                  input_range: str | None = None, output_kind: str | None = None,
                  images: Path | None = None) -> tuple[Path, list[Guess]]:
    """Write ``<file>.json`` for an artifact; returns its path and the guesses (each with its
    reason and confidence). ``task``, ``layout`` (of the output), ``input_range`` (a key of
    ``manifest.RANGES`` or "imagenet") and ``output_kind`` override the guesses.

    Raises EdgepipeError (one line) for what cannot be decoded: several outputs (unless
    ``task="unknown"``: a manifest for deploy and profile only), outputs that are neither class
    scores nor a mask, inputs that are not one RGB or grey image, labels that do not match the
    classes.
    """
    path = Path(path)
    if path.suffix not in FORMAT_FOR_SUFFIX:
        raise EdgepipeError(f"{path} is not a .tflite or .pte file")
    if not path.is_file():
        raise EdgepipeError(f"{path} does not exist" if not path.exists()
                            else f"{path} is not a file")
    for value, allowed, flag in ((task, TASKS, "--task"), (layout, LAYOUTS, "--layout"),
                                 (output_kind, OUTPUT_KINDS, "--output-kind"),
                                 (input_range, (*RANGES, "imagenet"), "--range")):
        if value is not None and value not in allowed:
            raise EdgepipeError(f"{flag} {value!r}: use one of {', '.join(allowed)}")
    target = manifest_path(path)
    if target.exists() and not force:
        raise EdgepipeError(f"{target.name} already exists: pass --force to replace it")
    fmt = FORMAT_FOR_SUFFIX[path.suffix]
    default_layout = "NHWC" if fmt == "tflite" else "NCHW"
    inputs, outputs, out_ops = tensor_specs(path)
    if len(inputs) != 1:
        raise EdgepipeError(f"{path.name} has {len(inputs)} inputs "
                            f"({', '.join(f'[{_shape(i)}]' for i in inputs)}): edgepipe feeds "
                            "one image")
    guesses: list[Guess] = []
    _, channels, g = _input_layout(inputs[0], default_layout)
    guesses.append(g)
    h, w = (inputs[0].shape[1:3] if inputs[0].layout == "NHWC" else inputs[0].shape[2:4])
    color = "GRAY" if channels == 1 else "RGB"
    guesses.append(Guess("color", color, "certain",
                         f"the input has {channels} channel(s)"
                         + (": frames are converted to grey (ITU-R 601 luma)"
                            if channels == 1 else "")))
    g = _input_range(inputs[0])
    if input_range is not None:
        if g.confidence == "certain" and input_range != g.value:
            raise EdgepipeError(f"--range {input_range} contradicts the file: {g.reason}")
        g = Guess("range", input_range, "given", "--range")
    guesses.append(g)
    chosen_range = g.value

    described = _describe_outputs(outputs, out_ops)
    if task == "unknown":
        guesses.append(Guess("task", "unknown", "given",
                             f"--task unknown: deploy and profile only (outputs {described})"))
        kind, out_layout, classes = "logits", tensor_layout(outputs[0].shape), 0
    else:
        if len(outputs) != 1:
            detector = len(outputs) >= 3 and any(len(o.shape) == 3 and o.shape[-1] == 4
                                                 for o in outputs)
            raise EdgepipeError(
                f"{path.name} has {len(outputs)} outputs ({described})"
                + (": it looks like a detector (boxes, classes, scores, count)" if detector
                   else "")
                + ", which edgepipe cannot decode: it decodes one output, class scores [1, C] "
                "or a mask [1, H, W, C] / [1, C, H, W]. For latency only, pass --task unknown")
        out = outputs[0]
        if out.dtype != "float32":
            raise EdgepipeError(f"{path.name}'s output is {_shape(out)} without quantization "
                                f"({described}): edgepipe decodes scores, not class indices")
        squeezed = [s for s in out.shape if s != 1]
        mask = _output_layout(out, (h, w), default_layout)
        if mask is not None and task != "classification":
            out_layout, classes, g = mask
            guessed_task = Guess("task", "segmentation", g.confidence,
                                 f"the output [{_shape(out)}] is an image of the input's "
                                 "proportions")
        elif len(squeezed) <= 1 and out.shape and out.shape[0] == 1 and task != "segmentation":
            classes = squeezed[0] if squeezed else 1
            out_layout = tensor_layout(out.shape) if len(out.shape) != 2 else "NC"
            g = None
            guessed_task = Guess("task", "classification", "high",
                                 f"the output [{_shape(out)}] is one score per class "
                                 f"({classes})")
        else:
            raise EdgepipeError(
                f"{path.name}'s output {described} is neither class scores [1, C] nor a mask "
                f"with the input's {h}x{w} proportions ([1, H, W, C] or [1, C, H, W])"
                + (f" for --task {task}" if task else "") + ": edgepipe cannot decode it; for "
                "latency only, pass --task unknown")
        guesses.append(guessed_task if task is None else
                       Guess("task", task, "given", "--task"))
        if g is not None:
            if layout is not None:
                g = Guess("layout", layout, "given", "--layout")
                classes = out.shape[3] if layout == "NHWC" else out.shape[1]
            guesses.append(g)
            out_layout = g.value
        kind_guess = _kind_from_op(out_ops[0], classes)
        probe = _probe(path, (h, w), chosen_range, color,
                       out_layout if guessed_task.value == "segmentation" else "NC", images)
        guesses.extend(probe.notes)
        kind_guess = probe.check_kind(kind_guess, classes)
        if output_kind is not None:
            kind_guess = Guess("output kind", output_kind, "given", "--output-kind")
        guesses.append(kind_guess)
        kind = kind_guess.value
        outputs[0].layout = out_layout
    task_value = next(g.value for g in guesses if g.name == "task")
    label_list = _read_labels(labels, classes if task_value == "classification" else None)
    if label_list is None and task_value != "unknown":
        guesses.append(Guess("labels", "none", "low", "pass --labels FILE, one per line"))
    resize = round(min(h, w) / 0.875) if task_value == "classification" else min(h, w)
    guesses.append(Guess("resize", str(resize), "low",
                         "shorter side, then a centre crop: torchvision's 224/256 for "
                         "classification" if task_value == "classification" else
                         "shorter side to the input size: a mask covers the centre crop"))
    quantized = any(t.quantization for t in inputs + outputs)
    manifest = Manifest(
        format=fmt, precision="int8" if quantized else "fp32",
        file=path.name, file_sha256=file_sha256(path), model=path.stem, task=task_value,
        inputs=inputs, outputs=outputs, output_kind=kind,
        preprocessing=range_preprocessing((h, w), resize, chosen_range, color),
        labels=label_list, tool_versions={"edgepipe": __version__},
        extra={"written_by": "edgepipe manifest init",
               "guessed": [asdict(g) for g in guesses],
               # the op that makes the output (LiteRT), e.g. LOGISTIC: per-class
               # probabilities that need not sum to 1 (a multi-label classifier)
               **({"output_op": out_ops[0]} if out_ops and out_ops[0] else {})},
    )
    manifest.check()
    return save_manifest(manifest, path), guesses


def _read_labels(labels: Path | None, classes: int | None) -> list[str] | None:
    if labels is None:
        return None
    try:
        names = [line.strip() for line in Path(labels).read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise EdgepipeError(f"cannot read labels {labels}: {exc.strerror}") from None
    if classes is not None and len(names) != classes:
        raise EdgepipeError(f"{labels} has {len(names)} labels and the model {classes} classes "
                            "(a 'background' first line, as many TF models have, is one more): "
                            "give one label per class")
    return names


def _kind_from_op(op: str | None, classes: int) -> Guess:
    if op == "LOGISTIC":
        return Guess("output kind", "probabilities", "high",
                     "the output comes from LOGISTIC (sigmoid applied)"
                     + (": foreground above 0.5" if classes == 1 else
                        ": each class on its own (multi-label), not summing to 1"))
    if op == "SOFTMAX":
        return Guess("output kind", "probabilities", "high",
                     "the output comes from SOFTMAX")
    return Guess("output kind", "logits", "low",
                 (f"the output comes from {op}, not a sigmoid or softmax" if op else
                  "the format lists no ops here") + ": softmax (sigmoid for one channel) "
                 "is applied")


@dataclass
class _Probe:
    """Values of the output on a few real images (empty when none could be run)."""

    outputs: list[np.ndarray]
    layout: str
    notes: list[Guess]

    def check_kind(self, guess: Guess, classes: int) -> Guess:
        if not self.outputs:
            return guess
        y = np.stack(self.outputs)
        low, high = float(y.min()), float(y.max())
        in_unit = low >= -1e-3 and high <= 1 + 1e-3
        where = f"values in [{low:.3g}, {high:.3g}] on the sample images"
        if guess.value == "probabilities" and not in_unit:
            return Guess("output kind", "logits", "high",
                         f"{guess.reason}, but {where}: not probabilities")
        if guess.value == "logits" and in_unit and (
                classes == 1 or _class_axis_sums_to_one(y[:, 0], self.layout)):
            return Guess("output kind", "probabilities", "high",
                         f"{where}" + ("" if classes == 1 else ", summing to 1 over classes"))
        return Guess(guess.name, guess.value, guess.confidence, f"{guess.reason}; {where}")


def _probe(path: Path, size: tuple[int, int], input_range: str, color: str, layout: str,
           images: Path | None) -> _Probe:
    """Run the model on a few real photos, preprocessed as the manifest will say."""
    from ..preprocess import preprocess
    from .runtimes import open_runner

    photos, source = _sample_images(images)
    if not photos:
        return _Probe([], layout, [Guess("values", "not checked", "low", source)])
    pre = range_preprocessing(size, min(size), input_range, color)
    try:
        runner = open_runner(path)
        ys = [runner.run(preprocess(p, pre))[0] for p in photos]
        if layout == "NC":  # class scores, whatever their rank: one row per image
            ys = [y.reshape(1, -1) for y in ys]
    except EdgepipeError:
        raise
    except Exception as exc:  # a runtime's own failure on a foreign file: say so, do not guess
        raise EdgepipeError(f"{path.name} fails on a {color} {size[0]}x{size[1]} image: "
                            f"{type(exc).__name__}: {exc}") from None
    notes = []
    if any(not np.isfinite(y).all() for y in ys):
        notes.append(Guess("values", "NaN/inf", "high",
                           f"the output has NaN or inf on {source}: check --range"))
    elif len(ys) > 1 and all(np.allclose(y, ys[0], atol=1e-6) for y in ys[1:]):
        notes.append(Guess("values", "constant", "high",
                           f"the output is the same on each of {source}: the model may "
                           "expect another --range"))
    else:
        notes.append(Guess("values", "checked", "high", f"run on {source}"))
    return _Probe(ys, layout, notes)
