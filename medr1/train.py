"""`mode=train`: fit GRPO or SFT on the training split, then evaluate on the whole test split."""

from __future__ import annotations

import json
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
from medr1.cache import write_atomically
from medr1.cluster import SaveOnPreemption, resume_mode
from medr1.evaluate import probes_of
from medr1.grading import logged_metrics, write_eval_outputs
from medr1.precision import autocast_for, check_trainable_precision
from medr1.resume import (
    AtomicCheckpointIO,
    CheckpointError,
    CheckpointExtras,
    check_restorable,
    check_same_training,
    frozen_parameters,
    read_checkpoint,
    training_config,
    writes_plain_state_dict,
)

log = logging.getLogger(__name__)


def save_final(module, run_dir: Path) -> Path:
    """The trained policy as a plain HF folder (LoRA merged), loadable with model.path=<folder>;
    written under a temporary name and renamed when whole, so a killed run never leaves a `final/`
    that looks complete."""
    model = module.model
    if hasattr(model, "merge_and_unload"):
        import copy

        model = copy.deepcopy(model).merge_and_unload()

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        module.processor.save_pretrained(folder)

    return write_atomically(
        run_dir / "checkpoints" / "final",
        write,
        complete=lambda folder: (folder / "config.json").exists(),
        replace=True,
    )


def train(cfg: DictConfig) -> dict:
    """Train per cfg; returns the final evaluation summary (also written to <run dir>/eval/)."""
    L.seed_everything(int(cfg.seed), workers=True)
    torch.set_num_threads(int(cfg.get("num_threads") or torch.get_num_threads()))
    run_dir = run_dir_of(cfg)
    keep = checkpoints_kept(cfg.checkpoint)  # a bad value fails before the model loads
    probes_of(cfg)  # so does an unknown eval.probes name
    resume, checkpoint = resume_checkpoint(cfg, run_dir)
    if checkpoint is not None and steps_left(cfg, checkpoint) == 0:
        if (summary := finished_summary(run_dir, checkpoint["global_step"], cfg)) is not None:
            return summary
        log.info(
            "%s is at the last step: nothing left to train; writing the final model and evaluation", resume
        )
    policy = load_policy(cfg, train=True)
    datamodule = build_datamodule(cfg, policy.processor, with_targets=cfg.algo.name == "sft")
    datamodule.setup("fit")
    module = build_module(cfg, policy, datamodule)
    resumed_step = None if checkpoint is None else prepare_restore(module, checkpoint, resume)
    del checkpoint  # Lightning reads the file again (memory-mapped here: nothing large was held)
    callbacks = [
        ModelCheckpoint(
            dirpath=str(run_dir / "checkpoints"),
            every_n_train_steps=int(cfg.checkpoint.every_n_steps),
            save_last=True,
            save_top_k=keep,
            monitor="step",  # with save_top_k: the newest step checkpoints are the ones kept
            mode="max",
        ),
        CheckpointExtras(training_config(cfg)),  # the run's config; adapters-only for LoRA
        SaveOnPreemption(run_dir / "checkpoints"),  # under submitit: checkpoint, then requeue
    ]
    loggers = build_loggers(cfg, run_dir)
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    callbacks += [instantiate(callback) for callback in (cfg.get("callbacks") or {}).values()]
    trainer = build_trainer(cfg, run_dir, loggers, callbacks)
    plain_checkpoints = writes_plain_state_dict(trainer.strategy)  # one file per checkpoint, medr1's format
    if plain_checkpoints:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()  # a kill mid-save leaves the previous file
        if frozen_parameters(module):
            # its checkpoints leave the frozen weights out (CheckpointExtras), so loading one, ours or a
            # SLURM requeue's, must not ask for them; CheckpointExtras checks what a loaded one left out
            module.strict_loading = False
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
    if (
        cfg.eval.before_training
        and is_main
        and not (run_dir / "eval_before" / "eval" / "summary.json").exists()
    ):
        predictions, start_summary = evaluate_on_device(
            module, trainer, datamodule, "evaluating before training"
        )
        write_eval_outputs(run_dir / "eval_before", predictions, start_summary, "before training")

    started = time.perf_counter()
    # Lightning's torch.load of the checkpoint (checkpoint.resume's, or a SLURM requeue's) refuses anything
    # but tensors and plain containers; FSDP and DeepSpeed read their own formats as they choose
    weights_only = True if plain_checkpoints else None
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=weights_only)
    log.info("training took %.1f s", time.perf_counter() - started)
    if not is_main:
        return {"accuracy": float("nan")}
    if resumed_step is not None and trainer.global_step == resumed_step:  # e.g. an epoch-counted run
        if (summary := finished_summary(run_dir, resumed_step, cfg)) is not None:
            return summary
    final = save_final(module, run_dir)
    log.info("final model saved to %s (evaluate it with mode=eval model.path=%s)", final, final)

    predictions, summary = evaluate_on_device(module, trainer, datamodule, "evaluating on the test split")
    with autocast_for(trainer.precision, trainer.strategy.root_device):  # eval.probes, as evaluated
        probe_rows, summary = module.run_probes(datamodule, predictions, summary)
    write_eval_outputs(
        run_dir,
        predictions,
        summary,
        f"{cfg.algo.name} on {cfg.modality.name}/{cfg.question_type.name}",
        probe_rows,
    )
    if start_summary is not None:
        print(
            f"test accuracy: {100 * start_summary['accuracy']:.1f}% before training -> "
            f"{100 * summary['accuracy']:.1f}% after",
            flush=True,
        )
    for logger in loggers:
        logger.log_metrics(logged_metrics(summary, prefix="test"), step=trainer.global_step)
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


