"""The report's tables: train x test generalization matrices, and what every table shares (the comparison
and the pairs build on it: medr1.report.comparison, medr1.report.pairs).

A table is plain data (rows of floats, None = missing) plus how to show each column; Markdown,
CSV, heatmap, HTML and W&B all render the same rows. Accuracies are fractions in the data and in CSV,
percentages with one decimal in Markdown. Beside the rows, a table holds each cell's 95% bootstrap
interval (medr1.report.intervals) and, for a row that averages several seeds, each cell's spread over
the seeds (sample standard deviation) and the number of seeds.

Markdown cell: `61.2 ± 2.1 (3 seeds) [55.0, 67.3]` (mean ± sd over seeds, then the interval; a
single run shows `61.2 [55.0, 67.3]`); a difference in points whose interval excludes 0 is starred,
`+12.3* [+4.1, +20.5]`. CSV: the table's columns, then for every column with an interval in some
row `<column>_ci_low`, `<column>_ci_high` (and `<column>_excludes_0` for differences), then `seeds`
and `<column>_sd` where some row averages seeds.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, stdev

from medr1.cache import write_file_atomically
from medr1.data.names import (
    MODALITIES,
    MODALITY_DISPLAY,
    QUESTION_TYPES,
    canonical_modality,
    canonical_question_type,
)
from medr1.report.intervals import Estimator, Interval
from medr1.report.runs import (
    BaseRow,
    Run,
    SeedGroup,
    canonical_or_raw,
    group_seeds,
    natural_key,
    override_items,
)
from medr1.report.stats import excludes_zero

MISSING_MD = "—"
Cell = str | float | int | None


@dataclass
class Table:
    """Rows aligned with `columns`; the first column is the row label, None marks a missing cell."""

    name: str  # file stem, e.g. "matrix_modality"
    title: str
    columns: list[str]  # CSV header
    headers: list[str]  # Markdown header (display names)
    kinds: list[str]  # per column: text | percent | points | float | int
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)
    axis: list[str] = field(default_factory=list)  # matrices: the test columns (canonical names)
    train_keys: list[str] = field(default_factory=list)  # matrices: each row's train key ("all" for base)
    # Same shape as rows (or empty: the table has none). Per cell (low, high) of its 95% interval, in
    # the cell's unit (fractions for percent columns, points for points columns); None: no interval.
    intervals: list[list[Interval | None]] = field(default_factory=list)
    # Same shape as rows (or empty): per cell the sample standard deviation over the row's seeds, in
    # the cell's unit; None for single-run rows and cells without one.
    spreads: list[list[float | None]] = field(default_factory=list)
    row_seeds: list[int] = field(default_factory=list)  # per row: seeds averaged (1 = one run; 0 = missing)


# --------------------------------------------------------------------------------------------------
# Axes: modality and question type
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """One generalization axis: what a run trains on and which summary field it is tested by."""

    name: str  # "modality" | "question_type"
    noun: str  # as written in titles: "modality" | "question type"
    plural: str
    order: tuple[str, ...]  # canonical order of the columns
    display: dict[str, str]
    canonical: Callable[[str], str]
    summary_key: str  # "by_modality" | "by_question_type"
    train_of: Callable[[Run], str]
    other: str  # the other axis, named in row labels when it varies too
    other_of: Callable[[Run], str]

    def canonical_or_raw(self, name: str) -> str:
        return canonical_or_raw(name, self.canonical)

    def rank(self, key: str) -> tuple[int, str]:
        """Canonical order, unknown names next (alphabetically), "all" last."""
        if key in self.order:
            return self.order.index(key), ""
        return (len(self.order) + 1, "") if key == "all" else (len(self.order), key)


MODALITY_AXIS = Axis(
    name="modality",
    noun="modality",
    plural="modalities",
    order=tuple(MODALITIES),
    display=dict(MODALITY_DISPLAY),
    canonical=canonical_modality,
    summary_key="by_modality",
    train_of=lambda run: run.train_modality,
    other="question_type",
    other_of=lambda run: run.train_question_type,
)
QUESTION_TYPE_AXIS = Axis(
    name="question_type",
    noun="question type",
    plural="question types",
    order=tuple(QUESTION_TYPES),
    display=dict(QUESTION_TYPES),
    canonical=canonical_question_type,
    summary_key="by_question_type",
    train_of=lambda run: run.train_question_type,
    other="modality",
    other_of=lambda run: run.train_modality,
)


def varies_question_type(runs: list[Run]) -> bool:
    """The question-type matrix is worth showing: some run trains on one question type."""
    return any(not run.is_base and run.train_question_type != "all" for run in runs)


# --------------------------------------------------------------------------------------------------
# Generalization matrix
# --------------------------------------------------------------------------------------------------


def _scores(run: Run, axis: Axis) -> dict[str, float]:
    """The run's accuracy per test key of `axis`, canonical names."""
    raw = (run.summary or {}).get(axis.summary_key) or {}
    return {axis.canonical_or_raw(key): float(value) for key, value in raw.items() if value is not None}


