"""Sample G completions per prompt with one prefill: `SamplingConfig`, `sample_completions`, the
`Sampler` that training, validation and evaluation share, and `greedy()`.

A VLM prompt is mostly image tokens and a causal model's prompt states do not depend on the
completion, so for the Qwen families `sample_completions` prefills B prompts once and samples B*G
completions from that one prefill (HF `generate` with `num_return_sequences=G` repeats every prompt G
times instead). Decoding keeps each prompt's keys and values once for its G rows, beside each row's
own completion keys and values, and attends to both (shared-prefix attention, medr1.shared_prefix);
the KV cache expanded G ways gives the same tokens and remains as `kv_layout="preallocated"` (filled
in place) and `"growing"` (the model's own concatenating cache), for the tests. Any other model
family (medr1.models.families) takes the generic path: each prompt repeated G times and sampled by
`generate()` with the same settings, stop and banned tokens. Departure from Med-R1's trainer (TRL
0.14): the vision/grounding special tokens cannot be sampled.

Decoding stops as soon as every sequence has emitted a stop token, so the completions are only as
wide as the longest one. Sampling draws one uniform number per row and reads the token off the
cumulative distribution (`sample_rows`): the distribution of `torch.multinomial`, without its one
random number per vocabulary entry.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicLayer

from medr1.data.batches import PromptBatch
from medr1.logprobs import PromptPrefill, prefill_prompts, repeat_prompts
from medr1.models.families import family_of, placeholder_tokens, unwrap
from medr1.shared_prefix import BufferedLayer, plain_filled_layers, share_prefix, shared_prefix_attention


@dataclass
class SamplingConfig:
    max_new_tokens: int
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter


def greedy(max_new_tokens: int) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=max_new_tokens, do_sample=False)


def banned_token_ids(processor) -> list[int]:
    """Ids of the vision/grounding/image placeholder tokens, which sampled completions must not contain."""
    vocab = processor.tokenizer.get_vocab()
    return sorted({vocab[token] for token in placeholder_tokens(processor) if token in vocab})


def stop_token_ids(processor, model) -> list[int]:
    """Token ids that end a completion: the generation config's eos ids plus <|im_end|>."""
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    im_end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != processor.tokenizer.unk_token_id:
        ids.add(im_end)
    if processor.tokenizer.eos_token_id is not None:
        ids.add(processor.tokenizer.eos_token_id)
    return sorted(ids)


def filter_logits(logits: torch.Tensor, cfg: SamplingConfig, banned_ids: torch.Tensor | None) -> torch.Tensor:
    """Apply banned tokens, temperature, top-k and top-p to next-token logits [N, V]."""
    logits = logits.float()
    if banned_ids is not None and banned_ids.numel():
        logits[:, banned_ids] = float("-inf")
    if not cfg.do_sample:
        return logits
    if cfg.temperature != 1.0:  # x / 1.0 == x exactly: skip a pass over [N, V]
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
        return sample_rows(logits.softmax(-1))
    return logits.argmax(-1)


def sample_rows(probs: torch.Tensor) -> torch.Tensor:
    """One index per row of `probs` [N, V], drawn from that row's distribution by its inverse CDF.

    One uniform number per row, where `torch.multinomial` draws an exponential per vocabulary entry
    (V random numbers per row: 14% of the demo's sampling time on CPU). The CDF is summed in float64
    (float32 on MPS, which has none), and u * total < total for u < 1 drawn in float32, so the search
    never runs past the last token; an entry of probability 0 adds nothing to the CDF and is never
    found (`right=True` returns the first entry whose CDF exceeds the draw)."""
    wide = torch.float32 if probs.device.type == "mps" else torch.float64
    cdf = probs.to(wide).cumsum(-1)
    draw = torch.rand(probs.shape[0], 1, device=probs.device, dtype=torch.float32).to(wide) * cdf[:, -1:]
    return torch.searchsorted(cdf, draw, right=True).squeeze(-1).clamp_max(probs.shape[-1] - 1)


class PreallocatedLayer(BufferedLayer):
    """A DynamicLayer's keys and values (the expanded prompt) in buffers with room for `extra` more
    tokens: `update` returns the values a DynamicLayer returns, without copying the whole cache."""

    def __init__(self, layer: DynamicLayer, extra: int):
        super().__init__()
        self._allocate(layer, layer.keys.shape[0], layer.keys.shape[-2] + extra)
        self.update(layer.keys, layer.values)


def preallocate(cache, extra: int) -> bool:
    """Give every layer of a filled `cache` room for `extra` more tokens, in place; True if done (only a
    cache of plain DynamicLayers, `shared_prefix.plain_filled_layers`)."""
    layers = plain_filled_layers(cache)
    if extra < 1 or layers is None:
        return False
    cache.layers = [PreallocatedLayer(layer, extra) for layer in layers]
    return True


