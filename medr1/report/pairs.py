"""Pairs of rows that differ in one setting (algo=sft vs algo=grpo, prompt=think vs prompt=nothink,
modality=ct vs modality=mri), with the paired difference of their overall accuracy.

Rows are the comparison's: base rows and trained rows (a setting's seeds together). Two trained rows
pair when their overrides differ in exactly one key once `seed` is set aside (a key set in one and
absent in the other counts as a difference); two base rows pair when the overrides their evaluation
depends on (runs.TRAIN_ONLY_KEYS set aside) differ in one key. A trained row against its base row is
the comparison's Δ column, not repeated here. The difference is second minus first (the order of the
comparison table), in percentage points; its interval resamples the same questions for both rows
(within each modality, every seed of a row jointly), so it is paired.
"""

from __future__ import annotations

from itertools import combinations

from medr1.report.comparison import accuracy_of, comparison_labels
from medr1.report.intervals import Estimator
from medr1.report.runs import TRAIN_ONLY_KEYS, BaseRow, Run, SeedGroup, override_items
from medr1.report.tables import RowData, Table, drop_empty_note_column, interval_notes, table_from

TITLE = "Pairs that differ in one setting"
UNSET = "(unset)"


def _setting(runs: tuple[Run, ...], base: bool) -> dict[str, str]:
    """The overrides a row is defined by: seed aside; for a base row, training-only keys aside."""
    items = override_items(runs[0])
    if base:
        return {k: v for k, v in items.items() if k.lstrip("~").split(".")[0] not in TRAIN_ONLY_KEYS}
    return {k: v for k, v in items.items() if k != "seed"}


def _one_difference(first: dict[str, str], second: dict[str, str]) -> str | None:
    """The single key two settings differ in, or None when they differ in none or several."""
    keys = [key for key in dict.fromkeys([*first, *second]) if first.get(key) != second.get(key)]
    return keys[0] if len(keys) == 1 else None


def _pair_row(
    key: str, first: tuple[str, tuple[Run, ...]], second: tuple[str, tuple[Run, ...]], estimator: Estimator
) -> RowData:
    """[setting, first, second, accuracy first, accuracy second, Δ pp, n common, run dirs, note]."""
    (first_label, first_runs), (second_label, second_runs) = first, second
    accuracies = [accuracy_of(first_runs), accuracy_of(second_runs)]
    arms = [tuple(run for run in runs if run.summary is not None) for runs in (first_runs, second_runs)]
    delta = 100.0 * (accuracies[1] - accuracies[0]) if None not in accuracies else None
    resampled = estimator.overall(arms, f"{first_label} vs {second_label}") if delta is not None else None
    note = None
    if delta is not None and resampled is None and estimator.bootstrap is not None:
        lacking = [run.relative for arm in arms for run in arm if run.questions is None]
        note = f"no interval: run dir {', '.join(lacking)} has no usable eval/predictions.jsonl"
    cells = [
        key,
        first_label,
        second_label,
        *accuracies,
        delta,
        resampled.n if resampled is not None else None,
        ", ".join(run.relative for run in first_runs),
        ", ".join(run.relative for run in second_runs),
        note,
    ]
    intervals = [None] * len(cells)
    if resampled is not None:
        intervals[3] = estimator.interval(resampled, 0)
        intervals[4] = estimator.interval(resampled, 1)
        intervals[5] = estimator.difference(resampled)
    return RowData(cells, intervals, [None] * len(cells), 0)


def build_pairs(bases: list[BaseRow], groups: list[SeedGroup], estimator: Estimator) -> Table | None:
    """Every pair of rows that differ in one setting, in comparison order; None when there is none."""
    labels = comparison_labels(bases, groups)
    entries = [(label, (base.run,), True) for label, base in zip(labels, bases, strict=False)]
    entries += [(label, group.runs, False) for label, group in zip(labels[len(bases) :], groups, strict=True)]
    rows = []
    for (label_a, runs_a, base_a), (label_b, runs_b, base_b) in combinations(entries, 2):
        if base_a != base_b or accuracy_of(runs_a) is None or accuracy_of(runs_b) is None:
            continue  # a trained row's base is its Δ; a row without evaluation has no difference
        key = _one_difference(_setting(runs_a, base_a), _setting(runs_b, base_b))
        if key is not None:
            rows.append(_pair_row(key, (label_a, runs_a), (label_b, runs_b), estimator))
    if not rows:
        return None
    table = table_from(
        rows,
        name="pairs",
        title=TITLE,
        columns=[
            "setting",
            "first",
            "second",
            "accuracy_first",
            "accuracy_second",
            "delta_pp",
            "n",
            "first_run_dir",
            "second_run_dir",
            "note",
        ],
        headers=[
            "setting",
            "first",
            "second",
            "first accuracy (%)",
            "second accuracy (%)",
            "Δ second − first (pp)",
            "n common",
            "first run dir",
            "second run dir",
            "note",
        ],
        kinds=["text", "text", "text", "percent", "percent", "points", "int", "text", "text", "text"],
        notes=[
            "rows whose overrides differ in exactly one setting (seed aside). Δ: second "
            "minus first in percentage points, paired (both rows resampled on the same questions, "
            "within each modality); n common: the questions resampled; * marks an interval that excludes 0."
        ],
    )
    table.row_seeds = []  # a pair row is two rows: the comparison shows each one's seeds
    table.spreads = []
    table.notes += interval_notes(table, estimator)
    return drop_empty_note_column(table)


def no_pairs_markdown() -> str:
    return (
        f"## {TITLE}\n\nNone: no two rows differ in exactly one override (seed aside; a trained row "
        "against its base is the Δ column above).\n"
    )
