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

With calibration on (`eval.calibration`), each prediction also holds the probability the policy put
on each option letter where it wrote its answer (`option_probs`, `confidence`; medr1.calibration),
and the summary its expected calibration error (`calibration`). Shortcut probes (`eval.probes`,
medr1.probes) add `probes` (and `image_reliance`) to the summary after the main evaluation.

`write_eval_outputs` writes the run directory's `eval/predictions.jsonl` (one line per question: id,
modality, question_type, completion, parsed, answer, correct, follows_format, reasoning_tokens,
options, images, option_probs, confidence, consistent), `eval/summary.json` (accuracy, n, by_modality,
by_question_type, format_rate, reasoning_length, parser, accuracy_by_parser, consistency_rate; calibration when it is
on; probes and image_reliance when probes ran) and each probe's rows in `eval/probes/<name>.jsonl`.
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
from medr1.cache import write_file_atomically
from medr1.calibration import add_option_probs, calibration_summary
from medr1.data.records import LETTERS, VQARecord
from medr1.rollout import Sampler, SamplingConfig
from medr1.sentinels import consistent

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
    images: list[str] = field(default_factory=list)  # the record's image files, as the reader gave them
    option_probs: dict[str, float] | None = None  # letter -> p at the answer letter (medr1.calibration)
    confidence: float | None = None  # option_probs[parsed]; None without an answer letter position
    consistent: bool | None = None  # the option the <think> text concludes with == parsed (medr1.sentinels)

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
                images=list(record.images),
                consistent=consistent(completion, record.options, parsed),
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
        self.consistent, self.consistency_known = 0, 0  # reasoning/answer agreement, where it is known
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
        known = [p.consistent for p in predictions if p.consistent is not None]
        self.consistent += sum(known)
        self.consistency_known += len(known)
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
            # None when no reasoning named an option (medr1.sentinels.consistent)
            "consistency_rate": round(self.consistent / self.consistency_known, 6)
            if self.consistency_known
            else None,
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
    lines += probe_lines(summary)
    lines += [f"{'modality':<24}{'accuracy':>10}"]
    lines += [f"  {name:<22}{100 * acc:>9.1f}%" for name, acc in summary["by_modality"].items()]
    lines.append(f"{'question type':<24}{'accuracy':>10}")
    lines += [f"  {name:<22}{100 * acc:>9.1f}%" for name, acc in summary["by_question_type"].items()]
    return "\n".join(lines)


def probe_lines(summary: dict) -> list[str]:
    """The summary's calibration and shortcut-probe lines (none when neither ran)."""
    percent = lambda value: "n/a" if value is None else f"{100 * value:.1f}%"  # noqa: E731
    lines = []
    calibration = summary.get("calibration")
    if calibration:
        ece = "n/a" if calibration["ece"] is None else f"{calibration['ece']:.3f}"
        lines.append(
            f"   calibration: ECE {ece} over the {calibration['n']} answers with a letter position (10 bins)"
        )
    probes = summary.get("probes") or {}
    if "shuffled_options" in probes:
        shuffled = probes["shuffled_options"]
        lines.append(
            f"   probe shuffled_options: accuracy {percent(shuffled['accuracy'])}; of the questions answered "
            f"in both runs, {percent(shuffled['follows_content'])} kept the option, "
            f"{percent(shuffled['follows_letter'])} the letter"
        )
    if "blank_image" in probes:
        lines.append(
            f"   probe blank_image: accuracy {percent(probes['blank_image']['accuracy'])}; image reliance "
            f"{100 * probes['image_reliance']:+.1f} points"
        )
    if "letter_prior" in probes:
        prior = probes["letter_prior"]
        share = lambda fractions: " ".join(f"{k} {100 * v:.0f}%" for k, v in fractions.items())  # noqa: E731
        lines.append(
            f"   probe letter_prior: chosen {share(prior['chosen'])}, no answer {percent(prior['no_answer'])}; "
            f"correct {share(prior['correct'])}; total variation {prior['total_variation']:.3f}"
        )
    return lines


