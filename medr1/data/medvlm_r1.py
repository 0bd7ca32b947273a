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
- Test: `test_per_modality` seeded OmniMedVQA questions per test modality from `test_root`, as in the
  paper (300 MRI + 300 CT + 300 X-ray), leaving out questions whose stem and image file name match a
  training question (the evaluation data contains OmniMedVQA items). Without `test_root`, the test set
  is drawn from the remaining items of `root` instead, and a note says so.
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
from medr1.data.omnimedvqa import OmniMedVQA, answer_letter, clean_text, usable_image
from medr1.data.records import (
    FILE_RECORD_ID,
    LETTERS,
    BadRecordError,
    ImageChecker,
    SkipCounter,
    Splits,
    VQARecord,
)

log = logging.getLogger(__name__)

DATA_FILE_NAMES = ("medical_multimodel_evaluation_data.json", "medical_multimodal_evaluation_data.json")
REQUIRED_COLUMNS = ("question", "options", "answer", "image", "subset")
UNKNOWN_QUESTION_TYPE = "unknown"


class MedVLMR1:
    """MedVLM-R1's protocol: train on `train_size` questions of one modality, test on several."""

    def __init__(
        self,
        *,
        root: str | Path,
        test_root: str | Path | None = None,
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
        """Train from `root` (one modality, seeded), test from `test_root` or from `root`'s remaining items."""
        counter = SkipCounter(self.on_bad_record)
        checker = ImageChecker(self.verify_images)
        data_file = self.data_file()
        rows = read_rows(data_file, counter, self.cache_dir)
        by_modality = rows_by_modality(rows)
        build = functools.partial(huatuo_record, data_file=data_file, checker=checker)
        train, used = take_records(
            self.shuffled(by_modality.get(self.modality, [])), self.train_size, build, counter
        )
        if len(train) < self.train_size:
            log.warning(
                "MedVLM-R1: only %d %s training questions in %s", len(train), self.modality, data_file
            )
        if self.test_root is not None:
            test = self.test_from_omnimedvqa(train, checker, counter)
        else:
            log.warning(
                "MedVLM-R1: no data.test_root given, so the test set is drawn from the remaining items of %s, "
                "not from OmniMedVQA as in the paper; set data.test_root=<OmniMedVQA root> for the paper's protocol",
                data_file,
            )
            test = self.test_from_remaining(by_modality, used, train, build, counter)
        counter.report(f"MedVLM-R1 data at {self.root}")
        log.info("MedVLM-R1: %d train (%s), %d test records", len(train), self.modality, len(test))
        return Splits(train=train, test=test, skipped=counter.total)

    def data_file(self) -> Path:
        """The evaluation-data JSON: `root` itself, a known file name in it, or its only JSON file."""
        if self.root.is_file():
            return self.root
        candidates = [self.root / name for name in DATA_FILE_NAMES if (self.root / name).is_file()]
        candidates = candidates or sorted(self.root.glob("*.json"))
        if len(candidates) != 1:
            raise FileNotFoundError(
                f"cannot tell which file in {self.root} is HuatuoGPT-Vision's evaluation data (found "
                f"{[path.name for path in candidates]}): expected {DATA_FILE_NAMES[0]} next to its images/ "
                "folder. Set data.root to that folder or to the JSON file itself."
            )
        return candidates[0]

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
            raise ValueError("missing field: question (absent or empty)")
        options = options_from_list(row.get("options"))
        answer = answer_from_text_or_letter(clean_text(row.get("answer")), options)
        images = tuple(
            str(usable_image(data_file.parent, path, checker)) for path in image_list(row.get("image"))
        )
        modality = canonical_modality(clean_text(row.get("subset")) or "")
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
    )
    record.check(data_file)
    return record


def options_from_list(values: object) -> dict[str, str]:
    if not isinstance(values, list) or not 2 <= len(values) <= len(LETTERS):
        raise ValueError(f"malformed options: expected a list of 2 to {len(LETTERS)} texts, got {values!r}")
    texts = [clean_text(value) for value in values]
    if None in texts:
        raise ValueError(f"empty option: options {values!r}")
    return dict(zip(LETTERS, texts, strict=False))


def answer_from_text_or_letter(answer: str | None, options: dict[str, str]) -> str:
    """The letter of the option whose text is `answer`, or `answer` itself when it is a bare letter."""
    if answer is None:
        raise ValueError("missing field: answer (absent or empty)")
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
        raise ValueError(f"missing field: image (expected a path or a list of paths, got {value!r})")
    return paths


def take_records(candidates: Iterable, count: int, build, counter: SkipCounter, exclude: set | None = None):
    """The first `count` candidates that `build` turns into records (bad ones go to `counter`).

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
    return records, used


def overlap_key(record: VQARecord) -> tuple[str, tuple[str, ...]]:
    """What makes two questions the same across data sets: stem and image file names."""
    return record.question.casefold(), tuple(Path(image).name for image in record.images)


def _canonical(name: str, setting: str) -> str:
    try:
        return canonical_modality(name)
    except KeyError as error:
        raise ValueError(f"{setting}: {error.args[0]}") from None
