"""Imports run downward: every module imports only from its own floor or the floors below it
(read from the source, so a lazy import inside a function counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "edgepipe"

# Lower numbers are lower floors; a module may import from its own number and below. The
# ground (0-2) is what the device and every stage share: numpy and Pillow at most.
FLOORS = {
    "errors": 0, "schemas": 0,
    "manifest": 1, "images": 1, "plotting": 1, "report_parts": 1, "etdump": 1,
    "preprocess": 2, "decode": 2,
    "device": 3,
    "host": 4, "models": 4,
    "converters": 5,
    "latency_tables": 6,
    "search": 7, "evaluation": 7, "lab": 7,
    "pipeline": 8, "apps": 8,
    "ui": 9,
    "cli": 10,
}


def _part(module: Path) -> str:
    """The floor's name of a file: its sub-package, or its own name at the top."""
    return module.relative_to(PACKAGE).with_suffix("").parts[0]


def _imported_parts(source: str, here: list[str]) -> set[str]:
    """The top-level parts of edgepipe that ``source``, a file in the sub-package ``here``
    (``[]`` at the top), imports: relative or absolute, at module level or in a function."""
    tree = ast.parse(source)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[:len(here) - (node.level - 1)] if node.level > 1 else here
            target = [*base, *((node.module or "").split(".") if node.module else [])]
            if target:
                found.add(target[0])
            else:  # `from . import x` at the top: each name is a part
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgepipe."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names
                         if a.name.startswith("edgepipe."))
    return found


def test_every_part_has_a_floor():
    parts = {_part(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert parts <= set(FLOORS), f"give these a floor in FLOORS: {sorted(parts - set(FLOORS))}"


def test_imports_run_downward():
    upward = []
    for module in sorted(PACKAGE.rglob("*.py")):
        part = _part(module)
        if part == "__init__":
            continue
        here = list(module.relative_to(PACKAGE).parent.parts)
        for target in _imported_parts(module.read_text(), here) - {part}:
            if target in FLOORS and FLOORS[target] > FLOORS[part]:
                upward.append(f"{module.relative_to(PACKAGE.parent)} imports {target} "
                              f"(floor {FLOORS[target]} above its {FLOORS[part]})")
    assert not upward, "\n".join(upward)


def test_the_checker_sees_every_kind_of_import():
    """Relative, lazy and absolute imports are all found (else the test above checks nothing)."""
    source = ("from ..latency_tables.evaluate import save_figure\n"
              "from .client import AgentClient\n"
              "def plot():\n    from edgepipe.apps import demo\n    import edgepipe.pipeline.run\n")
    assert _imported_parts(source, ["host"]) == {"latency_tables", "host", "apps", "pipeline"}
    assert _imported_parts("from . import decode, errors\n", []) == {"decode", "errors"}
