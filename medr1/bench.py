"""`make bench`: the shared-prompt design against the usual way, side by side in one run, as ratios.

On the `bench` checkpoint (Qwen2-VL-2B's proportions scaled down) with B prompts of one 392x392
image each (196 image tokens) and G completions per prompt:
1. rollout: `sample_completions` (prefill once, expand the KV cache G ways) vs
   `model.generate` with every prompt (images included) repeated G times, as
   `num_return_sequences=G` does;
2. training forward + backward: `completion_logprobs(shared_prompt=True)` vs the prompt repeated G
   times in one full-sequence forward (TRL's way); also checks they agree.
Machines here are noisy: read the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medr1.data.records import VQARecord

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def _records(n: int, image_size: int) -> list[VQARecord]:
    import tempfile

    folder = tempfile.mkdtemp(prefix="medr1-bench-")
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        path = f"{folder}/{i}.png"
        Image.fromarray(rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)).save(path)
        records.append(
            VQARecord(
                id=str(i),
                images=(path,),
                question="Which imaging modality is this?",
                options={"A": "CT", "B": "MRI", "C": "X-ray", "D": "Ultrasound"},
                answer="A",
                modality="ct",
                question_type="modality_recognition",
                source="bench",
            )
        )
    return records


def _timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--completion-tokens", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=392)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir

    from medr1.data.batches import PromptCollator
    from medr1.logprobs import completion_logprobs, repeat_prompts
    from medr1.models.checkpoints import resolve_model_path
    from medr1.models.loading import load_model, load_processor
    from medr1.rollout import Sampler, SamplingConfig

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=bench"])
    path = resolve_model_path(cfg.model, cfg.paths.cache_dir)
    model_cfg = cfg.model
    processor, model = load_processor(model_cfg, path), load_model(model_cfg, path).eval()
    batch = PromptCollator(processor, "think")(_records(args.prompts, args.image_size))
    sampler = Sampler.for_model(model, processor)
    sampler.stop_ids = []  # random weights: generate the full length on both sides
    group, tokens = args.generations, args.completion_tokens
    prompt_tokens = batch.model_inputs["input_ids"].shape[1]
    print(
        f"bench model {sum(p.numel() for p in model.parameters()):,} parameters; {args.prompts} prompts x G={group}, "
        f"{prompt_tokens}-token prompts, {tokens}-token completions, {torch.get_num_threads()} threads"
    )

    sampling = SamplingConfig(max_new_tokens=tokens, do_sample=False)
    ours_time, (ids, mask, _) = _timed(lambda: sampler.complete(model, batch, sampling, group), args.repeats)
    # greedy generate() refuses num_return_sequences > 1; repeating each prompt G times is the same work
    repeated = repeat_prompts(batch.model_inputs, group, batch.images_per_prompt)
    reference_kwargs = dict(
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        do_sample=False,
        suppress_tokens=sampler.banned_ids,
        pad_token_id=sampler.pad_id,
    )
    with torch.no_grad():
        hf_time, hf_out = _timed(lambda: model.generate(**repeated, **reference_kwargs), args.repeats)
    same = torch.equal(hf_out[:, prompt_tokens:], ids)
    print(
        f"rollout   shared prefill {ours_time:6.2f} s | generate(), prompts repeated G x  {hf_time:6.2f} s | "
        f"speed-up x{hf_time / ours_time:.2f} | greedy tokens identical: {same}"
    )

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

    shared_time, (shared_logp, shared_norm) = _timed(lambda: step(True), args.repeats)
    repeated_time, (repeated_logp, repeated_norm) = _timed(lambda: step(False), args.repeats)
    difference = float((shared_logp - repeated_logp).abs().max())
    print(
        f"training  shared prompt  {shared_time:6.2f} s | prompt repeated G times        {repeated_time:6.2f} s | "
        f"speed-up x{repeated_time / shared_time:.2f} | max |dlogp| {difference:.1e} | grad norm {shared_norm:.4f} vs "
        f"{repeated_norm:.4f}"
    )


if __name__ == "__main__":
    main()
