"""Load the policy and its processor from a HF id or a local folder, in the configured dtype and
attention kernel.

One function loads every model: `Qwen/Qwen2-VL-2B-Instruct`, a local copy of it, any other
`AutoModelForImageTextToText` checkpoint (Qwen2.5-VL, Qwen3-VL, LLaVA, ...), or the tiny/bench
checkpoints that medr1 builds offline on first use (medr1.models.checkpoints resolves `model.build`
to a folder). There is no separate "test" loading path. Imports nothing from medr1.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from omegaconf import DictConfig

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Which sub-processors take `model.min_pixels` / `model.max_pixels`, by the checkpoint's model_type.
# The Qwen image processors read size={"shortest_edge": min_pixels, "longest_edge": max_pixels} as
# pixel counts per image (sides rounded to patch x merge: 28 px for Qwen2-VL/2.5-VL, 32 for Qwen3-VL).
# Qwen2-VL/2.5-VL's video processors read it per frame too; Qwen3-VL's reads it as the total over all
# frames of a video, so it keeps its own. Other processors (LLaVA's CLIP: resize the short side, then
# crop a fixed square) have no pixel budget: their `size` is an edge, and a pixel count there breaks them.
PIXEL_BUDGET_PROCESSORS = {
    "qwen2_vl": ("image_processor", "video_processor"),
    "qwen2_5_vl": ("image_processor", "video_processor"),
    "qwen3_vl": ("image_processor",),
    "qwen3_vl_moe": ("image_processor",),
}


def pick_attn_implementation(requested: str) -> str:
    """`auto` -> flash_attention_2 on CUDA when flash-attn is installed, else PyTorch SDPA."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def pick_dtype(requested: str) -> torch.dtype:
    """`auto` -> bfloat16 on a GPU that supports it, else float32."""
    if requested == "auto":
        return (
            torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        )
    if requested not in DTYPES:
        raise ValueError(f"model.dtype={requested!r}; choose one of {['auto', *DTYPES]}")
    return DTYPES[requested]


def config_source(path: str) -> str:
    """Where the model's config.json is: `path`, or for a PEFT adapters folder (`python -m
    medr1.export --adapters`) the base model it names."""
    adapter = Path(path).expanduser() / "adapter_config.json"
    if adapter.is_file():
        return str(json.loads(adapter.read_text())["base_model_name_or_path"])
    return path


def load_processor(model_cfg: DictConfig | Mapping, path: str):
    """AutoProcessor with the configured pixel budget (where the model's processor has one); left
    padding for batched generation."""
    from transformers import AutoConfig, AutoProcessor
    from transformers.image_utils import SizeDict

    processor = AutoProcessor.from_pretrained(path)
    model_type = AutoConfig.from_pretrained(config_source(path)).model_type
    min_pixels, max_pixels = int(model_cfg["min_pixels"]), int(model_cfg["max_pixels"])
    if model_type not in PIXEL_BUDGET_PROCESSORS:
        log.info("%s sizes images its own way: model.min_pixels/max_pixels are not used", model_type)
    for name in PIXEL_BUDGET_PROCESSORS.get(model_type, ()):
        getattr(processor, name).size = SizeDict(shortest_edge=min_pixels, longest_edge=max_pixels)
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


def check_safetensors(path: str) -> None:
    """A local folder must hold safetensors weights: pickle files (pytorch_model.bin) can run code when
    loaded, so medr1 does not read them."""
    folder = Path(path).expanduser()
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.glob("*.bin"))
    if pickles:
        raise ValueError(
            f"model.path={path!r} holds pickle weights only ({', '.join(pickles[:3])}); medr1 loads safetensors "
            "only (pickle files can run code when loaded): in an environment you trust, load the folder and "
            "save it again with save_pretrained, which writes model.safetensors"
        )


def load_model(model_cfg: DictConfig, path: str):
    """AutoModelForImageTextToText from `path` in the configured dtype and attention kernel: safetensors
    weights only, and never a checkpoint's own code (trust_remote_code off)."""
    from transformers import AutoModelForImageTextToText

    check_safetensors(path)
    model = AutoModelForImageTextToText.from_pretrained(
        path,
        dtype=pick_dtype(str(model_cfg.dtype)),
        attn_implementation=pick_attn_implementation(str(model_cfg.attn_implementation)),
        use_safetensors=True,
        trust_remote_code=False,
    )
    if model_cfg.get("gradient_checkpointing"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model
