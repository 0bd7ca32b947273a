"""The tables `mode=check` prints, made from the summary it also writes as check.json."""

from __future__ import annotations

from medr1.memory import GIB

TERM_NAMES = {
    "parameters": "parameters",
    "reference_model": "reference model (frozen copy)",
    "gradients": "gradients",
    "adamw_state": "AdamW state (2 moments)",
    "ddp_gradient_buckets": "DDP gradient buckets",
    "fsdp_gathered_layers": "FSDP gathered layers",
    "autocast_weight_copies": "autocast bf16 weight copies",
    "cuda_context": "CUDA context and workspaces",
    "activations": "activations saved for backward",
    "kv_cache_training": "KV cache, policy pass",
    "logits_training": "logits, policy pass",
    "logits_training_forward": "logits, policy pass (forward end)",
    "kv_cache_rollout": "KV cache, rollout",
    "prefill_working_set": "prefill working set",
    "recomputed_layer": "recomputed layer (checkpointing)",
    "backward_working_set": "backward working set (one layer)",
    "sampling_buffers": "sampling buffers",
    "kv_cache_scoring": "KV cache, reference pass",
    "scoring_working_set": "reference pass working set",
    "logits_scoring": "logits, reference pass",
    "optimizer_step_buffer": "AdamW step buffer",
    "kv_cache_validation": "KV cache, validation",
    "validation_working_set": "validation prefill and sampling",
}


def gib(value: float | None) -> str:
    return "-" if value is None else f"{value / GIB:.3f}"


def format_report(summary: dict) -> str:
    sections = [
        _header(summary["run"]),
        _records(summary["records"], summary["bad_records"]),
        _prompts(summary["prompts"], summary["limits"]),
        _memory(summary["memory"]),
    ]
    if "timing" in summary:
        sections.append(format_timing(summary["timing"]))
    failures = summary.get("failures") or []
    sections.append("result: " + ("FAILED" if failures else "OK (the static checks pass)"))
    return "\n\n".join(sections)


def _header(run: dict) -> str:
    return (
        f"== mode=check: model={run['model']} ({run['model_path']}), data={run['data']}, algo={run['algo']}, "
        f"tuning={run['tuning']}, trainer.precision={run['precision']}, {run['device']} x{run['world_size']} "
        f"({run['strategy']}), attention {run['attention']}"
    )


def _records(records: dict, bad: dict) -> str:
    splits = list(records)
    width = max(8, *(len(split) + 2 for split in splits))

    def row(label: str, values: list) -> str:
        return f"  {label:<24}" + "".join(f"{value:>{width}}" for value in values)

    lines = [f"{'records':<26}" + "".join(f"{split:>{width}}" for split in splits)]
    lines.append(row("all", [records[split]["records"] for split in splits]))
    for group in ("modality", "question_type"):
        for name in dict.fromkeys(name for split in splits for name in records[split][group]):
            lines.append(row(name, [records[split][group].get(name, 0) for split in splits]))
    skipped = (
        f"bad records skipped by the readers: {bad['skipped']} (data.on_bad_record={bad['on_bad_record']})"
    )
    if bad["skipped_by_problem"]:
        skipped += ": " + ", ".join(
            f"{problem}: {count}" for problem, count in bad["skipped_by_problem"].items()
        )
    lines.append(skipped)
    lines += [f"  e.g. {example}" for example in bad.get("skipped_examples", [])[:1]]
    if bad["unbatchable"]:
        lines.append(
            f"records that cannot become a batch: {len(bad['unbatchable'])}; first: {bad['unbatchable'][0]}"
        )
    return "\n".join(lines)


def _prompts(prompts: dict, limits: dict) -> str:
    lines = [f"{'prompts (tokens)':<34}{'min':>8}{'median':>9}{'max':>8}"]
    for split, stats in prompts.items():
        for key, label in (
            ("tokens", "prompt length"),
            ("image_tokens", "image tokens"),
            ("target_tokens", "SFT target"),
        ):
            if key in stats:
                s = stats[key]
                lines.append(f"  {split + ' ' + label:<32}{s['min']:>8}{s['median']:>9g}{s['max']:>8}")
    longest = limits["longest_training_prompt"]
    if longest:
        verdict = (
            "OK"
            if not limits["over_max_prompt_length"]
            else f"OVER ({limits['over_max_prompt_length']} records)"
        )
        lines.append(
            f"longest training prompt: {longest['tokens']} tokens (record {longest['record_id']!r}, "
            f"{longest['image']}) vs algo.max_prompt_length={limits['max_prompt_length']}: {verdict}"
        )
    if limits.get("eval_over_max_prompt_length"):
        lines.append(
            f"  note: {limits['eval_over_max_prompt_length']} evaluation prompts are longer than "
            "algo.max_prompt_length (evaluation does not refuse them; they count against the context)"
        )
    context = limits["context"]
    for key, label in (("training_sequence", "training"), ("evaluation_sequence", "evaluation")):
        sequence = limits[key]
        verdict = "OK" if not context or sequence["total"] <= context else "OVER"
        lines.append(
            f"context, {label}: {sequence['prompt']} prompt + {sequence['new']} {sequence['what']} = "
            f"{sequence['total']} tokens vs text_config.max_position_embeddings={context}: {verdict}"
        )
    return "\n".join(lines)


