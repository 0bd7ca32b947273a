"""Reading a model's completion: its <think> and <answer> blocks, its format, and the chosen letter.

Who reads a completion how (they do NOT all agree; see FIDELITY-AUDIT.md §1 and §6):
- rewards (medr1.rl.rewards): the `default` and `lenient` presets read the answer block with
  `parse_choice` (as the `robust` eval parser does, but never the whole completion); `strict` wants
  exactly one option letter; `medr1`, `medr1_nothink` and `medvlm_r1` follow the papers' own reward
  code, which accepts and rejects other answers than any eval parser (`c` earns MedVLM-R1's reward
  but is wrong in its evaluation);
- evaluation (medr1.grading.grade) reads the chosen letter with one of PARSERS, `eval.parser`:
  `robust` (`extract_choice`, medr1's own and the most lenient), `medr1` (Med-R1's eval regex) or
  `medvlm_r1` (MedVLM-R1's eval regex). The format checks below are shared by rewards and eval.

Three readings of the format:
- `follows_format` is Med-R1's (and MedVLM-R1's) check, a full match of
  `<think>.*?</think>\\s*<answer>.*?</answer>` with DOTALL. It accepts an empty answer, a nested
  think block and a second answer block, because `.*?` may swallow tags.
- `follows_nothink_format` is Med-R1's no-think run's check, a full match of
  `\\s*<answer>.*?</answer>` with DOTALL: the same loopholes, and text (a think block too) before
  the first answer block or after the last fails it.
- `follows_strict_format` is medr1's own: one think block, then one answer block, only whitespace
  around and between them, no tag inside either block, and neither block empty.

Tags are matched in lower case only (`<answer>`, as the prompt asks); MedVLM-R1's accuracy reward
matches them case-insensitively and does so itself.

`parse_choice` decides which option an answer names. What it accepts, given options A-D:
- a letter alone: `B`, `(B)`, `[B]`, `B)`, `B.`, `B:`; a lower-case letter only when nothing else
  follows it (`b`, `(b)`), since `a` is also an English word;
- a letter with punctuation and more text: `B) text`, `B. text`, `B: text`, `(B) text`; the text
  need not be the option's text, but if it is exactly another option's text, or it names another
  letter (`(A) or (B)`, `B. A`), the answer is ambiguous and rejected;
- a letter, a space and exactly that option's text (`B nevus`);
- the exact text of one option, ignoring case, repeated spaces and a final full stop;
- any of these after a label: `Answer: B`, `The answer is B`, `Option B`, `Correct answer: (B)`;
- surrounding `*`, backticks and quotes are ignored (`**B**`).
It rejects (returns None): empty text, two letters (`A or B`, `A, B`, `A/B`, `AB`), a letter that
is not an option (`E` with options A-D), free text that is not an option's text, and a text that
names one option by its text and another by its letter (`B` when option A's text is "B").
"""

from __future__ import annotations

import re
from collections.abc import Callable

# Med-R1's format regex; use with re.DOTALL and a full match (or use THINK_ANSWER_REGEX).
THINK_ANSWER_PATTERN = r"<think>.*?</think>\s*<answer>.*?</answer>"
THINK_ANSWER_REGEX = re.compile(THINK_ANSWER_PATTERN, re.DOTALL)
# Med-R1's no-think format regex (grpo_vqa_nothink.py); use with re.DOTALL and a full match.
ANSWER_ONLY_PATTERN = r"\s*<answer>.*?</answer>"
ANSWER_ONLY_REGEX = re.compile(ANSWER_ONLY_PATTERN, re.DOTALL)

_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_STRICT_LAYOUT = re.compile(
    r"\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL
)
_ANY_TAG = re.compile(r"</?\s*(?:think|answer)\s*>", re.IGNORECASE)


# --- blocks ---------------------------------------------------------------------------------


def answer_text(completion: str) -> str | None:
    """Content of the first `<answer>...</answer>` block, unstripped; None if there is none."""
    match = _ANSWER_BLOCK.search(completion)
    return match.group(1) if match else None


