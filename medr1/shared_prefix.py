"""Shared-prefix ("cascade") attention: the G completions of a prompt read one copy of its keys and values.

After the prompt's prefill, the plain shared-prompt path expands the KV cache G ways
(`batch_repeat_interleave`), so every decoding step streams G copies of each prompt's keys and values
through attention, though they are the same numbers. Here the cache keeps the prompt's keys and values
once per prompt, [B, kv_heads, P, d], beside each completion's own, [B*G, kv_heads, t, d], and attention
reads the two parts and takes one softmax over both:

    prompt part:      the G completions' queries stacked as one query block per prompt, against the
                      prompt's keys (its left padding masked): one matmul reads the prompt once, and one
                      more applies the prompt's share of the weights to its values;
    completion part:  each row's queries against its own completion keys, causal;
    softmax:          over the concatenated scores [prompt; completion] of each query, so the output is
                      the numbers of attention over the expanded cache up to float rounding
                      (tests/test_shared_prefix.py).

No completion token can attend to a padded completion position of an earlier step (padding only follows
a stop token), so the completion part needs no mask beyond causality.

It serves decoding (one query per row and step), where attention is bound by reading the cache: on the
benchmark (2 prompts x G=8, 327-token prompts, 128 tokens) sampling took 17% less time than over the
expanded cache. Scoring a whole completion at once is bound by computation instead, and SDPA's fused
kernel over the expanded cache is faster there (0.58 s against 0.70 s for the reference's no-grad
scoring on the benchmark), and its backward holds no score matrices, so medr1.logprobs expands. Use:

    cache = share_prefix(output.cache, prompt_mask, groups=G, room=max_new_tokens)
    with shared_prefix_attention(model, cache):
        model(input_ids=..., cache=cache, position_ids=..., attention_mask=None, use_cache=True)

The model's text attention is switched to this function for the block (its config's
`_attn_implementation`, restored after); the vision tower is untouched. The mask transformers would build
is skipped (the name has no mask function), since the layers here know the prompt mask themselves.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.cache_utils import DynamicLayer

from medr1.models.families import unwrap

NAME = "medr1_shared_prefix"
SCORES_ELEMENTS = 1 << 24  # attention scores held at once per chunk of queries (64 MB in float32)


def plain_filled_layers(cache) -> list | None:
    """The layers of `cache` when every one is a filled plain DynamicLayer, else None: a sliding-window or
    quantised layer keeps its own update rule, and an empty cache has nothing to lay out again."""
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer or not layer.is_initialized for layer in layers):
        return None
    return layers


class BufferedLayer(DynamicLayer):
    """Keys and values in buffers with room for `room` tokens per row, written in place by `update`;
    `keys` / `values` are views of the filled part (what a DynamicLayer would return, without copying the
    whole cache at every decoding step)."""

    def _allocate(self, like: DynamicLayer, rows: int, room: int) -> None:
        heads, key_dim = like.keys.shape[1], like.keys.shape[-1]
        self.device = like.keys.device
        self.key_buffer = like.keys.new_empty(rows, heads, room, key_dim)
        self.value_buffer = like.values.new_empty(rows, heads, room, like.values.shape[-1])
        self.length = 0
        self.keys, self.values = self.key_buffer[:, :, :0], self.value_buffer[:, :, :0]
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        if end > self.key_buffer.shape[-2]:
            raise RuntimeError(
                f"preallocated KV cache holds {self.key_buffer.shape[-2]} tokens, asked for {end}"
            )
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values


class SharedPrefixLayer(BufferedLayer):
    """One layer's cache: the prompt's keys/values once per prompt, the completions' per row.

    `update` writes the completion tokens into buffers with room for `room` tokens per row and returns
    views of the completion part only; the attention function reads the prompt part from the layer."""

    def __init__(self, layer: DynamicLayer, prompt_mask: torch.Tensor, groups: int, room: int):
        super().__init__()
        self._allocate(layer, layer.keys.shape[0] * groups, room)
        self.prefix_keys, self.prefix_values = layer.keys, layer.values  # [B, kv, P, d]
        self.prefix_length = layer.keys.shape[-2]
        # [B, 1, 1, 1, P]: 0 on the prompt's tokens, -inf on its left padding (added to the scores)
        self.prefix_bias = torch.zeros(prompt_mask.shape, device=self.device).masked_fill(
            ~prompt_mask.to(self.device).bool(), float("-inf")
        )[:, None, None, None, :]

    def get_seq_length(self) -> int:
        return self.prefix_length + self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0


def share_prefix(cache, prompt_mask: torch.Tensor, groups: int, room: int):
    """Turn a prefilled cache of B prompts into a shared-prefix cache for B*G completions of up to `room`
    tokens, in place; returns the cache, or None when its layers are not plain filled DynamicLayers (the
    caller expands the cache instead) or there is no room."""
    layers = plain_filled_layers(cache)
    if room < 1 or layers is None:
        return None
    cache.layers = [SharedPrefixLayer(layer, prompt_mask, groups, room) for layer in layers]
    return cache


def _text_attention_configs(model) -> list:
    """The configs the text decoder's attention modules dispatch on (one object in the Qwen families)."""
    configs = {}
    for module in unwrap(model).modules():
        layer_idx = getattr(module, "layer_idx", None)
        config = getattr(module, "config", None)
        if layer_idx is not None and config is not None and hasattr(module, "o_proj"):
            configs[id(config)] = config
    return list(configs.values())


