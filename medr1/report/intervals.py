"""The report's 95% intervals, from each run's per-question correctness (medr1.report.questions).

Every interval is a percentile bootstrap over test questions with the fixed draws of
medr1.report.stats (`--resamples`, `--seed`). What each one resamples:

- a test column of a matrix (one modality or one question type): that group's questions;
- overall (matrices, comparison, `all` in cells.csv): within each modality, group sizes kept;
- in-domain: the train group's own column; out-of-domain: the mean over the other groups of the
  matrix, each group resampled within itself (modalities for the modality matrix, question types for
  the question-type matrix), the mean taken per resample;
- a row of several seeds: the same resampled questions for every seed, then the mean over seeds;
- a difference (Δ against the base row, a pair differing in one setting): both sides on the same
  resampled questions, difference per resample, in percentage points.

Resampling pairs questions by id. When runs resampled together were not tested on the same question
ids, each stratum keeps the ids common to all of them and a note says so; it never happens silently.
A run without usable predictions has no interval (its point estimates still come from its summary).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce

import numpy as np

from medr1.report.questions import Questions
from medr1.report.runs import Run
from medr1.report.stats import Bootstrap, percentile_interval, stratum_key

Interval = tuple[float, float]
OVERALL_AXIS = "modality"  # overall accuracy resamples within each modality


@dataclass
class Resampled:
    """One statistic resampled for several arms (an arm: the runs of one row, seeds averaged)."""

    samples: np.ndarray  # [resamples, arms]
    n: int  # questions resampled (common to every run involved)
    sizes: tuple[int, ...]  # each run's own number of questions in the strata involved


class Estimator:
    """Intervals of the report's cells; None everywhere when `bootstrap` is None (`--resamples 0`).

    Notes on pairing by common ids accumulate in `notes` until `take_notes()`.
    """

    def __init__(self, bootstrap: Bootstrap | None):
        self.bootstrap = bootstrap
        self.notes: list[str] = []

    def take_notes(self) -> list[str]:
        notes, self.notes = list(dict.fromkeys(self.notes)), []
        return notes

    # --- resampling ------------------------------------------------------------------------------

    def _arms(self, arms: Sequence[Sequence[Run]]) -> list[list[Questions]] | None:
        """The questions of every run of every arm; None when any run has none (or intervals are off)."""
        if self.bootstrap is None or not arms or any(not arm for arm in arms):
            return None
        questions = [[run.questions for run in arm] for arm in arms]
        return None if any(q is None for arm in questions for q in arm) else questions

    def _stratum_sums(self, arms: list[list[Questions]], axis: str, group: str):
        """([resamples, arms] correct answers drawn (an arm's seeds averaged), the n questions of `group`
        common to every run, each run's own n); the first is None when no question is common."""
        flat = [q for arm in arms for q in arm]
        members = [q.in_group(axis, group) for q in flat]
        common = reduce(np.intersect1d, [ids for ids, _ in members])
        sizes = tuple(len(ids) for ids, _ in members)
        if len(common) == 0:
            return None, 0, sizes
        correct = np.stack([ok[np.isin(ids, common, assume_unique=True)] for ids, ok in members], axis=1)
        sums = self.bootstrap.resample_sums(stratum_key(axis, group), correct)  # [R, runs]
        ends = np.cumsum([len(arm) for arm in arms])  # arm a owns columns ends[a-1]:ends[a]
        per_arm = np.stack(
            [sums[:, end - len(arm) : end].mean(axis=1) for arm, end in zip(arms, ends, strict=True)], axis=1
        )
        return per_arm, len(common), sizes

    def _note_pairing(self, what: str, n: int, sizes: tuple[int, ...]) -> None:
        if any(size != n for size in sizes):
            self.notes.append(
                f"{what}: the runs resampled together were tested on different question ids "
                f"({', '.join(map(str, sorted(set(sizes))))} questions); the interval uses the {n} they share, "
                "the number shown each run's own questions."
            )

    def _group(self, questions: list[list[Questions]], axis: str, group: str) -> Resampled | None:
        sums, n, sizes = self._stratum_sums(questions, axis, group)
        return None if sums is None else Resampled(sums / n, n, sizes)

    def group(self, arms: Sequence[Sequence[Run]], axis: str, group: str, what: str) -> Resampled | None:
        """Accuracy on one group's questions (`what` names the cell in a pairing note)."""
        questions = self._arms(arms)
        resampled = None if questions is None else self._group(questions, axis, group)
        if resampled is not None:
            self._note_pairing(what, resampled.n, resampled.sizes)
        return resampled

    def overall(self, arms: Sequence[Sequence[Run]], what: str) -> Resampled | None:
        """Accuracy on the whole test set, resampled within each modality (group sizes kept)."""
        questions = self._arms(arms)
        if questions is None:
            return None
        groups = sorted({g for arm in questions for q in arm for g in q.group_names(OVERALL_AXIS)})
        total, n = 0.0, 0
        for group in groups:
            sums, common, _ = self._stratum_sums(questions, OVERALL_AXIS, group)
            if sums is not None:
                total, n = total + sums, n + common
        if n == 0:
            return None
        sizes = tuple(q.n for arm in questions for q in arm)
        self._note_pairing(what, n, sizes)
        return Resampled(total / n, n, sizes)

    def mean_over_groups(
        self, arms: Sequence[Sequence[Run]], axis: str, groups: Sequence[str], what: str
    ) -> Resampled | None:
        """The mean of the groups' accuracies (out-of-domain), each group resampled within itself and
        the mean taken per resample; None unless every group has questions common to every run."""
        questions = self._arms(arms)
        if questions is None or not groups:
            return None
        parts = [self._group(questions, axis, group) for group in groups]
        if any(part is None for part in parts):
            return None
        n = sum(part.n for part in parts)
        sizes = tuple(np.sum([part.sizes for part in parts], axis=0).tolist())
        self._note_pairing(what, n, sizes)
        return Resampled(np.mean([part.samples for part in parts], axis=0), n, sizes)

    # --- intervals -------------------------------------------------------------------------------

    @staticmethod
    def interval(resampled: Resampled | None, arm: int = 0) -> Interval | None:
        """The 95% interval of one arm's resampled statistic (a fraction)."""
        return None if resampled is None else percentile_interval(resampled.samples[:, arm])

    @staticmethod
    def difference(resampled: Resampled | None) -> Interval | None:
        """The 95% interval of arm 1 minus arm 0, in percentage points."""
        if resampled is None:
            return None
        return percentile_interval(100.0 * (resampled.samples[:, 1] - resampled.samples[:, 0]))
