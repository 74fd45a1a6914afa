"""Figures written as PNG files: pyplot started without a display, and a figure written under a
temporary name and renamed, so a reader never sees half a PNG.

Shared by every stage that plots (the conversion's sensitivity bars, ``profile --compare``,
the latency-table scatter, the search's paths); matplotlib is the ``plot`` extra and is
imported only when a figure is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import missing_extra


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed: a headless Pi, CI).

    Raises :class:`~edgepipe.errors.EdgepipeError` naming the ``plot`` extra when matplotlib
    is not installed.
    """
    try:
        import matplotlib
    except ImportError:
        raise missing_extra("matplotlib", "plot") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: float | None = None) -> None:
    """Write ``fig`` to ``path`` (PNG; ``dpi`` as matplotlib's ``savefig``, the figure's own
    when None) through a temporary file in the same folder, then free the figure."""
    plt = pyplot()
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        fig.savefig(tmp, dpi=dpi if dpi is not None else "figure")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    tmp.replace(path)
