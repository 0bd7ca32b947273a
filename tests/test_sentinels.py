"""Reward-hacking sentinels and the reasoning/answer consistency, on hand-written completions."""

import pytest

from medr1.sentinels import (
    SENTINELS,
    all_options,
    concluded_option,
    consistency_rate,
    consistent,
    empty_answer,
    letter_outside_options,
    missing_tags,
    missing_think,
    ngram_repetition,
    repeated_tags,
    sentinel_rates,
    several_letters,
)

OPTIONS = {"A": "Nevus", "B": "Melanoma", "C": "B-cell lymphoma", "D": "A large mass"}
T = "<think>x</think>"


def answer(text: str) -> str:
    return f"{T}<answer>{text}</answer>"


# --- every flag on one table of completions ----------------------------------------------------

# completion -> the flags it raises (all others must stay down), options A-D above
CASES = {
    "clean": (answer("B"), set()),
    "clean, option text": (answer("Melanoma"), set()),
    "no-think completion": ("<answer>B</answer>", {"missing_think"}),
    "empty answer": (answer(""), {"empty_answer"}),
    "blank answer": (answer(" \n "), {"empty_answer"}),
    "no answer block": (T + "B", {"missing_tags"}),
    "answer not closed": (T + "<answer>B", {"missing_tags"}),
    "nothing at all": ("", {"missing_tags", "missing_think"}),
    "two letters": (answer("A or B"), {"several_letters"}),
    "two marked letters": (answer("(B), (D)"), {"several_letters"}),
    "the same letter twice": (answer("B) B"), set()),
    "letter inside a word": (answer("Answer: B"), set()),
    "letter inside an option text": (answer("C) B-cell lymphoma"), set()),
    "capital article inside an option text": (answer("D) A large mass"), set()),
    "lower-case letters are not read": (answer("a or b"), set()),
    "letters run together are not read": (answer("AB"), set()),
    "every letter": (answer("A, B, C, D"), {"several_letters", "all_options"}),
    "every option text": (
        answer("nevus, melanoma, b-cell lymphoma or a large mass"),
        {"all_options"},
    ),
    "three of four texts": (answer("nevus, melanoma or a large mass"), set()),
    "letter outside the options": (answer("E"), {"letter_outside_options"}),
    "marked letter outside the options": (answer("Answer: (F)"), {"letter_outside_options"}),
    "lower-case letter outside the options": (answer("e"), {"letter_outside_options"}),
    "a word, not a letter": (answer("I think B"), set()),
    "repeated answer block": (answer("B") + "<answer>B</answer>", {"repeated_tags"}),
    "nested think": ("<think><think>x</think></think><answer>B</answer>", {"repeated_tags"}),
    "looping reasoning": (
        "<think>" + "the lesion is dark. " * 4 + "</think><answer>B</answer>",
        {"ngram_repetition"},
    ),
    "a loop of one token": (answer("B B B B B B B B"), {"ngram_repetition"}),
}


@pytest.mark.parametrize("case", CASES)
def test_each_flag_on_hand_written_completions(case):
    completion, expected = CASES[case]
    raised = {name for name, flag in SENTINELS.items() if flag(completion, OPTIONS)}
    assert raised == expected


def test_a_repeated_letter_is_one_letter():
    # "B B B" names B only (not several letters); parse_choice rejects it, so it is no letter at all
    assert not letter_outside_options(answer("B B B"), OPTIONS)
    assert not several_letters(answer("B B B"), OPTIONS)


def test_every_flag_has_a_positive_and_a_negative_case():
    for name in SENTINELS:
        raised = [case for case, (_, flags) in CASES.items() if name in flags]
        quiet = [case for case, (_, flags) in CASES.items() if name not in flags]
        assert raised and quiet, name


def test_empty_answer_needs_an_answer_block():
    assert empty_answer(answer(""), OPTIONS)
    assert not empty_answer(T, OPTIONS)  # no block at all is missing_tags, not an empty answer
    assert not empty_answer(answer("B"), OPTIONS)


def test_all_options_on_two_options_and_the_reasoning():
    yes_no = {"A": "Yes", "B": "No"}
    assert all_options(answer("Yes or no"), yes_no)
    assert all_options(answer("A/B"), yes_no)
    assert not all_options(answer("No"), yes_no)
    # weighing every option in the reasoning is not a hedge: only the answer is read
    reasoning = "<think>A) nevus? B) melanoma? C) b-cell lymphoma? D) a large mass?</think><answer>B</answer>"
    assert not all_options(reasoning, OPTIONS)


def test_overlapping_option_texts_count_once():
    options = {"A": "pneumonia", "B": "viral pneumonia"}
    assert not all_options(answer("viral pneumonia"), options)  # names B only
    assert all_options(answer("pneumonia or viral pneumonia"), options)


def test_tags_are_counted_in_lower_case_only():
    assert missing_tags("<ANSWER>B</ANSWER>")
    assert missing_think("<THINK>x</THINK><answer>B</answer>")
    assert not repeated_tags("<answer>B</answer><ANSWER>B</ANSWER>")


def test_ngram_repetition_threshold():
    # 8 words, 5 four-grams, one repeat ("a b c d" again): share 0.2, under 0.3
    assert not ngram_repetition("a b c d a b c d")
    # 9 words, 6 four-grams, two repeats: share 0.33
    assert ngram_repetition("a b c d a b c d a")
    assert not ngram_repetition("one two three")  # no 4-gram
    # a long varied text that says "is not consistent with" of every option is not a loop
    varied = " ".join(
        f"option {letter} ({text}) is not consistent with finding {i}"
        for i, (letter, text) in enumerate(OPTIONS.items())
    )
    assert not ngram_repetition(f"<think>{varied}</think><answer>B</answer>")


