"""`mode=eval` through run.py as a user runs it, and the evaluation maths on known completions."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from medr1.answers import extract_choice
from medr1.data.records import VQARecord
from medr1.grading import EvalAccumulator, grade
from tests.helpers.config import DEFAULT_SUMMARY_KEYS, REPO


def accuracy_by_parser_by_hand(lines: list[dict]) -> dict[str, float]:
    """Each parser's accuracy over predictions.jsonl rows, with the papers' regexes applied directly."""

    def regex(pattern: str, completion: str) -> str | None:
        match = re.search(pattern, completion)
        return match.group(1) if match else None

    read = {
        "robust": lambda row: extract_choice(row["completion"], row["options"]),
        "medr1": lambda row: regex(r"<answer>\s*(\w+)\s*</answer>", row["completion"]),
        "medvlm_r1": lambda row: regex(r"<answer>\s*([A-Z])\s*</answer>", row["completion"]),
    }
    return {
        name: sum(parse(row) == row["answer"] for row in lines) / len(lines) for name, parse in read.items()
    }


def test_run_py_eval_writes_predictions_and_summary(tmp_path, tiny_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "run.py",
            "mode=eval",
            "model=tiny",
            "data=synthetic",
            "data.source.size=5",
            "logger=none",
            f"hydra.run.dir={run_dir}",
            "eval.reuse=false",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ | {"MEDR1_CACHE": os.environ["MEDR1_CACHE"]},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert set(summary) == DEFAULT_SUMMARY_KEYS
    assert set(summary["probes"]) == {"letter_prior"}  # free: read from the main evaluation
    lines = [json.loads(line) for line in (run_dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == summary["n"] == 8 * 5 * 1  # one line per test question: 8 modalities x 5 types x 20%
    assert {"id", "modality", "question_type", "completion", "parsed", "correct"} <= set(lines[0])
    assert {"images", "option_probs", "confidence"} <= set(lines[0])
    assert all(p["images"] and (p["confidence"] is None) == (p["option_probs"] is None) for p in lines)
    # the summary is exactly what the prediction lines say
    assert summary["accuracy"] == pytest.approx(sum(p["correct"] for p in lines) / len(lines))
    for modality, accuracy in summary["by_modality"].items():
        rows = [p for p in lines if p["modality"] == modality]
        assert accuracy == pytest.approx(sum(p["correct"] for p in rows) / len(rows))
    assert summary["format_rate"] == pytest.approx(sum(p["follows_format"] for p in lines) / len(lines))
    assert summary["parser"] == "robust"  # the default eval.parser
    assert set(lines[0]["options"]) >= {"A", "B"}  # options are stored so any parser can re-read a row
    assert summary["accuracy_by_parser"] == pytest.approx(accuracy_by_parser_by_hand(lines))
    assert summary["accuracy_by_parser"]["robust"] == pytest.approx(summary["accuracy"])
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert "accuracy" in result.stdout and "modality" in result.stdout  # the readable table


def test_eval_reuses_an_identical_evaluation(tmp_path, tiny_path):
    from medr1.evaluate import evaluate
    from tests.helpers.config import compose_config

    overrides = [
        "mode=eval",
        "data.source.size=5",
        "logger=none",
        "eval.reuse=true",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"model.path={tiny_path}",
    ]
    first = evaluate(compose_config(overrides, tmp_path / "first"))
    stored = list((tmp_path / "cache" / "evaluations").iterdir())
    assert len(stored) == 1
    second = evaluate(compose_config(overrides, tmp_path / "second"))
    assert second == first
    assert (tmp_path / "second" / "eval" / "predictions.jsonl").read_text() == (
        tmp_path / "first" / "eval" / "predictions.jsonl"
    ).read_text()
    evaluate(compose_config(overrides + ["prompt=nothink"], tmp_path / "third"))
    assert len(list((tmp_path / "cache" / "evaluations").iterdir())) == 2  # a different prompt is not reused
    medr1 = evaluate(compose_config(overrides + ["eval.parser=medr1"], tmp_path / "fourth"))
    assert len(list((tmp_path / "cache" / "evaluations").iterdir())) == 3  # nor a different parser
    assert medr1["parser"] == "medr1" and first["parser"] == "robust"
    assert medr1["accuracy_by_parser"] == first["accuracy_by_parser"]  # greedy: the same completions
    assert medr1["accuracy"] == pytest.approx(medr1["accuracy_by_parser"]["medr1"])
    lines = [
        json.loads(line)
        for line in (tmp_path / "fourth" / "eval" / "predictions.jsonl").read_text().splitlines()
    ]
    assert medr1["accuracy_by_parser"] == pytest.approx(accuracy_by_parser_by_hand(lines))


def test_evaluation_key_covers_parser_prompt_and_resize(tmp_path):
    from omegaconf import open_dict

    from medr1.evaluate import evaluation_key
    from tests.helpers.config import compose_config

    base = compose_config(["mode=eval"])
    key = evaluation_key(base, "some/model")
    assert evaluation_key(compose_config(["mode=eval"]), "some/model") == key
    changed = {
        "eval.parser": compose_config(["mode=eval", "eval.parser=medvlm_r1"]),
        "prompt": compose_config(["mode=eval", "prompt=nothink"]),
        "prompt, any key": compose_config(["mode=eval", "++prompt.extra=1"]),
        "eval.prompt": compose_config(["mode=eval", "++eval.prompt=test_only_prompt"]),
        "data.resize": compose_config(["mode=eval", "++data.resize=[123,45]"]),
        "eval.probes": compose_config(["mode=eval", "eval.probes=[letter_prior,blank_image]"]),
        "eval.calibration": compose_config(["mode=eval", "eval.calibration=false"]),
    }
    for what, cfg in changed.items():
        assert evaluation_key(cfg, "some/model") != key, what
    probes = evaluation_key(
        compose_config(["mode=eval", "eval.probes=[letter_prior,blank_image]"]), "some/model"
    )
    assert (
        evaluation_key(compose_config(["mode=eval", "eval.probes=[blank_image,letter_prior]"]), "some/model")
        == probes
    )
    with open_dict(base):
        del base.eval["parser"]  # configs saved before eval.parser existed read as robust
    assert evaluation_key(base, "some/model") == key
    with pytest.raises(ValueError, match="unknown probe"):
        evaluation_key(compose_config(["mode=eval", "eval.probes=[nope]"]), "some/model")
    with pytest.raises(ValueError, match="unknown evaluation parser 'nope'"):
        evaluation_key(compose_config(["mode=eval", "eval.parser=nope"]), "some/model")


class WordCounter:
    """Stands in for a tokenizer where only token counts matter: one token per word."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}


