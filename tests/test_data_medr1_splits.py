"""Reader of Med-R1's released split files: real-format files written under tmp_path."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hydra.utils import instantiate
from PIL import Image

from medr1.data.medr1_splits import MedR1Splits, parse_problem
from medr1.data.records import BadRecordError, VQARecord
from tests.helpers.config import compose_config
from tests.released_formats import medr1_problem, write_medr1_splits

CT_PROBLEM = "What imaging technique is employed for obtaining this image? A)Mammogram, B)Positron emission tomography (PET), C)CT, D)Fluoroscopy"


def write_png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (120, 120, 120)).save(path)


def split_item(image: str, problem: str, letter: str) -> dict:
    return {"image": image, "problem": problem, "solution": f"<answer> {letter} </answer>"}


def write_split(root: Path, kind: str, part: str, raw_name: str, items: list, images: bool = True) -> Path:
    path = root / "Splits" / kind / part / f"{raw_name}_{part}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items), encoding="utf-8")
    for item in items:
        if images and isinstance(item, dict) and "image" in item:
            write_png(root / item["image"])
    return path


CT_TRAIN = [
    split_item("Images/Chest CT Scan/train/0001.png", CT_PROBLEM, "C"),
    split_item(
        "Images/Chest CT Scan/train/0002.png", "Is the lesion benign? A) Yes, benign, B) No, malignant", "B"
    ),
]
CT_TEST = [split_item("Images/Chest CT Scan/test/0003.png", "Which grade? A)1, B)2, C)3", "A")]


@pytest.fixture
def root(tmp_path) -> Path:
    write_split(tmp_path, "modality", "train", "CT(Computed Tomography)", CT_TRAIN)
    write_split(tmp_path, "modality", "test", "CT(Computed Tomography)", CT_TEST)
    return tmp_path


# --- problem parsing -------------------------------------------------------------------------------


def test_problem_splits_into_stem_and_options():
    stem, options = parse_problem(CT_PROBLEM)
    assert stem == "What imaging technique is employed for obtaining this image?"
    assert options == {
        "A": "Mammogram",
        "B": "Positron emission tomography (PET)",
        "C": "CT",
        "D": "Fluoroscopy",
    }


def test_option_text_may_contain_commas():
    _, options = parse_problem("Finding? A)Fracture, displaced, with callus, B)Normal, C) Edema, mild")
    assert options == {"A": "Fracture, displaced, with callus", "B": "Normal", "C": "Edema, mild"}


def test_whitespace_after_the_parenthesis_is_optional():
    assert parse_problem("Q? A) one, B)two")[1] == {"A": "one", "B": "two"}


def test_an_a_paren_inside_the_stem_does_not_start_the_options():
    stem, options = parse_problem("Is this type A) or not? A)yes, B)no")
    assert stem == "Is this type A) or not?"
    assert options == {"A": "yes", "B": "no"}


@pytest.mark.parametrize("problem", ["What is shown?", "A)one, B)two", "Q? A)only one"])
def test_a_problem_without_stem_and_two_options_is_malformed(problem):
    with pytest.raises(ValueError, match="malformed problem"):
        parse_problem(problem)


# --- reading ---------------------------------------------------------------------------------------


def test_records_come_from_the_files_with_modality_from_the_file_name(root):
    splits = MedR1Splits(root=root).load()
    assert [record.id for record in splits.train] == [
        "CT(Computed Tomography)_train:0",
        "CT(Computed Tomography)_train:1",
    ]
    assert [record.id for record in splits.test] == ["CT(Computed Tomography)_test:0"]
    first = splits.train[0]
    assert first.modality == "ct"
    assert first.question_type == "unknown"  # no Splits/question_type folder
    assert first.answer == "C" and first.options["C"] == "CT"
    assert first.source == "Chest CT Scan"
    assert first.images == (str((root / "Images/Chest CT Scan/train/0001.png").resolve()),)
    assert splits.train[1].options == {"A": "Yes, benign", "B": "No, malignant"}
    assert splits.skipped == 0


def test_the_other_attribute_comes_from_the_sibling_folder(root):
    write_split(root, "question_type", "train", "Modality Recognition", [CT_TRAIN[0]])
    write_split(root, "question_type", "test", "Disease Diagnosis", [CT_TRAIN[1]])
    splits = MedR1Splits(root=root).load()
    assert [record.question_type for record in splits.train] == ["modality_recognition", "disease_diagnosis"]
    assert splits.test[0].question_type == "unknown"  # in no sibling file


def test_split_by_question_type_looks_up_the_modality(root):
    write_split(root, "question_type", "train", "Lesion Grading", [CT_TEST[0]])
    write_split(root, "question_type", "test", "Other Biological Attributes", [CT_TRAIN[1]])
    splits = MedR1Splits(root=root, split_by="question_type").load()
    assert [(record.question_type, record.modality) for record in splits.train] == [("lesion_grading", "ct")]
    assert [(record.question_type, record.modality) for record in splits.test] == [
        ("biological_attribute", "ct")
    ]


def test_raw_typo_names_in_file_names_map_to_canonical(tmp_path):
    write_split(tmp_path, "modality", "train", "MR (Mag-netic Resonance Imaging)", CT_TRAIN)
    write_split(tmp_path, "modality", "test", "OCT (Optical Coherence Tomography", CT_TEST)
    splits = MedR1Splits(root=tmp_path).load()
    assert {record.modality for record in splits.train} == {"mri"}
    assert {record.modality for record in splits.test} == {"oct"}


# --- bad records -----------------------------------------------------------------------------------

BAD = {
    "malformed solution": {"solution": "C"},
    "answer is not among options": {"solution": "<answer> E </answer>"},
    "malformed problem": {"problem": "What is shown here?"},
    "missing field": {"problem": None},
    "missing image file": {"image": "Images/Chest CT Scan/train/absent.png"},
    "image path escapes the data root": {"image": "../outside.png"},
}


@pytest.mark.parametrize("problem", list(BAD))
def test_bad_items_raise_with_file_and_record_id(root, problem):
    bad = {**CT_TRAIN[0], **BAD[problem]}
    bad = {key: value for key, value in bad.items() if value is not None}
    write_split(root, "modality", "train", "CT(Computed Tomography)", [CT_TRAIN[0], bad], images=False)
    with pytest.raises(BadRecordError) as caught:
        MedR1Splits(root=root).load()
    assert caught.value.record_id == "CT(Computed Tomography)_train:1"
    assert caught.value.problem.startswith(problem)
    assert "CT(Computed Tomography)_train.json" in str(caught.value)
    skipped = MedR1Splits(root=root, on_bad_record="skip").load()
    assert skipped.skipped == 1 and len(skipped.train) == 1


def test_corrupt_image_is_a_bad_record(root):
    (root / CT_TRAIN[1]["image"]).write_bytes(b"\x89PNG not really")
    with pytest.raises(BadRecordError, match="unreadable image file"):
        MedR1Splits(root=root).load()
    assert len(MedR1Splits(root=root, verify_images=False).load().train) == 2


def test_malformed_json_file_raises_or_is_skipped(root):
    (root / "Splits/modality/train/X-Ray_train.json").write_text("[{", encoding="utf-8")
    with pytest.raises(BadRecordError, match="X-Ray_train.json.*<file>.*malformed JSON"):
        MedR1Splits(root=root).load()
    splits = MedR1Splits(root=root, on_bad_record="skip").load()
    assert splits.skipped == 1 and len(splits.train) == 2


def test_unknown_name_in_file_name_is_reported(root):
    write_split(root, "modality", "train", "Thermography", CT_TRAIN)
    with pytest.raises(BadRecordError, match="unknown modality in file name"):
        MedR1Splits(root=root).load()


def test_missing_split_folder_names_the_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Splits/modality/train"):
        MedR1Splits(root=tmp_path).load()


def test_unknown_name_is_skipped_and_counted_under_skip(root):
    write_split(root, "modality", "train", "Thermography", CT_TRAIN)
    splits = MedR1Splits(root=root, on_bad_record="skip").load()
    assert splits.skipped == 1 and len(splits.train) == 2


# --- the release's quirk: Splits/modality/train/unknown_train.json -----------------------------------

QUIRK = split_item(
    "Images/Chest CT Scan/test/adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib/000143 (6).png",
    "What imaging technique was employed for capturing this image? A)Angiography, B)Electrocardiogram (ECG), C)Mammogram, D)CT",
    "D",
)


def quirk_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "unknown_train.json" in r.getMessage()]


@pytest.mark.parametrize("on_bad_record", ["raise", "skip"])
def test_the_unknown_modality_file_is_left_out_with_one_log_line(root, caplog, on_bad_record):
    caplog.set_level(logging.INFO, logger="medr1.data.medr1_splits")
    write_split(root, "modality", "train", "unknown", [QUIRK])
    splits = MedR1Splits(root=root, on_bad_record=on_bad_record).load()
    assert [record.id for record in splits.train] == [
        "CT(Computed Tomography)_train:0",
        "CT(Computed Tomography)_train:1",
    ]
    assert splits.skipped == 0  # a known quirk, not a bad record
    [line] = quirk_lines(caplog)
    assert "1 record(s)" in line and "modality 'unknown'" in line and "left out" in line


def test_split_by_question_type_reads_past_the_quirk_and_marks_its_question_unknown(root, caplog):
    caplog.set_level(logging.INFO, logger="medr1.data.medr1_splits")
    write_split(root, "modality", "train", "unknown", [QUIRK])
    write_split(root, "question_type", "train", "Disease Diagnosis", CT_TRAIN)
    # as released: the quirk's question is a Modality Recognition test question
    write_split(root, "question_type", "test", "Modality Recognition", [*CT_TEST, QUIRK])
    splits = MedR1Splits(root=root, split_by="question_type").load()
    assert [record.modality for record in splits.train] == ["ct", "ct"]
    assert [(record.modality, record.question_type) for record in splits.test] == [
        ("ct", "modality_recognition"),
        ("unknown", "modality_recognition"),
    ]
    assert splits.test[1].answer == "D" and splits.skipped == 0
    [line] = quirk_lines(caplog)
    assert "1 record(s)" in line and "get modality 'unknown'" in line


def test_an_unknown_file_that_is_not_json_is_still_a_bad_file(root):
    (root / "Splits/modality/train/unknown_train.json").write_text("[{", encoding="utf-8")
    with pytest.raises(BadRecordError, match="unknown_train.json.*malformed JSON"):
        MedR1Splits(root=root).load()


# --- round trip: records -> released layout (tests/released_formats.py) -> records -----------------------


def content(records) -> list[tuple]:
    """What must survive the round trip, in a canonical order (ids and image folders change)."""
    return sorted(
        (r.modality, r.question_type, r.question, tuple(r.options.items()), r.answer, Path(r.images[0]).name)
        for r in records
    )


@pytest.mark.parametrize("split_by", ["modality", "question_type"])
def test_synthetic_records_round_trip_through_the_released_layout(
    synthetic_splits, tmp_path, caplog, split_by
):
    caplog.set_level(logging.INFO, logger="medr1.data.medr1_splits")
    root = write_medr1_splits(synthetic_splits, tmp_path / "released")
    assert json.loads((root / "Splits/modality/train/unknown_train.json").read_text(encoding="utf-8"))[0][
        "problem"
    ].endswith("D)CT")
    splits = MedR1Splits(root=root, split_by=split_by, on_bad_record="raise").load()
    assert len(splits.train) == len(synthetic_splits.train) and len(splits.test) == len(synthetic_splits.test)
    assert content(splits.train) == content(synthetic_splits.train)
    assert content(splits.test) == content(synthetic_splits.test)
    assert splits.skipped == 0 and len(quirk_lines(caplog)) == 1
    assert all(
        Path(image).is_relative_to(root.resolve() / "Images") for r in splits.train for image in r.images
    )


def test_the_written_problem_is_med_r1s_format():
    record = VQARecord(
        id="x",
        images=("/x.png",),
        question="Which one?",
        options={"A": "one", "B": "two, three"},
        answer="B",
        modality="ct",
        question_type="disease_diagnosis",
        source="Set",
    )
    assert medr1_problem(record) == "Which one? A)one, B)two, three"
    assert parse_problem(medr1_problem(record)) == ("Which one?", record.options)


@pytest.mark.parametrize("split_by", ["modality", "question_type"])
def test_the_data_config_reads_the_released_layout(synthetic_splits, tmp_path, split_by):
    root = write_medr1_splits(synthetic_splits, tmp_path / "released")
    cfg = compose_config(["data=medr1_splits", f"data.root={root}", f"data.source.split_by={split_by}"])
    splits = instantiate(cfg.data.source).load()
    assert (len(splits.train), len(splits.test)) == (len(synthetic_splits.train), len(synthetic_splits.test))
