"""MedVLM-R1 reader: HuatuoGPT-Vision evaluation data in a local folder, read through `datasets`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medr1.data.medvlm_r1 import MedVLMR1
from medr1.data.records import BadRecordError

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
    assert "no data.test_root given" in caplog.text


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
