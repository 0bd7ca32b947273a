"""Numerical precision: which weights may be trained, and the autocast that evaluation runs under.

Both papers train fp32 weights under bf16 autocast (HF Trainer `--bf16`; DeepSpeed bf16 keeps fp32
master weights). AdamW on bf16 weights loses every update smaller than half a bf16 ulp: at the
papers' lr 1e-6 about 98% of a 2B model's weights would never move. So training refuses trainable
bf16/fp16 weights (from `model.dtype` or a `*-true` trainer precision) unless the user opts in with
`model.allow_low_precision_weights=true`; DeepSpeed is exempt, since its optimiser keeps fp32 masters.

Evaluation outside the Trainer (before and after training, `mode=eval`) runs under the same autocast
as the Trainer's steps, so fp32 weights with flash-attention 2 (which needs bf16/fp16 inputs) work.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)
TRUE_LOW_PRECISION = {"bf16-true": torch.bfloat16, "16-true": torch.float16}
MIXED = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
# Lightning's legacy names, converted as Lightning converts them ("bf16" is bf16-mixed, not bf16-true)
LEGACY_NAMES = {"bf16": "bf16-mixed", "16": "16-mixed", "32": "32-true", "64": "64-true"}


def canonical_precision(precision: object) -> str:
    """The Trainer's precision name for a `trainer.precision` value (legacy names and ints included)."""
    return LEGACY_NAMES.get(str(precision), str(precision))


def training_weight_dtype(model, precision: str) -> torch.dtype:
    """The dtype the trainable weights will have during training: a `*-true` precision converts them."""
    precision = canonical_precision(precision)
    if precision in TRUE_LOW_PRECISION:
        return TRUE_LOW_PRECISION[precision]
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
    low = dtypes & set(LOW_PRECISION)
    return next(iter(low)) if low else torch.float32


def check_trainable_precision(model, precision: str, strategy: object, allow_low_precision: bool) -> None:
    """Raise when training would update bf16/fp16 weights (silently stale at small lr), unless allowed."""
    if allow_low_precision or "deepspeed" in type(strategy).__name__.lower():
        return
    dtype = training_weight_dtype(model, precision)
    if dtype in LOW_PRECISION:
        raise ValueError(
            f"training would update {dtype} weights (model.dtype / trainer.precision={precision}): AdamW "
            "loses every update below half an ulp, so at lr 1e-6 about 98% of weights never move. Use "
            "model.dtype=float32 with trainer.precision=bf16-mixed (fp32 weights, bf16 compute, as the papers), "
            "or set model.allow_low_precision_weights=true to train low-precision weights anyway"
        )


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The dtype the Trainer's autocast runs `precision` in on `device`; None when it runs none (32-true,
    *-true, and fp16 on CPU: fp16 autocast is a CUDA feature, CPU runs the fp32 weights as they are)."""
    dtype = MIXED.get(canonical_precision(precision))
    if dtype is torch.float16 and torch.device(device).type == "cpu":
        return None
    return dtype


def autocast_for(precision: str, device: torch.device | str):
    """The Trainer's autocast for `precision` on `device` (a no-op for 32-true and *-true)."""
    dtype = autocast_dtype(precision, device)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def compute_dtype(precision: str, model, device: torch.device | str) -> torch.dtype:
    """The dtype a training step's matmuls run in: autocast's (`autocast_dtype`), else the weights' (a
    *-true precision converts them; otherwise the model's floating-point weights as loaded)."""
    dtype = autocast_dtype(precision, device)
    if dtype is not None:
        return dtype
    precision = canonical_precision(precision)
    if precision in TRUE_LOW_PRECISION:
        return TRUE_LOW_PRECISION[precision]
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
