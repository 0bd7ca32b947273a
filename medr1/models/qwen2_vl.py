"""The Qwen2-VL specifics that sampling and scoring by hand need: M-RoPE position ids, the rope
delta of each prompt, the vision special tokens, and reaching the HF model under a peft wrapper.

Qwen2-VL pitfall: decoding by hand needs explicit M-RoPE `position_ids` (text position of the token
+ the prompt's rope delta, on all 3 sections); transformers' fallback computes them over the mask.
Another architecture (Qwen2.5-VL) gets its own file with the same functions.
"""

from __future__ import annotations

import torch

# Tokens that a sampled completion must never contain: each one changes how the model reads the
# sequence (an image placeholder without image features breaks the next forward pass).
VISION_TOKENS = [
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
]


def unwrap(model):
    """The HF model under a peft wrapper (peft forwards calls, but not `.model` attribute access)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def prompt_positions(model, prompt_inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """M-RoPE position ids [3, B, P] of left-padded prompts, and the text position [B, 1] that the
    first token after each prompt takes (its rope delta counts from the unpadded length)."""
    inner = unwrap(model).model
    positions, rope_deltas = inner.get_rope_index(
        prompt_inputs["input_ids"],
        mm_token_type_ids=prompt_inputs.get("mm_token_type_ids"),
        image_grid_thw=prompt_inputs.get("image_grid_thw"),
        video_grid_thw=prompt_inputs.get("video_grid_thw"),
        attention_mask=prompt_inputs["attention_mask"],
    )
    next_position = prompt_inputs["attention_mask"].sum(1, keepdim=True) + rope_deltas.to(positions.device)
    return positions, next_position


def text_positions(first: torch.Tensor, offset: int, length: int) -> torch.Tensor:
    """Position ids [3, N, length] of text tokens offset.. offset+length-1 after each prompt;
    `first` [N, 1] is the position of the first token after the prompt."""
    positions = first + torch.arange(offset, offset + length, device=first.device).view(1, -1)
    return positions.unsqueeze(0).expand(3, -1, -1)
