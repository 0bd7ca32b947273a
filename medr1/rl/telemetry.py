"""What one GRPO step logs beyond the batch means: the same numbers per stratum, and the sentinels.

A lock-in (one modality stuck on a wrong letter, one question type whose groups all score alike)
averages away in the batch metrics. `stratum_metrics` gives, per modality and per question type
of the step's prompts, the mean reward, accuracy and completion length and the share of its
prompts' groups whose G rewards are all equal (no learning signal); plus the batch's
reward-hacking sentinel rates (medr1.sentinels) and its reasoning/answer consistency rate.

Keys (prefix `train`). A stratum is returned only for steps whose batch holds it; GRPOModule logs the
strata of earlier steps that the batch lacks as NaN, with count 0:
    train/modality/<name>/{reward, accuracy, completion_length, zero_variance_groups, count}
    train/question_type/<name>/{...the same}
    train/sentinel/<flag>     share of the step's completions raising the flag (SENTINELS)
    train/consistency         consistent / (completions where `consistent` is not None); absent
                              from a step where it is None for every completion
`count` is the stratum's completions in the step (its prompts x G): the weights under which the
strata's accuracies and rewards average to the batch's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import Tensor

from medr1.data.records import VQARecord
from medr1.grading import Prediction
from medr1.rl.advantages import zero_variance_fraction
from medr1.sentinels import consistency_rate, sentinel_rates

STRATA = ("modality", "question_type")  # VQARecord fields the metrics are split by


def stratum_metrics(
    records: Sequence[VQARecord],
    texts: Sequence[str],
    graded: Sequence[Prediction],
    total_rewards: Tensor | Sequence[float],
    completion_mask: Tensor,
    group: int,
    prefix: str = "train",
) -> dict[str, float]:
    """Per-stratum metrics, sentinel rates and consistency of one rollout (keys in the module docstring).

    Every argument has one entry per completion, completion g of prompt b at row b*G + g:
    `records` [B*G] (each prompt's record repeated G times), `texts` [B*G], `graded` [B*G] (their
    Predictions), `total_rewards` [B*G], `completion_mask` [B*G, T] (1 on sampled tokens).
    """
    rows = len(texts)
    sizes = {
        "records": len(records),
        "graded": len(graded),
        "total_rewards": len(total_rewards),
        "completion_mask": len(completion_mask),
    }
    if rows == 0 or group < 1 or rows % group or any(size != rows for size in sizes.values()):
        raise ValueError(
            f"stratum_metrics needs G={group} completions per prompt and one entry per completion in "
            f"every argument; got {rows} texts and {sizes}"
        )
    for start in range(0, rows, group):
        ids = {record.id for record in records[start : start + group]}
        if len(ids) != 1:
            raise ValueError(
                f"rows {start}..{start + group - 1} should be G completions of one prompt but hold the "
                f"records {sorted(ids)}; completion g of prompt b must be row b*G + g"
            )
    rewards = torch.as_tensor(total_rewards, dtype=torch.float32).detach().cpu()  # [B*G]
    lengths = completion_mask.detach().sum(1).float().cpu()  # [B*G]
    correct = torch.tensor([float(p.correct) for p in graded])  # [B*G]

    metrics: dict[str, float] = {}
    for field in STRATA:
        prompts_of: dict[str, list[int]] = defaultdict(list)  # stratum name -> its prompts' first rows
        for start in range(0, rows, group):
            prompts_of[getattr(records[start], field)].append(start)
        for name, starts in sorted(prompts_of.items()):
            index = torch.tensor(
                [start + g for start in starts for g in range(group)]
            )  # its groups, in order
            key = f"{prefix}/{field}/{name}"
            metrics[f"{key}/reward"] = float(rewards[index].mean())
            metrics[f"{key}/accuracy"] = float(correct[index].mean())
            metrics[f"{key}/completion_length"] = float(lengths[index].mean())
            metrics[f"{key}/zero_variance_groups"] = zero_variance_fraction(rewards[index], group)
            metrics[f"{key}/count"] = float(len(index))

    options = [record.options for record in records]
    metrics |= {f"{prefix}/sentinel/{name}": rate for name, rate in sentinel_rates(texts, options).items()}
    consistency = consistency_rate(texts, options, [p.parsed for p in graded])
    if consistency is not None:
        metrics[f"{prefix}/consistency"] = consistency
    return metrics
