"""The SFT loss as a pure function: mean negative log-likelihood of the target tokens only (the
prompt is masked). No LightningModule in here, so the offline warm start uses it too."""

from __future__ import annotations

from torch import Tensor

from medr1.data.batches import PromptBatch
from medr1.logprobs import completion_logprobs
from medr1.rl.loss import masked_mean


def target_nll(model, batch: PromptBatch) -> tuple[Tensor, Tensor]:
    """Mean NLL over target tokens and the number of target tokens."""
    scores = completion_logprobs(
        model,
        batch.model_inputs,
        batch.target_ids,
        batch.target_mask,
        num_generations=1,
        images_per_prompt=batch.images_per_prompt,
    )
    return -masked_mean(scores.logprobs, batch.target_mask), batch.target_mask.float().sum()
