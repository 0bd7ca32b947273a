"""The report's tables: train x test generalization matrices and the per-run comparison.

A table is plain data (rows of floats, None = missing) plus how to show each column; Markdown,
CSV, heatmap and W&B all render the same rows. Accuracies are fractions in the data and in CSV,
percentages with one decimal in Markdown.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

from medr1.data.names import (
    MODALITIES,
    MODALITY_DISPLAY,
    QUESTION_TYPES,
    canonical_modality,
    canonical_question_type,
)
from medr1.report.runs import BaseRow, Run, base_for, canonical_or_raw, natural_key, override_items

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
    """Row label ("ct", "grpo: ct", "sft prompt=nothink: mri") and sort key of each trained run."""
    fields = [(name, get) for name, get in _label_fields(axis) if len({get(run) for run in trained}) > 1]
    labels, sort_keys = {}, {}
    for run in trained:
        values = [(name, get(run)) for name, get in fields]
        prefix = " ".join(str(value) if name == "algo" else f"{name}={value}" for name, value in values)
        train = axis.train_of(run)
        labels[run.path] = f"{prefix}: {train}" if prefix else train
        sort_keys[run.path] = (tuple(str(v) for _, v in values), axis.rank(train), natural_key(run.relative))
    return _disambiguate(labels, trained, override_labels(trained, exclude=(axis.name,))), sort_keys


def _disambiguate(labels: dict[Path, str], runs: list[Run], details: dict[Path, str]) -> dict[Path, str]:
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


def _matrix_row(label: str, run: Run, train_key: str, columns: list[str], axis: Axis) -> list[Cell]:
    """[label, per-column accuracy..., in-domain, out-of-domain, overall, note]."""
    if run.summary is None:
        return [label] + [None] * (len(columns) + 3) + [f"(missing: {run.problem})"]
    scores = _scores(run, axis)
    cells = [scores.get(column) for column in columns]
    in_domain = scores.get(train_key) if train_key in columns else None
    others = [scores[c] for c in columns if c != train_key and c in scores]
    out_of_domain = mean(others) if others else None
    return [label, *cells, in_domain, out_of_domain, float(run.summary["accuracy"]), None]


def build_matrix(runs: list[Run], bases: list[BaseRow], axis: Axis, experiment: str) -> Table:
    """Rows: base model(s), then each trained run by train key; columns: test keys present."""
    columns = present_keys(runs, axis)
    trained = [run for run in runs if not run.is_base]
    labels, sort_keys = _matrix_labels(trained, axis)
    ordered = sorted(trained, key=lambda run: sort_keys[run.path])
    rows, train_keys = [], []
    for base in bases:
        rows.append(_matrix_row(base.label, base.run, "all", columns, axis))
        train_keys.append("all")
    for run in ordered:
        rows.append(_matrix_row(labels[run.path], run, axis.train_of(run), columns, axis))
        train_keys.append(axis.train_of(run))
    table = Table(
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
        rows=rows,
        notes=_matrix_notes(axis) + _run_notes(runs, bases),
        axis=columns,
        train_keys=train_keys,
    )
    return _drop_empty_note_column(table)


def _matrix_notes(axis: Axis) -> list[str]:
    return [
        f"in-domain: accuracy on the train {axis.noun}; out-of-domain: mean over the other test {axis.plural} "
        "present (over all of them for base and 'all' rows); overall: accuracy on the whole test set."
    ]


def _run_notes(runs: list[Run], bases: list[BaseRow]) -> list[str]:
    """Folded base duplicates and missing summaries, said out loud."""
    notes = []
    for base in bases:
        if base.folded:
            folded = ", ".join(run.relative for run in base.folded)
            notes.append(
                f"{base.label}: {len(base.folded)} duplicate base-model run(s) folded ({folded}); "
                f"showing {base.run.relative}."
            )
    shown = {base.run.path for base in bases} | {run.path for run in runs if not run.is_base}
    for run in runs:
        if run.summary is None and run.path in shown:
            notes.append(
                f"run dir {run.relative}: {run.problem} (failed or unfinished); its row is shown as missing."
            )
    return notes


def _drop_empty_note_column(table: Table) -> Table:
    if any(row[-1] for row in table.rows):
        return table
    for attr in ("columns", "headers", "kinds"):
        getattr(table, attr).pop()
    for row in table.rows:
        row.pop()
    return table


# --------------------------------------------------------------------------------------------------
# Comparison: one row per run
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


def _comparison_labels(trained: list[Run]) -> dict[Path, str]:
    """Label each trained run by the overrides that differ across trained runs."""
    differing = override_labels(trained)
    labels = {run.path: differing[run.path] or _trained_on(run) for run in trained}
    return _disambiguate(labels, trained, {})


def _trained_on(run: Run) -> str:
    """ "grpo on mri", "sft on all/lesion_grading": a run's label when no override tells it apart."""
    data = (
        run.train_modality
        if run.train_question_type == "all"
        else f"{run.train_modality}/{run.train_question_type}"
    )
    return f"{run.algo or 'run'} on {data}"


