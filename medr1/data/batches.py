"""Turn VQARecords into model batches: chat prompt + images through the processor, optional targets.

Every batch has the same layout in GRPO, SFT and evaluation: left-padded prompts (the processor's
output) followed, where there is one, by a right-padded completion. An SFT target is tokenised as
a completion the model would generate (target tokens + <|im_end|>), so SFT trains on exactly the
token sequences that evaluation decodes. With `data.resize=N` every image is first resized to N x N
(Med-R1 pre-resized its images to 384 x 384), in training and evaluation alike.

Image files are read by medr1.data.images (the `image` config block): a picture is one image; a DICOM
or NIfTI volume gives `image.slices` slices, each an image of the same prompt, so a prompt holds one
image placeholder per image produced and `images_per_prompt` counts them. The slices of one file share
the pixel budget (`model.max_pixels`) one image would have.

`PromptCollator.with_blank_images()` is the `blank_image` shortcut probe's collator (medr1.probes):
every image, once loaded and resized, is replaced by a uniform grey image of the same size, so the
prompts hold exactly the same tokens and only the pixels change.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from PIL import Image

from medr1.data.images import ImageSettings, load_images
from medr1.data.prompts import PromptFormat, chat_messages, target_text
from medr1.data.records import BadRecordError, VQARecord

BLANK_GREY = (128, 128, 128)  # the blank_image probe's colour: mid grey, nothing to read


@dataclass
class PromptBatch:
    """A collated batch. `records` is a passenger that only `fields()` and callers read.

    It is an init=False field (hence the explicit __init__): Lightning's precision plugins (e.g.
    bf16-true) convert batches with `lightning_utilities.apply_to_collection`, which rebuilds every
    init field of a dataclass, element by element, and raises on a frozen dataclass such as a
    VQARecord; it keeps init=False fields as they are (the same objects), as `.to` does.
    """

    model_inputs: dict[str, torch.Tensor]  # processor outputs: input_ids [B, P] (left-padded), pixels, grids
    images_per_prompt: torch.Tensor  # [B]
    target_ids: torch.Tensor | None = None  # [B, T] SFT targets as completions (right-padded)
    target_mask: torch.Tensor | None = None  # [B, T] 1 on target tokens
    records: list[VQARecord] = field(init=False)

    def __init__(
        self,
        records: list[VQARecord],
        model_inputs: dict[str, torch.Tensor],
        images_per_prompt: torch.Tensor,
        target_ids: torch.Tensor | None = None,
        target_mask: torch.Tensor | None = None,
    ):
        self.records, self.model_inputs, self.images_per_prompt = records, model_inputs, images_per_prompt
        self.target_ids, self.target_mask = target_ids, target_mask

    def __len__(self) -> int:
        return len(self.records)

    def to(self, device) -> PromptBatch:
        """Lightning moves batches with `.to`: tensors move, records stay."""
        move = lambda t: t.to(device) if torch.is_tensor(t) else t  # noqa: E731
        return PromptBatch(
            records=self.records,
            model_inputs={k: move(v) for k, v in self.model_inputs.items()},
            images_per_prompt=self.images_per_prompt,
            target_ids=move(self.target_ids),
            target_mask=move(self.target_mask),
        )

    def fields(self) -> dict[str, list]:
        """Record columns for reward functions: solution, options, modality, question_type, id."""
        return {
            "solution": [r.answer for r in self.records],
            "options": [r.options for r in self.records],
            "modality": [r.modality for r in self.records],
            "question_type": [r.question_type for r in self.records],
            "id": [r.id for r in self.records],
        }


def check_resize(size) -> int | None:
    """`data.resize` checked: a positive int (the side every image is resized to) or None (no resize)."""
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(
            f"data.resize={size!r} must be a positive int, the side of the square every image is resized to "
            "(Med-R1: 384), or null to keep each image's own size"
        )
    return size


def check_max_pixels(max_pixels) -> int | None:
    """`model.max_pixels` checked: a positive int (the pixel budget of one image) or None."""
    if max_pixels is None:
        return None
    if isinstance(max_pixels, float) and max_pixels.is_integer():  # e.g. 4.0e5 written in a config
        max_pixels = int(max_pixels)
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"model.max_pixels={max_pixels!r} must be a positive int (pixels per image) or null")
    return max_pixels


def load_image(path: str, record: VQARecord, resize: int | None = None) -> Image.Image:
    """One RGB image at `path` (a volume's middle slice, in the default window), resized to `resize` x
    `resize` (bicubic) if given; an unreadable file raises an error naming the record."""
    return load_images(path, record.id, ImageSettings(), resize)[0]


class PromptCollator:
    """Callable collate_fn: records -> PromptBatch (with SFT targets when `with_targets`).

    `prompt` is a PromptFormat, a `prompt` config group or a bare template name; `resize` is
    `data.resize` (None: images keep their size, the processor then applies its pixel budget); `image`
    is the `image` config block (ImageSettings: window, axis, slices); `max_pixels` is
    `model.max_pixels`, shared by the slices of a volume (None: each keeps the processor's budget);
    `blank_images` replaces every image by a uniform grey one of its size (the blank_image probe)."""

    def __init__(
        self,
        processor,
        prompt: PromptFormat | str | Mapping,
        *,
        with_targets: bool = False,
        max_prompt_length: int | None = None,
        resize: int | None = None,
        image: ImageSettings | Mapping | None = None,
        max_pixels: int | None = None,
        blank_images: bool = False,
    ):
        self.processor = processor
        self.prompt = PromptFormat.from_config(prompt)
        self.with_targets = with_targets
        self.max_prompt_length = max_prompt_length
        self.resize = check_resize(resize)
        self.image = ImageSettings.from_config(image)
        self.max_pixels = check_max_pixels(max_pixels)
        self.blank_images = blank_images

    def with_blank_images(self) -> PromptCollator:
        """This collator with every image replaced by uniform grey of the same size (same prompts)."""
        blank = copy.copy(self)
        blank.blank_images = True
        return blank

    def record_images(self, record: VQARecord) -> list[Image.Image]:
        """Every image the record's files give, in order (a volume: its chosen slices)."""
        images = [
            image
            for path in record.images
            for image in load_images(path, record.id, self.image, self.resize, self.max_pixels)
        ]
        if self.blank_images:  # after loading and resizing, so each keeps its size and image tokens
            images = [Image.new("RGB", image.size, BLANK_GREY) for image in images]
        return images

    def __call__(self, records: list[VQARecord]) -> PromptBatch:
        images = [self.record_images(r) for r in records]
        texts = [
            self.processor.apply_chat_template(
                chat_messages(r, self.prompt, n_images=len(own)), add_generation_prompt=True, tokenize=False
            )
            for r, own in zip(records, images, strict=True)
        ]
        self.processor.tokenizer.padding_side = "left"
        inputs = self.processor(
            text=texts, images=[image for own in images for image in own], padding=True, return_tensors="pt"
        )
        inputs = {k: v for k, v in inputs.items() if torch.is_tensor(v)}
        self._check_length(records, inputs["attention_mask"])
        batch = PromptBatch(
            records=list(records),
            model_inputs=inputs,
            images_per_prompt=torch.tensor([len(own) for own in images]),
        )
        if self.with_targets:
            batch.target_ids, batch.target_mask = self.tokenize_targets(records)
        return batch

    def _check_length(self, records: list[VQARecord], attention_mask: torch.Tensor) -> None:
        if self.max_prompt_length is None:
            return
        lengths = attention_mask.sum(1)
        for record, length in zip(records, lengths.tolist(), strict=True):
            if length > self.max_prompt_length:
                raise BadRecordError(
                    record.images[0],
                    record.id,
                    f"prompt is {length} tokens, above algo.max_prompt_length={self.max_prompt_length}; "
                    "raise it or lower model.max_pixels (image tokens are most of a prompt) — prompts are "
                    "never truncated, since cutting image tokens breaks the model",
                )

    def tokenize_targets(self, records: list[VQARecord]) -> tuple[torch.Tensor, torch.Tensor]:
        """Target text + <|im_end|> as right-padded completion ids [B, T] and mask [B, T]."""
        tokenizer = self.processor.tokenizer
        end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        rows = [
            tokenizer(target_text(r, self.prompt), add_special_tokens=False)["input_ids"] + [end_id]
            for r in records
        ]
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return ids, mask
