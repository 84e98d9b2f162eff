"""What every plot of the study shares: matplotlib imported headless (or a reason it is not),
log axes labelled in plain numbers (1K, 4K, 16K rather than 4x10^0), and PNGs written without a
version stamp, so the same data give the same bytes.

Every plot sits beside the JSON it was drawn from; the JSON is the record, the PNG a picture of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

MATPLOTLIB_MISSING = "plots skipped (matplotlib is not installed: pip install matplotlib)"


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), or None when not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plain_number(value: float) -> str:
    """1024 -> '1K', 16384 -> '16K', 1536 -> '1.5K', 2**20 -> '1M', 300 -> '300', 0.25 ->
    '0.25': binary thousands, since the lengths are powers of two; small values as they are."""
    for unit, size in (("M", 1 << 20), ("K", 1 << 10)):
        if abs(value) >= size:
            return f"{value / size:g}{unit}"
    return f"{value:g}"


def plain_log_axis(axes, which: str = "x", ticks: Iterable[float] | None = None):
    """Log scale on `which` ('x' or 'y') with ticks at `ticks` (default: matplotlib's) labelled by
    `plain_number`, and no minor tick labels."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis = axes.xaxis if which == "x" else axes.yaxis
    (axes.set_xscale if which == "x" else axes.set_yscale)("log")
    if ticks is not None:
        axis.set_ticks(sorted(set(ticks)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: plain_number(value)))
    axis.set_minor_formatter(NullFormatter())


def decimal_log_axis(axes):
    """A log y axis ticked at 1, 2 and 5 of each power of ten, labelled as decimal numbers
    (2,000 tokens/s, 500 MiB): plain_number's binary thousands suit lengths, not these."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axes.set_yscale("log")
    axes.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.10g}"))
    axes.yaxis.set_minor_formatter(NullFormatter())


def save(figure, path: Path) -> str:
    """Write the figure as a PNG without the matplotlib version in its metadata; close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(figure)
    return str(path)


def lines_against_length(series: dict[str, Sequence[tuple[float, float]]], path: Path, *,
                         xlabel: str, ylabel: str, title: str, log_y: bool = True) -> str:
    """One line per name of `series` (name -> [(length, value), ...]) with the lengths as ticks on
    a plain-labelled log x axis; returns the path, or MATPLOTLIB_MISSING."""
    plt = pyplot()
    if plt is None:
        return MATPLOTLIB_MISSING
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    lengths = []
    for name, points in series.items():
        points = sorted((x, y) for x, y in points if y is not None and y > 0)
        if points:
            axes.plot(*zip(*points), marker="o", label=name)
            lengths += [x for x, _ in points]
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    plain_log_axis(axes, "x", lengths or None)
    if log_y:
        decimal_log_axis(axes)
    if lengths:
        axes.legend(fontsize="small")
    return save(figure, path)
