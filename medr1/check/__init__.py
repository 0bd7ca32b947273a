"""`mode=check`: a pre-flight of a training run, with the same overrides, that trains nothing.

    python run.py mode=check <the training run's overrides>

It reads the configured data and model as training would and reports (docs/check.md):
1. records per split, modality and question type, and the bad records the readers skipped (a bad
   record under data.on_bad_record=raise ends the check with its one-line error);
2. every prompt's length and image tokens, measured with the processor through the training
   PromptCollator (check/prompts.py), and the longest training prompt against algo.max_prompt_length;
3. the longest prompt plus the completion (and evaluation's eval.max_new_tokens) against the
   model's context, text_config.max_position_embeddings;
4. the peak memory per device of a training step, estimated term by term (medr1/memory.py) from
   the model's config instantiated on the meta device, against check.memory_gb (null: the GPU's
   memory when training on CUDA, else the machine's RAM);
5. once those pass: the time of check.timing_steps real training steps after a warm-up (no logger,
   no checkpoints), extrapolated to the run, and of one evaluation batch.
A too-long prompt, a sequence longer than the context, a record that cannot become a batch or an
estimate above the budget ends the check before any training step with SystemExit naming what to
change. The summary is written to <run dir>/check.json.
"""

from __future__ import annotations

import json
import logging
import math

import lightning as L
import torch
from omegaconf import DictConfig

from medr1.builders import build_datamodule, run_dir_of
from medr1.check.prompts import (
    SplitScan,
    image_token_id_of,
    load_splits,
    measuring_collator,
    over_limit,
    record_counts,
    scan_split,
)
from medr1.check.report import format_report, format_timing, gib
from medr1.check.settings import (
    attention_of,
    counts_of,
    memory_budget,
    meta_policy,
    model_config,
    precision_of,
    shares_prompts,
    strategy_of,
    target_device,
    world_size_of,
)
from medr1.check.timing import time_training, training_batches
from medr1.memory import ModelShape, StepSizes, estimate_memory
from medr1.models.checkpoints import resolve_model_path
from medr1.models.loading import load_processor
from medr1.rl.module import prefill_reusable
from medr1.train import per_rank_batch_size

log = logging.getLogger(__name__)


def check(cfg: DictConfig) -> dict:
    """Run the pre-flight; returns the summary (also <run dir>/check.json). Raises SystemExit with
    what to change when the run would fail."""
    L.seed_everything(int(cfg.seed), workers=True)
    torch.set_num_threads(int(cfg.get("num_threads") or torch.get_num_threads()))
    run_dir = run_dir_of(cfg)
    sft = cfg.algo.name == "sft"

    # --- the model, without weights, and the data as training reads it --------------------------
    try:
        path = resolve_model_path(cfg.model, cfg.paths.cache_dir)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"check failed: {error}") from None
    config = model_config(path)
    try:
        processor = load_processor(cfg.model, path)
    except (OSError, ValueError) as error:
        raise SystemExit(f"check failed: cannot load the processor of model.path={path!r}: {error}") from None
    shape = ModelShape.from_config(config)
    meta_model = meta_policy(config, cfg.model, cfg.tuning)
    counts, shared_family = counts_of(meta_model, cfg.tuning), shares_prompts(meta_model)
    datamodule = build_datamodule(cfg, processor, with_targets=sft)
    bad_records = load_splits(datamodule) | {"on_bad_record": cfg.data.get("on_bad_record", "raise")}

    # --- every prompt, measured --------------------------------------------------------------------
    train, val, test = scan_prompts(datamodule, processor, config, shape.merge, sft)
    bad_records["unbatchable"] = train.broken + test.broken
    prompts = {scan.name: prompt_stats(scan, sft and scan is train) for scan in (train, val, test)}
    failures = []
    if bad_records["unbatchable"]:
        failures.append(
            f"{len(bad_records['unbatchable'])} record(s) cannot become a batch; training would stop at the "
            f"first: {bad_records['unbatchable'][0]}. Fix or remove them"
        )
    limits, length_failures = check_lengths(cfg, shape, train, test, sft)
    failures += length_failures

    # --- memory ------------------------------------------------------------------------------------
    device, world = target_device(cfg.trainer), world_size_of(cfg.trainer)
    strategy = strategy_of(cfg.trainer, world)
    precision = precision_of(cfg.model, cfg.trainer.precision, device)
    step = step_sizes(cfg, train, test, sft, shared_family, device=device, world=world, strategy=strategy)
    estimate = estimate_memory(shape, counts, precision, step)
    budget, budget_source = memory_budget(cfg.check, cfg.trainer)
    memory = {
        "settings": vars(step),
        "parameters": {"total": counts.total, "trainable": counts.trainable},
        "bytes": {"weight": precision.weight, "compute": precision.compute, "autocast": precision.autocast},
        "terms": estimate.terms,
        "phases": estimate.phases,
        "peak_phase": estimate.peak_phase,
        "peak_bytes": estimate.peak,
        "budget_bytes": budget,
        "budget_source": budget_source,
    }
    if budget is not None and estimate.peak > budget:
        failures.append(memory_failure(cfg, estimate, step, budget, budget_source))

    summary = {
        "run": {
            "model": cfg.model.name,
            "model_path": path,
            "data": cfg.data.name,
            "algo": cfg.algo.name,
            "tuning": cfg.tuning.name,
            "precision": str(cfg.trainer.precision),
            "device": device,
            "world_size": world,
            "strategy": strategy,
            "attention": step.attention,
        },
        "records": record_counts(datamodule),
        "bad_records": bad_records,
        "prompts": prompts,
        "limits": limits,
        "memory": memory,
        "failures": failures,
    }
    print(format_report(summary), flush=True)
    write_summary(run_dir, summary)
    if failures:
        raise SystemExit("check failed:\n" + "\n".join(f"- {failure}" for failure in failures))

    # --- a few real steps ----------------------------------------------------------------------------
    summary["timing"] = timing(cfg, datamodule, run_dir, device, world, estimate.peak)
    print(format_timing(summary["timing"]), flush=True)
    write_summary(run_dir, summary)
    return summary