def _record(i, modality, answer, question_type="disease_diagnosis"):
    return VQARecord(
        id=str(i),
        images=("x.png",),
        question="q",
        options={"A": "no", "B": "yes", "C": "maybe"},
        answer=answer,
        modality=modality,
        question_type=question_type,
        source="test",
    )


def test_accuracy_by_group_format_rate_and_reasoning_length():
    records = [
        _record(0, "ct", "A"),
        _record(1, "ct", "B"),
        _record(2, "mri", "C", "lesion_grading"),
        _record(3, "mri", "A", "lesion_grading"),
    ]
    completions = [
        "<think>one two three</think> <answer> A </answer>",  # correct, format, 3 tokens
        "<think>a b</think><answer>C</answer>",  # wrong, format, 2 tokens
        "C",  # correct without tags: graded, but not in format
        "<answer></answer>",  # no answer: wrong, counted (not skipped)
    ]
    predictions = grade(records, completions, WordCounter())
    assert [p.correct for p in predictions] == [True, False, True, False]
    assert [p.parsed for p in predictions] == ["A", "C", "C", None]
    accumulator = EvalAccumulator()
    accumulator.update(predictions[:2])
    accumulator.update(predictions[2:])
    summary = accumulator.summary()
    assert summary["n"] == 4
    assert summary["accuracy"] == pytest.approx(0.5)
    assert summary["by_modality"] == {"ct": pytest.approx(0.5), "mri": pytest.approx(0.5)}
    assert summary["by_question_type"] == {
        "disease_diagnosis": pytest.approx(0.5),
        "lesion_grading": pytest.approx(0.5),
    }
    assert summary["format_rate"] == pytest.approx(0.5)
    assert summary["reasoning_length"] == pytest.approx((3 + 2 + 0 + 0) / 4)
    with pytest.raises(ValueError, match="empty"):
        EvalAccumulator().summary()