def think_text(completion: str) -> str | None:
    """Content of the first `<think>...</think>` block, unstripped; None if there is none."""
    match = _THINK_BLOCK.search(completion)
    return match.group(1) if match else None


def reasoning_text(completion: str) -> str:
    """The reasoning (first think block) stripped, or "" when the completion has none."""
    return (think_text(completion) or "").strip()


# --- format ---------------------------------------------------------------------------------


def follows_format(completion: str) -> bool:
    """Med-R1's format check: the whole completion matches THINK_ANSWER_PATTERN."""
    return THINK_ANSWER_REGEX.fullmatch(completion) is not None


def follows_nothink_format(completion: str) -> bool:
    """Med-R1's no-think format check: the whole completion matches ANSWER_ONLY_PATTERN."""
    return ANSWER_ONLY_REGEX.fullmatch(completion) is not None


def follows_strict_format(completion: str) -> bool:
    """One non-empty think block, then one non-empty answer block, only whitespace elsewhere."""
    match = _STRICT_LAYOUT.fullmatch(completion)
    if match is None:
        return False
    think, answer = match.group("think"), match.group("answer")
    if _ANY_TAG.search(think) or _ANY_TAG.search(answer):  # nested or repeated blocks
        return False
    return bool(think.strip()) and bool(answer.strip())


# --- choice ---------------------------------------------------------------------------------

_LABEL = r"(?:(?:the\s+)?(?:correct\s+|final\s+)?(?:answer|option|choice)(?:\s+is)?\s*:?\s*)"
_CHOICE_HEAD = re.compile(
    rf"""^{_LABEL}?
    (?:\((?P<paren>[A-Za-z])\) | \[(?P<bracket>[A-Za-z])\] | (?P<bare>[A-Za-z])(?![A-Za-z]))
    (?P<separator>\s*[.:)]|\s+|)
    (?P<rest>.*)$""",
    re.IGNORECASE | re.DOTALL | re.VERBOSE,
)
# Text after the chosen letter that names another letter: "or B", "and (C)", "B.", "(C) ...", "C) ...".
_HEDGE = re.compile(r"^(?:or|and|,|/|&)\s*[(\[]?(?P<letter>[A-J])\b")
_LEADING_LETTER = re.compile(r"^[(\[]?(?P<letter>[A-J])(?:[)\]]|[.:]?\s*$)")
_MARKED_LETTER = re.compile(r"\((?P<letter>[A-J])\)|(?<![A-Za-z])(?P<closing>[A-J])\)")


def normalize_option_text(text: str) -> str:
    """Lower case, single spaces, no final full stop: how option texts are compared."""
    return " ".join(text.casefold().split()).rstrip(".").strip()


def _option_with_text(text: str, options: dict[str, str]) -> str | None:
    """The one letter whose option text equals `text` (normalized); None if none or several."""
    wanted = normalize_option_text(text)
    letters = [letter for letter, option in options.items() if normalize_option_text(option) == wanted]
    return letters[0] if len(letters) == 1 and wanted else None


def _names_another_letter(rest: str, letter: str, options: dict[str, str]) -> bool:
    """Whether the text after the chosen letter points at a different option letter."""
    others = set(options) - {letter}
    found = [m.group("letter") for m in (_HEDGE.match(rest), _LEADING_LETTER.match(rest)) if m]
    found += [m.group("letter") or m.group("closing") for m in _MARKED_LETTER.finditer(rest)]
    return any(other in others for other in found)


def parse_choice(text: str | None, options: dict[str, str]) -> str | None:
    """The option letter `text` names, or None if it names none, several, or one not in `options`.

    The accepted forms are listed in the module docstring. A text that is one option's text and, read
    as a letter, another option (`B` when option A's text is "B") names two options: None.
    """
    if text is None:
        return None
    text = text.strip().strip("*`'\"").strip()
    if not text:
        return None
    by_text, by_letter = _option_with_text(text, options), _letter_choice(text, options)
    if by_text is not None and by_letter is not None and by_text != by_letter:
        return None
    return by_text if by_text is not None else by_letter


