"""medr1's small tokenizer, shared by every checkpoint it builds offline (medr1.models.build,
medr1.models.families_build): a byte-level BPE (Qwen2's pre-tokenizer, so any text encodes) trained
on the prompt templates and the vocabulary of medical VQA questions, with Qwen's special tokens; its
vocabulary is small so that a tiny model stays tiny. Also Qwen's chat turns, rendered with each
family's image placeholder, and the tokens `generate()` stops and pads with.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from medr1.data.names import MODALITIES, MODALITY_DISPLAY, QUESTION_TYPES
from medr1.data.prompts import TEMPLATES

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
QWEN_IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


def chat_template(image_placeholder: str) -> str:
    """Qwen2-VL's chat template, rewritten: a default system turn, `<|im_start|>role\\n...<|im_end|>\\n`
    turns, each image rendered as `image_placeholder` (the processor expands it to the image's tokens)."""
    return (
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
        f"{image_placeholder}"
        "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
        "{% endfor %}<|im_end|>\n"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


CHAT_TEMPLATE = chat_template(QWEN_IMAGE_PLACEHOLDER)


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


def special_token_ids(tokenizer) -> dict[str, int]:
    """Ids of Qwen's special tokens in `tokenizer`."""
    return {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}


def set_generation_tokens(model, tokenizer) -> None:
    """`generate()` stops at <|im_end|> (the end of an assistant turn) or <|endoftext|>, and pads
    with <|endoftext|>, as Qwen's instruct checkpoints do."""
    ids = special_token_ids(tokenizer)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