_active: list = []  # the shared-prefix cache of the innermost `active` block


@contextmanager
def active(cache):
    """Make `cache` the one `attention` reads its layers' prompt parts from, inside the block."""
    _active.append(cache)
    try:
        yield
    finally:
        _active.pop()


@contextmanager
def shared_prefix_attention(model, cache):
    """Run the model's text attention as shared-prefix attention over `cache` inside the block."""
    configs = _text_attention_configs(model)
    if not configs:
        raise RuntimeError(
            f"{type(unwrap(model)).__name__}: no text attention modules found for shared-prefix attention"
        )
    saved = [config._attn_implementation for config in configs]
    for config in configs:
        config._attn_implementation = NAME
    try:
        with active(cache):
            yield
    finally:
        for config, implementation in zip(configs, saved, strict=True):
            config._attn_implementation = implementation


def _attend(query, keys, values, layer: SharedPrefixLayer, first: int):
    """Attention of query [N, H, q, d] (already scaled) over the prompt (layer.prefix_*) and the rows' own
    completion keys/values [N, kv, t, d]; the q queries sit at completion positions first .. first+q-1.

    One softmax over the concatenated scores [B, G, kv, rep*q, P + t]: the prompt's scores come from one
    matmul per prompt on its G rows' queries stacked, and its weights go back through one matmul too, so
    the prompt's keys and values are read once per prompt, never repeated G times."""
    rows, heads, length, dim = query.shape
    prompts, kv_heads, prefix_length = layer.prefix_keys.shape[:3]
    groups, rep, total = rows // prompts, heads // kv_heads, keys.shape[-2]
    per_row = query.reshape(rows, kv_heads, rep * length, dim)  # head h = kv head h // rep, then query
    stacked = per_row.view(prompts, groups, kv_heads, rep * length, dim).transpose(1, 2)
    stacked = stacked.reshape(prompts, kv_heads, groups * rep * length, dim)
    prompt_scores = (stacked @ layer.prefix_keys.transpose(-1, -2)).view(
        prompts, kv_heads, groups, rep * length, prefix_length
    )
    own_scores = (per_row @ keys.transpose(-1, -2)).view(prompts, groups, kv_heads, rep * length, total)
    scores = torch.cat([prompt_scores.transpose(1, 2), own_scores], dim=-1).float()
    scores[..., :prefix_length] += layer.prefix_bias  # the prompts' left padding
    if first < total - 1:  # causal within the completion: some query has later keys
        position = torch.arange(first, first + length, device=query.device).repeat(rep)
        future = torch.arange(total, device=query.device)[None, :] > position[:, None]  # [rep*q, t]
        scores[..., prefix_length:].masked_fill_(future, float("-inf"))
    weights = scores.softmax(-1).to(values.dtype)
    prompt_weights = (
        weights[..., :prefix_length]
        .transpose(1, 2)
        .reshape(prompts, kv_heads, groups * rep * length, prefix_length)
    )
    prompt_out = (prompt_weights @ layer.prefix_values).view(prompts, kv_heads, groups, rep * length, dim)
    own_weights = weights[..., prefix_length:].reshape(rows, kv_heads, rep * length, total)
    own_out = (own_weights @ values).view(prompts, groups, kv_heads, rep * length, dim)
    return (own_out + prompt_out.transpose(1, 2)).reshape(rows, heads, length, dim)


def attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """transformers attention-interface function (registered as NAME): output [N, q, H, d], no weights.

    Several queries per row (a prompt continued by more than one token) are taken in chunks so that at
    most SCORES_ELEMENTS scores exist at once."""
    if not _active:
        raise RuntimeError("shared-prefix attention called outside `shared_prefix_attention`")
    layer = _active[-1].layers[module.layer_idx]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    query = query * scale
    rows, heads, length = query.shape[:3]
    first = key.shape[-2] - length
    per_query = rows * heads * (layer.prefix_length + key.shape[-2])
    step = max(1, min(length, SCORES_ELEMENTS // max(1, per_query)))
    outputs = [
        _attend(query[:, :, start : start + step], key, value, layer, first + start)
        for start in range(0, length, step)
    ]
    output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
    return output.to(query.dtype).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, attention)
