"""The comparison table: one row per base evaluation and per trained setting (its seeds averaged).

Columns: run, accuracy, format_rate, reasoning_length, n, delta_accuracy_pp (percentage points over the
row's base, as before), run_dir (a seed row's run dirs joined by ", "), note. accuracy carries the
overall interval (resampled within each modality), delta_accuracy_pp the paired interval (row and base
resampled on the same questions), starred in Markdown and `delta_accuracy_pp_excludes_0` in CSV when
it excludes 0 (medr1.report.intervals).
"""

from __future__ import annotations

from pathlib import Path
from statistics import mean

from medr1.report.intervals import Estimator
from medr1.report.runs import BaseRow, Run, SeedGroup, base_for, group_seeds
from medr1.report.tables import (
    RowData,
    Table,
    disambiguate,
    drop_empty_note_column,
    interval_notes,
    missing_problem,
    override_labels,
    run_notes,
    seed_mean,
    table_from,
)


def _comparison_labels(trained: list[Run]) -> dict[Path, str]:
    """Label each trained row (by its first run) with the overrides that differ across trained rows."""
    differing = override_labels(trained, exclude=("seed",))
    labels = {run.path: differing[run.path] or _trained_on(run) for run in trained}
    return disambiguate(labels, trained, {})


def comparison_labels(bases: list[BaseRow], groups: list[SeedGroup]) -> list[str]:
    """The comparison's row labels: base rows, then trained rows in order."""
    labels = _comparison_labels([group.run for group in groups])
    return [base.label for base in bases] + [labels[group.run.path] for group in groups]


def _trained_on(run: Run) -> str:
    """ "grpo on mri", "sft on all/lesion_grading": a run's label when no override tells it apart."""
    data = (
        run.train_modality
        if run.train_question_type == "all"
        else f"{run.train_modality}/{run.train_question_type}"
    )
    return f"{run.algo or 'run'} on {data}"


def accuracy_of(runs: tuple[Run, ...]) -> float | None:
    """A row's accuracy: the mean over its evaluated seeds (one run: its own)."""
    values = [float(run.summary["accuracy"]) for run in runs if run.summary is not None]
    return (values[0] if len(values) == 1 else mean(values)) if values else None


def _comparison_row(label: str, runs: tuple[Run, ...], base: BaseRow | None, estimator: Estimator) -> RowData:
    """[label, accuracy, format rate, reasoning length, n, delta (points), run dir(s), note]; a row of
    several seeds shows their means (n when every seed has the same) and their run dirs joined by ", "."""
    run_dirs = ", ".join(run.relative for run in runs)
    evaluated = tuple(run for run in runs if run.summary is not None)
    if not evaluated:
        cells = [label, None, None, None, None, None, run_dirs, missing_problem(runs)]
        return RowData(cells, [None] * 8, [None] * 8, 0)
    per_seed = [
        [float(run.summary["accuracy"]), run.summary.get("format_rate"), run.summary.get("reasoning_length")]
        for run in evaluated
    ]
    (accuracy, format_rate, reasoning_length), spreads = seed_mean(per_seed)
    sizes = {run.summary.get("n") for run in evaluated}
    n = sizes.pop() if len(sizes) == 1 else None
    arm = evaluated
    delta, delta_interval = None, None
    if base is not None and all(run is not base.run for run in runs) and base.run.summary is not None:
        delta = 100.0 * (accuracy - float(base.run.summary["accuracy"]))
        paired = estimator.overall([(base.run,), arm], f"{label} against {base.label}")
        delta_interval = estimator.difference(paired)
    intervals = [None, estimator.interval(estimator.overall([arm], label)), None, None, None]
    intervals += [delta_interval, None, None]
    cells = [label, accuracy, format_rate, reasoning_length, n, delta, run_dirs, None]
    return RowData(cells, intervals, [None, *spreads, None, None, None, None], len(evaluated))


def build_comparison(
    runs: list[Run],
    bases: list[BaseRow],
    experiment: str,
    *,
    groups: list[SeedGroup] | None = None,
    estimator: Estimator | None = None,
) -> Table:
    """Every row's headline numbers, base row(s) first, then trained rows (runs, or a setting's seeds)
    in path order. groups: the trained rows (default: group_seeds(runs)); estimator: intervals."""
    estimator = estimator or Estimator(None)
    groups = group_seeds(runs) if groups is None else groups
    labels = comparison_labels(bases, groups)
    rows = [
        _comparison_row(label, (base.run,), None, estimator)
        for label, base in zip(labels, bases, strict=False)
    ]
    rows += [
        _comparison_row(label, group.runs, base_for(group.run, bases), estimator)
        for label, group in zip(labels[len(bases) :], groups, strict=True)
    ]
    notes = [
        "Δ accuracy: percentage points over the base model's accuracy (blank without a base run); its "
        "interval is paired (the row and its base resampled on the same questions) and * marks one "
        "that excludes 0."
    ]
    table = table_from(
        rows,
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
        notes=notes,
    )
    table.notes += interval_notes(table, estimator) + run_notes(runs, bases, groups)
    return drop_empty_note_column(table)