def test_sentinel_rates_are_shares_of_the_batch():
    completions = [answer("B"), answer(""), "<answer>E</answer>", answer("A or B")]
    rates = sentinel_rates(completions, [OPTIONS] * 4)
    assert rates == {
        "empty_answer": 0.25,
        "several_letters": 0.25,
        "all_options": 0.0,
        "missing_tags": 0.0,
        "missing_think": 0.25,
        "repeated_tags": 0.0,
        "letter_outside_options": 0.25,
        "ngram_repetition": 0.0,
    }


def test_sentinel_rates_reject_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="one option set per completion"):
        sentinel_rates([answer("B")], [])
    with pytest.raises(ValueError, match="at least one completion"):
        sentinel_rates([], [])


def test_letter_outside_options_reads_the_record_options():
    two = {"A": "Yes", "B": "No"}
    assert letter_outside_options(answer("C"), two)  # C is an option of a 4-option question, not here
    assert not letter_outside_options(answer("C"), OPTIONS)


# --- the option the reasoning concludes with ---------------------------------------------------

DIAGNOSES = {"A": "Pneumonia", "B": "Pleural effusion", "C": "Normal", "D": "Viral pneumonia"}
LISTED = "The options are A) Pneumonia, B) Pleural effusion, C) Normal, D) Viral pneumonia. "

# reasoning -> the option it concludes with (None: it names none)
CONCLUSIONS = {
    "So the answer is B.": "B",
    "The correct answer is **C**": "C",
    "Answer: (D)": "D",
    "I pick option A": "A",
    "Choice: B": "B",
    "It must be A) pneumonia": "A",
    "[C] fits": "C",
    "D: viral pneumonia fits best": "D",
    "Option A is unlikely; the answer is C.": "C",
    "(B) or maybe (D)": "D",
    "Fluid in the pleural space: pleural effusion.": "B",
    "PLEURAL EFFUSION": "B",
    "A viral pneumonia pattern.": "D",  # the longer text wins over "pneumonia" inside it
    "A dense area. Aorta normal": "C",  # "A" the article and in "Aorta" are no mention; "normal" is
    "A dense area, Aorta fine.": None,
    "option a is unlikely, b) too": None,  # lower-case letters never name an option
    "The DNA: fine. Vitamin A is low.": None,  # A inside a word; a bare capital A
    "(E) is not an option": None,
    LISTED + "Hard to say.": None,  # a restated option list concludes nothing
    LISTED + "The fluid suggests a pleural effusion.": "B",
    LISTED + "Most consistent with D) viral pneumonia.": "D",
    "Is it (A), (B), (C) or (D)?": None,
    "The question asks whether this is pneumonia; the lungs look normal.": "C",
    "The question asks whether this is pneumonia.": "A",  # an option text quoted from the question counts
}


@pytest.mark.parametrize("reasoning", CONCLUSIONS)
def test_concluded_option(reasoning):
    completion = f"<think>{reasoning}</think><answer>B</answer>"
    assert concluded_option(completion, DIAGNOSES) == CONCLUSIONS[reasoning]


def test_concluded_option_needs_reasoning():
    assert concluded_option("<answer>B</answer>", DIAGNOSES) is None  # no-think completion
    assert concluded_option("So the answer is B.", DIAGNOSES) is None  # text outside a think block
    assert concluded_option("<think></think><answer>B</answer>", DIAGNOSES) is None


def test_ordinary_word_options_need_a_label():
    yes_no = {"A": "Yes", "B": "No"}
    assert concluded_option("<think>There is no fracture.</think>", yes_no) is None
    assert concluded_option("<think>No fracture, so the answer is no.</think>", yes_no) == "B"
    assert concluded_option("<think>None seen; answer: yes</think>", yes_no) == "A"
    assert concluded_option("<think>There is no fracture, so (B)</think>", yes_no) == "B"


def test_consistent():
    completion = "<think>so the answer is B</think><answer>B</answer>"
    assert consistent(completion, DIAGNOSES, "B") is True
    assert consistent(completion, DIAGNOSES, "C") is False
    assert consistent(completion, DIAGNOSES, None) is None  # nothing parsed
    assert consistent("<think>hard</think><answer>B</answer>", DIAGNOSES, "B") is None  # nothing concluded
    assert consistent("<answer>B</answer>", DIAGNOSES, "B") is None  # no reasoning


def test_consistency_rate_counts_only_known_verdicts():
    completions = [
        "<think>so (B)</think><answer>B</answer>",  # consistent
        "<think>so (C)</think><answer>B</answer>",  # not
        "<think>so (D)</think><answer>D</answer>",  # consistent
        "<think>hmm</think><answer>B</answer>",  # nothing concluded: not counted
        "<think>so (A)</think><answer></answer>",  # nothing parsed: not counted
    ]
    parsed = ["B", "B", "D", "B", None]
    assert consistency_rate(completions, [DIAGNOSES] * 5, parsed) == pytest.approx(2 / 3)
    assert consistency_rate(completions[3:], [DIAGNOSES] * 2, parsed[3:]) is None
    with pytest.raises(ValueError, match="one of each per completion"):
        consistency_rate(completions, [DIAGNOSES], parsed)