# --- the static checks ---------------------------------------------------------------------------


def scan_prompts(
    datamodule, processor, config, merge: int, sft: bool
) -> tuple[SplitScan, SplitScan, SplitScan]:
    """Every training prompt through the training collator, every test prompt through the evaluation
    one; validation is a subset of test."""
    image_token_id = image_token_id_of(processor, config)
    train = scan_split(
        "train",
        datamodule.train_records,
        measuring_collator(datamodule.train_collator, with_targets=sft),
        image_token_id=image_token_id,
        merge=merge,
    )
    test = scan_split(
        "test",
        datamodule.test_records,
        measuring_collator(datamodule.eval_collator),
        image_token_id=image_token_id,
        merge=merge,
    )
    val_ids = {record.id for record in datamodule.val_records}
    val = SplitScan("val", [length for length in test.lengths if length.record_id in val_ids])
    return train, val, test


def prompt_stats(scan, with_targets: bool) -> dict:
    stats = {
        "records": len(scan.lengths),
        "tokens": scan.stats("tokens"),
        "image_tokens": scan.stats("image_tokens"),
    }
    if with_targets:
        stats["target_tokens"] = scan.stats("target_tokens")
    longest = scan.longest()
    stats["longest"] = vars(longest) if longest else None
    return stats


def check_lengths(cfg: DictConfig, shape: ModelShape, train, test, sft: bool) -> tuple[dict, list[str]]:
    """The longest training prompt against algo.max_prompt_length, and prompt + completion against
    the model's context, for training and for evaluation."""
    failures = []
    limit = cfg.algo.get("max_prompt_length")
    over = over_limit(train, limit)
    longest = train.longest()
    if over:
        failures.append(
            f"the longest training prompt is {over[0].tokens} tokens (record {over[0].record_id!r}, "
            f"{over[0].image}), above algo.max_prompt_length={limit} ({len(over)} training prompt(s) over): "
            f"raise algo.max_prompt_length to >= {over[0].tokens} or lower model.max_pixels (or data.resize)"
        )
    completion = train.stats("target_tokens")["max"] if sft else int(cfg.algo.max_completion_length)
    prompt, eval_prompt = (longest.tokens if longest else 0), (test.longest().tokens if test.lengths else 0)
    sequences = {
        "training_sequence": {
            "prompt": prompt,
            "new": int(completion),
            "what": "target" if sft else "completion (algo.max_completion_length)",
        },
        "evaluation_sequence": {
            "prompt": eval_prompt,
            "new": int(cfg.eval.max_new_tokens),
            "what": "new tokens (eval.max_new_tokens)",
        },
    }
    for key, sequence in sequences.items():
        sequence["total"] = sequence["prompt"] + sequence["new"]
        if shape.context and sequence["total"] > shape.context:
            knob = "algo.max_completion_length" if key == "training_sequence" else "eval.max_new_tokens"
            failures.append(
                f"{key.replace('_', ' ')}: {sequence['prompt']} prompt + {sequence['new']} tokens = "
                f"{sequence['total']} > the model's context (text_config.max_position_embeddings={shape.context}): "
                f"lower {knob} to <= {max(shape.context - sequence['prompt'], 0)} or shorten the prompts "
                "(model.max_pixels, data.resize)"
            )
    limits = {
        "max_prompt_length": limit,
        "longest_training_prompt": vars(longest) if longest else None,
        "over_max_prompt_length": len(over),
        "eval_over_max_prompt_length": len(over_limit(test, limit)),
        "context": shape.context,
        **sequences,
    }
    return limits, failures


