"""Commands about models and artifacts: ``models``, ``convert``, ``manifest init``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import EdgepipeError
from ..manifest import RANGES

# --range's values; "-1,1" starts with a dash, so main() joins it to its option (argparse
# would read it as an option of its own and say "expected one argument")
INPUT_RANGES = ["imagenet", *RANGES]


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a model to ExecuTorch, TFLite and Core ML",
                       description="Convert a model; writes artifacts, manifests and a "
                                   "parity report to OUT.")
    p.add_argument("model", help="a built-in model name (see `edgepipe models`) or "
                                 "module:factory returning a torch.nn.Module")
    p.add_argument("--to", default="executorch,tflite,coreml",
                   help="comma-separated formats (default: all three)")
    p.add_argument("--int8", action="store_true", help="also write int8 artifacts")
    p.add_argument("--fp16", action="store_true",
                   help="also write fp16 artifacts: ExecuTorch XNNPACK fp16, LiteRT fp16 "
                        "weights with XNNPACK's fp16 flag (fp16 arithmetic where the CPU has "
                        "it: ARM asimdhp; Core ML's are fp16 already)")
    p.add_argument("--weights", help="a state_dict .pth file, or `imagenet` for the packaged "
                                     "MobileNetV2 checkpoint (default: random init)")
    p.add_argument("--calib", type=Path, help="folder of calibration images for int8 "
                                              "(default: built-in real photos)")
    p.add_argument("--size", help="input size: 224, or height x width as 96x128 (default: "
                                  "the model's)")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier (default 1.0)")
    p.add_argument("--task", choices=["classification", "segmentation"],
                   help="task of a module:factory model (default classification)")
    p.add_argument("--output", help="for a model returning a dict or tuple: the key or index "
                                    "to convert (default: 'out', else the first)")
    p.add_argument("--range", dest="input_range", choices=INPUT_RANGES,
                   help="the input range the model was trained on (default imagenet: "
                        "ImageNet mean/std)")
    p.add_argument("--threads", type=int, default=1, help="threads for host latency")
    p.add_argument("--sensitivity", action="store_true",
                   help="with --int8: rank the layers, then the activations between them, by "
                        "the error each adds (alone int8, alone float; SQNR vs float) and split "
                        "weights from activations; sensitivity.json/.png, in the report "
                        "(minutes: two PT2E variants per layer)")
    p.add_argument("--keep-float", metavar="NAME,…|auto[:TARGET]",
                   help="with --int8: leave these layers (module names) in float, or choose "
                        "them: auto (top-1 agreement with float ≥ 0.99 on the calibration "
                        "images), auto:0.995, auto:sqnr=30")
    p.add_argument("--bias-correction", action="store_true",
                   help="with --int8: batch norms absorb the mean shift the weights' int8 "
                        "rounding adds (Nagel et al. 2019), measured on the calibration images")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from ..converters.convert import ConvertRequest, convert
    from ..models.pretrained import resolve_weights
    from ..ui import ProgressBar, console, print_convert_table

    if args.threads < 1:
        raise EdgepipeError(f"--threads {args.threads}: must be 1 or more")
    request = ConvertRequest(
        model=args.model, out=args.out,
        formats=[f.strip() for f in args.to.split(",") if f.strip()],
        int8=args.int8, fp16=args.fp16, weights=resolve_weights(args.model, args.weights),
        width_mult=args.width, size=args.size, task=args.task, calib_dir=args.calib,
        threads=args.threads, output=args.output, input_range=args.input_range,
        keep_float=args.keep_float, sensitivity=args.sensitivity,
        bias_correction=args.bias_correction,
    )
    with ProgressBar(f"converting {args.model}") as progress:
        report = convert(request, progress)
    print_convert_table(report)
    if report.get("int8_analysis"):
        from ..ui import print_int8_analysis

        print_int8_analysis(report)
    console.print(f"wrote {args.out}/ (artifacts, manifests, report.json, report.html)")
    return 0


def _run_models(args: argparse.Namespace) -> int:
    from ..models import MODEL_NAMES

    for name in MODEL_NAMES:
        print(name)
    return 0


def _add_manifest(sub: argparse._SubParsersAction) -> None:
    manifest = sub.add_parser("manifest", help="artifact manifests").add_subparsers(
        dest="manifest_command", required=True)
    p = manifest.add_parser("init", help="write a starting manifest for a .tflite/.pte made "
                                         "elsewhere, from its inputs and outputs")
    p.add_argument("file", type=Path)
    p.add_argument("--labels", type=Path, help="a text file of class names, one per line")
    p.add_argument("--force", action="store_true", help="replace an existing manifest")
    p.add_argument("--task", choices=["classification", "segmentation", "unknown"],
                   help="override the guess (unknown: deploy and profile only, no demo)")
    p.add_argument("--layout", choices=["NCHW", "NHWC"], help="override the output layout")
    p.add_argument("--range", dest="input_range", choices=INPUT_RANGES,
                   help="override the input range (imagenet: ImageNet mean/std)")
    p.add_argument("--output-kind", choices=["logits", "probabilities", "mask"],
                   help="override the guess of what the output holds")
    p.add_argument("--images", type=Path, help="a folder of a few real images to check the "
                                               "outputs on (default: scikit-image's photos)")
    p.add_argument("--size", help="HxW (or one number) to run a model of free input height "
                                  "and width at; required for one (its file's shape is a "
                                  "placeholder)")
    p.set_defaults(func=_run_manifest_init)


def _run_manifest_init(args: argparse.Namespace) -> int:
    from ..device.inspect_artifact import init_manifest
    from ..manifest import parse_size

    path, guesses = init_manifest(args.file, args.labels, args.force, task=args.task,
                                  layout=args.layout, input_range=args.input_range,
                                  output_kind=args.output_kind, images=args.images,
                                  size=parse_size(args.size) if args.size else None)
    print(f"wrote {path}; each guess with its confidence and reason (override with --task, "
          "--layout, --range, --output-kind):")
    width = max(len(g.name) for g in guesses)
    for g in guesses:
        print(f"  {g.name:<{width}}  {g.value:<15} {g.confidence:<7}  {g.reason}")
    return 0

