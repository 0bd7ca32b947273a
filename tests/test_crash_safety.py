"""A run killed while writing its outputs never leaves a file or folder that looks complete."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from medr1.grading import Prediction, write_eval_outputs
from medr1.train import save_final


def prediction(i: int) -> Prediction:
    return Prediction(
        id=f"q{i}",
        modality="ct",
        question_type="modality_recognition",
        completion="<think>x</think><answer>A</answer>",
        parsed="A",
        answer="A",
        correct=True,
        follows_format=True,
        reasoning_tokens=1,
        options={"A": "CT", "B": "MRI"},
    )


SUMMARY = {"accuracy": 1.0, "n": 2}


def test_eval_outputs_are_whole_and_the_summary_comes_last(tmp_path: Path):
    eval_dir = write_eval_outputs(tmp_path, [prediction(0), prediction(1)], SUMMARY | _tables(), "t")
    assert json.loads((eval_dir / "summary.json").read_text())["n"] == 2
    assert len((eval_dir / "predictions.jsonl").read_text().splitlines()) == 2
    assert sorted(p.name for p in eval_dir.iterdir()) == ["predictions.jsonl", "summary.json"]  # no temp file


def test_a_write_that_fails_midway_leaves_no_summary_even_of_an_earlier_evaluation(tmp_path: Path):
    write_eval_outputs(tmp_path, [prediction(0)], SUMMARY | _tables(), "first")
    broken = SUMMARY | _tables() | {"not json": object()}  # json.dumps fails while writing the summary
    with pytest.raises(TypeError):
        write_eval_outputs(tmp_path, [prediction(0), prediction(1)], broken, "second")
    eval_dir = tmp_path / "eval"
    assert not (eval_dir / "summary.json").exists()  # the first evaluation's summary is not left beside
    assert sorted(p.name for p in eval_dir.iterdir()) == ["predictions.jsonl"]  # new predictions


def test_final_folder_appears_only_when_whole(tmp_path: Path):
    class Model:
        def save_pretrained(self, folder):
            (Path(folder) / "config.json").write_text("{}")
            raise OSError("disk full")  # killed halfway through the weights

    module = SimpleNamespace(model=Model(), processor=SimpleNamespace(save_pretrained=lambda folder: None))
    with pytest.raises(OSError, match="disk full"):
        save_final(module, tmp_path)
    assert list((tmp_path / "checkpoints").iterdir()) == []  # no final/, no temporary folder

    class Whole(Model):
        def save_pretrained(self, folder):
            (Path(folder) / "config.json").write_text("{}")

    module.model = Whole()
    final = save_final(module, tmp_path)
    assert final == tmp_path / "checkpoints" / "final" and (final / "config.json").exists()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["final"]


def _tables() -> dict:
    return {
        "by_modality": {"ct": 1.0},
        "by_question_type": {"modality_recognition": 1.0},
        "format_rate": 1.0,
        "reasoning_length": 1.0,
    }
