"""Synthetic medical VQA set: deterministic, reusable, balanced, and answerable from the pixels."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medr1.data import synthetic
from medr1.data.names import MODALITIES, MODALITY_DISPLAY, QUESTION_TYPES
from medr1.data.synthetic import LESION_COLOUR, OBJECT_COLOUR, SyntheticMedVQA

SIZE = 12  # divisible by 2, 3 and 4, so every answer class appears equally often


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "set"
    return root, SyntheticMedVQA(root=root, size=SIZE).load()


@pytest.fixture(scope="module")
def shuffled(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_shuffled") / "set"
    return SyntheticMedVQA(root=root, size=SIZE, shuffle_options=True).load()


def every_record(splits):
    return splits.train + splits.test


def pixels(record) -> np.ndarray:
    return np.asarray(Image.open(record.images[0]).convert("RGB"), dtype=np.float64)


def colour_mask(image: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return np.abs(image - colour).max(axis=-1) < 40


def quadrants(mask: np.ndarray) -> list[np.ndarray]:
    half = mask.shape[0] // 2
    return [mask[:half, :half], mask[:half, half:], mask[half:, :half], mask[half:, half:]]


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()
    }


# --- files ---------------------------------------------------------------------------------------


def test_files_are_in_omnimedvqa_raw_format(generated):
    root, _ = generated
    files = sorted((root / "QA_information" / "Open-access").glob("*.json"))
    assert [path.stem for path in files] == sorted(
        f"Synthetic {MODALITY_DISPLAY[name]}" for name in MODALITIES
    )
    items = json.loads(files[0].read_text(encoding="utf-8"))
    fields = {
        "dataset",
        "question_id",
        "question_type",
        "question",
        "gt_answer",
        "image_path",
        "option_A",
        "option_B",
        "modality_type",
    }
    assert all(fields <= set(item) for item in items)
    assert all(
        item["gt_answer"] in [item[key] for key in item if key.startswith("option_")] for item in items
    )
    assert {item["modality_type"] for item in items} <= set(MODALITIES.values())
    assert {item["question_type"] for item in items} == set(QUESTION_TYPES.values())
    assert all((root / item["image_path"]).is_file() for item in items)
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["params"]["size"] == SIZE and manifest["questions"] == SIZE * 40


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path):
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for root, seed in ((first, 5), (second, 5), (other, 6)):
        SyntheticMedVQA(root=root, size=2, seed=seed).load()
    assert folder_bytes(first) == folder_bytes(second)
    assert folder_bytes(first) != folder_bytes(other)


def test_an_existing_set_is_reused_not_regenerated(generated, monkeypatch):
    root, splits = generated
    monkeypatch.setattr(synthetic, "write_dataset", lambda *args: pytest.fail("regenerated"))
    again = SyntheticMedVQA(root=root, size=SIZE).load()
    assert [record.id for record in again.test] == [record.id for record in splits.test]


def test_a_set_made_with_other_parameters_is_an_error(generated):
    root, _ = generated
    with pytest.raises(FileExistsError, match="different parameters"):
        SyntheticMedVQA(root=root, size=SIZE + 1).load()


def test_a_folder_without_manifest_is_an_error(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="not a synthetic data set"):
        SyntheticMedVQA(root=tmp_path / "taken").load()


def test_a_set_from_an_older_generator_version_is_regenerated(tmp_path):
    root = tmp_path / "old"
    SyntheticMedVQA(root=root, size=1).load()
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    manifest["params"]["version"] = synthetic.GENERATOR_VERSION - 1
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    stale_image = next(root.rglob("*.png"))
    stale_image.write_bytes(b"stale")
    assert len(every_record(SyntheticMedVQA(root=root, size=1).load())) == 40
    assert (
        json.loads((root / "manifest.json").read_text(encoding="utf-8"))["params"]["version"]
        == synthetic.GENERATOR_VERSION
    )
    assert stale_image.read_bytes().startswith(b"\x89PNG")


def test_no_temporary_folder_is_left_behind(generated):
    root, _ = generated
    assert [path.name for path in root.parent.iterdir()] == [root.name]


# --- questions ------------------------------------------------------------------------------------


def test_every_modality_and_question_type_has_size_questions(generated):
    _, splits = generated
    counts = Counter((record.modality, record.question_type) for record in every_record(splits))
    assert counts == {pair: SIZE for pair in itertools.product(MODALITIES, QUESTION_TYPES)}
    assert Counter(record.modality for record in splits.test) == {
        name: 12 for name in MODALITIES
    }  # 20% of 60


def test_option_counts_per_question_type(generated, shuffled):
    expected = {
        "modality_recognition": 4,
        "disease_diagnosis": 2,
        "lesion_grading": 3,
        "anatomy_identification": 4,
        "biological_attribute": 3,
    }
    for splits in (generated[1], shuffled):
        for record in every_record(splits):
            assert len(record.options) == expected[record.question_type], record.id


def test_modality_recognition_letter_is_fixed_by_the_modality(generated):
    _, splits = generated
    letters = {
        record.modality: record.answer
        for record in every_record(splits)
        if record.question_type == "modality_recognition"
    }
    assert letters == {
        "ct": "A", "mri": "B", "xray": "C", "ultrasound": "D",
        "dermoscopy": "A", "fundus": "B", "oct": "C", "microscopy": "D",
    }  # fmt: skip


def test_shuffled_modality_recognition_draws_distractors_from_all_modalities(shuffled):
    offered = Counter(
        text
        for record in every_record(shuffled)
        if record.question_type == "modality_recognition"
        for text in record.options.values()
    )
    assert set(offered) == set(MODALITY_DISPLAY.values())
    orders = {
        tuple(record.options.values())
        for record in every_record(shuffled)
        if record.question_type == "lesion_grading"
    }
    assert len(orders) > 1


@pytest.mark.parametrize("which", ["canonical", "shuffled"])
def test_answer_letters_are_balanced_within_each_question_type(generated, shuffled, which):
    splits = generated[1] if which == "canonical" else shuffled
    for question_type in QUESTION_TYPES:
        letters = Counter(
            record.answer for record in every_record(splits) if record.question_type == question_type
        )
        assert len(set(letters.values())) == 1, (question_type, letters)


# --- images ---------------------------------------------------------------------------------------


def test_modalities_differ_strongly_in_mean_colour_in_every_quadrant(generated):
    _, splits = generated
    by_modality: dict[str, list[np.ndarray]] = {name: [] for name in MODALITIES}
    for record in every_record(splits):
        by_modality[record.modality].append(pixels(record))
    for quadrant in range(4):
        means = {
            name: np.mean([quadrants(image)[quadrant].mean((0, 1)) for image in images], axis=0)
            for name, images in by_modality.items()
        }
        for first, second in itertools.combinations(MODALITIES, 2):
            distance = np.linalg.norm(means[first] - means[second])
            assert distance > 40, (quadrant, first, second, distance)


def test_every_answer_can_be_read_off_the_pixels(generated):
    _, splits = generated
    for record in every_record(splits):
        image = pixels(record)
        lesion, objects = colour_mask(image, LESION_COLOUR), colour_mask(image, OBJECT_COLOUR)
        answer = record.options[record.answer]
        if record.question_type == "disease_diagnosis":
            assert (lesion.sum() > 0) == (answer == "Lesion present"), record.id
        elif record.question_type == "anatomy_identification":
            areas = [part.sum() for part in quadrants(lesion)]
            assert synthetic.QUADRANT_OPTIONS[int(np.argmax(areas))] == answer, record.id
        elif record.question_type == "biological_attribute":
            assert sum(part.any() for part in quadrants(objects)) == int(answer), record.id
        elif record.question_type == "lesion_grading":
            grade = synthetic.GRADE_OPTIONS.index(answer) + 1
            radius = synthetic.LESION_RADIUS[grade] * image.shape[0]
            assert abs(lesion.sum() - np.pi * radius**2) < 0.35 * np.pi * radius**2, record.id


def test_command_line_generates_and_prints_counts(tmp_path, capsys):
    synthetic.main(["--root", str(tmp_path / "cli"), "--size", "2"])
    output = capsys.readouterr().out
    assert "80 questions" in output and "modality_recognition=2" in output
