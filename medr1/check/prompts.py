"""The data half of `mode=check`: read the configured splits as training would, count the records,
and measure every prompt with the processor through the PromptCollator that training uses.

Each record goes through a copy of the datamodule's own collator (its prompt template, option layout,
`data.resize` and whatever image reading it does: DICOM/NIfTI slices included), with the length
limit lifted so that every length is measured rather than the first over the limit raised. Nothing
runs the model: the processor alone gives the token ids, the image grid and so the image tokens.
A record whose image tokens differ from the features its images give (the "Image features and
image tokens do not match" crash) or that cannot be collated at all is a failure: training would
stop at the batch that holds it, whatever `data.on_bad_record` says (readers skip, collators do not).
"""

from __future__ import annotations

import copy
import logging
import statistics
from collections import Counter
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from medr1.data.names import MODALITIES, QUESTION_TYPES
from medr1.data.records import BadRecordError, VQARecord

log = logging.getLogger(__name__)

CHUNK = 32  # records per processor call


@dataclass
class PromptLength:
    """One record's prompt as the model would see it."""

    record_id: str
    image: str  # the record's first image file (what an error names)
    tokens: int  # prompt tokens (padding excluded)
    image_tokens: int  # <|image_pad|> tokens in the prompt
    patches: int  # image patches behind them (image tokens x merge^2)
    target_tokens: int = 0  # SFT: target tokens + <|im_end|>


@dataclass
class SplitScan:
    """Prompt lengths of one split and the records that cannot become a batch."""

    name: str
    lengths: list[PromptLength] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)  # one line per record that cannot be collated

    def longest(self) -> PromptLength | None:
        return max(self.lengths, key=lambda length: length.tokens, default=None)

    def stats(self, attribute: str) -> dict[str, float]:
        values = [getattr(length, attribute) for length in self.lengths]
        if not values:
            return {"min": 0, "median": 0, "max": 0}
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}


# --- reading the splits ----------------------------------------------------------------------


class SkipReports(logging.Handler):
    """Collects the readers' "skipped N bad records: {problem: count}" lines (SkipCounter.report)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.by_problem: Counter = Counter()
        self.examples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        if "skipped" in str(record.msg) and len(args) >= 4 and isinstance(args[2], dict):
            self.by_problem.update(args[2])
            self.examples.append(str(args[3]))


def load_splits(datamodule) -> dict:
    """`datamodule.setup()` with the readers' skip reports captured; a bad record under
    `data.on_bad_record=raise` (or any data error) ends the check with its one-line message."""
    reports = SkipReports()
    records_log = logging.getLogger("medr1.data.records")
    records_log.addHandler(reports)
    # the check measures every prompt itself and reports all of those over the limit (check.json),
    # so the read-time screen, which would stop at the longest, is off here
    datamodule.max_prompt_length = None
    try:
        datamodule.setup("fit")
    except BadRecordError as error:
        raise SystemExit(f"check failed: bad record: {error}") from None
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        raise SystemExit(f"check failed: data: {error}") from None
    finally:
        records_log.removeHandler(reports)
    return {
        "skipped": int(datamodule.splits.skipped),
        "skipped_by_problem": dict(reports.by_problem),
        "skipped_examples": reports.examples[:3],
    }


def record_counts(datamodule) -> dict[str, dict]:
    """Records per split, and per modality and question type within each split."""
    splits = {
        "train": datamodule.train_records,
        "val": datamodule.val_records,
        "test": datamodule.test_records,
    }
    if len(datamodule.splits.train) != len(datamodule.train_records):
        splits["train split"] = datamodule.splits.train  # before the modality / question type selection
    return {name: count_records(records) for name, records in splits.items()}


def count_records(records: list[VQARecord]) -> dict:
    modalities = Counter(r.modality for r in records)
    question_types = Counter(r.question_type for r in records)
    return {
        "records": len(records),
        "modality": {name: modalities[name] for name in MODALITIES if modalities[name]},
        "question_type": {name: question_types[name] for name in QUESTION_TYPES if question_types[name]},
    }


# --- measuring the prompts -------------------------------------------------------------------


def measuring_collator(collator, *, with_targets: bool = False):
    """The datamodule's collator (unwrapped from SkipBadImages: mode=check reports every bad record), its
    length limit lifted (every prompt is measured)."""
    measuring = copy.copy(getattr(collator, "collator", collator))
    measuring.max_prompt_length = None
    measuring.with_targets = with_targets
    return measuring


def scan_split(
    name: str, records: list[VQARecord], collator, *, image_token_id: int, merge: int, progress: bool = True
) -> SplitScan:
    """Collate every record of a split (in chunks) and read its prompt and image-token counts."""
    scan = SplitScan(name)
    chunks = [records[i : i + CHUNK] for i in range(0, len(records), CHUNK)]
    bar = tqdm(
        total=len(records),
        desc=f"measuring {name} prompts",
        unit="prompt",
        disable=None if progress else True,
    )
    for chunk in chunks:
        try:
            scan.lengths += measure_chunk(chunk, collator, image_token_id, merge)
        except (BadRecordError, ValueError, OSError):  # find which records, one by one
            for record in chunk:
                try:
                    scan.lengths += measure_chunk([record], collator, image_token_id, merge)
                except (BadRecordError, ValueError, OSError) as error:
                    scan.broken.append(f"record {record.id!r} ({record.images[0]}): {error}")
        bar.update(len(chunk))
    bar.close()
    return scan


def measure_chunk(records: list[VQARecord], collator, image_token_id: int, merge: int) -> list[PromptLength]:
    batch = collator(records)
    inputs = batch.model_inputs
    tokens = inputs["attention_mask"].sum(1).tolist()
    image_tokens = (inputs["input_ids"] == image_token_id).sum(1).tolist()
    grids = inputs.get("image_grid_thw")
    patches_per_image = grids.prod(-1).tolist() if grids is not None else []
    per_prompt = batch.images_per_prompt.tolist()
    targets = batch.target_mask.sum(1).tolist() if batch.target_mask is not None else [0] * len(records)
    lengths, first = [], 0
    for record, count, n_tokens, n_image, target in zip(
        records, per_prompt, tokens, image_tokens, targets, strict=True
    ):
        if grids is None:  # a fixed-size tower (LLaVA's CLIP): one token per patch, no grid to compare
            patches = n_image
        else:
            patches = int(sum(patches_per_image[first : first + count]))
        first += count
        if grids is not None and patches != n_image * merge**2:
            raise ValueError(
                f"{n_image} image tokens in the prompt but its {count} image(s) give {patches // merge**2} "
                "image features (the 'Image features and image tokens do not match' crash)"
            )
        lengths.append(
            PromptLength(record.id, record.images[0], int(n_tokens), int(n_image), patches, int(target))
        )
    return lengths


def over_limit(scan: SplitScan, limit: int | None) -> list[PromptLength]:
    if limit is None:
        return []
    return sorted((x for x in scan.lengths if x.tokens > limit), key=lambda x: -x.tokens)


def image_token_id_of(processor, config) -> int:
    """The <|image_pad|> id: the model config's, else the processor's."""
    value = getattr(config, "image_token_id", None)
    if value is None:
        value = getattr(processor, "image_token_id", None)
    if value is None:
        value = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    return int(value)
