"""Sampling and scoring with the shared prompt pass: checked against the plain computations (the
shared-prompt vs repeated-prompt and greedy vs generate() checks run for every family in
tests/test_model_families.py)."""

from __future__ import annotations

import pytest
import torch

from medr1.logprobs import completion_logprobs
from medr1.models.families import VISION_TOKENS
from medr1.models.loading import load_model, load_processor
from medr1.rollout import Sampler, SamplingConfig, filter_logits
from tests.helpers.batches import padded_batch
from tests.helpers.config import compose_config


@pytest.fixture(scope="module")
def setup(tiny_base_path, synthetic_splits):
    cfg = compose_config([])
    processor = load_processor(cfg.model, tiny_base_path)
    model = load_model(cfg.model, tiny_base_path).eval()
    return model, processor, padded_batch(processor, synthetic_splits.train)


def test_sampled_logprobs_are_the_sampling_distribution(setup):
    """The scored log-prob of a greedy token is the max of the model's next-token distribution."""
    model, processor, batch = setup
    sampler = Sampler.for_model(model, processor)
    ids, mask, _ = sampler.complete(model, batch, SamplingConfig(max_new_tokens=6, do_sample=False))
    with torch.no_grad():
        scores = completion_logprobs(model, batch.model_inputs, ids, mask, num_generations=1)
    first = model(**batch.model_inputs).logits[:, -1].log_softmax(-1)
    banned = torch.tensor(sampler.banned_ids)
    first[:, banned] = float("-inf")
    assert torch.allclose(scores.logprobs[:, 0], first.max(-1).values, atol=1e-5)


def test_vision_tokens_are_never_sampled(setup):
    model, processor, batch = setup
    sampler = Sampler.for_model(model, processor)
    banned = {processor.tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    assert banned == set(sampler.banned_ids)
    torch.manual_seed(0)
    ids, mask, _ = sampler.complete(
        model, batch, SamplingConfig(max_new_tokens=24, temperature=3.0), num_generations=8
    )
    sampled = set(ids[mask.bool()].tolist())
    assert not sampled & banned
    # and without the ban this random model does produce them, so the test can fail
    logits = torch.zeros(1, 10)
    assert torch.isinf(filter_logits(logits, SamplingConfig(max_new_tokens=1), torch.tensor([3, 5])))[
        0, [3, 5]
    ].all()


def test_gradient_checkpointing_scores_the_same_without_a_cache(setup):
    """Checkpointed models cannot keep a KV cache; scoring falls back to full sequences, same values."""
    model, processor, batch = setup
    torch.manual_seed(1)
    ids, mask, _ = Sampler.for_model(model, processor).complete(
        model, batch, SamplingConfig(max_new_tokens=8), num_generations=2
    )
    with torch.no_grad():
        expected = completion_logprobs(model, batch.model_inputs, ids, mask, num_generations=2).logprobs
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    try:
        scores = completion_logprobs(
            model, batch.model_inputs, ids, mask, num_generations=2, images_per_prompt=batch.images_per_prompt
        )
        (scores.logprobs * mask).sum().backward()
    finally:
        model.activation_checkpointing_disable()
        model.eval()
        model.zero_grad()
    assert torch.allclose(scores.logprobs.detach()[mask.bool()], expected[mask.bool()], atol=1e-5)
