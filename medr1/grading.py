"""Grading completions against records, the accuracy tables researchers read, and the eval loop
shared by `mode=eval`, validation and the final test.

Accuracy is a torchmetrics MulticlassAccuracy over answer letters, with an extra "no answer" class
so an unparseable completion counts as wrong (never as skipped), computed overall, per modality and
per question type. Format rate is the share of completions in Med-R1's think/answer format;
reasoning length is the mean number of tokens inside <think>.

Which letter a completion chooses is read by a named parser (medr1.answers.PARSERS, `eval.parser`):
`robust` (medr1's lenient reading, the default), `medr1` or `medvlm_r1` (the papers' eval regexes).
The chosen parser gives `parsed`, `correct` and the accuracies; the summary also holds the overall
accuracy under every parser (`accuracy_by_parser`), over the same completions.

`write_eval_outputs` writes the run directory's `eval/predictions.jsonl` (one line per question: id,
modality, question_type, completion, parsed, answer, correct, follows_format, reasoning_tokens,
options) and `eval/summary.json` (exactly: accuracy, n, by_modality, by_question_type, format_rate,
reasoning_length, parser, accuracy_by_parser).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from tqdm.auto import tqdm

from medr1.answers import PARSERS, follows_format, get_parser, reasoning_text
from medr1.data.records import LETTERS, VQARecord
from medr1.rollout import Sampler, SamplingConfig

log = logging.getLogger(__name__)

NO_ANSWER = len(LETTERS)  # class index of an answer that could not be parsed


@dataclass
class Prediction:
    id: str
    modality: str
    question_type: str
    completion: str
    parsed: str | None  # what the parser read: a letter (`medr1` may read a word, "CT"), None if nothing
    answer: str  # the correct letter
    correct: bool  # parsed == answer
    follows_format: bool
    reasoning_tokens: int
    options: dict[str, str] = field(default_factory=dict)  # letter -> text: any parser can re-read the row

    def to_json(self) -> dict:
        return asdict(self)


def grade(
    records: list[VQARecord], completions: list[str], tokenizer, parser: str = "robust"
) -> list[Prediction]:
    """One Prediction per (record, completion), the answer read by the evaluation parser `parser`."""
    parse = get_parser(parser)
    predictions = []
    for record, completion in zip(records, completions, strict=True):
        parsed = parse(completion, record.options)
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
                reasoning_tokens=len(tokenizer(reasoning, add_special_tokens=False)["input_ids"])
                if reasoning
                else 0,
                options=dict(record.options),
            )
        )
    return predictions


def is_correct(parser: str, completion: str, answer: str, options: dict[str, str] | None = None) -> bool:
    """Whether `parser` reads `answer` (the correct letter) from `completion`.

    `options` may be None for the `medr1` and `medvlm_r1` parsers, which never read them; `robust`
    needs them (predictions.jsonl written before they were stored lacks them).
    """
    if options is None and parser == "robust":
        raise ValueError(
            "the robust parser needs the question's options; re-evaluate, or use the medr1 "
            "or medvlm_r1 parser, which do not read them"
        )
    return get_parser(parser)(completion, options or {}) == answer


def _guess_class(parsed: str | None) -> int:
    """Class index of a parsed answer; anything that is not a letter (None, "CT", "c") is NO_ANSWER."""
    return LETTERS.index(parsed) if parsed and len(parsed) == 1 and parsed in LETTERS else NO_ANSWER


def regrade(rows: list[dict], parser: str) -> dict:
    """accuracy, n, by_modality, by_question_type of prediction rows (predictions.jsonl lines) re-read
    with `parser`; each row needs completion, answer, modality, question_type (and options for robust).

    Plain counts rounded to 6 decimals as EvalAccumulator.summary rounds them, so the same parser
    gives the run's summary.json numbers (up to float32 noise in the last digit).
    """
    if not rows:
        raise ValueError("no prediction rows to regrade: eval/predictions.jsonl is empty")
    correct = [is_correct(parser, row["completion"], row["answer"], row.get("options")) for row in rows]

    def by(key: str) -> dict[str, float]:
        groups: dict[str, list[bool]] = defaultdict(list)
        for row, ok in zip(rows, correct, strict=True):
            groups[row[key]].append(ok)
        return {name: round(sum(oks) / len(oks), 6) for name, oks in sorted(groups.items())}

    return {
        "accuracy": round(sum(correct) / len(rows), 6),
        "n": len(rows),
        "by_modality": by("modality"),
        "by_question_type": by("question_type"),
    }


# Metrics never synchronise across processes by themselves: the group keys (modalities seen) differ
# between ranks, so multi-GPU runs gather the predictions first (VQAModule) and compute once.
def _accuracy() -> MulticlassAccuracy:
    return MulticlassAccuracy(num_classes=len(LETTERS) + 1, average="micro", sync_on_compute=False)


class EvalAccumulator:
    """Accumulates predictions over batches; `summary()` gives the eval/summary.json dict.

    `parser` names the parser the predictions were graded with (recorded in the summary); the
    accuracy under every parser in PARSERS is recomputed here from each completion.
    """

    def __init__(self, parser: str = "robust"):
        get_parser(parser)  # unknown names fail here, not at summary time
        self.parser = parser
        self.correct_by_parser = dict.fromkeys(PARSERS, 0)
        self.overall = _accuracy()
        self.by_modality: dict[str, MulticlassAccuracy] = defaultdict(_accuracy)
        self.by_question_type: dict[str, MulticlassAccuracy] = defaultdict(_accuracy)
        self.format_rate = MeanMetric(sync_on_compute=False)
        self.reasoning_length = MeanMetric(sync_on_compute=False)
        self.n = 0

    def update(self, predictions: list[Prediction]) -> None:
        if not predictions:
            return
        guess = torch.tensor([_guess_class(p.parsed) for p in predictions])
        truth = torch.tensor([LETTERS.index(p.answer) for p in predictions])
        self.overall.update(guess, truth)
        for i, p in enumerate(predictions):
            self.by_modality[p.modality].update(guess[i : i + 1], truth[i : i + 1])
            self.by_question_type[p.question_type].update(guess[i : i + 1], truth[i : i + 1])
        self.format_rate.update(torch.tensor([float(p.follows_format) for p in predictions]))
        self.reasoning_length.update(torch.tensor([float(p.reasoning_tokens) for p in predictions]))
        for name in PARSERS:  # the scoring parser's own verdicts as they are, the others re-read
            self.correct_by_parser[name] += sum(
                p.correct if name == self.parser else is_correct(name, p.completion, p.answer, p.options)
                for p in predictions
            )
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
            "parser": self.parser,
            "accuracy_by_parser": {
                name: round(hits / self.n, 6) for name, hits in self.correct_by_parser.items()
            },
        }


def format_summary(summary: dict, title: str = "evaluation") -> str:
    """A readable table of a summary dict."""
    parser = f" ({summary['parser']} parser)" if "parser" in summary else ""
    lines = [
        f"== {title}: accuracy {100 * summary['accuracy']:.1f}%{parser} on {summary['n']} questions; "
        f"format {100 * summary['format_rate']:.1f}%; reasoning {summary['reasoning_length']:.1f} tokens",
    ]
    if summary.get("accuracy_by_parser"):
        lines.append(
            "   accuracy by parser: "
            + ", ".join(f"{name} {100 * acc:.1f}%" for name, acc in summary["accuracy_by_parser"].items())
        )
    lines += [f"{'modality':<24}{'accuracy':>10}"]
    lines += [f"  {name:<22}{100 * acc:>9.1f}%" for name, acc in summary["by_modality"].items()]
    lines.append(f"{'question type':<24}{'accuracy':>10}")
    lines += [f"  {name:<22}{100 * acc:>9.1f}%" for name, acc in summary["by_question_type"].items()]
    return "\n".join(lines)


# --- the eval loop and its files -------------------------------------------------------------


@torch.no_grad()
def evaluate_batches(
    model,
    batches,
    sampler: Sampler,
    sampling: SamplingConfig,
    *,
    progress: bool = True,
    description: str = "evaluating",
    parser: str = "robust",
) -> tuple[list[Prediction], dict]:
    """Answer every question in `batches`, read with the evaluation parser `parser`; returns the
    predictions and the summary dict."""
    accumulator, predictions = EvalAccumulator(parser), []  # an unknown parser fails before generating
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for batch in tqdm(batches, desc=description, disable=not progress, unit="batch"):
        batch = batch.to(device)
        _, _, texts = sampler.complete(model, batch, sampling)
        graded = grade(batch.records, texts, sampler.processor.tokenizer, parser)
        accumulator.update(graded)
        predictions.extend(graded)
    model.train(was_training)
    return predictions, accumulator.summary()


def write_eval_outputs(out_dir: str | Path, predictions: list[Prediction], summary: dict, title: str) -> Path:
    """Write eval/predictions.jsonl and eval/summary.json under `out_dir`; print the table."""
    eval_dir = Path(out_dir) / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    with open(eval_dir / "predictions.jsonl", "w") as f:
        for prediction in predictions:
            f.write(json.dumps(prediction.to_json()) + "\n")
    (eval_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_summary(summary, title), flush=True)
    log.info("wrote %s", eval_dir)
    return eval_dir
