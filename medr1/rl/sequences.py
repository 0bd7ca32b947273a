"""Sampling and scoring completions of VLM prompts, with each prompt encoded once.

A VLM prompt is mostly image tokens and a causal model's prompt states do not depend on the
completion, so both directions run the prompt ONCE and share its KV cache among its G completions:
- `sample_completions` prefills B prompts, expands the cache G ways and samples B*G completions;
- `completion_logprobs` (shared_prompt=True) runs B prompts with grad, expands the cache and scores
  the G completions on it, so all G gradients flow back into one prompt pass.
`completion_logprobs(shared_prompt=False)` is the plain reference: each prompt repeated G times in
one full-sequence forward (what TRL does); the tests check both give the same log-probs.

Qwen2-VL pitfall: decoding by hand needs explicit M-RoPE `position_ids` (text position of the token
+ the prompt's rope delta, on all 3 sections); transformers' fallback computes them over the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def unwrap(model):
    """The HF model under a peft wrapper (peft forwards calls, but not `.model` attribute access)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def vision_inputs(prompt_inputs: dict) -> dict:
    """The processor outputs other than input_ids/attention_mask (pixels, grids, token types)."""
    return {k: v for k, v in prompt_inputs.items() if k not in ("input_ids", "attention_mask")}


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


# --- sampling --------------------------------------------------------------------------------


@dataclass
class SamplingConfig:
    max_new_tokens: int
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter


def filter_logits(logits: torch.Tensor, cfg: SamplingConfig, banned_ids: torch.Tensor | None) -> torch.Tensor:
    """Apply banned tokens, temperature, top-k and top-p to next-token logits [N, V]."""
    logits = logits.float()
    if banned_ids is not None and banned_ids.numel():
        logits[:, banned_ids] = float("-inf")
    if not cfg.do_sample:
        return logits
    logits = logits / max(cfg.temperature, 1e-6)
    if cfg.top_k and cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > cfg.top_p  # keep the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def next_tokens(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    if cfg.do_sample:
        return torch.multinomial(logits.softmax(-1), num_samples=1).squeeze(-1)
    return logits.argmax(-1)


