"""GRPO as a LightningModule with manual optimisation.

One `training_step` = one rollout: B prompts -> G sampled completions each (no grad) -> rewards ->
group-normalised advantages -> `num_iterations` policy updates, each looping over micro-batches of
prompts with `manual_backward`. Differences from Med-R1's trainer (TRL 0.14) that are deliberate:
each prompt's images are encoded and prefilled once for its G completions (rollout and training);
vision special tokens cannot be sampled; the LoRA reference is the adapter-disabled policy.
"""

from __future__ import annotations

import copy
import logging
from contextlib import nullcontext

import torch
from lightning.pytorch.strategies import ParallelStrategy

from medr1.data.batches import PromptBatch
from medr1.metrics import score
from medr1.module import VQAModule
from medr1.rl.advantages import group_advantages, zero_variance_fraction
from medr1.rl.loss import grpo_loss
from medr1.rl.sequences import SamplingConfig, completion_logprobs

log = logging.getLogger(__name__)


def repeat_fields(fields: dict[str, list], times: int) -> dict[str, list]:
    """Each record's column value repeated for its G completions."""
    return {k: [v for v in values for _ in range(times)] for k, values in fields.items()}


def select_prompts(batch: PromptBatch, start: int, stop: int) -> dict[str, torch.Tensor]:
    """Model inputs of prompts start..stop-1 (their images' patches included)."""
    inputs = batch.model_inputs
    rows = {k: v[start:stop] for k, v in inputs.items() if v.shape[:1] == inputs["input_ids"].shape[:1]}
    if "image_grid_thw" in inputs:
        counts = batch.images_per_prompt.tolist()
        first_image, last_image = sum(counts[:start]), sum(counts[:stop])
        patches = inputs["image_grid_thw"].prod(-1).tolist()
        rows["image_grid_thw"] = inputs["image_grid_thw"][first_image:last_image]
        rows["pixel_values"] = inputs["pixel_values"][sum(patches[:first_image]) : sum(patches[:last_image])]
    return rows


