"""Helpers for multi-process runs: the device a config runs on, gathering Python objects from every
rank, and the layer classes FSDP wraps one by one. Outside a distributed run every helper acts as the
single rank it is."""

from __future__ import annotations

import torch

# The blocks FSDP wraps one by one, per family: (transformers module, class names). Each family's
# text decoder layer and vision block; LLaVA's text layers are those of its language model.
WRAPPED_LAYERS = [
    ("transformers.models.qwen2_vl.modeling_qwen2_vl", ("Qwen2VLDecoderLayer", "Qwen2VLVisionBlock")),
    (
        "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl",
        ("Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock"),
    ),
    ("transformers.models.qwen3_vl.modeling_qwen3_vl", ("Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock")),
    (
        "transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe",
        ("Qwen3VLMoeTextDecoderLayer", "Qwen3VLMoeVisionBlock"),
    ),
    ("transformers.models.clip.modeling_clip", ("CLIPEncoderLayer",)),
    ("transformers.models.siglip.modeling_siglip", ("SiglipEncoderLayer",)),
    ("transformers.models.llama.modeling_llama", ("LlamaDecoderLayer",)),
    ("transformers.models.qwen2.modeling_qwen2", ("Qwen2DecoderLayer",)),
    ("transformers.models.mistral.modeling_mistral", ("MistralDecoderLayer",)),
]


def device_of(trainer_cfg) -> str:
    """The device evaluation, prediction and mode=check use for `trainer.accelerator`, as the Trainer
    would: cuda for gpu/cuda (an error naming the fix when there is none), the CPU for cpu, and for
    auto (or unset) a GPU when there is one."""
    from medr1.errors import ConfigError

    accelerator = str(trainer_cfg.get("accelerator") or "auto")
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"trainer.accelerator={accelerator} but this machine has no usable CUDA GPU (torch sees none): "
                "run with trainer=cpu, or on a machine with a GPU and a CUDA build of torch"
            )
        return "cuda"
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu"


def decoder_layer_classes() -> set[type]:
    """Layer classes FSDP wraps one by one: every supported family's decoder layers and vision blocks
    (those this transformers version ships)."""
    import importlib

    classes = set()
    for module_name, names in WRAPPED_LAYERS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        classes |= {getattr(module, name) for name in names if hasattr(module, name)}
    return classes


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    return torch.distributed.get_world_size() if is_distributed() else 1


def gather_objects(value) -> list:
    """[value of rank 0, value of rank 1, ...]; [value] outside distributed runs."""
    if not is_distributed():
        return [value]
    gathered = [None] * world_size()
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def gather_predictions(predictions: list) -> list:
    """All ranks' predictions, each question once (a distributed sampler pads with repeats)."""
    unique = {}
    for rank_predictions in gather_objects(predictions):
        for prediction in rank_predictions:
            unique.setdefault(prediction.id, prediction)
    return list(unique.values())
