"""cells.csv: every accuracy of every evaluated run in long form, so any number can be traced.

One row per (run dir, group), for every run dir whose evaluation can be read (folded base duplicates
and each seed included; a multi-seed mean is not a cell). Groups: `all` (the whole test set), then
each modality, then each question type the run's predictions hold (canonical order). Columns:

  run_dir, group, accuracy, n, ci_low, ci_high, axis, correct, seed, mode, note

accuracy is the fraction of the group's questions answered correctly in eval/predictions.jsonl
(`correct` as recorded, or re-read with --parser), n the number of questions, correct the count;
ci_low, ci_high its 95% bootstrap interval (medr1.report.intervals: `all` resamples within each
modality, a group within itself); axis is all | modality | question_type. A run without usable
predictions has its summary's numbers (n only for `all`), blank intervals and the reason in note.
"""

from __future__ import annotations

from pathlib import Path

from medr1.report.intervals import Estimator
from medr1.report.runs import Run
from medr1.report.tables import MODALITY_AXIS, QUESTION_TYPE_AXIS, write_csv_rows

CELL_COLUMNS = [
    "run_dir",
    "group",
    "accuracy",
    "n",
    "ci_low",
    "ci_high",
    "axis",
    "correct",
    "seed",
    "mode",
    "note",
]
ALL = "all"


def _cell(run: Run, group: str, axis: str, accuracy, n, correct, interval, note=None) -> dict:
    low, high = interval if interval is not None else (None, None)
    return {
        "run_dir": run.relative,
        "group": group,
        "accuracy": accuracy,
        "n": n,
        "ci_low": low,
        "ci_high": high,
        "axis": axis,
        "correct": correct,
        "seed": run.seed,
        "mode": run.mode,
        "note": note,
    }


def _from_predictions(run: Run, estimator: Estimator) -> list[dict]:
    questions, arms = run.questions, [(run,)]
    note = None if estimator.bootstrap is not None else "no intervals: --resamples 0"
    overall = estimator.interval(estimator.overall(arms, run.relative))
    correct = int(questions.correct.sum())
    cells = [_cell(run, ALL, ALL, correct / questions.n, questions.n, correct, overall, note)]
    for axis in (MODALITY_AXIS, QUESTION_TYPE_AXIS):
        for group in sorted(questions.group_names(axis.name), key=axis.rank):
            _, answers = questions.in_group(axis.name, group)
            interval = estimator.interval(estimator.group(arms, axis.name, group, run.relative))
            hits = int(answers.sum())
            cells.append(
                _cell(run, group, axis.name, hits / len(answers), len(answers), hits, interval, note)
            )
    return cells


def _from_summary(run: Run) -> list[dict]:
    summary, note = run.summary, run.questions_problem
    n = summary.get("n")
    cells = [_cell(run, ALL, ALL, float(summary["accuracy"]), n, None, None, note)]
    for axis in (MODALITY_AXIS, QUESTION_TYPE_AXIS):
        scores = {
            axis.canonical_or_raw(key): value
            for key, value in (summary.get(axis.summary_key) or {}).items()
            if value is not None
        }
        for group in sorted(scores, key=axis.rank):
            cells.append(_cell(run, group, axis.name, float(scores[group]), None, None, None, note))
    return cells


def build_cells(runs: list[Run], estimator: Estimator) -> list[dict]:
    """The cells.csv rows (dicts keyed by CELL_COLUMNS; None = blank), runs in path order."""
    cells = []
    for run in runs:
        if run.summary is None:
            continue
        cells += _from_predictions(run, estimator) if run.questions is not None else _from_summary(run)
    return cells


def write_cells(cells: list[dict], path: Path) -> Path:
    rows = [["" if cell[column] is None else cell[column] for column in CELL_COLUMNS] for cell in cells]
    return write_csv_rows(path, CELL_COLUMNS, rows)
