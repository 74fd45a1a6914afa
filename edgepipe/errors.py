"""User-facing errors.

Anything raised as an :class:`EdgepipeError` is printed by the CLI as one line and a
non-zero exit, without a traceback: the message must name the problem and what to do.
"""


class EdgepipeError(Exception):
    """A problem the user can fix (bad input, missing extra, unreadable file)."""


def missing_extra(module: str, extra: str) -> EdgepipeError:
    """The error for an optional dependency that is not installed."""
    return EdgepipeError(
        f"{module} is not installed: install it with `pip install 'edgepipe[{extra}]'`"
    )
