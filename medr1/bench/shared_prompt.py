"""The shared-prompt design against the usual way, on the benchmark's checkpoint, prompts and images:
1. rollout: `Sampler.complete` (prefill once, one copy of each prompt's keys and values) vs `model.generate` with every
   prompt (images included) repeated G times, as `num_return_sequences=G` does; greedy on both sides,
   no stop token (random weights: both generate the full length), so the tokens must be identical;
2. training forward + backward: `completion_logprobs(shared_prompt=True)` vs the prompt repeated G
   times in one full-sequence forward (TRL's way); also checks the two agree.
Issue 14 keeps the target "rollout at least 2x generate()" visible here.
"""

from __future__ import annotations

import statistics
import time

import torch

from medr1.bench.common import BenchSettings, compose_bench_config, peak_rss_mb


def _timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def run(settings: BenchSettings) -> dict:
    from hydra.utils import instantiate

    from medr1.data.batches import PromptCollator
    from medr1.logprobs import completion_logprobs, repeat_prompts
    from medr1.models.checkpoints import resolve_model_path
    from medr1.models.loading import load_model, load_processor
    from medr1.rollout import Sampler, SamplingConfig

    cfg = compose_bench_config(settings)
    torch.manual_seed(int(cfg.seed))
    torch.set_num_threads(int(cfg.num_threads))
    path = resolve_model_path(cfg.model, cfg.paths.cache_dir)
    processor, model = load_processor(cfg.model, path), load_model(cfg.model, path).eval()
    records = instantiate(cfg.data.source).load().train[: settings.prompts]
    batch = PromptCollator(processor, cfg.prompt)(records)
    sampler = Sampler.for_model(model, processor)
    sampler.stop_ids = []  # random weights: generate the full length on both sides
    group, tokens, repeats = settings.generations, settings.completion_tokens, max(1, settings.steps)
    prompt_tokens = batch.model_inputs["input_ids"].shape[1]

    sampling = SamplingConfig(max_new_tokens=tokens, do_sample=False)
    sampler.complete(model, batch, sampling, group)  # warm-up
    ours, (ids, mask, _) = _timed(lambda: sampler.complete(model, batch, sampling, group), repeats)
    # greedy generate() refuses num_return_sequences > 1; repeating each prompt G times is the same work
    repeated = repeat_prompts(batch.model_inputs, group, batch.images_per_prompt)
    generate_kwargs = dict(
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        do_sample=False,
        suppress_tokens=sampler.banned_ids,
        pad_token_id=sampler.pad_id,
    )
    with torch.no_grad():
        generated, hf_out = _timed(lambda: model.generate(**repeated, **generate_kwargs), repeats)

    model.train()

    def step(shared: bool):
        model.zero_grad(set_to_none=True)
        scores = completion_logprobs(
            model,
            batch.model_inputs,
            ids,
            mask,
            num_generations=group,
            shared_prompt=shared,
            images_per_prompt=batch.images_per_prompt,
        )
        (scores.logprobs * mask).sum().backward()
        norm = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in model.parameters() if p.grad is not None))
        return scores.logprobs.detach(), float(norm)

    shared_time, (shared_logp, shared_norm) = _timed(lambda: step(True), repeats)
    repeated_time, (repeated_logp, repeated_norm) = _timed(lambda: step(False), repeats)
    return {
        "framework": "shared_prompt",
        "prompt_tokens": int(prompt_tokens),
        "repeats": repeats,
        "rollout": {
            "shared_prefill_s": ours,
            "generate_repeated_s": generated,
            "speedup": generated / ours,
            "greedy_tokens_identical": bool(torch.equal(hf_out[:, prompt_tokens:], ids)),
        },
        "training": {
            "shared_prompt_s": shared_time,
            "repeated_prompt_s": repeated_time,
            "speedup": repeated_time / shared_time,
            "max_abs_logprob_difference": float((shared_logp - repeated_logp).abs().max()),
            "grad_norm_shared": shared_norm,
            "grad_norm_repeated": repeated_norm,
        },
        "peak_rss_mb": peak_rss_mb(),
    }
