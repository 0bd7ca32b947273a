"""Load the policy and its processor from a HF id or a local folder, in the configured dtype and
attention kernel.

One function loads every model: `Qwen/Qwen2-VL-2B-Instruct`, a local copy of it, or the tiny/bench
checkpoints that medr1 builds offline on first use (medr1.models.checkpoints resolves `model.build`
to a folder). There is no separate "test" loading path. Imports nothing from medr1.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def load_processor(model_cfg: DictConfig, path: str):
    """AutoProcessor with the configured pixel budget; left padding for batched generation."""
    from transformers import AutoProcessor

    pixels = {"shortest_edge": int(model_cfg["min_pixels"]), "longest_edge": int(model_cfg["max_pixels"])}
    processor = AutoProcessor.from_pretrained(path, size=pixels)
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


def load_model(model_cfg: DictConfig, path: str):
    """AutoModelForImageTextToText from `path` in the configured dtype and attention kernel."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(
        path,
        dtype=pick_dtype(str(model_cfg.dtype)),
        attn_implementation=pick_attn_implementation(str(model_cfg.attn_implementation)),
    )
    if model_cfg.get("gradient_checkpointing"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model
