"""TRL's side of the benchmark: `trl.GRPOTrainer` (TRL 1.16) on the same checkpoint, records, reward
and GRPO settings as medr1's side. Needs the `bench` extra (`pip install -e ".[bench]"`); medr1 itself
never imports TRL.

Every setting comes from the same composed medr1 config (medr1.bench.common.medr1_overrides), mapped to
GRPOConfig where TRL's defaults differ from medr1's: one rollout per optimiser step
(steps_per_generation=1, gradient_accumulation_steps=1, num_iterations as medr1's), B*G completions per
device batch, group-scaled advantages, medr1's loss aggregation (loss_type), top_k 50, no gradient
checkpointing (TRL turns it on by default), the plain KL term (use_bias_correction_kl=False, as
medr1's loss), torch's AdamW (optim="adamw_torch"), fp32 on the CPU, no vLLM, and medr1's banned
vision tokens. The stop tokens agree already: TRL stops on the tokenizer's eos plus the generation
config's eos ids, which are medr1's stop ids on the bench checkpoint (checked and reported).

Phases, timed by wrapping bound methods of the trainer's instances:
rollout = GRPOTrainer._generate_single_turn (HF `generate()`, prompts repeated G times),
reference = _get_per_token_logps_and_entropies called with the reference model,
policy = compute_loss + accelerator.backward, optimizer = the optimizer's step().
"""

from __future__ import annotations

import tempfile

import torch

from medr1.bench.common import (
    BenchSettings,
    compose_bench_config,
    peak_rss_mb,
    snapshot,
    summarise,
    weight_change,
)
from medr1.profiling import FlopCount, PhaseTimer

# medr1's loss_agg -> TRL's loss_type with the same aggregation (one process, no accumulation)
LOSS_TYPES = {"seq_mean_token_mean": "grpo", "token_mean": "bnpo", "seq_mean_token_sum_norm": "dr_grpo"}


def record_prompts(records, collator, prompt):
    """medr1's training records as a TRL dataset: the chat prompt medr1 builds (an image placeholder
    and the prompt text), the images as medr1's collator reads them, and the fields medr1's reward reads."""
    from datasets import Dataset

    from medr1.data.prompts import chat_messages

    return Dataset.from_list(
        [
            {
                "prompt": chat_messages(r, prompt, n_images=len(r.images)),
                "images": collator.record_images(r),
                "solution": r.answer,
                "options": r.options,
                "modality": r.modality,
                "question_type": r.question_type,
                "id": r.id,
            }
            for r in records
        ]
    )


def trl_reward(reward_model):
    """medr1's reward (the same RewardModel medr1's side builds) as a TRL reward function."""

    def medr1_reward(prompts, completions, **kwargs) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        fields = {k: kwargs[k] for k in ("solution", "options", "modality", "question_type", "id")}
        return [float(x) for x in reward_model(texts, **fields).total]

    return medr1_reward


def grpo_config(cfg, settings: BenchSettings, output_dir: str, banned_ids: list[int]):
    from trl import GRPOConfig

    algo, optimizer = cfg.algo, cfg.algo.optimizer
    if str(algo.scheduler.name) != "linear" or float(algo.scheduler.warmup_ratio):
        raise ValueError("the TRL side maps only a linear schedule without warm-up ratio")
    return GRPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=settings.prompts * settings.generations,  # B*G completions
        num_generations=settings.generations,
        steps_per_generation=1,  # one rollout per optimiser step, as medr1
        gradient_accumulation_steps=1,
        num_iterations=int(algo.num_iterations),
        max_completion_length=int(algo.max_completion_length),
        temperature=float(algo.temperature),
        top_p=float(algo.top_p),
        top_k=int(algo.top_k),
        beta=float(algo.beta),
        epsilon=float(algo.epsilon),
        epsilon_high=float(algo.epsilon_high),
        scale_rewards=str(algo.scale_rewards),
        loss_type=LOSS_TYPES[str(algo.loss_agg)],
        use_bias_correction_kl=False,  # medr1's k3 KL term as it is
        learning_rate=float(optimizer.lr),
        adam_beta1=float(optimizer.betas[0]),
        adam_beta2=float(optimizer.betas[1]),
        adam_epsilon=float(optimizer.eps),
        weight_decay=float(optimizer.weight_decay),
        optim="adamw_torch",  # torch.optim.AdamW, as medr1 (TRL's default is the fused variant)
        lr_scheduler_type="linear",
        warmup_steps=int(algo.scheduler.warmup_steps),
        max_grad_norm=float(algo.max_grad_norm or 0.0),
        max_steps=settings.total_steps,
        gradient_checkpointing=bool(cfg.model.gradient_checkpointing),
        generation_kwargs={
            "suppress_tokens": banned_ids
        },  # medr1 bans every vision token, TRL only <|image_pad|>
        use_vllm=False,
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=int(cfg.seed),
        data_seed=int(cfg.seed),
        dataloader_num_workers=0,
        report_to="none",
        logging_steps=settings.total_steps + 1,  # no logging inside the measured steps
        save_strategy="no",
        disable_tqdm=True,
        log_completions=False,
    )


