"""Measure the peak memory of GRPO training steps on the CPU, as the operating system sees it.

    MALLOC_MMAP_THRESHOLD_=65536 python -m tests.helpers.measure_memory --steps 2 model=bench ...

prints one JSON line: the resident memory before the model is loaded (`baseline_bytes`), the peak
resident memory above it over the steps (`peak_bytes`), and the peak of each phase of a step
(`phases`: rollout sampling, reference log-probs, policy forward, backward, optimiser step, and one
validation batch after the steps).

How, and why this way: a CPU has no allocator statistics like `torch.cuda.max_memory_allocated`, so
this reads the kernel's high-water mark of the process's resident set (VmHWM in /proc/self/status)
and resets it at every phase boundary (`echo 5 > /proc/self/clear_refs`), giving each phase's
peak. Run it in a fresh subprocess with glibc's `MALLOC_MMAP_THRESHOLD_` fixed at 64 KiB (the test
does): every tensor buffer above 64 KiB is then its own mmap that returns to the kernel when freed,
instead of staying in the malloc heap (glibc otherwise raises the threshold up to 32 MiB as large
blocks are freed), so the resident set follows the memory that is really alive. The baseline is
taken after imports, data, processor and Trainer are set up, just before the weights are loaded, so
the difference is what the model and the step cost: what `medr1.memory` estimates. What it counts
that the estimate leaves out (Python objects, oneDNN scratch, small tensors) is real overhead too.

The Trainer runs the real `GRPOModule` with checkpoints, logging and validation off. Sampling never
stops early (the stop tokens are cleared, as `make bench` does), so every completion is
`algo.max_completion_length` tokens: the estimate's worst case is what is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


class PhasePeaks:
    """Peak resident memory per labelled phase: VmHWM read and reset at each boundary."""

    def __init__(self):
        self.peaks: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.current = "setup"
        self.started = time.perf_counter()
        self.reset()

    @staticmethod
    def reset() -> None:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current resident set

    def mark(self, label: str) -> None:
        peak = _status_kib("VmHWM") * 1024
        self.peaks[self.current] = max(self.peaks.get(self.current, 0), peak)
        now = time.perf_counter()
        self.seconds[self.current] = self.seconds.get(self.current, 0.0) + now - self.started
        self.reset()
        self.current, self.started = label, now


def instrument(module, phases: PhasePeaks) -> None:
    """Mark phase boundaries around the GRPO module's rollout, reference, policy passes and step."""
    rollout, reference = module.rollout, module._reference_logprobs
    logprobs, backward = module._logprobs, module.manual_backward

    def marked_rollout(*args, **kwargs):
        phases.mark("rollout")
        return rollout(*args, **kwargs)

    def marked_reference(*args, **kwargs):
        phases.mark("reference")
        return reference(*args, **kwargs)

    def marked_logprobs(*args, **kwargs):
        if kwargs.get("with_entropy"):  # the update's pass (reference and old log-probs have no entropy)
            phases.mark("policy_forward")
        return logprobs(*args, **kwargs)

    def marked_backward(*args, **kwargs):
        phases.mark("backward")
        return backward(*args, **kwargs)

    module.rollout = marked_rollout
    module._reference_logprobs = marked_reference
    module._logprobs = marked_logprobs
    module.manual_backward = marked_backward


def measure(overrides: list[str], steps: int) -> dict:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback

    from medr1.builders import build_datamodule, build_module, load_policy
    from medr1.models.checkpoints import resolve_model_path
    from medr1.models.loading import load_processor
    from tests.helpers.config import compose_config

    cfg = compose_config(overrides)
    L.seed_everything(int(cfg.seed))
    torch.set_num_threads(int(cfg.get("num_threads") or torch.get_num_threads()))
    path = resolve_model_path(cfg.model, cfg.paths.cache_dir)  # built before the baseline, if need be
    datamodule = build_datamodule(cfg, load_processor(cfg.model, path))
    datamodule.setup("fit")

    class OptimiserPhase(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            phases.mark("optimizer_step")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            phases.mark("between_steps")

    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=cfg.trainer.precision,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[OptimiserPhase()],
    )
    batch = next(iter(datamodule.train_dataloader()))
    prompt_tokens = int(batch.model_inputs["attention_mask"].shape[1])
    baseline = rss_bytes()
    phases = PhasePeaks()
    phases.mark("load")
    policy = load_policy(cfg, train=True)
    module = build_module(cfg, policy, datamodule)
    module.sampler.stop_ids = []  # every completion is max_completion_length tokens
    instrument(module, phases)
    trainer.fit(module, datamodule=datamodule)
    phases.mark("validation")  # one greedy evaluation batch, as validation runs it during training
    module.validation_step(next(iter(datamodule.val_dataloader())), 0)
    phases.mark("end")
    phases.peaks.pop("setup", None)
    return {
        "baseline_bytes": baseline,
        "peak_bytes": max(phases.peaks.values()) - baseline,
        "phases": {label: peak - baseline for label, peak in phases.peaks.items()},
        "seconds": {label: round(seconds, 2) for label, seconds in phases.seconds.items()},
        "prompt_tokens": prompt_tokens,
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    result = measure(args.overrides, args.steps)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