def present_keys(runs: list[Run], axis: Axis) -> list[str]:
    keys = {key for run in runs for key in _scores(run, axis)}
    return sorted(keys, key=axis.rank)


def _label_fields(axis: Axis) -> list[tuple[str, Callable[[Run], str | None]]]:
    """Config fields that name a trained row when they vary; algo is shown bare ("grpo: ct")."""
    return [
        ("algo", lambda run: run.algo),
        ("model", lambda run: run.model_name),
        ("prompt", lambda run: run.prompt),
        ("reward", lambda run: run.reward),
        ("tuning", lambda run: run.tuning),
        (axis.other, axis.other_of),
    ]


def _matrix_labels(trained: list[Run], axis: Axis) -> tuple[dict[Path, str], dict[Path, tuple]]:
    """Row label ("ct", "grpo: ct", "sft prompt=nothink: mri") and sort key of each trained row,
    keyed by the path of the row's first run."""
    fields = [(name, get) for name, get in _label_fields(axis) if len({get(run) for run in trained}) > 1]
    labels, sort_keys = {}, {}
    for run in trained:
        values = [(name, get(run)) for name, get in fields]
        prefix = " ".join(str(value) if name == "algo" else f"{name}={value}" for name, value in values)
        train = axis.train_of(run)
        labels[run.path] = f"{prefix}: {train}" if prefix else train
        sort_keys[run.path] = (tuple(str(v) for _, v in values), axis.rank(train), natural_key(run.relative))
    details = override_labels(trained, exclude=(axis.name, "seed"))
    return disambiguate(labels, trained, details), sort_keys


def disambiguate(labels: dict[Path, str], runs: list[Run], details: dict[Path, str]) -> dict[Path, str]:
    """Labels two runs share get the run's `details` appended (else its run dir), e.g. a seed sweep."""
    shared = Counter(labels.values())
    result = {}
    for run in runs:
        label = labels[run.path]
        result[run.path] = (
            f"{label} ({details.get(run.path) or run.relative})" if shared[label] > 1 else label
        )
    still_shared = Counter(result.values())
    for run in runs:
        if still_shared[result[run.path]] > 1:
            result[run.path] = f"{labels[run.path]} ({run.relative})"
    return result


def _matrix_values(run: Run, train_key: str, columns: list[str], axis: Axis) -> list[float | None]:
    """[per-column accuracy..., in-domain, out-of-domain, overall] from the run's summary."""
    scores = _scores(run, axis)
    cells = [scores.get(column) for column in columns]
    in_domain = scores.get(train_key) if train_key in columns else None
    others = [scores[c] for c in columns if c != train_key and c in scores]
    out_of_domain = mean(others) if others else None
    return [*cells, in_domain, out_of_domain, float(run.summary["accuracy"])]


@dataclass
class RowData:
    """One table row with what is shown beside each cell (see Table.intervals, spreads, row_seeds)."""

    cells: list[Cell]
    intervals: list[Interval | None]
    spreads: list[float | None]
    seeds: int


