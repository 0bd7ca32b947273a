"""Shortcut probes (`eval.probes`): does the policy answer from the image and the options, or from
shortcuts? Each runs after the main test evaluation (the final one of a training run, and
`mode=eval`), never in validation nor before training.

- `shuffled_options`: the same questions with every option moved to another letter (a derangement
  seeded by the record id, the same in every run) and the answer letter remapped. Reports the
  accuracy, and, over the questions answered with an option letter in both runs, the fraction whose
  shuffled choice is the same option as the main choice (`follows_content`) and the fraction that
  chose the same letter, which now names another option (`follows_letter`). The two are disjoint,
  since no option keeps its letter.
- `blank_image`: every image replaced, after loading and resizing, by uniform grey (128, 128, 128) of
  the same size (PromptCollator.with_blank_images), so the prompt tokens are unchanged. A model that
  reads the image should fall towards chance; `image_reliance` = accuracy - blank-image accuracy.
- `letter_prior`: free (it reads the main evaluation): the fraction of questions on which each letter
  was chosen against the fraction whose correct letter it is, the no-answer fraction, and their
  total variation distance (no answer counted as a category of its own, so chosen and correct
  each sum to 1 over letters + no answer).

`run_probes` returns each probe's prediction rows (eval/probes/<name>.jsonl, the predictions.jsonl
row format; shuffled rows hold the options and answer as shown, plus `original_answer` and
`permutation` {new letter: old letter}) and the summary with `probes` (and `image_reliance`) added.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections import Counter
from collections.abc import Sequence

from torch.utils.data import DataLoader

from medr1.data.records import LETTERS, VQARecord
from medr1.errors import ConfigError
from medr1.grading import Prediction, evaluate_batches

PROBES = ("shuffled_options", "blank_image", "letter_prior")


def check_probes(names: Sequence[str] | None) -> list[str]:
    """`eval.probes` checked: known names, each once, in the order given."""
    names = [str(name) for name in (names or [])]
    unknown = [name for name in names if name not in PROBES]
    if unknown:
        raise ConfigError(f"eval.probes: unknown probe(s) {unknown}; the probes are {', '.join(PROBES)}")
    return list(dict.fromkeys(names))


# --- shuffled options ------------------------------------------------------------------------------


def option_permutation(record_id: str, n: int) -> list[int]:
    """order[new position] = old position: a derangement of n >= 2 options (none keeps its letter),
    drawn from a generator seeded by a hash of the record id, so every run shuffles alike."""
    order = list(range(n))
    if n < 2:
        return order
    rng = random.Random(int.from_bytes(hashlib.sha256(record_id.encode()).digest()[:8], "big"))
    while any(new == old for new, old in enumerate(order)):  # ~e draws on average
        rng.shuffle(order)
    return order


def shuffle_options(record: VQARecord) -> tuple[VQARecord, dict[str, str]]:
    """The record with its options permuted (option_permutation) and its answer letter remapped, and
    the permutation {new letter: old letter}."""
    letters = list(record.options)
    order = option_permutation(record.id, len(letters))
    permutation = {letters[new]: letters[old] for new, old in enumerate(order)}
    options = {new: record.options[old] for new, old in permutation.items()}
    answer = next(new for new, old in permutation.items() if old == record.answer)
    return dataclasses.replace(record, options=options, answer=answer), permutation


def follows_content_and_letter(
    main: list[Prediction], shuffled: list[Prediction], permutations: list[dict[str, str]]
) -> tuple[float | None, float | None]:
    """Over the questions answered with one of their option letters in both runs: the fraction whose
    shuffled choice is the main choice's option (by identity, so equal texts do not count twice) and
    the fraction that chose the same letter. None when no question was answered in both."""
    content = letter = answered = 0
    for before, after, permutation in zip(main, shuffled, permutations, strict=True):
        if before.parsed not in before.options or after.parsed not in after.options:
            continue
        answered += 1
        content += permutation[after.parsed] == before.parsed
        letter += after.parsed == before.parsed
    if not answered:
        return None, None
    return round(content / answered, 6), round(letter / answered, 6)


# --- letter prior ----------------------------------------------------------------------------------


def _letter(parsed: str | None) -> str | None:
    """A parsed answer that is a letter (as grading's classes: "E" with options A-D counts), else None."""
    return parsed if parsed is not None and len(parsed) == 1 and parsed in LETTERS else None


def letter_prior(predictions: list[Prediction]) -> dict:
    """Chosen vs correct letter fractions over all predictions, the no-answer fraction and the total
    variation distance between the two distributions (over letters and no answer)."""
    if not predictions:
        raise ValueError("no predictions: the letter prior needs the main evaluation's rows")
    n = len(predictions)
    chosen = Counter(_letter(p.parsed) for p in predictions)
    correct = Counter(p.answer for p in predictions)
    letters = sorted({letter for p in predictions for letter in p.options} | (set(chosen) - {None}))
    fraction = lambda count: round(count / n, 6)  # noqa: E731
    no_answer = chosen[None] / n
    distance = 0.5 * (sum(abs(chosen[k] - correct[k]) / n for k in letters) + no_answer)
    return {
        "chosen": {k: fraction(chosen[k]) for k in letters},
        "correct": {k: fraction(correct[k]) for k in letters},
        "no_answer": round(no_answer, 6),
        "total_variation": round(distance, 6),
    }


# --- running them ----------------------------------------------------------------------------------


def test_split_of(datamodule) -> dict:
    """run_probes' test-split arguments, as a VQADataModule evaluates its test split."""
    return dict(
        records=datamodule.test_records,
        collator=datamodule.eval_collator,
        batch_size=datamodule.eval_batch_size,
        num_workers=datamodule.num_workers,
    )


def run_probes(
    names: Sequence[str],
    *,
    model,
    sampler,
    sampling,
    parser: str,
    records: list[VQARecord],
    collator,
    batch_size: int,
    predictions: list[Prediction],
    summary: dict,
    calibration: bool = False,
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[dict[str, list[dict]], dict]:
    """Run the probes `names` on the test `records` the main evaluation answered (`predictions`, in
    the same order; `summary` its summary), generating as it did (model, sampler, sampling, parser,
    `collator` and `batch_size`, option probabilities when `calibration`).

    Returns ({probe: prediction rows} for the probes that generate, the summary with `probes` and,
    after blank_image, `image_reliance`); the summary is returned unchanged when `names` is empty.
    """
    names = check_probes(names)
    if not names:
        return {}, summary
    answered = {p.id for p in predictions}
    records = [r for r in records if r.id in answered]  # a record skipped as bad in the evaluation too
    if [p.id for p in predictions] != [r.id for r in records]:
        raise ValueError("the probes need the main evaluation's predictions of `records`, in their order")

    def answer(questions: list[VQARecord], collate, description: str):
        loader = DataLoader(
            questions, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers
        )
        return evaluate_batches(
            model,
            loader,
            sampler,
            sampling,
            progress=progress,
            description=description,
            parser=parser,
            calibration=calibration,
        )

    probes, rows = {}, {}
    if "shuffled_options" in names:
        shuffled, permutations = zip(*map(shuffle_options, records), strict=True)
        answered, result = answer(list(shuffled), collator, "probe: shuffled options")
        content, letter = follows_content_and_letter(predictions, answered, list(permutations))
        probes["shuffled_options"] = {
            "accuracy": result["accuracy"],
            "n": result["n"],
            "follows_content": content,
            "follows_letter": letter,
        }
        rows["shuffled_options"] = [
            prediction.to_json() | {"original_answer": record.answer, "permutation": permutation}
            for prediction, record, permutation in zip(answered, records, permutations, strict=True)
        ]
    if "blank_image" in names:
        answered, result = answer(records, collator.with_blank_images(), "probe: blank image")
        probes["blank_image"] = {"accuracy": result["accuracy"], "n": result["n"]}
        rows["blank_image"] = [prediction.to_json() for prediction in answered]
    if "letter_prior" in names:
        probes["letter_prior"] = letter_prior(predictions)
    summary = dict(summary)
    if "blank_image" in probes:
        probes["image_reliance"] = round(summary["accuracy"] - probes["blank_image"]["accuracy"], 6)
        summary["image_reliance"] = probes["image_reliance"]
    summary["probes"] = probes
    return rows, summary
