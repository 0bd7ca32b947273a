"""Reader for Med-R1's released train/test split files of OmniMedVQA.

Layout (under the OmniMedVQA root, so image paths resolve):

    <root>/Splits/modality/{train,test}/<raw modality>_{train,test}.json        e.g. CT(Computed Tomography)_train.json
    <root>/Splits/question_type/{train,test}/<raw question type>_{train,test}.json   e.g. Lesion Grading_test.json
    <root>/Images/<dataset>/...

Each file is a JSON list of {"image": "Images/<dataset>/...", "problem": "Q? A)opt, B)opt, C)opt",
"solution": "<answer> C </answer>"}. The options are parsed back out of `problem`: they follow the stem
as "A)text, B)text, ..."; option text may itself hold commas, so the text is cut only at ", X)" where X
is the next letter. The file name gives the modality (or question type); the other attribute is looked
up by (image, problem) in the sibling folder when it exists, and is "unknown" otherwise.

The release's quirk: Splits/modality/train/unknown_train.json holds one record (a Chest CT Scan
question) filed under modality "unknown". A file whose name is literally `unknown_<part>.json` is such a
quirk, not an error: its records go into no group and one log line says how many and which file (they
are not bad records, so on_bad_record does not apply and Splits.skipped does not count them). With
split_by=question_type the modality comes from Splits/modality; a question found only in the quirk file
keeps modality "unknown" (in the release it is one Modality Recognition test question, so the
question-type split keeps it and a per-modality breakdown shows it under "unknown"). Any other file name
that names no known modality or question type stays a bad record (raised, or counted under skip).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from tqdm import tqdm

from medr1.data.names import canonical_modality, canonical_question_type
from medr1.data.records import (
    FILE_RECORD_ID,
    LETTERS,
    BadRecordError,
    ImageChecker,
    SkipCounter,
    Splits,
    VQARecord,
    clean_text,
    read_json_list,
    usable_image,
)
from medr1.errors import ConfigError, DataNotFoundError, shown

log = logging.getLogger(__name__)

GROUPS = {"modality": canonical_modality, "question_type": canonical_question_type}
SIBLING = {"modality": "question_type", "question_type": "modality"}
UNKNOWN = "unknown"  # the attribute not given by the file name, when the sibling folder is absent
QUIRK_NAME = "unknown"  # Splits/modality/train/unknown_train.json: records the release filed under no group

_OPTION_A = re.compile(r"(?<!\S)A\)")  # "A)" at the start or after whitespace
_SOLUTION = re.compile(r"\s*<answer>\s*([A-Za-z])\s*</answer>\s*", re.DOTALL)


class MedR1Splits:
    """Med-R1's own split files: train/test per modality or per question type."""

    def __init__(
        self,
        *,
        root: str | Path,
        split_by: str = "modality",
        on_bad_record: str = "raise",
        verify_images: bool = True,
    ):
        if split_by not in GROUPS:
            raise ConfigError(f"data.split_by must be one of {tuple(GROUPS)}, got {split_by!r}")
        self.root = Path(root).expanduser().resolve()
        self.split_by = split_by
        self.on_bad_record = on_bad_record
        self.verify_images = verify_images

    def load(self) -> Splits:
        """Read Splits/<split_by>/train and test; fill the other attribute from the sibling folder."""
        counter = SkipCounter(self.on_bad_record)
        checker = ImageChecker(self.verify_images)
        other = self.sibling_lookup(counter)
        train = self.read_part("train", checker, counter, other)
        test = self.read_part("test", checker, counter, other)
        counter.report(f"Med-R1 splits at {self.root / 'Splits' / self.split_by}")
        log.info(
            "Med-R1 splits: %d train, %d test records (split by %s)", len(train), len(test), self.split_by
        )
        return Splits(train=train, test=test, skipped=counter.total)

    def split_files(self, group_kind: str, part: str) -> list[Path]:
        return sorted((self.root / "Splits" / group_kind / part).glob(f"*_{part}.json"))

    def read_part(
        self, part: str, checker: ImageChecker, counter: SkipCounter, other: dict[tuple[str, str], str] | None
    ) -> list[VQARecord]:
        """All records of Splits/<split_by>/<part>/."""
        files = self.split_files(self.split_by, part)
        if not files:
            raise DataNotFoundError(
                f"no Med-R1 split files in {self.root / 'Splits' / self.split_by / part}: expected "
                f"<raw name>_{part}.json files there (e.g. 'CT(Computed Tomography)_{part}.json'). Set "
                "data.root to the OmniMedVQA folder that holds Splits/ and Images/."
            )
        records: list[VQARecord] = []
        for path in tqdm(files, desc=f"Med-R1 {part} files", unit="file", disable=None):
            group, items = group_items(path, self.split_by, part, counter, sibling=False)
            for index, item in enumerate(items):
                try:
                    records.append(self.record(item, f"{path.stem}:{index}", path, group, checker, other))
                except BadRecordError as error:
                    counter.handle(error)
        return records

    def record(
        self,
        item: object,
        record_id: str,
        file: Path,
        group: str,
        checker: ImageChecker,
        other: dict[tuple[str, str], str] | None,
    ) -> VQARecord:
        """One split item as a record; BadRecordError names what is wrong."""
        try:
            image, problem, solution = item_fields(item)
            question, options = parse_problem(problem)
            answer = parse_solution(solution, options)
            image_path = usable_image(self.root, image, checker)
        except ValueError as error:
            raise BadRecordError(file, record_id, str(error)) from None
        other_value = UNKNOWN if other is None else other.get((image, problem), UNKNOWN)
        attributes = {self.split_by: group, SIBLING[self.split_by]: other_value}
        record = VQARecord(
            id=record_id,
            images=(str(image_path),),
            question=question,
            options=options,
            answer=answer,
            source=source_dataset(image),
            file=str(file),
            **attributes,
        )
        record.check(file)
        return record

    def sibling_lookup(self, counter: SkipCounter) -> dict[tuple[str, str], str] | None:
        """(image, problem) -> the other attribute, from the sibling folder; None if it does not exist."""
        kind = SIBLING[self.split_by]
        if not (self.root / "Splits" / kind).is_dir():
            log.info("Med-R1 splits: no Splits/%s folder, so every record's %s is %r", kind, kind, UNKNOWN)
            return None
        lookup: dict[tuple[str, str], str] = {}
        for part in ("train", "test"):
            for path in self.split_files(kind, part):
                name, items = group_items(path, kind, part, counter, sibling=True)
                for item in items:
                    if (
                        isinstance(item, dict)
                        and clean_text(item.get("image"))
                        and clean_text(item.get("problem"))
                    ):
                        lookup.setdefault((clean_text(item["image"]), clean_text(item["problem"])), name)
        return lookup


