"""Reward-hacking sentinels: cheap rule-based flags on one completion, and their rates over a batch.

A reward that reads the answer block leniently, or a policy collapsing onto one pattern, shows up
in these flags long before it shows up in accuracy. Each flag is a pure function
`fn(completion, options) -> bool` (options: letter -> text); `sentinel_rates` gives the share of a
batch's completions that raise each one. Tags are matched in lower case only, as in
medr1.answers; "the answer" is the content of the first `<answer>...</answer>` block
(`answer_text`), and a completion without one raises none of the answer flags (it raises
`missing_tags` instead).

The flags (examples in each function's docstring, options A-D):
- `empty_answer`: an answer block is present and holds only whitespace.
- `several_letters`: the answer names two or more different option letters.
- `all_options`: the answer names every option, by letter or by text (a hedge).
- `missing_tags`: `<answer>` or `</answer>` is absent.
- `missing_think`: `<think>` or `</think>` is absent. Kept apart from `missing_tags` because the
  no-think prompt does not ask for reasoning: there this rate is 1 by design.
- `repeated_tags`: one of the four tags occurs more than once.
- `letter_outside_options`: the answer names one letter, and it is not an option (`E` of A-D).
- `ngram_repetition`: more than 30% of the completion's word 4-grams repeat an earlier one.

And the reasoning/answer consistency: `concluded_option` (the option the `<think>` text ends on)
against the parsed answer (`consistent`, `consistency_rate`).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from functools import lru_cache

from medr1.answers import answer_text, normalize_option_text, parse_choice, reasoning_text

THINK_TAGS = ("<think>", "</think>")
ANSWER_TAGS = ("<answer>", "</answer>")
NGRAM_SIZE = 4  # word n-grams for ngram_repetition
REPEATED_NGRAM_SHARE = (
    0.3  # ngram_repetition: share of n-grams that repeat an earlier one, above which it fires
)

# A capital letter standing alone: not part of a word, a number, "B-cell" or "A's".
_STANDALONE_CAPITAL = re.compile(r"(?<![A-Za-z0-9'’-])[A-Z](?![A-Za-z0-9'’-])")
_WORD = re.compile(r"\w+")

# What names an option in reasoning. A label ("option", "the answer is", "choice:") before a capital
# letter, or a letter marked as an option label: "(A)", "[A]", "A)", "A:". A bare "A" is never a
# mention: it is also the English article.
_LABEL = r"\b(?i:answer|option|choice)s?\b(?:\s+(?i:is|would\s+be|should\s+be|must\s+be|will\s+be))?\s*:?\s*[*\"'`]*"
_LETTER_MENTION = re.compile(
    r"(?<![A-Za-z0-9])[(\[](?P<enclosed>[A-Z])[)\]]"
    r"|(?<![A-Za-z0-9(\[])(?P<closed>[A-Z])[):]"
    rf"|{_LABEL}(?P<labelled>[A-Z])(?![A-Za-z0-9])"
)
# Option texts that are ordinary words of reasoning ("no evidence of"): named only after a label.
_ORDINARY_WORDS = frozenset({"yes", "no", "not", "none", "both", "neither", "either", "all", "other"})
# Between two options of a restated option list: punctuation, a lone letter ("B."), "or", "and".
_CONNECTIVE = re.compile(r"\b(?:or|and)\b", re.IGNORECASE)
_TWO_LETTERS = re.compile(r"[A-Za-z]{2}")

Mention = tuple[int, int, str]  # start, end, option letter


# --- answer flags -----------------------------------------------------------------------------


def empty_answer(completion: str, options: dict[str, str]) -> bool:
    """An answer block is present and blank.

    >>> empty_answer("<think>x</think><answer> </answer>", {"A": "CT", "B": "MRI"})
    True
    >>> empty_answer("<think>x</think>", {"A": "CT", "B": "MRI"})  # no block: missing_tags
    False
    """
    answer = answer_text(completion)
    return answer is not None and not answer.strip()


def several_letters(completion: str, options: dict[str, str]) -> bool:
    """The answer names two or more different option letters, each a standalone capital.

    Option texts are blanked first, so `A) B-cell lymphoma` or a text holding a capital is one letter.
    Letters run together (`AB`) and lower-case letters are not read: `AB` could be a word.

    >>> several_letters("<answer>A or B</answer>", {"A": "CT", "B": "MRI", "C": "PET"})
    True
    >>> several_letters("<answer>(A), (C)</answer>", {"A": "CT", "B": "MRI", "C": "PET"})
    True
    >>> several_letters("<answer>Answer: B</answer>", {"A": "CT", "B": "MRI", "C": "PET"})
    False
    """
    answer = answer_text(completion)
    return answer is not None and len(_answer_letters(answer, options)) >= 2


def all_options(completion: str, options: dict[str, str]) -> bool:
    """The answer names every option: all their letters, or all their texts (a hedge).

    Only the answer is read: reasoning that weighs every option in turn is not a hedge.

    >>> all_options("<answer>A, B, C</answer>", {"A": "CT", "B": "MRI", "C": "PET"})
    True
    >>> all_options("<answer>ct or mri or pet</answer>", {"A": "CT", "B": "MRI", "C": "PET"})
    True
    >>> all_options("<answer>A or B</answer>", {"A": "CT", "B": "MRI", "C": "PET"})
    False
    """
    answer = answer_text(completion)
    if answer is None or len(options) < 2:
        return False
    by_text = {letter for _, _, letter in _text_mentions(answer, options)}
    return set(_answer_letters(answer, options)) == set(options) or by_text == set(options)


def letter_outside_options(completion: str, options: dict[str, str]) -> bool:
    """The answer names one letter (in any form parse_choice reads: `E`, `(E)`, `E.`, `Answer: E`,
    a lone `e`), and it is not one of the options.

    >>> letter_outside_options("<answer>E</answer>", {"A": "CT", "B": "MRI", "C": "PET", "D": "US"})
    True
    >>> letter_outside_options("<answer>D</answer>", {"A": "CT", "B": "MRI", "C": "PET", "D": "US"})
    False
    """
    answer = answer_text(completion)
    if answer is None:
        return False
    letter = parse_choice(answer, _every_letter(tuple(options.items())))
    return letter is not None and letter not in options


def _answer_letters(answer: str, options: dict[str, str]) -> list[str]:
    """The different option letters standing alone in `answer` once the option texts are blanked."""
    blanked = list(answer)
    for start, end, _ in _text_mentions(answer, options):
        blanked[start:end] = " " * (end - start)
    letters = [m.group() for m in _STANDALONE_CAPITAL.finditer("".join(blanked)) if m.group() in options]
    return list(dict.fromkeys(letters))


@lru_cache(maxsize=1024)
def _every_letter(options: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """The options plus every other capital letter, with a text no answer equals: parse_choice then
    reads any single letter, in or out of the options."""
    known = dict(options)
    return {letter: known.get(letter, "\0") for letter in string.ascii_uppercase}


# --- tag and repetition flags -------------------------------------------------------------------


def missing_tags(completion: str, options: dict[str, str] | None = None) -> bool:
    """`<answer>` or `</answer>` is absent (the think tags are `missing_think`'s).

    >>> missing_tags("<think>x</think><answer>B")
    True
    >>> missing_tags("<answer>B</answer>")  # a no-think completion is complete
    False
    """
    return any(tag not in completion for tag in ANSWER_TAGS)


def missing_think(completion: str, options: dict[str, str] | None = None) -> bool:
    """`<think>` or `</think>` is absent; always true under the no-think prompt.

    >>> missing_think("<answer>B</answer>")
    True
    >>> missing_think("<think>x</think><answer>B</answer>")
    False
    """
    return any(tag not in completion for tag in THINK_TAGS)


def repeated_tags(completion: str, options: dict[str, str] | None = None) -> bool:
    """One of `<think>`, `</think>`, `<answer>`, `</answer>` occurs more than once.

    >>> repeated_tags("<think>x</think><answer>B</answer><answer>C</answer>")
    True
    >>> repeated_tags("<think>x</think><answer>B</answer>")
    False
    """
    return any(completion.count(tag) > 1 for tag in THINK_TAGS + ANSWER_TAGS)


def ngram_repetition(completion: str, options: dict[str, str] | None = None) -> bool:
    """More than REPEATED_NGRAM_SHARE (30%) of the completion's word 4-grams repeat an earlier one.

    Words are runs of letters and digits outside the four tags, compared in lower case. A share,
    not a count, so that long reasoning which says "is not consistent with" of every option is not
    flagged, while a looping completion (the same sentence over and over) is, whatever its length.
    Fewer than 4 words: never.

    >>> ngram_repetition("<think>no mass seen. no mass seen. no mass seen.</think><answer>A</answer>")
    True
    >>> ngram_repetition("<think>a mass in the left lobe, so a tumour</think><answer>A</answer>")
    False
    """
    for tag in THINK_TAGS + ANSWER_TAGS:
        completion = completion.replace(tag, " ")
    words = _WORD.findall(completion.casefold())
    grams = list(zip(*(words[i:] for i in range(NGRAM_SIZE)), strict=False))
    if not grams:
        return False
    return 1 - len(set(grams)) / len(grams) > REPEATED_NGRAM_SHARE


# --- reasoning / answer consistency ----------------------------------------------------------------


def concluded_option(completion: str, options: dict[str, str]) -> str | None:
    """The option the reasoning (first `<think>` block) ends on: the last option it names; None if
    it names none or there is no think block.

    What names an option:
    - its letter, a capital, marked as a label: `(A)`, `[A]`, `A)`, `A:`, or after a label word:
      `option A`, `choice: A`, `the answer is A`, `answer would be **A**`. A bare `A` (the article),
      `A` inside a word and a lower-case `a` never do;
    - its text, as a whole phrase, any case (`Melanoma` names "melanoma"); the longest text wins
      where two overlap ("viral pneumonia" names that option, not "pneumonia"). A text that is an
      ordinary word (yes, no, none, both, ...) counts only after a label (`the answer is no`).
    A restated option list (every option once, in order, with only punctuation, "or", "and" or lone
    letters between them, e.g. "A) CT, B) MRI or C) PET") is skipped: it names no conclusion.

    >>> concluded_option("<think>A lesion; so the answer is (B).</think><answer>B</answer>",
    ...                  {"A": "CT", "B": "MRI"})
    'B'
    >>> concluded_option("<think>Bright fluid, typical of mri.</think><answer>A</answer>",
    ...                  {"A": "CT", "B": "MRI"})
    'B'
    >>> concluded_option("<think>A hard question.</think><answer>A</answer>", {"A": "CT", "B": "MRI"})
    """
    reasoning = reasoning_text(completion)
    if not reasoning:
        return None
    letters = [
        (m.start(), m.end(), m.group("enclosed") or m.group("closed") or m.group("labelled"))
        for m in _LETTER_MENTION.finditer(reasoning)
    ]
    letters = [mention for mention in letters if mention[2] in options]
    mentions = _without_overlaps(letters + _text_mentions(reasoning, options, in_reasoning=True))
    items = _join_same_option(mentions, reasoning)
    kept = _without_option_lists(items, reasoning, list(options))
    return kept[-1][2] if kept else None


def consistent(completion: str, options: dict[str, str], parsed: str | None) -> bool | None:
    """Whether the option the reasoning concludes with is the parsed answer; None when either is
    missing (no option named in the reasoning, or nothing parsed).

    `parsed` is what the evaluation parser read (Prediction.parsed), compared as it is.

    >>> consistent("<think>so (B)</think><answer>A</answer>", {"A": "CT", "B": "MRI"}, "A")
    False
    >>> consistent("<think>so (B)</think><answer>B</answer>", {"A": "CT", "B": "MRI"}, "B")
    True
    >>> consistent("<think>hmm</think><answer>B</answer>", {"A": "CT", "B": "MRI"}, "B") is None
    True
    """
    if parsed is None:
        return None
    concluded = concluded_option(completion, options)
    return None if concluded is None else concluded == parsed


def consistency_rate(
    completions: Sequence[str], options_list: Sequence[dict[str, str]], parsed: Sequence[str | None]
) -> float | None:
    """Share of consistent completions among those where `consistent` is not None; None if none."""
    if not len(completions) == len(options_list) == len(parsed):
        raise ValueError(
            f"consistency_rate: {len(completions)} completions, {len(options_list)} option sets and "
            f"{len(parsed)} parsed answers; give one of each per completion"
        )
    verdicts = [consistent(c, o, p) for c, o, p in zip(completions, options_list, parsed, strict=True)]
    known = [verdict for verdict in verdicts if verdict is not None]
    return sum(known) / len(known) if known else None


def _text_mentions(text: str, options: dict[str, str], in_reasoning: bool = False) -> list[Mention]:
    """Where option texts occur in `text` as whole phrases, any case, longest first where they
    overlap. In reasoning, a text that is an ordinary word counts only after a label."""
    found = []
    for letter, pattern, ordinary in _option_patterns(tuple(options.items())):
        if ordinary and in_reasoning:
            pattern = re.compile(_LABEL + pattern.pattern, re.IGNORECASE)
        found += [(m.start(), m.end(), letter) for m in pattern.finditer(text)]
    return _without_overlaps(found)


@lru_cache(maxsize=1024)
def _option_patterns(options: tuple[tuple[str, str], ...]) -> list[tuple[str, re.Pattern, bool]]:
    """Per option: its letter, a whole-phrase pattern for its text (spaces stretch), and whether the
    text is an ordinary word of reasoning."""
    patterns = []
    for letter, text in options:
        words = str(text).split()
        if not words:
            continue
        phrase = r"\s+".join(re.escape(word) for word in words)
        pattern = re.compile(rf"(?<!\w){phrase}(?!\w)", re.IGNORECASE)
        patterns.append((letter, pattern, normalize_option_text(str(text)) in _ORDINARY_WORDS))
    return patterns


def _without_overlaps(mentions: list[Mention]) -> list[Mention]:
    """Mentions in text order, a longer one winning over any it overlaps."""
    kept: list[Mention] = []
    for mention in sorted(mentions, key=lambda m: (m[0] - m[1], m[0])):
        if all(mention[1] <= other[0] or mention[0] >= other[1] for other in kept):
            kept.append(mention)
    return sorted(kept)


def _only_separators(gap: str) -> bool:
    """Whether `gap` holds only punctuation, lone letters, "or" and "and" (text between list items)."""
    return _TWO_LETTERS.search(_CONNECTIVE.sub(" ", gap)) is None


def _join_same_option(mentions: list[Mention], text: str) -> list[Mention]:
    """Adjacent mentions of one option ("A) CT") joined into one."""
    joined: list[Mention] = []
    for start, end, letter in mentions:
        if joined and joined[-1][2] == letter and _only_separators(text[joined[-1][1] : start]):
            joined[-1] = (joined[-1][0], end, letter)
        else:
            joined.append((start, end, letter))
    return joined


def _without_option_lists(items: list[Mention], text: str, letters: list[str]) -> list[Mention]:
    """`items` less every run that names all options in order with only separators between."""
    kept, index, size = [], 0, len(letters)
    while index < len(items):
        run = items[index : index + size]
        if [m[2] for m in run] == letters and all(
            _only_separators(text[a[1] : b[0]]) for a, b in zip(run, run[1:], strict=False)
        ):
            index += size
            continue
        kept.append(items[index])
        index += 1
    return kept


# --- rates over a batch ------------------------------------------------------------------------

SENTINELS: dict[str, Callable[[str, dict[str, str]], bool]] = {
    "empty_answer": empty_answer,
    "several_letters": several_letters,
    "all_options": all_options,
    "missing_tags": missing_tags,
    "missing_think": missing_think,
    "repeated_tags": repeated_tags,
    "letter_outside_options": letter_outside_options,
    "ngram_repetition": ngram_repetition,
}


def sentinel_rates(completions: Sequence[str], options_list: Sequence[dict[str, str]]) -> dict[str, float]:
    """Share of `completions` raising each flag in SENTINELS (name -> rate in [0, 1])."""
    if not completions or len(completions) != len(options_list):
        raise ValueError(
            f"sentinel_rates needs one option set per completion and at least one completion; got "
            f"{len(completions)} completions and {len(options_list)} option sets"
        )
    pairs = list(zip(completions, options_list, strict=True))
    return {
        name: sum(flag(completion, options) for completion, options in pairs) / len(pairs)
        for name, flag in SENTINELS.items()
    }