def logged_metrics(summary: dict, prefix: str = "test") -> dict[str, float]:
    """The numbers a final test evaluation logs to W&B and metrics.csv: accuracy (overall, per
    modality and question type), format rate, reasoning length, then, when they ran, ECE (overall
    and per modality), each probe's numbers and the image reliance. Undefined values are left out."""
    metrics = {f"{prefix}/accuracy_{k}": v for k, v in summary["by_modality"].items()}
    metrics |= {f"{prefix}/accuracy_{k}": v for k, v in summary["by_question_type"].items()}
    metrics |= {
        f"{prefix}/accuracy": summary["accuracy"],
        f"{prefix}/format_rate": summary["format_rate"],
        f"{prefix}/reasoning_length": summary["reasoning_length"],
    }
    calibration = summary.get("calibration")
    if calibration:
        metrics[f"{prefix}/ece"] = calibration["ece"]
        metrics |= {f"{prefix}/ece_{k}": v["ece"] for k, v in calibration["by_modality"].items()}
    probes = summary.get("probes") or {}
    for name in ("shuffled_options", "blank_image"):
        for key, value in probes.get(name, {}).items():
            if key != "n":
                metrics[f"{prefix}/probes/{name}/{key}"] = value
    if "letter_prior" in probes:
        for key in ("no_answer", "total_variation"):
            metrics[f"{prefix}/probes/letter_prior/{key}"] = probes["letter_prior"][key]
    if "image_reliance" in summary:
        metrics[f"{prefix}/image_reliance"] = summary["image_reliance"]
    return {k: v for k, v in metrics.items() if v is not None}


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
    calibration: bool = False,
) -> tuple[list[Prediction], dict]:
    """Answer every question in `batches`, read with the evaluation parser `parser`; returns the
    predictions and the summary dict. With `calibration`, one more forward per batch gives each
    prediction's option_probs and confidence, and the summary its `calibration` (ECE)."""
    accumulator, predictions = EvalAccumulator(parser), []  # an unknown parser fails before generating
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for batch in tqdm(batches, desc=description, disable=not progress, unit="batch"):
        batch = batch.to(device)
        ids, mask, texts = sampler.complete(model, batch, sampling)
        graded = grade(batch.records, texts, sampler.processor.tokenizer, parser)
        if calibration:
            add_option_probs(model, batch, ids, mask, graded, sampler.processor.tokenizer, parser)
        accumulator.update(graded)
        predictions.extend(graded)
    model.train(was_training)
    summary = accumulator.summary()
    if calibration:
        summary["calibration"] = calibration_summary(predictions)
    return predictions, summary


def write_eval_outputs(
    out_dir: str | Path,
    predictions: list[Prediction],
    summary: dict,
    title: str,
    probe_rows: dict[str, list[dict]] | None = None,
) -> Path:
    """Write eval/predictions.jsonl and eval/summary.json under `out_dir`, and each probe's rows
    (medr1.probes.run_probes) as eval/probes/<name>.jsonl; print the table.

    Crash-safe: each file is written under a temporary name and renamed when whole, and summary.json,
    which readers (the report, eval.reuse) take as the mark of a complete evaluation, is removed first
    and written last, so a run killed at any moment never leaves a summary beside other predictions.
    """
    eval_dir = Path(out_dir) / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    (eval_dir / "summary.json").unlink(missing_ok=True)
    write_jsonl(eval_dir / "predictions.jsonl", [prediction.to_json() for prediction in predictions])
    for name, rows in (probe_rows or {}).items():
        write_jsonl(eval_dir / "probes" / f"{name}.jsonl", rows)
    write_file_atomically(eval_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(format_summary(summary, title), flush=True)
    log.info("wrote %s", eval_dir)
    return eval_dir


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object per line, written whole or not at all (medr1.cache.write_file_atomically)."""
    write_file_atomically(path, "".join(json.dumps(row) + "\n" for row in rows))
