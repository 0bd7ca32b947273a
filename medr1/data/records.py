"""The VQARecord contract every reader produces, the bad-record policy, and the helpers every reader
shares (JSON files, image paths and checks, option texts and answer letters)."""

from __future__ import annotations

import json
import logging
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from medr1.data.image_files import folder_problem, header_problem, image_format

log = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJ"


class BadRecordError(ValueError):
    """A record that cannot be used; the message names the file, the record and the fix."""

    def __init__(self, source: str | Path, record_id: str, problem: str):
        self.source, self.record_id, self.problem = str(source), str(record_id), problem
        super().__init__(
            f"{source}: record {record_id!r}: {problem}. "
            "Fix the record, or set data.on_bad_record=skip to skip such records (they are counted and logged)."
        )


@dataclass(frozen=True)
class VQARecord:
    """One multiple-choice question about one or more images."""

    id: str  # unique within its data set
    images: tuple[str, ...]  # absolute image paths
    question: str  # the question stem, without the options
    options: dict[str, str]  # letter -> option text, letters A, B, C, ... in order
    answer: str  # the correct letter, a key of `options`
    modality: str  # canonical modality name (medr1.data.names.MODALITIES)
    question_type: str  # canonical question-type name (medr1.data.names.QUESTION_TYPES)
    source: str  # source data set, e.g. "Chest CT Scan" or "synthetic"
    reasoning: str | None = None  # reference reasoning, when the data has it (used by SFT)

    def check(self, where: str | Path = "<memory>") -> None:
        """Raise BadRecordError if the record breaks the contract."""
        letters = list(self.options)
        if len(letters) < 2:
            raise BadRecordError(where, self.id, f"needs at least 2 options, has {len(letters)}")
        if letters != list(LETTERS[: len(letters)]):
            raise BadRecordError(where, self.id, f"option letters must be A, B, ... in order, got {letters}")
        if self.answer not in self.options:
            raise BadRecordError(where, self.id, f"answer {self.answer!r} is not among the options {letters}")
        if not self.images:
            raise BadRecordError(where, self.id, "has no image")


@dataclass
class SkipCounter:
    """Applies `on_bad_record` (raise | skip) and counts skips by problem for the log."""

    on_bad_record: str = "raise"
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_bad_record not in ("raise", "skip"):
            raise ValueError(f"data.on_bad_record must be 'raise' or 'skip', got {self.on_bad_record!r}")

    def handle(self, error: BadRecordError) -> None:
        """Raise the error, or count it and go on."""
        if self.on_bad_record == "raise":
            raise error
        self.skipped[error.problem.split(":")[0]] += 1
        if len(self.examples) < 5:
            self.examples.append(str(error))

    @property
    def total(self) -> int:
        return sum(self.skipped.values())

    def report(self, what: str) -> None:
        """Log how many records were skipped and why."""
        if self.total:
            log.warning(
                "%s: skipped %d bad records: %s; e.g. %s",
                what,
                self.total,
                dict(self.skipped),
                self.examples[0],
            )


@dataclass
class Splits:
    """Train and test records of one data set."""

    train: list[VQARecord]
    test: list[VQARecord]
    skipped: int = 0  # bad records skipped while reading


# --- helpers the readers share: JSON files, image paths under a root, one check per image ------------

FILE_RECORD_ID = "<file>"  # record id used when a whole file is bad


def read_json_list(path: Path, counter: SkipCounter) -> list | None:
    """The JSON list in `path`, or None after reporting a malformed file to `counter`."""
    try:
        with open(path, encoding="utf-8") as handle:
            items = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        counter.handle(BadRecordError(path, FILE_RECORD_ID, f"malformed JSON: {error}"))
        return None
    if not isinstance(items, list):
        problem = f"malformed JSON: expected a list of items, got {type(items).__name__}"
        counter.handle(BadRecordError(path, FILE_RECORD_ID, problem))
        return None
    return items


def resolve_under_root(root: Path, relative: object) -> Path:
    """The absolute path of `relative` inside `root`; ValueError if it is absolute or climbs out with '..'."""
    text = str(relative).replace("\\", "/")
    normal = posixpath.normpath(text)
    drive = len(text) > 1 and text[1] == ":"  # "C:/..." is absolute too
    if posixpath.isabs(text) or drive or normal == ".." or normal.startswith("../"):
        raise ValueError(
            f"image path escapes the data root: {text!r} (paths must be relative to {root} and stay inside it)"
        )
    return (root / normal).resolve()


class ImageChecker:
    """Checks each image once: the file exists and, with `verify`, its header reads (cheap). An image is
    a picture (PIL), a DICOM or NIfTI file, or a folder holding DICOM files (one series)."""

    def __init__(self, verify: bool = True):
        self.verify = verify
        self._problems: dict[Path, str | None] = {}

    def problem(self, path: Path) -> str | None:
        """None if the image is usable, else what is wrong with it (cached per path)."""
        if path not in self._problems:
            self._problems[path] = self._check(path)
        return self._problems[path]

    def _check(self, path: Path) -> str | None:
        if path.is_dir():
            return folder_problem(path) or (header_problem(path) if self.verify else None)
        if not path.is_file():
            return f"missing image file: {path}"
        if not self.verify:
            return None
        if image_format(path) != "picture":
            return header_problem(path)
        try:
            with Image.open(path) as image:
                image.size  # noqa: B018  (the header parse is the check)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            return f"unreadable image file: {path} ({type(error).__name__}: {error})"
        return None


def clean_text(value: object) -> str | None:
    """A field as stripped text; None when absent or empty. Numbers become text (some options are)."""
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value).strip()
    return text or None


def answer_letter(answer: str, options: dict[str, str]) -> str:
    """The letter whose option text is `answer`: exact match after strip, else case-insensitive."""
    wanted = answer.strip()
    matches = [letter for letter, text in options.items() if text.strip() == wanted]
    if not matches:
        matches = [letter for letter, text in options.items() if text.strip().casefold() == wanted.casefold()]
    if len(matches) > 1:
        raise ValueError(f"answer matches several options: {answer!r} is the text of options {matches}")
    if not matches:
        listed = ", ".join(f"{letter}) {text}" for letter, text in options.items())
        raise ValueError(f"answer is not among options: {answer!r} is none of {listed}")
    return matches[0]


def known_name(canonical, raw: str, problem: str) -> str:
    """`canonical(raw)`, turning its KeyError into a bad-record problem."""
    try:
        return canonical(raw)
    except KeyError as error:
        raise ValueError(f"{problem}: {error.args[0]}") from None


def usable_image(root: Path, relative: str, checker: ImageChecker) -> Path:
    """The absolute path of an image under `root` that exists (and reads, if verifying)."""
    path = resolve_under_root(root, relative)
    problem = checker.problem(path)
    if problem is not None:
        raise ValueError(problem)
    return path
