"""Shared-prefix attention (medr1.shared_prefix): one copy of each prompt's keys and values for its G
completions gives the numbers of attention over the expanded cache, and the same sampled tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from medr1.rollout import SamplingConfig, greedy
from medr1.shared_prefix import (
    NAME,
    SharedPrefixLayer,
    active,
    attention,
    share_prefix,
    shared_prefix_attention,
)
from tests.helpers.batches import padded_batch, sample_ids


class _Cache:
    def __init__(self, layers):
        self.layers = layers


def _layer(keys, values):
    layer = DynamicLayer()
    layer.update(keys, values)
    return layer


@pytest.mark.parametrize(
    ("queries", "dtype", "tolerance"),
    [(1, torch.float32, 1e-5), (5, torch.float32, 1e-5), (1, torch.bfloat16, 2e-2)],
)
def test_attention_matches_sdpa_over_the_expanded_cache(queries, dtype, tolerance):
    """Random prompts with left padding, GQA (4 query heads on 2 kv heads), G=3: the prompt part, the
    completion part (causal) and their merge equal SDPA over [prompt; completion] repeated G ways (in
    float32; a bfloat16 model's tensors give bfloat16 out, to bfloat16's precision)."""
    torch.manual_seed(0)
    prompts, groups, heads, kv_heads, dim, length, done = 2, 3, 4, 2, 8, 6, 4
    keys, values = torch.randn(prompts, kv_heads, length, dim), torch.randn(prompts, kv_heads, length, dim)
    prompt_mask = torch.ones(prompts, length, dtype=torch.long)
    prompt_mask[1, :2] = 0  # the second prompt is two tokens shorter (left padding)
    rows = prompts * groups
    own_keys = torch.randn(rows, kv_heads, done + queries, dim)
    own_values = torch.randn(rows, kv_heads, done + queries, dim)
    query = torch.randn(rows, heads, queries, dim)

    class Module:
        layer_idx = 0

    low = SharedPrefixLayer(
        _layer(keys.to(dtype), values.to(dtype)), prompt_mask, groups, room=done + queries
    )
    low.update(own_keys.to(dtype), own_values.to(dtype))
    with active(_Cache([low])):
        out, _ = attention(Module(), query.to(dtype), low.keys, low.values, scaling=dim**-0.5)
    assert out.dtype == dtype
    out = out.float()

    full_keys = torch.cat([keys.repeat_interleave(groups, 0), own_keys], 2).repeat_interleave(
        heads // kv_heads, 1
    )
    full_values = torch.cat([values.repeat_interleave(groups, 0), own_values], 2).repeat_interleave(
        heads // kv_heads, 1
    )
    total = length + done + queries
    allowed = torch.ones(rows, 1, queries, total, dtype=torch.bool)
    allowed[:, :, :, :length] = prompt_mask.bool().repeat_interleave(groups, 0)[:, None, None, :]
    own_position = torch.arange(done, done + queries)[:, None]
    allowed[:, :, :, length:] = torch.arange(done + queries)[None, :] <= own_position
    expected = F.scaled_dot_product_attention(query, full_keys, full_values, attn_mask=allowed)
    assert out.shape == (rows, queries, heads, dim)
    torch.testing.assert_close(out, expected.transpose(1, 2), atol=tolerance, rtol=tolerance)
    masked_prompt = ~prompt_mask.bool()[1]
    assert masked_prompt.any()  # the padded positions mattered: unmasked, the output differs
    allowed[groups:, :, :, :length] = True
    unmasked = F.scaled_dot_product_attention(query, full_keys, full_values, attn_mask=allowed)
    assert not torch.allclose(unmasked.transpose(1, 2)[groups:], out[groups:], atol=1e-3)


@pytest.mark.parametrize("sampling", [SamplingConfig(max_new_tokens=40, temperature=1.5), greedy(40)])
def test_shared_prefix_samples_the_tokens_of_the_expanded_cache(instruct_setup, sampling):
    model, processor, batch = instruct_setup
    ids, mask = sample_ids(model, processor, batch, sampling, "shared")
    ids_expanded, mask_expanded = sample_ids(model, processor, batch, sampling, "preallocated")
    assert torch.equal(ids, ids_expanded)
    assert torch.equal(mask, mask_expanded)
    assert mask.sum() > 2 * ids.shape[0], "completions must be several tokens long for the test to bite"
    assert model.config.text_config._attn_implementation == "sdpa"  # restored after the block


def test_the_attention_switch_is_restored_after_an_error(instruct_setup):
    model, _, _ = instruct_setup
    with pytest.raises(RuntimeError, match="boom"), shared_prefix_attention(model, _Cache([])):
        assert model.config.text_config._attn_implementation == NAME
        assert model.config.vision_config._attn_implementation != NAME  # the vision tower is untouched
        raise RuntimeError("boom")
    assert model.config.text_config._attn_implementation == "sdpa"


def test_only_plain_filled_layers_are_shared():
    keys = torch.zeros(1, 1, 3, 2)
    mask = torch.ones(1, 3)
    sliding = DynamicSlidingWindowLayer(sliding_window=4)
    sliding.update(keys, keys)
    assert share_prefix(_Cache([sliding]), mask, 2, 5) is None
    assert share_prefix(DynamicCache(), mask, 2, 5) is None
    assert share_prefix(_Cache([_layer(keys, keys)]), mask, 2, 0) is None  # no room: nothing to decode
    shared = share_prefix(_Cache([_layer(keys, keys)]), mask, 2, 5)
    assert isinstance(shared.layers[0], SharedPrefixLayer) and shared.layers[0].get_seq_length() == 3
    with pytest.raises(RuntimeError, match="holds 5 tokens"):
        shared.layers[0].update(torch.zeros(2, 1, 6, 2), torch.zeros(2, 1, 6, 2))


def test_sample_rows_draws_from_each_rows_distribution():
    """Inverse-CDF sampling: frequencies match the probabilities (200k draws per row, 5 standard errors),
    and entries of probability 0 (top-k / banned tokens, a zero at either end) are never drawn."""
    from medr1.rollout import sample_rows

    torch.manual_seed(0)
    probs = torch.tensor(
        [[0.0, 0.5, 0.0, 0.25, 0.25, 0.0], [0.1, 0.2, 0.3, 0.0, 0.15, 0.25], [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]]
    )
    draws = 200_000
    rows = probs.repeat_interleave(draws, 0)
    picked = sample_rows(rows).view(3, draws)
    counts = torch.stack([torch.bincount(row, minlength=6) for row in picked]).double() / draws
    error = (probs.double() * (1 - probs.double()) / draws).sqrt()
    assert ((counts - probs.double()).abs() <= 5 * error + 1e-12).all(), counts
    assert (counts[probs == 0] == 0).all()


@pytest.mark.parametrize("name", ["tiny_qwen2_5_vl", "tiny_qwen3_vl"])
def test_every_shared_prompt_family_samples_the_same_tokens_from_one_prompt_copy(name, synthetic_splits):
    """Qwen2.5-VL and Qwen3-VL (q/k norms, interleaved M-RoPE) take the shared-prefix decode too."""
    from tests.test_model_families import base_model

    model, processor = base_model(name)
    batch = padded_batch(processor, synthetic_splits.train)
    sampling = SamplingConfig(max_new_tokens=12, temperature=1.5)
    ids, mask = sample_ids(model, processor, batch, sampling, "shared", group=3)
    expected = sample_ids(model, processor, batch, sampling, "preallocated", group=3)
    assert torch.equal(ids, expected[0]) and torch.equal(mask, expected[1])
    assert mask.sum() > 2 * ids.shape[0]