# --- parsing --------------------------------------------------------------------------------------------


def group_items(path: Path, kind: str, part: str, counter: SkipCounter, sibling: bool) -> tuple[str, list]:
    """The group a split file names and its items; no items for a bad file name or the 'unknown' quirk."""
    if is_quirk_file(path, part):
        items = read_json_list(path, counter) or []
        note_quirk(path, len(items), kind, sibling)
        return QUIRK_NAME, []
    group = group_from_file_name(path, kind, part, counter)
    if group is None:
        return UNKNOWN, []
    return group, read_json_list(path, counter) or []


def is_quirk_file(path: Path, part: str) -> bool:
    """True for '<kind>/<part>/unknown_<part>.json', the release's file of records in no group."""
    return path.stem.removesuffix(f"_{part}") == QUIRK_NAME


def note_quirk(path: Path, count: int, kind: str, sibling: bool) -> None:
    """One log line for the quirk file: how many records it holds and what happens to them."""
    what = kind.replace("_", " ")
    if sibling:
        fate = f"questions found only there get {what} {UNKNOWN!r}"
    else:
        fate = f"they are left out of every {what} group"
    log.info(
        "Med-R1 splits: %d record(s) in %s filed under %s %r (a quirk of the release); %s",
        count,
        path,
        what,
        QUIRK_NAME,
        fate,
    )


def group_from_file_name(path: Path, kind: str, part: str, counter: SkipCounter) -> str | None:
    """The canonical modality / question type named by '<raw name>_<part>.json', or None if unknown."""
    raw = path.stem.removesuffix(f"_{part}")
    try:
        return GROUPS[kind](raw)
    except KeyError as error:
        problem = f"unknown {kind.replace('_', ' ')} in file name: {error.args[0]}"
        counter.handle(BadRecordError(path, FILE_RECORD_ID, problem))
        return None


def item_fields(item: object) -> tuple[str, str, str]:
    """The image, problem and solution of a split item (ValueError if one is missing)."""
    if not isinstance(item, dict):
        raise ValueError(f"malformed item: expected an object, got {type(item).__name__}")
    values = {name: clean_text(item.get(name)) for name in ("image", "problem", "solution")}
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise ValueError(f"missing field: {', '.join(missing)} (absent, empty or not text)")
    return values["image"], values["problem"], values["solution"]


def parse_problem(problem: str) -> tuple[str, dict[str, str]]:
    """Split "Stem? A)one, B)two, C)three" into the stem and {letter: option text}.

    Every "A)" at a word start is a candidate start of the options; the candidate that yields the most
    options wins, and among equals the last (the stem is free text, the options close the problem).
    """
    best: tuple[str, dict[str, str]] | None = None
    for match in _OPTION_A.finditer(problem):
        options = options_after(problem, match.end())
        stem = problem[: match.start()].strip()
        if stem and all(options.values()) and (best is None or len(options) >= len(best[1])):
            best = (stem, options)
    if best is None or len(best[1]) < 2:
        raise ValueError(f"malformed problem: no 'Stem A)option, B)option' found in {shown(problem)}")
    last = list(best[1])[-1]
    beyond = chr(ord(LETTERS[-1]) + 1)
    if last == LETTERS[-1] and re.search(rf",\s*{beyond}\)", best[1][last]):
        raise ValueError(
            f"too many options: the problem has an option {beyond}); at most {len(LETTERS)} (A-{LETTERS[-1]})"
        )
    return best


def options_after(text: str, start: int) -> dict[str, str]:
    """Options from `start` (just after "A)"): each runs to ", X)" of the next letter X, the last to the end."""
    options: dict[str, str] = {}
    position = start
    for index, letter in enumerate(LETTERS):
        next_letter = LETTERS[index + 1] if index + 1 < len(LETTERS) else None
        cut = re.compile(rf",\s*{next_letter}\)").search(text, position) if next_letter else None
        if cut is None:
            options[letter] = text[position:].strip()
            break
        options[letter] = text[position : cut.start()].strip()
        position = cut.end()
    return options


def parse_solution(solution: str, options: dict[str, str]) -> str:
    """The letter in "<answer> C </answer>", which must be one of the options."""
    match = _SOLUTION.fullmatch(solution)
    if match is None:
        raise ValueError(
            f"malformed solution: expected '<answer> X </answer>' with one letter, got {shown(solution)}"
        )
    letter = match.group(1).upper()
    if letter not in options:
        raise ValueError(f"answer is not among options: solution {letter!r}, options {list(options)}")
    return letter


def source_dataset(image: str) -> str:
    """The source data set named by an "Images/<dataset>/..." path."""
    parts = image.replace("\\", "/").split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "Images" else "OmniMedVQA"
