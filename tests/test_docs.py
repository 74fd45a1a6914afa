"""Every command the documentation tells a user to paste is checked against the real command:
each ``edgepipe …`` line in a fenced code block of README.md and docs/**/*.md names a
sub-command whose ``--help`` runs, names only options that sub-command has, and, when it is a
concrete command (no ``[optional]`` parts, ``a|b`` choices or ``…``), parses as it is written.
The quick start's ``edgepipe run`` itself runs end to end in tests/test_full_size.py."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgepipe.cli import _join_dash_values, build_parser

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(```|~~~)")
SYNOPSIS = re.compile(r"\[|\||…|\.\.\.")  # optional parts, alternatives, "and more"
VALUE = re.compile(r"^-(\d|\.\d)")  # -0.07, -1,1: a value, not an option


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    text: str
    words: tuple[str, ...]  # after "edgepipe"


def _blocks(text: str) -> list[tuple[int, list[str]]]:
    """(line number of the first line, lines) of each fenced code block."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.strip()):
            if current is None:
                current, start = [], number + 1
            else:
                blocks.append((start, current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def documented_commands(page: Path) -> list[Command]:
    """Each ``edgepipe …`` command in the page's fenced code blocks: continuation lines
    joined, ``$`` prompts and ``# comments`` dropped, ``a && b`` split."""
    found = []
    for start, lines in _blocks(page.read_text()):
        joined: list[tuple[int, str]] = []
        for offset, line in enumerate(lines):
            if joined and joined[-1][1].endswith("\\"):
                joined[-1] = (joined[-1][0], joined[-1][1][:-1] + " " + line.strip())
            else:
                joined.append((start + offset, line.strip()))
        for number, line in joined:
            for part in re.split(r"&&|;", line.removeprefix("$ ")):
                part = part.strip()
                if not part.startswith("edgepipe "):
                    continue
                try:
                    words = shlex.split(part, comments=True)
                except ValueError:  # an unbalanced quote in prose-like text
                    words = part.split("#")[0].split()
                name = page.relative_to(REPO) if page.is_relative_to(REPO) else page
                found.append(Command(f"{name}:{number}", part, tuple(words[1:])))
    return found


def sub_command(parser: argparse.ArgumentParser, words: tuple[str, ...]
                ) -> tuple[list[str], argparse.ArgumentParser]:
    """The sub-command the words name, and its parser (descending while a word is one)."""
    path: list[str] = []
    for word in words:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        path.append(word)
        parser = subs[0].choices[word]
    return path, parser


def named_options(words: tuple[str, ...]) -> list[str]:
    """The options a (possibly synopsis) command line names: ``[--to a,b]`` gives ``--to``,
    ``--range=0,1`` gives ``--range``; values such as ``-0.07`` are not options."""
    options = []
    for word in words:
        for piece in word.split("|"):
            piece = piece.strip("[]()")
            if piece.startswith("-") and not VALUE.match(piece) and piece not in ("-", "--"):
                options.append(piece.split("=")[0])
    return options


def check(command: Command) -> list[str]:
    """What is wrong with one documented command (nothing: [])."""
    parser = build_parser()
    path, sub = sub_command(parser, command.words)
    if not path:
        return [f"{command.where}: `{command.text}` names no edgepipe sub-command"]
    problems = [f"{command.where}: `edgepipe {' '.join(path)}` has no option {option}"
                for option in named_options(command.words)
                if option not in sub._option_string_actions]
    if not problems and not SYNOPSIS.search(command.text):
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(_join_dash_values(list(command.words)))
        except SystemExit as exc:
            if exc.code:
                problems.append(f"{command.where}: `{command.text}` does not parse: "
                                f"{stderr.getvalue().strip().splitlines()[-1]}")
    return problems


COMMANDS = [c for page in PAGES for c in documented_commands(page)]


def test_the_docs_name_many_commands_in_many_pages():
    """The parser above finds what the pages hold (else the checks below check nothing)."""
    assert len(COMMANDS) >= 60, len(COMMANDS)
    assert len({c.where.split(":")[0] for c in COMMANDS}) >= 12
    firsts = {sub_command(build_parser(), c.words)[0][0] for c in COMMANDS}
    assert firsts >= {"convert", "run", "device", "deploy", "profile", "manifest", "evaluate",
                      "demo", "lut", "search", "agent"}, firsts


def test_every_documented_command_parses_and_names_real_options():
    problems = [p for c in COMMANDS for p in check(c)]
    assert not problems, "\n".join(problems)


def test_the_check_finds_a_wrong_option_a_wrong_value_and_a_wrong_command(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n```bash\nedgepipe convert m --too tflite -o o\n"
                    "edgepipe lut collect --runtime onnx  # a value argparse refuses\n"
                    "edgepipe profile x.tflite \\\n"
                    "    --device d --raw r.json && edgepipe frobnicate\n"
                    "edgepipe search mnas [--w -0.07] [--sampler rl|evolution] -o OUT\n```\n")
    commands = documented_commands(page)
    assert [c.words[0] for c in commands] == ["convert", "lut", "profile", "frobnicate", "search"]
    problems = [p for c in commands for p in check(c)]
    assert len(problems) == 3, problems
    assert "has no option --too" in problems[0]
    assert "does not parse" in problems[1] and "onnx" in problems[1]
    assert "names no edgepipe sub-command" in problems[2]


def test_each_documented_sub_command_answers_help():
    """The real command, in a process of its own, for every sub-command the docs use."""
    paths = sorted({tuple(sub_command(build_parser(), c.words)[0]) for c in COMMANDS})
    assert len(paths) >= 20, paths
    for path in paths:
        done = subprocess.run([sys.executable, "-m", "edgepipe.cli", *path, "--help"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (path, done.stderr)
        assert done.stdout.startswith(f"usage: edgepipe {' '.join(path)}"), done.stdout[:200]


def _readme_commands() -> list[str]:
    """The README's two commands: its first two ```bash blocks."""
    blocks = re.findall(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), re.S)
    return [b.strip() for b in blocks[:2]]


def test_readme_quick_start_is_edgepipe_run_and_its_test_command_is_what_ci_runs():
    """Command 1 ends with `edgepipe run` (tests/test_full_size.py runs that, with no
    arguments, end to end); command 2's steps are .ci/run's, in the same order."""
    install_and_run, install_and_test = _readme_commands()
    assert install_and_run.split(" && ")[-1] == "edgepipe run"
    steps = install_and_test.split(" && ")
    assert steps[-1] == "python -m pytest"
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    positions = [ci.index(step) for step in steps]  # ValueError: a step CI does not run
    assert positions == sorted(positions), positions


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_files_the_docs_name_exist(page):
    """`python benchmarks/x.py`, `tests/…`, `docs/…` and `edgepipe/…` paths named in a page."""
    names = set(re.findall(r"(?<![\w/.])((?:benchmarks|tests|docs|edgepipe)/[\w./-]+\.\w+)",
                           page.read_text()))
    missing = sorted(n for n in names if not (REPO / n).exists())
    assert not missing, missing
