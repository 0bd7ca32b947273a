"""GRPO as a LightningModule with manual optimisation.

One `training_step` = one rollout: B prompts -> G sampled completions each (no grad) -> rewards ->
group-normalised advantages -> `num_iterations` policy updates, each looping over micro-batches of
prompts with `manual_backward`. Differences from Med-R1's trainer (TRL 0.14) that are deliberate:
each prompt's images are encoded and prefilled once for its G completions (rollout and training; with
one update per rollout the update scores on the rollout's own prefill, `_prefill_reusable`);
vision special tokens cannot be sampled; the LoRA reference is the adapter-disabled policy.
With `algo.dynamic_sampling` (DAPO) a step drops the groups whose rewards are all equal and samples
fresh prompts in their place before the update (medr1.rl.dynamic_sampling).
"""

from __future__ import annotations

import copy
import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.strategies import DDPStrategy, ParallelStrategy, SingleDeviceStrategy
from torch import Tensor

from medr1.data.batches import PromptBatch, load_image
from medr1.data.image_files import image_format
from medr1.errors import UserError
from medr1.grading import grade
from medr1.logprobs import (
    CompletionScores,
    PromptPrefill,
    checkpointed,
    completion_logprobs,
    prefill_prompts,
    select_prompts,
)
from medr1.models.families import family_of
from medr1.rl.advantages import group_advantages, zero_variance_fraction
from medr1.rl.dynamic_sampling import SampledGroups, draw_size, gather_kept, groups_with_signal
from medr1.rl.loss import grpo_loss, masked_mean
from medr1.rl.rewards import RewardOutput
from medr1.rl.telemetry import stratum_metrics
from medr1.rollout import SamplingConfig
from medr1.vqa_module import VQAModule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GRPOSettings:
    """cfg.algo (conf/algo/grpo.yaml), read and checked once."""

    num_generations: int  # G: completions per prompt
    num_iterations: int  # policy updates per rollout
    micro_batch_size: int  # prompts per backward pass; 0: the whole batch
    shared_prompt_forward: bool  # score each prompt once for its G completions
    max_completion_length: int
    temperature: float
    top_p: float
    top_k: int  # 0: no top-k filter
    beta: float  # KL weight; 0: no reference log-probs
    epsilon_low: float  # algo.epsilon
    epsilon_high: float
    scale_rewards: str
    advantage_eps: float
    loss_agg: str
    max_grad_norm: float  # 0: no clipping
    max_nonfinite_updates: int = 3  # consecutive skipped (non-finite) steps that stop the run; 0: never
    dynamic_sampling: bool = False  # DAPO: replace zero-variance groups by freshly sampled prompts
    max_resample: int = 3  # extra sampling rounds per step, at most

    @classmethod
    def from_config(cls, algo) -> GRPOSettings:
        if int(algo.num_iterations) < 1 or int(algo.num_generations) < 2:
            raise ValueError(
                f"algo.num_iterations={algo.num_iterations} must be >= 1 and algo.num_generations="
                f"{algo.num_generations} >= 2 (group advantages need at least two completions per prompt)"
            )
        if int(getattr(algo, "max_resample", 0)) < 0:
            raise ValueError(
                f"algo.max_resample={algo.max_resample} must be >= 0 (extra sampling rounds per step)"
            )
        return cls(
            num_generations=int(algo.num_generations),
            num_iterations=int(algo.num_iterations),
            micro_batch_size=int(algo.micro_batch_size),
            shared_prompt_forward=bool(algo.shared_prompt_forward),
            max_completion_length=int(algo.max_completion_length),
            temperature=float(algo.temperature),
            top_p=float(algo.top_p),
            top_k=int(algo.top_k),
            beta=float(algo.beta),
            epsilon_low=float(algo.epsilon),
            epsilon_high=float(algo.epsilon_high),
            scale_rewards=str(algo.scale_rewards),
            advantage_eps=float(algo.advantage_eps),
            loss_agg=str(algo.loss_agg),
            max_grad_norm=float(algo.max_grad_norm or 0.0),
            # an older config has no such key: keep the default
            max_nonfinite_updates=int(getattr(algo, "max_nonfinite_updates", 3)),
            dynamic_sampling=bool(getattr(algo, "dynamic_sampling", False)),
            max_resample=int(getattr(algo, "max_resample", 3)),
        )

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(
            max_new_tokens=self.max_completion_length,
            do_sample=True,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
        )


