"""The evaluation parsers (robust, medr1, medvlm_r1) on tricky completions, against the papers' eval regexes."""

from __future__ import annotations

import random
import re

import pytest

from medr1.answers import PARSERS, extract_choice, get_parser, medr1_eval_parse, medvlm_r1_eval_parse
from medr1.data.records import VQARecord
from medr1.grading import EvalAccumulator, grade, is_correct, regrade

# FIDELITY-AUDIT.md §1 behaviour matrix: solution C, these options.
OPTIONS = {"A": "Mammogram", "B": "PET", "C": "CT", "D": "Fluoroscopy"}
SOLUTION = "C"


def upstream_medr1(completion: str) -> str | None:
    """Med-R1 src/eval_vqa/test_qwen2vl_vqa.py extract_option_answer, written from its source."""
    match = re.search(r"<answer>\s*(\w+)\s*</answer>", completion)
    return match.group(1) if match else None


def upstream_medvlm_r1(completion: str) -> str | None:
    """MedVLM-R1 src/eval/test_qwen2vl_med.py extract_letter_answer, written from its source."""
    match = re.search(r"<answer>\s*([A-Z])\s*</answer>", completion)
    return match.group(1) if match else None


class WordCounter:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}


def record(
    i: int = 0, answer: str = SOLUTION, modality: str = "ct", question_type: str = "modality_recognition"
):
    return VQARecord(
        id=str(i),
        images=("x.png",),
        question="q",
        options=dict(OPTIONS),
        answer=answer,
        modality=modality,
        question_type=question_type,
        source="test",
    )


# --- registry -------------------------------------------------------------------------------


def test_registry_names_and_robust_is_extract_choice():
    assert list(PARSERS) == ["robust", "medr1", "medvlm_r1"]
    assert get_parser("robust") is extract_choice
    assert get_parser("medr1") is medr1_eval_parse and get_parser("medvlm_r1") is medvlm_r1_eval_parse


def test_unknown_parser_names_the_valid_ones():
    pattern = r"unknown evaluation parser 'medr2'.*\['medr1', 'medvlm_r1', 'robust'\]"
    with pytest.raises(ValueError, match=pattern):
        get_parser("medr2")
    with pytest.raises(ValueError, match=pattern):
        grade([record()], ["<answer>C</answer>"], WordCounter(), parser="medr2")
    with pytest.raises(ValueError, match=pattern):
        EvalAccumulator("medr2")


def test_config_default_parser_is_robust():
    from tests.helpers.config import compose_config

    assert compose_config([]).eval.parser == "robust"


# --- the behaviour matrix (FIDELITY-AUDIT.md §1) ---------------------------------------------

# completion -> (Med-R1 eval correct, MedVLM-R1 eval correct, robust (project) eval correct)
MATRIX = {
    "<think>r</think><answer> C </answer>": (True, True, True),
    "<think>r</think><answer>\nC\n</answer>": (True, True, True),
    "C": (False, False, True),
    "<answer> C </answer>": (True, True, True),
    "<think>r</think><answer>c</answer>": (False, False, True),
    "<think>r</think><answer>(C)</answer>": (False, False, True),
    "<think>r</think><answer>C) CT</answer>": (False, False, True),
    "<think>r</think><answer>CT</answer>": (False, False, True),
    "<think>r</think><answer>Answer: C</answer>": (False, False, True),
    "<think>r</think><answer>**C**</answer>": (False, False, True),
    "<think>r</think><answer></answer><answer>C</answer>": (True, True, False),
    "<think>r</think><answer>\n(C)\n</answer> <answer>C</answer>": (True, True, True),
    "<think>r</think><answer>C</answer><answer>D</answer>": (True, True, True),
    "<think>r</think><ANSWER>C</ANSWER>": (False, False, False),
    "<think>r</think><answer>C</answer> trailing": (True, True, True),
}


