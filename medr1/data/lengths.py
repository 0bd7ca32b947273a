"""Prompt lengths at read time: every record's prompt measured in tokens without building a batch, so
a prompt over the limit is a bad record before training, evaluation or prediction sees it.

A prompt is the processor's chat template around the record's text (medr1.data.prompts) with one image
placeholder per image, tokenised, each placeholder then expanded by the processor into that image's
tokens. `PromptMeter` counts exactly that, as PromptCollator builds it:

- text: the same rendered text through the processor's own tokenizer (the placeholders counted once);
- images: the processor's own count for an image of that size (`_get_num_multimodal_tokens`, the
  computation inference servers use to plan a prompt; no pixels are encoded; a processor without it
  is run once on a blank image of each size instead). The size is the picture's (its header only is
  read), `data.resize` x `data.resize` when set; a DICOM/NIfTI file gives the slices
  medr1.data.images reads from it (read once per file), shrunk to share `model.max_pixels` as the
  collator shrinks them.

The datamodule measures the records it uses (training records with the training prompt, test records
with the evaluation prompt) against `algo.max_prompt_length`; so does mode=predict for its questions.
A record whose text holds one of the model's special tokens (`<|im_end|>`, `<|image_pad|>`, ...) is a
bad record too: the tokenizer would read it as a control token, and an extra image token makes the
processor fail ("image features and image tokens do not match").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from medr1.data.image_files import image_format
from medr1.data.images import ImageSettings, load_images
from medr1.data.prompts import PromptFormat, chat_messages
from medr1.data.records import BadRecordError, SkipCounter, VQARecord, text_problem
from medr1.errors import shown

log = logging.getLogger(__name__)

CHUNK = 256  # prompts per tokenizer call


@dataclass(frozen=True)
class PromptLength:
    """One record's prompt length in tokens, as the collator would build it."""

    tokens: int  # the whole prompt, image tokens included
    image_tokens: int  # of which the images' tokens


class PromptMeter:
    """Counts prompt tokens as PromptCollator(processor, prompt, resize=, image=, max_pixels=) builds them."""

    def __init__(
        self,
        processor,
        prompt: PromptFormat | str | Mapping,
        *,
        resize: int | None = None,
        image: ImageSettings | Mapping | None = None,
        max_pixels: int | None = None,
    ):
        self.processor = processor
        self.prompt = PromptFormat.from_config(prompt)
        self.resize, self.image, self.max_pixels = resize, ImageSettings.from_config(image), max_pixels
        tokenizer = processor.tokenizer
        self.image_token = getattr(processor, "image_token", None) or "<|image_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.special = sorted({str(t) for t in tokenizer.all_special_tokens if str(t)} | {self.image_token})
        self._sizes: dict[str, list[tuple[int, int]]] = {}  # image file -> (width, height) of each image
        self._tokens: dict[tuple[int, int], int] = {}  # (width, height) -> image tokens

    # --- one record's parts ------------------------------------------------------------------------

    def special_token_problem(self, record: VQARecord) -> str | None:
        """What is wrong when a text of the record holds one of the model's special tokens or is not
        valid Unicode (records from anywhere: predict's questions are not read by a reader), else None."""
        problem = text_problem(record)
        if problem is not None:
            return problem
        for where, text in record.texts():
            for token in self.special:
                if token in text:
                    return (
                        f"special token in text: the {where} holds {token!r}, one of the model's control tokens; "
                        "remove it from the record (the tokenizer would read it as a control token)"
                    )
        return None

    def image_sizes(self, record: VQARecord) -> list[tuple[int, int]]:
        """(width, height) of every image the collator makes of the record's files, in order."""
        sizes = []
        for path in record.images:
            if path not in self._sizes:
                self._sizes[path] = self._file_sizes(path, record.id)
            sizes += self._sizes[path]
        return sizes

    def _file_sizes(self, path: str, record_id: str) -> list[tuple[int, int]]:
        if image_format(path) == "picture":
            if self.resize is not None:
                return [(self.resize, self.resize)]
            try:
                with Image.open(path) as picture:  # the header only: no pixels are decoded
                    return [picture.size]
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                raise BadRecordError(path, record_id, f"image cannot be read ({error})") from None
        # DICOM / NIfTI: the slices as the collator gets them (load_images shrinks a volume's slices
        # to share the pixel budget)
        return [
            image.size for image in load_images(path, record_id, self.image, self.resize, self.max_pixels)
        ]

    def image_tokens(self, width: int, height: int) -> int:
        """The tokens the processor expands one image of this size into."""
        if (width, height) not in self._tokens:
            self._tokens[(width, height)] = self._count_image_tokens(width, height)
        return self._tokens[(width, height)]

    def _count_image_tokens(self, width: int, height: int) -> int:
        counter = getattr(self.processor, "_get_num_multimodal_tokens", None)
        if counter is not None:
            return int(counter(image_sizes=[(height, width)]).num_image_tokens[0])
        text = self.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        inputs = self.processor(text=[text], images=[Image.new("RGB", (width, height))], return_tensors="pt")
        return int((inputs["input_ids"] == self.image_token_id).sum())

    def text(self, record: VQARecord, images: int) -> str:
        """The prompt text the collator hands to the processor, `images` placeholders in it."""
        return self.processor.apply_chat_template(
            chat_messages(record, self.prompt, n_images=images), add_generation_prompt=True, tokenize=False
        )

    # --- many records ---------------------------------------------------------------------------------

    def lengths(self, records: list[VQARecord]) -> list[PromptLength]:
        """Each record's prompt length (the records must be free of special tokens; see
        special_token_problem). An image that cannot be read raises BadRecordError."""
        sizes = [self.image_sizes(record) for record in records]
        texts = [self.text(record, len(own)) for record, own in zip(records, sizes, strict=True)]
        lengths = []
        for start in range(0, len(texts), CHUNK):
            rows = self.processor.tokenizer(texts[start : start + CHUNK])["input_ids"]
            for row, own in zip(rows, sizes[start : start + CHUNK], strict=True):
                image_tokens = sum(self.image_tokens(width, height) for width, height in own)
                placeholders = sum(1 for token in row if token == self.image_token_id)
                lengths.append(PromptLength(len(row) - placeholders + image_tokens, image_tokens))
        return lengths


