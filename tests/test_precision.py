"""GPU precision settings, run on CPU as far as Lightning allows: every GPU trainer config trains fp32
weights under bf16 autocast, so one step at the papers' lr 1e-6 moves every weight that has a gradient;
bf16 weights (bf16-true) lose those updates and are refused unless the user opts in."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from medr1.precision import autocast_for, check_trainable_precision, compute_dtype, training_weight_dtype
from medr1.train import train
from tests.helpers.config import FAST, compose_config

GPU_TRAINERS = ["gpu", "ddp", "fsdp", "deepspeed"]
REAL_MODELS = ["qwen2_vl_2b", "qwen2_5_vl_3b"]


class StepProbe(Callback):
    """Records, for the first optimiser step, which parameter elements had a non-zero gradient and
    which of those the step changed."""

    results: list[dict] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if hasattr(self, "before"):
            return
        self.before = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        self.had_grad = {
            n: p.grad.detach() != 0 for n, p in pl_module.named_parameters() if p.grad is not None
        }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not hasattr(self, "before") or getattr(self, "done", False):
            return
        self.done = True
        with_grad = changed = 0
        for name, parameter in pl_module.named_parameters():
            if name in self.before:
                moved = parameter.detach() != self.before[name]
                with_grad += int(self.had_grad[name].sum())
                changed += int((moved & self.had_grad[name]).sum())
        dtypes = {p.dtype for p in pl_module.parameters() if p.requires_grad}
        StepProbe.results.append({"with_grad": with_grad, "changed": changed, "dtypes": dtypes})


def one_step(tmp_path, overrides: list[str]) -> dict:
    """One GRPO optimiser step at lr 1e-6 through train(); the probe's record of it."""
    StepProbe.results.clear()
    cfg = compose_config(
        FAST
        + [
            "trainer.max_steps=1",
            "trainer.val_check_interval=100",
            "algo.optimizer.lr=1e-6",
            "data.batch_size=8",
            "+callbacks.probe._target_=test_precision.StepProbe",
            "checkpoint.every_n_steps=100",
            "algo.max_completion_length=24",
            *overrides,
        ],
        tmp_path,
    )
    train(cfg)
    assert len(StepProbe.results) == 1
    result = StepProbe.results[0]
    print(f"{overrides}: {result['changed']} of {result['with_grad']} elements with a gradient changed")
    return result


def cpu_overrides(trainer: str) -> list[str]:
    """The trainer config as written, on the CPU: Lightning refuses FSDP without CUDA, and DeepSpeed is
    not installed here, so those two run their precision under Lightning's default strategy."""
    overrides = [f"trainer={trainer}", "trainer.accelerator=cpu", "trainer.devices=1"]
    if trainer in ("fsdp", "deepspeed"):
        overrides.append("trainer.strategy=auto")
    return overrides


@pytest.mark.parametrize("trainer", GPU_TRAINERS)
def test_gpu_trainer_configs_use_fp32_weights_under_bf16_autocast(trainer):
    cfg = compose_config([f"trainer={trainer}", "experiment=med_r1"])
    assert cfg.trainer.precision == "bf16-mixed"
    assert cfg.model.dtype == "float32"


@pytest.mark.parametrize("model", REAL_MODELS)
def test_real_model_configs_name_their_training_dtype(model):
    cfg = compose_config([f"model={model}"])
    assert cfg.model.dtype == "float32"
    assert cfg.model.allow_low_precision_weights is False


def test_deepspeed_config_clips_gradients_at_algo_max_grad_norm():
    cfg = compose_config(["trainer=deepspeed", "algo.max_grad_norm=0.5"])
    assert cfg.trainer.strategy.config.gradient_clipping == 0.5
    assert cfg.trainer.strategy.config.zero_optimization.stage == 3
    assert compose_config(["trainer=deepspeed", "algo=sft"]).trainer.strategy.config.gradient_clipping == 1.0


