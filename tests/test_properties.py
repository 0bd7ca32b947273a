"""Hostile input, property-tested: readers, the prompt builder, rewards and evaluation parsers.

Readers get arbitrary JSON values in every field (wrong types, nulls, huge and control-character
strings, duplicate ids, 0-26 options, paths with '..', absolute paths, symlinks out of the root, a
symlink loop). The properties:

- a reader never raises anything but BadRecordError; under on_bad_record=skip every item is either a
  record or counted as skipped; under raise it raises exactly when skip would skip something, with a
  message that is one printable line naming the file, the record and the fix (data.on_bad_record);
- every record a reader returns keeps the VQARecord contract (letters A.. in order, 2-10 options, the
  answer among them, known modality, images that exist inside the data root) and ids are unique;
- rewards are finite and in their documented range, and no accuracy reward or evaluation parser
  credits a completion that does not NAME the correct option. What "names" means differs per reader
  (medr1.answers' docstring); for the correct letter L:
    robust (parse_choice, `robust_accuracy_reward`, the `robust` parser): the text read (the first
      answer block, else the whole completion for the parser) is L's option text (case, spacing and a
      final full stop ignored), or writes L as a letter standing alone (not inside a word); and a text
      that is exactly another option's letter, or only a list of several letters, is never read as L;
    medr1 (Med-R1's eval regex, `medr1_accuracy_reward`, `strict_accuracy_reward`): the first answer
      block that holds one word holds exactly L (strict: the first answer block is exactly L);
    medvlm_r1 (MedVLM-R1's eval regex and accuracy reward): the answer block holds exactly one
      upper-case letter, L (the reward: exactly one character of A-J after upper-casing, L).
Settings are fixed (derandomize) so CI sees the same examples every run; the file runs in seconds.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from medr1 import answers
from medr1.data import medvlm_r1  # (not `from ... import test_file_record`: pytest would collect it)
from medr1.data.medr1_splits import MedR1Splits
from medr1.data.names import MODALITIES, QUESTION_TYPES
from medr1.data.omnimedvqa import OmniMedVQA
from medr1.data.prompts import NAMED_TEMPLATES, PromptFormat, chat_messages, prompt_text
from medr1.data.records import LETTERS, BadRecordError, ImageChecker, VQARecord
from medr1.errors import shown
from medr1.rl import rewards
from tests.helpers.config import compose_config

PROPERTIES = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same examples every run: CI is reproducible
    database=None,  # and nothing written to .hypothesis/
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)
FEW = settings(PROPERTIES, max_examples=25)

# --- hostile values --------------------------------------------------------------------------------

NASTY_CHARACTERS = list("\x00\n\r\t\x1b\u2028\u200b\ud800\udfff{}'\"\\")  # breaks, NUL, surrogates, quotes
HUGE = ["word " * 6000, "x" * 50_000, "\n" * 1000 + "A"]
characters = st.one_of(st.characters(), st.sampled_from(NASTY_CHARACTERS))
texts = st.one_of(st.text(characters, max_size=12), st.sampled_from(HUGE))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


def hostile(draw, values: dict[str, st.SearchStrategy], traps: dict[str, st.SearchStrategy]) -> dict:
    """A raw item: a few fields (0-3) hostile (a trap for that field, anything JSON can hold, or left
    out), the others valid, so that most items are close to valid and each trap is met on its own."""
    spoiled = draw(st.sets(st.sampled_from(sorted(values)), max_size=3))
    item = {}
    for key, valid in values.items():
        if key in spoiled:
            value = draw(st.one_of(traps.get(key, json_values), json_values, st.just(None)))
        else:
            value = draw(valid)
        if value is not None:
            item[key] = value
    return item


# --- a data root with images and traps --------------------------------------------------------------

GOOD_IMAGES = ["Images/set/a.png", "Images/set/b.png", "Images/other/c.jpg"]
TRAP_PATHS = [
    "../outside.png",  # climbs out
    "Images/../../outside.png",
    "/etc/passwd",  # absolute
    "C:/Windows/x.png",
    "Images/link_out.png",  # a symlink to a picture outside the root
    "Images/loop.png",  # a symlink loop
    "Images/set",  # a folder without DICOM files
    "Images/not_an_image.png",  # text in a .png
    "Images/missing.png",
    "Images/" + "n" * 300 + ".png",  # a name longer than the file system allows
    "Images/\x00.png",
    "Images/\ud800.png",
    "",
    " ",
]
good_images = st.sampled_from(GOOD_IMAGES)
trap_images = st.one_of(st.sampled_from(TRAP_PATHS), texts)


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory) -> Path:
    """A data root: good pictures, and the traps TRAP_PATHS points at."""
    base = tmp_path_factory.mktemp("hostile")
    root = base / "root"
    for relative in GOOD_IMAGES:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (40, 80, 120)).save(root / relative)
    Image.new("RGB", (8, 8)).save(base / "outside.png")
    os.symlink(base / "outside.png", root / "Images" / "link_out.png")
    os.symlink(root / "Images" / "loop.png", root / "Images" / "loop.png")
    (root / "Images" / "not_an_image.png").write_text("not a picture")
    return root


def assert_one_line_naming(error: BadRecordError, *files: Path) -> None:
    message = str(error)
    assert message.isprintable(), message[:300]  # one line: no line breaks, no control characters
    assert len(message) < 2500, len(message)
    assert any(message.startswith(f"{file}: ") for file in files), message[:300]
    assert error.record_id and f": record {shown(error.record_id)}: " in message  # the record
    assert "data.on_bad_record=skip" in message  # the fix


def assert_valid(record: VQARecord, root: Path) -> None:
    letters = list(record.options)
    assert 2 <= len(letters) <= len(LETTERS) and letters == list(LETTERS[: len(letters)])
    assert record.answer in record.options
    assert all(isinstance(text, str) and text.strip() for text in record.options.values())
    assert record.question.strip() and record.id
    for _, text in record.texts():  # every text reaches a tokenizer, which takes valid Unicode only
        text.encode("utf-8")
    assert record.modality in MODALITIES or record.modality == "unknown"
    assert record.question_type in QUESTION_TYPES or record.question_type == "unknown"
    for image in record.images:
        path = Path(image)
        assert path.is_absolute() and path.exists()
        assert path.resolve().is_relative_to(root.resolve())  # no '..', absolute path or symlink got out


def read_both_ways(reader_class, files: list[Path], root: Path, expected: int | None, **kwargs):
    """Read with skip, then with raise; the properties that tie the two together."""
    try:
        skipped_run = reader_class(root=root, on_bad_record="skip", **kwargs).load()
    except BadRecordError as error:  # only a missing data set may still raise under skip: not here
        raise AssertionError(f"skip mode raised: {error}") from None
    records = skipped_run.train + skipped_run.test
    for record in records:
        assert_valid(record, root)
    assert len({record.id for record in records}) == len(records), "record ids are not unique"
    if expected is not None:
        assert len(records) + skipped_run.skipped == expected
    try:
        raised_run = reader_class(root=root, on_bad_record="raise", **kwargs).load()
    except BadRecordError as error:
        assert skipped_run.skipped > 0
        assert_one_line_naming(error, *files)
    else:
        assert skipped_run.skipped == 0
        assert raised_run.train + raised_run.test == records
    return skipped_run


# --- OmniMedVQA-format items ---------------------------------------------------------------------


@st.composite
def omnimedvqa_items(draw):
    """One raw item, option_A.. of 0-26 entries (some duplicates, letters, numbers)."""
    count = draw(st.integers(0, 26) | st.integers(2, 5))
    texts_ = draw(
        st.lists(
            st.sampled_from(["Normal", "Tumour", "Cyst", "B", "normal.", "C) x", "42"]),
            min_size=count,
            max_size=count,
        )
    )
    options = {
        f"option_{letter}": st.just(text)
        for letter, text in zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ", texts_, strict=False)
    }
    return hostile(
        draw,
        {
            "dataset": st.sampled_from(["Chest CT", "set"]),
            "question_id": st.sampled_from(["q1", "q1", "q1#2", "q2", "7"]) | st.integers(0, 9),  # duplicates
            "question_type": st.sampled_from(["Disease Diagnosis", "Lesion Grading"]),
            "question": st.sampled_from(["What is shown?", "Is it {Question}?"]) | texts.filter(str.strip),
            "gt_answer": st.sampled_from(texts_ or ["Normal"]),
            "image_path": good_images,
            "modality_type": st.sampled_from(["CT(Computed Tomography)", "X-Ray"]),
            **options,
        },
        {"image_path": trap_images, "modality_type": st.just("MRI?"), "question_type": st.just("Nope")},
    )


@PROPERTIES
@given(items=st.lists(omnimedvqa_items(), max_size=6))
def test_omnimedvqa_reader_never_crashes_and_accounts_for_every_item(hostile_root, items):
    folder = hostile_root / "QA_information" / "Open-access"
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / "hostile.json"
    file.write_text(json.dumps(items), encoding="utf-8")
    run = read_both_ways(OmniMedVQA, [file], hostile_root, expected=len(items))
    for record in run.train + run.test:  # each record is one item, all its options kept, its own answer
        assert any(
            list(record.options.values()) == item_options(item)
            and record.options[record.answer].casefold() == str(item.get("gt_answer")).strip().casefold()
            for item in items
        ), record


def item_options(item: dict) -> list:
    """The option texts of a raw item, option_A to option_Z, stripped."""
    keys = sorted(key for key in item if re.fullmatch(r"option_[A-Z]", key))
    return [str(item[key]).strip() for key in keys if str(item[key]).strip()]


def valid_item(number: int, **changes) -> dict:
    item = {
        "dataset": "set",
        "question_id": f"q{number}",
        "question_type": "Disease Diagnosis",
        "question": "What is shown?",
        "gt_answer": "Tumour",
        "image_path": GOOD_IMAGES[number % len(GOOD_IMAGES)],
        "option_A": "Normal",
        "option_B": "Tumour",
        "modality_type": "CT(Computed Tomography)",
    }
    return {key: value for key, value in (item | changes).items() if value is not None}


def write_items(root: Path, items: list) -> Path:
    file = root / "QA_information" / "Open-access" / "hostile.json"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(items), encoding="utf-8")
    return file


@PROPERTIES
@given(paths=st.lists(st.sampled_from(GOOD_IMAGES + TRAP_PATHS) | texts, min_size=1, max_size=6))
def test_an_image_path_is_used_only_when_it_is_a_picture_inside_the_root(hostile_root, paths):
    file = write_items(hostile_root, [valid_item(i, image_path=path) for i, path in enumerate(paths)])
    run = read_both_ways(OmniMedVQA, [file], hostile_root, expected=len(paths))
    kept = sorted(
        Path(image).relative_to(hostile_root) for record in run.train + run.test for image in record.images
    )
    assert kept == sorted(Path(path) for path in paths if path in GOOD_IMAGES)


@PROPERTIES
@given(
    ids=st.lists(
        st.sampled_from(["q", "q#2", "q#3", "q#2#2", 7, "7", None, True, ""]), min_size=1, max_size=7
    )
)
def test_repeated_ids_become_unique_and_keep_their_stem(hostile_root, ids):
    items = [valid_item(i, question_id=question_id) for i, question_id in enumerate(ids)]
    file = write_items(hostile_root, items)
    run = read_both_ways(OmniMedVQA, [file], hostile_root, expected=len(items))
    assert run.skipped == 0
    given_ids = {str(question_id) for question_id in ids if question_id not in (None, True, "")}
    for record in run.train + run.test:  # an id is the item's own, or its own with #n added
        assert record.id.split("#")[0] in {i.split("#")[0] for i in given_ids} or record.id.startswith("set:")


REQUIRED = ["question", "question_type", "gt_answer", "image_path", "option_A", "option_B", "modality_type"]


@PROPERTIES
@given(
    spoiled=st.lists(
        st.tuples(
            st.sampled_from(REQUIRED),
            st.sampled_from([None, True, False, [], ["x"], {}, {"a": 1}, "", "  ", "x\ud800"]),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_a_required_field_of_the_wrong_type_empty_or_not_unicode_is_a_bad_record(hostile_root, spoiled):
    items = [valid_item(i, **{field: value}) for i, (field, value) in enumerate(spoiled)]
    run = read_both_ways(OmniMedVQA, [write_items(hostile_root, items)], hostile_root, expected=len(items))
    assert run.skipped == len(items)


FILE_CONTENTS = [
    b"",
    b"{",
    b'{"a": 1}',
    b"null",
    b"3",
    b"\xff\xfe\x00garbage",
    b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than the JSON parser recurses
    b'[{"question_id": ' + b"1" * 5000 + b"}]",  # an integer longer than Python converts
    b'[{"question_id": 1e999}]',
    b"[1, 2, 3]",
    b"[NaN, Infinity]",
]


@pytest.mark.parametrize("content", FILE_CONTENTS, ids=range(len(FILE_CONTENTS)))
def test_omnimedvqa_reader_on_a_malformed_file(tmp_path, content):
    folder = tmp_path / "QA_information" / "Open-access"
    folder.mkdir(parents=True)
    (folder / "broken.json").write_bytes(content)
    read_both_ways(OmniMedVQA, [folder / "broken.json"], tmp_path, expected=None)


# --- Med-R1's split files ------------------------------------------------------------------------


@st.composite
def problems(draw):
    """A Med-R1 `problem`: a stem and 0-26 options "A)text, B)text", or anything."""
    stem = draw(st.sampled_from(["What is shown?", "Which A) grade?", ""]) | texts)
    count = draw(st.integers(0, 26))
    body = ", ".join(
        f"{letter}){draw(st.sampled_from(['one', 'two, three', '', 'x']))}"
        for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:count]
    )
    return f"{stem} {body}"


@st.composite
def split_items(draw):
    return hostile(
        draw,
        {
            "image": good_images,
            "problem": problems(),
            "solution": st.sampled_from(
                ["<answer> A </answer>", "<answer>B</answer>", "<answer> K </answer>", "B"]
            ),
        },
        {"image": trap_images},
    )


@PROPERTIES
@given(counts=st.lists(st.integers(0, 26), min_size=1, max_size=4), answer=st.sampled_from("ABK"))
def test_a_split_problem_keeps_every_option_or_is_a_bad_record(hostile_root, counts, answer):
    problems_ = [
        "Which finding? "
        + ", ".join(f"{letter})finding {letter.lower()}" for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:count])
        for count in counts
    ]
    items = [
        {"image": GOOD_IMAGES[0], "problem": problem, "solution": f"<answer> {answer} </answer>"}
        for problem in problems_
    ]
    files = []
    for part, part_items in (("train", items), ("test", [])):
        files.append(hostile_root / "Splits" / "modality" / part / f"CT(Computed Tomography)_{part}.json")
        files[-1].parent.mkdir(parents=True, exist_ok=True)
        files[-1].write_text(json.dumps(part_items), encoding="utf-8")
    run = read_both_ways(MedR1Splits, files, hostile_root, expected=len(items))
    usable = [count for count in counts if 2 <= count <= len(LETTERS) and "ABCDEFGHIJK".index(answer) < count]
    assert sorted(len(record.options) for record in run.train + run.test) == sorted(usable)
    for record in run.train + run.test:
        assert all(text == f"finding {letter.lower()}" for letter, text in record.options.items())


@PROPERTIES
@given(train=st.lists(split_items(), max_size=4), test=st.lists(split_items(), max_size=4))
def test_medr1_splits_reader_never_crashes_and_accounts_for_every_item(hostile_root, train, test):
    files = []
    for part, items in (("train", train), ("test", test)):
        files.append(hostile_root / "Splits" / "modality" / part / f"CT(Computed Tomography)_{part}.json")
        files[-1].parent.mkdir(parents=True, exist_ok=True)
        files[-1].write_text(json.dumps(items), encoding="utf-8")
    run = read_both_ways(MedR1Splits, files, hostile_root, expected=len(train) + len(test))
    for record in run.train + run.test:
        assert record.modality == "ct"


# --- MedVLM-R1 / HuatuoGPT-Vision rows -------------------------------------------------------------


@st.composite
def huatuo_rows(draw):
    return hostile(
        draw,
        {
            "question": st.sampled_from(["Which organ?", "Is {Question} shown?"]) | texts.filter(str.strip),
            "options": st.lists(st.sampled_from(["Brain", "Liver", "B", "brain"]), max_size=26),
            "answer": st.sampled_from(["Brain", "Liver", "B", "Z", "brain"]),
            "image": good_images | st.lists(good_images, min_size=1, max_size=3),
            "subset": st.sampled_from(["MR (Mag-netic Resonance Imaging)", "X-Ray", "PMC"]),
            "dataset": st.just("OmniMedVQA"),
            "solution": st.sampled_from(["A", "B", "K", "ab"]),
        },
        {"image": trap_images | st.lists(trap_images, max_size=3)},
    )


@PROPERTIES
@given(rows=st.lists(huatuo_rows(), max_size=5))
def test_medvlm_r1_rows_become_valid_records_or_one_line_errors(hostile_root, rows):
    data_file = hostile_root / "medical_multimodel_evaluation_data.json"
    checker = ImageChecker()
    medvlm_r1.rows_by_modality([dict(row) for row in rows])  # never raises, whatever `subset` holds
    for index, row in enumerate(rows):
        for build, arguments in (
            (medvlm_r1.huatuo_record, (dict(row, _index=index), data_file, checker)),
            (medvlm_r1.test_file_record, (row, index, data_file, hostile_root, checker)),
        ):
            try:
                record = build(*arguments)
            except BadRecordError as error:
                assert_one_line_naming(error, data_file)
            else:
                assert_valid(record, hostile_root)


HUATUO_FILES = {
    "mixed types across rows": [
        {
            "question": "Q1",
            "options": ["Brain", "Liver"],
            "answer": "Brain",
            "image": ["Images/set/a.png"],
            "subset": "MR (Mag-netic Resonance Imaging)",
        },
        {"question": 7, "options": "Brain", "answer": None, "image": 3, "subset": ["x"]},
    ],
    "traps in otherwise good rows": [
        {
            "question": f"Q{i}",
            "options": ["Brain", "Liver"],
            "answer": "Liver",
            "image": [path],
            "subset": "MR (Mag-netic Resonance Imaging)",
        }
        for i, path in enumerate(GOOD_IMAGES + TRAP_PATHS)
    ],
    "26 options and control characters": [
        {
            "question": "Q\x00\n",
            "options": list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
            "answer": "A",
            "image": ["Images/set/b.png"],
            "subset": "MR (Mag-netic Resonance Imaging)",
        },
        {
            "question": "Q\u2028",
            "options": ["x\ud800", "y"],
            "answer": "y",
            "image": ["Images/set/b.png"],
            "subset": "MR (Mag-netic Resonance Imaging)",
        },
    ],
    "not a list": {"question": "Q"},
}


@pytest.mark.parametrize("rows", list(HUATUO_FILES.values()), ids=list(HUATUO_FILES))
def test_medvlm_r1_reader_reads_a_hostile_file_without_crashing(hostile_root, tmp_path, rows):
    from medr1.data.medvlm_r1 import MedVLMR1

    folder = tmp_path / "huatuo"
    shutil.copytree(hostile_root / "Images", folder / "Images", symlinks=True)
    data_file = folder / "medical_multimodel_evaluation_data.json"
    data_file.write_text(json.dumps(rows, ensure_ascii=True), encoding="utf-8")
    cache = {"cache_dir": tmp_path / "hf_cache", "train_size": 100, "test_per_modality": 1}
    read_both_ways(MedVLMR1, [data_file], folder, expected=None, **cache)


# --- the prompt builder ----------------------------------------------------------------------------

option_texts = st.text(characters, min_size=1, max_size=15).filter(lambda text: text.strip() == text and text)


@st.composite
def records(draw, images: int | None = None):
    count = draw(st.integers(2, len(LETTERS)))
    texts_ = draw(
        st.lists(
            st.one_of(option_texts, st.sampled_from(["B", "b", "Normal", "normal.", "C) x", "Vitamin C"])),
            min_size=count,
            max_size=count,
        )
    )
    options = dict(zip(LETTERS, texts_, strict=False))
    return VQARecord(
        id=draw(st.text(characters, min_size=1, max_size=8)),
        images=tuple(
            f"/data/{i}.png" for i in range(images if images is not None else draw(st.integers(1, 3)))
        ),
        question=draw(
            st.one_of(st.text(characters, min_size=1, max_size=40), st.just("Is {Question} {0} shown?"))
        ),
        options=options,
        answer=draw(st.sampled_from(list(options))),
        modality="ct",
        question_type="disease_diagnosis",
        source="test",
    )


@PROPERTIES
@given(
    record=records(),
    template=st.sampled_from(sorted(NAMED_TEMPLATES)),
    layout=st.sampled_from(["{letter}) {text}", "{letter}){text}", "({letter}) {text}"]),
)
def test_the_prompt_holds_the_question_and_every_option_verbatim(record, template, layout):
    prompt = PromptFormat(template=template, option_format=layout)
    text = prompt_text(record, prompt)
    assert record.question in text
    position = text.index(record.question) + len(record.question)
    for letter, option in record.options.items():  # in order, after the question
        rendered = layout.format(letter=letter, text=option)
        position = text.index(rendered, position) + len(rendered)
    messages = chat_messages(record, prompt)
    assert [part["type"] for part in messages[0]["content"]] == ["image"] * len(record.images) + ["text"]


@pytest.fixture(scope="module")
def tiny_processor(tiny_path):
    from medr1.models.loading import load_processor

    return load_processor(compose_config([]).model, tiny_path)


CONTROL_TOKENS = ["<|im_end|>", "<|image_pad|>", "<|vision_start|>", "<|endoftext|>"]
prompt_texts = st.one_of(
    st.text(characters, min_size=1, max_size=30), st.sampled_from(CONTROL_TOKENS + ["<think>", "{Question}"])
)


@FEW
@given(
    question=prompt_texts,
    option=prompt_texts,
    images=st.integers(1, 2),
    template=st.sampled_from(sorted(NAMED_TEMPLATES)),
)
def test_the_measured_prompt_is_the_built_one_or_a_control_token_is_named(
    tiny_processor, hostile_root, question, option, images, template
):
    """Whatever the text: the meter's count equals the collator's, or the record is a bad record naming
    the control token (which would reach the model as one) or the lone surrogate (no tokenizer takes it)."""
    from medr1.data.batches import PromptCollator
    from medr1.data.lengths import PromptMeter

    question, option = question.strip() or "q", option.strip() or "o"
    picture = str(hostile_root / GOOD_IMAGES[0])
    record = VQARecord(
        "r", (picture,) * images, question, {"A": option, "B": "other"}, "A", "ct", "disease_diagnosis", "t"
    )
    meter = PromptMeter(tiny_processor, template)
    problem = meter.special_token_problem(record)
    if any(token in question + option for token in CONTROL_TOKENS):
        assert problem is not None and problem.startswith(("special token in text: ", "invalid text: "))
        return
    if any("\ud800" <= ch <= "\udfff" for ch in question + option):
        assert problem is not None and problem.startswith("invalid text: ") and "not valid Unicode" in problem
        return
    assert problem is None
    built = PromptCollator(tiny_processor, template)([record]).model_inputs["attention_mask"].sum().item()
    assert meter.lengths([record])[0].tokens == built


# --- completions: rewards and parsers -----------------------------------------------------------------

TAGS = ["<think>", "</think>", "<answer>", "</answer>", "<ANSWER>", "</Answer>"]
LABELS = ["Answer:", "The answer is", "Option", "answer is", "I think", "**", "`"]
GLUE = [" ", "", "\n", "(", ")", "[", "]", ".", ":", ",", " or ", " and ", "/", "&", "-"]


def completions(options: dict[str, str]) -> st.SearchStrategy[str]:
    pieces = st.one_of(
        st.sampled_from(TAGS),
        st.sampled_from(list(LETTERS) + list(LETTERS.lower()) + ["K", "Z"]),
        st.sampled_from(list(options.values())),
        st.sampled_from(LABELS),
        st.sampled_from(GLUE),
        st.text(characters, max_size=4),
    )
    return st.lists(pieces, max_size=12).map("".join) | st.sampled_from(HUGE)


@st.composite
def scored(draw):
    """(record, completion): completions built from tags, letters, the record's option texts, labels."""
    record = draw(records(images=1))
    return record, draw(completions(record.options))