def step_sizes(
    cfg, train, test, sft: bool, shared_family: bool, *, device: str, world: int, strategy: str
) -> StepSizes:
    """The estimate's sizes: per-rank batch, micro-batch, the longest prompt and completion."""
    prompts = per_rank_batch_size(cfg.data, world)
    algo = cfg.algo
    grpo = not sft
    micro = int(algo.get("micro_batch_size", 0) or 0) if grpo else 0
    beta = float(algo.get("beta", 0.0) or 0.0) if grpo else 0.0
    reference = None if beta == 0.0 else ("adapters" if cfg.tuning.name == "lora" else "copy")
    longest = train.longest()
    return StepSizes(
        prompts=prompts,
        generations=int(algo.num_generations) if grpo else 1,
        micro_prompts=min(micro or prompts, prompts),
        prompt_tokens=longest.tokens if longest else 0,
        completion_tokens=int(train.stats("target_tokens")["max"])
        if sft
        else int(algo.max_completion_length),
        image_patches=max((x.patches for x in train.lengths), default=0),
        eval_batch=int(cfg.data.eval_batch_size),
        eval_prompt_tokens=test.longest().tokens if test.lengths else 0,
        eval_new_tokens=int(cfg.eval.max_new_tokens),
        algo="sft" if sft else "grpo",
        reference=reference,
        num_iterations=int(algo.get("num_iterations", 1) or 1) if grpo else 1,
        attention=attention_of(cfg.model),
        checkpointing=bool(cfg.model.get("gradient_checkpointing")),
        shared_prompt=bool(algo.get("shared_prompt_forward", True)) and shared_family,
        shared_rollout=shared_family,
        device=device,
        strategy=strategy,
        world_size=world,
        kept_prefill=grpo
        and prefill_reusable(
            num_iterations=int(algo.get("num_iterations", 1) or 1),
            one_backward_pass=not micro or micro >= prompts,
            shared_prompt=bool(algo.get("shared_prompt_forward", True)) and shared_family,
            dynamic_sampling=bool(algo.get("dynamic_sampling", False)),
            checkpointing=bool(cfg.model.get("gradient_checkpointing")),
            dropout=cfg.tuning.name == "lora" and float(cfg.tuning.get("dropout") or 0) > 0,
            strategy=strategy,
        ),
    )


def memory_failure(cfg: DictConfig, estimate, step: StepSizes, budget: int, source: str) -> str:
    """What to change, led by the terms that dominate the peak phase."""
    phase = estimate.phases[estimate.peak_phase]
    largest = sorted(phase, key=phase.get, reverse=True)[:3]
    advice = []
    if {"activations", "logits_training", "kv_cache_training", "logits_training_forward"} & set(largest):
        advice.append(
            f"lower data.batch_size (B={step.prompts}) or algo.micro_batch_size (b={step.micro_prompts})"
        )
        if not step.checkpointing:
            advice.append("enable model.gradient_checkpointing=true")
    if {"kv_cache_rollout", "kv_cache_scoring", "logits_scoring", "kv_cache_validation"} & set(largest):
        advice.append(
            f"lower data.batch_size, algo.num_generations (G={step.generations}) or algo.max_completion_length"
        )
    if {"parameters", "reference_model", "adamw_state", "gradients"} & set(largest):
        if cfg.tuning.name != "lora":
            advice.append("use tuning=lora (no reference copy, AdamW state for the adapters only)")
        if step.strategy in ("single", "ddp"):
            advice.append("shard with trainer=fsdp or trainer=deepspeed")
    if not advice:
        advice.append("lower data.batch_size or algo.micro_batch_size")
    parts = ", ".join(f"{name} {gib(phase[name])}" for name in largest)
    return (
        f"{'; '.join(advice)}: estimated {gib(estimate.peak)} GiB per device ({estimate.peak_phase}: {parts}) "
        f"> {gib(budget)} GiB ({source})"
    )


# --- timing ----------------------------------------------------------------------------------------


def timing(cfg: DictConfig, datamodule, run_dir, device: str, world: int, estimated_peak: int) -> dict:
    steps = int(cfg.check.get("timing_steps", 0) or 0)
    if steps <= 0:
        return {"skipped": "check.timing_steps=0"}
    if device == "cuda" and not torch.cuda.is_available():
        return {"skipped": "the run trains on CUDA and this machine has no GPU"}
    per_rank = per_rank_batch_size(cfg.data, world)
    datamodule.batch_size = per_rank
    measured = time_training(cfg, datamodule, run_dir, steps)
    batches = training_batches(cfg, len(datamodule.train_records), per_rank, world)
    result = {"device": device, "timing_steps": steps, **measured, "training_batches": batches}
    result["training_seconds"] = batches * (measured["seconds_per_step"] or 0.0)
    eval_size = int(cfg.data.eval_batch_size)
    interval = cfg.trainer.get("val_check_interval")
    validations = batches // int(interval) if isinstance(interval, int) and interval > 0 else 0
    tests = 1 + int(bool(cfg.eval.get("before_training")))
    eval_batches = validations * math.ceil(len(datamodule.val_records) / eval_size) + tests * math.ceil(
        len(datamodule.test_records) / eval_size
    )
    result.update(
        eval_batch_size=eval_size,
        eval_batches=eval_batches,
        eval_seconds=eval_batches * (measured["eval_batch_seconds"] or 0.0),
        estimated_peak_bytes=estimated_peak,
    )
    result["total_seconds"] = result["training_seconds"] + result["eval_seconds"]
    return result


def write_summary(run_dir, summary: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "check.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    log.info("wrote %s", run_dir / "check.json")