def seed_mean(per_seed: list[list[Cell]]) -> tuple[list[Cell], list[float | None]]:
    """Column-wise mean over seeds of numeric values (None left out) and their sample standard
    deviation (only with two or more values); one seed's values are returned unchanged."""
    if len(per_seed) == 1:
        return list(per_seed[0]), [None] * len(per_seed[0])
    means, spreads = [], []
    for column in zip(*per_seed, strict=True):
        present = [float(value) for value in column if value is not None]
        means.append(mean(present) if present else None)
        spreads.append(stdev(present) if len(present) > 1 else None)
    return means, spreads


def missing_problem(runs: tuple[Run, ...]) -> str:
    return f"(missing: {runs[0].problem})"


def _matrix_row(
    label: str, runs: tuple[Run, ...], train_key: str, columns: list[str], axis: Axis, estimator: Estimator
) -> RowData:
    """[label, per-column accuracy..., in-domain, out-of-domain, overall, note] over `runs` (the row's
    seeds; the evaluated ones are averaged), with intervals resampling every seed's questions jointly."""
    width = len(columns) + 3
    evaluated = tuple(run for run in runs if run.summary is not None)
    if not evaluated:
        cells = [label] + [None] * width + [missing_problem(runs)]
        return RowData(cells, [None] * (width + 2), [None] * (width + 2), 0)
    values, spreads = seed_mean([_matrix_values(run, train_key, columns, axis) for run in evaluated])
    arms = [evaluated]
    intervals = [
        estimator.interval(estimator.group(arms, axis.name, column, label)) if value is not None else None
        for column, value in zip(columns, values, strict=False)
    ]
    in_domain = intervals[columns.index(train_key)] if train_key in columns else None
    others = [c for c in columns if c != train_key and all(c in _scores(run, axis) for run in evaluated)]
    out_of_domain = estimator.interval(estimator.mean_over_groups(arms, axis.name, others, label))
    overall = estimator.interval(estimator.overall(arms, label))
    intervals += [in_domain, out_of_domain if values[width - 2] is not None else None, overall]
    return RowData([label, *values, None], [None, *intervals, None], [None, *spreads, None], len(evaluated))


def table_from(rows: list[RowData], **fields) -> Table:
    return Table(
        rows=[row.cells for row in rows],
        intervals=[row.intervals for row in rows],
        spreads=[row.spreads for row in rows],
        row_seeds=[row.seeds for row in rows],
        **fields,
    )


def build_matrix(
    runs: list[Run],
    bases: list[BaseRow],
    axis: Axis,
    experiment: str,
    *,
    groups: list[SeedGroup] | None = None,
    estimator: Estimator | None = None,
) -> Table:
    """Rows: base model(s), then each trained row (a run, or a setting's seeds) by train key; columns:
    test keys present. groups: the trained rows (default: group_seeds(runs)); estimator: intervals
    (default: none)."""
    estimator = estimator or Estimator(None)
    groups = group_seeds(runs) if groups is None else groups
    columns = present_keys(runs, axis)
    first_runs = [group.run for group in groups]
    labels, sort_keys = _matrix_labels(first_runs, axis)
    ordered = sorted(groups, key=lambda group: sort_keys[group.run.path])
    rows, train_keys = [], []
    for base in bases:
        rows.append(_matrix_row(base.label, (base.run,), "all", columns, axis, estimator))
        train_keys.append("all")
    for group in ordered:
        train_key = axis.train_of(group.run)
        rows.append(_matrix_row(labels[group.run.path], group.runs, train_key, columns, axis, estimator))
        train_keys.append(train_key)
    table = table_from(
        rows,
        name=f"matrix_{axis.name}",
        title=f"{experiment}: accuracy (%) by train {axis.noun} (rows) and test {axis.noun} (columns)",
        columns=["train", *columns, "in-domain", "out-of-domain", "overall", "note"],
        headers=[
            "train \\ test",
            *(axis.display.get(c, c) for c in columns),
            "in-domain",
            "out-of-domain",
            "overall",
            "note",
        ],
        kinds=["text", *["percent"] * (len(columns) + 3), "text"],
        notes=_matrix_notes(axis),
        axis=columns,
        train_keys=train_keys,
    )
    table.notes += interval_notes(table, estimator, axis) + run_notes(runs, bases, groups)
    return drop_empty_note_column(table)


