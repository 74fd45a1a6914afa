"""The ``edgepipe`` command: maps sub-commands to the stages' public functions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import EdgepipeError


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a model to ExecuTorch, TFLite and Core ML",
                       description="Convert a model; writes artifacts, manifests and a "
                                   "parity report to OUT.")
    p.add_argument("model", help="a built-in model name (see `edgepipe models`) or "
                                 "module:factory returning a torch.nn.Module")
    p.add_argument("--to", default="executorch,tflite,coreml",
                   help="comma-separated formats (default: all three)")
    p.add_argument("--int8", action="store_true", help="also write int8 artifacts")
    p.add_argument("--weights", help="a state_dict .pth file, or `imagenet` for the packaged "
                                     "MobileNetV2 checkpoint (default: random init)")
    p.add_argument("--calib", type=Path, help="folder of calibration images for int8 "
                                              "(default: built-in real photos)")
    p.add_argument("--size", type=int, help="input resolution (default: the model's)")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier (default 1.0)")
    p.add_argument("--task", choices=["classification", "segmentation"],
                   help="task of a module:factory model (default classification)")
    p.add_argument("--threads", type=int, default=1, help="threads for host latency")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from .converters.convert import ConvertRequest, convert
    from .models.pretrained import resolve_weights
    from .ui import ProgressBar, console, print_convert_table

    request = ConvertRequest(
        model=args.model, out=args.out,
        formats=[f.strip() for f in args.to.split(",") if f.strip()],
        int8=args.int8, weights=resolve_weights(args.model, args.weights),
        width_mult=args.width, size=args.size, task=args.task, calib_dir=args.calib,
        threads=args.threads,
    )
    with ProgressBar(f"converting {args.model}") as progress:
        report = convert(request, progress)
    print_convert_table(report)
    console.print(f"wrote {args.out}/ (artifacts, manifests, report.json, report.html)")
    return 0


def _run_models(args: argparse.Namespace) -> int:
    from .models import MODEL_NAMES

    for name in MODEL_NAMES:
        print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgepipe",
        description="Take PyTorch vision models to phones and single-board computers, and "
                    "measure them there.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_convert(sub)
    sub.add_parser("models", help="list built-in models").set_defaults(func=_run_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EdgepipeError as exc:
        print(f"edgepipe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgepipe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
