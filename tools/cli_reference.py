"""MkDocs hook: the command reference page (``reference/cli.md``), made at build time from the
``edgepipe`` command's own argparse parser, so it can never disagree with the command.

Each sub-command gets a heading and its ``--help`` text, formatted 100 columns wide.
"""

from __future__ import annotations

import argparse
import os

from mkdocs.structure.files import File, Files

PATH = "reference/cli.md"


def _commands(parser: argparse.ArgumentParser, path: list[str]):
    """(words, parser) for the command and every sub-command below it, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, [*path, name])


def reference_page() -> str:
    from edgepipe.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal's width
    parts = ["# Command reference\n",
             "Every `edgepipe` command with its options, as `edgepipe COMMAND --help` prints "
             "them (this page is made from the command's own parser when the site is built). "
             "What each is for, with examples: the task pages.\n"]
    for words, parser in _commands(build_parser(), ["edgepipe"]):
        level = "#" * min(len(words) + 1, 4)
        parts.append(f"{level} `{' '.join(words)}`\n\n```text\n{parser.format_help().rstrip()}"
                     "\n```\n")
    return "\n".join(parts)


def on_files(files: Files, config) -> Files:
    files.append(File.generated(config, PATH, content=reference_page()))
    return files
