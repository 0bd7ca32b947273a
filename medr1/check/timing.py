"""The timed half of `mode=check`: a few real training steps, extrapolated to the whole run.

The policy, module and Trainer are built as `medr1.train` builds them (builders.py), with the
configured device, precision and strategy, but with no logger, no checkpoints and no validation, for
1 + `check.timing_steps` training batches: the first is a warm-up (allocator, kernels, caches), the
others are timed, split into phases as `make bench` splits them (medr1.profiling). With `check.flops`
one more batch runs under torch's FLOP counter (untimed: the counter slows it), and the device's
matmul rate in the run's compute dtype is measured, so the achieved FLOP/s can be read against it.
One greedy evaluation batch is timed too, to estimate validation and testing.
"""

from __future__ import annotations

import math
import statistics
import time

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from medr1.builders import build_module, load_policy
from medr1.precision import autocast_for, compute_dtype
from medr1.profiling import PhaseTimer, StepClock, matmul_peak, policy_phases, time_grpo_phases


def step_phases(step: dict) -> dict:
    """A timed step's phases in seconds (rollout, reference, policy, optimizer, their prefills, and
    other: the rest of the step: data, rewards, advantages, logging, the Lightning loop)."""
    phases = {k: step.get(k, 0.0) for k in ("rollout", "reference", "policy", "optimizer") if k in step}
    phases["other"] = step["step_s"] - sum(phases.values())
    phases.update({k: v for k, v in step.items() if k.endswith("_prefill") and v})
    return phases


def training_batches(cfg: DictConfig, train_records: int, per_rank_batch: int, world_size: int) -> int:
    """Training batches (rollouts) of the configured run: trainer.max_steps counts optimiser steps,
    num_iterations of them per GRPO batch; without max_steps, max_epochs over the training records."""
    iterations = int(cfg.algo.get("num_iterations", 1) or 1) if cfg.algo.name == "grpo" else 1
    max_steps = int(cfg.trainer.get("max_steps", -1) or -1)
    if max_steps > 0:
        return math.ceil(max_steps / iterations)
    per_epoch = max(1, train_records // (per_rank_batch * world_size))
    return per_epoch * max(1, int(cfg.trainer.get("max_epochs", 1) or 1))


def time_training(cfg: DictConfig, datamodule, run_dir, steps: int) -> dict:
    """Seconds per training batch over `steps` batches after one warm-up and their phases (the median
    step's), peak CUDA memory of them, FLOPs of one more batch and the device's matmul rate (with
    check.flops), and seconds of one greedy evaluation batch."""
    L.seed_everything(int(cfg.seed), workers=True)
    policy = load_policy(cfg, train=True)
    module = build_module(cfg, policy, datamodule)
    iterations = int(cfg.algo.get("num_iterations", 1) or 1) if cfg.algo.name == "grpo" else 1
    count_flops = bool(cfg.check.get("flops", True))
    timer = PhaseTimer()
    grpo = hasattr(module, "_sampled_rollout")
    if grpo:  # the phases make bench reports (SFT: the step's time and FLOPs only)

        def count_prompt_tokens(timer, rollout, args, kwargs):  # _sampled_rollout(batch, ...) -> Rollout
            timer.counts["prompt_tokens"] += float(args[0].model_inputs["attention_mask"].sum())

        time_grpo_phases(timer, module, on_rollout=count_prompt_tokens)
    # GRPO steps its optimiser itself; SFT's optimiser step runs the forward and backward (the closure)
    clock = StepClock(timer, flop_step=1 + steps if count_flops else None, time_optimizer=grpo)
    trainer = instantiate(
        cfg.trainer,
        max_steps=(1 + steps + int(count_flops)) * iterations,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        callbacks=[clock],
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(run_dir),
    )
    cuda = trainer.strategy.root_device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=datamodule)
    if grpo:
        policy_phases(timer.steps)
    seconds = [step["step_s"] for step in timer.steps]
    timed = timer.steps[1:]
    result = {
        "warmup_seconds": seconds[0] if seconds else None,
        "step_seconds": seconds[1:],
        "seconds_per_step": statistics.median(seconds[1:]) if len(seconds) > 1 else None,
        "measured_peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
    }
    if timed and grpo:
        median_step = sorted(timed, key=lambda step: step["step_s"])[(len(timed) - 1) // 2]
        result["phases_s"] = step_phases(median_step)
        if "completion_tokens" in median_step:
            result["completion_tokens_per_step"] = median_step["completion_tokens"]
    if clock.flops is not None and clock.flops.total is not None:
        result["flops_per_step"] = clock.flops.total
        result["flop_step_tokens"] = clock.flop_step_counts  # prompt and completion tokens of that step
        result["flop_per_s"] = clock.flops.total / result["seconds_per_step"]
        device = trainer.strategy.root_device
        result["matmul_peak"] = matmul_peak(
            device=device, dtype=compute_dtype(trainer.precision, module.model, device)
        )
    result["eval_batch_seconds"] = time_eval_batch(module, trainer, datamodule)
    return result


def time_eval_batch(module, trainer: L.Trainer, datamodule) -> float | None:
    """Seconds of one greedy evaluation batch (data.eval_batch_size prompts, eval.max_new_tokens)."""
    batch = next(iter(datamodule.test_dataloader()), None)
    if batch is None:
        return None
    device = trainer.strategy.root_device
    module.to(device)
    started = time.perf_counter()
    with autocast_for(trainer.precision, device):
        module.evaluate([batch], progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started