def _memory(memory: dict) -> str:
    s = memory["settings"]
    lines = [
        f"memory per device, estimated (GiB; docs/check.md): {memory['parameters']['total']:,} parameters, "
        f"{memory['parameters']['trainable']:,} trainable; B={s['prompts']} prompts x G={s['generations']}, "
        f"{s['micro_prompts']} prompts per backward pass, P={s['prompt_tokens']}, T={s['completion_tokens']}, "
        f"{s['image_patches']} patches/prompt; weights {memory['bytes']['weight']} B, compute "
        f"{memory['bytes']['compute']} B; gradient checkpointing {'on' if s['checkpointing'] else 'off'}, "
        f"shared prompt forward {'on' if s['shared_prompt'] else 'off'}, reference: {s['reference'] or 'none'}"
    ]
    phases = memory["phases"]
    names = list(dict.fromkeys(name for phase in phases.values() for name in phase))
    header = f"  {'term':<36}{'GiB':>8}  " + "".join(f"{p:>12}" for p in phases)
    lines.append(header)
    for name in names:
        row = "".join(f"{gib(phases[p][name]) if name in phases[p] else '':>12}" for p in phases)
        lines.append(f"  {TERM_NAMES.get(name, name):<36}{gib(memory['terms'][name]):>8}  {row}")
    totals = "".join(f"{gib(sum(phases[p].values())):>12}" for p in phases)
    lines.append(f"  {'phase total':<36}{'':>8}  {totals}")
    budget = memory["budget_bytes"]
    verdict = (
        "no budget to compare with"
        if budget is None
        else ("OK" if memory["peak_bytes"] <= budget else "OVER")
    )
    lines.append(
        f"peak: {gib(memory['peak_bytes'])} GiB ({memory['peak_phase']}) vs budget {gib(budget)} GiB "
        f"({memory['budget_source']}): {verdict}"
    )
    return "\n".join(lines)


def format_timing(timing: dict) -> str:
    if "skipped" in timing:
        return f"timing: skipped ({timing['skipped']})"
    lines = [
        f"timing on {timing['device']}: warm-up step {timing['warmup_seconds']:.2f} s, then "
        + ", ".join(f"{t:.2f}" for t in timing["step_seconds"])
        + f" s per step (median {timing['seconds_per_step']:.2f} s)",
        f"  training: {timing['training_batches']} steps x {timing['seconds_per_step']:.2f} s = "
        f"{_duration(timing['training_seconds'])}",
    ]
    if timing.get("eval_batch_seconds") is not None:
        lines.append(
            f"  evaluation: one batch of {timing['eval_batch_size']} in {timing['eval_batch_seconds']:.2f} s; "
            f"{timing['eval_batches']} batches (validation + test) = {_duration(timing['eval_seconds'])}"
        )
    lines.extend(format_phases(timing))
    lines.append(f"  total: about {_duration(timing['total_seconds'])}")
    if timing.get("measured_peak_bytes") is not None:
        lines.append(
            f"  measured peak CUDA memory over the timed steps: {gib(timing['measured_peak_bytes'])} GiB "
            f"(estimated {gib(timing['estimated_peak_bytes'])} GiB)"
        )
    return "\n".join(lines)


PHASE_NAMES = {
    "rollout": "rollout",
    "reference": "reference",
    "policy": "policy forward+backward",
    "optimizer": "optimiser",
    "other": "other (data, rewards, logging, loop)",
}


def format_phases(timing: dict) -> list[str]:
    """Where the median step's time goes (a row per phase), and its arithmetic against the device's
    matmul rate."""
    lines = []
    phases = timing.get("phases_s")
    if phases:
        step = sum(phases.get(name, 0.0) for name in PHASE_NAMES)
        lines.append(f"  where the median step's {step:.2f} s go:")
        for name, label in PHASE_NAMES.items():
            if name in phases:
                share = f"{phases[name] / step:>4.0%}" if step > 0 else ""
                prefill = phases.get(f"{name}_prefill")
                inside = f"  (images+prompts {prefill:.2f} s)" if prefill else ""
                lines.append(f"    {label:<38}{phases[name]:>6.2f} s {share}{inside}")
    if timing.get("completion_tokens_per_step"):
        lines.append(
            f"  completion tokens: {timing['completion_tokens_per_step']:.0f} per step, "
            f"{timing['completion_tokens_per_step'] / timing['seconds_per_step']:.0f} per second"
        )
    if timing.get("flops_per_step"):
        peak = timing["matmul_peak"]
        where = f"{peak['threads']} threads" if peak.get("threads") else peak["device"]
        lines.append(
            f"  arithmetic: {timing['flops_per_step'] / 1e9:.1f} GFLOP per step, "
            f"{timing['flop_per_s'] / 1e9:.1f} GFLOP/s achieved = {timing['flop_per_s'] / peak['flop_per_s']:.0%} "
            f"of this device's measured {peak['dtype']} matmul rate ({peak['flop_per_s'] / 1e9:.0f} GFLOP/s, {where})"
        )
    return lines


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
