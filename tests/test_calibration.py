"""Calibration: the option-letter probabilities at the answer position, checked against each model
family run by hand on the exact sequence; the answer letter located as each parser reads it; and
the expected calibration error on hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from medr1.answers import get_parser
from medr1.calibration import (
    add_option_probs,
    calibration_summary,
    expected_calibration_error,
    letter_offset,
    letter_token_ids,
    letter_token_index,
)
from medr1.data.batches import PromptCollator
from medr1.grading import Prediction, evaluate_batches, grade
from medr1.models.checkpoints import resolve_model_path
from medr1.models.loading import load_model, load_processor
from medr1.rollout import Sampler, greedy
from tests.helpers.config import compose_config


def load(name: str):
    cfg = compose_config([f"model={name}"])
    path = resolve_model_path(cfg.model, cfg.paths.cache_dir)
    return load_model(cfg.model, path).eval(), load_processor(cfg.model, path)


@pytest.fixture(scope="module")
def tokenizer():
    return load("tiny")[1].tokenizer


def one_per_modality(records):
    chosen = {}
    for record in records:
        chosen.setdefault(record.modality, record)
    return list(chosen.values())


# --- option probabilities against the model run by hand ------------------------------------------


@pytest.mark.parametrize("family", ["tiny", "tiny_llava"])  # M-RoPE (shared-prompt family) and 1-D positions
def test_option_probs_equal_the_model_run_by_hand_on_the_exact_sequence(family, synthetic_splits):
    model, processor = load(family)
    tokenizer = processor.tokenizer
    records = one_per_modality(synthetic_splits.test)
    batch = PromptCollator(processor, "think")(records)
    assert batch.model_inputs["attention_mask"].min() == 0, "the batch must hold left padding"
    ids, mask, texts = Sampler.for_model(model, processor).complete(model, batch, greedy(40))
    predictions = grade(records, texts, tokenizer)
    add_option_probs(model, batch, ids, mask, predictions, tokenizer, "robust")
    answer_open = tokenizer("<answer>", add_special_tokens=False)["input_ids"]
    checked = 0
    for row, (record, prediction) in enumerate(zip(records, predictions, strict=True)):
        if prediction.option_probs is None:
            continue
        tokens = ids[row][mask[row].bool()].tolist()
        # the answer letter, found here without medr1.calibration: the token after "<answer>"
        start = next(i for i in range(len(tokens)) if tokens[i : i + len(answer_open)] == answer_open)
        letter_at = start + len(answer_open)
        assert tokenizer.decode(tokens[letter_at]) == " " + prediction.parsed
        # transformers on this one prompt, unpadded, with its own positions, then the completion so far
        single = PromptCollator(processor, "think")([record]).model_inputs
        assert single["attention_mask"].min() == 1
        input_ids = torch.cat([single["input_ids"], torch.tensor([tokens[:letter_at]])], dim=1)
        inputs = {k: v for k, v in single.items() if k in ("pixel_values", "image_grid_thw")}
        if "mm_token_type_ids" in single:  # which tokens are image tokens: none of the completion's
            inputs["mm_token_type_ids"] = torch.nn.functional.pad(single["mm_token_type_ids"], (0, letter_at))
        logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **inputs).logits[0, -1]
        letter_ids = [tokenizer.convert_tokens_to_ids("Ġ" + letter) for letter in record.options]
        expected = logits[letter_ids].float().softmax(-1).tolist()
        assert list(prediction.option_probs) == list(record.options)
        assert list(prediction.option_probs.values()) == pytest.approx(expected, abs=1e-5)
        assert sum(prediction.option_probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction.confidence == prediction.option_probs[prediction.parsed]
        checked += 1
    assert checked >= len(records) - 1, [p.completion for p in predictions]  # the tiny models write " X"

    # evaluate_batches(calibration=True) fills the same numbers and summarises them
    again, summary = evaluate_batches(
        model, [batch], Sampler.for_model(model, processor), greedy(40), progress=False, calibration=True
    )
    assert [p.option_probs for p in again] == [p.option_probs for p in predictions]
    rated = [p for p in again if p.confidence is not None]
    assert summary["calibration"]["n"] == len(rated) == checked
    assert (
        summary["calibration"]["ece"]
        == expected_calibration_error([p.confidence for p in rated], [p.correct for p in rated])["ece"]
    )
    assert set(summary["calibration"]["by_modality"]) == {r.modality for r in records}


# --- where the answer letter is -----------------------------------------------------------------

OPTIONS = {"A": "nevus", "B": "melanoma", "C": "CT"}


@pytest.mark.parametrize(
    "parser, completion, offset",
    [
        ("robust", "<think>x</think>\n<answer> B </answer>", 26),
        ("medr1", "<think>x</think>\n<answer> B </answer>", 26),
        ("medvlm_r1", "<think>x</think>\n<answer> B </answer>", 26),
        ("robust", "<answer>Answer: (B)</answer>", 17),  # after a label and a bracket
        ("robust", "<answer>**b**</answer>", 10),  # after the stripped markdown; lower case
        ("robust", "The answer is C", 14),  # no answer block: the whole completion
        ("robust", "<answer> C) CT</answer>", 9),
        ("robust", "<answer>melanoma</answer>", None),  # read from the option's text: no letter written
        ("robust", "<answer>CT</answer>", None),  # the text of C, not the letter
        ("medr1", "<answer>CT</answer>", None),  # Med-R1 reads the word "CT": not a letter
        ("robust", "<answer>A or B</answer>", None),  # nothing parsed
        ("medvlm_r1", "<answer> A </answer> <answer> B </answer>", 9),  # the first block, as the regex
    ],
)
def test_letter_offset_is_where_the_parser_read_the_letter(parser, completion, offset):
    parsed = get_parser(parser)(completion, OPTIONS)
    assert letter_offset(completion, OPTIONS, parser, parsed) == offset
    if offset is not None:
        assert completion[offset].upper() == parsed


def test_letter_offset_when_an_option_text_is_a_letter():
    # "A" is option A's text and A's letter: one option, written where it stands
    same = {"A": "A", "B": "x"}
    assert (
        letter_offset("<answer>A</answer>", same, "robust", get_parser("robust")("<answer>A</answer>", same))
        == 8
    )
    # "B" is option A's text but option B's letter: whatever the parser reads, B's letter is not A's position
    other = {"A": "B", "B": "x"}
    assert letter_offset("<answer>B</answer>", other, "robust", "A") is None


def test_letter_token_index_maps_characters_to_the_letter_token(tokenizer):
    text = "<think>é ü 中 x</think>\n<answer> B </answer>"  # multi-byte characters before the letter
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    found = letter_token_index(tokenizer, ids, text, text.index(" B ") + 1)
    assert found is not None and tokenizer.convert_ids_to_tokens(ids[found]) == "ĠB"
    # a model may emit "(C" (one token of the tiny vocabulary): the letter has no token of its own
    ids = tokenizer.convert_tokens_to_ids(["<answer", ">", "(C", ")", "</", "answer", ">"])
    merged = tokenizer.decode(ids)
    assert merged == "<answer>(C)</answer>" and get_parser("robust")(merged, OPTIONS) == "C"
    assert letter_token_index(tokenizer, ids, merged, merged.index("C")) is None
    split = tokenizer(merged, add_special_tokens=False)["input_ids"]  # "(", "C", ")": it has
    assert tokenizer.decode(split[letter_token_index(tokenizer, split, merged, merged.index("C"))]) == "C"


def test_letter_token_ids_keep_the_emitted_form(tokenizer):
    vocab = tokenizer.get_vocab()
    spaced = letter_token_ids(tokenizer, vocab["ĠB"], ["A", "B", "C", "D"])
    assert spaced == {letter: vocab["Ġ" + letter] for letter in "ABCD"}
    bare = letter_token_ids(tokenizer, vocab["B"], ["A", "B", "C"])
    assert bare == {letter: vocab[letter] for letter in "ABC"}
    lower = letter_token_ids(tokenizer, vocab["b"], ["A", "B"])
    assert lower == {"A": vocab["a"], "B": vocab["b"]}  # keyed by the option letter
    assert letter_token_ids(tokenizer, vocab["Ġb"], ["A", "B"]) == {"A": vocab["Ġa"], "B": vocab["Ġb"]}
    missing = next(letter for letter in "cdefghij" if "Ġ" + letter not in vocab)  # " c" or so is no token
    assert letter_token_ids(tokenizer, vocab["Ġb"], ["A", "B", missing.upper()]) is None
    assert letter_token_ids(tokenizer, vocab["(C"], ["A", "B", "C"]) is None


# --- expected calibration error -------------------------------------------------------------------


def test_ece_on_hand_computed_examples():
    result = expected_calibration_error([0.95, 0.95, 0.55, 0.55, 0.15], [True, False, True, True, False])
    # bin 9: confidence .95, accuracy .5; bin 5: .55 vs 1; bin 1: .15 vs 0
    assert result["ece"] == pytest.approx(2 / 5 * 0.45 + 2 / 5 * 0.45 + 1 / 5 * 0.15)
    assert result["n"] == 5
    assert [b["count"] for b in result["bins"]] == [0, 1, 0, 0, 0, 2, 0, 0, 0, 2]
    assert result["bins"][9] == {"low": 0.9, "high": 1.0, "count": 2, "confidence": 0.95, "accuracy": 0.5}
    assert result["bins"][0] == {"low": 0.0, "high": 0.1, "count": 0, "confidence": 0.0, "accuracy": 0.0}
    assert [b["low"] for b in result["bins"]] == pytest.approx([i / 10 for i in range(10)])

    perfect = expected_calibration_error([0.5, 0.5, 1.0, 1.0], [True, False, True, True])
    assert perfect["ece"] == 0.0  # 1.0 falls in the last bin, 0.5 in [0.5, 0.6)
    assert [b["count"] for b in perfect["bins"]] == [0, 0, 0, 0, 0, 2, 0, 0, 0, 2]

    edges = expected_calibration_error([0.0, 0.3, 0.7], [False, False, True])
    assert [b["count"] for b in edges["bins"]] == [1, 0, 0, 1, 0, 0, 0, 1, 0, 0]
    assert edges["ece"] == pytest.approx((0.0 + 0.3 + 0.3) / 3)

    empty = expected_calibration_error([], [])
    assert empty["ece"] is None and empty["n"] == 0 and len(empty["bins"]) == 10
    with pytest.raises(ValueError, match="not a probability"):
        expected_calibration_error([1.5], [True])


def _prediction(modality: str, confidence: float | None, correct: bool) -> Prediction:
    return Prediction(
        id="x",
        modality=modality,
        question_type="disease_diagnosis",
        completion="",
        parsed="A" if confidence is not None else None,
        answer="A" if correct else "B",
        correct=correct,
        follows_format=True,
        reasoning_tokens=0,
        options={"A": "a", "B": "b"},
        option_probs=None if confidence is None else {"A": confidence, "B": 1 - confidence},
        confidence=confidence,
    )


def test_calibration_summary_per_modality_leaves_out_rows_without_a_confidence():
    predictions = [
        _prediction("ct", 0.95, True),
        _prediction("ct", 0.65, False),
        _prediction("mri", 0.35, True),
        _prediction("mri", None, False),  # no letter position: not rated
        _prediction("oct", None, False),
    ]
    summary = calibration_summary(predictions)
    assert summary["n"] == 3
    assert summary["ece"] == pytest.approx((0.05 + 0.65 + 0.65) / 3)
    assert summary["by_modality"]["ct"]["ece"] == pytest.approx((0.05 + 0.65) / 2)
    assert summary["by_modality"]["mri"]["n"] == 1
    assert summary["by_modality"]["mri"]["ece"] == pytest.approx(0.65)
    assert summary["by_modality"]["oct"] == {
        "ece": None,
        "n": 0,
        "bins": summary["by_modality"]["oct"]["bins"],
    }
