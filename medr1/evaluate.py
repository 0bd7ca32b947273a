"""`mode=eval`: answer every test question with the configured model (zero-shot or a checkpoint)."""

from __future__ import annotations

import logging

import lightning as L
from omegaconf import DictConfig

from medr1.evaluation import Generator, evaluate_batches, greedy, write_eval_outputs
from medr1.setup import build_datamodule, load_policy
from medr1.train import run_dir_of

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate cfg.model on the whole test split; writes <run dir>/eval/ and returns the summary."""
    L.seed_everything(int(cfg.seed))
    policy = load_policy(cfg, train=False)
    if cfg.trainer.get("accelerator") in ("gpu", "cuda"):
        policy.model.to("cuda")
    datamodule = build_datamodule(cfg, policy.processor)
    datamodule.setup("test")
    predictions, summary = evaluate_batches(
        policy.model, datamodule.test_dataloader(), Generator.for_model(policy.model, policy.processor),
        greedy(int(cfg.eval.max_new_tokens)),
    )
    write_eval_outputs(run_dir_of(cfg), predictions, summary, f"{cfg.model.name} ({policy.path})")
    return summary