class GRPOModule(VQAModule):
    def __init__(self, *, reward, algo, reference_model=None, sample_table_every: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.automatic_optimization = False
        self.reward = reward
        self.algo = algo
        self.group_size = int(algo.num_generations)
        if int(algo.num_iterations) < 1 or self.group_size < 2:
            raise ValueError(
                f"algo.num_iterations={algo.num_iterations} must be >= 1 and algo.num_generations="
                f"{algo.num_generations} >= 2 (group advantages need at least two completions per prompt)"
            )
        self.sampling = SamplingConfig(
            max_new_tokens=int(algo.max_completion_length), do_sample=True,
            temperature=float(algo.temperature), top_p=float(algo.top_p), top_k=int(algo.top_k),
        )
        self.sample_table_every = sample_table_every
        # the reference is kept out of the module's state dict: checkpoints hold the policy only
        object.__setattr__(self, "_reference", reference_model)

    @classmethod
    def reference_for(cls, model, algo, tuning_name: str):
        """None (beta=0 or LoRA: adapters off) or a frozen copy of the full policy."""
        if float(algo.beta) == 0.0 or tuning_name == "lora":
            return None
        reference = copy.deepcopy(model).eval()
        reference.requires_grad_(False)
        return reference

    def on_fit_start(self) -> None:
        if self._reference is not None:
            self._reference.to(self.device)

    def optimizer_steps_total(self) -> int:
        return int(self.trainer.estimated_stepping_batches) * int(self.algo.num_iterations)

    # --- one rollout, then the policy updates ----------------------------------------------------

    def training_step(self, batch: PromptBatch, batch_idx: int):
        group = self.group_size
        self.model.eval()  # sample without dropout
        completion_ids, completion_mask, texts = self.generator.complete(self.model, batch, self.sampling, group)
        self.model.train()

        fields = repeat_fields(batch.fields(), group)
        rewards = self.reward(texts, **fields)
        total = torch.tensor(rewards.total, dtype=torch.float32, device=self.device)  # [B*G]
        advantages = group_advantages(total, group, scale=str(self.algo.scale_rewards), eps=float(self.algo.advantage_eps))

        micro = self._micro_batches(len(batch), completion_mask)
        reference = [self._reference_logprobs(batch, span, completion_ids, completion_mask) for span in micro]
        old = None
        if int(self.algo.num_iterations) > 1:  # a later update needs the pre-update policy
            with torch.no_grad():
                old = [self._logprobs(batch, span, completion_ids, completion_mask).logprobs for span in micro]

        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        for iteration in range(int(self.algo.num_iterations)):
            stats = self._update(batch, micro, completion_ids, completion_mask, advantages, reference, old, optimizer)
            scheduler.step()
            if iteration == 0:
                first_stats = stats
        self._log_step(batch, texts, rewards, total, completion_mask, first_stats, optimizer)

    def _micro_batches(self, n_prompts: int, completion_mask: torch.Tensor) -> list[tuple[int, int, float]]:
        """(first prompt, end prompt, weight of its loss in the rollout loss) per micro-batch."""
        size = int(self.algo.micro_batch_size) or n_prompts
        spans = [(s, min(s + size, n_prompts)) for s in range(0, n_prompts, size)]
        group = self.group_size
        if self.algo.loss_agg == "token_mean":  # DAPO: one mean over all the rollout's tokens
            tokens = completion_mask.sum().clamp(min=1)
            return [(s, e, float(completion_mask[s * group : e * group].sum() / tokens)) for s, e in spans]
        return [(s, e, (e - s) / n_prompts) for s, e in spans]

    def _logprobs(self, batch, span, completion_ids, completion_mask, model=None, with_entropy=False):
        start, stop, _ = span
        rows = slice(start * self.group_size, stop * self.group_size)
        return completion_logprobs(
            model or self.model, select_prompts(batch, start, stop), completion_ids[rows], completion_mask[rows],
            num_generations=self.group_size, shared_prompt=bool(self.algo.shared_prompt_forward),
            images_per_prompt=batch.images_per_prompt[start:stop], with_entropy=with_entropy,
        )

    @torch.no_grad()
    def _reference_logprobs(self, batch, span, completion_ids, completion_mask):
        if float(self.algo.beta) == 0.0:
            return None
        if self._reference is not None:
            return self._logprobs(batch, span, completion_ids, completion_mask, model=self._reference).logprobs
        adapters_off = getattr(self.model, "disable_adapter", None)
        context = adapters_off() if adapters_off else nullcontext()
        with context:
            return self._logprobs(batch, span, completion_ids, completion_mask).logprobs

    def _update(self, batch, micro, completion_ids, completion_mask, advantages, reference, old, optimizer) -> dict:
        """One optimiser step over all micro-batches; returns metrics averaged over them."""
        group, stats = self.group_size, {"kl": 0.0, "clip_fraction": 0.0, "entropy": 0.0}
        optimizer.zero_grad(set_to_none=True)
        last = len(micro) - 1
        for index, span in enumerate(micro):
            start, stop, weight = span
            rows = slice(start * group, stop * group)
            scores = self._logprobs(batch, span, completion_ids, completion_mask, with_entropy=True)
            output = grpo_loss(
                scores.logprobs,
                old[index] if old is not None else scores.logprobs.detach(),
                reference[index],
                advantages[rows],
                completion_mask[rows],
                epsilon_low=float(self.algo.epsilon),
                epsilon_high=float(self.algo.epsilon_high),
                beta=float(self.algo.beta),
                loss_agg=str(self.algo.loss_agg),
                max_completion_length=int(self.algo.max_completion_length),
            )
            with self._gradient_sync(index == last):
                self.manual_backward(output.loss * weight)
            mask = completion_mask[rows].float()
            stats["kl"] += weight * float(output.kl)
            stats["clip_fraction"] += weight * float(output.clip_fraction)
            stats["entropy"] += weight * float((scores.entropy * mask).sum() / mask.sum().clamp(min=1))
        if self.algo.max_grad_norm:
            self.clip_gradients(optimizer, gradient_clip_val=float(self.algo.max_grad_norm), gradient_clip_algorithm="norm")
        optimizer.step()
        return stats

    def _gradient_sync(self, sync: bool):
        """All-reduce gradients on the update's last micro-batch only: the others accumulate locally,
        so a step costs one all-reduce, not one per micro-batch. DDP skips the sync with `no_sync`
        (Lightning's `block_backward_sync`); DeepSpeed is told where its accumulation boundary is;
        a single device, FSDP and anything else simply accumulate."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        engine = getattr(strategy, "model", None)
        if hasattr(engine, "set_gradient_accumulation_boundary"):  # a DeepSpeed engine
            engine.set_gradient_accumulation_boundary(sync)
            return nullcontext()
        if sync or not isinstance(strategy, ParallelStrategy):
            return nullcontext()
        return strategy.block_backward_sync()

    # --- what researchers read ------------------------------------------------------------------

    def _log_step(self, batch, texts, rewards, total, completion_mask, stats, optimizer) -> None:
        group = self.group_size
        records = [r for r in batch.records for _ in range(group)]
        scored = score(records, texts, self.processor.tokenizer)
        metrics = {
            "train/reward": total.mean(),
            "train/reward_std": total.std() if total.numel() > 1 else torch.tensor(0.0),
            "train/accuracy": sum(p.correct for p in scored) / len(scored),
            "train/format_rate": sum(p.follows_format for p in scored) / len(scored),
            "train/reasoning_length": sum(p.reasoning_tokens for p in scored) / len(scored),
            "train/completion_length": completion_mask.sum(1).float().mean(),
            "train/zero_variance_groups": zero_variance_fraction(total, group),
            "train/kl": stats["kl"],
            "train/clip_fraction": stats["clip_fraction"],
            "train/entropy": stats["entropy"],
            "train/lr": optimizer.param_groups[0]["lr"],
        }
        for part, values in rewards.parts.items():
            part_scores = torch.tensor(values, dtype=torch.float32)
            metrics[f"train/reward_{part}"] = part_scores.mean()
            metrics[f"train/reward_{part}_std"] = part_scores.std() if part_scores.numel() > 1 else torch.tensor(0.0)
        self.log_dict({k: float(v) for k, v in metrics.items()}, on_step=True, on_epoch=False, prog_bar=False,
                      batch_size=len(batch))
        self.log("reward", float(total.mean()), prog_bar=True, on_step=True, batch_size=len(batch))
        self.log("acc", metrics["train/accuracy"], prog_bar=True, on_step=True, batch_size=len(batch))
        if self.sample_table_every and self.global_step % self.sample_table_every == 0:
            self._log_samples(batch, texts, total)

    def _log_samples(self, batch, texts, total) -> None:
        from lightning.pytorch.loggers import WandbLogger

        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                group, rows = self.group_size, []
                for b, record in enumerate(batch.records):
                    for g in range(group):
                        i = b * group + g
                        rows.append([self.global_step, wandb.Image(record.images[0]), record.modality,
                                     record.question_type, record.answer, texts[i], float(total[i])])
                logger.log_table(key="samples", columns=["step", "image", "modality", "question_type", "answer",
                                                         "completion", "reward"], data=rows)
