"""Calibration at evaluation: how much probability the policy puts on each option letter where it
wrote its answer, and how well that confidence matches its accuracy (expected calibration error).

After the completions are generated, one extra forward over prompt + completion (batched, with the
family's position ids: medr1.logprobs.completion_token_logits) gives the logits that predicted the
answer letter the evaluation parser read. Finding that letter:

1. its character offset in the completion, found as the parser finds it (`letter_offset`): the
   `robust` parser's letter at the head of the first answer block (after a label such as
   "Answer:"), the `medr1` / `medvlm_r1` regexes' captured letter;
2. the completion token covering that character (`letter_token_index`), which must decode to the
   letter alone, give or take whitespace (" B" or "B"): a letter merged into a longer token
   ("B)") has no position of its own;
3. the token ids of the record's option letters in the same form as the one emitted (`" A"`,
   `" B"`, ... when the model wrote `" B"`), each a single token of the vocabulary.

`option_probs` is the softmax over those letter tokens' logits only (it sums to 1 over the record's
options); `confidence` is option_probs[parsed]. Either is None when there is no such position: the
parser read nothing, read an option by its text ("nevus") rather than a letter, or the letter is not
a token of its own. ECE (`expected_calibration_error`) bins the rows that have a confidence into 10
equal-width bins over [0, 1] (the last one closed) and weighs each bin's |accuracy - confidence| by
its share of those rows; rows without a confidence are left out (their count is n's complement).
"""

from __future__ import annotations

from collections import defaultdict

import torch

# the robust parser's own private patterns (_CHOICE_HEAD, _option_with_text): the letter located is the
# one it read, by construction
from medr1.answers import (
    _CHOICE_HEAD,
    MEDR1_EVAL_REGEX,
    MEDVLM_R1_EVAL_REGEX,
    _option_with_text,
    answer_text,
)
from medr1.logprobs import completion_token_logits

NUM_BINS = 10
_STRIP = "*`'\""  # what parse_choice strips around an answer (after whitespace), in the same order


# --- where the answer letter is ----------------------------------------------------------------


def letter_offset(completion: str, options: dict[str, str], parser: str, parsed: str | None) -> int | None:
    """Character offset in `completion` of the letter `parser` read as `parsed`; None if it read
    none, or read the option from its text rather than from a written letter."""
    if parsed is None:
        return None
    if parser in ("medr1", "medvlm_r1"):
        regex = MEDR1_EVAL_REGEX if parser == "medr1" else MEDVLM_R1_EVAL_REGEX
        match = regex.search(completion)
        if match is None or len(match.group(1)) != 1:  # a word ("CT"), not a letter
            return None
        return match.start(1)
    if parser != "robust":
        raise ValueError(f"unknown evaluation parser {parser!r}; calibration reads robust, medr1, medvlm_r1")
    block = answer_text(completion)
    if block is None:
        start, text = 0, completion
    else:  # the first <answer> is the block's: a later one can only match if the first one does
        start, text = completion.index("<answer>") + len("<answer>"), block
    # parse_choice strips whitespace, then * ` ' ", then whitespace: follow the offset through
    for chars in (None, _STRIP, None):
        stripped = text.lstrip(chars)
        start += len(text) - len(stripped)
        text = stripped.rstrip(chars)
    match = _CHOICE_HEAD.match(text)
    if match is None:  # e.g. read from the option's text ("melanoma"): no letter was written
        return None
    group = next(name for name in ("paren", "bracket", "bare") if match.group(name))
    by_text = _option_with_text(text, options)
    if match.group(group).upper() != parsed or by_text not in (None, parsed):
        return None  # the letter at the head is not the option read (it was read from a text)
    return start + match.start(group)


def letter_token_index(tokenizer, token_ids: list[int], completion: str, offset: int) -> int | None:
    """Index in `token_ids` (the completion's tokens, decoded to `completion` with special tokens
    skipped) of the token holding character `offset`, if that token is the letter alone (with or
    without surrounding whitespace); else None."""
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731  (as Sampler.decode)
    letter = completion[offset]

    def is_letter_token(i: int) -> bool:
        before, through = decode(token_ids[:i]), decode(token_ids[: i + 1])
        return (
            len(before) <= offset < len(through)
            and through[offset] == letter
            and decode(token_ids[i : i + 1]).strip() == letter
        )

    # prefix lengths grow with i (up to a split multi-byte character): binary search, then confirm
    low, high = 0, len(token_ids) - 1
    while low < high:
        middle = (low + high) // 2
        if len(decode(token_ids[: middle + 1])) > offset:
            high = middle
        else:
            low = middle + 1
    if token_ids and is_letter_token(low):
        return low
    return next((i for i in range(len(token_ids)) if is_letter_token(i)), None)


