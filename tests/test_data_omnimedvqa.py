"""OmniMedVQA reader and the shared split: real-format files written under tmp_path."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from hydra.utils import instantiate
from PIL import Image

from medr1.data import records as records_module
from medr1.data.omnimedvqa import OmniMedVQA
from medr1.data.records import BadRecordError, VQARecord
from medr1.data.split import split_by_group
from tests.helpers.config import compose_config

# --- builders of a real-format OmniMedVQA root ------------------------------------------------------


def write_png(path: Path, colour=(90, 90, 90), size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


def raw_item(number: int = 0, **overrides) -> dict:
    """A valid raw OmniMedVQA item; `None` in overrides deletes the field."""
    item = {
        "dataset": "Chest CT Scan",
        "question_id": f"Chest CT Scan_{number:04d}",
        "question_type": "Disease Diagnosis",
        "question": "What abnormality is shown?",
        "gt_answer": "Adenocarcinoma",
        "image_path": f"Images/Chest CT Scan/test/{number:04d}.png",
        "option_A": "Normal",
        "option_B": "Adenocarcinoma",
        "option_C": "Squamous cell carcinoma",
        "option_D": "Large cell carcinoma",
        "modality_type": "CT(Computed Tomography)",
    }
    item.update(overrides)
    return {key: value for key, value in item.items() if value is not None}


def write_root(root: Path, files: dict[str, list], access: str = "Open-access", images: bool = True) -> Path:
    """Write QA_information/<access>/<name>.json for each entry, and a PNG for every image_path."""
    folder = root / "QA_information" / access
    folder.mkdir(parents=True, exist_ok=True)
    for name, items in files.items():
        (folder / f"{name}.json").write_text(json.dumps(items), encoding="utf-8")
        for item in items:
            path = item.get("image_path") if isinstance(item, dict) else None
            if images and path and not Path(path).is_absolute() and ".." not in path:
                write_png(root / path)
    return root


def load(root: Path, **kwargs):
    return OmniMedVQA(root=root, **kwargs).load()


def all_records(splits):
    return {record.id: record for record in splits.train + splits.test}


# --- field mapping ---------------------------------------------------------------------------------


def test_fields_map_onto_a_record(tmp_path):
    item = raw_item(
        7,
        modality_type="MR (Mag-netic Resonance Imaging)",
        question_type="Lesion Grading",
        gt_answer="  Large cell carcinoma ",
    )
    root = write_root(tmp_path, {"Chest CT Scan": [item]})
    record = all_records(load(root))["Chest CT Scan_0007"]
    assert record.question == "What abnormality is shown?"
    assert record.options == {
        "A": "Normal",
        "B": "Adenocarcinoma",
        "C": "Squamous cell carcinoma",
        "D": "Large cell carcinoma",
    }
    assert record.answer == "D"
    assert record.modality == "mri"
    assert record.question_type == "lesion_grading"
    assert record.source == "Chest CT Scan"
    assert record.images == (str((tmp_path / "Images/Chest CT Scan/test/0007.png").resolve()),)
    assert Path(record.images[0]).is_absolute()


def test_the_modality_key_quirk_is_accepted(tmp_path):
    item = raw_item(modality_type=None, modality="OCT (Optical Coherence Tomography")
    root = write_root(tmp_path, {"OCTID": [item]})
    assert [record.modality for record in all_records(load(root)).values()] == ["oct"]


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("CT(Computed Tomography)", "ct"),
        ("MR (Mag-netic Resonance Imaging)", "mri"),
        ("OCT (Optical Coherence Tomography", "oct"),
        ("X-Ray", "xray"),
        ("ultrasound", "ultrasound"),
        ("Fundus Photography", "fundus"),
        ("Microscopy Images", "microscopy"),
        ("Dermoscopy", "dermoscopy"),
    ],
)
def test_raw_modality_strings_become_canonical(tmp_path, raw, canonical):
    root = write_root(tmp_path, {"set": [raw_item(modality_type=raw)]})
    assert next(iter(all_records(load(root)).values())).modality == canonical


def test_answer_text_matches_case_insensitively(tmp_path):
    root = write_root(tmp_path, {"set": [raw_item(gt_answer="squamous CELL carcinoma")]})
    assert next(iter(all_records(load(root)).values())).answer == "C"


def test_missing_or_empty_trailing_options_are_dropped(tmp_path):
    two = raw_item(1, option_C=None, option_D="", gt_answer="Normal")
    three = raw_item(2, option_D=None)
    records = all_records(load(write_root(tmp_path, {"set": [two, three]})))
    assert records["Chest CT Scan_0001"].options == {"A": "Normal", "B": "Adenocarcinoma"}
    assert records["Chest CT Scan_0001"].answer == "A"
    assert list(records["Chest CT Scan_0002"].options) == ["A", "B", "C"]


def test_missing_question_id_falls_back_to_dataset_and_index(tmp_path):
    items = [raw_item(0), raw_item(1, question_id=None)]
    assert "Chest CT Scan:1" in all_records(load(write_root(tmp_path, {"set": items})))


def test_repeated_ids_are_made_unique(tmp_path):
    items = [raw_item(0), raw_item(1, question_id="Chest CT Scan_0000")]
    ids = sorted(all_records(load(write_root(tmp_path, {"set": items}))))
    assert ids == ["Chest CT Scan_0000", "Chest CT Scan_0000#2"]


# --- bad records -----------------------------------------------------------------------------------


def corrupt_image(root: Path) -> dict:
    item = raw_item(1)
    (root / item["image_path"]).write_bytes(random.Random(0).randbytes(200))
    return item


def escaping_path(root: Path) -> dict:
    write_png(root.parent / "outside.png")  # exists, so only the escape can be the problem
    return raw_item(1, image_path="../outside.png")


def absolute_path(root: Path) -> dict:
    return raw_item(1, image_path=str(write_png(root.parent / "elsewhere.png")))


BAD_ITEMS = {
    "missing image file": lambda root: raw_item(1, image_path="Images/Chest CT Scan/test/absent.png"),
    "unreadable image file": corrupt_image,
    "missing field": lambda root: raw_item(1, question=None),
    "unknown modality": lambda root: raw_item(1, modality_type="Thermography"),
    "unknown question type": lambda root: raw_item(1, question_type="Counting"),
    "answer is not among options": lambda root: raw_item(1, gt_answer="Tuberculosis"),
    "option gap": lambda root: raw_item(1, option_C="", option_D="Large cell carcinoma"),
    "image path escapes the data root": escaping_path,
    "image path escapes the data root ": absolute_path,  # trailing space: a second case, same problem
}


def write_with_bad_item(tmp_path: Path, problem: str) -> Path:
    root = tmp_path / "root"
    write_root(root, {"set": [raw_item(0), raw_item(1)]})  # writes both images
    items = [raw_item(0), BAD_ITEMS[problem](root)]
    (root / "QA_information/Open-access/set.json").write_text(json.dumps(items), encoding="utf-8")
    if problem.startswith("missing image"):
        (root / "Images/Chest CT Scan/test/0001.png").unlink()
    return root


@pytest.mark.parametrize("problem", list(BAD_ITEMS))
def test_each_kind_of_bad_record_raises_naming_file_record_and_problem(tmp_path, problem):
    root = write_with_bad_item(tmp_path, problem)
    with pytest.raises(BadRecordError) as caught:
        load(root)
    assert caught.value.record_id == "Chest CT Scan_0001"
    assert caught.value.problem.startswith(problem.strip())
    message = str(caught.value)
    assert "set.json" in message and "'Chest CT Scan_0001'" in message and "on_bad_record=skip" in message


@pytest.mark.parametrize("problem", list(BAD_ITEMS))
def test_skip_mode_counts_the_bad_record_and_keeps_the_good_one(tmp_path, problem):
    splits = load(write_with_bad_item(tmp_path, problem), on_bad_record="skip")
    assert splits.skipped == 1
    assert list(all_records(splits)) == ["Chest CT Scan_0000"]


def test_skip_mode_counts_every_bad_record_of_a_file(tmp_path):
    root = tmp_path / "root"
    write_root(root, {"set": [raw_item(0), raw_item(1)]})
    items = [raw_item(0), *(make(root) for make in BAD_ITEMS.values()), "not an object"]
    (root / "QA_information/Open-access/set.json").write_text(json.dumps(items), encoding="utf-8")
    (root / "Images/Chest CT Scan/test/0001.png").write_bytes(b"not a png")
    splits = load(root, on_bad_record="skip")
    assert splits.skipped == len(BAD_ITEMS) + 1
    assert len(splits.train) + len(splits.test) == 1


def test_malformed_json_file_raises_or_is_skipped_whole(tmp_path):
    root = write_root(tmp_path, {"good": [raw_item(0), raw_item(1)]})
    (root / "QA_information/Open-access/broken.json").write_text('[{"question": "cut off', encoding="utf-8")
    with pytest.raises(BadRecordError, match="broken.json.*<file>.*malformed JSON"):
        load(root)
    splits = load(root, on_bad_record="skip")
    assert splits.skipped == 1
    assert len(all_records(splits)) == 2


def test_a_file_that_is_not_a_list_is_malformed(tmp_path):
    root = write_root(tmp_path, {"good": [raw_item(0)]})
    (root / "QA_information/Open-access/object.json").write_text(json.dumps(raw_item(3)), encoding="utf-8")
    with pytest.raises(BadRecordError, match="expected a list"):
        load(root)


def test_missing_restricted_image_says_where_to_get_it(tmp_path):
    root = write_root(tmp_path, {"open": [raw_item(0)]})
    write_root(root, {"restricted": [raw_item(5)]}, access="Restricted-access", images=False)
    with pytest.raises(BadRecordError, match="source data sets"):
        load(root)
    assert list(all_records(load(root, access=["Open-access"]))) == ["Chest CT Scan_0000"]


def test_verify_images_false_skips_the_readability_check_only(tmp_path):
    root = write_root(tmp_path, {"set": [raw_item(0)]})
    (root / "Images/Chest CT Scan/test/0000.png").write_bytes(b"garbage")
    assert len(all_records(load(root, verify_images=False))) == 1
    (root / "Images/Chest CT Scan/test/0000.png").unlink()
    with pytest.raises(BadRecordError, match="missing image file"):
        load(root, verify_images=False)


def test_a_shared_image_is_opened_once(tmp_path, monkeypatch):
    shared = "Images/Chest CT Scan/test/shared.png"
    root = write_root(tmp_path, {"set": [raw_item(number, image_path=shared) for number in range(5)]})
    opened = Counter()
    real_open = records_module.Image.open

    def counting_open(path, *args, **kwargs):
        opened[str(path)] += 1
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(records_module.Image, "open", counting_open)
    assert len(all_records(load(root))) == 5
    assert list(opened.values()) == [1]


# --- folders ---------------------------------------------------------------------------------------


def test_an_absent_access_folder_is_skipped(tmp_path):
    root = write_root(tmp_path, {"set": [raw_item(0)]})  # no Restricted-access folder
    assert len(all_records(load(root))) == 1


def test_no_access_folder_at_all_is_an_error_naming_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="QA_information") as caught:
        load(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(caught.value)


def test_bad_split_by_is_rejected():
    with pytest.raises(ValueError, match="split_by"):
        OmniMedVQA(root="/nowhere", split_by="dataset")


# --- split -----------------------------------------------------------------------------------------


def make_records(sizes: dict[str, int]) -> list[VQARecord]:
    return [
        VQARecord(
            id=f"{group}-{index:03d}",
            images=("/x.png",),
            question="q",
            options={"A": "a", "B": "b"},
            answer="A",
            modality=group,
            question_type="disease_diagnosis" if index % 2 else "lesion_grading",
            source="s",
        )
        for group, size in sizes.items()
        for index in range(size)
    ]


def ids(records) -> list[str]:
    return [record.id for record in records]


def test_split_is_about_80_20_within_each_group():
    records = make_records({"ct": 100, "mri": 7, "oct": 2, "fundus": 1})
    train, test = split_by_group(records, "modality", 0.2, seed=42)
    test_counts = Counter(record.modality for record in test)
    assert test_counts == {"ct": 20, "mri": 1, "oct": 1}  # round(1.4) = 1; 2 -> at least one; 1 -> none
    assert sorted(ids(train) + ids(test)) == sorted(ids(records))
    assert not set(ids(train)) & set(ids(test))


def test_split_is_deterministic_and_independent_of_input_order():
    records = make_records({"ct": 50, "xray": 30})
    first = split_by_group(records, "modality", 0.2, seed=3)
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    again = split_by_group(shuffled, "modality", 0.2, seed=3)
    other_seed = split_by_group(records, "modality", 0.2, seed=4)
    assert ids(first[1]) == ids(again[1]) and ids(first[0]) == ids(again[0])
    assert ids(first[1]) != ids(other_seed[1])


def test_a_groups_split_does_not_depend_on_other_groups():
    alone = split_by_group(make_records({"ct": 40}), "modality", 0.2, seed=0)[1]
    together = split_by_group(make_records({"ct": 40, "mri": 25}), "modality", 0.2, seed=0)[1]
    assert ids(alone) == [record.id for record in together if record.modality == "ct"]


def test_split_by_question_type_groups_by_question_type():
    records = make_records({"ct": 40})
    _, test = split_by_group(records, "question_type", 0.25, seed=0)
    assert Counter(record.question_type for record in test) == {"disease_diagnosis": 5, "lesion_grading": 5}


def test_split_rejects_a_fraction_outside_zero_one():
    with pytest.raises(ValueError, match="test_fraction"):
        split_by_group([], "modality", 1.0, seed=0)


def test_reader_splits_by_modality_or_question_type(tmp_path):
    items = [
        raw_item(
            number,
            modality_type=("X-Ray" if number % 2 else "CT(Computed Tomography)"),
            question_type=("Lesion Grading" if number < 10 else "Disease Diagnosis"),
        )
        for number in range(20)
    ]
    root = write_root(tmp_path, {"set": items})
    by_modality = load(root, split_by="modality", test_fraction=0.2)
    assert Counter(record.modality for record in by_modality.test) == {"ct": 2, "xray": 2}
    by_type = load(root, split_by="question_type", test_fraction=0.2)
    assert Counter(record.question_type for record in by_type.test) == {
        "lesion_grading": 2,
        "disease_diagnosis": 2,
    }
    assert ids(load(root, split_by="modality").test) == ids(by_modality.test)


# --- config: data.access and data.resize -----------------------------------------------------------


def test_data_access_open_only_reads_a_download_without_the_restricted_images(tmp_path):
    root = write_root(tmp_path / "omni", {"open": [raw_item(0)]})
    write_root(root, {"restricted": [raw_item(5)]}, access="Restricted-access", images=False)
    cfg = compose_config(["data=omnimedvqa", f"data.root={root}", "data.access=[Open-access]"])
    assert list(cfg.data.source.access) == ["Open-access"]
    assert list(all_records(instantiate(cfg.data.source).load())) == ["Chest CT Scan_0000"]
    default = compose_config(["data=omnimedvqa", f"data.root={root}"])
    assert list(default.data.source.access) == ["Open-access", "Restricted-access"]
    with pytest.raises(BadRecordError, match=r"data.access=\[Open-access\]"):
        instantiate(default.data.source).load()


@pytest.mark.parametrize("access", [["Open"], "open-access", []])
def test_a_bad_access_name_is_an_error_naming_the_valid_ones(access):
    with pytest.raises(ValueError, match=r"data.access: .*valid: \['Open-access', 'Restricted-access'\]"):
        OmniMedVQA(root="/nowhere", access=access)


def test_a_bad_access_name_in_the_config_fails_at_instantiation(tmp_path):
    cfg = compose_config(["data=omnimedvqa", f"data.root={tmp_path}", "data.access=[Open-acess]"])
    with pytest.raises(Exception, match="Open-acess.*valid"):
        instantiate(cfg.data.source)


@pytest.mark.parametrize("data", ["synthetic", "omnimedvqa", "medr1_splits", "medvlm_r1"])
def test_every_data_config_has_resize_off_by_default(data):
    cfg = compose_config([f"data={data}"])
    assert "resize" in cfg.data and cfg.data.resize is None
