"""Dynamic sampling (algo.dynamic_sampling, DAPO): groups whose rewards are all equal are dropped and
replaced by freshly sampled prompts, through the real Trainer, model, data and sampler.

The rewards are constructed by a Lightning callback added through the config: it wraps the module's
reward so that chosen prompts ("flat") get the same reward for all G completions and the others
alternate 0/1, and it records what every sampling round and every update saw.
"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from medr1.rl.dynamic_sampling import draw_size, groups_with_signal
from medr1.rl.rewards import RewardOutput
from medr1.train import train
from tests.helpers.config import FAST, compose_config
from tests.test_nonfinite import InjectNonFinite
from tests.test_resume import assert_same_training, step_checkpoint
from tests.test_train import logged, read_metrics

QUICK = FAST + [
    "num_threads=1",
    "trainer.val_check_interval=1000",
    "checkpoint.every_n_steps=1000",
    "algo.max_completion_length=16",
    "data.max_test_per_modality=1",  # the final evaluation is not what these tests are about
    "eval.probes=[]",
]


class ConstructedRewards(Callback):
    """Rewards by record: a flat prompt's G completions all get 0.0, any other prompt's alternate 0/1.
    `flat` is "half" (every other training record, by id) or "all" in the batches listed in
    `flat_batches` (and half in the others). Records, per training batch, the prompt ids of each
    sampling round, of the update and of the reference scoring, and the weights before and after."""

    runs: list[ConstructedRewards] = []

    def __init__(self, flat_batches: list[int] | None = None):
        self.flat_batches = set(flat_batches or [])
        self.rounds: list[list[list[str]]] = []  # per batch, per round: prompt ids
        self.updated: list[list[str]] = []  # per batch: the prompt ids of each update (one per batch here)
        self.referenced: list[list[str]] = []  # per batch: prompt ids the reference scored
        self.unchanged: list[bool] = []  # per batch: weights, optimiser state and learning rate
        self.global_steps: list[int] = []  # per batch, after it
        ConstructedRewards.runs.append(self)

    def is_flat(self, record_id: str) -> bool:
        return len(self.rounds) - 1 in self.flat_batches or record_id in self.half

    def on_train_start(self, trainer, module) -> None:
        ids = sorted(r.id for r in trainer.datamodule.train_records)
        self.half = set(ids[::2])
        group = module.settings.num_generations
        update, reference = module.update, module._reference_logprobs

        def reward(texts, **fields) -> RewardOutput:
            prompt_ids = fields["id"][::group]
            self.rounds[-1].append(prompt_ids)
            total = [0.0 if self.is_flat(i) else float(k % 2) for k, i in enumerate(fields["id"])]
            return RewardOutput(total=total, parts={})

        def recording_update(batch, rollout, optimizer):
            self.updated[-1].append([r.id for r in batch.records])
            return update(batch, rollout, optimizer)

        def recording_reference(batch, rollout, span):
            self.referenced[-1] += [r.id for r in batch.records[span.start : span.stop]]
            return reference(batch, rollout, span)

        module.reward, module.update, module._reference_logprobs = (
            reward,
            recording_update,
            recording_reference,
        )

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.rounds.append([])
        self.updated.append([])
        self.referenced.append([])
        self.before = InjectNonFinite.snapshot(trainer, module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        after = InjectNonFinite.snapshot(trainer, module)
        self.unchanged.append(all(torch.equal(after[k], self.before[k]) for k in after))
        self.global_steps.append(trainer.global_step)


def run(tmp_path, *overrides: str, flat_batches: tuple[int, ...] = ()):
    ConstructedRewards.runs.clear()
    callback = f"{{_target_:{__name__}.ConstructedRewards,flat_batches:{list(flat_batches)}}}"
    cfg = compose_config(
        QUICK + ["algo.dynamic_sampling=true", f"+callbacks.rewards={callback}", *overrides], tmp_path
    )
    train(cfg)
    (recorded,) = ConstructedRewards.runs
    return recorded, read_metrics(tmp_path)


def test_zero_variance_groups_are_dropped_and_replaced_and_counted(tmp_path):
    recorded, rows = run(tmp_path, "trainer.max_steps=3", "data.batch_size=4", "algo.max_resample=3")
    size = 4
    for step, rounds in enumerate(recorded.rounds):
        first, extra = rounds[0], rounds[1:]
        kept = [i for ids in rounds for i in ids if i not in recorded.half]
        flat = sum(i in recorded.half for ids in rounds for i in ids)
        assert len(kept) >= size, f"step {step}: three rounds from 20+ records found too few"
        # exactly the prompts with signal, in the order sampled, the extras truncated
        assert recorded.updated[step] == [kept[:size]]
        assert recorded.referenced[step] == kept[:size]  # no reference forward on a dropped group
        all_ids = [i for ids in rounds for i in ids]
        assert len(set(all_ids)) == len(all_ids)  # extra rounds draw prompts not yet sampled this step
        assert logged(rows, "train/dropped_groups")[step] == flat
        assert logged(rows, "train/resample_rounds")[step] == len(extra)
        assert logged(rows, "train/resampled_prompts")[step] == sum(len(ids) for ids in extra)
        assert (
            logged(rows, "train/zero_variance_groups")[step] == sum(i in recorded.half for i in first) / size
        )
        assert not recorded.unchanged[step]
    # the construction did make something to replace
    assert sum(logged(rows, "train/dropped_groups")) > 0 and sum(logged(rows, "train/resample_rounds")) > 0


def test_without_extra_rounds_the_batch_shrinks_to_the_groups_with_signal(tmp_path):
    recorded, rows = run(tmp_path, "trainer.max_steps=3", "data.batch_size=4", "algo.max_resample=0")
    for step, rounds in enumerate(recorded.rounds):
        (first,) = rounds  # no extra round
        kept = [i for i in first if i not in recorded.half]
        assert recorded.updated[step] == ([kept] if kept else [])
        assert logged(rows, "train/dropped_groups")[step] == len(first) - len(kept)
    assert logged(rows, "train/resample_rounds") == [0.0] * len(recorded.rounds)
    assert logged(rows, "train/resampled_prompts") == [0.0] * len(recorded.rounds)
    assert any(0 < len(u[0]) < 4 for u in recorded.updated if u)  # some step trained on fewer than B


def test_a_step_with_no_signal_left_applies_no_update_and_the_run_goes_on(tmp_path):
    """Batch 1 is all flat, in every round: no update (weights, optimiser moments and learning rate
    bitwise unchanged, global_step not advanced), logged, and the run still does its 2 updates."""
    recorded, rows = run(
        tmp_path, "trainer.max_steps=2", "data.batch_size=2", "algo.max_resample=2", flat_batches=(1,)
    )
    assert recorded.unchanged == [False, True, False]
    assert recorded.updated[1] == [] and recorded.referenced[1] == []
    assert len(recorded.rounds[1]) == 3  # the first sampling and both extra rounds
    assert logged(rows, "train/dropped_groups")[1] == sum(len(ids) for ids in recorded.rounds[1])
    assert logged(rows, "train/zero_variance_groups")[1] == 1.0
    assert recorded.global_steps == [1, 1, 2]  # the empty step is not counted: max_steps=2 took 3 batches


def test_dynamic_sampling_resumes_exactly(tmp_path):
    """The real reward: a straight 4-step run, and the same run resumed from its mid-epoch step-3
    checkpoint, end on the same weights and the same rewards, resampling included."""
    common = QUICK + [
        "algo.dynamic_sampling=true",
        "trainer.max_steps=4",
        "checkpoint.every_n_steps=1",
        "checkpoint.keep_all=true",
        "data.max_train_samples=8",
        "data.batch_size=4",
        "algo.optimizer.lr=1e-3",
        "algo.max_completion_length=48",  # room for the format: the real reward then varies within groups
    ]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(compose_config(common, straight))
    train(compose_config(common + [f"checkpoint.resume='{step_checkpoint(straight, 3)}'"], resumed))
    assert_same_training(straight, resumed, 3)
    rows_straight, rows_resumed = read_metrics(straight), read_metrics(resumed)
    assert logged(rows_straight, "train/resample_rounds")[3] > 0  # the resumed step did resample
    for key in ("train/dropped_groups", "train/resample_rounds", "train/resampled_prompts"):
        assert logged(rows_resumed, key) == logged(rows_straight, key)[3:]


def test_signal_and_draw_size():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, float("nan"), 0.0])
    assert groups_with_signal(rewards, 2) == [False, True, False, True]  # a NaN group is kept: caught later
    assert draw_size(8, kept=0, sampled=8) == 8
    assert draw_size(8, kept=4, sampled=8) == 8  # half kept so far: 4 missing need 8 draws
    assert draw_size(8, kept=6, sampled=8) == 3  # ceil(2 * 8 / 6)
    assert draw_size(8, kept=8, sampled=12) == 1  # full here, another rank is not: one draw to keep in step
    with pytest.raises(ValueError, match="max_resample"):
        from medr1.rl.module import GRPOSettings

        GRPOSettings.from_config(compose_config(["algo.max_resample=-1"]).algo)
