"""medr1's side of the benchmark: its real training path, built as `run.py` builds it.

The Hydra config is composed with the benchmark's overrides (medr1.bench.common.medr1_overrides), then
the same builders as medr1.train.train make the policy, datamodule, GRPOModule and Lightning Trainer,
and `trainer.fit` runs warm-up + timed + FLOP-counted steps. Phases are timed by wrapping bound methods
of the running instances, as `mode=check` times them (medr1.profiling.time_grpo_phases):
rollout = module._sampled_rollout (the prompts' prefill, decoding and rewards), reference = module._reference_logprobs,
optimizer = optimizer.step, policy = module.update minus optimizer.step.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import lightning as L
import torch

from medr1.bench.common import (
    BenchSettings,
    compose_bench_config,
    peak_rss_mb,
    snapshot,
    summarise,
    weight_change,
)
from medr1.profiling import PhaseTimer, StepClock, policy_phases, time_grpo_phases


def run(settings: BenchSettings) -> dict:
    from medr1.builders import build_datamodule, build_module, build_trainer, load_policy

    cfg = compose_bench_config(settings)
    L.seed_everything(int(cfg.seed), workers=True)
    torch.set_num_threads(int(cfg.num_threads))
    policy = load_policy(cfg, train=True)
    datamodule = build_datamodule(cfg, policy.processor)
    datamodule.setup("fit")
    module = build_module(cfg, policy, datamodule)

    timer = PhaseTimer()
    faults: list[str | None] = []

    prompt_tokens: list[int] = []

    def note_prompt_length(timer, result, args, kwargs):  # _sampled_rollout(batch, ...) -> Rollout
        prompt_tokens.append(int(args[0].model_inputs["input_ids"].shape[1]))

    def note_fault(timer, result, args, kwargs):
        faults.append(result[1])

    time_grpo_phases(timer, module, on_rollout=note_prompt_length, on_update=note_fault)

    clock = StepClock(
        timer,
        flop_step=settings.flop_step,
        kept=lambda index: settings.warmup <= index < settings.warmup + settings.steps,
    )
    initial = snapshot(module.model)
    run_dir = Path(tempfile.mkdtemp(prefix="medr1-bench-run-"))
    trainer = build_trainer(cfg, run_dir, [], [clock])
    datamodule.batch_size = settings.prompts
    trainer.fit(module, datamodule=datamodule)

    policy_phases(timer.steps)
    summary = summarise(timer.steps, settings, clock.flops.total if clock.flops else None)
    return {
        "framework": "medr1",
        **summary,
        "steps": timer.steps,
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
        "prompt_tokens": max(prompt_tokens),
        "optimizer_steps": int(trainer.global_step),
        "trained": {
            **weight_change(initial, module.model),
            "updates": len(faults),
            "loss_finite": bool(faults) and all(f is None for f in faults),
            "skipped_updates": int(getattr(module, "skipped_updates", 0)),
        },
        "settings_seen": {
            "stop_ids": list(module.sampler.stop_ids),
            "banned_ids": list(module.sampler.banned_ids),
            "optimizer": type(trainer.optimizers[0]).__name__,
            "optimizer_settings": {
                k: (list(v) if isinstance(v, tuple) else v)
                for k, v in trainer.optimizers[0].param_groups[0].items()
                if k in ("lr", "betas", "eps", "weight_decay")
            },
            "loss_agg": module.settings.loss_agg,
            "scale_rewards": module.settings.scale_rewards,
            "num_iterations": module.settings.num_iterations,
            "top_k": module.settings.top_k,
            "max_grad_norm": module.settings.max_grad_norm,
        },
    }
