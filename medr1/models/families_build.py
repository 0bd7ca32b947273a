"""Tiny random checkpoints of the other families medr1 trains: Qwen2.5-VL, Qwen3-VL and LLaVA.

medr1.models.build builds Qwen2-VL and dispatches on the recipe's `family` to `BUILDERS` here. Every
family shares medr1's tokenizer (medr1.models.tokens: byte-level BPE with Qwen's special tokens),
so the chat turns (`<|im_start|>role\\n...<|im_end|>\\n`), the stop token <|im_end|> and the SFT
targets are the same everywhere; what differs is the architecture, the processor and how the chat
template renders an image (the processor expands that placeholder to one token per image feature):

- qwen2_5_vl: Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor (patch 14); an image is
  <|vision_start|>, N x <|image_pad|>, <|vision_end|>.
- qwen3_vl: Qwen3VLForConditionalGeneration, Qwen3VLProcessor (patch 16); the same placeholder.
- llava: LlavaForConditionalGeneration (CLIP vision tower, Llama text model), LlavaProcessor (CLIP
  image processor); an image is N x <image>, then a newline.

Recipe keys (conf/model/tiny_<family>.yaml): `text` goes to the family's text config, `vision` to its
vision config; the builder fills in what must agree between them (vision output width = text width,
rotary sections from the head size, token ids from the tokenizer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medr1.models.tokens import (
    QWEN_IMAGE_PLACEHOLDER,
    SPECIAL_TOKENS,
    build_tokenizer,
    chat_template,
    set_generation_tokens,
    special_token_ids,
)

LLAVA_IMAGE_TOKEN = "<image>"
LLAVA_IMAGE_PLACEHOLDER = LLAVA_IMAGE_TOKEN + "\n"  # as LLaVA-1.5 renders an image in a prompt


# --- shared pieces ---------------------------------------------------------------------------


def _text_settings(text: Mapping[str, Any]) -> tuple[dict, float, bool, int]:
    """The recipe's text block without the keys the builders place themselves: (text config
    kwargs, rope_theta, tie_word_embeddings, head_dim)."""
    text = dict(text)
    rope_theta = float(text.pop("rope_theta", 10_000.0))  # small heads see more with 1e4 (Qwen: 1e6/5e6)
    tie = bool(text.pop("tie_word_embeddings", True))
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    return text, rope_theta, tie, head_dim


def mrope_section(head_dim: int) -> list[int]:
    """Qwen2-VL's (and Qwen2.5-VL's) M-RoPE: each head's rotary half split into (temporal, height,
    width) sections, as their [16, 24, 24] does for head_dim 128."""
    half, quarter = head_dim // 2, head_dim // 8
    height = (half - quarter) // 2
    return [quarter, height, half - quarter - height]


def qwen_text_config(
    tokenizer, ids: Mapping[str, int], text: Mapping[str, Any], rope: Mapping[str, Any], **extra
):
    """The text_config of a tiny Qwen VL model: the tokenizer's vocabulary, 32k positions, M-RoPE
    parameters `rope` (rope_theta, mrope_section, ...), <|endoftext|> as padding, the recipe's `text`."""
    return dict(
        vocab_size=len(tokenizer),
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", **rope},
        pad_token_id=ids["<|endoftext|>"],
        **extra,
        **text,
    )


def _seeded(seed: int, make):
    import torch

    torch.manual_seed(seed)
    return make()


def qwen_vision_ids(ids: Mapping[str, int]) -> dict[str, int]:
    """Top-level token ids of a Qwen VL config."""
    return dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def _qwen_pixels(recipe: Mapping[str, Any]) -> dict[str, int]:
    """A Qwen image processor's `size`: pixel counts per image, not edges."""
    return {"shortest_edge": int(recipe["min_pixels"]), "longest_edge": int(recipe["max_pixels"])}


def _patching(vision: Mapping[str, Any], default_patch: int) -> dict[str, int]:
    """Patch, merge and temporal patch sizes shared by a Qwen vision tower and its processors."""
    return dict(
        patch_size=int(vision.get("patch_size", default_patch)),
        merge_size=int(vision.get("spatial_merge_size", 2)),
        temporal_patch_size=int(vision.get("temporal_patch_size", 2)),
    )


# --- Qwen2.5-VL ------------------------------------------------------------------------------


