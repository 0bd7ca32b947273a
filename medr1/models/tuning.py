"""Full fine-tuning (optionally with the vision tower frozen) or peft LoRA adapters on the policy."""

from __future__ import annotations

import torch
from omegaconf import DictConfig


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