@pytest.mark.parametrize("completion", list(MATRIX))
def test_behaviour_matrix(completion):
    medr1, medvlm_r1, robust = MATRIX[completion]
    for parser, expected in (("medr1", medr1), ("medvlm_r1", medvlm_r1), ("robust", robust)):
        [prediction] = grade([record()], [completion], WordCounter(), parser=parser)
        assert prediction.correct is expected, parser
        assert is_correct(parser, completion, SOLUTION, OPTIONS) is expected, parser
    assert (upstream_medr1(completion) == SOLUTION) is medr1
    assert (upstream_medvlm_r1(completion) == SOLUTION) is medvlm_r1


# --- what each paper parser returns ----------------------------------------------------------

PAPER_CASES = {  # completion -> (medr1 parsed, medvlm_r1 parsed)
    "<answer>CT</answer>": ("CT", None),  # \w+ captures a word; [A-Z] wants one letter
    "<answer>c</answer>": ("c", None),
    "<answer> Z </answer>": ("Z", "Z"),  # neither reads the options
    "<answer>C D</answer>": (None, None),
    "<answer>(C)</answer><answer>B</answer>": ("B", "B"),  # re.search skips an unparseable block
    "<answer>B</answer><answer>C</answer>": ("B", "B"),
    "<answer>\tC\n\n</answer>": ("C", "C"),
    "<answer>C_1</answer>": ("C_1", None),
    "<answer>é</answer>": ("é", None),  # str patterns: \w is Unicode-aware, as upstream
    "C": (None, None),
    "": (None, None),
}


@pytest.mark.parametrize("completion", list(PAPER_CASES))
def test_paper_parsers_return_the_captured_text(completion):
    medr1, medvlm_r1 = PAPER_CASES[completion]
    assert medr1_eval_parse(completion, OPTIONS) == medr1
    assert medvlm_r1_eval_parse(completion, OPTIONS) == medvlm_r1


def test_paper_parsers_match_upstream_on_random_strings():
    fragments = [
        "<answer>",
        "</answer>",
        "<ANSWER>",
        "<think>r</think>",
        " ",
        "\n",
        "\t",
        "C",
        "c",
        "D",
        "CT",
        "(C)",
        "Z",
        "_",
        "1",
        "é",
        ".",
        "<",
        ">",
        "/",
    ]
    rng = random.Random(1)

    def some(count: int) -> str:
        return "".join(rng.choice(fragments) for _ in range(rng.randint(0, count)))

    def completion() -> str:  # mostly answer blocks with random content and surroundings
        opening = "<answer>" if rng.random() < 0.8 else ""
        closing = "</answer>" if rng.random() < 0.8 else ""
        return some(3) + opening + some(3) + closing + some(3)

    completions = [completion() for _ in range(4000)]
    medr1 = [upstream_medr1(completion) for completion in completions]
    medvlm_r1 = [upstream_medvlm_r1(completion) for completion in completions]
    assert [medr1_eval_parse(completion, OPTIONS) for completion in completions] == medr1
    assert [medvlm_r1_eval_parse(completion, OPTIONS) for completion in completions] == medvlm_r1
    assert (
        sum(value is not None for value in medr1) > 500
        and sum(value is not None for value in medvlm_r1) > 100
    )


# --- scoring and summaries with a parser -------------------------------------------------------


def test_score_keeps_a_captured_word_and_counts_it_wrong():
    records = [record(0), record(1, "A"), record(2)]
    completions = ["<answer>CT</answer>", "<answer>A</answer>", "<answer>C</answer>"]
    predictions = grade(records, completions, WordCounter(), parser="medr1")
    assert [p.parsed for p in predictions] == ["CT", "A", "C"]
    assert [p.correct for p in predictions] == [False, True, True]
    assert predictions[0].options == OPTIONS and predictions[0].to_json()["options"] == OPTIONS
    accumulator = EvalAccumulator("medr1")
    accumulator.update(predictions)  # "CT" is not a letter class: counted as no answer, not a crash
    assert accumulator.summary()["accuracy"] == pytest.approx(2 / 3)


