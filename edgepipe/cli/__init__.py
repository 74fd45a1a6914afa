"""The ``edgepipe`` command: maps sub-commands to the stages' public functions, one module a
stage (artifacts, device, evaluate, apps, lut, search)."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import EdgepipeError
from .apps import _add_demo, _add_run
from .artifacts import INPUT_RANGES, _add_convert, _add_manifest, _run_models
from .device import _add_agent, _add_deploy_profile, _add_device
from .evaluate import _add_evaluate
from .lab import _add_diff, _add_history
from .lut import _add_lut
from .search import _add_search


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgepipe",
        description="Take PyTorch vision models to phones and single-board computers, and "
                    "measure them there.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_convert(sub)
    sub.add_parser("models", help="list built-in models").set_defaults(func=_run_models)
    _add_agent(sub)
    _add_device(sub)
    _add_deploy_profile(sub)
    _add_manifest(sub)
    _add_run(sub)
    _add_evaluate(sub)
    _add_demo(sub)
    _add_lut(sub)
    _add_search(sub)
    _add_history(sub)
    _add_diff(sub)
    return parser


def _join_dash_values(argv: list[str]) -> list[str]:
    """``--range -1,1`` as ``--range=-1,1``: a value that starts with a dash."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] == "--range" and arg.startswith("-") and arg in INPUT_RANGES:
            out[-1] = f"--range={arg}"
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_join_dash_values(sys.argv[1:] if argv is None else argv))
    try:
        return args.func(args)
    except EdgepipeError as exc:
        print(f"edgepipe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgepipe: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours: one line, the traceback on request
        if os.environ.get("EDGEPIPE_DEBUG"):
            raise
        print(f"edgepipe: internal error: {type(exc).__name__}: {exc} (rerun with "
              f"EDGEPIPE_DEBUG=1 for the traceback, and please report it)", file=sys.stderr)
        return 1
