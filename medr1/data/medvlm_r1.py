"""MedVLM-R1's data: MRI training questions from HuatuoGPT-Vision's evaluation data, OmniMedVQA test.

Training data is `Medical_Multimodal_Evaluation_Data` (HuatuoGPT-Vision), read from a LOCAL folder with
`datasets.load_dataset("json", data_files=...)`, never from the hub. `root` is that folder (or the JSON
file itself); its file is `medical_multimodel_evaluation_data.json` (sic, "multimodel"), image paths are
relative to the folder.

Field names, as checked in MedVLM-R1's code (JZPeterPan/MedVLM-R1: src/open-r1-multimodal/src/open_r1/
grpo.py, branch DATASET=Huatuo, and its released MRI_CT_XRAY_300each_dataset.json):
    question  the stem (str)
    options   the option texts (list of str), lettered A, B, ... in order
    answer    the TEXT of the correct option (MedVLM-R1 takes options.index(answer)); here a bare
              letter is also accepted when it matches no option text
    image     list of image paths relative to the folder, e.g. ["images/brain002206.png"]
              (MedVLM-R1 uses image[0]); a plain string is accepted too
    dataset   the source benchmark, e.g. "OmniMedVQA", "PMC-VQA_test"
    subset    the raw modality, OmniMedVQA spelling: "MR (Mag-netic Resonance Imaging)",
              "CT(Computed Tomography)", "X-Ray"; other benchmarks carry other values or "".
Items whose `subset` is no known modality belong to other benchmarks and are left out (counted in the
log, not as bad records). The data has no question type, so records carry question_type "unknown".

Protocol and departures:
- Train: items of `modality`, shuffled with `seed` (the permutation of datasets' Dataset.shuffle(seed)),
  first `train_size`. MedVLM-R1's script takes the first 500 MRI items in file order and then shuffles;
  its paper reports 600; here the shuffle comes first, so any train_size draws from all MRI items.
- Test, with `test_file` (the paper's protocol): MedVLM-R1's released MRI_CT_XRAY_300each_dataset.json,
  read as is (its eval script src/eval/test_qwen2vl_med.py slices it [:300] MRI, [300:600] CT, [600:]
  X-ray; here each item's `subset` gives its modality, so any block sizes work). Items are Huatuo rows
  plus `problem` and `solution`:
      image     list of paths relative to the Huatuo folder (`root`), e.g. ["images/brain002206.png"]
      problem   question + "\n" + "\n".join("A) text", ...) (the prompt MedVLM-R1 shows; not read here)
      solution  the bare correct letter, e.g. "D"; it must be one of the options' letters
      question, options, answer (the correct option's text; when present it must match `solution`),
      dataset ("OmniMedVQA"), subset (the raw modality).
  Record ids are "<file stem>:<index>", question_type "unknown". Items of modalities outside
  `test_modalities` are left out (logged); `test_per_modality` does not apply (the file is the set).
  Training questions whose stem and image file name match a test item are left out of training (the
  file's items are Huatuo items, so the MRI pool contains them), and the next ones drawn instead.
  A relative `test_file` is tried as given, then under `root`.
- Test, without `test_file`: `test_per_modality` seeded OmniMedVQA questions per test modality from
  `test_root` (300 MRI + 300 CT + 300 X-ray), leaving out questions whose stem and image file name match
  a training question (the evaluation data contains OmniMedVQA items). Not the released questions.
  Without `test_root` either, the test set is drawn from the remaining items of `root`, and a note says so.
"""

from __future__ import annotations

