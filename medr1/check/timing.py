"""The timed half of `mode=check`: a few real training steps, extrapolated to the whole run.

The policy, module and Trainer are built as `medr1.train` builds them (builders.py), with the
configured device, precision and strategy, but with no logger, no checkpoints and no validation, for
1 + `check.timing_steps` training batches: the first is a warm-up (allocator, kernels, caches), the
others are timed. One greedy evaluation batch is timed too, to estimate validation and testing.
"""

from __future__ import annotations

import math
import statistics
import time

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from medr1.builders import build_module, load_policy
from medr1.precision import autocast_for


class StepTimer(Callback):
    """Wall time of each training batch (one rollout and its updates, or one SFT step)."""

    def __init__(self):
        self.seconds: list[float] = []
        self._start = 0.0

    @staticmethod
    def _sync(pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync(pl_module)
        self.seconds.append(time.perf_counter() - self._start)


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
    """Seconds per training batch over `steps` batches after one warm-up, peak CUDA memory of them,
    and seconds of one greedy evaluation batch."""
    L.seed_everything(int(cfg.seed), workers=True)
    policy = load_policy(cfg, train=True)
    module = build_module(cfg, policy, datamodule)
    iterations = int(cfg.algo.get("num_iterations", 1) or 1) if cfg.algo.name == "grpo" else 1
    timer = StepTimer()
    trainer = instantiate(
        cfg.trainer,
        max_steps=(1 + steps) * iterations,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        callbacks=[timer],
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
    result = {
        "warmup_seconds": timer.seconds[0] if timer.seconds else None,
        "step_seconds": timer.seconds[1:],
        "seconds_per_step": statistics.median(timer.seconds[1:]) if len(timer.seconds) > 1 else None,
        "measured_peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
    }
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
