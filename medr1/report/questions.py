"""Per-question correctness of a run's test evaluation, read from `eval/predictions.jsonl`.

What the bootstrap resamples: each test question's id, modality, question type and whether the run
answered it correctly. `correct` is taken as recorded, unless `--parser` names a parser other than the
one the evaluation used: then every completion is re-read with it (medr1.grading.is_correct), as the
summary's accuracies are. Older files without the issue-16 fields (images, option_probs, confidence,
consistent) read the same: only id, modality, question_type and correct (or completion, answer and
options when re-read) are needed.

A bad file never raises: the reader returns a problem naming the file and the first bad line, and
the report shows that run's point estimates (from eval/summary.json) without intervals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medr1.data.names import canonical_modality, canonical_question_type

PREDICTIONS = Path("eval") / "predictions.jsonl"
AXES = ("modality", "question_type")  # the fields questions are grouped (and stratified) by
_CANONICAL = {"modality": canonical_modality, "question_type": canonical_question_type}
# A summary's accuracy is a float32 metric rounded to 6 decimals; predictions that disagree by more
# than this are from another evaluation (or edited), and intervals from them would not fit the table.
SUMMARY_TOLERANCE = 1e-5


@dataclass(frozen=True, eq=False)
class Questions:
    """One run's graded test questions, sorted by id (ids unique)."""

    ids: np.ndarray  # [n] str, sorted
    correct: np.ndarray  # [n] bool
    groups: dict[str, np.ndarray]  # "modality" | "question_type" -> [n] canonical group name

    @property
    def n(self) -> int:
        return len(self.ids)

    def group_names(self, axis: str) -> list[str]:
        return sorted(set(self.groups[axis].tolist()))

    def in_group(self, axis: str, group: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, correct) of the questions of one group, still sorted by id."""
        mask = self.groups[axis] == group
        return self.ids[mask], self.correct[mask]


def _canonical(axis: str, name: str) -> str:
    try:
        return _CANONICAL[axis](name)
    except KeyError:
        return name


Rows = list[tuple[int, dict]]  # (line number, parsed line) of predictions.jsonl, blank lines skipped


def read_rows(run_dir: Path) -> tuple[Rows | None, str | None]:
    """(rows, None), or (None, why not) naming the file and the first line that is not a JSON object."""
    path = run_dir / PREDICTIONS
    if not path.is_file():
        return None, f"no {PREDICTIONS.as_posix()}"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        return None, f"{PREDICTIONS.as_posix()} unreadable: {error}"
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            return None, f"{PREDICTIONS.as_posix()} line {number} is not JSON ({error.msg})"
        if not isinstance(row, dict):
            return None, f"{PREDICTIONS.as_posix()} line {number} is not a JSON object"
        rows.append((number, row))
    if not rows:
        return None, f"{PREDICTIONS.as_posix()} is empty"
    return rows, None


def _bad_line(rows: Rows, parser: str | None) -> str | None:
    """The first row lacking what `questions_from_rows` needs, naming its line."""
    for number, row in rows:
        for key in ("id", *AXES):
            if not isinstance(row.get(key), str | int) or isinstance(row.get(key), bool):
                return f"{PREDICTIONS.as_posix()} line {number} has no {key!r} string"
        if parser is None and not isinstance(row.get("correct"), bool):
            return f"{PREDICTIONS.as_posix()} line {number} has no true/false 'correct'"
    return None


def questions_from_rows(numbered: Rows, parser: str | None = None) -> tuple[Questions | None, str | None]:
    """(Questions, None) or (None, why not). parser: None = `correct` as recorded; a parser name =
    each completion re-read with it (rows then need completion and answer, and options for robust)."""
    problem = _bad_line(numbered, parser)
    if problem is not None:
        return None, problem
    rows = [row for _, row in numbered]
    if parser is None:
        correct = [row["correct"] for row in rows]
    else:
        from medr1.grading import is_correct  # imports torch: only when answers are re-read

        try:
            correct = [
                is_correct(parser, str(row["completion"]), str(row["answer"]), row.get("options"))
                for row in rows
            ]
        except (KeyError, ValueError, TypeError, AttributeError) as error:
            return None, f"{PREDICTIONS.as_posix()} cannot be re-read with the {parser} parser ({error})"
    ids = np.array([str(row["id"]) for row in rows])
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) < len(ids):
        repeated = unique[counts > 1]
        return None, (
            f"{PREDICTIONS.as_posix()} repeats question ids ({len(repeated)}, e.g. {repeated[0]!r}); "
            "resampling needs one row per question"
        )
    order = np.argsort(ids, kind="stable")
    groups = {axis: np.array([_canonical(axis, str(row[axis])) for row in rows])[order] for axis in AXES}
    return Questions(ids[order], np.array(correct, dtype=bool)[order], groups), None


def check_against_summary(questions: Questions, summary: dict) -> str | None:
    """Why the predictions cannot stand behind the summary's numbers (None when they agree)."""
    accuracy = float(questions.correct.mean())
    n = summary.get("n")
    if (isinstance(n, int) and n != questions.n) or abs(
        accuracy - float(summary["accuracy"])
    ) > SUMMARY_TOLERANCE:
        return (
            f"{PREDICTIONS.as_posix()} ({questions.n} questions, accuracy {accuracy:.6f}) does not match "
            f"eval/summary.json ({n} questions, accuracy {float(summary['accuracy']):.6f})"
        )
    return None
