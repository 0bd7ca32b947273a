"""Build small checkpoints offline: tokenizer, processor, random weights.

The folders written here load with `AutoProcessor` / `AutoModelForImageTextToText.from_pretrained`,
exactly like `Qwen/Qwen2-VL-2B-Instruct`, so tests and the demo exercise the real loading path.
`build_random_checkpoint` builds the architecture the recipe's `family` names: Qwen2-VL here (the
default), Qwen2.5-VL, Qwen3-VL and LLaVA in medr1.models.families_build, all on medr1's small
tokenizer with Qwen's special tokens and chat turns (medr1.models.tokens).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from medr1.models.families_build import BUILDERS, mrope_section, qwen_text_config, qwen_vision_ids
from medr1.models.tokens import CHAT_TEMPLATE, build_tokenizer, set_generation_tokens, special_token_ids
from medr1.models.tokens import SPECIAL_TOKENS as SPECIAL_TOKENS  # re-exported: tests import it from here

log = logging.getLogger(__name__)

# A recipe without `family` (tiny, bench) builds Qwen2-VL: adding the key would change their cache hashes.
DEFAULT_FAMILY = "qwen2_vl"

# --- processor and model ---------------------------------------------------------------------


def build_processor(tokenizer, *, min_pixels: int, max_pixels: int):
    """Qwen2-VL processor (image + video processors, chat template) around `tokenizer`."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    pixels = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    image_processor = Qwen2VLImageProcessor(size=pixels)
    video_processor = Qwen2VLVideoProcessor(size=pixels)
    return Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(tokenizer, *, text: Mapping[str, Any], vision: Mapping[str, Any], seed: int):
    """A randomly initialised Qwen2VLForConditionalGeneration with the given proportions."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    text = dict(text)
    rope_theta = float(text.pop("rope_theta", 1_000_000.0))  # Qwen2-VL's; small models see more with 1e4
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    ids = special_token_ids(tokenizer)
    config = Qwen2VLConfig(
        text_config=qwen_text_config(
            tokenizer,
            ids,
            text,
            {"rope_theta": rope_theta, "mrope_section": mrope_section(head_dim)},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            tie_word_embeddings=text.pop("tie_word_embeddings", True),
        ),
        vision_config=dict(hidden_size=text["hidden_size"], **vision),
        **qwen_vision_ids(ids),
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    set_generation_tokens(model, tokenizer)
    return model


# --- one build per family --------------------------------------------------------------------


def build_qwen2_vl(recipe: Mapping[str, Any]):
    """(processor, model) of a random Qwen2-VL for `recipe` (see conf/model/tiny.yaml)."""
    tokenizer = build_tokenizer(int(recipe["vocab_size"]))
    processor = build_processor(
        tokenizer, min_pixels=int(recipe["min_pixels"]), max_pixels=int(recipe["max_pixels"])
    )
    model = build_model(
        tokenizer, text=recipe["text"], vision=recipe["vision"], seed=int(recipe.get("seed", 0))
    )
    return processor, model


def family_builders() -> dict[str, Callable[[Mapping[str, Any]], tuple]]:
    """`model.build.family` -> the function that builds its (processor, model)."""
    return {"qwen2_vl": build_qwen2_vl, **BUILDERS}


def build_random_checkpoint(folder: str | Path, recipe: Mapping[str, Any]) -> Path:
    """Write tokenizer, processor and random weights for `recipe` (see conf/model/tiny*.yaml); the
    recipe's `family` (default qwen2_vl) picks the architecture."""
    family = str(recipe.get("family") or DEFAULT_FAMILY)
    builders = family_builders()
    if family not in builders:
        raise ValueError(
            f"model.build.family={family!r} is not one medr1 builds; choose one of {sorted(builders)}"
        )
    processor, model = builders[family](recipe)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(folder)
    model.save_pretrained(folder)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("built a %s-parameter %s checkpoint in %s", f"{n_params:,}", type(model).__name__, folder)
    return folder
