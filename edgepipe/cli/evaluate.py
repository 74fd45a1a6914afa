"""``edgepipe evaluate``: accuracy and agreement with PyTorch, per artifact, on the device."""

from __future__ import annotations

import argparse
from pathlib import Path


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="run artifacts on a device over a data set: top-1/"
                                        "top-5 with 95 %% intervals, agreement with PyTorch")
    p.add_argument("targets", type=Path, nargs="+", metavar="OUT_DIR|ARTIFACT",
                   help="convert output folders or .tflite/.pte files (with manifests)")
    p.add_argument("--data", required=True, metavar="FOLDER|digits",
                   help="class folders named after the model's labels (or indices), a folder "
                        "of images without labels, or digits (the test part of edgepipe "
                        "search's split)")
    p.add_argument("--device", help="a registered device (default: an agent started here)")
    p.add_argument("--limit", type=int, help="evaluate this many images, drawn at random "
                                             "(seed 0)")
    p.add_argument("--masks", type=Path, metavar="FOLDER",
                   help="segmentation: ground-truth masks, one per image at the same relative "
                        "path (.png of class indices, 255 = none): mIoU and pixel accuracy "
                        "with 95 %% intervals")
    p.add_argument("--label-map", type=Path, metavar="FILE.json",
                   help="folder name → the model's label or index, where they differ")
    p.add_argument("--top-k", type=int, default=5, help="classes returned per image "
                                                        "(default 5)")
    p.add_argument("--threads", type=int, default=1,
                   help="threads the runtime uses on the device (default 1)")
    p.add_argument("--weights", help="trained weights the artifacts were converted from "
                                     "(`imagenet` or a file), for the PyTorch reference")
    p.add_argument("--no-reference", action="store_true",
                   help="skip PyTorch on the host (no flip rate)")
    p.add_argument("-o", "--out", type=Path,
                   help="where the answers and evaluation.json go (default: "
                        "FIRST_TARGET_FOLDER/evaluation); an interrupted run resumes there")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from ..errors import EdgepipeError
    from ..evaluation.run import evaluate
    from ..ui import PhaseProgress, print_evaluation

    if args.threads < 1:
        raise EdgepipeError(f"--threads {args.threads}: give 1 or more")
    first = args.targets[0]
    out = args.out or ((first if first.is_dir() else first.parent) / "evaluation")
    if out.exists() and not out.is_dir():
        raise EdgepipeError(f"--out {out} is a file: give a folder")
    with PhaseProgress() as progress:
        summary = evaluate(args.targets, args.data, device=args.device, out=out,
                           limit=args.limit, label_map=args.label_map, top_k=args.top_k,
                           threads=args.threads, weights=args.weights,
                           reference=not args.no_reference, masks=args.masks,
                           progress=progress)
    print_evaluation(summary)
    print(f"wrote {out / 'evaluation.json'}")
    stopped = [a for a in summary["artifacts"] if a["stopped"]]
    if stopped:
        raise EdgepipeError(f"{len(stopped)} of {len(summary['artifacts'])} artifact(s) not "
                            f"fully evaluated ({stopped[0]['artifact']}: {stopped[0]['stopped']});"
                            f" the answers so far are kept in {out}: run again to resume")
    return 0