def letter_token_ids(tokenizer, token_id: int, letters: list[str]) -> dict[str, int] | None:
    """Token id of each of `letters` in the form of the emitted letter token `token_id` (its
    whitespace and case: " b" gives " a", " b", ...), keyed by the upper-case letter; None if some
    letter has no single token of that form."""
    written = tokenizer.decode([token_id]).strip()
    raw = tokenizer.convert_ids_to_tokens(token_id)
    where = raw.rfind(written)
    if len(written) != 1 or where < 0:
        return None
    shown = tokenizer.decode([token_id])
    ids = {}
    for letter in letters:
        cased = letter.lower() if written.islower() else letter.upper()
        candidate = tokenizer.convert_tokens_to_ids(raw[:where] + cased + raw[where + 1 :])
        # the vocabulary may map an unknown string to <unk>: keep the id only if it decodes as expected
        if not isinstance(candidate, int) or tokenizer.decode([candidate]) != shown.replace(written, cased):
            return None
        ids[letter.upper()] = candidate
    return ids


# --- option probabilities of a generated batch ---------------------------------------------------


def answer_letter_token(
    tokenizer, tokens: list[int], prediction, parser: str
) -> tuple[int, dict[str, int]] | None:
    """(index in `tokens` of the answer letter `parser` read in the prediction's completion, the option
    letters' token ids in its form); None when the completion has no such position."""
    offset = letter_offset(prediction.completion, prediction.options, parser, prediction.parsed)
    if offset is None:
        return None
    position = letter_token_index(tokenizer, tokens, prediction.completion, offset)
    if position is None:
        return None
    ids = letter_token_ids(tokenizer, tokens[position], list(prediction.options))
    return None if ids is None else (position, ids)


@torch.no_grad()
def add_option_probs(
    model, batch, completion_ids, completion_mask, predictions, tokenizer, parser: str
) -> None:
    """Fill `option_probs` and `confidence` of `predictions` (graded rows of `batch`, one completion
    per prompt) from one batched forward over prompt + completion."""
    found = []
    for row, prediction in enumerate(predictions):
        prediction.option_probs, prediction.confidence = None, None
        tokens = completion_ids[row][completion_mask[row].bool()].tolist()
        found.append(answer_letter_token(tokenizer, tokens, prediction, parser))
    if all(letter is None for letter in found):
        return
    index = torch.tensor([0 if letter is None else letter[0] for letter in found])
    logits = completion_token_logits(model, batch.model_inputs, completion_ids, completion_mask, index)
    for row, (prediction, letter) in enumerate(zip(predictions, found, strict=True)):
        if letter is None:
            continue
        ids = letter[1]
        probs = logits[row, list(ids.values())].float().softmax(-1).tolist()
        prediction.option_probs = {option: round(p, 6) for option, p in zip(ids, probs, strict=True)}
        if prediction.parsed in prediction.option_probs:
            prediction.confidence = prediction.option_probs[prediction.parsed]


# --- expected calibration error ------------------------------------------------------------------


def expected_calibration_error(
    confidences: list[float], correct: list[bool], num_bins: int = NUM_BINS
) -> dict:
    """{"ece", "n", "bins"}: `num_bins` equal-width bins over [0, 1] (the last includes 1.0), each
    {low, high, count, confidence (mean), accuracy}; an empty bin has count 0 and zeros. ECE is
    sum over bins of count/n * |accuracy - confidence|; None when there are no rows."""
    if len(confidences) != len(correct):
        raise ValueError(f"{len(confidences)} confidences but {len(correct)} correctness flags")
    members: list[list[int]] = [[] for _ in range(num_bins)]
    for i, confidence in enumerate(confidences):
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(f"confidence {confidence!r} is not a probability in [0, 1]")
        members[min(int(confidence * num_bins), num_bins - 1)].append(i)
    n, ece, bins = len(confidences), 0.0, []
    for b, rows in enumerate(members):
        mean_confidence = sum(confidences[i] for i in rows) / len(rows) if rows else 0.0
        accuracy = sum(bool(correct[i]) for i in rows) / len(rows) if rows else 0.0
        ece += len(rows) / n * abs(accuracy - mean_confidence) if n else 0.0
        bins.append(
            {
                "low": round(b / num_bins, 6),
                "high": round((b + 1) / num_bins, 6),
                "count": len(rows),
                "confidence": round(mean_confidence, 6),
                "accuracy": round(accuracy, 6),
            }
        )
    return {"ece": round(ece, 6) if n else None, "n": n, "bins": bins}


def calibration_summary(predictions) -> dict:
    """summary["calibration"]: ECE over the predictions that have a confidence, overall and per
    modality (every modality evaluated; n 0 and ece None where none has one)."""
    by_modality: dict[str, list] = defaultdict(list)
    for prediction in predictions:
        by_modality[prediction.modality].append(prediction)

    def ece_of(rows) -> dict:
        rated = [p for p in rows if p.confidence is not None]
        return expected_calibration_error([p.confidence for p in rated], [p.correct for p in rated])

    return ece_of(predictions) | {
        "by_modality": {name: ece_of(rows) for name, rows in sorted(by_modality.items())}
    }