def standalone(letter: str, text: str) -> bool:
    """Whether `text` writes `letter` as a letter of its own (either case), not inside a word."""
    return re.search(rf"(?<![A-Za-z]){letter}(?![A-Za-z])", text, re.IGNORECASE) is not None


def names_robustly(text: str | None, letter: str, options: dict[str, str]) -> bool:
    if text is None:
        return False
    bare = text.strip().strip("*`'\"").strip()
    return answers.normalize_option_text(bare) == answers.normalize_option_text(
        options[letter]
    ) or standalone(letter, text)


@PROPERTIES
@given(case=scored())
def test_parse_choice_credits_only_a_text_that_names_the_option(case):
    record, completion = case
    for text in (completion, answers.answer_text(completion)):
        choice = answers.parse_choice(text, record.options)
        assert choice is None or choice in record.options
        if choice is not None:
            assert names_robustly(text, choice, record.options), (text, choice)


@PROPERTIES
@given(record=records(images=1), data=st.data())
def test_a_bare_letter_or_a_list_of_letters_is_never_read_as_another_option(record, data):
    letter = data.draw(st.sampled_from(list(record.options)))
    decorated = data.draw(
        st.sampled_from(["{}", "({})", "[{}]", "{}.", "{})", "**{}**", "Answer: {}"])
    ).format(letter)
    assert answers.parse_choice(decorated, record.options) in (letter, None)
    several = data.draw(st.lists(st.sampled_from(list(record.options)), min_size=2, max_size=4, unique=True))
    joiner = data.draw(st.sampled_from([", ", " or ", "/", " and ", " ", ""]))
    assert answers.parse_choice(joiner.join(several), record.options) is None


