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
from ..errors import EdgepipeError
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
from .runtimes import (
    RUNTIME_FOR_SUFFIX,
    fits_signature,
    litert_interpreter,
    pte_forward_plan,
    pte_inputs,
)

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
        signature = [int(s) for s in d.get("shape_signature", d["shape"])]
        return TensorSpec(name=d["name"], shape=[int(s) for s in d["shape"]],
                          dtype=dtype.name if raw else "float32", layout=layout, quantization=q,
                          shape_signature=signature if -1 in signature else None)

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
    from .runtimes import executorch_bindings

    try:
        meta = executorch_bindings()._load_for_executorch(str(path)).method_meta("forward")
    except (RuntimeError, ValueError) as exc:
        raise EdgepipeError(f"ExecuTorch cannot load {path.name}: {exc}") from None

    def spec(name: str, info: Any, dim_order: list[int] | None = None) -> TensorSpec:
        shape = [int(s) for s in info.sizes()]
        if dim_order == list(range(len(shape))):
            dim_order = None
        return TensorSpec(name=name, shape=shape, dtype="float32", layout=tensor_layout(shape),
                          dim_order=dim_order)

    described = pte_inputs(path)
    inputs = []
    for i in range(meta.num_inputs()):
        own = described[i] if i < len(described) else None
        t = spec(f"input_{i}", meta.input_tensor_meta(i), own.dim_order if own else None)
        if own is not None and own.dynamic and len(t.shape) == 4:
            # a program records that its sizes are an upper bound, not which dims move: an
            # image batch of one moves its height and width (torch.export's usual Dims)
            t.shape_signature = [t.shape[0], t.shape[1], -1, -1]
        inputs.append(t)
    return (inputs,
            [spec(f"output_{i}", meta.output_tensor_meta(i)) for i in range(meta.num_outputs())])


def tensor_specs(path: Path, shape: list[int] | None = None
                 ) -> tuple[list[TensorSpec], list[TensorSpec], list[str | None]]:
    """(inputs, outputs, the op behind each output where the format lists ops). ``shape``:
    the size to run a first input of free dims at (in the file's own layout); the outputs
    are then those of that size (the model is run once where the format does not say)."""
    if RUNTIME_FOR_SUFFIX.get(path.suffix) == "litert":
        interp = litert_interpreter(path)
        # the ops as the file lists them: once tensors are allocated, delegate nodes produce
        # the outputs instead
        out_ops = _litert_output_ops(interp)
        if shape is not None:
            index = interp.get_input_details()[0]["index"]
            try:
                interp.resize_tensor_input(index, shape, strict=True)
                interp.allocate_tensors()
            except (ValueError, RuntimeError) as exc:
                raise EdgepipeError(f"LiteRT cannot resize {path.name}'s input to {shape}: "
                                    f"{exc}") from None
        inputs, outputs = litert_tensor_specs(interp)
        return inputs, outputs, out_ops
    inputs, outputs = executorch_tensor_specs(path)
    if shape is not None:
        from .runtimes import open_runner

        inputs[0].shape = list(shape)
        try:
            ys = open_runner(path).run(np.zeros(shape, np.float32))
        except EdgepipeError:
            raise
        except Exception as exc:  # the runtime's own failure: the size is past the bound
            raise EdgepipeError(f"{path.name} does not run at {shape}: {type(exc).__name__}: "
                                f"{exc}") from None
        for out, y in zip(outputs, ys, strict=False):
            out.shape = [int(d) for d in y.shape]
    return inputs, outputs, [None] * len(outputs)


