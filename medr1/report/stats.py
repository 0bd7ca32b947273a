"""Percentile bootstrap over test questions, with random draws fixed by (seed, stratum, size).

The scheme, exactly (what an independent check recomputes from eval/predictions.jsonl):

- A stratum is one group of test questions, named by a key such as `modality=ct` or
  `question_type=lesion_grading`, its n questions sorted by question id.
- Its draws are `np.random.default_rng([seed, zlib.crc32(key.encode())]).integers(0, n,
  size=(resamples, n))`: row r holds the indices of resample r into the sorted questions.
  The draws depend on (seed, key, n) only, so every run tested on the same questions of a stratum
  gets the same resampled questions: comparisons between runs are paired by construction, and the
  seeds of a multi-seed row are resampled jointly.
- A stratum's resampled accuracy r is `correct[draws[r]].mean()`. Statistics over several strata
  combine each stratum's own draws: the overall accuracy is (sum of correct draws over strata) /
  (sum of stratum sizes), group sizes kept; a mean over groups averages the per-stratum accuracies.
- The 95% interval of a statistic is `np.quantile(samples, [0.025, 0.975])` (numpy's default linear
  interpolation) over its `resamples` values.

Same inputs, same seed and resamples => the same bounds to the last bit. Draws are made in chunks of
rows (numpy's generator yields the same numbers either way) and kept as counts (how often each
question is drawn in each resample), so a statistic is one matrix product.
"""

from __future__ import annotations

import zlib

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
LEVEL = 0.95
_CHUNK_ELEMENTS = 1 << 22  # indices drawn at once: bounds memory for large strata
_EXACT_FLOAT32 = 1 << 24  # float32 adds integers exactly below this


def stratum_key(axis: str, group: str) -> str:
    """The key a stratum's draws are seeded with, e.g. "modality=ct"."""
    return f"{axis}={group}"


def stratum_rng(seed: int, key: str) -> np.random.Generator:
    """The generator of one stratum's draws: independent of every other stratum and of run order."""
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """(low, high): the central `level` percentile interval of bootstrap `samples` [resamples]."""
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(np.asarray(samples, dtype=np.float64), [tail, 1.0 - tail])
    return float(low), float(high)


def excludes_zero(interval: tuple[float, float] | None) -> bool:
    """Whether an interval lies strictly on one side of 0 (a difference the resamples agree on)."""
    return interval is not None and (interval[0] > 0.0 or interval[1] < 0.0)


class Bootstrap:
    """Resamples strata of test questions with the documented fixed draws.

    resamples: bootstrap replicates per statistic (`--resamples`); seed: the resampling seed (`--seed`).
    Counts are cached per (key, n): every run and every statistic over the same stratum reuses them.
    """

    def __init__(self, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED):
        if resamples < 1:
            raise ValueError(f"resamples must be at least 1, got {resamples}")
        self.resamples = int(resamples)
        self.seed = int(seed)
        self._counts: dict[tuple[str, int], np.ndarray] = {}

    def counts(self, key: str, n: int) -> np.ndarray:
        """[resamples, n] float32: how often resample r draws the stratum's question i (sorted by id)."""
        if n < 1:
            raise ValueError(f"stratum {key} has no questions to resample")
        if n >= _EXACT_FLOAT32:
            raise ValueError(f"stratum {key} has {n} questions; counts are exact only below {_EXACT_FLOAT32}")
        cached = self._counts.get((key, n))
        if cached is not None:
            return cached
        rng = stratum_rng(self.seed, key)
        counts = np.empty((self.resamples, n), dtype=np.float32)
        rows = max(1, _CHUNK_ELEMENTS // n)
        for start in range(0, self.resamples, rows):
            stop = min(start + rows, self.resamples)
            draws = rng.integers(0, n, size=(stop - start, n))  # [rows, n] indices
            offsets = draws + n * np.arange(stop - start)[:, None]
            counts[start:stop] = np.bincount(offsets.ravel(), minlength=(stop - start) * n).reshape(-1, n)
        self._counts[key, n] = counts
        return counts

    def resample_sums(self, key: str, correct: np.ndarray) -> np.ndarray:
        """[resamples, m] number of correct answers drawn, for `correct` [n, m] (0/1, one column per
        evaluation of the same n questions, rows sorted by question id); exact integers as float64."""
        correct = np.asarray(correct, dtype=np.float32)
        if correct.ndim == 1:
            correct = correct[:, None]
        return (self.counts(key, correct.shape[0]) @ correct).astype(np.float64)
