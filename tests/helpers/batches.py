"""A prompt batch whose prompts differ in length, so that left padding is exercised (sampling and scoring
tests)."""

from __future__ import annotations

from medr1.data.batches import PromptBatch, PromptCollator


def padded_batch(processor, records) -> PromptBatch:
    """The shortest, the longest and a middle record (by question and option text) as one batch."""
    ordered = sorted(records, key=lambda r: len(r.question) + sum(map(len, r.options.values())))
    batch = PromptCollator(processor, "think")([ordered[0], ordered[-1], ordered[len(ordered) // 2]])
    assert batch.model_inputs["attention_mask"].min() == 0, "the batch must contain left padding"
    return batch
