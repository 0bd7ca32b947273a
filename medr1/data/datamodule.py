"""The Lightning DataModule: read a source's splits, filter what is trained on, batch prompts.

`modality=<name>` and `question_type=<name>` select the TRAINING records only; the test split is
always evaluated whole, so every run reports on every modality and question type (the papers'
cross-modality / cross-task protocol). Validation during training uses a fixed, stratified subset
of the test split, since neither paper keeps a separate validation split.

Training batches use the training prompt; validation and test batches use the evaluation template
(`eval.prompt`, default the training one) with the training prompt's option layout, as Med-R1
evaluates with templates of its own. `data.resize`, the `image` block (DICOM/NIfTI window, slice axis
and count) and the pixel budget `model.max_pixels` apply to every split alike.

Prompt length: `setup` measures every training prompt (training template) and every test prompt
(evaluation template; validation is a subset of test) in tokens, as the collators will build them
(medr1.data.lengths), before any batch is built. A prompt longer than `max_prompt_length`
(`algo.max_prompt_length`, in every mode: training, validation, test and mode=eval), or one whose text
holds a model control token, is a bad record under `data.on_bad_record`: skipped and counted, or the run
stops naming the record (the longest over the limit), its length, the limit and the fix. Records are
screened before the caps and subsets (max_train_samples, max_test_per_modality, val_size), which then
draw from usable records only.

Images are decoded when their batch is built. Under `on_bad_record=skip`, a record whose image fails
then (its header read when the data was, its pixels do not: a truncated file) is dropped from its batch,
logged and counted, and left out of every later batch (`SkipBadImages`); under `raise` the run stops
naming it. A batch with no readable record left stops the run, naming them.

Dynamic sampling (`algo.dynamic_sampling`, medr1.rl.module) asks for prompts beyond the loader's:
`draw_train_prompts` picks them at random from the training records with a generator seeded from
(data seed, training batch, round, rank) alone, so a resumed run draws exactly what the interrupted
run would have and no draw state needs checkpointing, and `collate_train` rebuilds a batch from
chosen records; both use the training collator, so these batches are exactly like the loader's.
"""

from __future__ import annotations

import logging
import math
import random
from collections import defaultdict
from collections.abc import Collection, Mapping

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from medr1.data.batches import PromptBatch, PromptCollator
from medr1.data.images import ImageSettings
from medr1.data.lengths import PromptMeter, screen_prompts
from medr1.data.names import MODALITIES, QUESTION_TYPES
from medr1.data.prompts import PromptFormat
from medr1.data.records import BadRecordError, SkipCounter, Splits, VQARecord
from medr1.errors import ConfigError

log = logging.getLogger(__name__)


class SkipBadImages:
    """A collator that, under data.on_bad_record=skip, drops from the batch a record whose image cannot
    be decoded now (module docstring), and every later time it comes; under raise, the collator itself.
    Attributes other than the call are the wrapped collator's (its settings, `with_blank_images`)."""

    def __init__(self, collator: PromptCollator, on_bad_record: str, bad: set[str] | None = None):
        self.collator, self.on_bad_record = collator, on_bad_record
        self.bad = set() if bad is None else bad  # ids dropped so far (in this process)

    def __call__(self, records: list[VQARecord]) -> PromptBatch:
        kept = [record for record in records if record.id not in self.bad]
        while kept:
            try:
                return self.collator(kept)
            except BadRecordError as error:
                if self.on_bad_record != "skip" or error.record_id not in {r.id for r in kept}:
                    raise
                self.bad.add(error.record_id)
                log.warning(
                    "%s: record %r skipped when its batch was built (data.on_bad_record=skip; %d so far): %s",
                    error.source,
                    error.record_id,
                    len(self.bad),
                    error.problem,
                )
                kept = [record for record in kept if record.id != error.record_id]
        raise ConfigError(
            f"no record of a batch of {len(records)} is usable ({', '.join(r.id for r in records[:5])}): their "
            "images cannot be decoded; fix or remove these files"
        )

    def with_blank_images(self) -> SkipBadImages:
        return SkipBadImages(self.collator.with_blank_images(), self.on_bad_record, self.bad)

    def __getattr__(self, name: str):  # only called for names the wrapper lacks
        if name == "collator":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.collator, name)


def select_training(records: list[VQARecord], modality: str, question_type: str) -> list[VQARecord]:
    """Training records of `modality` and `question_type` ("all" keeps everything)."""
    for value, known, what in (
        (modality, MODALITIES, "modality"),
        (question_type, QUESTION_TYPES, "question_type"),
    ):
        if value != "all" and value not in known:
            raise ConfigError(f"{what}={value!r} is unknown; choose all or one of {', '.join(known)}")
    chosen = [
        r
        for r in records
        if (modality == "all" or r.modality == modality)
        and (question_type == "all" or r.question_type == question_type)
    ]
    if not chosen:
        present = sorted({(r.modality, r.question_type) for r in records})
        raise ConfigError(
            f"no training records for modality={modality} question_type={question_type}; "
            f"the train split has (modality, question_type) pairs {present[:20]}"
        )
    return chosen


