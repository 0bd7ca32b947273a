"""OmniMedVQA reader, with Med-R1's per-modality or per-question-type 80/20 split.

Layout of a root folder (as released):

    <root>/QA_information/Open-access/<dataset>.json         one JSON list of items per source data set
    <root>/QA_information/Restricted-access/<dataset>.json   (images must be fetched from the sources)
    <root>/Images/<dataset>/...                              image files, referenced relative to <root>

Item fields: dataset, question_id, question_type, question, gt_answer (the TEXT of the correct option),
image_path, option_A, option_B, option_C, option_D (C and D may be missing or empty) and modality_type;
one released file names the modality field `modality` instead, so both are accepted. Raw modality and
question-type strings (typos included) map to canonical names through medr1.data.names.

`access` (data.access in conf/data/omnimedvqa.yaml) picks the QA_information sub-folders read:
[Open-access, Restricted-access] by default; [Open-access] on a download without the restricted images
(whose images must be fetched from their source data sets). A name that is neither is an error.

Departures from Med-R1: it shipped fixed split files (see medr1_splits.py); this reader re-creates a
split of the same kind (seeded ~80/20 per group, medr1.data.split) from the raw files.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from medr1.data.names import canonical_modality, canonical_question_type
from medr1.data.records import (
    LETTERS,
    BadRecordError,
    ImageChecker,
    SkipCounter,
    Splits,
    VQARecord,
    answer_letter,
    clean_text,
    known_name,
    read_json_list,
    usable_image,
)
from medr1.data.split import split_by_group
from medr1.errors import ConfigError, DataNotFoundError

log = logging.getLogger(__name__)

ACCESS_FOLDERS = ("Open-access", "Restricted-access")
SPLIT_GROUPS = ("modality", "question_type")
REQUIRED_FIELDS = ("question", "question_type", "gt_answer", "image_path", "option_A", "option_B")


class OmniMedVQA:
    """Reads OmniMedVQA's raw QA files and splits them ~80/20 within each modality or question type.

    Every image must exist; with `verify_images` its header must also read (PIL, cheap), once per file.
    `access` picks the QA_information sub-folders; an absent one is skipped.
    """

    def __init__(
        self,
        *,
        root: str | Path,
        split_by: str = "modality",
        test_fraction: float = 0.2,
        seed: int = 42,
        on_bad_record: str = "raise",
        verify_images: bool = True,
        access: Sequence[str] = ACCESS_FOLDERS,
    ):
        if split_by not in SPLIT_GROUPS:
            raise ConfigError(f"data.split_by must be one of {SPLIT_GROUPS}, got {split_by!r}")
        self.root = Path(root).expanduser().resolve()
        self.split_by = split_by
        self.test_fraction = test_fraction
        self.seed = seed
        self.on_bad_record = on_bad_record
        self.verify_images = verify_images
        self.access = access_folders(access)

    def load(self) -> Splits:
        """Read every item, then split train/test within each group of `split_by`."""
        counter = SkipCounter(self.on_bad_record)
        records = self.read(counter)
        train, test = split_by_group(records, self.split_by, self.test_fraction, self.seed)
        counter.report(f"OmniMedVQA at {self.root}")
        log.info("OmniMedVQA: %d train, %d test records (split by %s)", len(train), len(test), self.split_by)
        return Splits(train=train, test=test, skipped=counter.total)

    def read(self, counter: SkipCounter) -> list[VQARecord]:
        """All valid records of the chosen access folders, sorted by id; bad ones go to `counter`."""
        checker = ImageChecker(self.verify_images)
        records: list[VQARecord] = []
        for path in tqdm(self.question_files(), desc="OmniMedVQA files", unit="file", disable=None):
            items = read_json_list(path, counter)
            for index, item in enumerate(items or []):
                try:
                    records.append(omnimedvqa_record(item, index, path, self.root, checker))
                except BadRecordError as error:
                    counter.handle(error)
        return sorted(make_ids_unique(records), key=lambda record: record.id)

    def question_files(self) -> list[Path]:
        """The QA JSON files of the access folders that exist; an error if none does."""
        folders = [self.root / "QA_information" / name for name in self.access]
        present = [folder for folder in folders if folder.is_dir()]
        files = [path for folder in present for path in sorted(folder.glob("*.json"))]
        if not files:
            raise DataNotFoundError(
                f"no OmniMedVQA question files under {self.root}: expected "
                f"{self.root}/QA_information/<{' | '.join(self.access)}>/<dataset>.json and images under "
                f"{self.root}/Images/<dataset>/. Set data.root to the folder that holds QA_information/ "
                "and Images/ (the unzipped OmniMedVQA release)."
            )
        for folder in set(folders) - set(present):
            log.info("OmniMedVQA: %s does not exist, skipped", folder)
        return files


def access_folders(access: str | Sequence[str]) -> tuple[str, ...]:
    """`access` as a tuple of QA_information sub-folder names; ValueError names the valid ones."""
    names = (access,) if isinstance(access, str) else tuple(str(name) for name in access)
    unknown = [name for name in names if name not in ACCESS_FOLDERS]
    if unknown or not names:
        problem = f"unknown access folder(s) {unknown}" if unknown else "no access folder given"
        raise ConfigError(
            f"data.access: {problem}; valid: {list(ACCESS_FOLDERS)} (the sub-folders of QA_information/), "
            "e.g. data.access=[Open-access] for a download without the restricted images"
        )
    return names


# --- one item -> one VQARecord ---------------------------------------------------------------------


def omnimedvqa_record(item: object, index: int, file: Path, root: Path, checker: ImageChecker) -> VQARecord:
    """Validate one raw item and build its record; BadRecordError names what is wrong."""
    if not isinstance(item, dict):
        raise BadRecordError(
            file, f"#{index}", f"malformed item: expected an object, got {type(item).__name__}"
        )
    source = clean_text(item.get("dataset")) or file.stem
    record_id = clean_text(item.get("question_id")) or f"{source}:{index}"
    try:
        fields = {name: clean_text(item.get(name)) for name in REQUIRED_FIELDS}
        # One released file calls the field `modality`; all others `modality_type`.
        fields["modality_type"] = clean_text(item.get("modality_type", item.get("modality")))
        missing = [name for name, value in fields.items() if value is None]
        if missing:
            raise ValueError(f"missing field: {', '.join(missing)} (absent, empty or not text)")
        options = options_from_fields(item)
        answer = answer_letter(fields["gt_answer"], options)
        modality = known_name(canonical_modality, fields["modality_type"], "unknown modality")
        question_type = known_name(canonical_question_type, fields["question_type"], "unknown question type")
        image = usable_image(root, fields["image_path"], checker)
    except ValueError as error:
        raise BadRecordError(file, record_id, with_hint(str(error), file)) from None
    record = VQARecord(
        id=record_id,
        images=(str(image),),
        question=fields["question"],
        options=options,
        answer=answer,
        modality=modality,
        question_type=question_type,
        source=source,
        file=str(file),
    )
    record.check(file)
    return record


def options_from_fields(item: dict) -> dict[str, str]:
    """Options from option_A, option_B, ...; empty trailing ones are dropped, a gap is an error, and so
    is an option beyond the last letter medr1 supports (option_K: it would be dropped silently)."""
    beyond = [key for key in item if re.fullmatch(r"option_[A-Z]", str(key)) and key[-1] not in LETTERS]
    if any(clean_text(item[key]) is not None for key in beyond):
        raise ValueError(
            f"too many options: {sorted(beyond)[0]} is set; at most {len(LETTERS)} (option_A to option_{LETTERS[-1]})"
        )
    texts = {letter: clean_text(item.get(f"option_{letter}")) for letter in LETTERS}
    present = [letter for letter, text in texts.items() if text is not None]
    expected = list(LETTERS[: len(present)])
    if present != expected:
        gap = next(letter for letter in expected if letter not in present)
        raise ValueError(f"option gap: option_{gap} is empty but later options are set ({present})")
    return {letter: texts[letter] for letter in present}


def with_hint(problem: str, file: Path) -> str:
    """Add how to get restricted-access images when one of them is missing."""
    if problem.startswith("missing image file") and file.parent.name == "Restricted-access":
        return (
            problem
            + " (Restricted-access images must be fetched from their source data sets; or set data.access=[Open-access])"
        )
    return problem


def make_ids_unique(records: list[VQARecord]) -> list[VQARecord]:
    """Suffix repeated ids with #2, #3, ... in a fixed order, so predictions stay one line per id; a
    suffix that another record already has as its id is passed over (#3 then)."""
    by_id: dict[str, list[VQARecord]] = defaultdict(list)
    for record in records:
        by_id[record.id].append(record)
    taken = set(by_id)
    unique: list[VQARecord] = []
    repeated = 0
    for record_id, group in by_id.items():
        group.sort(
            key=lambda record: (record.source, record.images, record.question, tuple(record.options.items()))
        )
        unique.append(group[0])
        number = 1
        for record in group[1:]:
            number += 1
            while f"{record_id}#{number}" in taken:
                number += 1
            taken.add(f"{record_id}#{number}")
            unique.append(dataclasses.replace(record, id=f"{record_id}#{number}"))
            repeated += 1
    if repeated:
        log.warning(
            "OmniMedVQA: %d records share an id with another; suffixed them with #2, #3, ...", repeated
        )
    return unique
