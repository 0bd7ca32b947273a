"""Where a training step's time goes: phases timed by wrapping the running objects' methods, FLOPs
counted by `torch.utils.flop_counter`, and the device's measured matmul rate to read them against.

`make bench` (medr1.bench) and `mode=check` (medr1.check.timing) time medr1's GRPO step with the same
wrappers (`time_grpo_phases`): rollout = module._sampled_rollout (the prompts' prefill, decoding,
rewards), reference = module._reference_logprobs, optimizer = the torch optimiser's step, policy =
module.update minus the optimiser step (forward, loss, backward, clipping); the model calls that carry
images are booked as "<phase>_prefill" inside their phase.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from lightning.pytorch.callbacks import Callback


@dataclass
class PhaseTimer:
    """Seconds per phase in each step, from wrappers put around bound methods of the running objects.

    `wrap(obj, name, phase)` replaces obj.<name> (on the instance only) by a timed call; a phase's time
    in a step is the sum of its calls. `active` is the phase being run, so model-call hooks can say
    which phase a forward belongs to. Step boundaries come from the framework's callbacks.
    """

    current: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    counts: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    steps: list[dict] = field(default_factory=list)
    active: str | None = None
    last_end: float | None = None
    device: torch.device | None = None  # CUDA: wait for the queued kernels at every reading of the clock

    def now(self) -> float:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def wrap(self, obj, name: str, phase, on_result=None) -> None:
        """`phase` is a name, or a function of the call's (args, kwargs) giving one (None: not timed)."""
        original = getattr(obj, name)

        @functools.wraps(original)  # keeps the attributes others set on it (e.g. an LR scheduler's mark)
        def timed(*args, **kwargs):
            this = phase(args, kwargs) if callable(phase) else phase
            if this is None:
                return original(*args, **kwargs)
            outer, self.active = self.active, this
            start = self.now()
            try:
                result = original(*args, **kwargs)
            finally:
                self.current[this] += self.now() - start
                self.active = outer
            if on_result is not None:
                on_result(self, result, args, kwargs)
            return result

        setattr(obj, name, timed)

    def hook_model_calls(self, model, phases: tuple[str, ...] | None = None, tag: str = "prefill") -> None:
        """Time the image + prompt work: every call of `model` that carries images (pixel_values, or the
        image features transformers' generate() encodes beforehand and passes as mm_encoder_outputs),
        and a call of its vision tower made outside such a call (generate()'s own encoding). Booked as
        "<active phase>_<tag>" (e.g. rollout_prefill), nested inside that phase's time; only in
        `phases` when given."""
        starts: list[float | None] = []  # per call under way: its start if it carries images
        depth = [0]  # image-carrying model calls under way: their vision tower is already counted

        def book(start: float) -> None:
            if self.active is not None and (phases is None or self.active in phases):
                self.current[f"{self.active}_{tag}"] += self.now() - start

        def before(module, args, kwargs):
            images = kwargs.get("pixel_values") is not None or kwargs.get("mm_encoder_outputs") is not None
            depth[0] += images
            starts.append(self.now() if images else None)  # a decoding step reads no clock (no CUDA sync)

        def after(module, args, kwargs, output):
            start = starts.pop()
            if start is not None:
                depth[0] -= 1
                book(start)

        model.register_forward_pre_hook(before, with_kwargs=True)
        model.register_forward_hook(after, with_kwargs=True)
        vision = getattr(getattr(model, "model", None), "visual", None)
        if vision is None:
            return
        vision_starts: list[float | None] = []
        vision.register_forward_pre_hook(
            lambda module, args: vision_starts.append(None if depth[0] else self.now())
        )

        def vision_after(module, args, output):
            start = vision_starts.pop()
            if start is not None:
                book(start)

        vision.register_forward_hook(vision_after)

    def begin(self) -> None:
        """Start of a step's own work (a step's time runs from the previous step's end, so that data
        loading between steps counts; the first step starts here)."""
        if self.last_end is None:
            self.last_end = self.now()
        self.current, self.counts = defaultdict(float), defaultdict(float)

    def end(self, keep: bool) -> None:
        now = self.now()
        if keep:
            self.steps.append(
                {
                    "step_s": now - self.last_end,
                    **dict(self.current),
                    **{k: v for k, v in self.counts.items()},
                }
            )
        self.last_end = now


