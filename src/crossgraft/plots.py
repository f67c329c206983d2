"""Figures written as PNG and SVG side by side. matplotlib's object API only (no pyplot): nothing global
changes, no display is needed, and a figure is freed when it goes out of scope."""

from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from crossgraft.files import atomic_write

DPI = 100  # a figure of W x H inches is W*100 x H*100 pixels as PNG
FORMATS = ("png", "svg")
NOT_APPLICABLE_NOTE = "n/a: the class has only one label"


def new_figure(width: float, height: float) -> Figure:
    """A figure of `width` x `height` inches, laid out so that labels never overlap."""
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_figure(figure: Figure, stem: Path) -> list[Path]:
    """STEM.png and STEM.svg, each written atomically; returns both paths."""
    written = []
    for suffix in FORMATS:
        path = Path(stem).with_suffix(f".{suffix}")
        with atomic_write(path, binary=True) as handle:
            # no date in the metadata: the same data gives the same files
            figure.savefig(handle, format=suffix, metadata={"Date": None} if suffix == "svg" else {"Software": None})
        written.append(path)
        figure.set_layout_engine("none")  # laid out once: the other formats reuse it (and match it)
    return written


def empty_axes(axes: Axes, title: str, note: str = NOT_APPLICABLE_NOTE) -> None:
    """An axes that says why it holds nothing."""
    axes.set_title(title)
    axes.text(0.5, 0.5, note, ha="center", va="center", transform=axes.transAxes, color="0.4")
    axes.set_xticks([])
    axes.set_yticks([])


def integer_ticks(axes: Axes) -> Axes:
    """Whole-number ticks on the x axis (epochs, optimizer steps): no 2.5th epoch."""
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    return axes
