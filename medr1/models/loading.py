"""Load the policy and its processor from a HF id or a local folder, and set up LoRA or full tuning.

One function loads every model: `Qwen/Qwen2-VL-2B-Instruct`, a local copy of it, or the tiny/bench
checkpoints that medr1 builds offline on first use (`model.build` in the config). There is no
separate "test" loading path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from medr1.models.build import VISION_TOKENS, build_atomically, build_random_checkpoint, recipe_hash

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def resolve_model_path(model_cfg: DictConfig, cache_dir: str | Path) -> str:
    """The folder or HF id to load: `model.path`, or the offline-built checkpoint for `model.build`."""
    if model_cfg.get("path"):
        path = str(model_cfg.path)
        if (path.startswith((".", "/", "~")) or Path(path).expanduser().exists()) and not (
            Path(path).expanduser() / "config.json"
        ).exists():
            raise FileNotFoundError(
                f"model.path={path!r} is a local path without a config.json; point it at a folder "
                "written by save_pretrained (or a HF id such as Qwen/Qwen2-VL-2B-Instruct)"
            )
        return path
    recipe = _plain(model_cfg.get("build"))
    if not recipe:
        raise ValueError(f"model {model_cfg.get('name')!r} has neither `path` nor `build`; set model.path")
    models_dir = Path(cache_dir).expanduser() / "models"
    base = build_atomically(
        models_dir / f"{model_cfg.name}-base-{recipe_hash(recipe | {'warmstart': None})}",
        lambda folder: build_random_checkpoint(folder, recipe),
    )
    warmstart = recipe.get("warmstart")
    if not warmstart:
        return str(base)
    from medr1.data.synthetic import GENERATOR_VERSION  # the warm start trains on synthetic images
    from medr1.models.warmstart import VERSION, warm_start  # needs data and SFT code: import only when used

    versions = {"warmstart_version": VERSION, "synthetic_version": GENERATOR_VERSION}
    target = models_dir / f"{model_cfg.name}-instruct-{recipe_hash(recipe | versions)}"
    return str(build_atomically(target, lambda folder: warm_start(base, folder, warmstart | {k: recipe[k] for k in ('min_pixels', 'max_pixels')}, cache_dir)))


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
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
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
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


def banned_token_ids(processor) -> list[int]:
    """Ids of the vision/grounding special tokens, which sampled completions must not contain."""
    vocab = processor.tokenizer.get_vocab()
    return sorted(vocab[token] for token in VISION_TOKENS if token in vocab)


def stop_token_ids(processor, model) -> list[int]:
    """Token ids that end a completion: the generation config's eos ids plus <|im_end|>."""
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    im_end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != processor.tokenizer.unk_token_id:
        ids.add(im_end)
    if processor.tokenizer.eos_token_id is not None:
        ids.add(processor.tokenizer.eos_token_id)
    return sorted(ids)


# --- tuning ----------------------------------------------------------------------------------


def vision_tower(model) -> torch.nn.Module:
    """The vision encoder of a Qwen2-VL-style model (`model.model.visual`)."""
    inner = getattr(model, "model", model)
    for name in ("visual", "vision_tower", "vision_model"):
        if hasattr(inner, name):
            return getattr(inner, name)
    raise AttributeError(f"{type(model).__name__} has no vision tower attribute (visual/vision_tower)")


def apply_tuning(model, tuning_cfg: DictConfig):
    """Full fine-tuning (optionally with the vision tower frozen) or peft LoRA adapters."""
    name = tuning_cfg.name
    if name == "full":
        model.requires_grad_(True)
        if tuning_cfg.get("freeze_vision"):
            vision_tower(model).requires_grad_(False)
        return model
    if name != "lora":
        raise ValueError(f"tuning={name!r}; choose lora or full")
    from peft import LoraConfig, get_peft_model

    # language-model layers by name, never the vision tower's; its own layer names only on request
    patterns = [rf"^(?!.*visual).*\.({'|'.join(tuning_cfg.target_modules)})$"]
    if tuning_cfg.get("adapt_vision"):
        patterns.append(rf".*visual.*\.({'|'.join(tuning_cfg.vision_target_modules)})$")
    pattern = "|".join(f"(?:{p})" for p in patterns)
    lora = LoraConfig(
        r=int(tuning_cfg.rank),
        lora_alpha=int(tuning_cfg.alpha),
        lora_dropout=float(tuning_cfg.dropout),
        target_modules=pattern,
        bias="none",
    )
    model = get_peft_model(model, lora)
    if tuning_cfg.get("adapt_vision") is False and not tuning_cfg.get("freeze_vision", True):
        # LoRA everywhere in the LM, full training of the vision tower on request
        vision_tower(model.base_model.model).requires_grad_(True)
    return model


def trainable_summary(model) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)"