# --- screening records against the limit ------------------------------------------------------------


def screen_prompts(
    records: Iterable[VQARecord],
    meter: PromptMeter,
    limit: int | None,
    counter: SkipCounter,
    what: str,
    setting: str = "algo.max_prompt_length",
) -> list[VQARecord]:
    """The records whose prompts fit `limit` tokens (None: any length) and hold no special token.

    The others are bad records for `counter` (data.on_bad_record): skipped and counted, or, under
    raise, an error naming the record: the first with a special token, else the longest prompt over
    the limit (every prompt is measured first, so its message says how many are over and what limit
    would fit them all). `what` names the records in messages ("training", "test")."""
    started = time.perf_counter()
    records = list(records)
    clean: list[VQARecord] = []
    for record in records:
        problem = meter.special_token_problem(record)
        if problem is None:
            clean.append(record)
        else:
            counter.handle(BadRecordError(record.file or record.images[0], record.id, problem))
    readable: list[VQARecord] = []
    for record in clean:  # an unreadable image is a bad record here too (data.verify_images=false)
        try:
            meter.image_sizes(record)
        except BadRecordError as error:
            counter.handle(error)
        else:
            readable.append(record)
    if limit is None:
        return readable
    lengths = meter.lengths(readable)
    over = sorted(
        (pair for pair in zip(readable, lengths, strict=True) if pair[1].tokens > limit),
        key=lambda pair: -pair[1].tokens,
    )
    longest = over[0][1].tokens if over else 0
    for record, length in over:
        counter.handle(
            too_long(
                record,
                length,
                limit,
                setting,
                f"{len(over)} {what} prompt(s) are over, the longest {longest} tokens",
                longest,
            )
        )
    too_long_ids = {id(record) for record, _ in over}
    kept = [record for record in readable if id(record) not in too_long_ids]
    log.info(
        "%s prompts: %d measured in %.1f s, longest %d tokens (%s=%s), %d over",
        what,
        len(readable),
        time.perf_counter() - started,
        max((length.tokens for length in lengths), default=0),
        setting,
        limit,
        len(over),
    )
    return kept


def too_long(
    record: VQARecord, length: PromptLength, limit: int, setting: str, over: str, longest: int
) -> BadRecordError:
    """The bad-record error of a prompt over the limit (under raise, the longest one's is raised)."""
    image = Path(record.images[0]).name if record.images else "no image"
    return BadRecordError(
        record.file or record.images[0],
        record.id,
        f"prompt too long: {length.tokens} tokens ({length.image_tokens} of them for the image(s), "
        f"{shown(image, 80)}), above {setting}={limit} ({over}): raise {setting} to >= {longest}, or "
        "lower model.max_pixels / set data.resize if image tokens are most of it, or shorten the question "
        "(prompts are never truncated: cutting image tokens breaks the model)",
    )
