"""Group-relative advantages: each completion's reward compared with the other completions of its prompt.

A_i = (r_i - mean of its group) / (std + eps), with the standard deviation chosen by `scale`:
- "group": std of its own group, as in GRPO (DeepSeekMath), Med-R1 and MedVLM-R1;
- "batch": std of all rewards in the batch (TRL's scale_rewards="batch"; less noisy for small G);
- "none":  no division (Dr. GRPO), only centring.
The std is torch's default, the unbiased (n - 1) estimate, as in TRL 0.14 which Med-R1 and MedVLM-R1
ran (`rewards.view(-1, G).std(dim=1)`), with eps = 1e-4 added to it.

Departure from that code: a group whose rewards are all equal gets exactly 0 advantage (TRL gets
(r - mean) / 1e-4, which is 0 only when the mean is exact in floating point), and a group of one
completion (G = 1, where the unbiased std is NaN) gets 0 instead of NaN.
Completions of one prompt are contiguous: completion g of prompt b is at index b * G + g.
"""

from __future__ import annotations

import torch
from torch import Tensor

SCALES = ("group", "batch", "none")


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    """Rewards [B*G] as [B, G], after checking the shapes."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B*G], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"{rewards.numel()} rewards cannot be split into groups of group_size={group_size}; "
            "the batch must hold G completions for every prompt"
        )
    return rewards.float().view(-1, group_size)


def _constant_groups(grouped: Tensor) -> Tensor:
    """[B, 1] True where every reward of the group is the same."""
    return grouped.max(dim=1, keepdim=True).values == grouped.min(dim=1, keepdim=True).values


def group_advantages(rewards: Tensor, group_size: int, scale: str = "group", eps: float = 1e-4) -> Tensor:
    """Advantages [B*G] from rewards [B*G]; zero for groups whose rewards are all equal."""
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r} is not one of {SCALES}")
    grouped = _grouped(rewards, group_size)  # [B, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # [B, G]
    if scale == "group":
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(centred[:, :1])
        advantages = centred / (std + eps)
    elif scale == "batch":
        std = grouped.std() if grouped.numel() > 1 else torch.zeros(())
        advantages = centred / (std + eps)
    else:
        advantages = centred
    advantages = torch.where(_constant_groups(grouped), torch.zeros_like(advantages), advantages)
    return advantages.reshape(-1).to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def zero_variance_fraction(rewards: Tensor, group_size: int) -> float:
    """Share of groups whose rewards are all equal (they give no learning signal)."""
    return _constant_groups(_grouped(rewards, group_size)).float().mean().item()
