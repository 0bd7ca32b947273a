"""The VQARecord contract every reader produces, the bad-record policy, and the helpers every reader
shares (JSON files, image paths and checks, option texts and answer letters)."""

from __future__ import annotations

import ast
import json
import logging
import posixpath
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from medr1.data.image_files import folder_problem, header_problem, image_format
from medr1.errors import ConfigError, UserError, printable, shorten, shown

log = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJ"


class BadRecordError(UserError, ValueError):
    """A record that cannot be used; the message, one line whatever the record holds, names the file,
    the record and the fix."""

    def __init__(self, source: str | Path, record_id: str | None = None, problem: str | None = None):
        if record_id is None and problem is None:
            source, record_id, problem = from_worker(str(source))
        self.source, self.record_id = str(source), str(record_id)
        self.problem = printable(shorten(problem, 1000))
        super().__init__(
            f"{printable(shorten(self.source, 300))}: record {shown(self.record_id)}: {self.problem}. {FIX}"
        )


FIX = "Fix the record, or set data.on_bad_record=skip to skip such records (they are counted and logged)."
_MESSAGE = re.compile(
    r"(?P<source>.*?): record (?P<id>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"): (?P<problem>.*)\. "
    + re.escape(FIX)
)


def from_worker(message: str) -> tuple[str, str, str]:
    """(source, record id, problem) of a BadRecordError that a DataLoader worker raised: torch re-raises
    it in the main process as `BadRecordError(<the worker's formatted traceback>)`, whose last line is
    the original message, read back here so that the user still sees that one line."""
    lines = message.strip().splitlines() or [message]
    original = lines[-1].split("BadRecordError: ", 1)[-1]
    match = _MESSAGE.fullmatch(original)
    if match is None:
        return "a DataLoader worker", "?", original
    return match.group("source"), ast.literal_eval(match.group("id")), match.group("problem")


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
    file: str | None = None  # the file the record was read from, named in errors; None if built in memory

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
        problem = text_problem(self)
        if problem is not None:
            raise BadRecordError(where, self.id, problem)

    def texts(self) -> list[tuple[str, str]]:
        """(what, text) of every text a prompt or target is made of: question, options, reasoning."""
        texts = [("question", self.question)]
        texts += [(f"option {letter}", text) for letter, text in self.options.items()]
        return texts + ([("reasoning", self.reasoning)] if self.reasoning else [])


def text_problem(record: VQARecord) -> str | None:
    """What is wrong when a text of `record` is not valid Unicode (a lone surrogate, as a JSON "\\ud800"
    escape or an undecodable byte can give): no tokenizer encodes it, so the batch would fail."""
    for what, text in record.texts():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            return (
                f"invalid text: the {what} holds {shown(error.object[error.start : error.end])}, which is not "
                "valid Unicode (a lone surrogate); fix the text or the file's encoding"
            )
    return None


@dataclass
class SkipCounter:
    """Applies `on_bad_record` (raise | skip) and counts skips by problem for the log."""

    on_bad_record: str = "raise"
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_bad_record not in ("raise", "skip"):
            raise ConfigError(f"data.on_bad_record must be 'raise' or 'skip', got {self.on_bad_record!r}")

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
    # ValueError: also an integer too long for Python to convert; RecursionError: nesting too deep
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        problem = f"malformed JSON: {type(error).__name__}: {shorten(str(error))}"
        counter.handle(BadRecordError(path, FILE_RECORD_ID, problem))
        return None
    if not isinstance(items, list):
        problem = f"malformed JSON: expected a list of items, got {type(items).__name__}"
        counter.handle(BadRecordError(path, FILE_RECORD_ID, problem))
        return None
    return items


def resolve_under_root(root: Path, relative: object) -> Path:
    """The absolute path of `relative` inside `root`, symlinks followed; ValueError if it is absolute,
    climbs out with '..', leaves the root through a symlink, or cannot be a path at all.

    A symlink may point anywhere inside the root; one that points out of it is refused like '..': the
    records and the folder may come from anyone, and the root is what the user chose to expose."""
    text = str(relative).replace("\\", "/")
    if any(unicodedata.category(ch)[0] == "C" for ch in text):  # NUL, line breaks, lone surrogates, ...
        raise ValueError(f"image path holds a control character: {shown(text)} (paths must be plain text)")
    normal = posixpath.normpath(text)
    drive = len(text) > 1 and text[1] == ":"  # "C:/..." is absolute too
    if posixpath.isabs(text) or drive or normal == ".." or normal.startswith("../"):
        raise ValueError(
            f"image path escapes the data root: {shown(text)} (paths must be relative to {root} and stay inside it)"
        )
    root = Path(root).resolve()
    try:
        path = (root / normal).resolve()
    except (OSError, RuntimeError, ValueError) as error:  # RuntimeError: a symlink loop (Python 3.11)
        raise ValueError(
            f"unusable image path: {shown(text)} ({type(error).__name__}: {shorten(str(error))})"
        ) from None
    if not path.is_relative_to(root):
        raise ValueError(
            f"image path escapes the data root through a symlink: {shown(text)} -> {shown(path, 200)} (copy the "
            f"image into {root}, or set data.root to a folder that holds the images)"
        )
    return path


class ImageChecker:
    """Checks each image once: the file exists and, with `verify`, its header reads (cheap). An image is
    a picture (PIL), a DICOM or NIfTI file, or a folder holding DICOM files (one series)."""

    def __init__(self, verify: bool = True):
        self.verify = verify
        self._problems: dict[Path, str | None] = {}

    def problem(self, path: Path) -> str | None:
        """None if the image is usable, else what is wrong with it (cached per path)."""
        if path not in self._problems:
            try:
                self._problems[path] = self._check(path)
            except OSError as error:  # e.g. a name longer than the file system allows, no permission
                self._problems[path] = f"unusable image path: {shown(path, 200)} ({shorten(str(error))})"
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
    """A field as stripped text; None when absent, empty or not text. Numbers become text (some options
    are); true/false, lists and objects are not text."""
    if value is None or isinstance(value, (bool, dict, list)):
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
        raise ValueError(f"answer matches several options: {shown(answer)} is the text of options {matches}")
    if not matches:
        listed = ", ".join(f"{letter}) {shown(text, 40)}" for letter, text in options.items())
        raise ValueError(f"answer is not among options: {shown(answer)} is none of {listed}")
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
