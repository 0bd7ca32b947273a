"""Every model family end to end on its tiny offline checkpoint: sampling and scoring checked against
transformers, then GRPO and SFT steps, full and LoRA tuning, evaluation, and the saved model reloaded.

The Qwen families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) take the shared-prompt path, each with its own
M-RoPE position ids; LLaVA stands for every other image-text-to-text model (the generic path:
repeated prompts and generate()).
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from transformers import AutoModelForImageTextToText

from medr1.data.batches import PromptCollator
from medr1.evaluate import evaluate
from medr1.logprobs import completion_logprobs, prefill_prompts
from medr1.models.checkpoints import resolve_model_path
from medr1.models.families import family_of
from medr1.models.loading import load_model, load_processor
from medr1.models.tuning import apply_tuning
from medr1.rollout import Sampler, SamplingConfig
from medr1.train import train
from tests.helpers.config import FAST, compose_config

FAMILIES = {
    "tiny": "qwen2_vl",
    "tiny_qwen2_5_vl": "qwen2_5_vl",
    "tiny_qwen3_vl": "qwen3_vl",
    "tiny_llava": "llava",
}
SHARED_PROMPT = {"qwen2_vl": True, "qwen2_5_vl": True, "qwen3_vl": True, "llava": False}


def base_model(name: str):
    """The family's random (not warm-started) tiny checkpoint, loaded as real models are."""
    cfg = compose_config([f"model={name}", "model.build.warmstart=null"])
    path = resolve_model_path(cfg.model, cfg.paths.cache_dir)
    return load_model(cfg.model, path).eval(), load_processor(cfg.model, path)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_setup(request, synthetic_splits):
    model, processor = base_model(request.param)
    records = sorted(
        synthetic_splits.train, key=lambda r: len(r.question) + sum(map(len, r.options.values()))
    )
    batch = PromptCollator(processor, "think")([records[0], records[-1], records[len(records) // 2]])
    assert batch.model_inputs["attention_mask"].min() == 0, "fixture must contain left padding"
    return request.param, model, processor, batch


def test_family_is_recognised_and_takes_its_path(family_setup):
    name, model, _, _ = family_setup
    family = family_of(model)
    assert family.name == FAMILIES[name]
    assert family.shared_prompt == SHARED_PROMPT[family.name]


def test_scored_logprobs_equal_transformers_own_logits_for_greedy_completions(family_setup):
    """Our scoring (shared prompt or full sequence, with the family's position ids) gives the log-probs
    that transformers' generate() computed while producing the same tokens."""
    _, model, processor, batch = family_setup
    sampler = Sampler.for_model(model, processor)
    ids, mask, _ = sampler.complete(model, batch, SamplingConfig(max_new_tokens=8, do_sample=False))
    out = model.generate(
        **batch.model_inputs,
        max_new_tokens=8,
        do_sample=False,
        suppress_tokens=sampler.banned_ids,
        eos_token_id=sampler.stop_ids,
        pad_token_id=sampler.pad_id,
        output_logits=True,
        return_dict_in_generate=True,
    )
    expected_ids = out.sequences[:, batch.model_inputs["input_ids"].shape[1] :]
    width = ids.shape[1]
    assert torch.equal(ids[mask.bool()], expected_ids[:, :width][mask.bool()])
    raw = torch.stack(out.logits, 1)[:, :width].float().log_softmax(-1)
    expected = raw.gather(-1, ids[..., None]).squeeze(-1)
    with torch.no_grad():
        scores = completion_logprobs(model, batch.model_inputs, ids, mask, num_generations=1)
    valid = mask.bool()
    assert torch.allclose(scores.logprobs[valid], expected[valid], atol=1e-4)


def scores_and_gradient(model, batch, ids, mask, **scoring) -> tuple[torch.Tensor, torch.Tensor]:
    """The completions' log-probs and the gradient of their masked sum, flattened over the parameters
    (the model's gradients are cleared before and after)."""
    model.zero_grad()
    scores = completion_logprobs(model, batch.model_inputs, ids, mask, **scoring)
    (scores.logprobs * mask).sum().backward()
    gradient = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad()
    return scores.logprobs.detach(), gradient


def test_sampled_group_scores_and_gradients_match_the_repeated_prompt_reference(family_setup):
    _, model, processor, batch = family_setup
    torch.manual_seed(0)
    sampler = Sampler.for_model(model, processor)
    ids, mask, texts = sampler.complete(
        model, batch, SamplingConfig(max_new_tokens=10, temperature=1.5), num_generations=3
    )
    assert ids.shape[0] == len(texts) == 3 * len(batch)
    assert not set(ids[mask.bool()].tolist()) & set(sampler.banned_ids)
    results, grads = zip(
        *(
            scores_and_gradient(
                model,
                batch,
                ids,
                mask,
                num_generations=3,
                shared_prompt=shared,
                images_per_prompt=batch.images_per_prompt,
            )
            for shared in (True, False)
        ),
        strict=True,
    )
    valid = mask.bool()
    assert torch.allclose(results[0][valid], results[1][valid], atol=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-4, rtol=1e-3)
    assert grads[0].norm() > 0


def test_a_kept_prompt_pass_samples_and_scores_as_running_the_prompts_again(family_setup):
    """A training rollout runs the prompts once with grad (prefill_prompts), samples from a detached copy
    and the update scores on the kept pass (medr1.rl.module): the tokens, log-probs and gradients are
    those of sampling and scoring that run the prompts themselves, and sampling leaves the kept cache as
    it was. The generic path (generate() runs its own prompts) refuses a kept pass."""
    name, model, processor, batch = family_setup
    if not SHARED_PROMPT[FAMILIES[name]]:
        ids = torch.full((3, 2), 5)
        with pytest.raises(ValueError, match="shared-prompt path only"):
            completion_logprobs(
                model,
                batch.model_inputs,
                ids,
                torch.ones_like(ids),
                num_generations=1,
                prefill=prefill_prompts(model, batch.model_inputs),
            )
        return
    sampler = Sampler.for_model(model, processor)
    sampling, group = SamplingConfig(max_new_tokens=10, temperature=1.5), 3
    torch.manual_seed(0)
    ids, mask, _ = sampler.complete(model, batch, sampling, group)
    kept = prefill_prompts(model, batch.model_inputs)
    assert kept.logits.requires_grad
    before = [(layer.keys.clone(), layer.values.clone()) for layer in kept.cache.layers]
    torch.manual_seed(0)
    kept_ids, kept_mask, _ = sampler.complete(model, batch, sampling, group, prefill=kept.detached())
    assert torch.equal(kept_ids, ids) and torch.equal(kept_mask, mask)
    for (keys, values), layer in zip(before, kept.cache.layers, strict=True):
        assert torch.equal(keys, layer.keys) and torch.equal(values, layer.values)
    results, grads = zip(
        *(
            scores_and_gradient(model, batch, ids, mask, num_generations=group, prefill=prefill)
            for prefill in (kept, None)
        ),
        strict=True,
    )
    assert torch.equal(results[0], results[1])
    assert torch.equal(grads[0], grads[1]) and grads[0].norm() > 0


def test_every_trainable_parameter_gets_a_gradient_under_full_tuning(family_setup):
    """DDP's reducer waits for a gradient of every trainable parameter: modules a family never runs
    (LLaVA's CLIP post_layernorm, the layers after vision_feature_layer) are frozen by full tuning."""
    name, model, _, batch = family_setup
    model = apply_tuning(model, compose_config(["tuning=full"]).tuning)
    ids = torch.full((3, 2), 5)
    try:
        scores = completion_logprobs(model, batch.model_inputs, ids, torch.ones_like(ids), num_generations=1)
        scores.logprobs.sum().backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, missing
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        assert bool(frozen) == (FAMILIES[name] == "llava")
        assert all("vision_tower" in n for n in frozen)
    finally:
        model.zero_grad(set_to_none=True)
        model.requires_grad_(True)


# --- end to end through the real config --------------------------------------------------------


def run_overrides(name: str) -> list[str]:
    return [
        f"model={name}",
        *FAST,
        "trainer.max_steps=2",
        "trainer.val_check_interval=100",  # no validation: the test evaluation is checked
        "checkpoint.every_n_steps=100",
        "data.max_test_per_modality=2",
        "algo.max_completion_length=24",
    ]


@pytest.mark.parametrize("name", list(FAMILIES)[1:])  # model=tiny: tests/test_train.py
@pytest.mark.parametrize("algo,tuning", [("grpo", "full"), ("sft", "lora")])
def test_family_trains_evaluates_saves_and_reloads(name, algo, tuning, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="medr1")
    cfg = compose_config(
        [*run_overrides(name), f"algo={algo}", f"tuning={tuning}", "algo.optimizer.lr=1e-3"], tmp_path
    )
    start = resolve_model_path(cfg.model, cfg.paths.cache_dir)
    before = {n: p.clone() for n, p in AutoModelForImageTextToText.from_pretrained(start).named_parameters()}
    summary = train(cfg)
    assert summary["n"] > 0 and 0.0 <= summary["accuracy"] <= 1.0
    assert f"model family {FAMILIES[name]}" in caplog.text
    final = tmp_path / "checkpoints" / "final"
    reloaded = AutoModelForImageTextToText.from_pretrained(final)
    assert reloaded.config.model_type == FAMILIES[name]
    after = dict(reloaded.named_parameters())
    moved = [n for n in before if not torch.equal(before[n], after[n])]
    assert moved, "training changed no weight"
    if tuning == "lora":  # adapters merged into the saved model: only the language model's layers move
        assert not [n for n in moved if any(v in n for v in ("visual", "vision_tower"))]
    # the saved folder evaluates, through mode=eval, to the run's own test accuracy
    eval_cfg = compose_config(
        [*run_overrides(name), "mode=eval", f"model.path={final}", "eval.reuse=false"], tmp_path / "reload"
    )
    again = evaluate(eval_cfg)
    assert again["n"] == summary["n"]
    assert again["accuracy"] == pytest.approx(summary["accuracy"])
    written = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert written["accuracy"] == pytest.approx(summary["accuracy"])