def run(settings: BenchSettings) -> dict:
    from hydra.utils import instantiate
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from medr1.builders import load_policy
    from medr1.data.batches import PromptCollator
    from medr1.rl.rewards import build_reward
    from medr1.rollout import Sampler

    cfg = compose_bench_config(settings)
    torch.manual_seed(int(cfg.seed))
    torch.set_num_threads(int(cfg.num_threads))
    policy = load_policy(cfg, train=True)  # the same loader, checkpoint, dtype and attention as medr1
    medr1_sampler = Sampler.for_model(policy.model, policy.processor)
    records = instantiate(cfg.data.source).load().train
    collator = PromptCollator(
        policy.processor, cfg.prompt, resize=cfg.data.get("resize"), image=cfg.get("image")
    )
    dataset = record_prompts(records, collator, cfg.prompt)
    output_dir = tempfile.mkdtemp(prefix="medr1-bench-trl-")
    args = grpo_config(cfg, settings, output_dir, list(medr1_sampler.banned_ids))

    timer = PhaseTimer()
    losses: list[float] = []
    state = {"flops": None, "threads": None, "prompt_tokens": 0}

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, train_state, control, **kwargs):
            state["threads"] = torch.get_num_threads()
            timer.wrap(trainer.optimizer, "step", "optimizer")

        def on_step_begin(self, args, train_state, control, **kwargs):
            timer.begin()
            if train_state.global_step == settings.flop_step:
                state["flops"] = FlopCount().__enter__()

        def on_step_end(self, args, train_state, control, **kwargs):
            index = train_state.global_step - 1  # global_step already counts this step
            if index == settings.flop_step and state["flops"] is not None:
                state["flops"].__exit__(None, None, None)
            timer.end(keep=settings.warmup <= index < settings.warmup + settings.steps)

    trainer = GRPOTrainer(
        model=policy.model,
        reward_funcs=trl_reward(build_reward(cfg.reward)),
        args=args,
        train_dataset=dataset,
        processing_class=policy.processor,
        callbacks=[StepClock()],
    )

    def count_tokens(timer, result, call_args, kwargs):  # _generate_single_turn(prompt_ids, ...)
        completion_ids = result[0]
        timer.counts["completion_tokens"] += float(sum(len(ids) for ids in completion_ids))
        state["prompt_tokens"] = max(state["prompt_tokens"], max(len(ids) for ids in call_args[0]))

    def record_loss(timer, result, call_args, kwargs):
        losses.append(float(result.detach()))

    def scoring_phase(call_args, kwargs):  # the policy's own forward is timed by compute_loss
        return "reference" if call_args[0] is trainer.ref_model else None

    timer.wrap(trainer, "_generate_single_turn", "rollout", on_result=count_tokens)
    timer.wrap(trainer, "_get_per_token_logps_and_entropies", scoring_phase)
    timer.wrap(trainer, "compute_loss", "policy", on_result=record_loss)
    timer.wrap(trainer.accelerator, "backward", "policy")
    timer.hook_model_calls(trainer.model, phases=("rollout",))  # generate()'s prefill: B*G prompt rows

    initial = snapshot(trainer.model)
    trainer.train()
    flops = state["flops"].total if state["flops"] is not None else None
    summary = summarise(timer.steps, settings, flops)
    return {
        "framework": "trl",
        "trl_version": __import__("trl").__version__,
        **summary,
        "steps": timer.steps,
        "peak_rss_mb": peak_rss_mb(),
        "threads": state["threads"],
        "prompt_tokens": state["prompt_tokens"],
        "optimizer_steps": int(trainer.state.global_step),
        "trained": {
            **weight_change(initial, trainer.model),
            "updates": len(losses),
            "loss_finite": bool(losses) and all(torch.isfinite(torch.tensor(losses)).tolist()),
        },
        "settings_seen": {
            "stop_ids": sorted(trainer.eos_token_ids),
            "medr1_stop_ids": sorted(medr1_sampler.stop_ids),
            "optimizer": type(trainer.optimizer.optimizer).__name__,
            "optimizer_settings": {
                k: (list(v) if isinstance(v, tuple) else v)
                for k, v in trainer.optimizer.optimizer.param_groups[0].items()
                if k in ("lr", "betas", "eps", "weight_decay")
            },
            "loss_type": trainer.loss_type,
            "scale_rewards": trainer.scale_rewards,
            "num_iterations": trainer.num_iterations,
            "steps_per_generation": args.steps_per_generation,
            "gradient_checkpointing": args.gradient_checkpointing,
            "top_k": args.top_k,
            "max_grad_norm": args.max_grad_norm,
        },
    }