@dataclass(frozen=True)
class MicroBatch:
    """Prompts [start, stop) of the batch: one backward pass."""

    start: int
    stop: int
    weight: float  # its share of the rollout loss
    rows: slice  # its completions: rows start*G .. stop*G-1 of the rollout


@dataclass
class Rollout:
    """One training step's samples. Completion g of prompt b is row b*G + g."""

    ids: Tensor  # [B*G, T] completion tokens; pad after the first stop token
    mask: Tensor  # [B*G, T] 1 on sampled tokens (stop token included)
    texts: list[str]  # [B*G]
    rewards: RewardOutput  # total [B*G] + unweighted parts
    total: Tensor  # [B*G] rewards.total as float32 on the module's device
    advantages: Tensor  # [B*G]
    spans: list[MicroBatch]  # prompts [start, stop) and loss weight, per backward pass
    ref_logprobs: list[Tensor | None]  # per span, [b*G, T]; None when beta == 0
    old_logprobs: list[Tensor] | None  # per span, only when num_iterations > 1
    prefill: PromptPrefill | None = None  # the prompts' pass with grad, which the update scores on


def prefill_reusable(
    *,
    num_iterations: int,
    one_backward_pass: bool,
    shared_prompt: bool,
    dynamic_sampling: bool,
    checkpointing: bool,
    dropout: bool,
    strategy: str,
) -> bool:
    """Whether the update may score on the rollout's own prompt pass (run with grad, kept) instead of
    running the prompts again: the same numbers need the same weights (one update per rollout), no
    dropout (sampling runs in eval mode) and no activation checkpointing (no cache); one backward pass
    over all the prompts; the shared-prompt path; the loader's prompts (dynamic sampling assembles them
    from several rollouts); and one device or DDP (`strategy` "single" | "ddp"), the strategies tested
    with a graph that spans the rollout (DeepSpeed and FSDP gather and free weights around each
    forward). GRPOModule and mode=check's memory estimate (StepSizes.kept_prefill) both ask here."""
    return (
        num_iterations == 1
        and one_backward_pass
        and shared_prompt
        and not dynamic_sampling
        and not checkpointing
        and not dropout
        and strategy in ("single", "ddp")
    )


def has_active_dropout(model) -> bool:
    """Whether any dropout (a Dropout module or an attention's dropout rate) is above 0: then a forward in
    train mode differs from one in eval mode."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0:
            return True
        rate = getattr(module, "attention_dropout", 0.0)
        if isinstance(rate, (int, float)) and rate > 0:
            return True
    return False


def repeat_fields(fields: dict[str, list], times: int) -> dict[str, list]:
    """Each record's column value repeated for its G completions."""
    return {k: [v for v in values for _ in range(times)] for k, values in fields.items()}