def stratified_subset(records: list[VQARecord], size: int | None, seed: int) -> list[VQARecord]:
    """Up to `size` records, spread evenly over (modality, question_type) groups, seeded."""
    if size is None or size >= len(records):
        return list(records)
    groups: dict[tuple[str, str], list[VQARecord]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r.id):
        groups[(record.modality, record.question_type)].append(record)
    rng = random.Random(seed)
    for members in groups.values():
        rng.shuffle(members)
    chosen, keys, index = [], sorted(groups), 0
    while len(chosen) < size:  # round robin over groups
        added = False
        for key in keys:
            if index < len(groups[key]) and len(chosen) < size:
                chosen.append(groups[key][index])
                added = True
        if not added:
            break
        index += 1
    return chosen


def cap_per_group(records: list[VQARecord], cap: int | None, key: str, seed: int) -> list[VQARecord]:
    """At most `cap` records per value of `key` (e.g. MedVLM-R1's 300 test questions per modality)."""
    if cap is None:
        return list(records)
    groups: dict[str, list[VQARecord]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r.id):
        groups[getattr(record, key)].append(record)
    rng = random.Random(seed)
    chosen = []
    for members in groups.values():
        rng.shuffle(members)
        chosen.extend(members[:cap])
    return chosen


class EpochSampler(DistributedSampler):
    """A seeded shuffle per epoch that starts where a resumed run stopped, so resuming from a
    mid-epoch checkpoint sees exactly the batches an uninterrupted run would have seen.

    Under DDP each rank takes every `num_replicas`-th index of the epoch's order (padded by repeats
    to equal shares, as torch's DistributedSampler does). Being a DistributedSampler, Lightning keeps
    it instead of wrapping it in one that knows nothing of the resume position."""

    def __init__(self, size: int, batch_size: int, seed: int, position, num_replicas: int = 1, rank: int = 0):
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.size, self.batch_size = size, batch_size
        self.position = position  # () -> (epoch, batches of that epoch already trained on)

    def __iter__(self):
        epoch, batches_done = self.position()
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        share = math.ceil(self.size / self.num_replicas)
        order += order[: share * self.num_replicas - self.size]
        yield from order[self.rank :: self.num_replicas][batches_done * self.batch_size :]

    def __len__(self) -> int:
        return math.ceil(self.size / self.num_replicas)


