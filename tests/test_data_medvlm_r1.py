"""MedVLM-R1 reader: HuatuoGPT-Vision evaluation data in a local folder, read through `datasets`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from medr1.data.medvlm_r1 import MedVLMR1
from medr1.data.records import BadRecordError
from tests.helpers.config import compose_config
from tests.released_formats import write_medvlm_r1_folder

DATA_FILE = "medical_multimodel_evaluation_data.json"  # the released name, typo included
SUBSETS = {"mri": "MR (Mag-netic Resonance Imaging)", "ct": "CT(Computed Tomography)", "xray": "X-Ray"}


def write_png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (60, 60, 60)).save(path)


def huatuo_row(number: int, modality: str | None, **overrides) -> dict:
    """A row with the real field names; modality None = an item of another benchmark."""
    row = {
        "image": [f"images/{modality or 'other'}{number:04d}.png"],
        "question": f"What is apparent in image {number}?",
        "options": ["Hemorrhage", "Acute infarct", "Abscess formation", "Chronic infarct"],
        "answer": ["Hemorrhage", "Acute infarct", "Abscess formation", "Chronic infarct"][number % 4],
        "dataset": "OmniMedVQA" if modality else "PMC-VQA_test",
        "subset": SUBSETS[modality] if modality else "",
    }
    row.update(overrides)
    return row


def write_huatuo(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / DATA_FILE).write_text(json.dumps(rows), encoding="utf-8")
    for row in rows:
        for image in [row["image"]] if isinstance(row["image"], str) else row["image"]:
            write_png(folder / image)
    return folder


def standard_rows() -> list[dict]:
    rows = [huatuo_row(i, "mri") for i in range(10)]
    rows += [huatuo_row(i, "ct") for i in range(10, 14)]
    rows += [huatuo_row(i, "xray") for i in range(14, 17)]
    rows += [huatuo_row(i, None) for i in range(17, 20)]
    return rows


def reader(tmp_path: Path, folder: Path, **kwargs) -> MedVLMR1:
    kwargs.setdefault("train_size", 6)
    kwargs.setdefault("test_per_modality", 3)
    return MedVLMR1(root=folder, cache_dir=tmp_path / "hf_cache", **kwargs)


def index_of(record_id: str) -> int:
    return int(record_id.rsplit(":", 1)[1])


def test_train_is_the_seeded_shuffle_of_the_modality_items(tmp_path):
    folder = write_huatuo(tmp_path / "huatuo", standard_rows())
    splits = reader(tmp_path, folder).load()
    expected = [list(range(10))[i] for i in np.random.default_rng(42).permutation(10)][:6]
    assert [index_of(record.id) for record in splits.train] == expected
    assert {record.modality for record in splits.train} == {"mri"}
    assert {record.question_type for record in splits.train} == {"unknown"}
    first = splits.train[0]
    assert first.options == {
        "A": "Hemorrhage",
        "B": "Acute infarct",
        "C": "Abscess formation",
        "D": "Chronic infarct",
    }
    assert first.answer == "ABCD"[index_of(first.id) % 4]
    assert first.question == f"What is apparent in image {index_of(first.id)}?"
    assert first.images == (str((folder / f"images/mri{index_of(first.id):04d}.png").resolve()),)
    assert first.source == "OmniMedVQA"
    assert [record.id for record in reader(tmp_path, folder).load().train] == [
        record.id for record in splits.train
    ]


def test_without_test_root_test_comes_from_the_remaining_items(tmp_path, caplog):
    folder = write_huatuo(tmp_path / "huatuo", standard_rows())
    splits = reader(tmp_path, folder).load()
    by_modality = {name: [r for r in splits.test if r.modality == name] for name in ("mri", "ct", "xray")}
    assert {name: len(records) for name, records in by_modality.items()} == {"mri": 3, "ct": 3, "xray": 3}
    assert not {record.id for record in splits.train} & {record.id for record in splits.test}
    assert all(record.source == "OmniMedVQA" for record in splits.test)  # other benchmarks left out
    assert "no data.test_file or data.test_root given" in caplog.text


def test_with_test_root_test_comes_from_omnimedvqa_without_training_questions(tmp_path):
    folder = write_huatuo(tmp_path / "huatuo", standard_rows())
    train = reader(tmp_path, folder).load().train
    seen = train[0]
    omni = tmp_path / "omni"
    items = []
    for modality, raw in SUBSETS.items():
        for number in range(5):
            items.append(
                {
                    "dataset": "Set",
                    "question_id": f"{modality}_{number}",
                    "question_type": "Disease Diagnosis",
                    "question": f"Omni question {number}?",
                    "gt_answer": "yes",
                    "image_path": f"Images/Set/{modality}_{number}.png",
                    "option_A": "yes",
                    "option_B": "no",
                    "modality_type": raw,
                }
            )
    # the same question as a training one (same stem, same image file name): must not be tested on
    items[0].update(question=seen.question, image_path=f"Images/Set/{Path(seen.images[0]).name}")
    (omni / "QA_information/Open-access").mkdir(parents=True)
    (omni / "QA_information/Open-access/Set.json").write_text(json.dumps(items), encoding="utf-8")
    for item in items:
        write_png(omni / item["image_path"])

    splits = reader(tmp_path, folder, test_root=omni, test_per_modality=4).load()
    assert [record.id for record in splits.train] == [record.id for record in train]
    counts = {name: sum(r.modality == name for r in splits.test) for name in ("mri", "ct", "xray")}
    assert counts == {"mri": 4, "ct": 4, "xray": 4}
    assert "mri_0" not in {record.id for record in splits.test}
    assert all(record.question_type == "disease_diagnosis" for record in splits.test)


def test_a_bare_letter_answer_and_a_string_image_are_accepted(tmp_path):
    rows = [huatuo_row(i, "mri", answer="B", image=f"images/mri{i:04d}.png") for i in range(3)]
    folder = write_huatuo(tmp_path / "huatuo", rows)
    splits = reader(tmp_path, folder, train_size=2, test_modalities=["mri"]).load()
    assert [record.answer for record in splits.train] == ["B", "B"]
    assert len(splits.test) == 1


BAD = {
    "answer is not among options": {"answer": "Tumour"},
    "missing field": {"question": ""},
    "malformed options": {"options": ["only one"]},
    "missing image file": {"image": ["images/absent.png"]},
    "image path escapes the data root": {"image": ["../outside.png"]},
}


@pytest.mark.parametrize("problem", list(BAD))
def test_bad_rows_raise_with_their_id_or_are_counted(tmp_path, problem):
    rows = [huatuo_row(i, "mri") for i in range(4)]
    folder = write_huatuo(tmp_path / "huatuo", rows)
    rows[2].update(BAD[problem])
    (folder / DATA_FILE).write_text(json.dumps(rows), encoding="utf-8")
    with pytest.raises(BadRecordError) as caught:
        reader(tmp_path, folder, train_size=4, test_modalities=["ct"]).load()
    assert caught.value.record_id == "medical_multimodel_evaluation_data:2"
    assert caught.value.problem.startswith(problem)
    splits = reader(tmp_path, folder, train_size=4, test_modalities=["ct"], on_bad_record="skip").load()
    assert splits.skipped == 1
    assert sorted(index_of(record.id) for record in splits.train) == [0, 1, 3]


def test_corrupt_image_is_a_bad_record(tmp_path):
    folder = write_huatuo(tmp_path / "huatuo", [huatuo_row(i, "mri") for i in range(3)])
    (folder / "images/mri0001.png").write_bytes(b"random bytes, not a png")
    with pytest.raises(BadRecordError, match="unreadable image file"):
        reader(tmp_path, folder, train_size=3).load()


def test_malformed_json_file_raises_or_is_skipped(tmp_path):
    folder = tmp_path / "huatuo"
    folder.mkdir()
    (folder / DATA_FILE).write_text('[{"question": "cut', encoding="utf-8")
    with pytest.raises(BadRecordError, match="<file>.*malformed JSON"):
        reader(tmp_path, folder).load()
    splits = reader(tmp_path, folder, on_bad_record="skip").load()
    assert splits.skipped == 1 and splits.train == [] and splits.test == []


def test_missing_subset_column_is_reported(tmp_path):
    rows = [{key: value for key, value in huatuo_row(i, "mri").items() if key != "subset"} for i in range(2)]
    folder = write_huatuo(tmp_path / "huatuo", rows)
    with pytest.raises(BadRecordError, match="missing field.*subset"):
        reader(tmp_path, folder).load()


def test_root_may_be_the_json_file_itself_but_not_an_ambiguous_folder(tmp_path):
    folder = write_huatuo(tmp_path / "huatuo", standard_rows())
    assert len(MedVLMR1(root=folder / DATA_FILE, train_size=2, cache_dir=tmp_path / "c").load().train) == 2
    (folder / DATA_FILE).rename(folder / "a.json")
    (folder / "b.json").write_text("[]", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="evaluation data"):
        reader(tmp_path, folder).load()


def test_unknown_modality_setting_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="data.modality"):
        MedVLMR1(root=tmp_path, modality="thermal")


# --- MedVLM-R1's released test file (MRI_CT_XRAY_300each_dataset.json) ------------------------------

TEST_FILE = "MRI_CT_XRAY_300each_dataset.json"


def released_item(row: dict) -> dict:
    """A Huatuo row as an item of the released test file: plus `problem` and the bare `solution` letter."""
    letter = "ABCD"[row["options"].index(row["answer"])]
    lines = [f"{letter_}) {text}" for letter_, text in zip("ABCD", row["options"], strict=False)]
    return {
        "image": row["image"],
        "problem": row["question"] + "\n" + "\n".join(lines),
        "solution": letter,
        **row,
    }


def write_released(folder: Path, rows: list[dict], name: str = TEST_FILE) -> Path:
    path = folder / name
    path.write_text(json.dumps([released_item(row) for row in rows]), encoding="utf-8")
    return path


def released_rows() -> list[dict]:
    """Two MRI items of the training pool, then CT, then X-ray: the released layout in small."""
    return [huatuo_row(i, "mri") for i in (0, 1)] + [huatuo_row(10, "ct"), huatuo_row(14, "xray")]


def test_with_test_file_the_test_set_is_the_files_items_and_training_leaves_them_out(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="medr1.data.medvlm_r1")
    folder = write_huatuo(tmp_path / "huatuo", standard_rows())
    test_file = write_released(folder, released_rows())
    splits = reader(tmp_path, folder, test_file=test_file, train_size=8).load()
    assert [record.id for record in splits.test] == [f"MRI_CT_XRAY_300each_dataset:{i}" for i in range(4)]
    assert [record.modality for record in splits.test] == ["mri", "mri", "ct", "xray"]
    assert [record.answer for record in splits.test] == ["A", "B", "C", "C"]  # number % 4
    first = splits.test[0]
    assert first.question == "What is apparent in image 0?" and first.question_type == "unknown"
    assert first.options == {
        "A": "Hemorrhage",
        "B": "Acute infarct",
        "C": "Abscess formation",
        "D": "Chronic infarct",
    }
    assert first.images == (str((folder / "images/mri0000.png").resolve()),)
    # training: the seeded shuffle of the 10 MRI items, passing over items 0 and 1 (they are tested on)
    expected = [i for i in np.random.default_rng(42).permutation(10) if i not in (0, 1)]
    assert [index_of(record.id) for record in splits.train] == expected
    assert "left 2 training questions out" in caplog.text
    assert "no data.test_file" not in caplog.text


def test_a_relative_test_file_is_found_under_root(tmp_path):
    folder = write_huatuo(tmp_path / "huatuo", standard_rows())
    write_released(folder, released_rows())
    splits = reader(tmp_path, folder, test_file=TEST_FILE).load()
    assert len(splits.test) == 4


def test_test_modalities_filter_the_file(tmp_path):
    folder = write_huatuo(tmp_path / "huatuo", standard_rows())
    write_released(folder, released_rows())
    splits = reader(tmp_path, folder, test_file=TEST_FILE, test_modalities=["ct"]).load()
    assert [record.modality for record in splits.test] == ["ct"]


def test_a_missing_test_file_names_where_it_looked(tmp_path):
    folder = write_huatuo(tmp_path / "huatuo", standard_rows())
    with pytest.raises(FileNotFoundError, match=f"tried {TEST_FILE}, {folder / TEST_FILE}.*data.test_file"):
        reader(tmp_path, folder, test_file=TEST_FILE).load()


def test_test_file_and_test_root_together_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="data.test_file and data.test_root"):
        MedVLMR1(root=tmp_path, test_file="t.json", test_root=tmp_path)


def without(field: str) -> dict:
    return {field: None}


BAD_TEST_ITEMS = {
    "answer is not among options": {"solution": "E"},
    "malformed solution": {"solution": "<answer> C </answer>"},
    "answer does not match solution": {"answer": "Hemorrhage"},  # the solution is C, Abscess formation
    "missing field": without("subset"),
    "missing field ": {"image": []},
    "malformed options": {"options": ["only one"]},
    "unknown modality in subset": {"subset": "Thermography"},
    "missing image file": {"image": ["images/absent.png"]},
    "image path escapes the data root": {"image": ["../outside.png"]},
    "malformed item": "not an object",
}


@pytest.mark.parametrize("problem", list(BAD_TEST_ITEMS))
def test_bad_test_file_items_raise_naming_file_and_index_or_are_counted(tmp_path, problem):
    folder = write_huatuo(tmp_path / "huatuo", standard_rows())
    items = [released_item(row) for row in released_rows()]
    change = BAD_TEST_ITEMS[problem]
    if isinstance(change, dict):
        items[2] = {key: value for key, value in {**items[2], **change}.items() if value is not None}
    else:
        items[2] = change
    (folder / TEST_FILE).write_text(json.dumps(items), encoding="utf-8")
    with pytest.raises(BadRecordError) as caught:
        reader(tmp_path, folder, test_file=TEST_FILE).load()
    assert caught.value.record_id == "MRI_CT_XRAY_300each_dataset:2"
    assert caught.value.problem.startswith(problem.strip())
    assert TEST_FILE in str(caught.value) and "on_bad_record=skip" in str(caught.value)
    splits = reader(tmp_path, folder, test_file=TEST_FILE, on_bad_record="skip").load()
    assert splits.skipped == 1
    assert [index_of(record.id) for record in splits.test] == [0, 1, 3]


@pytest.mark.parametrize(("text", "problem"), [("[{", "malformed JSON"), ('{"a": 1}', "expected a list")])
def test_a_malformed_test_file_raises_or_is_skipped(tmp_path, text, problem):
    folder = write_huatuo(tmp_path / "huatuo", standard_rows())
    (folder / TEST_FILE).write_text(text, encoding="utf-8")
    with pytest.raises(BadRecordError, match=f"{TEST_FILE}.*<file>.*{problem}"):
        reader(tmp_path, folder, test_file=TEST_FILE).load()
    splits = reader(tmp_path, folder, test_file=TEST_FILE, on_bad_record="skip").load()
    assert splits.skipped == 1 and splits.test == []


def test_the_config_passes_test_file_to_the_source(tmp_path):
    folder = write_huatuo(tmp_path / "huatuo", standard_rows())
    write_released(folder, released_rows())
    cfg = compose_config(["data=medvlm_r1", f"data.root={folder}", f"data.test_file={TEST_FILE}"])
    assert cfg.data.source.test_file == TEST_FILE
    source = instantiate(cfg.data.source, cache_dir=str(tmp_path / "hf_cache"))
    assert len(source.load().test) == 4
    assert compose_config(["data=medvlm_r1"]).data.test_file is None


# --- round trip: records -> released layout (tests/released_formats.py) -> records -----------------------


def content(records) -> list[tuple]:
    return sorted(
        (r.modality, r.question, tuple(r.options.items()), r.answer, Path(r.images[0]).name) for r in records
    )


def test_synthetic_records_round_trip_through_the_released_layout(synthetic_splits, tmp_path):
    root, test_file = write_medvlm_r1_folder(synthetic_splits, tmp_path / "released")
    items = json.loads(test_file.read_text(encoding="utf-8"))
    assert [item["subset"] for item in items] == sorted(
        (item["subset"] for item in items),
        key=["MR (Mag-netic Resonance Imaging)", "CT(Computed Tomography)", "X-Ray"].index,
    )
    assert items[0]["problem"] == items[0]["question"] + "\n" + "\n".join(
        f"{letter}) {text}" for letter, text in zip("ABCDEFGHIJ", items[0]["options"], strict=False)
    )
    splits = MedVLMR1(
        root=root, test_file=test_file, train_size=10_000, cache_dir=tmp_path / "hf_cache"
    ).load()
    wanted_test = [r for r in synthetic_splits.test if r.modality in ("mri", "ct", "xray")]
    wanted_train = [r for r in synthetic_splits.train if r.modality == "mri"]
    assert len(splits.test) == len(wanted_test) and len(splits.train) == len(wanted_train)
    assert content(splits.test) == content(wanted_test)
    assert content(splits.train) == content(wanted_train)
    assert splits.skipped == 0