class GRPOModule(VQAModule):
    def __init__(self, *, reward, algo, reference_model=None, sample_table_every: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.automatic_optimization = False
        self.reward = reward
        self.algo = algo  # as configured; the code reads self.settings
        self.settings = GRPOSettings.from_config(algo)
        self.sampling = self.settings.sampling
        self.sample_table_every = sample_table_every
        self._telemetry_keys: set[str] = set()  # per-stratum keys logged so far (see _telemetry)
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
        return int(self.trainer.estimated_stepping_batches) * self.settings.num_iterations

    # --- one rollout, then the policy updates ----------------------------------------------------

    def training_step(self, batch: PromptBatch, batch_idx: int) -> None:
        first = batch, None  # the loader's batch and its rollout: what the step logs
        if self.settings.dynamic_sampling:  # the loader's prompts, zero-variance groups replaced
            first, batch, rollout = self.rollout_with_signal(batch)
        else:
            rollout = self.rollout(batch)  # sample -> rewards -> advantages -> reference/old log-probs
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        stats: list[dict] = []
        # a NaN reward would reach every token's loss; no rollout: every group had zero variance
        fault = self._nonfinite_rollout(rollout) if rollout is not None else None
        if fault is None and rollout is not None:
            for _ in range(self.settings.num_iterations):
                update_stats, fault = self.update(batch, rollout, optimizer)  # one optimiser step
                stats.append(update_stats)
                if fault is not None:  # the rollout's later updates would meet the same fault
                    break
                scheduler.step()
        self._count_nonfinite(fault)
        no_stats = {"kl": math.nan, "clip_fraction": math.nan, "entropy": math.nan}
        logged = first if first[1] is not None else (batch, rollout)
        self.log_step(*logged, stats[0] if stats else no_stats, optimizer)  # the first update's stats
        self._stop_after_nonfinite(fault)

    # --- non-finite numbers: skip the update, stop after max_nonfinite_updates in a row ----------
    # A skipped update applies nothing: no optimizer.step() (so neither the weights nor the optimiser's
    # moments move) and no scheduler.step(); Lightning's global_step, which counts optimiser steps,
    # does not advance either. Every rank takes the same decision, or DDP's ranks would diverge.

    def _all_ranks_agree(self, ok: bool) -> bool:
        """True when `ok` holds on every rank (one all-reduce; the value itself on a single device)."""
        if self._trainer is None:
            return ok
        return bool(self.trainer.strategy.reduce_boolean_decision(ok, all=True))

    def _nonfinite_rollout(self, rollout: Rollout) -> str | None:
        """What is non-finite (NaN or infinite) in the rollout on any rank: "reward", "advantage" or None."""
        rewards_ok = bool(torch.isfinite(rollout.total).all())
        advantages_ok = bool(torch.isfinite(rollout.advantages).all())
        if self._all_ranks_agree(rewards_ok and advantages_ok):
            return None
        return "advantage" if rewards_ok else "reward"  # "reward" also for another rank's reward

    def _gradients_finite(self) -> bool:
        """Whether every trainable parameter's gradient is finite (its norm too: a huge gradient whose
        norm overflows would turn clipping into NaN)."""
        norms = [
            torch.linalg.vector_norm(p.grad.detach().float())
            for p in self.parameters()
            if p.requires_grad and p.grad is not None
        ]
        return not norms or bool(torch.isfinite(torch.stack(norms).norm()))

    def _count_nonfinite(self, fault: str | None) -> None:
        """Count and log a skipped step; a good step resets the run of consecutive ones."""
        self.skipped_updates = getattr(self, "skipped_updates", 0) + (fault is not None)
        self.nonfinite_in_a_row = 0 if fault is None else getattr(self, "nonfinite_in_a_row", 0) + 1
        if fault is not None:
            log.warning(
                "step %d: non-finite %s; update skipped (%d in a row, %d in all)",
                self.global_step,
                fault,
                self.nonfinite_in_a_row,
                self.skipped_updates,
            )
        self.log("train/skipped_updates", float(self.skipped_updates), on_step=True, on_epoch=False)
        self.log("train/nonfinite", float(fault is not None), on_step=True, on_epoch=False)

    def _stop_after_nonfinite(self, fault: str | None) -> None:
        """After max_nonfinite_updates skipped steps in a row: checkpoint the last good state (the
        skipped steps left weights and optimiser untouched, so it is the current one) and stop."""
        limit = self.settings.max_nonfinite_updates
        if fault is None or limit <= 0 or self.nonfinite_in_a_row < limit:
            return
        path = self._checkpoint_dir() / "nonfinite-stop.ckpt"
        self.trainer.save_checkpoint(path)  # every rank calls it: saving may be collective
        raise UserError(
            f"{self.nonfinite_in_a_row} updates in a row were non-finite (the last one at step "
            f"{self.global_step}: a non-finite {fault}), so training stopped; the last good state is "
            f"saved in {path}. Lower the learning rate (algo.optimizer.lr), check the reward function, "
            f"or allow more skipped updates with algo.max_nonfinite_updates (0: never stop)"
        )

    def _checkpoint_dir(self) -> Path:
        """Where the run's checkpoints go: ModelCheckpoint's folder, else <run dir>/checkpoints."""
        callback = self.trainer.checkpoint_callback
        if callback is not None and getattr(callback, "dirpath", None):
            return Path(callback.dirpath)
        return Path(self.trainer.default_root_dir) / "checkpoints"

    @torch.no_grad()
    def rollout(self, batch: PromptBatch) -> Rollout:
        """G completions per prompt (sampled without dropout), their rewards and advantages, and the
        log-probs later updates compare against."""
        rollout = self._sampled_rollout(batch, keep_prefill=self._prefill_reusable(batch))
        self._score_rollout(batch, rollout)
        return rollout

    def _sampled_rollout(self, batch: PromptBatch, keep_prefill: bool = False) -> Rollout:
        """The rollout's samples, rewards and advantages; no log-probs yet. `keep_prefill`: run the
        prompts with grad and keep that pass for the update to score on (`_prefill_reusable`)."""
        group = self.settings.num_generations
        self.model.eval()
        kept = sampled_from = None
        if keep_prefill:
            with torch.enable_grad():
                kept = prefill_prompts(self.model, batch.model_inputs)
            sampled_from = kept.detached()
            if sampled_from is None:  # a cache decoding cannot copy: sample from it, score anew
                kept, sampled_from = None, kept
        ids, mask, texts = self.sampler.complete(
            self.model, batch, self.sampling, group, prefill=sampled_from
        )
        self.model.train()
        rewards = self.reward(texts, **repeat_fields(batch.fields(), group))
        rollout = self._new_rollout(ids, mask, texts, rewards)
        rollout.prefill = kept
        return rollout

    def _prefill_reusable(self, batch: PromptBatch) -> bool:
        """Whether the update scores on the rollout's own prompt pass (`prefill_reusable`)."""
        settings = self.settings
        strategy = type(self._trainer.strategy) if self._trainer is not None else SingleDeviceStrategy
        return prefill_reusable(
            num_iterations=settings.num_iterations,
            one_backward_pass=not settings.micro_batch_size or settings.micro_batch_size >= len(batch),
            shared_prompt=settings.shared_prompt_forward and family_of(self.model).shared_prompt,
            dynamic_sampling=settings.dynamic_sampling,
            checkpointing=checkpointed(self.model),
            dropout=has_active_dropout(self.model),
            strategy={SingleDeviceStrategy: "single", DDPStrategy: "ddp"}.get(strategy, "other"),
        )

    def _new_rollout(self, ids: Tensor, mask: Tensor, texts: list[str], rewards: RewardOutput) -> Rollout:
        settings, group = self.settings, self.settings.num_generations
        total = torch.tensor(rewards.total, dtype=torch.float32, device=self.device)  # [B*G]
        advantages = group_advantages(total, group, scale=settings.scale_rewards, eps=settings.advantage_eps)
        return Rollout(
            ids=ids,
            mask=mask,
            texts=texts,
            rewards=rewards,
            total=total,
            advantages=advantages,
            spans=self._micro_batches(len(texts) // group, mask),
            ref_logprobs=[],
            old_logprobs=None,
        )

    def _score_rollout(self, batch: PromptBatch, rollout: Rollout) -> None:
        """The reference log-probs (beta > 0) and, when a later update needs the pre-update policy
        (num_iterations > 1), the old ones, per micro-batch."""
        rollout.ref_logprobs = [self._reference_logprobs(batch, rollout, span) for span in rollout.spans]
        if self.settings.num_iterations > 1:
            rollout.old_logprobs = [self._logprobs(batch, rollout, span).logprobs for span in rollout.spans]

    # --- dynamic sampling (DAPO): only groups whose rewards differ are trained on -----------------
    # Every rank runs the same number of rounds (all ranks agree on "someone still needs prompts"),
    # and all train on the same number of prompts, the fewest any rank kept: the ranks' backward
    # passes and gradient all-reduces then line up. A step that keeps no prompt applies no update,
    # as a non-finite one: no optimizer.step() and no scheduler.step(), so Lightning's global_step
    # (and trainer.max_steps, and the learning-rate schedule) counts applied updates only.

    @torch.no_grad()
    def rollout_with_signal(
        self, batch: PromptBatch
    ) -> tuple[tuple[PromptBatch, Rollout], PromptBatch | None, Rollout | None]:
        """((the loader's batch, its rollout), the kept batch, its scored rollout). The kept batch holds
        the first B prompts with signal, B = len(batch), fewer when algo.max_resample rounds did not
        find enough, and (None, None) when none was found on some rank."""
        size, group = len(batch), self.settings.num_generations
        first = self._sampled_rollout(batch)
        kept_here = [b for b, signal in enumerate(groups_with_signal(first.total, group)) if signal]
        rounds = [SampledGroups(first.ids, first.mask, first.texts, first.rewards, kept_here)]
        records = [batch.records[b] for b in kept_here]
        seen, sampled, extra_rounds = {r.id for r in batch.records}, size, 0
        while True:
            fewest = self._fewest_across_ranks(len(records))
            if fewest >= size or extra_rounds == self.settings.max_resample:
                break
            extra_rounds += 1
            extra = self._draw_prompts(draw_size(size, len(records), sampled), extra_rounds, seen)
            seen |= {r.id for r in extra.records}
            sampled += len(extra)
            more = self._sampled_rollout(extra)
            kept_here = [b for b, signal in enumerate(groups_with_signal(more.total, group)) if signal]
            rounds.append(SampledGroups(more.ids, more.mask, more.texts, more.rewards, kept_here))
            records += [extra.records[b] for b in kept_here]
        for name, value in (
            ("dropped_groups", sampled - sum(len(r.kept) for r in rounds)),
            ("resample_rounds", extra_rounds),
            ("resampled_prompts", sampled - size),
        ):
            self.log(f"train/{name}", float(value), on_step=True, on_epoch=False, batch_size=size)
        keep = min(size, fewest)
        if keep == 0:
            log.warning(
                "step %d: no group with differing rewards in %d prompts after %d extra rounds (on some rank); "
                "no update (a reward that never varies stalls the run: check it, or raise algo.max_resample)",
                self.global_step,
                sampled,
                extra_rounds,
            )
            return (batch, first), None, None
        if keep == size and len(rounds[0].kept) == size:  # nothing dropped: the loader's batch as it is
            self._score_rollout(batch, first)
            return (batch, first), batch, first
        kept_batch = self._as_loader_batch(self._datamodule().collate_train(records[:keep]))
        rollout = self._new_rollout(*gather_kept(rounds, group, keep, self.sampler.pad_id))
        self._score_rollout(kept_batch, rollout)
        return (batch, first), kept_batch, rollout

    def _fewest_across_ranks(self, count: int) -> int:
        """The smallest `count` of all ranks (one all-gather; `count` itself on a single device)."""
        if self._trainer is None:
            return count
        return int(self.all_gather(torch.tensor(count, device=self.device)).min())

    def _draw_prompts(self, size: int, round_: int, exclude: set[str]) -> PromptBatch:
        """`size` fresh training prompts for extra round `round_`, drawn by the datamodule from a seed
        of (data seed, training batch index, round, rank): exact on resume with no saved state."""
        batch_index = self.trainer.fit_loop.epoch_loop.total_batch_idx  # skipped steps counted too
        drawn = self._datamodule().draw_train_prompts(size, batch=batch_index, round_=round_, exclude=exclude)
        return self._as_loader_batch(drawn)

    def _datamodule(self):
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "draw_train_prompts"):
            raise UserError(
                "algo.dynamic_sampling=true draws extra training prompts from medr1's VQADataModule; "
                "fit with trainer.fit(module, datamodule=...) or set algo.dynamic_sampling=false"
            )
        return datamodule

    def _as_loader_batch(self, batch: PromptBatch) -> PromptBatch:
        """`batch` converted and moved as Lightning does a loader's batch (precision, then device)."""
        trainer = self.trainer
        batch = trainer.precision_plugin.convert_input(batch)
        return trainer.strategy.batch_to_device(batch)

    def _micro_batches(self, n_prompts: int, completion_mask: Tensor) -> list[MicroBatch]:
        """The backward passes of one update, each with the weight of its loss in the rollout loss."""
        group = self.settings.num_generations
        size = self.settings.micro_batch_size or n_prompts
        spans = [(s, min(s + size, n_prompts)) for s in range(0, n_prompts, size)]
        if self.settings.loss_agg == "token_mean":  # DAPO: one mean over all the rollout's tokens
            tokens = completion_mask.sum().clamp(min=1)
            weights = [float(completion_mask[s * group : e * group].sum() / tokens) for s, e in spans]
        else:
            weights = [(e - s) / n_prompts for s, e in spans]
        return [
            MicroBatch(s, e, w, slice(s * group, e * group)) for (s, e), w in zip(spans, weights, strict=True)
        ]

    def _logprobs(
        self,
        batch: PromptBatch,
        rollout: Rollout,
        span: MicroBatch,
        model=None,
        with_entropy: bool = False,
        prefill: PromptPrefill | None = None,
    ) -> CompletionScores:
        return completion_logprobs(
            model or self.model,
            select_prompts(batch, span.start, span.stop),
            rollout.ids[span.rows],
            rollout.mask[span.rows],
            num_generations=self.settings.num_generations,
            shared_prompt=self.settings.shared_prompt_forward,
            images_per_prompt=batch.images_per_prompt[span.start : span.stop],
            with_entropy=with_entropy,
            prefill=prefill,
        )

    @torch.no_grad()
    def _reference_logprobs(self, batch: PromptBatch, rollout: Rollout, span: MicroBatch) -> Tensor | None:
        if self.settings.beta == 0.0:
            return None
        if self._reference is not None:
            return self._logprobs(batch, rollout, span, model=self._reference).logprobs
        adapters_off = getattr(self.model, "disable_adapter", None)
        context = adapters_off() if adapters_off else nullcontext()
        with context:
            return self._logprobs(batch, rollout, span).logprobs

    def update(self, batch: PromptBatch, rollout: Rollout, optimizer) -> tuple[dict, str | None]:
        """One optimiser step over all micro-batches; returns metrics averaged over them, and None, or
        "loss"/"gradient" when that was non-finite and the step was skipped (nothing applied)."""
        settings, stats = self.settings, {"kl": 0.0, "clip_fraction": 0.0, "entropy": 0.0}
        loss_ok = True
        optimizer.zero_grad(set_to_none=True)
        last = len(rollout.spans) - 1
        prefill, rollout.prefill = rollout.prefill, None  # one use: its graph is freed by the backward
        assert prefill is None or len(rollout.spans) == 1, "a kept prompt pass covers the whole batch"
        for index, span in enumerate(rollout.spans):
            scores = self._logprobs(batch, rollout, span, with_entropy=True, prefill=prefill)
            mask = rollout.mask[span.rows]
            output = grpo_loss(
                scores.logprobs,
                rollout.old_logprobs[index] if rollout.old_logprobs is not None else scores.logprobs.detach(),
                rollout.ref_logprobs[index],
                rollout.advantages[span.rows],
                mask,
                epsilon_low=settings.epsilon_low,
                epsilon_high=settings.epsilon_high,
                beta=settings.beta,
                loss_agg=settings.loss_agg,
                max_completion_length=settings.max_completion_length,
            )
            # a non-finite loss is still backpropagated: under DDP every rank must take part in the
            # gradient all-reduce, and its NaN gradients are thrown away below
            loss_ok = loss_ok and bool(torch.isfinite(output.loss.detach()))
            with self._gradient_sync(index == last):
                self.manual_backward(output.loss * span.weight)
            stats["kl"] += span.weight * float(output.kl)
            stats["clip_fraction"] += span.weight * float(output.clip_fraction)
            stats["entropy"] += span.weight * float(masked_mean(scores.entropy, mask))
        gradients_ok = self._gradients_finite()
        if not self._all_ranks_agree(loss_ok and gradients_ok):
            optimizer.zero_grad(set_to_none=True)
            return stats, "gradient" if loss_ok else "loss"  # "gradient" also for another rank's loss
        if settings.max_grad_norm:
            self.clip_gradients(
                optimizer, gradient_clip_val=settings.max_grad_norm, gradient_clip_algorithm="norm"
            )
        optimizer.step()
        return stats, None

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

    def log_step(self, batch: PromptBatch, rollout: Rollout, stats: dict, optimizer) -> None:
        """The progress bar's reward and accuracy every step; the full set of train/* metrics (about 90
        keys with the per-stratum telemetry) on the steps whose logs Lightning writes, every
        `trainer.log_every_n_steps`. An on-step value logged in between is overwritten before it is
        written, and `self.log` costs ~0.3 ms a key: on the demo that was 7% of a step for nothing."""
        group, total = self.settings.num_generations, rollout.total
        records = [r for r in batch.records for _ in range(group)]
        graded = grade(records, rollout.texts, self.processor.tokenizer)
        accuracy = sum(p.correct for p in graded) / len(graded)
        self.log("reward", float(total.mean()), prog_bar=True, on_step=True, batch_size=len(batch))
        self.log("acc", accuracy, prog_bar=True, on_step=True, batch_size=len(batch))
        if self.sample_table_every and self.global_step % self.sample_table_every == 0:
            self._log_samples(batch, rollout.texts, total)
        if not self._logs_written_this_step():
            return
        metrics = {
            "train/reward": total.mean(),
            "train/reward_std": total.std() if total.numel() > 1 else torch.tensor(0.0),
            "train/accuracy": accuracy,
            "train/format_rate": sum(p.follows_format for p in graded) / len(graded),
            "train/reasoning_length": sum(p.reasoning_tokens for p in graded) / len(graded),
            "train/completion_length": rollout.mask.sum(1).float().mean(),
            "train/zero_variance_groups": zero_variance_fraction(total, group),
            "train/kl": stats["kl"],
            "train/clip_fraction": stats["clip_fraction"],
            "train/entropy": stats["entropy"],
            "train/lr": optimizer.param_groups[0]["lr"],
        }
        for part, values in rollout.rewards.parts.items():
            part_scores = torch.tensor(values, dtype=torch.float32)
            metrics[f"train/reward_{part}"] = part_scores.mean()
            metrics[f"train/reward_{part}_std"] = (
                part_scores.std() if part_scores.numel() > 1 else torch.tensor(0.0)
            )
        metrics |= self._telemetry(records, rollout, graded)
        self.log_dict(
            {k: float(v) for k, v in metrics.items()},
            on_step=True,
            on_epoch=False,
            prog_bar=False,
            batch_size=len(batch),
        )

    def _logs_written_this_step(self) -> bool:
        """Whether Lightning writes the loggers after this training step: its logger connector's own
        `should_update_logs` (every `log_every_n_steps`, or a stop already decided). True outside a fit
        (no trainer, or a Lightning without that property). tests/test_telemetry.py checks that
        metrics.csv comes out the same."""
        try:
            return bool(self._trainer._logger_connector.should_update_logs)
        except AttributeError:
            return True

    def _telemetry(self, records, rollout: Rollout, graded) -> dict[str, float]:
        """Per modality and question type, the reward-hacking sentinels and the reasoning/answer
        consistency (medr1.rl.telemetry), with every key logged in an earlier step present.

        Lightning re-logs a key's last value in a step that does not log it, which would show a
        stratum absent from this batch with its old numbers: such a key is logged as NaN (a
        `count` as 0), as is `train/consistency` when no completion's consistency is known.
        """
        telemetry = stratum_metrics(
            records, rollout.texts, graded, rollout.total, rollout.mask, self.settings.num_generations
        )
        for key in self._telemetry_keys - telemetry.keys():
            telemetry[key] = 0.0 if key.endswith("/count") else math.nan
        self._telemetry_keys |= telemetry.keys()
        return telemetry

    def _log_samples(self, batch, texts, total) -> None:
        from lightning.pytorch.loggers import WandbLogger

        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                group, rows = self.settings.num_generations, []
                for b, record in enumerate(batch.records):
                    image = record.images[0]
                    if image_format(image) != "picture":  # W&B reads pictures: show a volume's middle slice
                        image = load_image(image, record)
                    for g in range(group):
                        i = b * group + g
                        rows.append(
                            [
                                self.global_step,
                                wandb.Image(image),
                                record.modality,
                                record.question_type,
                                record.answer,
                                texts[i],
                                float(total[i]),
                            ]
                        )
                logger.log_table(
                    key="samples",
                    columns=["step", "image", "modality", "question_type", "answer", "completion", "reward"],
                    data=rows,
                )
