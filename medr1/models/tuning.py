"""Full fine-tuning (optionally with the vision tower frozen) or peft LoRA adapters on the policy."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

# Where each family keeps its vision encoder (and LLaVA-style models their projector into the LM):
# Qwen `model.visual`, LLaVA `model.vision_tower`, Idefics3/SmolVLM `model.vision_model`.
VISION_NAMES = ("visual", "vision_tower", "vision_model")
VISION_MODULES = (*VISION_NAMES, "multi_modal_projector")


def vision_tower(model) -> torch.nn.Module:
    """The vision encoder of an image-text model (`model.model.visual`, `.vision_tower`, `.vision_model`)."""
    inner = getattr(model, "model", model)
    for name in VISION_NAMES:
        if hasattr(inner, name):
            return getattr(inner, name)
    raise AttributeError(f"{type(model).__name__} has no vision tower attribute ({'/'.join(VISION_NAMES)})")


def unused_vision_modules(model) -> list[torch.nn.Module]:
    """Vision-tower modules a LLaVA-style model never runs: it reads the encoder's hidden states at
    `config.vision_feature_layer` (llava-1.5: -2), so the encoder layers after it and the tower's
    `post_layernorm` get no gradient. Left trainable, they stall DDP's gradient reducer, which waits
    for every trainable parameter. Empty for the Qwen families (no `vision_feature_layer`)."""
    feature_layer = getattr(model.config, "vision_feature_layer", None)
    if feature_layer is None:
        return []
    tower = vision_tower(model)
    layers = getattr(getattr(tower, "encoder", None), "layers", None)
    unused = [tower.post_layernorm] if hasattr(tower, "post_layernorm") else []
    if layers is not None:
        # hidden_states[0] is the embeddings, hidden_states[i] the output of layer i-1
        used = [
            f % (len(layers) + 1)
            for f in (feature_layer if isinstance(feature_layer, list) else [feature_layer])
        ]
        unused += list(layers)[max(used) :]
    return unused


def apply_tuning(model, tuning_cfg: DictConfig):
    """Full fine-tuning (optionally with the vision tower frozen) or peft LoRA adapters."""
    name = tuning_cfg.name
    if name == "full":
        model.requires_grad_(True)
        if tuning_cfg.get("freeze_vision"):
            vision_tower(model).requires_grad_(False)
        for module in unused_vision_modules(model):
            module.requires_grad_(False)
        return model
    if name != "lora":
        raise ValueError(f"tuning={name!r}; choose lora or full")
    from peft import LoraConfig, get_peft_model

    # language-model layers by name, never the vision tower's (nor a projector's); its own layer names on request
    vision = "|".join(VISION_MODULES)
    patterns = [rf"^(?!(.*\.)?({vision})\.).*\.({'|'.join(tuning_cfg.target_modules)})$"]
    if tuning_cfg.get("adapt_vision"):
        patterns.append(
            rf"(.*\.)?({'|'.join(VISION_NAMES)})\..*\.({'|'.join(tuning_cfg.vision_target_modules)})$"
        )
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
        for module in unused_vision_modules(model.base_model.model):
            module.requires_grad_(False)
    return model


def trainable_summary(model) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)"