def _comparison_row(label: str, run: Run, base: BaseRow | None) -> list[Cell]:
    """[label, accuracy, format rate, reasoning length, n, delta (points), run dir, note]."""
    if run.summary is None:
        return [label, None, None, None, None, None, run.relative, f"(missing: {run.problem})"]
    summary = run.summary
    accuracy = float(summary["accuracy"])
    delta = None
    if base is not None and base.run is not run and base.run.summary is not None:
        delta = 100.0 * (accuracy - float(base.run.summary["accuracy"]))
    return [
        label,
        accuracy,
        summary.get("format_rate"),
        summary.get("reasoning_length"),
        summary.get("n"),
        delta,
        run.relative,
        None,
    ]


def build_comparison(runs: list[Run], bases: list[BaseRow], experiment: str) -> Table:
    """Every run's headline numbers, base row(s) first, then trained runs in path order."""
    trained = [run for run in runs if not run.is_base]
    labels = _comparison_labels(trained)
    rows = [_comparison_row(base.label, base.run, None) for base in bases]
    rows += [_comparison_row(labels[run.path], run, base_for(run, bases)) for run in trained]
    notes = ["Δ accuracy: percentage points over the base model's accuracy (blank without a base run)."]
    table = Table(
        name="comparison",
        title=f"{experiment}: runs compared",
        columns=[
            "run",
            "accuracy",
            "format_rate",
            "reasoning_length",
            "n",
            "delta_accuracy_pp",
            "run_dir",
            "note",
        ],
        headers=[
            "run",
            "accuracy (%)",
            "format rate (%)",
            "reasoning length",
            "n",
            "Δ accuracy (pp)",
            "run dir",
            "note",
        ],
        kinds=["text", "percent", "percent", "float", "int", "points", "text", "text"],
        rows=rows,
        notes=notes + _run_notes(runs, bases),
    )
    return _drop_empty_note_column(table)


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def format_cell(value: Cell, kind: str) -> str:
    """One Markdown cell: percentages with one decimal, missing as an em dash."""
    if value is None or value == "":
        return MISSING_MD if kind != "text" else ""
    if kind == "percent":
        return f"{100.0 * float(value):.1f}"
    if kind == "points":
        return f"{float(value):+.1f}"
    if kind == "float":
        return f"{float(value):.1f}"
    if kind == "int":
        return str(int(value))
    return str(value).replace("|", "\\|")


def to_markdown(table: Table) -> str:
    align = ["---" if kind == "text" else "---:" for kind in table.kinds]
    lines = [f"## {table.title}", "", "| " + " | ".join(table.headers) + " |", "|" + "|".join(align) + "|"]
    for row in table.rows:
        lines.append(
            "| " + " | ".join(format_cell(v, k) for v, k in zip(row, table.kinds, strict=True)) + " |"
        )
    if table.notes:
        lines += [""] + [f"- {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def write_csv(table: Table, path: Path) -> Path:
    """Raw values (fractions, full precision); missing cells empty."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(table.columns)
        for row in table.rows:
            writer.writerow(["" if value is None else value for value in row])
    return path