@pytest.mark.parametrize("trainer", GPU_TRAINERS)
def test_one_step_at_lr_1e6_moves_every_weight_that_has_a_gradient(tmp_path, trainer):
    model_dtype = compose_config(["model=qwen2_vl_2b"]).model.dtype  # what a GPU training run loads
    result = one_step(tmp_path, cpu_overrides(trainer) + [f"model.dtype={model_dtype}"])
    assert result["dtypes"] == {torch.float32}
    assert result["with_grad"] > 10_000
    # the rest had gradients so small against AdamW's eps (1e-8) that their update is below fp32 resolution
    assert result["changed"] / result["with_grad"] > 0.98


def test_bf16_weights_lose_most_lr_1e6_updates_and_need_an_explicit_opt_in(tmp_path):
    with pytest.raises(ValueError, match="allow_low_precision_weights"):
        one_step(tmp_path / "refused", cpu_overrides("gpu") + ["trainer.precision=bf16-true"])
    result = one_step(
        tmp_path / "opted_in",
        cpu_overrides("gpu") + ["trainer.precision=bf16-true", "model.allow_low_precision_weights=true"],
    )
    assert result["dtypes"] == {torch.bfloat16}
    assert result["with_grad"] > 10_000
    assert result["changed"] / result["with_grad"] < 0.2  # the failure the fp32 configs avoid


def test_training_refuses_bf16_weights_from_the_model_dtype():
    model = torch.nn.Linear(4, 4).to(torch.bfloat16)
    assert training_weight_dtype(model, "bf16-mixed") == torch.bfloat16
    with pytest.raises(ValueError, match="model.dtype=float32"):
        check_trainable_precision(model, "bf16-mixed", object(), allow_low_precision=False)
    check_trainable_precision(model, "bf16-mixed", object(), allow_low_precision=True)
    assert training_weight_dtype(torch.nn.Linear(4, 4), "bf16-true") == torch.bfloat16
    assert training_weight_dtype(torch.nn.Linear(4, 4), "bf16-mixed") == torch.float32


def test_evaluation_autocast_follows_the_trainer_precision():
    layer = torch.nn.Linear(4, 4)
    with autocast_for("bf16-mixed", "cpu"):
        assert layer(torch.ones(1, 4)).dtype == torch.bfloat16
    with autocast_for("32-true", "cpu"):
        assert layer(torch.ones(1, 4)).dtype == torch.float32


def test_evaluation_only_run_under_a_gpu_trainer_config_evaluates_under_its_autocast(tmp_path):
    from medr1.evaluate import evaluate

    cfg = compose_config(
        FAST
        + [
            "mode=eval",
            "eval.reuse=false",
            "trainer=gpu",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "model.dtype=bfloat16",
        ],
        tmp_path,
    )
    summary = evaluate(cfg)
    assert summary["n"] > 0


def test_lightning_legacy_precision_names_mean_mixed_precision():
    fp32 = torch.nn.Linear(4, 4)
    assert training_weight_dtype(fp32, "bf16") == torch.float32  # Lightning: bf16 = bf16-mixed
    check_trainable_precision(fp32, "bf16", object(), allow_low_precision=False)
    assert training_weight_dtype(fp32, 16) == torch.float32
    with autocast_for("bf16", "cpu"):
        assert fp32(torch.ones(1, 4)).dtype == torch.bfloat16


def test_the_compute_dtype_is_what_the_step_matmuls_run_in():
    """mode=check reads the achieved FLOP/s against the matmul rate in this dtype: autocast's under a
    mixed precision (but fp16 autocast on CPU runs nothing: the fp32 weights), the converted weights'
    under *-true, else the weights as loaded."""
    fp32, bf16 = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4).to(torch.bfloat16)
    layer_out = {}
    for precision in ("bf16-mixed", "16-mixed", "bf16"):
        with autocast_for(precision, "cpu"):
            layer_out[precision] = fp32(torch.ones(1, 4)).dtype
        assert compute_dtype(precision, fp32, "cpu") == layer_out[precision]
    assert layer_out == {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float32, "bf16": torch.bfloat16}
    assert compute_dtype("16-mixed", fp32, "cuda") == torch.float16
    assert compute_dtype("bf16-true", fp32, "cpu") == torch.bfloat16
    assert compute_dtype("32-true", fp32, "cpu") == torch.float32
    assert compute_dtype("32-true", bf16, "cpu") == torch.bfloat16
