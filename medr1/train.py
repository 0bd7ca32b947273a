"""`mode=train`: fit GRPO or SFT on the training split, then evaluate on the whole test split."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from medr1.builders import (
    build_datamodule,
    build_loggers,
    build_module,
    build_trainer,
    load_policy,
    run_dir_of,
)
from medr1.grading import write_eval_outputs
from medr1.precision import autocast_for, check_trainable_precision

log = logging.getLogger(__name__)


def save_final(module, run_dir: Path) -> Path:
    """The trained policy as a plain HF folder (LoRA merged), loadable with model.path=<folder>."""
    folder = run_dir / "checkpoints" / "final"
    model = module.model
    if hasattr(model, "merge_and_unload"):
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(folder)
    module.processor.save_pretrained(folder)
    return folder


def train(cfg: DictConfig) -> dict:
    """Train per cfg; returns the final evaluation summary (also written to <run dir>/eval/)."""
    L.seed_everything(int(cfg.seed), workers=True)
    torch.set_num_threads(int(cfg.get("num_threads") or torch.get_num_threads()))
    run_dir = run_dir_of(cfg)
    policy = load_policy(cfg, train=True)
    datamodule = build_datamodule(cfg, policy.processor, with_targets=cfg.algo.name == "sft")
    datamodule.setup("fit")
    module = build_module(cfg, policy, datamodule)
    callbacks = [
        ModelCheckpoint(
            dirpath=str(run_dir / "checkpoints"),
            every_n_train_steps=int(cfg.checkpoint.every_n_steps),
            save_last=True,
            save_top_k=-1 if cfg.checkpoint.keep_all else 1,
        ),
    ]
    loggers = build_loggers(cfg, run_dir)
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    callbacks += [instantiate(callback) for callback in (cfg.get("callbacks") or {}).values()]
    trainer = build_trainer(cfg, run_dir, loggers, callbacks)
    check_trainable_precision(
        policy.model,
        trainer.precision,  # Lightning's own name for it (legacy aliases resolved)
        trainer.strategy,
        bool(cfg.model.get("allow_low_precision_weights")),
    )
    datamodule.batch_size = per_rank_batch_size(cfg.data, trainer.world_size)

    # Under DDP/FSDP every rank runs this function; evaluation and files are rank zero's job
    is_main = rank_zero_only.rank == 0
    start_summary = None
    if cfg.eval.before_training and is_main:
        predictions, start_summary = evaluate_on_device(
            module, trainer, datamodule, "evaluating before training"
        )
        write_eval_outputs(run_dir / "eval_before", predictions, start_summary, "before training")

    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_path(cfg, run_dir))
    log.info("training took %.1f s", time.perf_counter() - started)
    if not is_main:
        return {"accuracy": float("nan")}
    final = save_final(module, run_dir)
    log.info("final model saved to %s (evaluate it with mode=eval model.path=%s)", final, final)

    predictions, summary = evaluate_on_device(module, trainer, datamodule, "evaluating on the test split")
    write_eval_outputs(
        run_dir, predictions, summary, f"{cfg.algo.name} on {cfg.modality.name}/{cfg.question_type.name}"
    )
    if start_summary is not None:
        print(
            f"test accuracy: {100 * start_summary['accuracy']:.1f}% before training -> "
            f"{100 * summary['accuracy']:.1f}% after",
            flush=True,
        )
    for logger in loggers:
        logger.log_metrics(
            {f"test/accuracy_{k}": v for k, v in summary["by_modality"].items()}
            | {f"test/accuracy_{k}": v for k, v in summary["by_question_type"].items()}
            | {
                "test/accuracy": summary["accuracy"],
                "test/format_rate": summary["format_rate"],
                "test/reasoning_length": summary["reasoning_length"],
            },
            step=trainer.global_step,
        )
        logger.finalize("success")
    finish_wandb(loggers)
    return summary


def per_rank_batch_size(data_cfg: DictConfig, world_size: int) -> int:
    """Prompts per rank and step: `data.global_batch_size` split over the ranks when it is set (so a
    paper's protocol does not change with trainer.devices), else `data.batch_size` (per rank)."""
    total = data_cfg.get("global_batch_size")
    if total is None:
        return int(data_cfg.batch_size)
    if int(total) < 1 or int(total) % world_size:
        raise ValueError(
            f"data.global_batch_size={total} must be a positive multiple of the number of "
            f"processes ({world_size}); change it or trainer.devices / trainer.num_nodes"
        )
    return int(total) // world_size


def evaluate_on_device(module, trainer: L.Trainer, datamodule, description: str):
    """Greedy test-split evaluation on the Trainer's device under its autocast (outside fit, which
    leaves the model on the CPU), so a GPU run evaluates on the GPU with the precision it trained in."""
    device = trainer.strategy.root_device
    module.to(device)
    with autocast_for(trainer.precision, device):
        return module.evaluate(datamodule.test_dataloader(), description=description)


def finish_wandb(loggers: list) -> None:
    """Close the W&B run: flushes an offline run to disk, and lets the next job of a sweep that
    runs in this process start its own run instead of logging into this one."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


def resume_path(cfg: DictConfig, run_dir: Path) -> str | None:
    """checkpoint.resume: null (fresh), "last" (this run dir's last.ckpt, if any) or a .ckpt path."""
    resume = cfg.checkpoint.get("resume")
    if not resume:
        return None
    if resume == "last":
        last = run_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.exists() else None
    if not Path(resume).exists():
        raise FileNotFoundError(
            f"checkpoint.resume={resume!r} does not exist; pass a .ckpt path, 'last' or null"
        )
    return str(resume)
