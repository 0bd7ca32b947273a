"""Reward functions on tricky completions, and the reward presets built from conf/reward/*.yaml."""

import math
import random
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import medr1.rl.rewards as rewards
from medr1.errors import ConfigError
from medr1.rl.rewards import (
    build_reward,
    lenient_format_reward,
    medr1_accuracy_reward,
    medr1_format_reward,
    medr1_nothink_format_reward,
    medvlm_r1_accuracy_reward,
    reasoning_length_reward,
    robust_accuracy_reward,
    strict_accuracy_reward,
    strict_format_reward,
)

REWARD_CONF = Path(__file__).resolve().parents[1] / "conf" / "reward"
OPTIONS = {"A": "Nevus", "B": "Melanoma", "C": "Seborrheic keratosis", "D": "Dermatofibroma"}
SOLUTION = "B"
T = "<think>x</think>"

FUNCTIONS = {
    "medr1_format": medr1_format_reward,
    "medr1_accuracy": medr1_accuracy_reward,
    "medvlm_accuracy": medvlm_r1_accuracy_reward,
    "strict_format": strict_format_reward,
    "strict_accuracy": strict_accuracy_reward,
    "robust_accuracy": robust_accuracy_reward,
    "lenient_format": lenient_format_reward,
}

# completion -> expected score of each function above, in order; solution B, options A-D.
#                                                      medr1   medr1  medvlm strict strict robust lenient
#                                                      format  acc    acc    format acc    acc    format
CASES = {
    "correct": (T + "<answer>B</answer>", (1, 1, 1, 1, 1, 1, 1)),
    "incorrect": (T + "<answer>C</answer>", (1, 0, 0, 1, 0, 0, 1)),
    "padded correct": (T + "<answer> B </answer>", (1, 1, 1, 1, 1, 1, 1)),
    "lowercase letter": (T + "<answer>b</answer>", (1, 0, 1, 1, 0, 1, 1)),
    "(B)": (T + "<answer>(B)</answer>", (1, 0, 0.5, 1, 0, 1, 1)),
    "B)": (T + "<answer>B)</answer>", (1, 0, 0.5, 1, 0, 1, 1)),
    "B.": (T + "<answer>B.</answer>", (1, 0, 0.5, 1, 0, 1, 1)),
    # MedVLM-R1 counts every A-J character: B, E, A in "B: MELANOMA" -> 0
    "B: text": (T + "<answer>B: Melanoma</answer>", (1, 0, 0, 1, 0, 1, 1)),
    "B) 42": (T + "<answer>B) 42</answer>", (1, 0, 0.5, 1, 0, 1, 1)),
    "option text": (T + "<answer>melanoma</answer>", (1, 0, 0, 1, 0, 1, 1)),
    "Option B": (T + "<answer>Option B</answer>", (1, 0, 0, 1, 0, 1, 1)),  # I and B
    "empty answer": (T + "<answer></answer>", (1, 0, 0, 0, 0, 0, 0.75)),
    "blank answer": (T + "<answer> </answer>", (1, 0, 0, 0, 0, 0, 0.75)),
    "two answer blocks": (T + "<answer>B</answer><answer>C</answer>", (1, 1, 1, 0, 1, 1, 1)),
    "two answer blocks, wrong first": (T + "<answer>C</answer><answer>B</answer>", (1, 0, 0, 0, 0, 0, 1)),
    "nested think": ("<think><think>x</think></think><answer>B</answer>", (1, 1, 1, 0, 1, 1, 0.75)),
    "text before tags": ("Sure. " + T + "<answer>B</answer>", (0, 1, 1, 0, 1, 1, 0.75)),
    "text after tags": (T + "<answer>B</answer> Hope it helps", (0, 1, 1, 0, 1, 1, 0.75)),
    "missing think": ("<answer>B</answer>", (0, 1, 1, 0, 1, 1, 0.5)),
    "answer before think": ("<answer>B</answer>" + T, (0, 1, 1, 0, 1, 1, 0.75)),
    "A or B": (T + "<answer>A or B</answer>", (1, 0, 0, 1, 0, 0, 1)),
    "A, B": (T + "<answer>A, B</answer>", (1, 0, 0, 1, 0, 0, 1)),
    "B twice": (T + "<answer>B B</answer>", (1, 0, 0, 1, 0, 0, 1)),
    "not an option": (T + "<answer>E</answer>", (1, 0, 0, 1, 0, 0, 1)),
    "uppercase tags": (T + "<ANSWER>B</ANSWER>", (0, 0, 1, 0, 0, 0, 0.25)),
    "mixed-case tags": (T + "<Answer>B</answer>", (0, 0, 1, 0, 0, 0, 0.25)),
    "newlines between": (T + "\n\n<answer>\nB\n</answer>", (1, 1, 1, 1, 1, 1, 1)),
    "trailing newline": (T + "<answer>B</answer>\n", (0, 1, 1, 1, 1, 1, 1)),
    "no tags at all": ("B", (0, 0, 0, 0, 0, 0, 0)),
    "empty completion": ("", (0, 0, 0, 0, 0, 0, 0)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("function_name", list(FUNCTIONS))
def test_reward_table(case, function_name):
    completion, expected = CASES[case]
    expected_score = expected[list(FUNCTIONS).index(function_name)]
    scores = FUNCTIONS[function_name]([completion], solution=[SOLUTION], options=[OPTIONS])
    assert scores == [expected_score], f"{function_name} on {case!r}: {completion!r}"


def test_rewards_score_a_batch_and_ignore_unknown_fields():
    completions = [T + "<answer>B</answer>", T + "<answer>A</answer>", T + "<answer>A</answer>"]
    fields = {
        "solution": ["B", "B", "A"],
        "options": [OPTIONS] * 3,
        "modality": ["ct"] * 3,
        "question_type": ["disease_diagnosis"] * 3,
        "id": ["1", "2", "3"],
        "something_new": [None] * 3,
    }
    for function in FUNCTIONS.values():
        assert len(function(completions, **fields)) == 3
    assert robust_accuracy_reward(completions, **fields) == [1.0, 0.0, 1.0]


def test_solution_in_med_r1_answer_tags():
    completion = T + "<answer>C</answer>"
    for function in (
        medr1_accuracy_reward,
        medvlm_r1_accuracy_reward,
        strict_accuracy_reward,
        robust_accuracy_reward,
    ):
        assert function([completion], solution=["<answer> C </answer>"], options=[OPTIONS]) == [1.0]


def test_missing_field_is_named():
    with pytest.raises(KeyError, match="options"):
        robust_accuracy_reward([T + "<answer>B</answer>"], solution=["B"])
    with pytest.raises(ValueError, match="solution"):
        medr1_accuracy_reward(["a", "b"], solution=["B"])


def test_robust_accuracy_letters_beyond_d():
    options = {letter: f"option {letter}" for letter in "ABCDEFGHIJ"}
    scores = robust_accuracy_reward([T + "<answer>J</answer>"], solution=["J"], options=[options])
    assert scores == [1.0]


# --- reasoning length -----------------------------------------------------------------------


def test_reasoning_length_reward():
    completions = [
        "<think>one two</think><answer>B</answer>",  # 2 of 4 words
        "<think>one two three four five</think><answer>B</answer>",  # capped at 1
        "<answer>B</answer>",  # no reasoning
    ]
    assert reasoning_length_reward(completions, target_words=4) == [0.5, 1.0, 0.0]


def test_reasoning_length_reward_penalises_padding():
    nine_words = "<think>" + " ".join(["w"] * 9) + "</think>"
    twelve_words = "<think>" + " ".join(["w"] * 12) + "</think>"
    scores = reasoning_length_reward([nine_words, twelve_words], target_words=4, max_words=6)
    assert scores == [0.5, 0.0]  # 1 - (9 - 6) / 6, then floored at 0


def test_reasoning_length_reward_rejects_bad_settings():
    with pytest.raises(ValueError, match="target_words"):
        reasoning_length_reward(["x"], target_words=0)
    with pytest.raises(ValueError, match="max_words"):
        reasoning_length_reward(["x"], target_words=10, max_words=5)


# --- presets --------------------------------------------------------------------------------

# --- Med-R1's no-think format reward (grpo_vqa_nothink.py: fullmatch of \s*<answer>.*?</answer>, DOTALL) ---

NOTHINK_FORMAT_CASES = {
    "padded letter": ("<answer> C </answer>", 1.0),
    "leading whitespace": ("  \n<answer>C</answer>", 1.0),
    "think block first": ("<think>x</think><answer>C</answer>", 0.0),
    "trailing text": ("<answer>C</answer> trailing", 0.0),
    "trailing newline": ("<answer>C</answer>\n", 0.0),  # only leading whitespace is allowed
    "two blocks (lazy .*? swallows)": ("<answer>C</answer><answer>D</answer>", 1.0),
    "no tags": ("C", 0.0),
    "empty completion": ("", 0.0),
    "line breaks inside": ("<answer>\nC\n</answer>", 1.0),
    "empty answer": ("<answer></answer>", 1.0),
    "upper-case tags": ("<ANSWER>C</ANSWER>", 0.0),
    "think inside the answer": ("<answer><think>x</think>C</answer>", 1.0),
}


@pytest.mark.parametrize("case", list(NOTHINK_FORMAT_CASES))
def test_medr1_nothink_format_reward_values(case):
    completion, expected = NOTHINK_FORMAT_CASES[case]
    assert medr1_nothink_format_reward([completion], solution=["C"]) == [expected]


def _upstream_nothink_format(content: str) -> float:
    """Med-R1's nothink format_reward for one completion, written from its source."""
    return 1.0 if re.fullmatch(r"\s*<answer>.*?</answer>", content, re.DOTALL) else 0.0


def test_medr1_nothink_format_reward_matches_upstream_on_random_strings():
    fragments = [
        "<answer>",
        "</answer>",
        "<think>",
        "</think>",
        "<ANSWER>",
        "<answer",
        "answer>",
        "</",
        " ",
        "  ",
        "\n",
        "\t",
        "C",
        "c",
        "D",
        "(C)",
        "x",
        "<",
        ">",
        "/",
    ]
    heads = ["", " ", "\n  ", "x", "<think>r</think>", "<answer>", "<answer>", " <answer>", "\n<answer>"]
    tails = ["", "</answer>", "</answer>", "</answer> ", "</answer>\n", "</answer><answer>D</answer>", "x"]
    rng = random.Random(0)
    completions = [
        rng.choice(heads)
        + "".join(rng.choice(fragments) for _ in range(rng.randint(0, 6)))
        + rng.choice(tails)
        for _ in range(4000)
    ]
    expected = [_upstream_nothink_format(completion) for completion in completions]
    assert medr1_nothink_format_reward(completions) == expected
    assert 500 < sum(expected) < 3500  # the strings exercise both outcomes


def test_medr1_nothink_preset_rewards_an_answer_only_completion():
    model = build_reward(OmegaConf.load(REWARD_CONF / "medr1_nothink.yaml"))
    batch = ["<answer> B </answer>", T + "<answer>B</answer>", "<answer>C</answer>", "B"]
    # format: 1, 0, 1, 0; Med-R1 accuracy: 1, 1, 0, 0 (no answer block scores 0 here, see rewards.py)
    assert model(batch, **_fields(len(batch))).total == [2.0, 1.0, 1.0, 0.0]


PRESET_PARTS = {
    "default": ("strict_format_reward", "robust_accuracy_reward"),
    "strict": ("strict_format_reward", "strict_accuracy_reward"),
    "lenient": ("lenient_format_reward", "robust_accuracy_reward"),
    "medr1": ("medr1_format_reward", "medr1_accuracy_reward"),
    "medr1_nothink": ("medr1_nothink_format_reward", "medr1_accuracy_reward"),
    "medvlm_r1": ("medr1_format_reward", "medvlm_r1_accuracy_reward"),
}
BATCH = [
    T + "<answer>B</answer>",
    T + "<answer>(B)</answer>",
    "Sure. " + T + "<answer>B</answer>",
    T + "<answer></answer>",
    "<answer>C</answer>",
]


def _fields(count):
    return {"solution": [SOLUTION] * count, "options": [OPTIONS] * count, "modality": ["ct"] * count}


@pytest.mark.parametrize("preset", list(PRESET_PARTS))
def test_preset_files_build_and_weight_their_parts(preset):
    path = REWARD_CONF / f"{preset}.yaml"
    assert path.read_text().startswith(f"# {preset}:"), "first line must say what the preset is"
    cfg = OmegaConf.load(path)
    assert cfg.name == preset
    cfg.weights.format, cfg.weights.accuracy = 0.5, 2.0
    model = build_reward(cfg)
    assert list(model.functions) == ["format", "accuracy"]

    output = model(BATCH, **_fields(len(BATCH)))
    format_function, accuracy_function = (getattr(rewards, name) for name in PRESET_PARTS[preset])
    expected_format = format_function(BATCH, **_fields(len(BATCH)))
    expected_accuracy = accuracy_function(BATCH, **_fields(len(BATCH)))
    assert output.parts == {"format": expected_format, "accuracy": expected_accuracy}
    assert output.total == pytest.approx(
        [0.5 * f + 2.0 * a for f, a in zip(expected_format, expected_accuracy, strict=True)]
    )


def test_preset_totals_by_hand():
    medvlm = build_reward(OmegaConf.load(REWARD_CONF / "medvlm_r1.yaml"))
    # format: 1, 1, 0, 1, 0; accuracy: 1, 0.5, 1, 0, 0
    assert medvlm(BATCH, **_fields(len(BATCH))).total == [2.0, 1.5, 1.0, 1.0, 0.0]
    default = build_reward(OmegaConf.load(REWARD_CONF / "default.yaml"))
    # strict format: 1, 1, 0, 0, 0; robust accuracy: 1, 1, 1, 0, 0
    assert default(BATCH, **_fields(len(BATCH))).total == [2.0, 2.0, 1.0, 0.0, 0.0]


def test_zero_weight_part_is_computed_but_adds_nothing():
    cfg = OmegaConf.load(REWARD_CONF / "default.yaml")
    cfg.weights.format = 0.0
    output = build_reward(cfg)(BATCH, **_fields(len(BATCH)))
    assert output.parts["format"] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert output.total == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_extra_part_from_target_with_arguments():
    cfg = OmegaConf.load(REWARD_CONF / "default.yaml")
    cfg.functions.length = {
        "_target_": "medr1.rl.rewards.reasoning_length_reward",
        "_partial_": True,
        "target_words": 2,
    }
    cfg.weights.length = 0.5
    output = build_reward(cfg)(["<think>one</think><answer>B</answer>"], **_fields(1))
    assert output.parts["length"] == [0.5]
    assert output.total == [1.0 + 1.0 + 0.25]


def test_plain_callables_and_dotted_paths():
    model = build_reward(
        {
            "name": "custom",
            "functions": {
                "ones": lambda completions, **fields: [1.0] * len(completions),
                "format": "medr1.rl.rewards.medr1_format_reward",
            },
            "weights": {"ones": 3.0, "format": 1.0},
        }
    )
    assert model(["<think>x</think><answer>B</answer>", "B"]).total == [4.0, 3.0]


def test_weight_without_function_names_preset_and_key():
    cfg = OmegaConf.load(REWARD_CONF / "strict.yaml")
    cfg.weights.length = 1.0
    with pytest.raises(ValueError, match=r"'strict'.*length"):
        build_reward(cfg)


def test_function_without_weight_names_preset_and_key():
    cfg = OmegaConf.load(REWARD_CONF / "medr1.yaml")
    del cfg.weights["accuracy"]
    with pytest.raises(ValueError, match=r"'medr1'.*accuracy"):
        build_reward(cfg)


def test_wrong_length_output_names_the_function():
    def too_short(completions, **fields):
        return [1.0]

    model = build_reward({"name": "broken", "functions": {"short": too_short}, "weights": {"short": 1.0}})
    with pytest.raises(ValueError, match="too_short"):
        model(["a", "b"])


def test_non_finite_output_names_the_function():
    def not_a_number(completions, **fields):
        return [math.nan] * len(completions)

    model = build_reward({"name": "broken", "functions": {"nan": not_a_number}, "weights": {"nan": 1.0}})
    with pytest.raises(ValueError, match="not_a_number"):
        model(["a"])


def test_bad_function_spec_is_explained():
    with pytest.raises(ConfigError, match="functions.bad"):
        build_reward({"name": "broken", "functions": {"bad": 42}, "weights": {"bad": 1.0}})