def _letter_choice(text: str, options: dict[str, str]) -> str | None:
    """The option letter `text` (stripped, not empty) writes, in one of the accepted letter forms."""
    match = _CHOICE_HEAD.match(text)
    if match is None:
        return None
    written = match.group("paren") or match.group("bracket") or match.group("bare")
    letter, separator, rest = written.upper(), match.group("separator"), match.group("rest").strip()
    if letter not in options:
        return None
    if not rest:
        return letter
    if _option_with_text(rest, options) == letter:  # "B nevus", "b) nevus"
        return letter
    if written.islower() or separator == "":  # "a nevus", "A, B"
        return None
    if separator.strip() == "" and match.group("bare"):  # "A or B", "I think B"
        return None
    if _option_with_text(rest, options) is not None:  # "B) <option C's text>"
        return None
    if _names_another_letter(rest, letter, options):  # "(A) or (B)", "B. A"
        return None
    return letter


def extract_choice(completion: str, options: dict[str, str]) -> str | None:
    """The letter a completion chooses: the `robust` evaluation parser (medr1's own).

    Reads the first answer block when there is one (and nothing else, even if it is unparseable);
    otherwise the whole completion, so a model that answers `B` without tags is still graded.
    Format compliance is reported separately (follows_format / follows_strict_format).
    """
    answer = answer_text(completion)
    return parse_choice(answer if answer is not None else completion, options)


# --- evaluation parsers ---------------------------------------------------------------------
# Each is fn(completion, options) -> the chosen answer or None; correct iff it equals the answer
# letter. Selected by `eval.parser`.

Parser = Callable[[str, dict[str, str]], str | None]

# Med-R1, src/eval_vqa/test_qwen2vl_vqa.py (extract_option_answer): re.search, no flags.
MEDR1_EVAL_REGEX = re.compile(r"<answer>\s*(\w+)\s*</answer>")
# MedVLM-R1, src/eval/test_qwen2vl_med.py (extract_letter_answer, the "complex" prompt): re.search.
MEDVLM_R1_EVAL_REGEX = re.compile(r"<answer>\s*([A-Z])\s*</answer>")


def medr1_eval_parse(completion: str, options: dict[str, str]) -> str | None:
    """Med-R1's evaluation: the first `<answer> word </answer>` anywhere (re.search), else None.

    Returns the captured word as written (`C`, but also `c` or `CT`, which then never equal the
    answer letter). An unparseable first block is skipped for a later one that matches. Options are
    not read. Departure: Med-R1's no-think and zero-shot eval scripts compare the raw output with
    the letter instead; this parser is its think-run script's, used here for every prompt.
    """
    match = MEDR1_EVAL_REGEX.search(completion)
    return match.group(1) if match else None


def medvlm_r1_eval_parse(completion: str, options: dict[str, str]) -> str | None:
    """MedVLM-R1's evaluation: the first `<answer> X </answer>` with one upper-case letter, else None.

    Options are not read, so a letter that is not an option (`Z`) is returned (and is wrong).
    Departure: MedVLM-R1's "simple" prompt compares the raw output instead; this is its "complex"
    (think) prompt's parser, used here for every prompt.
    """
    match = MEDVLM_R1_EVAL_REGEX.search(completion)
    return match.group(1) if match else None


PARSERS: dict[str, Parser] = {
    "robust": extract_choice,
    "medr1": medr1_eval_parse,
    "medvlm_r1": medvlm_r1_eval_parse,
}


def get_parser(name: str) -> Parser:
    """The evaluation parser called `name` (a key of PARSERS)."""
    if name not in PARSERS:
        from medr1.errors import ConfigError  # (answers.py imports nothing else of medr1)

        raise ConfigError(
            f"unknown evaluation parser {name!r}; set eval.parser (or --parser) to one of {sorted(PARSERS)}"
        )
    return PARSERS[name]
