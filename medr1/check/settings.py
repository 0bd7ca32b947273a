"""What `mode=check` reads from the config besides the data: the model's shape and parameter counts
(instantiated on the `meta` device: no weights are read or allocated, so a 7B model is checked on a
laptop from its config.json), the device, world size and strategy, the byte sizes of the run's
precision, and the memory budget."""

from __future__ import annotations

import os

import torch
from omegaconf import DictConfig

from medr1.memory import GIB, ParameterCounts, Precision, count_parameters
from medr1.models.families import family_of
from medr1.models.loading import config_source, pick_attn_implementation, pick_dtype
from medr1.models.tuning import apply_tuning
from medr1.precision import MIXED, TRUE_LOW_PRECISION, canonical_precision


def model_config(path: str):
    """The model's config (config.json of a folder or HF id); an unreadable one ends the check."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(config_source(path))
    except (OSError, ValueError) as error:
        raise SystemExit(
            f"check failed: cannot read the config of model.path={path!r} ({error}); point model.path at a "
            "local folder with a config.json or a HF id available offline"
        ) from None


def meta_policy(config, model_cfg: DictConfig, tuning_cfg: DictConfig):
    """The policy as training builds it (architecture, dtype, tuning), on the meta device."""
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config, dtype=pick_dtype(str(model_cfg.dtype)))
    return apply_tuning(model, tuning_cfg)


def parameter_counts(config, model_cfg: DictConfig, tuning_cfg: DictConfig) -> ParameterCounts:
    return counts_of(meta_policy(config, model_cfg, tuning_cfg), tuning_cfg)


def counts_of(model, tuning_cfg: DictConfig) -> ParameterCounts:
    return count_parameters(model, lora_dropout=float(tuning_cfg.get("dropout") or 0.0))


def shares_prompts(model) -> bool:
    """Whether the model's family samples and scores G completions from one prompt pass (the Qwen
    families) or repeats each prompt G times (generic families: medr1.models.families)."""
    return bool(family_of(model).shared_prompt)


def target_device(trainer_cfg: DictConfig) -> str:
    """The device the config trains on, whether or not this machine has it: mode=check plans a GPU run
    on a laptop (medr1.distributed.device_of, for running, refuses a missing GPU)."""
    accelerator = str(trainer_cfg.get("accelerator") or "auto")
    if accelerator in ("gpu", "cuda"):
        return "cuda"
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu"


def world_size_of(trainer_cfg: DictConfig) -> int:
    devices = trainer_cfg.get("devices", 1)
    nodes = int(trainer_cfg.get("num_nodes", 1) or 1)
    if isinstance(devices, int) and devices > 0:
        count = devices
    elif isinstance(devices, str) and devices.isdigit():
        count = int(devices)
    elif target_device(trainer_cfg) == "cuda" and torch.cuda.is_available():
        count = torch.cuda.device_count()  # "auto" / -1: every visible GPU
    else:
        count = 1 if not hasattr(devices, "__len__") or isinstance(devices, str) else len(devices)
    return count * nodes


def strategy_of(trainer_cfg: DictConfig, world_size: int) -> str:
    """single | ddp | fsdp | deepspeed, from trainer.strategy (a name or a `_target_` config)."""
    strategy = trainer_cfg.get("strategy")
    name = str(strategy.get("_target_", "")) if isinstance(strategy, DictConfig) else str(strategy or "")
    name = name.lower()
    if "deepspeed" in name:
        return "deepspeed"
    if "fsdp" in name:
        return "fsdp"
    if "ddp" in name or world_size > 1:
        return "ddp"
    return "single"


def precision_of(model_cfg: DictConfig, trainer_precision: object, device: str) -> Precision:
    """Byte sizes of weights, compute and the reference under `trainer.precision` (medr1/precision.py)."""
    precision = canonical_precision(trainer_precision)
    model_bytes = pick_dtype(str(model_cfg.dtype)).itemsize
    if precision in TRUE_LOW_PRECISION:
        weight = TRUE_LOW_PRECISION[precision].itemsize
    elif precision == "64-true":
        weight = 8
    else:
        weight = model_bytes
    autocast = precision in MIXED and not (device == "cpu" and MIXED[precision] is torch.float16)
    compute = MIXED[precision].itemsize if autocast else weight
    return Precision(weight=weight, compute=compute, reference=model_bytes, autocast=autocast)


def attention_of(model_cfg: DictConfig) -> str:
    return pick_attn_implementation(str(model_cfg.attn_implementation))


def memory_budget(check_cfg: DictConfig, trainer_cfg: DictConfig) -> tuple[int | None, str]:
    """(bytes, where the figure comes from): check.memory_gb (GiB), else the GPU's memory when
    training on CUDA, else the machine's RAM; None when the GPU is not on this machine."""
    if check_cfg.get("memory_gb") is not None:
        return int(float(check_cfg.memory_gb) * GIB), f"check.memory_gb={check_cfg.memory_gb}"
    if target_device(trainer_cfg) == "cuda":
        if not torch.cuda.is_available():
            return None, "no GPU on this machine: set check.memory_gb to the training GPU's memory (GiB)"
        properties = torch.cuda.get_device_properties(0)
        return int(properties.total_memory), f"the memory of {properties.name}"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "the machine's RAM"
