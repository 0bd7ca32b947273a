"""Per-token log-probs (and entropy) of sampled completions under a model, each prompt run once.

`completion_logprobs` (shared_prompt=True) runs B prompts with grad, expands the KV cache G ways and
scores the G completions on it, so all G gradients flow back into one prompt pass.
`prefill_prompts` is that prompt pass on its own (`PromptPrefill`): a training rollout samples from it
and the update scores on it, one pass where there were two. `completion_logprobs(shared_prompt=False)` is the plain reference: each prompt repeated G times in
one full-sequence forward (what TRL does); the tests check both give the same log-probs. Prompts and
their images are sliced (`select_prompts`) and repeated (`repeat_prompts`) here, patches included.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicCache

from medr1.data.batches import PromptBatch
from medr1.models.families import family_of, unwrap
from medr1.shared_prefix import plain_filled_layers

ROWS_ELEMENTS = 1 << 22  # log-softmax over at most this many logits at once (16 MB in float32)


def rows_per_chunk(logits: torch.Tensor) -> int:
    """How many rows of `logits` [N, T, V] one log-softmax takes: as many as fit ROWS_ELEMENTS (at
    least one), so a small model's rows go in one call and a large vocabulary's one at a time."""
    per_row = max(1, logits.shape[1] * logits.shape[2])
    return max(1, ROWS_ELEMENTS // per_row)


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log p(token) under `logits` [N, T, V] for token ids [N, T], in row chunks to bound memory."""
    return token_scores(logits, token_ids, with_entropy=False)[0]


@torch.no_grad()
def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy [N, T] of the next-token distributions (for logging)."""
    chunks = []
    for rows in torch.split(logits, rows_per_chunk(logits)):
        log_probs = rows.float().log_softmax(-1)
        chunks.append(-(log_probs.exp() * log_probs).sum(-1))
    return torch.cat(chunks)


def token_scores(
    logits: torch.Tensor, token_ids: torch.Tensor, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log p(token) [N, T], entropy [N, T] or None) from one log-softmax per row chunk.

    The entropy (no grad) reads the same log-softmax the log-probs gather from, instead of a second
    pass over the logits; the log-softmax is taken over the last axis, row by row whatever the chunk,
    so the values are those of one row at a time."""
    logprobs, entropies = [], []
    step = rows_per_chunk(logits)
    for rows, ids in zip(torch.split(logits, step), torch.split(token_ids, step), strict=True):
        log_probs = rows.float().log_softmax(-1)  # [n, T, V]
        logprobs.append(log_probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1))
        if with_entropy:
            with torch.no_grad():
                detached = log_probs.detach()
                entropies.append(-(detached.exp() * detached).sum(-1))
    return torch.cat(logprobs), torch.cat(entropies) if with_entropy else None


# --- prompts and their images ----------------------------------------------------------------


def select_prompts(batch: PromptBatch, start: int, stop: int) -> dict[str, torch.Tensor]:
    """Model inputs of prompts start..stop-1 (their images' patches included)."""
    inputs = batch.model_inputs
    rows = {k: v[start:stop] for k, v in inputs.items() if v.shape[:1] == inputs["input_ids"].shape[:1]}
    if "image_grid_thw" in inputs:
        counts = batch.images_per_prompt.tolist()
        first_image, last_image = sum(counts[:start]), sum(counts[:stop])
        patches = inputs["image_grid_thw"].prod(-1).tolist()
        rows["image_grid_thw"] = inputs["image_grid_thw"][first_image:last_image]
        rows["pixel_values"] = inputs["pixel_values"][sum(patches[:first_image]) : sum(patches[:last_image])]
    return rows


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


# --- scoring ---------------------------------------------------------------------------------


@dataclass
class PromptPrefill:
    """B prompts' forward pass (images included) and its KV cache: what a rollout samples from and,
    when it ran with grad, what the update scores on (medr1.rl.module)."""

    logits: torch.Tensor  # [B, 1, V] predicting each prompt's first completion token
    cache: Cache  # the prompts' keys and values, as the model returned them
    next_position: torch.Tensor  # the position ids that follow each prompt (medr1.models.families)

    def detached(self) -> PromptPrefill | None:
        """A copy without grad for decoding to extend (a fresh cache, so this one stays the prompts'
        for scoring); None when the cache is not made of plain dynamic layers."""
        layers = plain_filled_layers(self.cache)
        if layers is None:
            return None
        cache = DynamicCache(
            ddp_cache_data=[(layer.keys.detach(), layer.values.detach()) for layer in layers]
        )
        return PromptPrefill(self.logits.detach(), cache, self.next_position)


