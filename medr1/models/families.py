"""What sampling and scoring by hand need from each model family: its position ids, the special
tokens a completion must never contain, and whether the prompt can be shared by G completions.

- **Qwen families** (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE): M-RoPE. Each family's own
  `get_rope_index` gives the prompt's 3-D position ids [3, B, P] and its rope delta; a text token
  after the prompt takes its text position + the delta on all three sections. Decoding by hand
  needs these explicitly (transformers' fallback computes them over the mask). These families take
  the shared-prompt path: one prefill per prompt for its G completions, decoded with shared-prefix
  attention (medr1.rollout, medr1.shared_prefix) and scored on the KV cache expanded G ways
  (medr1.logprobs).
- **Any other `AutoModelForImageTextToText` model** (LLaVA, SmolVLM, ...): the generic path. Rollout
  repeats each prompt G times and calls `generate()`; scoring runs prompt + completion in one
  forward. Position ids are 1-D, counted over the attention mask (as `generate()` counts them for
  left-padded prompts), so scoring sees the positions sampling saw.

`family_of(model)` picks one from `model.config.model_type`; `describe` says which in the log.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Qwen's vision/grounding special tokens: each changes how the model reads the sequence (an image
# placeholder without image features breaks the next forward pass), so sampling never emits them.
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
# Processor attributes that name a family's image/video placeholder tokens (LLaVA: image_token;
# Idefics3/SmolVLM: fake_image_token, global_image_token; Gemma 3: boi/eoi).
PLACEHOLDER_ATTRIBUTES = (
    "image_token",
    "video_token",
    "boi_token",
    "eoi_token",
    "fake_image_token",
    "global_image_token",
    "image_start_token",
    "image_end_token",
)
MROPE_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")


def unwrap(model):
    """The HF model under a peft wrapper (peft forwards calls, but not `.model` attribute access)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def model_type(model) -> str:
    return str(getattr(unwrap(model).config, "model_type", ""))


@dataclass(frozen=True)
class MRopeFamily:
    """Qwen2-VL, Qwen2.5-VL, Qwen3-VL: M-RoPE position ids from the model's own `get_rope_index`."""

    name: str
    shared_prompt: bool = True

    def prompt_positions(self, model, prompt_inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Position ids [3, B, P] of left-padded prompts, and the text position [B, 1] that the first
        token after each prompt takes (its rope delta counts from the unpadded length)."""
        inner = unwrap(model).model
        positions, rope_deltas = inner.get_rope_index(
            prompt_inputs["input_ids"],
            mm_token_type_ids=prompt_inputs.get("mm_token_type_ids"),
            image_grid_thw=prompt_inputs.get("image_grid_thw"),
            video_grid_thw=prompt_inputs.get("video_grid_thw"),
            attention_mask=prompt_inputs["attention_mask"],
        )
        next_position = prompt_inputs["attention_mask"].sum(1, keepdim=True) + rope_deltas.to(
            positions.device
        )
        return positions, next_position

    def text_positions(self, first: torch.Tensor, offset: int, length: int) -> torch.Tensor:
        """Position ids [3, N, length] of text tokens offset .. offset+length-1 after each prompt;
        `first` [N, 1] is the position of the first token after the prompt."""
        positions = first + torch.arange(offset, offset + length, device=first.device).view(1, -1)
        return positions.unsqueeze(0).expand(3, -1, -1)

    def describe(self) -> str:
        return f"{self.name}: shared-prompt rollout and scoring (one prefill per prompt for its G completions, M-RoPE)"


@dataclass(frozen=True)
class GenericFamily:
    """Any other image-text-to-text model: 1-D positions over the mask, repeated prompts, `generate()`."""

    name: str
    shared_prompt: bool = False

    def prompt_positions(self, model, prompt_inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Position ids [B, P] counted over the mask (left padding gets 0), and the next position [B, 1]."""
        mask = prompt_inputs["attention_mask"].long()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return positions, mask.sum(1, keepdim=True)

    def text_positions(self, first: torch.Tensor, offset: int, length: int) -> torch.Tensor:
        return first + torch.arange(offset, offset + length, device=first.device).view(1, -1)

    def describe(self) -> str:
        return (
            f"{self.name}: generic path (each prompt repeated G times, sampled with generate(); "
            "the shared-prompt path covers the Qwen families)"
        )


Family = MRopeFamily | GenericFamily


def family_of(model) -> Family:
    """The family of `model` (a HF model, or one under a peft wrapper)."""
    name = model_type(model)
    if name in MROPE_MODEL_TYPES:
        return MRopeFamily(name)
    return GenericFamily(name or type(unwrap(model)).__name__)


def placeholder_tokens(processor) -> list[str]:
    """Special tokens that sampled completions must never contain: Qwen's vision/grounding tokens and
    whatever image/video placeholders the processor names."""
    tokens = list(VISION_TOKENS)
    for attribute in PLACEHOLDER_ATTRIBUTES:
        token = getattr(processor, attribute, None)
        if isinstance(token, str) and token and token not in tokens:
            tokens.append(token)
    return tokens