@PROPERTIES
@given(case=scored())
def test_every_evaluation_parser_credits_only_a_completion_that_names_the_answer(case):
    record, completion = case
    correct = record.answer
    graded = {name: parser(completion, record.options) for name, parser in answers.PARSERS.items()}
    if graded["robust"] == correct:
        block = answers.answer_text(completion)
        assert names_robustly(block if block is not None else completion, correct, record.options)
    if graded["medr1"] == correct:
        assert re.search(rf"<answer>\s*{correct}\s*</answer>", completion)
    if graded["medvlm_r1"] == correct:
        assert re.search(rf"<answer>\s*{correct}\s*</answer>", completion)


def every_reward(completions_: list[str], record: VQARecord) -> dict[str, list[float]]:
    fields = {
        "solution": [record.answer] * len(completions_),
        "options": [record.options] * len(completions_),
    }
    return {
        name: function(completions_, **fields)
        for name, function in (
            ("medr1_format", rewards.medr1_format_reward),
            ("medr1_nothink_format", rewards.medr1_nothink_format_reward),
            ("medr1_accuracy", rewards.medr1_accuracy_reward),
            ("medvlm_r1_accuracy", rewards.medvlm_r1_accuracy_reward),
            ("strict_format", rewards.strict_format_reward),
            ("strict_accuracy", rewards.strict_accuracy_reward),
            ("robust_accuracy", rewards.robust_accuracy_reward),
            ("lenient_format", rewards.lenient_format_reward),
            ("reasoning_length", rewards.reasoning_length_reward),
            (
                "reasoning_length_capped",
                lambda c, **f: rewards.reasoning_length_reward(c, target_words=3, max_words=5, **f),
            ),
        )
    }