@torch.no_grad()
def sample_completions(
    model,
    prompt_inputs: dict,
    cfg: SamplingConfig,
    *,
    num_generations: int,
    stop_ids: list[int],
    pad_id: int,
    banned_ids: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample `num_generations` completions per prompt; returns ids and mask, both [B*G, T].

    Completions of prompt b sit at rows b*G .. b*G+G-1. A completion ends with (and includes) its
    first stop token; positions after it hold `pad_id` and mask 0.
    """
    device = prompt_inputs["input_ids"].device
    positions, next_position = prompt_positions(model, prompt_inputs)
    output = model(**prompt_inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = output.past_key_values
    logits = output.logits[:, -1]
    if num_generations > 1:  # one prefill, G completions: expand the cache instead of the prompt
        cache.batch_repeat_interleave(num_generations)
        logits = logits.repeat_interleave(num_generations, 0)
        next_position = next_position.repeat_interleave(num_generations, 0)
    attention_mask = prompt_inputs["attention_mask"].repeat_interleave(num_generations, 0)
    n = attention_mask.shape[0]
    banned = torch.tensor(banned_ids or [], dtype=torch.long, device=device)
    stops = torch.tensor(stop_ids, dtype=torch.long, device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    tokens, masks = [], []
    for step in range(cfg.max_new_tokens):
        token = next_tokens(filter_logits(logits, cfg, banned), cfg)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        tokens.append(token)
        masks.append(~finished)
        finished = finished | torch.isin(token, stops)
        if finished.all() or step == cfg.max_new_tokens - 1:
            break
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        output = model(
            input_ids=token[:, None],
            attention_mask=attention_mask,
            past_key_values=cache,
            position_ids=text_positions(next_position, step, 1),
            use_cache=True,
        )
        logits = output.logits[:, -1]
    return torch.stack(tokens, 1), torch.stack(masks, 1).long()


# --- scoring ---------------------------------------------------------------------------------


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log p(token) under `logits` [N, T, V] for token ids [N, T], row by row to bound memory."""
    rows = []
    for row_logits, row_ids in zip(logits, token_ids, strict=True):
        log_probs = row_logits.float().log_softmax(-1)
        rows.append(log_probs.gather(-1, row_ids[:, None]).squeeze(-1))
    return torch.stack(rows)


@torch.no_grad()
def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy [N, T] of the next-token distributions (for logging)."""
    rows = []
    for row in logits:
        log_probs = row.float().log_softmax(-1)
        rows.append(-(log_probs.exp() * log_probs).sum(-1))
    return torch.stack(rows)


def repeat_prompts(prompt_inputs: dict, num_generations: int, images_per_prompt: torch.Tensor | None) -> dict:
    """Each prompt (and its images' patches) repeated G times, at rows b*G .. b*G+G-1."""
    if num_generations == 1:
        return dict(prompt_inputs)
    input_ids = prompt_inputs["input_ids"]
    repeated = {
        k: v.repeat_interleave(num_generations, 0)
        for k, v in prompt_inputs.items()
        if torch.is_tensor(v) and v.shape[:1] == input_ids.shape[:1]
    }
    grid = prompt_inputs.get("image_grid_thw")
    if grid is not None:
        if images_per_prompt is None:
            images_per_prompt = torch.ones(len(input_ids), dtype=torch.long)
        # the grid and pixel lists hold the images in prompt order: prompt b owns the next count_b
        image_patches = list(torch.split(prompt_inputs["pixel_values"], grid.prod(-1).tolist()))
        grid_rows, patch_chunks, first = [], [], 0
        for count in images_per_prompt.tolist():
            own = range(first, first + count)
            first += count
            for _ in range(num_generations):
                grid_rows.extend(grid[i] for i in own)
                patch_chunks.extend(image_patches[i] for i in own)
        repeated["image_grid_thw"] = torch.stack(grid_rows)
        repeated["pixel_values"] = torch.cat(patch_chunks)
    return repeated


@dataclass
class CompletionScores:
    logprobs: torch.Tensor  # [N, T] log p of each completion token
    entropy: torch.Tensor | None  # [N, T] next-token entropy (no grad), when asked for


def completion_logprobs(
    model,
    prompt_inputs: dict,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    num_generations: int,
    shared_prompt: bool = True,
    images_per_prompt: torch.Tensor | None = None,
    with_entropy: bool = False,
) -> CompletionScores:
    """Per-token log-probs [B*G, T] of completions under `model` (grad flows if enabled).

    Gradient checkpointing cannot keep a KV cache, so a checkpointed model in training scores the
    full sequences instead (same values, the prompt's cost paid G times).
    """
    if shared_prompt and model.training and torch.is_grad_enabled() and getattr(unwrap(model), "is_gradient_checkpointing", False):
        shared_prompt = False
    if shared_prompt:
        logits = _logits_shared_prompt(model, prompt_inputs, completion_ids, completion_mask, num_generations)
    else:
        repeated = repeat_prompts(prompt_inputs, num_generations, images_per_prompt)
        logits = _logits_full_sequence(model, repeated, completion_ids, completion_mask)
    return CompletionScores(
        logprobs=token_logprobs(logits, completion_ids),
        entropy=token_entropy(logits) if with_entropy else None,
    )


def _logits_shared_prompt(model, prompt_inputs, completion_ids, completion_mask, num_generations):
    """Logits [N, T, V] predicting each completion token; the prompt runs once per prompt."""
    positions, next_position = prompt_positions(model, prompt_inputs)
    output = model(**prompt_inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
    first = output.logits[:, -1:].repeat_interleave(num_generations, 0)  # [N, 1, V]
    if completion_ids.shape[1] == 1:
        return first
    cache = output.past_key_values
    cache.batch_repeat_interleave(num_generations)
    next_position = next_position.repeat_interleave(num_generations, 0)
    attention_mask = torch.cat(
        [prompt_inputs["attention_mask"].repeat_interleave(num_generations, 0), completion_mask[:, :-1]], dim=1
    )
    rest = model(
        input_ids=completion_ids[:, :-1],
        attention_mask=attention_mask,
        past_key_values=cache,
        position_ids=text_positions(next_position, 0, completion_ids.shape[1] - 1),
        use_cache=True,
    ).logits
    return torch.cat([first, rest], dim=1)


def _logits_full_sequence(model, repeated, completion_ids, completion_mask):
    """Logits [N, T, V] from one forward over prompt+completion, one prompt row per completion."""
    input_ids = torch.cat([repeated["input_ids"], completion_ids], dim=1)
    attention_mask = torch.cat([repeated["attention_mask"], completion_mask], dim=1)
    mm_types = repeated.get("mm_token_type_ids")
    if mm_types is not None:
        repeated["mm_token_type_ids"] = F.pad(mm_types, (0, completion_ids.shape[1]))
    full = {**repeated, "input_ids": input_ids, "attention_mask": attention_mask}
    positions, _ = prompt_positions(model, full)
    logits = model(**full, position_ids=positions, use_cache=False, logits_to_keep=completion_ids.shape[1] + 1).logits
    return logits[:, :-1]
