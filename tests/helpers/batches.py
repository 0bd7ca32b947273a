"""A prompt batch whose prompts differ in length, so that left padding is exercised (sampling and scoring
tests)."""

from __future__ import annotations

import torch

from medr1.data.batches import PromptBatch, PromptCollator
from medr1.rollout import Sampler


def padded_batch(processor, records) -> PromptBatch:
    """The shortest, the longest and a middle record (by question and option text) as one batch."""
    ordered = sorted(records, key=lambda r: len(r.question) + sum(map(len, r.options.values())))
    batch = PromptCollator(processor, "think")([ordered[0], ordered[-1], ordered[len(ordered) // 2]])
    assert batch.model_inputs["attention_mask"].min() == 0, "the batch must contain left padding"
    return batch


def sample_ids(model, processor, batch, sampling, kv_layout="shared", group=4, seed=0):
    """Ids and mask [B*G, T] of `group` completions per prompt through the Sampler, seeded."""
    torch.manual_seed(seed)
    ids, mask, _ = Sampler.for_model(model, processor).complete(
        model, batch, sampling, group, kv_layout=kv_layout
    )
    return ids, mask