def prefill_prompts(model, prompt_inputs: dict) -> PromptPrefill:
    """Run B prompts once, keeping the cache (grad flows if enabled)."""
    positions, next_position = family_of(model).prompt_positions(model, prompt_inputs)
    output = model(**prompt_inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
    return PromptPrefill(output.logits[:, -1:], output.cache, next_position)


@dataclass
class CompletionScores:
    logprobs: torch.Tensor  # [N, T] log p of each completion token
    entropy: torch.Tensor | None  # [N, T] next-token entropy (no grad), when asked for


def checkpointed(model) -> bool:
    """Whether the model recomputes activations in backward (and so cannot keep a KV cache)."""
    return bool(getattr(unwrap(model), "is_activation_checkpointing", False))


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
    prefill: PromptPrefill | None = None,
) -> CompletionScores:
    """Per-token log-probs [B*G, T] of completions under `model` (grad flows if enabled).

    `prefill`: these prompts' pass under the same weights (`prefill_prompts`), scored on instead of
    running the prompts again; the shared-prompt path only.

    Gradient checkpointing cannot keep a KV cache, so a checkpointed model in training scores the
    full sequences instead (same values, the prompt's cost paid G times); so does every model family
    outside the shared-prompt path (medr1.models.families).
    """
    if shared_prompt and model.training and torch.is_grad_enabled() and checkpointed(model):
        shared_prompt = False
    if not family_of(model).shared_prompt:
        shared_prompt = False
    if prefill is not None and not shared_prompt:
        raise ValueError("a prompt prefill is scored on by the shared-prompt path only")
    if shared_prompt:
        logits = _logits_shared_prompt(
            model, prompt_inputs, completion_ids, completion_mask, num_generations, prefill
        )
    else:
        repeated = repeat_prompts(prompt_inputs, num_generations, images_per_prompt)
        logits = _logits_full_sequence(model, repeated, completion_ids, completion_mask)
    logprobs, entropy = token_scores(logits, completion_ids, with_entropy)
    return CompletionScores(logprobs=logprobs, entropy=entropy)


def _logits_shared_prompt(
    model, prompt_inputs, completion_ids, completion_mask, num_generations, prefill=None
):
    """Logits [N, T, V] predicting each completion token; the prompt runs once per prompt (or not at
    all when its `prefill` is given)."""
    family = family_of(model)
    if prefill is None:
        prefill = prefill_prompts(model, prompt_inputs)
    first = prefill.logits.repeat_interleave(num_generations, 0)  # [N, 1, V]
    if completion_ids.shape[1] == 1:
        return first
    cache = prefill.cache
    cache.batch_repeat_interleave(num_generations)  # new tensors in the same cache: its last use
    next_position = prefill.next_position.repeat_interleave(num_generations, 0)
    attention_mask = torch.cat(
        [prompt_inputs["attention_mask"].repeat_interleave(num_generations, 0), completion_mask[:, :-1]],
        dim=1,
    )
    rest = model(
        input_ids=completion_ids[:, :-1],
        attention_mask=attention_mask,
        cache=cache,
        position_ids=family.text_positions(next_position, 0, completion_ids.shape[1] - 1),
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
    positions, _ = family_of(model).prompt_positions(model, full)
    logits = model(
        **full, position_ids=positions, use_cache=False, logits_to_keep=completion_ids.shape[1] + 1
    ).logits
    return logits[:, :-1]


@torch.no_grad()
def completion_token_logits(
    model,
    prompt_inputs: dict,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    index: torch.Tensor,
) -> torch.Tensor:
    """Logits [N, V] predicting completion token `index[n]` [N] of row n, one prompt row per completion.

    One forward over prompt + completion (cut after the furthest token asked for), with the family's
    position ids as `_logits_full_sequence` uses them, keeping only the asked-for position of each row
    (`logits_to_keep` as per-row positions), so a batch never holds [N, T, V] logits. Calibration
    (medr1.calibration) reads the option letters' probabilities here.
    """
    length = int(index.max()) if index.numel() else 0
    input_ids = torch.cat([prompt_inputs["input_ids"], completion_ids[:, :length]], dim=1)
    attention_mask = torch.cat([prompt_inputs["attention_mask"], completion_mask[:, :length]], dim=1)
    full = {**prompt_inputs, "input_ids": input_ids, "attention_mask": attention_mask}
    mm_types = prompt_inputs.get("mm_token_type_ids")
    if mm_types is not None:
        full["mm_token_type_ids"] = F.pad(mm_types, (0, length))
    positions, _ = family_of(model).prompt_positions(model, full)
    # the logits at sequence position p predict token p + 1; completion token t sits at P + t
    keep = (prompt_inputs["input_ids"].shape[1] - 1 + index.to(input_ids.device)).view(-1, 1)
    logits = model(**full, position_ids=positions, use_cache=False, logits_to_keep=keep).logits
    return logits[:, 0]
