"""Reward functions for multiple-choice answers, and the weighted reward model built from config.

A reward function is a plain function `fn(completions: list[str], **fields) -> list[float]`. The
fields are the batch's record columns, one value per completion: `solution` (correct letter),
`options` (letter -> text), `modality`, `question_type`, `id`, ... Every function accepts and
ignores the fields it does not use. A preset in `conf/reward/*.yaml` names its functions (part
name -> `_target_`) and their weights; `build_reward` turns it into a `RewardModel`.

The paper rewards, and where medr1 departs from the released code:
- `medr1_format_reward` is Med-R1's and MedVLM-R1's format reward, unchanged.
- `medr1_nothink_format_reward` is Med-R1's no-think run's format reward, unchanged
  (`src/r1-v/src/open_r1/grpo_vqa_nothink.py`: a full match of `\\s*<answer>.*?</answer>`, DOTALL);
  that run keeps the think run's accuracy reward (preset `medr1_nothink`).
- `medr1_accuracy_reward`: Med-R1's code (R1-V's) first tries math_verify on the whole completion,
  then compares the first `<answer>` content (regex without DOTALL, so an answer with a line break
  inside is not found) or, when there is no answer block, the WHOLE completion, stripped, with the
  solution. Here: the first answer block (DOTALL) stripped == the solution letter, case-sensitive;
  no answer block scores 0 and math_verify is not used (it has nothing to add for letters).
- `medvlm_r1_accuracy_reward` follows MedVLM-R1's code exactly (see its docstring), including its
  quirk that every character A-J counts as a letter, inside words too.
Sources read: MedVLM-R1's `src/open-r1-multimodal/src/open_r1/grpo.py` (JZPeterPan/MedVLM-R1) and
Med-R1's `src/r1-v/src/open_r1/grpo_vqa.py` (in a public fork of Yuxiang-Lai117/Med-R1).
medr1's own rewards (`strict_*`, `robust_accuracy_reward`, `lenient_format_reward`,
`reasoning_length_reward`) close the loopholes those leave open: an empty or hedged answer, a
letter that is not an option, text outside the tags.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medr1.answers import (
    answer_text,
    follows_format,
    follows_nothink_format,
    follows_strict_format,
    parse_choice,
    reasoning_text,
    think_text,
)
from medr1.errors import ConfigError

RewardFunction = Callable[..., list[float]]

_MEDVLM_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_ANY_BLOCK = re.compile(r"<think>.*?</think>|<answer>.*?</answer>", re.DOTALL)


# --- helpers --------------------------------------------------------------------------------


def _column(fields: Mapping[str, Any], name: str, count: int, reward_name: str) -> Sequence:
    """The record column `name`, checked to hold one value per completion."""
    if name not in fields:
        raise KeyError(f"{reward_name} needs the batch field {name!r}; got fields {sorted(fields)}")
    values = fields[name]
    if len(values) != count:
        raise ValueError(f"{reward_name}: field {name!r} has {len(values)} values for {count} completions")
    return values


def solution_letter(solution: str) -> str:
    """The correct letter from a solution written `B`, ` B ` or `<answer> B </answer>`."""
    inner = answer_text(solution)
    return (inner if inner is not None else solution).strip()


# --- the papers' rewards ----------------------------------------------------------------------


def medr1_format_reward(completions: list[str], **fields: Any) -> list[float]:
    """Med-R1: 1.0 iff the completion fully matches `<think>.*?</think>\\s*<answer>.*?</answer>`."""
    return [1.0 if follows_format(completion) else 0.0 for completion in completions]


def medr1_nothink_format_reward(completions: list[str], **fields: Any) -> list[float]:
    """Med-R1's no-think run: 1.0 iff the completion fully matches `\\s*<answer>.*?</answer>` (DOTALL).

    As upstream, lazy `.*?` may swallow tags: `<answer>C</answer><answer>D</answer>` scores 1, and
    so does an empty answer block; a think block before the answer or text after it scores 0.
    """
    return [1.0 if follows_nothink_format(completion) else 0.0 for completion in completions]


def medr1_accuracy_reward(completions: list[str], **fields: Any) -> list[float]:
    """Med-R1: 1.0 iff the first answer block, stripped, equals the solution letter (case-sensitive)."""
    solutions = _column(fields, "solution", len(completions), "medr1_accuracy_reward")
    rewards = []
    for completion, solution in zip(completions, solutions, strict=True):
        answer = answer_text(completion)
        rewards.append(1.0 if answer is not None and answer.strip() == solution_letter(solution) else 0.0)
    return rewards


def medvlm_r1_single_score(completion: str, solution: str) -> float:
    """MedVLM-R1's accuracy score of one completion, as its released code computes it.

    - The first `<answer>...</answer>` block, tag matched case-insensitively; none -> 0.
    - Its content stripped and upper-cased; empty -> 0.
    - Every character A-J in it counts as a letter, also inside words ("OPTION B" holds I and B).
      Exactly one such character, equal to the solution (upper-cased, spaces removed): 1.0 if it is
      the whole content ("B" or "b"), 0.5 if anything else is there ("(B)", "B.", "B) 42").
    - Anything else (no letter, a wrong letter, two letters, the letter twice) -> 0.
    """
    match = _MEDVLM_ANSWER_BLOCK.search(completion)
    answer = match.group(1).strip() if match else ""
    correct = re.sub(r"\s+", "", solution_letter(solution).upper())
    letters = re.findall(r"[A-J]", answer.upper())
    if len(letters) != 1 or letters[0] != correct:
        return 0.0
    return 1.0 if answer.upper() == correct else 0.5


def medvlm_r1_accuracy_reward(completions: list[str], **fields: Any) -> list[float]:
    """MedVLM-R1: 1.0 for the bare correct letter, 0.5 with extra text, else 0 (medvlm_r1_single_score)."""
    solutions = _column(fields, "solution", len(completions), "medvlm_r1_accuracy_reward")
    return [medvlm_r1_single_score(c, s) for c, s in zip(completions, solutions, strict=True)]


# --- medr1's rewards ------------------------------------------------------------------------


def strict_format_reward(completions: list[str], **fields: Any) -> list[float]:
    """1.0 iff one non-empty think block, then one non-empty answer block, nothing else."""
    return [1.0 if follows_strict_format(completion) else 0.0 for completion in completions]


def strict_accuracy_reward(completions: list[str], **fields: Any) -> list[float]:
    """1.0 iff the first answer block, stripped, is exactly one upper-case option letter, the correct one."""
    count = len(completions)
    solutions = _column(fields, "solution", count, "strict_accuracy_reward")
    options = _column(fields, "options", count, "strict_accuracy_reward")
    rewards = []
    for completion, solution, choices in zip(completions, solutions, options, strict=True):
        answer = (answer_text(completion) or "").strip()
        rewards.append(1.0 if answer in choices and answer == solution_letter(solution) else 0.0)
    return rewards


def robust_accuracy_reward(completions: list[str], **fields: Any) -> list[float]:
    """1.0 iff `parse_choice` reads the correct letter from the first answer block; no block -> 0.

    Empty answers, hedges ("A or B") and letters that are not options parse to None and score 0.
    """
    count = len(completions)
    solutions = _column(fields, "solution", count, "robust_accuracy_reward")
    options = _column(fields, "options", count, "robust_accuracy_reward")
    rewards = []
    for completion, solution, choices in zip(completions, solutions, options, strict=True):
        choice = parse_choice(answer_text(completion), choices)
        rewards.append(1.0 if choice is not None and choice == solution_letter(solution) else 0.0)
    return rewards


def lenient_format_reward(completions: list[str], **fields: Any) -> list[float]:
    """Partial credit for the format, 0.25 for each of:

    - a think block is present;
    - an answer block with non-blank content is present;
    - the first think block closes before the first answer block opens;
    - at least one block, and nothing but whitespace outside the think and answer blocks.
    """
    return [_lenient_format_score(completion) for completion in completions]


def _lenient_format_score(completion: str) -> float:
    answer = answer_text(completion)
    has_think, has_answer = think_text(completion) is not None, answer is not None
    think_first = has_think and has_answer and completion.find("</think>") < completion.find("<answer>")
    answered = has_answer and bool(answer.strip())
    nothing_outside = (has_think or has_answer) and _ANY_BLOCK.sub("", completion).strip() == ""
    return 0.25 * (has_think + answered + think_first + nothing_outside)


def reasoning_length_reward(
    completions: list[str], *, target_words: int = 50, max_words: int | None = None, **fields: Any
) -> list[float]:
    """Rewards reasoning up to `target_words` words: min(1, words / target_words), in [0, 1].

    With `max_words`, reasoning longer than that loses credit linearly, reaching 0 at twice
    `max_words`; this discourages padding. No think block scores 0.
    """
    if target_words <= 0:
        raise ConfigError(f"reasoning_length_reward: target_words must be positive, got {target_words}")
    if max_words is not None and max_words < target_words:
        raise ConfigError(
            f"reasoning_length_reward: max_words={max_words} is below target_words={target_words}"
        )
    scores = []
    for completion in completions:
        words = len(reasoning_text(completion).split())
        score = min(1.0, words / target_words)
        if max_words is not None and words > max_words:
            score = max(0.0, 1.0 - (words - max_words) / max_words)
        scores.append(score)
    return scores


# --- the weighted reward model --------------------------------------------------------------


@dataclass
class RewardOutput:
    """Scores of one batch of completions."""

    total: list[float]  # [B*G] weighted sum of the parts
    parts: dict[str, list[float]] = field(default_factory=dict)  # part name -> [B*G] unweighted scores


@dataclass
class RewardModel:
    """A weighted sum of reward functions; a part with weight 0 is computed and logged but adds nothing."""

    name: str
    functions: dict[str, RewardFunction]
    weights: dict[str, float]

    def __call__(self, completions: list[str], **fields: Any) -> RewardOutput:
        parts = {part: self._score_part(part, completions, fields) for part in self.functions}
        total = [
            sum(self.weights[part] * parts[part][index] for part in parts)
            for index in range(len(completions))
        ]
        return RewardOutput(total=total, parts=parts)

    def _score_part(self, part: str, completions: list[str], fields: dict[str, Any]) -> list[float]:
        function = self.functions[part]
        scores = function(completions, **fields)
        where = f"reward preset {self.name!r}, part {part!r} ({_function_name(function)})"
        if len(scores) != len(completions):
            raise ValueError(f"{where} returned {len(scores)} scores for {len(completions)} completions")
        scores = [float(score) for score in scores]
        bad = [score for score in scores if not math.isfinite(score)]
        if bad:
            raise ValueError(f"{where} returned non-finite scores {bad[:3]}; rewards must be finite floats")
        return scores


def _function_name(function: Callable) -> str:
    inner = getattr(function, "func", function)  # functools.partial from `_partial_: true`
    return f"{getattr(inner, '__module__', '?')}.{getattr(inner, '__qualname__', repr(inner))}"


def _build_function(spec: Any, preset: str, part: str) -> RewardFunction:
    """A callable from a `_target_` mapping, a dotted path, or a callable."""
    if callable(spec):
        return spec
    from hydra.utils import get_method, instantiate

    if isinstance(spec, str):
        return get_method(spec)
    if isinstance(spec, Mapping) or hasattr(spec, "_target_"):
        function = instantiate(spec)
        if callable(function):
            return function
    raise ConfigError(
        f"reward preset {preset!r}: functions.{part} must be a callable, a dotted path, or a "
        f"`_target_` mapping with `_partial_: true` that yields a callable; got {spec!r}"
    )


def build_reward(cfg: Any) -> RewardModel:
    """A RewardModel from the `reward` config group (DictConfig or dict: name, functions, weights)."""
    name = str(cfg.get("name", "<unnamed>"))
    functions_cfg, weights_cfg = cfg.get("functions") or {}, cfg.get("weights") or {}
    if not functions_cfg:
        raise ConfigError(
            f"reward preset {name!r} has no functions; add `functions: {{part: {{_target_: ...}}}}`"
        )
    missing_weight = [part for part in functions_cfg if part not in weights_cfg]
    missing_function = [part for part in weights_cfg if part not in functions_cfg]
    if missing_weight:
        raise ConfigError(
            f"reward preset {name!r}: functions {missing_weight} have no weight; add them under `weights`"
        )
    if missing_function:
        raise ConfigError(
            f"reward preset {name!r}: weights {missing_function} have no function; add them under `functions`"
        )
    functions = {str(part): _build_function(spec, name, str(part)) for part, spec in functions_cfg.items()}
    weights = {}
    for part in functions:
        weight = float(weights_cfg[part])
        if not math.isfinite(weight):
            raise ConfigError(f"reward preset {name!r}: weights.{part} = {weight} is not finite")
        weights[part] = weight
    return RewardModel(name=name, functions=functions, weights=weights)