# --- checkpoints and resuming (docs/checkpoints.md) ---------------------------------------------------


def checkpoints_kept(checkpoint_cfg: DictConfig) -> int:
    """ModelCheckpoint's save_top_k: checkpoint.keep_last=K keeps the K newest step checkpoints (0: only
    last.ckpt); unset, the older checkpoint.keep_all decides (true: every one, false: the newest)."""
    keep_last, keep_all = checkpoint_cfg.get("keep_last"), checkpoint_cfg.get("keep_all")
    if keep_last is None:
        return -1 if keep_all else 1
    if keep_all or int(keep_last) < 0:
        raise SystemExit(
            f"error: checkpoint.keep_last={keep_last} with checkpoint.keep_all={keep_all}: set keep_last to the "
            "number of step checkpoints to keep (0 or more) and keep_all=false, or keep_last=null keep_all=true"
        )
    return int(keep_last)


def resume_path(cfg: DictConfig, run_dir: Path) -> str | None:
    """checkpoint.resume: null (fresh), "last" (this run dir's last.ckpt, if any) or a .ckpt path. Under a
    submitit launcher null means "last": a requeued job goes on from its checkpoint (medr1.cluster)."""
    resume = resume_mode(cfg.checkpoint.get("resume"))
    if not resume:
        return None
    if resume == "last":
        last = run_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.exists() else None
    if not Path(resume).exists():
        raise SystemExit(
            f"error: checkpoint.resume={resume!r} does not exist; pass a .ckpt path, 'last' or null"
        )
    return str(resume)


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> tuple[str | None, dict | None]:
    """The checkpoint to resume from (path, contents memory-mapped), checked: loadable with
    weights_only and written under the same training config (checkpoint.force_resume overrides).
    A sharded checkpoint folder (FSDP, DeepSpeed) comes back without contents: its strategy reads it."""
    path = resume_path(cfg, run_dir)
    if path is None or Path(path).is_dir():
        return path, None
    try:
        checkpoint = read_checkpoint(path)
        check_same_training(checkpoint, cfg, path)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
    return path, checkpoint


def prepare_restore(module, checkpoint: dict, path: str) -> int:
    """Check, before training starts, that `checkpoint` fits `module` (same parameters; the frozen ones
    it leaves out built from the same base); returns its step."""
    try:
        stored = (checkpoint.get("medr1_frozen") or {}).get("fingerprint")
        omitted = check_restorable(checkpoint["state_dict"], module, stored, path)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
    if omitted:
        log.info(
            "%s holds the trainable weights; the %d frozen ones come from the base model", path, len(omitted)
        )
    return int(checkpoint["global_step"])


def steps_left(cfg: DictConfig, checkpoint: dict) -> int | None:
    """Optimiser steps between the checkpoint and trainer.max_steps; None for a run counted in epochs."""
    max_steps = int(cfg.trainer.get("max_steps") or -1)
    return max(0, max_steps - int(checkpoint["global_step"])) if max_steps > 0 else None


def finished_summary(run_dir: Path, steps: int, cfg: DictConfig) -> dict | None:
    """A resumed run with nothing left to train: its evaluation, if this run dir holds one (it is not
    run again), after saying so; None when the outputs still have to be written."""
    summary_file = run_dir / "eval" / "summary.json"
    if not summary_file.exists():
        return None
    total = cfg.trainer.max_steps if int(cfg.trainer.get("max_steps") or -1) > 0 else steps
    print(f"the run already finished: {steps} steps of {total}; its outputs are in {run_dir}", flush=True)
    return json.loads(summary_file.read_text())
