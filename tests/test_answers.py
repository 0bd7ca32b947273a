"""Reading completions: blocks, the format checks, and which option an answer names."""

import re

import pytest

from medr1.answers import (
    ANSWER_ONLY_PATTERN,
    THINK_ANSWER_PATTERN,
    answer_text,
    extract_choice,
    follows_format,
    follows_nothink_format,
    follows_strict_format,
    parse_choice,
    reasoning_text,
    think_text,
)

OPTIONS = {"A": "Nevus", "B": "Melanoma", "C": "Seborrheic keratosis", "D": "A large mass"}


# --- blocks ---------------------------------------------------------------------------------


def test_answer_and_think_text_take_the_first_block_unstripped():
    completion = "<think> look </think>\n<answer> B </answer><answer>C</answer>"
    assert answer_text(completion) == " B "
    assert think_text(completion) == " look "
    assert reasoning_text(completion) == "look"


def test_blocks_missing():
    assert answer_text("B") is None
    assert think_text("<answer>B</answer>") is None
    assert reasoning_text("<answer>B</answer>") == ""


def test_answer_block_spans_lines():
    assert answer_text("<answer>\nB\n</answer>") == "\nB\n"


# --- format ---------------------------------------------------------------------------------

# completion, Med-R1 format, strict format
FORMAT_CASES = [
    ("<think>x</think><answer>B</answer>", True, True),
    ("<think>x</think>\n\n  <answer>B</answer>", True, True),
    ("  <think>x</think><answer>B</answer>\n", False, True),  # Med-R1: no leading space allowed
    ("<think>x</think><answer></answer>", True, False),  # empty answer
    ("<think>x</think><answer> </answer>", True, False),
    ("<think></think><answer>B</answer>", True, False),  # empty reasoning
    ("<think>x</think><answer>B</answer><answer>C</answer>", True, False),  # two answer blocks
    ("<think><think>x</think></think><answer>B</answer>", True, False),  # nested think
    ("<think>x</think>so<answer>B</answer>", False, False),  # text between
    ("Sure! <think>x</think><answer>B</answer>", False, False),  # text before
    ("<think>x</think><answer>B</answer> done", False, False),  # text after
    ("<answer>B</answer>", False, False),  # missing think
    ("<answer>B</answer><think>x</think>", False, False),  # wrong order
    ("<THINK>x</THINK><ANSWER>B</ANSWER>", False, False),  # tags are lower case
    ("<think>a\nb</think>\n<answer>B</answer>", True, True),  # DOTALL
]


@pytest.mark.parametrize("completion, medr1, strict", FORMAT_CASES)
def test_format_checks(completion, medr1, strict):
    assert follows_format(completion) is medr1
    assert follows_strict_format(completion) is strict


def test_pattern_constant_is_med_r1s():
    assert THINK_ANSWER_PATTERN == r"<think>.*?</think>\s*<answer>.*?</answer>"
    assert ANSWER_ONLY_PATTERN == r"\s*<answer>.*?</answer>"  # grpo_vqa_nothink.py


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<answer>B</answer>", True),
        ("\n <answer>B</answer>", True),  # leading whitespace only
        ("<answer>B</answer>\n", False),
        ("<answer></answer>", True),  # empty answer: the regex allows it
        ("<answer>B</answer><answer>C</answer>", True),  # lazy .*? swallows the second block
        ("<think>x</think><answer>B</answer>", False),
        ("B", False),
    ],
)
def test_nothink_format(completion, expected):
    assert follows_nothink_format(completion) is expected
    assert re.fullmatch(THINK_ANSWER_PATTERN, "<think>a\nb</think><answer>B</answer>", re.DOTALL)


# --- parse_choice ---------------------------------------------------------------------------

PARSE_CASES = [
    ("B", "B"),
    (" B \n", "B"),
    ("(B)", "B"),
    ("[B]", "B"),
    ("B)", "B"),
    ("B.", "B"),
    ("B:", "B"),
    ("B: Melanoma", "B"),
    ("B) melanoma", "B"),
    ("B. because of the pigment network", "B"),  # punctuation, then free text
    ("(B) melanoma", "B"),
    ("B melanoma", "B"),  # space, then exactly B's text
    ("melanoma", "B"),  # option text, any case
    ("  MELANOMA. ", "B"),
    ("seborrheic   keratosis", "C"),
    ("A large mass", "D"),  # option text starting with a word-like letter
    ("D) A large mass", "D"),
    ("Answer: B", "B"),
    ("The answer is B", "B"),
    ("Option B", "B"),
    ("Correct answer: (B)", "B"),
    ("**B**", "B"),
    ("b", "B"),  # lower case alone: accepted
    ("(b)", "B"),
    ("b) melanoma", "B"),  # lower case with its own option text
    ("b) something", None),  # lower case with other text: could be a word
    ("a nevus", "A"),  # "a" + exactly A's text: consistent either way
    ("a melanoma", None),  # article or letter A? with B's text: rejected
    ("", None),
    ("   ", None),
    ("A or B", None),
    ("A, B", None),
    ("A/B", None),
    ("A and B", None),
    ("AB", None),
    ("(A) or (B)", None),
    ("B. A", None),
    ("B) Nevus", None),  # B with A's text: contradictory
    ("B nevus", None),
    ("E", None),  # not an option
    ("(E)", None),
    ("I think B", None),
    ("B because", None),  # bare letter + space + free text
    ("melanoma or nevus", None),
    ("cancer", None),
]


@pytest.mark.parametrize("text, expected", PARSE_CASES)
def test_parse_choice(text, expected):
    assert parse_choice(text, OPTIONS) == expected


def test_parse_choice_none_input():
    assert parse_choice(None, OPTIONS) is None


def test_parse_choice_duplicate_option_text_is_ambiguous():
    assert parse_choice("yes", {"A": "Yes", "B": "yes"}) is None
    assert parse_choice("B", {"A": "Yes", "B": "yes"}) == "B"


def test_parse_choice_letters_beyond_d():
    options = {letter: f"option {letter}" for letter in "ABCDEFGHIJ"}
    assert parse_choice("J", options) == "J"
    assert parse_choice("J", OPTIONS) is None


# --- extract_choice -------------------------------------------------------------------------


def test_extract_choice_reads_answer_block():
    assert extract_choice("<think>A is wrong</think><answer>C</answer>", OPTIONS) == "C"


def test_extract_choice_without_tags_reads_whole_completion():
    assert extract_choice("B", OPTIONS) == "B"
    assert extract_choice(" melanoma\n", OPTIONS) == "B"


def test_extract_choice_unparseable_answer_block_does_not_fall_back():
    assert extract_choice("B <answer>not sure</answer>", OPTIONS) is None
    assert extract_choice("<think>x</think><answer></answer>", OPTIONS) is None