def _matrix_notes(axis: Axis) -> list[str]:
    return [
        f"in-domain: accuracy on the train {axis.noun}; out-of-domain: mean over the other test {axis.plural} "
        "present (over all of them for base and 'all' rows); overall: accuracy on the whole test set."
    ]


def interval_notes(table: Table, estimator: Estimator, axis: Axis | None = None) -> list[str]:
    """How the table's intervals and seed spreads were made, and pairing by common ids if it happened."""
    bootstrap = estimator.bootstrap
    multi_seed = any(seeds > 1 for seeds in table.row_seeds)
    notes = []
    if bootstrap is None:
        notes.append("no intervals: --resamples 0.")
    elif any(interval for row in table.intervals for interval in row):
        where = (
            f"a test column resamples that {axis.noun}'s questions, out-of-domain averages the other "
            f"{axis.plural}' resampled accuracies, "
            if axis is not None
            else ""
        )
        seeds = "; a row of several seeds resamples the same questions for every seed" if multi_seed else ""
        notes.append(
            f"[low, high]: 95% percentile bootstrap interval over test questions ({bootstrap.resamples} "
            f"resamples, resampling seed {bootstrap.seed}; --resamples, --seed): {where}overall resamples "
            f"within each modality{seeds}."
        )
    if multi_seed:
        notes.append("a ± s (k seeds): mean over the k seeds of a setting ± their sample standard deviation.")
    return notes + estimator.take_notes()


def run_notes(runs: list[Run], bases: list[BaseRow], groups: list[SeedGroup]) -> list[str]:
    """Folded base duplicates, missing summaries and missing predictions, said out loud."""
    notes = []
    for base in bases:
        if base.folded:
            folded = ", ".join(run.relative for run in base.folded)
            notes.append(
                f"{base.label}: {len(base.folded)} duplicate base-model run(s) folded ({folded}); "
                f"showing {base.run.relative}."
            )
    rows = [(base.run,) for base in bases] + [group.runs for group in groups]
    for members in rows:
        seeds = len(members) > 1
        evaluated = [run for run in members if run.summary is not None]
        for run in members:
            where = f"run dir {run.relative}" + (f" (seed {run.seed})" if seeds else "")
            if run.summary is None:
                fate = (
                    "the row's mean is over its other seeds" if evaluated else "its row is shown as missing"
                )
                notes.append(f"{where}: {run.problem} (failed or unfinished); {fate}.")
            elif run.questions is None and run.questions_problem:
                notes.append(f"{where}: {run.questions_problem}; its row has no intervals.")
    return notes


def drop_empty_note_column(table: Table) -> Table:
    if any(row[-1] for row in table.rows):
        return table
    for attr in ("columns", "headers", "kinds"):
        getattr(table, attr).pop()
    for row in [*table.rows, *table.intervals, *table.spreads]:
        row.pop()
    return table


# --------------------------------------------------------------------------------------------------
# Labels from overrides
# --------------------------------------------------------------------------------------------------


def override_labels(runs: list[Run], exclude: tuple[str, ...] = ()) -> dict[Path, str]:
    """Each run's overrides that differ across `runs`, e.g. "algo=sft prompt=think"; "" if none differ."""
    items = {run.path: override_items(run) for run in runs}
    keys = list(dict.fromkeys(key for run_items in items.values() for key in run_items))
    differing = [
        key
        for key in keys
        if key not in exclude and len({run_items.get(key) for run_items in items.values()}) > 1
    ]
    return {
        path: " ".join(f"{key}={run_items[key]}" for key in differing if key in run_items)
        for path, run_items in items.items()
    }


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _number(value: float, kind: str) -> str:
    if kind == "percent":
        return f"{100.0 * float(value):.1f}"
    if kind == "points":
        return f"{float(value):+.1f}"
    return f"{float(value):.1f}"


