"""DAPO's dynamic sampling, the parts that are plain tensor and list work.

A group (one prompt's G completions) whose rewards are all equal has zero advantage: it adds nothing to
the policy gradient and only dilutes the batch. With `algo.dynamic_sampling` the GRPO module
(medr1.rl.module) drops such groups after a rollout, samples fresh prompts until it again holds B
groups with signal or `algo.max_resample` extra rounds are spent, and trains on the first B kept.
Here: which groups have signal, how many prompts the next round draws, and the kept groups' rows of
several rollouts gathered into one.

Departure from DAPO (Yu et al. 2025): DAPO draws whole batches until enough groups are kept; a round
here draws about as many prompts as it is expected to need from this step's keep rate so far.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from medr1.rl.advantages import zero_variance_fraction
from medr1.rl.rewards import RewardOutput


def groups_with_signal(total: Tensor, group_size: int) -> list[bool]:
    """Per prompt, whether its G rewards differ (the complement of zero_variance_fraction's test)."""
    return [zero_variance_fraction(rewards, group_size) < 1.0 for rewards in total.split(group_size)]


def draw_size(batch_size: int, kept: int, sampled: int) -> int:
    """Prompts the next round draws: enough to fill the batch at this step's keep rate so far
    (kept / sampled), at least one and at most a batch. A rank whose batch is already full still
    draws one: every rank runs the same rounds (a sharded model's forwards are collective)."""
    missing = batch_size - kept
    if missing <= 0:
        return 1
    if kept == 0:
        return batch_size
    return max(1, min(batch_size, math.ceil(missing * sampled / kept)))


@dataclass
class SampledGroups:
    """One round's rollout rows, and which of its prompts are kept."""

    ids: Tensor  # [b*G, T] completion tokens
    mask: Tensor  # [b*G, T]
    texts: list[str]  # [b*G]
    rewards: RewardOutput  # [b*G]
    kept: list[int]  # prompt indices within the round, in order


def gather_kept(rounds: list[SampledGroups], group_size: int, limit: int, pad_id: int):
    """The first `limit` kept groups of `rounds`, in round order, as one rollout's rows:
    (ids [n*G, T], mask [n*G, T], texts [n*G], RewardOutput [n*G]), T the longest kept completion."""
    rows: list[tuple[SampledGroups, int]] = [
        (sampled, b * group_size + g) for sampled in rounds for b in sampled.kept for g in range(group_size)
    ][: limit * group_size]
    width = max([int(sampled.mask[row].sum()) for sampled, row in rows], default=0)
    first = rounds[0]
    ids = torch.full((len(rows), width), pad_id, dtype=first.ids.dtype, device=first.ids.device)
    mask = torch.zeros((len(rows), width), dtype=first.mask.dtype, device=first.mask.device)
    for out, (sampled, row) in enumerate(rows):
        length = min(width, sampled.ids.shape[1])
        ids[out, :length] = sampled.ids[row, :length]
        mask[out, :length] = sampled.mask[row, :length]
    parts = {
        name: [sampled.rewards.parts[name][row] for sampled, row in rows] for name in first.rewards.parts
    }
    rewards = RewardOutput(total=[sampled.rewards.total[row] for sampled, row in rows], parts=parts)
    return ids, mask, [sampled.texts[row] for sampled, row in rows], rewards
