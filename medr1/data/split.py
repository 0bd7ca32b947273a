"""Med-R1's split protocol: a seeded random ~80/20 train/test split at the QA level within each group.

Med-R1 splits OmniMedVQA once per modality and, independently, once per question type; the group is the
modality or the question type of each question. The split here depends only on the records, the
group key, the fraction and the seed: records are sorted by id first, and each group draws from its own
random stream, so neither the order of files on disk nor the other groups change a group's split.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable

import numpy as np

from medr1.data.records import VQARecord

GroupKey = str | Callable[[VQARecord], str]


def split_by_group(
    records: Iterable[VQARecord], key: GroupKey, test_fraction: float, seed: int
) -> tuple[list[VQARecord], list[VQARecord]]:
    """Split `records` into (train, test), drawing ~`test_fraction` of every group for test.

    `key` is a record attribute name ("modality", "question_type") or a function of a record. Every
    group with at least 2 records gets at least 1 test and 1 train record; a group of 1 stays in train.
    Both lists come back ordered by group, then by id.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    group_of = (lambda record: getattr(record, key)) if isinstance(key, str) else key
    groups: dict[str, list[VQARecord]] = defaultdict(list)
    for record in sorted(records, key=lambda record: record.id):
        groups[str(group_of(record))].append(record)

    train: list[VQARecord] = []
    test: list[VQARecord] = []
    for name in sorted(groups):
        members = groups[name]
        test_positions = set(_test_positions(len(members), test_fraction, _group_rng(seed, name)))
        for position, record in enumerate(members):
            (test if position in test_positions else train).append(record)
    return train, test


def held_out_size(group_size: int, test_fraction: float) -> int:
    """How many of a group's records go to test: the rounded fraction, kept within [1, size - 1]."""
    if group_size < 2:
        return 0
    return min(max(round(group_size * test_fraction), 1), group_size - 1)


def _test_positions(group_size: int, test_fraction: float, rng: np.random.Generator) -> list[int]:
    return rng.permutation(group_size)[: held_out_size(group_size, test_fraction)].tolist()


def _group_rng(seed: int, group: str) -> np.random.Generator:
    # crc32, not hash(): Python salts str hashes per process, which would make splits irreproducible.
    return np.random.default_rng([int(seed), zlib.crc32(group.encode("utf-8"))])
