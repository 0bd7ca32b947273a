"""Heatmap of a generalization matrix: rows = what was trained on, columns = what was tested.

A fixed 0-100 % colour scale makes heatmaps of different sweeps comparable; in-domain cells (the
diagonal of a cross-modality sweep) are outlined; missing cells are grey with an em dash.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from medr1.cache import write_file_atomically
from medr1.report.tables import MISSING_MD, Table

CMAP = "viridis"


def _grid(table: Table) -> tuple[np.ndarray, list[str], list[str]]:
    """Percent values [rows, test columns + overall] (NaN = missing), row and column labels."""
    first, overall = 1, table.columns.index("overall")
    width = len(table.axis)
    values = np.full((len(table.rows), width + 1), np.nan)
    row_labels = []
    for i, row in enumerate(table.rows):
        for j, value in enumerate([*row[first : first + width], row[overall]]):
            if value is not None:
                values[i, j] = 100.0 * float(value)
        note = row[-1] if table.columns[-1] == "note" and row[-1] else ""
        row_labels.append(f"{row[0]} (missing)" if note else str(row[0]))
    column_labels = [*table.headers[first : first + width], "overall"]
    return values, row_labels, column_labels


def _annotate(ax, values: np.ndarray, cmap) -> None:
    for (i, j), value in np.ndenumerate(values):
        if np.isnan(value):
            ax.text(j, i, MISSING_MD, ha="center", va="center", color="0.35", fontsize=9)
            continue
        red, green, blue, _ = cmap(value / 100.0)
        dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
        ax.text(
            j, i, f"{value:.1f}", ha="center", va="center", fontsize=9, color="white" if dark else "black"
        )


def _outline_in_domain(ax, table: Table) -> None:
    for i, train_key in enumerate(table.train_keys):
        if train_key in table.axis:
            j = table.axis.index(train_key)
            # inset a little so the outline is not clipped at the plot's edge
            ax.add_patch(
                Rectangle((j - 0.47, i - 0.47), 0.94, 0.94, fill=False, edgecolor="red", linewidth=2.2)
            )


def _row_group(label: str) -> str:
    """Return "base" for base rows, else the prefix of a trained row's label ("grpo" in "grpo: ct")."""
    return "base" if label.startswith("base") else label.rpartition(": ")[0]


def _separate_groups(ax, table: Table) -> None:
    """A white line wherever the row group changes: base | grpo: ... | sft: ..."""
    groups = [_row_group(str(row[0])) for row in table.rows]
    for i in range(1, len(groups)):
        if groups[i] != groups[i - 1]:
            ax.axhline(i - 0.5, color="white", linewidth=3)


def plot_heatmap(table: Table, path: Path, title: str) -> Path:
    """Write the matrix `table` (from tables.build_matrix) as an annotated heatmap PNG."""
    values, row_labels, column_labels = _grid(table)
    n_rows, n_cols = values.shape
    # A bare Figure on the Agg canvas: no pyplot, so no global backend or figure state to leak.
    fig = Figure(figsize=(2.5 + 1.0 * n_cols, 1.6 + 0.5 * n_rows), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    cmap = matplotlib.colormaps[CMAP].with_extremes(bad="0.88")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=100.0, aspect="auto")
    ax.set_xticks(range(n_cols), column_labels, rotation=35, ha="right")
    ax.set_yticks(range(n_rows), row_labels)
    ax.axvline(n_cols - 1.5, color="white", linewidth=4)  # sets "overall" apart from the test columns
    ax.set_xlabel("test")
    ax.set_ylabel("train")
    _annotate(ax, values, cmap)
    _separate_groups(ax, table)
    _outline_in_domain(ax, table)
    fig.colorbar(image, ax=ax, label="accuracy (%)", fraction=0.046, pad=0.03)
    ax.set_title(title + "\n(outlined: in-domain)", fontsize=10)
    fig.tight_layout()
    image_bytes = io.BytesIO()
    fig.savefig(image_bytes, format="png")
    return write_file_atomically(path, image_bytes.getvalue())