import functools
import logging
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from medr1.data.names import canonical_modality
from medr1.data.omnimedvqa import OmniMedVQA
from medr1.data.records import (
    FILE_RECORD_ID,
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
from medr1.errors import ConfigError, DataNotFoundError, shown

log = logging.getLogger(__name__)

DATA_FILE_NAMES = ("medical_multimodel_evaluation_data.json", "medical_multimodal_evaluation_data.json")
REQUIRED_COLUMNS = ("question", "options", "answer", "image", "subset")
TEST_FILE_FIELDS = ("image", "question", "options", "solution", "subset")  # required in a test-file item
TEST_FILE_LISTS = ("image", "options")  # of those, the ones that may be lists (the others are text)
UNKNOWN_QUESTION_TYPE = "unknown"


class MedVLMR1:
    """MedVLM-R1's protocol: train on `train_size` questions of one modality, test on several."""

    def __init__(
        self,
        *,
        root: str | Path,
        test_root: str | Path | None = None,
        test_file: str | Path | None = None,
        train_size: int = 600,
        modality: str = "mri",
        test_modalities: Sequence[str] = ("mri", "ct", "xray"),
        test_per_modality: int = 300,
        seed: int = 42,
        on_bad_record: str = "raise",
        verify_images: bool = True,
        cache_dir: str | Path | None = None,  # datasets' Arrow cache; None = HF_DATASETS_CACHE
    ):
        self.root = Path(root).expanduser().resolve()
        self.test_root = None if test_root is None else Path(test_root).expanduser().resolve()
        self.test_file = None if test_file is None else Path(test_file).expanduser()
        if self.test_file is not None and self.test_root is not None:
            raise ConfigError(
                "data.test_file and data.test_root both set: the test set comes either from MedVLM-R1's "
                f"released file ({test_file}) or from a seeded OmniMedVQA draw ({test_root}); set the other to null"
            )
        self.train_size = train_size
        self.modality = _canonical(modality, "data.modality")
        self.test_modalities = tuple(
            _canonical(name, "data.test_modalities")
            for name in ((test_modalities,) if isinstance(test_modalities, str) else test_modalities)
        )
        self.test_per_modality = test_per_modality
        self.seed = seed
        self.on_bad_record = on_bad_record
        self.verify_images = verify_images
        self.cache_dir = cache_dir

    def load(self) -> Splits:
        """The test file's items and training without them; or training first, then a test draw."""
        counter = SkipCounter(self.on_bad_record)
        checker = ImageChecker(self.verify_images)
        data_file = self.data_file()
        rows = read_rows(data_file, counter, self.cache_dir)
        by_modality = rows_by_modality(rows)
        build = functools.partial(huatuo_record, data_file=data_file, checker=checker)
        released = self.test_from_file(data_file.parent, checker, counter) if self.test_file else None
        train, used = self.train_records(by_modality.get(self.modality, []), build, counter, released)
        if len(train) < self.train_size:
            log.warning(
                "MedVLM-R1: only %d %s training questions in %s", len(train), self.modality, data_file
            )
        if released is not None:
            test = released
        elif self.test_root is not None:
            test = self.test_from_omnimedvqa(train, checker, counter)
        else:
            log.warning(
                "MedVLM-R1: no data.test_file or data.test_root given, so the test set is drawn from the remaining "
                "items of %s, not the paper's; set data.test_file=<MRI_CT_XRAY_300each_dataset.json> for its test set",
                data_file,
            )
            test = self.test_from_remaining(by_modality, used, train, build, counter)
        counter.report(f"MedVLM-R1 data at {self.root}")
        log.info("MedVLM-R1: %d train (%s), %d test records", len(train), self.modality, len(test))
        return Splits(train=train, test=test, skipped=counter.total)

    def train_records(
        self, rows: list[dict], build, counter: SkipCounter, test: list[VQARecord] | None
    ) -> tuple[list[VQARecord], set[int]]:
        """The first `train_size` of the seeded shuffle of `rows`, passing over questions of `test`."""
        tested = None if test is None else {overlap_key(record) for record in test}
        passed_over: list[VQARecord] = []
        train, used = take_records(self.shuffled(rows), self.train_size, build, counter, tested, passed_over)
        if passed_over:
            log.info("MedVLM-R1: left %d training questions out that are in the test file", len(passed_over))
        return train, used

    def data_file(self) -> Path:
        """The evaluation-data JSON: `root` itself, a known file name in it, or its only JSON file."""
        if self.root.is_file():
            return self.root
        candidates = [self.root / name for name in DATA_FILE_NAMES if (self.root / name).is_file()]
        candidates = candidates or sorted(self.root.glob("*.json"))
        if len(candidates) != 1:
            raise DataNotFoundError(
                f"cannot tell which file in {self.root} is HuatuoGPT-Vision's evaluation data (found "
                f"{[path.name for path in candidates]}): expected {DATA_FILE_NAMES[0]} next to its images/ "
                "folder. Set data.root to that folder or to the JSON file itself."
            )
        return candidates[0]

    def resolved_test_file(self) -> Path:
        """`test_file` as given if it exists, else under `root`; FileNotFoundError names both tries."""
        folder = self.root.parent if self.root.is_file() else self.root
        tries = (
            [self.test_file] if self.test_file.is_absolute() else [self.test_file, folder / self.test_file]
        )
        for path in tries:
            if path.is_file():
                return path.resolve()
        raise DataNotFoundError(
            f"MedVLM-R1 test file not found: tried {', '.join(str(path) for path in tries)}. Set data.test_file "
            "to MedVLM-R1's released MRI_CT_XRAY_300each_dataset.json (absolute, or relative to data.root), "
            "or to null for a seeded test draw."
        )

    def test_from_file(self, folder: Path, checker: ImageChecker, counter: SkipCounter) -> list[VQARecord]:
        """The released test file's items of the test modalities, in file order; images under `folder`."""
        path = self.resolved_test_file()
        records: list[VQARecord] = []
        for index, item in enumerate(read_json_list(path, counter) or []):
            try:
                records.append(test_file_record(item, index, path, folder, checker))
            except BadRecordError as error:
                counter.handle(error)
        kept = [record for record in records if record.modality in self.test_modalities]
        if len(kept) < len(records):
            log.info(
                "MedVLM-R1: left out %d items of %s whose modality is not in data.test_modalities %s",
                len(records) - len(kept),
                path,
                list(self.test_modalities),
            )
        counts = Counter(record.modality for record in kept)
        log.info("MedVLM-R1: test set from %s: %s", path, dict(counts))
        return kept

    def shuffled(self, items: list) -> list:
        """`items` in the order of datasets' Dataset.shuffle(seed=self.seed)."""
        return [items[i] for i in np.random.default_rng(self.seed).permutation(len(items))]

    def test_from_omnimedvqa(
        self, train: list[VQARecord], checker: ImageChecker, counter: SkipCounter
    ) -> list[VQARecord]:
        """`test_per_modality` seeded OmniMedVQA questions per test modality, none seen in training."""
        # Existence is checked while reading; readability only for the questions drawn (few of ~89k).
        reader = OmniMedVQA(root=self.test_root, on_bad_record=self.on_bad_record, verify_images=False)
        seen = {overlap_key(record) for record in train}
        pool: dict[str, list[VQARecord]] = {name: [] for name in self.test_modalities}
        for record in reader.read(counter):
            if record.modality in pool and overlap_key(record) not in seen:
                pool[record.modality].append(record)

        def checked(record: VQARecord) -> VQARecord:
            for image in record.images:
                problem = checker.problem(Path(image))
                if problem is not None:
                    raise BadRecordError(self.test_root, record.id, problem)
            return record

        test: list[VQARecord] = []
        for name in self.test_modalities:
            drawn, _ = take_records(
                self._test_order(pool[name], name), self.test_per_modality, checked, counter
            )
            test += drawn
        return test

    def test_from_remaining(
        self,
        by_modality: dict[str, list[dict]],
        used: set[int],
        train: list[VQARecord],
        build,
        counter: SkipCounter,
    ) -> list[VQARecord]:
        """Up to `test_per_modality` seeded items per test modality of `root` that training did not use."""
        seen = {overlap_key(record) for record in train}
        test: list[VQARecord] = []
        for name in self.test_modalities:
            rows = [row for row in by_modality.get(name, []) if row["_index"] not in used]
            drawn, _ = take_records(
                self._test_order(rows, name), self.test_per_modality, build, counter, seen
            )
            test += drawn
        return test

    def _test_order(self, items: list, modality: str) -> list:
        # A stream per modality, so adding a test modality does not change the others' draws.
        order = np.random.default_rng([self.seed, zlib.crc32(modality.encode())]).permutation(len(items))
        return [items[i] for i in order]


# --- reading and building records -----------------------------------------------------------------


def read_rows(data_file: Path, counter: SkipCounter, cache_dir: str | Path | None = None) -> list[dict]:
    """The rows of the JSON file via the datasets library, each with its position as `_index`."""
    from datasets import load_dataset  # slow import; only this reader needs it

    try:
        dataset = load_dataset(
            "json", data_files=str(data_file), split="train", cache_dir=cache_dir and str(cache_dir)
        )
    except Exception as error:  # datasets wraps JSON and schema errors in its own exception types
        cause = f"{error}; {error.__cause__}" if error.__cause__ else str(error)
        counter.handle(BadRecordError(data_file, FILE_RECORD_ID, f"malformed JSON: {cause}"))
        return []
    missing = [name for name in REQUIRED_COLUMNS if name not in dataset.column_names]
    if missing:
        counter.handle(
            BadRecordError(
                data_file, FILE_RECORD_ID, f"missing field: no {missing} columns (has {dataset.column_names})"
            )
        )
        return []
    return [dict(row, _index=index) for index, row in enumerate(dataset)]


def rows_by_modality(rows: Iterable[dict]) -> dict[str, list[dict]]:
    """Rows grouped by the canonical modality of `subset`; rows of other benchmarks are left out."""
    groups: dict[str, list[dict]] = {}
    other = Counter()
    for row in rows:
        try:
            groups.setdefault(canonical_modality(clean_text(row.get("subset")) or ""), []).append(row)
        except KeyError:
            other[clean_text(row.get("subset")) or "<empty>"] += 1
    if other:
        log.info(
            "MedVLM-R1: left out %d items of no known modality (subsets %s)",
            sum(other.values()),
            dict(other.most_common(5)),
        )
    return groups


def huatuo_record(row: dict, data_file: Path, checker: ImageChecker) -> VQARecord:
    """One evaluation-data row as a record; BadRecordError names what is wrong."""
    record_id = f"{data_file.stem}:{row['_index']}"
    try:
        question = clean_text(row.get("question"))
        if question is None:
            raise ValueError("missing field: question (absent, empty or not text)")
        options = options_from_list(row.get("options"))
        answer = answer_from_text_or_letter(clean_text(row.get("answer")), options)
        images = tuple(
            str(usable_image(data_file.parent, path, checker)) for path in image_list(row.get("image"))
        )
        modality = known_name(
            canonical_modality, clean_text(row.get("subset")) or "", "unknown modality in subset"
        )
    except ValueError as error:
        raise BadRecordError(data_file, record_id, str(error)) from None
    record = VQARecord(
        id=record_id,
        images=images,
        question=question,
        options=options,
        answer=answer,
        modality=modality,
        question_type=UNKNOWN_QUESTION_TYPE,
        source=clean_text(row.get("dataset")) or "Medical_Multimodal_Evaluation_Data",
        file=str(data_file),
    )
    record.check(data_file)
    return record


def test_file_record(item: object, index: int, file: Path, folder: Path, checker: ImageChecker) -> VQARecord:
    """One item of the released test file as a record; BadRecordError names what is wrong."""
    record_id = f"{file.stem}:{index}"
    try:
        if not isinstance(item, dict):
            raise ValueError(f"malformed item: expected an object, got {type(item).__name__}")
        missing = [
            name
            for name in TEST_FILE_FIELDS
            if (is_empty(item.get(name)) if name in TEST_FILE_LISTS else clean_text(item.get(name)) is None)
        ]
        if missing:
            raise ValueError(f"missing field: {', '.join(missing)} (absent, empty or not text)")
        options = options_from_list(item["options"])
        answer = solution_letter(clean_text(item["solution"]), options)
        check_answer_text(clean_text(item.get("answer")), answer, options)
        images = tuple(str(usable_image(folder, path, checker)) for path in image_list(item["image"]))
        modality = known_name(canonical_modality, clean_text(item["subset"]), "unknown modality in subset")
    except ValueError as error:
        raise BadRecordError(file, record_id, str(error)) from None
    record = VQARecord(
        id=record_id,
        images=images,
        question=clean_text(item["question"]),
        options=options,
        answer=answer,
        modality=modality,
        question_type=UNKNOWN_QUESTION_TYPE,
        source=clean_text(item.get("dataset")) or "OmniMedVQA",
        file=str(file),
    )
    record.check(file)
    return record


def is_empty(value: object) -> bool:
    """True for an absent field, blank text or an empty list."""
    return clean_text(value) is None and not (isinstance(value, list) and value)


def solution_letter(solution: str, options: dict[str, str]) -> str:
    """The bare letter of `solution` (e.g. "D"), which must be one of the options' letters."""
    if not re.fullmatch(r"[A-Za-z]", solution):
        raise ValueError(f"malformed solution: expected one letter like 'C', got {shown(solution)}")
    letter = solution.upper()
    if letter not in options:
        raise ValueError(f"answer is not among options: solution {letter!r}, options {list(options)}")
    return letter


def check_answer_text(answer: str | None, letter: str, options: dict[str, str]) -> None:
    """When the item gives the answer text too, it must be the text of option `letter`."""
    if answer is not None and answer.strip() != options[letter].strip():
        raise ValueError(
            f"answer does not match solution: answer {shown(answer)}, but option {letter} is {shown(options[letter])}"
        )


def options_from_list(values: object) -> dict[str, str]:
    if not isinstance(values, list) or not 2 <= len(values) <= len(LETTERS):
        raise ValueError(
            f"malformed options: expected a list of 2 to {len(LETTERS)} texts, got {shown(values)}"
        )
    texts = [clean_text(value) for value in values]
    if None in texts:
        raise ValueError(f"empty option: options {shown(values)}")
    return dict(zip(LETTERS, texts, strict=False))


def answer_from_text_or_letter(answer: str | None, options: dict[str, str]) -> str:
    """The letter of the option whose text is `answer`, or `answer` itself when it is a bare letter."""
    if answer is None:
        raise ValueError("missing field: answer (absent, empty or not text)")
    try:
        return answer_letter(answer, options)
    except ValueError:
        if re.fullmatch(r"[A-J]", answer) and answer in options:
            return answer
        raise


def image_list(value: object) -> list[str]:
    paths = [value] if isinstance(value, str) else value
    if (
        not isinstance(paths, list)
        or not paths
        or not all(isinstance(path, str) and path.strip() for path in paths)
    ):
        raise ValueError(f"missing field: image (expected a path or a list of paths, got {shown(value)})")
    return paths


def take_records(
    candidates: Iterable,
    count: int,
    build,
    counter: SkipCounter,
    exclude: set | None = None,
    excluded: list | None = None,
):
    """The first `count` candidates that `build` turns into records (bad ones go to `counter`).

    Records whose overlap_key is in `exclude` are passed over (and appended to `excluded`, if given).
    Returns (records, the `_index` of every candidate consumed, good or bad).
    """
    records: list[VQARecord] = []
    used: set[int] = set()
    for candidate in tqdm(candidates, desc="MedVLM-R1 records", unit="item", disable=None, leave=False):
        if len(records) >= count:
            break
        if isinstance(candidate, dict):
            used.add(candidate["_index"])
        try:
            record = build(candidate)
        except BadRecordError as error:
            counter.handle(error)
            continue
        if exclude is None or overlap_key(record) not in exclude:
            records.append(record)
        elif excluded is not None:
            excluded.append(record)
    return records, used


def overlap_key(record: VQARecord) -> tuple[str, tuple[str, ...]]:
    """What makes two questions the same across data sets: stem and image file names."""
    return record.question.casefold(), tuple(Path(image).name for image in record.images)


def _canonical(name: str, setting: str) -> str:
    try:
        return canonical_modality(name)
    except KeyError as error:
        raise ConfigError(f"{setting}: {error.args[0]}") from None