class VQADataModule(L.LightningDataModule):
    def __init__(
        self,
        *,
        source,
        processor,
        prompt: PromptFormat | str | Mapping,
        eval_prompt: str | None = None,
        resize: int | None = None,
        image: ImageSettings | Mapping | None = None,
        max_pixels: int | None = None,
        train_modality: str = "all",
        train_question_type: str = "all",
        batch_size: int = 8,
        eval_batch_size: int = 16,
        num_workers: int = 0,
        max_train_samples: int | None = None,
        max_test_per_modality: int | None = None,
        val_size: int | None = 64,
        with_targets: bool = False,
        max_prompt_length: int | None = None,
        on_bad_record: str | None = None,
        seed: int = 42,
        test_seed: int = 42,
    ):
        super().__init__()
        self.source = source
        self.max_prompt_length = max_prompt_length  # algo.max_prompt_length: every split, every mode
        # data.on_bad_record: the readers get it as data.source.on_bad_record, so that is the default
        self.on_bad_record = on_bad_record or getattr(source, "on_bad_record", "raise")
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.train_modality, self.train_question_type = train_modality, train_question_type
        self.max_train_samples, self.max_test_per_modality, self.val_size = (
            max_train_samples,
            max_test_per_modality,
            val_size,
        )
        self.seed = seed  # training order and the training subset
        self.test_seed = test_seed  # which test/validation questions the caps keep: the same for every seed
        self.prompt = PromptFormat.from_config(prompt)
        self.eval_prompt = self.prompt.with_template(eval_prompt)
        images = dict(resize=resize, image=ImageSettings.from_config(image), max_pixels=max_pixels)
        self.train_collator = SkipBadImages(
            PromptCollator(
                processor,
                self.prompt,
                with_targets=with_targets,
                max_prompt_length=max_prompt_length,
                **images,
            ),
            self.on_bad_record,
        )
        self.eval_collator = SkipBadImages(
            PromptCollator(processor, self.eval_prompt, with_targets=False, **images), self.on_bad_record
        )
        self.train_meter = PromptMeter(processor, self.prompt, **images)
        self.eval_meter = PromptMeter(processor, self.eval_prompt, **images)
        self.splits: Splits | None = None
        self._screened: set[str] = set()  # "training", "test": splits whose prompts are measured
        self.train_records: list[VQARecord] = []
        self.test_records: list[VQARecord] = []
        self.val_records: list[VQARecord] = []

    def setup(self, stage: str | None = None) -> None:
        """Read the splits once, then screen the prompts: the training split's first (unless only
        testing: stage "test", mode=eval, need not measure prompts it never builds), then the test
        split's, so that under on_bad_record=raise a training run names a training record."""
        screened = set(self._screened)
        if self.splits is None:
            self.splits = self.source.load()
            self.train_records = select_training(
                self.splits.train, self.train_modality, self.train_question_type
            )
        if stage != "test" and "training" not in self._screened:
            counter = SkipCounter(self.on_bad_record)
            self.train_records = screen_prompts(
                self.train_records, self.train_meter, self.max_prompt_length, counter, "training"
            )
            if not self.train_records:
                raise ConfigError(
                    f"no training record is usable: all {counter.total} were skipped as bad records "
                    f"({dict(counter.skipped)}), e.g. {counter.examples[0] if counter.examples else '-'}"
                )
            if self.max_train_samples:
                self.train_records = stratified_subset(self.train_records, self.max_train_samples, self.seed)
            self._note_skipped(counter, "training")
        if "test" not in self._screened:
            counter = SkipCounter(self.on_bad_record)
            test = screen_prompts(self.splits.test, self.eval_meter, self.max_prompt_length, counter, "test")
            self.test_records = cap_per_group(test, self.max_test_per_modality, "modality", self.test_seed)
            self.val_records = stratified_subset(self.test_records, self.val_size, self.test_seed)
            self._note_skipped(counter, "test")
        if self._screened == screened:
            return  # nothing new (Lightning calls setup again after train.py did)
        log.info(
            "data: %d training records (modality=%s, question_type=%s), %d test, %d validation, %d bad records skipped",
            len(self.train_records),
            self.train_modality,
            self.train_question_type,
            len(self.test_records),
            len(self.val_records),
            self.splits.skipped,
        )

    def _note_skipped(self, counter: SkipCounter, what: str) -> None:
        """Mark `what` screened; log the prompt check's skips and count them with the readers'."""
        self._screened.add(what)
        counter.report(f"{what} prompts (algo.max_prompt_length={self.max_prompt_length})")
        self.splits.skipped += counter.total

    def train_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EpochSampler(
            len(self.train_records),
            self.batch_size,
            self.seed,
            self._training_position,
            num_replicas=world,
            rank=rank,
        )
        return DataLoader(
            self.train_records,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=len(self.train_records) >= self.batch_size,
            collate_fn=self.train_collator,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),  # worker seeds: not from the global RNG
        )

    def collate_train(self, records: list[VQARecord]) -> PromptBatch:
        """A training batch of `records`, built as the training loader builds one."""
        return self.train_collator(records)

    def draw_train_prompts(
        self, size: int, *, batch: int, round_: int, exclude: Collection[str] = ()
    ) -> PromptBatch:
        """Up to `size` distinct training prompts at random, for dynamic sampling's `round_`-th extra
        round (from 1) of training batch `batch` (counted over the whole run, skipped steps included).

        The choice depends on (data seed, batch, round_, this rank, exclude) only: a resumed run draws
        the same prompts as the uninterrupted one without any saved state, and DDP ranks draw
        different ones (each its own stream; two ranks may still pick the same record). Records whose
        id is in `exclude` (already sampled in this step) are left out while enough others remain."""
        if size < 1 or not self.train_records:
            raise ValueError(f"cannot draw {size} training prompts from {len(self.train_records)} records")
        trainer = getattr(self, "trainer", None)
        rank = trainer.global_rank if trainer is not None else 0
        fresh = [index for index, r in enumerate(self.train_records) if r.id not in exclude]
        pool = fresh if len(fresh) >= size else list(range(len(self.train_records)))
        generator = np.random.default_rng([self.seed, batch, round_, rank])  # a SeedSequence of the four
        chosen = generator.choice(len(pool), size=min(size, len(pool)), replace=False)
        return self.collate_train([self.train_records[pool[i]] for i in chosen])

    def _training_position(self) -> tuple[int, int]:
        """(epoch, batches already trained on in it): nonzero only when resuming mid-epoch."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 0
        loop = trainer.fit_loop
        done = loop.epoch_loop.batch_progress.current.completed if loop.restarting else 0
        return trainer.current_epoch, done

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_records)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_records)

    def _eval_loader(self, records: list[VQARecord]) -> DataLoader:
        return DataLoader(
            records,
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=self.eval_collator,
            num_workers=self.num_workers,
        )