class FlopCount:
    """FlopCounterMode entered and left from two callbacks (step start / end) of the same thread."""

    def __init__(self):
        from torch.utils.flop_counter import FlopCounterMode

        self.mode = FlopCounterMode(display=False)
        self.total: int | None = None

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
        self.total = int(self.mode.get_total_flops())


def matmul_peak(
    threads: int | None = None,
    sizes=(512, 1024, 2048),
    repeats: int = 5,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict:
    """The measured matmul rate of `device` in `dtype` (best of `repeats` per size, best size), with
    `threads` torch threads if given (CPU): the roof the achieved FLOP/s are read against."""
    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device(device)
    clock = PhaseTimer(device=device)
    if device.type == "cuda":
        sizes = (*sizes, 4096, 8192)  # a GPU reaches its rate only on larger products
    best: dict[int, float] = {}
    for n in sizes:
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        a @ b  # warm-up
        times = []
        for _ in range(repeats):
            start = clock.now()
            a @ b
            times.append(clock.now() - start)
        best[n] = 2 * n**3 / min(times)
    return {
        "flop_per_s": max(best.values()),
        "by_size": {str(n): v for n, v in best.items()},
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
    }


class StepClock(Callback):
    """Step boundaries for a PhaseTimer from Lightning's batch hooks (a step's time runs from the
    previous step's end, so data loading counts), the optimiser's step as the "optimizer" phase, and one
    batch, `flop_step`, counted under FlopCount and not kept. `kept(index)` says which other steps the
    timer keeps (e.g. not the warm-up)."""

    def __init__(
        self, timer: PhaseTimer, *, flop_step: int | None = None, kept=None, time_optimizer: bool = True
    ):
        self.timer, self.flop_step, self.time_optimizer = timer, flop_step, time_optimizer
        self.kept = kept or (lambda index: True)
        self.flops: FlopCount | None = None
        self.flop_step_counts: dict[str, float] = {}  # the counted step's counts (tokens)
        self.index = 0  # batches begun so far (batch_idx restarts at every epoch)

    def on_train_start(self, trainer, pl_module) -> None:
        self.timer.device = pl_module.device
        if self.time_optimizer:  # the torch optimiser LightningOptimizer.step ends in
            self.timer.wrap(trainer.optimizers[0], "step", "optimizer")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.timer.begin()
        if self.index == self.flop_step:
            self.flops = FlopCount().__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        counted = self.flops is not None and self.index == self.flop_step
        if counted:
            self.flops.__exit__(None, None, None)
            self.flop_step_counts = dict(self.timer.counts)
        self.timer.end(keep=not counted and self.kept(self.index))
        self.index += 1


def time_grpo_phases(timer: PhaseTimer, module, on_rollout=None, on_update=None) -> None:
    """Wrap a GRPOModule's phases (and its policy's and reference's image-carrying calls) into `timer`,
    counting each step's sampled completion tokens (`counts["completion_tokens"]`); `on_rollout` /
    `on_update` see each call's result as PhaseTimer.wrap's `on_result`. StepClock wraps the optimiser
    once the Trainer has made it, and `policy_phases` turns the booked update into the policy's share
    afterwards."""

    def rollout_done(timer, rollout, args, kwargs):  # _sampled_rollout(batch, ...) -> Rollout
        timer.counts["completion_tokens"] += float(rollout.mask.sum())
        if on_rollout is not None:
            on_rollout(timer, rollout, args, kwargs)

    timer.wrap(module, "_sampled_rollout", "rollout", on_result=rollout_done)
    timer.wrap(module, "_reference_logprobs", "reference")
    timer.wrap(module, "update", "update", on_result=on_update)
    timer.hook_model_calls(module.model)
    if module._reference is not None:
        timer.hook_model_calls(module._reference)


def policy_phases(steps: list[dict]) -> None:
    """In place: update = the policy's forward/backward (+ clipping) + optimizer.step, so the policy's
    phase is the update less the optimiser's step; its image-carrying calls become policy_prefill."""
    for step in steps:
        step["policy"] = step.pop("update", 0.0) - step.get("optimizer", 0.0)
        step["policy_prefill"] = step.pop("update_prefill", 0.0)