def build_qwen2_5_vl(recipe: Mapping[str, Any]):
    """(processor, model) of a random Qwen2.5-VL: Qwen2-VL's M-RoPE text model; a vision tower with
    window attention (`window_size` px, full attention in `fullatt_block_indexes`), RMSNorm and a
    SwiGLU MLP, projecting to the text width (`out_hidden_size`)."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = build_tokenizer(int(recipe["vocab_size"]))
    ids = special_token_ids(tokenizer)
    text, rope_theta, tie, head_dim = _text_settings(recipe["text"])
    vision = dict(recipe["vision"])
    patching = _patching(vision, 14)
    config = Qwen2_5_VLConfig(
        text_config=qwen_text_config(
            tokenizer,
            ids,
            text,
            {"rope_theta": rope_theta, "mrope_section": mrope_section(head_dim)},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            tie_word_embeddings=tie,
        ),
        vision_config=dict(out_hidden_size=text["hidden_size"], **vision),
        tie_word_embeddings=tie,
        **qwen_vision_ids(ids),
    )
    model = _seeded(int(recipe.get("seed", 0)), lambda: Qwen2_5_VLForConditionalGeneration(config))
    set_generation_tokens(model, tokenizer)
    pixels = _qwen_pixels(recipe)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=pixels, **patching),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size=pixels, **patching),  # per-frame pixels, as images
        chat_template=chat_template(QWEN_IMAGE_PLACEHOLDER),
    )
    return processor, model


# --- Qwen3-VL --------------------------------------------------------------------------------


def qwen3_vl_mrope_section(head_dim: int) -> list[int]:
    """Qwen3-VL's interleaved M-RoPE: of a head's rotary half, height and width each take about 5/16
    of the frequencies and time the rest, as its [24, 20, 20] does for head_dim 128."""
    half = head_dim // 2
    spatial = half * 5 // 16
    return [half - 2 * spatial, spatial, spatial]


def build_qwen3_vl(recipe: Mapping[str, Any]):
    """(processor, model) of a random Qwen3-VL: a Qwen3 text model (q/k norms, explicit head_dim)
    with interleaved M-RoPE; a patch-16 vision tower with learned position embeddings
    (`num_position_embeddings`, a square) whose `deepstack_visual_indexes` layers also feed the
    first text layers (DeepStack). One merged image token covers 32x32 px."""
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    tokenizer = build_tokenizer(int(recipe["vocab_size"]))
    ids = special_token_ids(tokenizer)
    text, rope_theta, tie, head_dim = _text_settings(recipe["text"])
    vision = dict(recipe["vision"])
    patching = _patching(vision, 16)
    config = Qwen3VLConfig(
        text_config=qwen_text_config(
            tokenizer,
            ids,
            text,
            {
                "rope_theta": rope_theta,
                "mrope_section": qwen3_vl_mrope_section(head_dim),
                "mrope_interleaved": True,
            },
            head_dim=head_dim,  # Qwen3VLTextConfig's default is 128 whatever the width
        ),
        vision_config=dict(out_hidden_size=text["hidden_size"], **vision),
        tie_word_embeddings=tie,
        **qwen_vision_ids(ids),
    )
    model = _seeded(int(recipe.get("seed", 0)), lambda: Qwen3VLForConditionalGeneration(config))
    set_generation_tokens(model, tokenizer)
    normalise = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}  # Qwen3-VL's preprocessor
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=_qwen_pixels(recipe), **patching, **normalise),
        tokenizer=tokenizer,
        # its own size: a video's budget counts the pixels of all its frames together
        video_processor=Qwen3VLVideoProcessor(**patching, **normalise),
        chat_template=chat_template(QWEN_IMAGE_PLACEHOLDER),
    )
    return processor, model


# --- LLaVA -----------------------------------------------------------------------------------


def build_llava(recipe: Mapping[str, Any]):
    """(processor, model) of a random LLaVA-1.5-style model: a CLIP vision tower on square
    `image_size` images, a 2-layer MLP projector and a Llama text model. Each image becomes
    (image_size / patch_size)^2 `<image>` tokens (the patch features; CLS dropped, LLaVA's
    "default" strategy). `vision.vision_feature_layer` is LLaVA's (-2 in LLaVA-1.5; -1 here so
    a 2-layer tower trains all its layers)."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = build_tokenizer(int(recipe["vocab_size"]))
    tokenizer.add_special_tokens({"additional_special_tokens": [*SPECIAL_TOKENS[1:], LLAVA_IMAGE_TOKEN]})
    ids = special_token_ids(tokenizer)
    image_token_id = tokenizer.convert_tokens_to_ids(LLAVA_IMAGE_TOKEN)
    text, rope_theta, tie, _ = _text_settings(recipe["text"])
    vision = dict(recipe["vision"])
    feature_layer = int(vision.pop("vision_feature_layer", -2))
    image_size, patch_size = int(vision["image_size"]), int(vision["patch_size"])
    config = LlavaConfig(
        text_config=dict(
            model_type="llama",
            vocab_size=len(tokenizer),
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            tie_word_embeddings=tie,
            **text,
        ),
        vision_config=dict(model_type="clip_vision_model", **vision),
        image_token_index=image_token_id,
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy="default",
        tie_word_embeddings=tie,
    )
    model = _seeded(int(recipe.get("seed", 0)), lambda: LlavaForConditionalGeneration(config))
    set_generation_tokens(model, tokenizer)
    processor = LlavaProcessor(
        # resize the short side to image_size, then centre-crop the square the tower was built for
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        ),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, which "default" drops again
        image_token=LLAVA_IMAGE_TOKEN,
        chat_template=chat_template(LLAVA_IMAGE_PLACEHOLDER),
    )
    return processor, model


BUILDERS = {"qwen2_5_vl": build_qwen2_5_vl, "qwen3_vl": build_qwen3_vl, "llava": build_llava}
