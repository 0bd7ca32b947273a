"""Scoring completions against records, and the accuracy tables researchers read.

Accuracy is a torchmetrics MulticlassAccuracy over answer letters, with an extra "no answer" class
so an unparseable completion counts as wrong (never as skipped), computed overall, per modality and
per question type. Format rate is the share of completions in Med-R1's think/answer format;
reasoning length is the mean number of tokens inside <think>.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

import torch
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from medr1.answers import extract_choice, follows_format, reasoning_text
from medr1.data.records import LETTERS, VQARecord

NO_ANSWER = len(LETTERS)  # class index of an answer that could not be parsed


@dataclass
class Prediction:
    id: str
    modality: str
    question_type: str
    completion: str
    parsed: str | None  # the letter read from the completion, None if none could be read
    answer: str  # the correct letter
    correct: bool
    follows_format: bool
    reasoning_tokens: int

    def to_json(self) -> dict:
        return asdict(self)


def score(records: list[VQARecord], completions: list[str], tokenizer) -> list[Prediction]:
    """One Prediction per (record, completion)."""
    predictions = []
    for record, completion in zip(records, completions, strict=True):
        parsed = extract_choice(completion, record.options)
        reasoning = reasoning_text(completion)
        predictions.append(
            Prediction(
                id=record.id,
                modality=record.modality,
                question_type=record.question_type,
                completion=completion,
                parsed=parsed,
                answer=record.answer,
                correct=parsed == record.answer,
                follows_format=follows_format(completion),
                reasoning_tokens=len(tokenizer(reasoning, add_special_tokens=False)["input_ids"]) if reasoning else 0,
            )
        )
    return predictions


# Metrics never synchronise across processes by themselves: the group keys (modalities seen) differ
# between ranks, so multi-GPU runs gather the predictions first (VQAModule) and compute once.
def _accuracy() -> MulticlassAccuracy:
    return MulticlassAccuracy(num_classes=len(LETTERS) + 1, average="micro", sync_on_compute=False)


class EvalAccumulator:
    """Accumulates predictions over batches; `summary()` gives the eval/summary.json dict."""

    def __init__(self):
        self.overall = _accuracy()
        self.by_modality: dict[str, MulticlassAccuracy] = defaultdict(_accuracy)
        self.by_question_type: dict[str, MulticlassAccuracy] = defaultdict(_accuracy)
        self.format_rate = MeanMetric(sync_on_compute=False)
        self.reasoning_length = MeanMetric(sync_on_compute=False)
        self.n = 0

    def update(self, predictions: list[Prediction]) -> None:
        if not predictions:
            return
        guess = torch.tensor([LETTERS.index(p.parsed) if p.parsed else NO_ANSWER for p in predictions])
        truth = torch.tensor([LETTERS.index(p.answer) for p in predictions])
        self.overall.update(guess, truth)
        for i, p in enumerate(predictions):
            self.by_modality[p.modality].update(guess[i : i + 1], truth[i : i + 1])
            self.by_question_type[p.question_type].update(guess[i : i + 1], truth[i : i + 1])
        self.format_rate.update(torch.tensor([float(p.follows_format) for p in predictions]))
        self.reasoning_length.update(torch.tensor([float(p.reasoning_tokens) for p in predictions]))
        self.n += len(predictions)

    def summary(self) -> dict:
        if self.n == 0:
            raise ValueError("no predictions to summarise: the test split is empty")
        value = lambda metric: round(float(metric.compute()), 6)  # noqa: E731  (float32 noise off)
        return {
            "accuracy": value(self.overall),
            "n": self.n,
            "by_modality": {k: value(m) for k, m in sorted(self.by_modality.items())},
            "by_question_type": {k: value(m) for k, m in sorted(self.by_question_type.items())},
            "format_rate": value(self.format_rate),
            "reasoning_length": value(self.reasoning_length),
        }


def format_summary(summary: dict, title: str = "evaluation") -> str:
    """A readable table of a summary dict."""
    lines = [
        f"== {title}: accuracy {100 * summary['accuracy']:.1f}% on {summary['n']} questions; "
        f"format {100 * summary['format_rate']:.1f}%; reasoning {summary['reasoning_length']:.1f} tokens",
        f"{'modality':<24}{'accuracy':>10}",
    ]
    lines += [f"  {name:<22}{100 * acc:>9.1f}%" for name, acc in summary["by_modality"].items()]
    lines.append(f"{'question type':<24}{'accuracy':>10}")
    lines += [f"  {name:<22}{100 * acc:>9.1f}%" for name, acc in summary["by_question_type"].items()]
    return "\n".join(lines)