KV_LAYOUTS = ("shared", "preallocated", "growing")


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
    images_per_prompt: torch.Tensor | None = None,
    kv_layout: str = "shared",
    prefill: PromptPrefill | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample `num_generations` completions per prompt; returns ids and mask, both [B*G, T].

    Completions of prompt b sit at rows b*G .. b*G+G-1. A completion ends with (and includes) its
    first stop token; positions after it hold `pad_id` and mask 0. T is the longest completion's
    length: decoding stops when every row has stopped. `images_per_prompt` [B] (default one each)
    tells the generic path which images belong to which prompt. `kv_layout` (shared-prompt families):
    "shared" keeps one copy of each prompt's keys and values for its G rows (medr1.shared_prefix);
    "preallocated" expands the cache G ways into buffers filled in place; "growing" is the model's own
    expanded, concatenating cache. All three sample the same tokens (tests/test_shared_prefix.py,
    tests/test_speed.py); the last two are there to check exactly that. `prefill`: these prompts'
    pass under this model (`medr1.logprobs.prefill_prompts`), used instead of running them here; its
    cache is extended in place (pass `PromptPrefill.detached()` to keep the original for scoring).
    """
    if kv_layout not in KV_LAYOUTS:
        raise ValueError(f"kv_layout={kv_layout!r}: expected one of {KV_LAYOUTS}")
    family = family_of(model)
    if not family.shared_prompt:
        return _generate_repeated(
            model,
            prompt_inputs,
            cfg,
            num_generations=num_generations,
            stop_ids=stop_ids,
            pad_id=pad_id,
            banned_ids=banned_ids,
            images_per_prompt=images_per_prompt,
        )
    device = prompt_inputs["input_ids"].device
    if prefill is None:
        prefill = prefill_prompts(model, prompt_inputs)
    cache, next_position = prefill.cache, prefill.next_position
    room = cfg.max_new_tokens - 1  # the last sampled token is never fed back
    shared = (
        kv_layout == "shared"
        and share_prefix(cache, prompt_inputs["attention_mask"], num_generations, room) is not None
    )
    if not shared:  # one prefill, G completions: expand the cache instead of the prompt
        if num_generations > 1:
            cache.batch_repeat_interleave(num_generations)
        if kv_layout != "growing":
            preallocate(cache, room)
    logits = prefill.logits[:, -1].repeat_interleave(num_generations, 0)
    next_position = next_position.repeat_interleave(num_generations, 0)
    # the shared-prefix layers hold the prompt mask, and completions need none beyond causality
    attention_mask = None if shared else prompt_inputs["attention_mask"].repeat_interleave(num_generations, 0)
    n = logits.shape[0]
    banned = torch.tensor(banned_ids or [], dtype=torch.long, device=device)
    stops = torch.tensor(stop_ids, dtype=torch.long, device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    tokens, masks = [], []
    with shared_prefix_attention(model, cache) if shared else nullcontext():
        for step in range(cfg.max_new_tokens):
            token = next_tokens(filter_logits(logits, cfg, banned), cfg)
            token = torch.where(finished, torch.full_like(token, pad_id), token)
            tokens.append(token)
            masks.append(~finished)
            finished = finished | torch.isin(token, stops)
            if finished.all() or step == cfg.max_new_tokens - 1:
                break
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
            output = model(
                input_ids=token[:, None],
                attention_mask=attention_mask,
                cache=cache,
                position_ids=family.text_positions(next_position, step, 1),
                use_cache=True,
            )
            logits = output.logits[:, -1]
    return torch.stack(tokens, 1), torch.stack(masks, 1).long()


def _generate_repeated(
    model, prompt_inputs, cfg, *, num_generations, stop_ids, pad_id, banned_ids, images_per_prompt
):
    """The generic path: each prompt (and its images) repeated G times, sampled by `generate()`.

    Every sampling setting is passed explicitly, so a checkpoint's own generation_config.json (e.g.
    a model card's temperature) never changes what the run configured; `generate()` fills only the
    values left unset.
    """
    from transformers import GenerationConfig

    repeated = repeat_prompts(prompt_inputs, num_generations, images_per_prompt)
    sampling = dict(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p) if cfg.do_sample else {}
    generation = GenerationConfig(
        max_new_tokens=cfg.max_new_tokens,
        do_sample=cfg.do_sample,
        num_beams=1,
        repetition_penalty=1.0,
        eos_token_id=list(stop_ids),
        pad_token_id=pad_id,
        suppress_tokens=list(banned_ids) or None,
        **sampling,
    )
    prompt_length = repeated["input_ids"].shape[1]
    sequences = unwrap(model).generate(**repeated, generation_config=generation)
    tokens = sequences[:, prompt_length:]
    stops = torch.isin(tokens, torch.tensor(stop_ids, dtype=torch.long, device=tokens.device))
    # a token is part of the completion up to and including the first stop
    stopped_before = (stops.long().cumsum(1) - stops.long()) > 0
    mask = (~stopped_before).long()
    return tokens.masked_fill(stopped_before, pad_id), mask


@dataclass
class Sampler:
    """Samples completions for prompt batches with the processor's stop, pad and banned tokens."""

    processor: object
    stop_ids: list[int]
    pad_id: int
    banned_ids: list[int]

    @classmethod
    def for_model(cls, model, processor) -> Sampler:
        return cls(
            processor,
            stop_token_ids(processor, model),
            processor.tokenizer.pad_token_id,
            banned_token_ids(processor),
        )

    def complete(
        self,
        model,
        batch: PromptBatch,
        sampling: SamplingConfig,
        num_generations: int = 1,
        kv_layout: str = "shared",
        prefill: PromptPrefill | None = None,
    ):
        """(completion ids [B*G, T], mask [B*G, T], decoded texts [B*G]); `kv_layout` and `prefill` as
        in `sample_completions`."""
        ids, mask = sample_completions(
            model,
            batch.model_inputs,
            sampling,
            num_generations=num_generations,
            stop_ids=self.stop_ids,
            pad_id=self.pad_id,
            banned_ids=self.banned_ids,
            images_per_prompt=batch.images_per_prompt,
            kv_layout=kv_layout,
            prefill=prefill,
        )
        return ids, mask, self.decode(ids, mask)

    def decode(self, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
        rows = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
        return self.processor.tokenizer.batch_decode(rows, skip_special_tokens=True)
