"""Build small Qwen2-VL-architecture checkpoints offline: tokenizer, processor, random weights.

The folders written here load with `AutoProcessor` / `AutoModelForImageTextToText.from_pretrained`,
exactly like `Qwen/Qwen2-VL-2B-Instruct`, so tests and the demo exercise the real loading path.
The tokenizer is a byte-level BPE (Qwen2's pre-tokenizer, so any text encodes) trained on the
prompt templates and the vocabulary of medical VQA questions, with Qwen2-VL's special tokens and
chat template; its vocabulary is small so that a tiny model stays tiny.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from medr1.data.names import MODALITIES, MODALITY_DISPLAY, QUESTION_TYPES
from medr1.data.prompts import TEMPLATES

log = logging.getLogger(__name__)

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen2-VL's chat template, rewritten: a default system turn, images as vision_start/pad/end.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# --- tokenizer -------------------------------------------------------------------------------


def _tokenizer_corpus() -> Iterator[str]:
    """Text the small BPE is trained on: templates, tags, names and question vocabulary."""
    words = [
        "Which imaging modality is this image? What is the grade of the lesion? In which region is the lesion?",
        "Is there an abnormality in this image? How many objects are visible? Normal Lesion present Abnormal",
        "Grade 1 (small) Grade 2 (medium) Grade 3 (large) upper left upper right lower left lower right",
        "The image shows a lesion in the upper left region, so the answer is the option that matches.",
        "The image is a scan with bright regions; the appearance suggests this modality.",
        "Answer: the correct option is A B C D E F G H I J. 0 1 2 3 4 5 6 7 8 9",
    ]
    names = list(MODALITIES.values()) + list(MODALITY_DISPLAY.values()) + list(QUESTION_TYPES.values())
    for _ in range(20):
        for template in TEMPLATES.values():
            yield template.format(
                Question="Which imaging modality is this? A) CT, B) MRI, C) X-ray, D) Ultrasound"
            )
        for letter in "ABCDEFGHIJ":
            yield f"<think>The image shows the finding.</think>\n<answer> {letter} </answer>"
            yield f"<think>\nreasoning\n</think> <answer>{letter}</answer> {letter}) {letter}. ({letter})"
        yield from words
        yield " ".join(names)


def build_tokenizer(vocab_size: int):
    """Train a byte-level BPE with Qwen2's pre-tokenizer and wrap it as a Qwen2Tokenizer."""
    from tokenizers import pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    backend = Qwen2Tokenizer()._tokenizer  # carries Qwen2's normaliser, pre-tokenizer and decoder
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_tokenizer_corpus(), trainer)
    model_state = json.loads(backend.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model_state["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=model_state["vocab"], merges=merges, unk_token=None)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 32768
    return tokenizer


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
    # M-RoPE splits each head's rotary half into (temporal, height, width) sections, as Qwen2-VL's
    # [16, 24, 24] does for head_dim 128.
    quarter = head_dim // 8
    mrope_section = [
        quarter,
        (head_dim // 2 - quarter) // 2,
        head_dim // 2 - quarter - (head_dim // 2 - quarter) // 2,
    ]
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            max_position_embeddings=32768,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": rope_theta,
                "mrope_section": mrope_section,
            },
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            tie_word_embeddings=text.pop("tie_word_embeddings", True),
            **text,
        ),
        vision_config=dict(hidden_size=text["hidden_size"], **vision),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return model


def build_random_checkpoint(folder: str | Path, recipe: Mapping[str, Any]) -> Path:
    """Write tokenizer, processor and random weights for `recipe` (see conf/model/tiny.yaml)."""
    folder = Path(folder)
    tokenizer = build_tokenizer(int(recipe["vocab_size"]))
    processor = build_processor(
        tokenizer, min_pixels=int(recipe["min_pixels"]), max_pixels=int(recipe["max_pixels"])
    )
    model = build_model(
        tokenizer, text=recipe["text"], vision=recipe["vision"], seed=int(recipe.get("seed", 0))
    )
    folder.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(folder)
    model.save_pretrained(folder)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("built a %s-parameter Qwen2-VL checkpoint in %s", f"{n_params:,}", folder)
    return folder