def _free_size(spec: TensorSpec, size: tuple[int, int] | None, path: Path
               ) -> tuple[list[int] | None, Guess | None]:
    """For an input whose file leaves dims free: the shape to run it at (``size`` = height,
    width in its spatial axes; a free batch of 1) and the guess saying so; (None, None) for a
    fixed input. Raises EdgepipeError for free spatial dims without ``size``, a size the file
    does not take, and free channels."""
    sig = spec.shape_signature
    if sig is None or len(sig) != 4:
        return None, None  # a fixed input: init_manifest checks a --size against it
    nhwc, nchw = sig[3] in (1, 3), sig[1] in (1, 3)
    if not (nhwc or nchw):
        raise EdgepipeError(f"input {spec.name} of {path.name} has shape_signature {sig}: its "
                            "channels are free, and edgepipe feeds 3 (RGB) or 1 (grey)")
    spatial = (1, 2) if nhwc else (2, 3)
    free_hw = any(sig[a] == -1 for a in spatial)
    placeholder = f"the placeholder shape {spec.shape} is not a size"
    bound = ("" if path.suffix != ".pte" else
             f"; the program takes up to {spec.shape[spatial[0]]}x{spec.shape[spatial[1]]}")
    if free_hw and size is None:
        raise EdgepipeError(f"{path.name} takes a free height and width (shape_signature "
                            f"{sig}; {placeholder}{bound}): give the size to run it at with "
                            "--size HxW, e.g. --size 224x224")
    shape = [1 if d == -1 else d for d in sig]
    if size is not None:
        for axis, value in zip(spatial, size, strict=True):
            if sig[axis] not in (-1, value):
                raise EdgepipeError(f"--size {size[0]}x{size[1]}: {path.name}'s input is "
                                    f"fixed at {sig[axis]} on axis {axis} ({sig})")
            shape[axis] = value
    if not fits_signature(shape, sig):
        raise EdgepipeError(f"{path.name}: the input shape {shape} does not fit {sig}")
    what = "height and width" if free_hw else "batch"
    return shape, Guess("input size", "x".join(str(shape[a]) for a in spatial),
                        "given" if free_hw else "certain",
                        (f"--size: the file leaves its input's {what} free (shape_signature "
                         f"{sig}{bound}); every runner resizes its input to {shape}")
                        if free_hw else
                        f"the file leaves only the batch free (shape_signature {sig}): run "
                        f"at a batch of 1, {shape}")


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
                  images: Path | None = None, size: tuple[int, int] | None = None
                  ) -> tuple[Path, list[Guess]]:
    """Write ``<file>.json`` for an artifact; returns its path and the guesses (each with its
    reason and confidence). ``task``, ``layout`` (of the output), ``input_range`` (a key of
    ``manifest.RANGES`` or "imagenet") and ``output_kind`` override the guesses. ``size``
    (height, width): what to run an input of free height and width at (required for one:
    its placeholder shape, e.g. [1, 1, 1, 3], is not a size).

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
    free_shape, size_guess = _free_size(inputs[0], size, path)
    if free_shape is not None:  # inputs and outputs as they are at that size
        signature = inputs[0].shape_signature
        inputs, outputs, out_ops = tensor_specs(path, free_shape)
        inputs[0].shape, inputs[0].shape_signature = free_shape, signature
    guesses: list[Guess] = []
    _, channels, g = _input_layout(inputs[0], default_layout)
    guesses.append(g)
    if size_guess is not None:
        guesses.append(size_guess)
    h, w = (inputs[0].shape[1:3] if inputs[0].layout == "NHWC" else inputs[0].shape[2:4])
    if size is not None and (h, w) != tuple(size):
        raise EdgepipeError(f"--size {size[0]}x{size[1]}: {path.name}'s input is fixed at "
                            f"{h}x{w}: leave --size out")
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
    delegation = None
    if fmt == "executorch":
        delegation = pte_delegation(path)
        guesses.append(Guess("delegation", delegation.words(), "certain",
                             "read from the program" + (
                                 ": every op on ExecuTorch's portable kernels, often many "
                                 "times slower than a delegate; export with "
                                 "to_edge_transform_and_lower(partitioner="
                                 "[XnnpackPartitioner()])" if not delegation.partitions
                                 else "")))
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
               **({"output_op": out_ops[0]} if out_ops and out_ops[0] else {}),
               **({"delegation": delegation.to_dict()} if delegation else {})},
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


# -- delegation of an ExecuTorch program ---------------------------------------------------

XNNPACK_BACKEND = "XnnpackBackend"


def _xnnpack_nodes(blob: bytes) -> int | None:
    """XNNPACK's nodes in a delegate payload (``XNNGraph.xnodes``, field 1 of the flatbuffer
    behind the ``XH00`` header executorch writes), None where the bytes do not read so."""
    try:
        from flatbuffers import encode, packer
        from flatbuffers.table import Table
    except ImportError:
        return None
    data = bytes(blob)
    if data[4:8] == b"XH00":  # header: flatbuffer offset and size, then constant data
        offset = int.from_bytes(data[10:14], "little")
        size = int.from_bytes(data[14:18], "little")
        data = data[offset:offset + size]
    if data[4:8] != b"XN01":
        return None
    try:
        buf = bytearray(data)
        table = Table(buf, encode.Get(packer.uoffset, buf, 0))
        at = table.Offset(6)  # vtable slot of field 1 (xnodes)
        return table.VectorLen(at) if at else 0
    except Exception:  # a payload of another schema version: not counted, never guessed
        return None


@dataclass
class Delegation:
    """How much of an ExecuTorch program its delegates run: ``ops`` counts XNNPACK's nodes
    inside its partitions (None for a backend whose payload edgepipe cannot count) plus the
    ops ExecuTorch runs on its own (portable) kernels."""

    partitions: dict[str, int]  # backend id -> delegate calls
    delegated_ops: int | None  # ops inside the delegates (None: a payload not counted)
    portable_ops: dict[str, int]  # op -> count, run by ExecuTorch's own kernels

    @property
    def ops(self) -> int | None:
        portable = sum(self.portable_ops.values())
        return None if self.delegated_ops is None else self.delegated_ops + portable

    def words(self) -> str:
        """"0 of 18 ops delegated (portable kernels only)", "14 of 14 ops delegated
        (XnnpackBackend: 1 partition)", or with ops left on portable kernels, which."""
        portable = sum(self.portable_ops.values())
        backends = ", ".join(f"{b}: {n} partition{'s' if n != 1 else ''}"
                             for b, n in self.partitions.items())
        if not self.partitions:
            return f"0 of {portable} ops delegated (portable kernels only)"
        left = ", ".join(f"{n} {op}" for op, n in sorted(self.portable_ops.items(),
                                                         key=lambda kv: -kv[1])[:4])
        tail = f"; {portable} on portable kernels: {left}" if portable else ""
        if self.delegated_ops is None:
            return f"delegated to {backends} (ops inside not counted){tail}"
        return f"{self.delegated_ops} of {self.ops} ops delegated ({backends}){tail}"

    def to_dict(self) -> dict[str, Any]:
        return {"partitions": self.partitions, "delegated_ops": self.delegated_ops,
                "ops": self.ops, "portable_ops": self.portable_ops, "words": self.words()}


