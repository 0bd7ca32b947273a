"""Non-finite numbers in GRPO: a NaN reward, loss or gradient skips that step's update (weights, optimiser
moments and learning rate bitwise unchanged), is logged and counted, and algo.max_nonfinite_updates
skipped steps in a row stop the run with a UserError and a checkpoint of the last good state.

The NaNs are injected by a Lightning callback added through the config (`+callbacks.*`), into the real
training run: it wraps the module's reward, or hooks the policy's forward pass or one gradient.
"""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from medr1.errors import UserError
from medr1.rl.rewards import RewardOutput
from medr1.train import train
from tests.helpers.config import FAST, compose_config
from tests.test_train import logged, read_metrics

NAN = float("nan")


class InjectNonFinite(Callback):
    """Makes chosen training batches non-finite and records, per batch, whether it left the trainable
    weights and the optimiser state (moments, step counts, learning rates) bitwise unchanged."""

    runs: list[InjectNonFinite] = []  # Hydra builds the callback inside train(): the test reads it here

    def __init__(self, faults: dict):
        self.faults = {int(batch): str(kind) for batch, kind in faults.items()}  # batch number -> kind
        self.batch = -1  # training batches started so far, minus one (skipped ones count too)
        self.unchanged: list[bool] = []
        self.good_states: list[dict[str, torch.Tensor]] = []  # trainable weights after each batch
        InjectNonFinite.runs.append(self)

    def active(self, kind: str) -> bool:
        return self.faults.get(self.batch) == kind

    def on_train_start(self, trainer, module) -> None:
        reward = module.reward

        def nan_reward(texts, **fields) -> RewardOutput:
            output = reward(texts, **fields)
            if self.active("reward"):
                return RewardOutput(total=[NAN] * len(output.total), parts=output.parts)
            return output

        def nan_logits(model, args, kwargs, output):  # the update's forward only: rollout runs no_grad
            if self.active("loss") and torch.is_grad_enabled():
                output.logits = output.logits * NAN
            return output

        module.reward = nan_reward
        module.model.register_forward_hook(nan_logits, with_kwargs=True)
        first_trainable = next(p for p in module.parameters() if p.requires_grad)
        first_trainable.register_hook(lambda grad: grad * NAN if self.active("gradient") else None)

    @staticmethod
    def snapshot(trainer, module) -> dict[str, torch.Tensor]:
        state = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
        optimizer = trainer.optimizers[0]
        for index, (param, moments) in enumerate(optimizer.state.items()):
            for key, value in moments.items():
                state[f"optimizer.{index}.{key}.{tuple(param.shape)}"] = torch.as_tensor(value).clone()
        for index, group in enumerate(optimizer.param_groups):
            state[f"lr.{index}"] = torch.tensor(group["lr"])
        return state

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.batch += 1
        self.before = self.snapshot(trainer, module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        after = self.snapshot(trainer, module)
        same = after.keys() == self.before.keys() and all(
            torch.equal(after[k], self.before[k]) for k in after
        )
        self.unchanged.append(same)
        self.good_states.append({k: v for k, v in after.items() if not k.startswith(("optimizer.", "lr."))})


def run_config(tmp_path, faults: dict[int, str], *overrides: str):
    InjectNonFinite.runs.clear()
    inject = ",".join(f"{batch}:{kind}" for batch, kind in faults.items())
    return compose_config(
        FAST
        + [
            "trainer.val_check_interval=1000",
            "checkpoint.every_n_steps=1000",
            "algo.optimizer.lr=1e-3",
            "algo.max_completion_length=24",  # short rollouts: the test is about the update
            "data.batch_size=2",  # large enough that every good step moves every trainable weight
            f"+callbacks.inject={{_target_:{__name__}.InjectNonFinite,faults:{{{inject}}}}}",
            *overrides,
        ],
        tmp_path,
    )


@pytest.mark.slow  # about 50 s on 2 CPU cores: seven rollouts and the final evaluation
def test_isolated_nonfinite_steps_are_skipped_logged_and_training_continues(tmp_path):
    faults = {1: "reward", 3: "loss", 5: "gradient"}
    summary = train(run_config(tmp_path, faults, "trainer.max_steps=4"))
    assert summary["n"] > 0  # the run finished and evaluated
    (run,) = InjectNonFinite.runs
    # batches 0, 2, 4, 6 are the 4 applied steps; each fault skipped exactly its own batch's update
    assert run.unchanged == [False, True, False, True, False, True, False]
    rows = read_metrics(tmp_path)
    assert logged(rows, "train/nonfinite") == [0, 1, 0, 1, 0, 1, 0]
    assert logged(rows, "train/skipped_updates") == [0, 1, 1, 2, 2, 3, 3]
    rewards = logged(rows, "train/reward")
    assert math.isnan(rewards[1]) and all(math.isfinite(r) for i, r in enumerate(rewards) if i != 1)


@pytest.mark.parametrize("kind", ["reward", "gradient"])
def test_consecutive_nonfinite_steps_stop_the_run_with_a_checkpoint_of_the_last_good_state(tmp_path, kind):
    cfg = run_config(tmp_path, {1: kind, 2: kind, 3: kind}, "algo.max_nonfinite_updates=2")
    with pytest.raises(UserError) as stop:
        train(cfg)
    message = str(stop.value)
    path = tmp_path / "checkpoints" / "nonfinite-stop.ckpt"
    assert "\n" not in message
    assert "2 updates in a row were non-finite" in message and "at step 1" in message
    assert f"a non-finite {kind}" in message and str(path) in message
    assert "algo.optimizer.lr" in message and "algo.max_nonfinite_updates" in message
    (run,) = InjectNonFinite.runs
    assert run.unchanged == [False, True]  # stopped in batch 2 (its end hook never ran)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 1
    saved, good = checkpoint["state_dict"], run.good_states[0]  # the weights after the one good step
    assert good and all(torch.equal(saved[name], weight) for name, weight in good.items())


def test_zero_never_stops(tmp_path):
    train(
        run_config(
            tmp_path,
            {0: "reward", 1: "reward", 2: "reward"},
            "algo.max_nonfinite_updates=0",
            "trainer.max_steps=1",
        )
    )
    (run,) = InjectNonFinite.runs
    assert run.unchanged == [True, True, True, False]
    assert logged(read_metrics(tmp_path), "train/skipped_updates") == [1, 2, 3, 3]