def test_score_default_parser_is_robust():
    [prediction] = grade([record()], ["<answer>(C)</answer>"], WordCounter())
    assert prediction.parsed == "C" and prediction.correct


COMPLETIONS = [  # (modality, question type, answer, completion)
    ("ct", "modality_recognition", "C", "<think>r</think><answer>C</answer>"),
    ("ct", "modality_recognition", "C", "<think>r</think><answer>(C)</answer>"),
    ("ct", "disease_diagnosis", "C", "<think>r</think><answer>c</answer>"),
    ("mri", "disease_diagnosis", "A", "A"),
    ("mri", "modality_recognition", "B", "<answer>\nB\n</answer>"),
    ("mri", "disease_diagnosis", "D", "<answer>Fluoroscopy</answer>"),
    ("xray", "disease_diagnosis", "A", "<answer></answer><answer>A</answer>"),
    ("xray", "disease_diagnosis", "A", "<answer>B</answer>"),
    (
        "xray",
        "modality_recognition",
        "A",
        "<answer>a</answer><answer>A</answer>",
    ),  # medr1 reads "a", medvlm "A"
]


def by_hand(parser_regex: str | None) -> float:
    """Accuracy over COMPLETIONS with a regex applied directly (None: robust via extract_choice)."""
    hits = 0
    for _, _, answer, completion in COMPLETIONS:
        if parser_regex is None:
            parsed = extract_choice(completion, OPTIONS)
        else:
            match = re.search(parser_regex, completion)
            parsed = match.group(1) if match else None
        hits += parsed == answer
    return hits / len(COMPLETIONS)


@pytest.mark.parametrize("parser", list(PARSERS))
def test_summary_records_parser_and_accuracy_by_parser(parser):
    records = [
        record(i, answer, modality, qtype) for i, (modality, qtype, answer, _) in enumerate(COMPLETIONS)
    ]
    completions = [completion for *_, completion in COMPLETIONS]
    accumulator = EvalAccumulator(parser)
    predictions = grade(records, completions, WordCounter(), parser=parser)
    accumulator.update(predictions[:3])
    accumulator.update(predictions[3:])
    summary = accumulator.summary()
    expected = {
        "robust": by_hand(None),
        "medr1": by_hand(r"<answer>\s*(\w+)\s*</answer>"),
        "medvlm_r1": by_hand(r"<answer>\s*([A-Z])\s*</answer>"),
    }
    assert expected == {
        "robust": 7 / 9,
        "medr1": 3 / 9,
        "medvlm_r1": 4 / 9,
    }  # the cases tell the parsers apart
    assert summary["parser"] == parser
    assert summary["accuracy_by_parser"] == pytest.approx(expected)
    assert list(summary["accuracy_by_parser"]) == list(PARSERS)
    assert summary["accuracy"] == pytest.approx(expected[parser])
    ct = [p.correct for p in predictions if p.modality == "ct"]
    assert summary["by_modality"]["ct"] == pytest.approx(sum(ct) / len(ct))
    rows = [p.to_json() for p in predictions]
    assert regrade(rows, parser) == {
        key: pytest.approx(summary[key]) for key in ("accuracy", "n", "by_modality", "by_question_type")
    }


def test_rescore_without_options_works_for_the_paper_parsers_only():
    rows = [{"completion": c, "answer": a, "modality": m, "question_type": q} for m, q, a, c in COMPLETIONS]
    assert regrade(rows, "medr1")["accuracy"] == pytest.approx(by_hand(r"<answer>\s*(\w+)\s*</answer>"))
    assert regrade(rows, "medvlm_r1")["accuracy"] == pytest.approx(by_hand(r"<answer>\s*([A-Z])\s*</answer>"))
    with pytest.raises(ValueError, match="robust parser needs the question's options"):
        regrade(rows, "robust")