def pte_delegation(path: Path) -> Delegation:
    """Read an ExecuTorch program's ``forward``: its delegate calls by backend, the ops inside
    XNNPACK's payloads, and the ops left to ExecuTorch's own kernels (pytorch/executorch#7880:
    a program exported without a partitioner runs every op on portable kernels, many times
    slower, and nothing says so). Needs the ExecuTorch package; raises EdgepipeError for a
    file it cannot read (:func:`~edgepipe.device.runtimes.pte_forward_plan`)."""
    program, plan = pte_forward_plan(path)
    partitions: dict[str, int] = {}
    portable: dict[str, int] = {}
    inside: int | None = 0
    for chain in plan.chains:
        for instruction in chain.instructions:
            args = instruction.instr_args
            kind = type(args).__name__
            if kind == "KernelCall":
                op = plan.operators[args.op_index]
                name = op.name.split("::")[-1]
                portable[name] = portable.get(name, 0) + 1
            elif kind == "DelegateCall":
                delegate = plan.delegates[args.delegate_index]
                partitions[delegate.id] = partitions.get(delegate.id, 0) + 1
                nodes = None
                if delegate.id == XNNPACK_BACKEND and \
                        type(delegate.processed.location).__name__ == "DataLocation" and \
                        delegate.processed.location.name == "INLINE":
                    nodes = _xnnpack_nodes(
                        program.backend_delegate_data[delegate.processed.index].data)
                inside = None if inside is None or nodes is None else inside + nodes
    return Delegation(partitions, inside, portable)
