"""Batched answer generation and evaluation, shared by `mode=eval`, validation and the final test.

Writes the run directory's `eval/predictions.jsonl` (one line per question: id, modality,
question_type, completion, parsed, answer, correct, follows_format, reasoning_tokens, options) and
`eval/summary.json` (exactly: accuracy, n, by_modality, by_question_type, format_rate,
reasoning_length, parser, accuracy_by_parser). `parser` names the evaluation parser (`eval.parser`)
behind `parsed`, `correct` and the accuracies; `accuracy_by_parser` is the overall accuracy of the
same completions under each of medr1.answers.PARSERS (robust, medr1, medvlm_r1).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from medr1.data.batches import PromptBatch
from medr1.metrics import EvalAccumulator, Prediction, format_summary, score
from medr1.models.loading import banned_token_ids, stop_token_ids
from medr1.rl.sequences import SamplingConfig, sample_completions

log = logging.getLogger(__name__)


@dataclass
class Generator:
    """Samples completions for prompt batches with the processor's stop, pad and banned tokens."""

    processor: object
    stop_ids: list[int]
    pad_id: int
    banned_ids: list[int]

    @classmethod
    def for_model(cls, model, processor) -> Generator:
        return cls(processor, stop_token_ids(processor, model), processor.tokenizer.pad_token_id, banned_token_ids(processor))

    def complete(self, model, batch: PromptBatch, sampling: SamplingConfig, num_generations: int = 1):
        """(completion ids [B*G, T], mask [B*G, T], decoded texts [B*G])."""
        ids, mask = sample_completions(
            model, batch.model_inputs, sampling, num_generations=num_generations,
            stop_ids=self.stop_ids, pad_id=self.pad_id, banned_ids=self.banned_ids,
        )
        return ids, mask, self.decode(ids, mask)

    def decode(self, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
        rows = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
        return self.processor.tokenizer.batch_decode(rows, skip_special_tokens=True)


def greedy(max_new_tokens: int) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=max_new_tokens, do_sample=False)


@torch.no_grad()
def evaluate_batches(model, batches, generator: Generator, sampling: SamplingConfig, *, progress: bool = True,
                     description: str = "evaluating", parser: str = "robust") -> tuple[list[Prediction], dict]:
    """Answer every question in `batches`, read with the evaluation parser `parser`; returns the
    predictions and the summary dict."""
    accumulator, predictions = EvalAccumulator(parser), []  # an unknown parser fails before generating
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for batch in tqdm(batches, desc=description, disable=not progress, unit="batch"):
        batch = batch.to(device)
        _, _, texts = generator.complete(model, batch, sampling)
        scored = score(batch.records, texts, generator.processor.tokenizer, parser)
        accumulator.update(scored)
        predictions.extend(scored)
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
