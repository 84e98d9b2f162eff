"""The study's pictures, drawn from the rows of its study_results.json and written beside it:

- `confusion_matrices.png`: one panel per classifier, IMDb test counts, true labels down and
  predictions across;
- `lm_loss_by_position.png`: the held-out book's loss (bits per byte) of the bytes at each range
  of positions in their block (`language_modeling.position_buckets`), one line per language
  model: where a longer window or a memory pays off, the later positions (or, with a memory,
  the first ones too) cost fewer bits.

This module is a user of the models; modeling files never import it.
"""

from __future__ import annotations

import math
from pathlib import Path

from .plots import MATPLOTLIB_MISSING, lines_against_length, pyplot, save

CONFUSION_PLOT = "confusion_matrices.png"
POSITION_PLOT = "lm_loss_by_position.png"
LABEL_NAMES = ("negative", "positive")  # IMDb's 0 and 1


def confusion_matrices(rows: list[dict]) -> dict[str, list[list[int]]]:
    """architecture -> counts[true][predicted] of the rows whose classification has them."""
    return {row["architecture"]: row["classification"]["confusion_matrix"] for row in rows
            if (row.get("classification") or {}).get("confusion_matrix")}


def loss_by_position(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """architecture -> [(end of a bucket of positions, loss in bits per byte)] of the LM rows
    with `by_position`; buckets without tokens are left out."""
    series = {}
    for row in rows:
        buckets = (row.get("language_modeling") or {}).get("by_position") or []
        points = [(bucket["positions"][1], bucket["loss"] / math.log(2)) for bucket in buckets
                  if bucket["tokens"] and bucket["loss"] is not None]
        if points:
            series[row["architecture"]] = points
    return series


def draw_confusion_matrices(matrices: dict[str, list[list[int]]], path: Path) -> str:
    """One panel per classifier: counts with true labels down, predictions across."""
    plt = pyplot()
    figure, panels = plt.subplots(1, len(matrices), figsize=(3.2 * len(matrices), 3.4),
                                  squeeze=False)
    for axes, (name, counts) in zip(panels[0], matrices.items()):
        axes.imshow(counts, cmap="Blues", vmin=0)
        darkest = max(max(row) for row in counts)
        for true, row in enumerate(counts):
            for predicted, count in enumerate(row):  # white on the dark cells
                axes.text(predicted, true, f"{count:,}", ha="center", va="center",
                          color="white" if count > darkest / 2 else "black")
        ticks = list(range(len(counts)))
        names = [LABEL_NAMES[i] if i < len(LABEL_NAMES) else str(i) for i in ticks]
        axes.set(xticks=ticks, yticks=ticks, xticklabels=names, yticklabels=names,
                 xlabel="predicted", ylabel="true", title=name)
    return save(figure, path)


def draw_loss_by_position(series: dict, path: Path) -> str:
    return lines_against_length(
        series, path, xlabel="position in the block (end of each range of positions)",
        ylabel="loss (bits per byte)", log_y=False,
        title="held-out book: loss of the bytes at each range of positions")


def write_study_plots(rows: list[dict], folder: Path, only_missing: bool = False
                      ) -> list[Path] | str:
    """The pictures the rows have data for, in `folder`; `only_missing`: an existing file is
    kept, not redrawn. Returns their paths, or MATPLOTLIB_MISSING."""
    if pyplot() is None:
        return MATPLOTLIB_MISSING
    paths = []
    for name, data, draw in ((CONFUSION_PLOT, confusion_matrices(rows), draw_confusion_matrices),
                             (POSITION_PLOT, loss_by_position(rows), draw_loss_by_position)):
        path = Path(folder) / name
        if data and not (only_missing and path.exists()):
            draw(data, path)
        if data:
            paths.append(path)
    return paths
