"""The GRPO loss as a pure function of per-token log-probabilities; no model in here.

Per valid token t of completion i, with ratio = exp(logp - logp_old) and advantage A_i:
    surrogate = -min(ratio * A_i, clip(ratio, 1 - epsilon_low, 1 + epsilon_high) * A_i)
    kl        = exp(ref - logp) - (ref - logp) - 1          (the k3 estimator, >= 0)
    loss_t    = surrogate + beta * kl
then aggregated by `loss_agg`:
- "seq_mean_token_mean" (GRPO, Med-R1, MedVLM-R1): mean over each completion's valid tokens,
  then mean over completions;
- "token_mean" (DAPO): sum over all valid tokens / number of valid tokens;
- "seq_mean_token_sum_norm" (Dr. GRPO): sum over each completion's tokens / max_completion_length,
  then mean over completions.
With one update per rollout the caller passes old_logprobs = logprobs.detach(): the ratio is 1,
nothing is clipped and the gradient is the plain policy gradient -A * grad logp (what the papers'
TRL 0.14 computes with exp(logp - logp.detach())). Departures: epsilon_low/high (DAPO's
asymmetric clipping) and the three aggregations are options; the papers used 0.2/0.2 and GRPO's.
A completion with no valid token counts as a zero-loss completion in the per-completion means.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

LOSS_AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")


@dataclass
class LossOutput:
    """The loss to backpropagate and detached metrics to log."""

    loss: Tensor  # [] differentiable w.r.t. logprobs
    kl: Tensor  # [] mean k3 KL to the reference over valid tokens (0 without a reference)
    clip_fraction: Tensor  # [] share of valid tokens where the clipped term was the active one
    clip_low_fraction: Tensor  # [] ... because ratio < 1 - epsilon_low with A < 0
    clip_high_fraction: Tensor  # [] ... because ratio > 1 + epsilon_high with A > 0
    ratio_mean: Tensor  # [] mean ratio over valid tokens

    def metrics(self) -> dict[str, float]:
        """The metrics as plain floats, for logging."""
        names = ("loss", "kl", "clip_fraction", "clip_low_fraction", "clip_high_fraction", "ratio_mean")
        return {name: float(getattr(self, name).detach()) for name in names}


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` where `mask` is true (same shape); 0 when nothing is valid."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def _check_shapes(
    logprobs: Tensor, old_logprobs: Tensor, ref_logprobs: Tensor | None, advantages: Tensor, mask: Tensor
) -> None:
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [N, T], got shape {tuple(logprobs.shape)}")
    named = {"old_logprobs": old_logprobs, "mask": mask, "ref_logprobs": ref_logprobs}
    for name, tensor in named.items():
        if tensor is not None and tensor.shape != logprobs.shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, logprobs {tuple(logprobs.shape)}")
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(
            f"advantages must be [N] = [{logprobs.shape[0]}], got shape {tuple(advantages.shape)}"
        )


def aggregate(
    per_token_loss: Tensor, mask: Tensor, loss_agg: str, max_completion_length: int | None
) -> Tensor:
    """Reduce a per-token loss [N, T] over valid tokens to a scalar, as `loss_agg` says."""
    masked = per_token_loss * mask  # [N, T]
    if loss_agg == "seq_mean_token_mean":
        return (masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).mean()
    if loss_agg == "token_mean":
        return masked.sum() / mask.sum().clamp(min=1.0)
    if loss_agg == "seq_mean_token_sum_norm":
        if max_completion_length is None or max_completion_length <= 0:
            raise ValueError(
                "loss_agg='seq_mean_token_sum_norm' (Dr. GRPO) divides by max_completion_length; "
                f"pass a positive max_completion_length (got {max_completion_length})"
            )
        return (masked.sum(dim=1) / max_completion_length).mean()
    raise ValueError(f"loss_agg={loss_agg!r} is not one of {LOSS_AGGREGATIONS}")


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    ref_logprobs: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    beta: float = 0.04,
    loss_agg: str = "seq_mean_token_mean",
    max_completion_length: int | None = None,
) -> LossOutput:
    """Clipped surrogate + beta * k3 KL, aggregated over valid tokens (module docstring)."""
    if loss_agg not in LOSS_AGGREGATIONS:
        raise ValueError(f"loss_agg={loss_agg!r} is not one of {LOSS_AGGREGATIONS}")
    if beta != 0 and ref_logprobs is None:
        raise ValueError(f"beta={beta} needs ref_logprobs; pass the reference log-probs or set beta=0")
    _check_shapes(logprobs, old_logprobs, ref_logprobs, advantages, mask)

    valid = mask.bool()  # [N, T]
    weights = valid.to(logprobs.dtype)  # [N, T]
    # Padding may hold any value (even -inf); zero it first so it cannot turn into NaN gradients.
    logprobs = torch.where(valid, logprobs, torch.zeros_like(logprobs))  # [N, T]
    old_logprobs = torch.where(valid, old_logprobs.detach(), torch.zeros_like(logprobs))  # [N, T]
    advantage = advantages.detach().to(logprobs.dtype).unsqueeze(1)  # [N, 1]

    ratio = torch.exp(logprobs - old_logprobs)  # [N, T]
    clipped_ratio = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)  # [N, T]
    surrogate = -torch.minimum(ratio * advantage, clipped_ratio * advantage)  # [N, T]

    kl = torch.zeros_like(logprobs)  # [N, T]
    if ref_logprobs is not None:
        ref_logprobs = torch.where(valid, ref_logprobs.detach(), torch.zeros_like(logprobs))  # [N, T]
        log_ratio_to_ref = ref_logprobs - logprobs  # [N, T]
        kl = torch.exp(log_ratio_to_ref) - log_ratio_to_ref - 1.0  # [N, T]
    per_token_loss = surrogate + beta * kl if beta != 0 else surrogate  # [N, T]
    loss = aggregate(per_token_loss, weights, loss_agg, max_completion_length)

    with torch.no_grad():
        clipped_low = (ratio < 1.0 - epsilon_low) & (advantage < 0)  # [N, T]
        clipped_high = (ratio > 1.0 + epsilon_high) & (advantage > 0)  # [N, T]
        return LossOutput(
            loss=loss,
            kl=masked_mean(kl.detach(), weights),
            clip_fraction=masked_mean((clipped_low | clipped_high).to(weights.dtype), weights),
            clip_low_fraction=masked_mean(clipped_low.to(weights.dtype), weights),
            clip_high_fraction=masked_mean(clipped_high.to(weights.dtype), weights),
            ratio_mean=masked_mean(ratio.detach(), weights),
        )
