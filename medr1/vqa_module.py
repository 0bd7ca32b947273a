"""What the GRPO and SFT LightningModules share: the policy, optimiser and schedule, validation
by batched generation (accuracy by modality and question type), the test evaluation (with option
probabilities when `eval_calibration`) and its shortcut probes, and exact-resume checkpoints."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence

import lightning as L
import numpy as np
import torch

from medr1.answers import get_parser
from medr1.distributed import gather_objects, gather_predictions, world_size
from medr1.grading import EvalAccumulator, Prediction, evaluate_batches, grade
from medr1.probes import check_probes, run_probes, test_split_of
from medr1.rollout import Sampler, greedy

log = logging.getLogger(__name__)


class VQAModule(L.LightningModule):
    def __init__(
        self,
        *,
        model,
        processor,
        optimizer: Callable,  # partial(torch.optim.X, lr=...): called with the trainable parameters
        scheduler: dict,  # {name: constant|linear|cosine, warmup_ratio, warmup_steps}
        eval_max_new_tokens: int,
        eval_parser: str = "robust",  # medr1.answers.PARSERS key: how validation and evaluate read answers
        eval_calibration: bool = False,  # evaluate(): option-letter probabilities and ECE (eval.calibration)
        eval_probes: Sequence[str] = (),  # run_probes(): names in medr1.probes.PROBES (eval.probes)
    ):
        super().__init__()
        self.model = model
        self.processor = processor
        self.optimizer_factory = optimizer
        self.scheduler_cfg = dict(scheduler)
        self.eval_max_new_tokens = eval_max_new_tokens
        get_parser(eval_parser)  # an unknown name fails now, not at the first validation
        self.eval_parser = eval_parser
        self.eval_calibration = bool(eval_calibration)
        self.eval_probes = check_probes(eval_probes)  # an unknown name fails now, not after training
        self.sampler = Sampler.for_model(model, processor)
        self._val_predictions = []

    # --- optimisation --------------------------------------------------------------------------

    def configure_optimizers(self):
        from transformers import get_scheduler

        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("no trainable parameters: check tuning (LoRA targets / frozen modules)")
        optimizer = self.optimizer_factory(params)
        total = max(1, self.optimizer_steps_total())
        warmup = int(
            self.scheduler_cfg.get("warmup_steps")
            or round(float(self.scheduler_cfg.get("warmup_ratio", 0.0)) * total)
        )
        scheduler = get_scheduler(
            self.scheduler_cfg.get("name", "constant_with_warmup"),
            optimizer,
            num_warmup_steps=warmup,
            num_training_steps=total,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def optimizer_steps_total(self) -> int:
        return int(self.trainer.estimated_stepping_batches)

    # --- validation: batched greedy generation -------------------------------------------------

    def validation_step(self, batch, batch_idx):
        _, _, texts = self.sampler.complete(self.model, batch, greedy(self.eval_max_new_tokens))
        self._val_predictions.extend(grade(batch.records, texts, self.processor.tokenizer, self.eval_parser))

    def on_validation_epoch_end(self):
        predictions, self._val_predictions = gather_predictions(self._val_predictions), []
        if not predictions:
            return
        accumulator = EvalAccumulator(self.eval_parser)
        accumulator.update(predictions)
        summary = accumulator.summary()
        metrics = {
            "val/accuracy": summary["accuracy"],
            "val/format_rate": summary["format_rate"],
            "val/reasoning_length": summary["reasoning_length"],
        }
        metrics |= {f"val/accuracy_{k}": v for k, v in summary["by_modality"].items()}
        metrics |= {f"val/accuracy_{k}": v for k, v in summary["by_question_type"].items()}
        # every rank holds the same gathered numbers (their mean is exact): logged on every rank so that
        # callbacks monitoring them (EarlyStopping, ModelCheckpoint) see them everywhere
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=summary["n"], sync_dist=True)

    def evaluate(self, batches, *, progress: bool = True, description: str = "evaluating"):
        return evaluate_batches(
            self.model,
            batches,
            self.sampler,
            greedy(self.eval_max_new_tokens),
            progress=progress,
            description=description,
            parser=self.eval_parser,
            calibration=self.eval_calibration,
        )

    def run_probes(
        self, datamodule, predictions: list[Prediction], summary: dict, *, progress: bool = True
    ) -> tuple[dict[str, list[dict]], dict]:
        """The shortcut probes `eval_probes` on the test split that `evaluate` answered (predictions,
        summary): (rows per probe for write_eval_outputs, the summary with `probes` added). Run after
        the final test evaluation only, on its device and under its autocast."""
        return run_probes(
            self.eval_probes,
            model=self.model,
            sampler=self.sampler,
            sampling=greedy(self.eval_max_new_tokens),
            parser=self.eval_parser,
            **test_split_of(datamodule),
            predictions=predictions,
            summary=summary,
            calibration=self.eval_calibration,
            progress=progress,
        )

    # --- exact resume: random states travel with the checkpoint ---------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lightning calls this on every rank (only rank zero writes the file): gather each rank's
        # states, so that every rank resumes its own sampling stream, not rank zero's.
        checkpoint["medr1_rng"] = {"per_rank": gather_objects(_random_states())}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("medr1_rng")
        if not states:
            return
        per_rank = states["per_rank"]
        rank = self.global_rank if self._trainer is not None else 0
        if len(per_rank) != world_size():  # also covers a rank with no state of its own
            log.warning(
                "checkpoint holds random states of %d process(es), resuming on %d: rank %d restores "
                "rank %d's, so sampling will not repeat the interrupted run exactly",
                len(per_rank),
                world_size(),
                rank,
                rank % len(per_rank),
            )
        _set_random_states(per_rank[rank % len(per_rank)])


def _random_states() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "python": random.getstate(),
    }


def _set_random_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    np.random.set_state(_numpy_state_from_plain(states["numpy"]))
    random.setstate(states["python"])


def _numpy_state_to_plain(state: tuple) -> tuple:
    """numpy's RNG state with its key array as a tensor: loadable by torch.load(weights_only=True)."""
    name, keys, position, has_gauss, cached = state
    return name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)


def _numpy_state_from_plain(state: tuple) -> tuple:
    name, keys, position, has_gauss, cached = state
    return name, keys.numpy().astype(np.uint32), position, has_gauss, cached