RANGES = {
    "medr1_format": {0.0, 1.0},
    "medr1_nothink_format": {0.0, 1.0},
    "medr1_accuracy": {0.0, 1.0},
    "medvlm_r1_accuracy": {0.0, 0.5, 1.0},
    "strict_format": {0.0, 1.0},
    "strict_accuracy": {0.0, 1.0},
    "robust_accuracy": {0.0, 1.0},
    "lenient_format": {0.0, 0.25, 0.5, 0.75, 1.0},
}


@PROPERTIES
@given(case=scored())
def test_rewards_are_finite_in_range_and_credit_only_the_named_answer(case):
    record, completion = case
    scores = {name: values[0] for name, values in every_reward([completion], record).items()}
    for name, score in scores.items():
        assert isinstance(score, float) and math.isfinite(score), (name, score)
        if name in RANGES:
            assert score in RANGES[name], (name, score)
        else:
            assert 0.0 <= score <= 1.0, (name, score)
    correct, block = record.answer, answers.answer_text(completion)
    if scores["medr1_accuracy"] or scores["strict_accuracy"]:
        assert block is not None and block.strip() == correct
    if scores["robust_accuracy"]:
        assert names_robustly(block, correct, record.options)
    if scores["medvlm_r1_accuracy"]:
        inner = re.search(r"<answer>(.*?)</answer>", completion, re.DOTALL | re.IGNORECASE).group(1)
        assert re.findall(r"[A-J]", inner.upper()) == [correct]


@PROPERTIES
@given(case=scored(), weights=st.lists(st.floats(-5, 5), min_size=3, max_size=3))
def test_a_reward_model_total_is_the_finite_weighted_sum(case, weights):
    record, completion = case
    model = rewards.RewardModel(
        name="hostile",
        functions={
            "format": rewards.strict_format_reward,
            "accuracy": rewards.robust_accuracy_reward,
            "length": rewards.reasoning_length_reward,
        },
        weights=dict(zip(("format", "accuracy", "length"), weights, strict=True)),
    )
    output = model([completion, completion], solution=[record.answer] * 2, options=[record.options] * 2)
    for total in output.total:
        assert math.isfinite(total)
        assert total == pytest.approx(sum(w * output.parts[p][0] for p, w in model.weights.items()))