def format_cell(
    value: Cell,
    kind: str,
    interval: Interval | None = None,
    spread: float | None = None,
    seeds: int = 1,
) -> str:
    """One Markdown cell: percentages with one decimal, missing as an em dash; with a spread over
    seeds and an interval, `61.2 ± 2.1 (3 seeds) [55.0, 67.3]`; a difference (points) whose interval
    excludes 0 is starred, `+12.3* [+4.1, +20.5]`."""
    if value is None or value == "":
        return MISSING_MD if kind != "text" else ""
    if kind == "text":
        return str(value).replace("|", "\\|")
    text = str(int(value)) if kind == "int" else _number(value, kind)
    if kind == "points" and excludes_zero(interval):
        text += "*"
    if spread is not None:
        shown = 100.0 * spread if kind == "percent" else spread
        text += f" ± {shown:.1f}" + (f" ({seeds} seeds)" if seeds > 1 else "")
    if interval is not None:
        text += f" [{_number(interval[0], kind)}, {_number(interval[1], kind)}]"
    return text


def _extras(table: Table, i: int, j: int) -> tuple[Interval | None, float | None, int]:
    interval = table.intervals[i][j] if table.intervals else None
    spread = table.spreads[i][j] if table.spreads else None
    seeds = table.row_seeds[i] if table.row_seeds else 1
    return interval, spread, seeds


def to_markdown(table: Table) -> str:
    align = ["---" if kind == "text" else "---:" for kind in table.kinds]
    lines = [f"## {table.title}", "", "| " + " | ".join(table.headers) + " |", "|" + "|".join(align) + "|"]
    for i, row in enumerate(table.rows):
        cells = [
            format_cell(v, k, *_extras(table, i, j))
            for j, (v, k) in enumerate(zip(row, table.kinds, strict=True))
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if table.notes:
        lines += [""] + [f"- {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def csv_table(table: Table) -> tuple[list[str], list[list]]:
    """(header, rows) as CSV and W&B show a table: raw values (fractions, full precision; missing =
    None), then `<column>_ci_low`, `<column>_ci_high` for every column with an interval in some row,
    `<column>_excludes_0` for such columns of differences (points), then `seeds` and `<column>_sd`
    when some row averages several seeds."""
    width = len(table.columns)
    with_interval = [j for j in range(width) if any(row[j] for row in table.intervals)]
    differences = [j for j in with_interval if table.kinds[j] == "points"]
    multi_seed = any(seeds > 1 for seeds in table.row_seeds)
    with_spread = [j for j in range(width) if any(row[j] is not None for row in table.spreads)]
    header = list(table.columns)
    for j in with_interval:
        header += [f"{table.columns[j]}_ci_low", f"{table.columns[j]}_ci_high"]
    header += [f"{table.columns[j]}_excludes_0" for j in differences]
    if multi_seed:
        header += ["seeds"] + [f"{table.columns[j]}_sd" for j in with_spread]
    rows = []
    for i, row in enumerate(table.rows):
        out = list(row)
        for j in with_interval:
            interval = table.intervals[i][j]
            out += [None, None] if interval is None else list(interval)
        for j in differences:
            interval = table.intervals[i][j]
            out.append(None if interval is None else excludes_zero(interval))
        if multi_seed:
            out += [table.row_seeds[i]] + [table.spreads[i][j] for j in with_spread]
        rows.append(out)
    return header, rows


def write_csv(table: Table, path: Path) -> Path:
    """The table as csv_table gives it; missing cells empty."""
    header, rows = csv_table(table)
    return write_csv_rows(path, header, [["" if value is None else value for value in row] for row in rows])


def write_csv_rows(path: Path, header: list, rows: list[list]) -> Path:
    """A CSV file written whole or not at all (medr1.cache.write_file_atomically)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return write_file_atomically(path, buffer.getvalue())
