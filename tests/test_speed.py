"""The demo's speed-ups change no numbers: sampling into a preallocated KV cache gives the tokens the
growing cache gives, stopping when every row has stopped gives the tokens a longer run gives, scoring
only up to the longest real completion gives the log-probs of a padded one, the log-probs and
entropy read from one log-softmax per row chunk equal the row-by-row ones, and the update scoring on
the rollout's prompt pass trains exactly as running the prompts again (docs/speed.md)."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2VLForConditionalGeneration
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

import medr1.logprobs as logprobs_module
from medr1.logprobs import completion_logprobs, token_scores
from medr1.rl.module import GRPOModule
from medr1.rollout import PreallocatedLayer, Sampler, SamplingConfig, greedy, preallocate
from medr1.train import train
from tests.helpers.batches import sample_ids
from tests.helpers.config import FAST, compose_config

# --- sampling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sampling", [SamplingConfig(max_new_tokens=40, temperature=1.5), greedy(40)])
def test_preallocated_cache_samples_the_same_tokens(instruct_setup, sampling):
    model, processor, batch = instruct_setup
    ids, mask = sample_ids(model, processor, batch, sampling, kv_layout="preallocated")
    ids_grown, mask_grown = sample_ids(model, processor, batch, sampling, kv_layout="growing")
    assert torch.equal(ids, ids_grown)
    assert torch.equal(mask, mask_grown)
    assert mask.sum() > 2 * ids.shape[0], "completions must be several tokens long for the test to bite"


def test_early_stop_gives_the_tokens_of_a_run_to_the_longest_completion(instruct_setup):
    """Decoding stops when every row has stopped: the completions are as wide as the longest one, and a
    run asked for exactly that many tokens samples the same tokens with the same seed."""
    model, processor, batch = instruct_setup
    sampling = SamplingConfig(max_new_tokens=40)
    ids, mask = sample_ids(model, processor, batch, sampling)
    width = ids.shape[1]
    assert width < 40, "the tiny instruct model stops well before 40 tokens"
    assert mask[:, -1].any(), "the last column holds the longest completion's last token"
    assert mask.sum(1).max() == width
    short_ids, short_mask = sample_ids(model, processor, batch, SamplingConfig(max_new_tokens=width))
    assert torch.equal(ids, short_ids) and torch.equal(mask, short_mask)


def test_preallocated_layer_returns_the_growing_cache_values():
    torch.manual_seed(0)
    prompt_keys, prompt_values = torch.randn(4, 2, 5, 8), torch.randn(4, 2, 5, 8)
    grown = DynamicLayer()
    grown.update(prompt_keys, prompt_values)
    layer = PreallocatedLayer(grown, extra=3)
    for _ in range(3):
        keys, values = torch.randn(4, 2, 1, 8), torch.randn(4, 2, 1, 8)
        expected = grown.update(keys, values)
        got = layer.update(keys, values)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        assert layer.get_seq_length() == grown.get_seq_length()
    with pytest.raises(RuntimeError, match="holds 8 tokens, asked for 9"):
        layer.update(keys, values)


def test_only_plain_dynamic_caches_are_preallocated():
    filled = DynamicCache()
    filled.update(torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4), 0)
    assert preallocate(filled, 3) and isinstance(filled.layers[0], PreallocatedLayer)
    sliding = DynamicCache()
    sliding.layers = [DynamicSlidingWindowLayer(sliding_window=4)]
    sliding.layers[0].update(torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4))
    assert not preallocate(sliding, 3) and type(sliding.layers[0]) is DynamicSlidingWindowLayer
    assert not preallocate(DynamicCache(), 3)  # nothing filled yet


# --- scoring -----------------------------------------------------------------------------------


def _row_by_row(logits, ids):
    """The scoring before the speed-up: one log-softmax per row, the entropy from a second one."""
    logprobs = torch.stack(
        [
            r.float().log_softmax(-1).gather(-1, i[:, None]).squeeze(-1)
            for r, i in zip(logits, ids, strict=True)
        ]
    )
    entropy = torch.stack([-(r.log_softmax(-1).exp() * r.log_softmax(-1)).sum(-1) for r in logits.detach()])
    return logprobs, entropy


@pytest.mark.parametrize(
    "rows_elements", [1 << 22, 3 * 7 * 50, 1]
)  # one chunk, chunks of 3 rows, one row each
def test_token_scores_equal_row_by_row_scores(monkeypatch, rows_elements):
    monkeypatch.setattr(logprobs_module, "ROWS_ELEMENTS", rows_elements)
    torch.manual_seed(0)
    logits = (3 * torch.randn(10, 7, 50)).requires_grad_()
    ids = torch.randint(0, 50, (10, 7))
    logprobs, entropy = token_scores(logits, ids, with_entropy=True)
    expected, expected_entropy = _row_by_row(logits, ids)
    assert torch.equal(logprobs, expected)
    assert torch.equal(entropy, expected_entropy)
    assert not entropy.requires_grad and logprobs.requires_grad
    (gradient,) = torch.autograd.grad(logprobs.sum(), logits)
    (expected_gradient,) = torch.autograd.grad(expected.sum(), logits)
    assert torch.equal(gradient, expected_gradient)
    assert token_scores(logits, ids, with_entropy=False)[1] is None


def test_scoring_the_longest_real_completion_equals_scoring_it_padded(instruct_setup):
    """Completions trimmed to the longest real one score the same as with padding columns after it."""
    model, processor, batch = instruct_setup
    ids, mask = sample_ids(model, processor, batch, SamplingConfig(max_new_tokens=40))
    pad = Sampler.for_model(model, processor).pad_id
    padded_ids = torch.cat([ids, torch.full((ids.shape[0], 9), pad)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(mask.shape[0], 9, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        trimmed = completion_logprobs(
            model, batch.model_inputs, ids, mask, num_generations=4, with_entropy=True
        )
        padded = completion_logprobs(
            model, batch.model_inputs, padded_ids, padded_mask, num_generations=4, with_entropy=True
        )
    valid = mask.bool()
    assert torch.allclose(trimmed.logprobs[valid], padded.logprobs[:, : ids.shape[1]][valid], atol=1e-5)
    assert torch.allclose(trimmed.entropy[valid], padded.entropy[:, : ids.shape[1]][valid], atol=1e-5)


def test_entropy_is_the_entropy_of_the_models_next_token_distribution(instruct_setup):
    """Against probabilities from one full-sequence forward (no shared prompt, softmax not log-softmax)."""
    model, processor, batch = instruct_setup
    ids, mask = sample_ids(
        model, processor, batch, SamplingConfig(max_new_tokens=12, temperature=2.0), group=1
    )
    with torch.no_grad():
        scores = completion_logprobs(
            model, batch.model_inputs, ids, mask, num_generations=1, with_entropy=True
        )
        logits = logprobs_module._logits_full_sequence(model, dict(batch.model_inputs), ids, mask)
    probs = logits.float().softmax(-1)
    expected = -(probs * probs.clamp(min=1e-30).log()).sum(-1)
    valid = mask.bool()
    assert torch.allclose(scores.entropy[valid], expected[valid], atol=1e-4)
    assert scores.entropy[valid].max() > 0.1, "some uncertain tokens, so a zero entropy would fail"


# --- the rollout's prompt pass, scored on by the update ---------------------------------------


def _train_counting_image_forwards(run_dir, monkeypatch, reuse: bool) -> int:
    """A 3-step GRPO run; returns how many forward calls (policy and reference) carried images."""
    calls = [0]
    forward = Qwen2VLForConditionalGeneration.forward

    def counting(self, *args, **kwargs):
        calls[0] += kwargs.get("pixel_values") is not None
        return forward(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Qwen2VLForConditionalGeneration, "forward", counting)
        if not reuse:  # the other real path: the update runs the prompts again
            patch.setattr(GRPOModule, "_prefill_reusable", lambda self, batch: False)
        train(compose_config(FAST, run_dir))
    return calls[0]


def test_scoring_on_the_rollouts_prompt_pass_trains_exactly_as_running_the_prompts_again(
    tmp_path, monkeypatch
):
    """The update scores on the rollout's own prompt pass (kept with grad) instead of running the
    prompts again: one image-carrying forward fewer per step, and the same metrics row for row and the
    same weights bit for bit after 3 steps."""
    reused = _train_counting_image_forwards(tmp_path / "reused", monkeypatch, reuse=True)
    again = _train_counting_image_forwards(tmp_path / "again", monkeypatch, reuse=False)
    assert again - reused == 3  # one per step
    metrics = [(tmp_path / run / "metrics.csv").read_text() for run in ("reused", "again")]
    assert metrics[0] == metrics[1] and "train/kl" in metrics[0]
    weights = [
        torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        for run in ("reused", "again")
    ]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


@pytest.mark.parametrize(
    ("overrides", "reusable"),
    [
        ([], True),
        (["algo.micro_batch_size=3"], True),  # one backward pass over the 3 prompts
        (["algo.micro_batch_size=2"], False),  # two: each would need its own slice of the graph
        (["algo.num_iterations=2"], False),  # the second update's weights differ from the rollout's
        (["algo.dynamic_sampling=true"], False),  # the kept prompts come from several rollouts
        (["algo.shared_prompt_forward=false"], False),
        (["model.gradient_checkpointing=true"], False),  # no cache under checkpointing
        (["tuning=lora"], False),  # LoRA dropout 0.05: train-mode forwards differ from eval-mode ones
        (["tuning=lora", "tuning.dropout=0"], True),
    ],
)
def test_the_prompt_pass_is_reused_only_where_it_gives_the_same_numbers(overrides, reusable, instruct_setup):
    from medr1.builders import build_datamodule, build_module, load_policy

    cfg = compose_config([*FAST, *overrides])
    policy = load_policy(cfg, train=True)
    datamodule = build_datamodule(cfg, policy.processor)
    module = build_module(cfg, policy, datamodule)
    _, _, batch = instruct_setup
    assert len(batch) == 3
    assert module._prefill_reusable(batch) is reusable
