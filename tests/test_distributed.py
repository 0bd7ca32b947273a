"""Multi-process paths on what a CPU can run: DDP over 2 gloo processes; the GPU strategy configs."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch
from hydra.utils import instantiate

from tests.helpers.config import compose_config, run_py

# `python run.py` on 2 gloo processes, fp32, CSV logs, no evaluation before training
DDP_CPU = [
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.precision=32-true",
    "logger=csv",
    "eval.before_training=false",
    "trainer.enable_progress_bar=false",
]


def run_ddp(run_dir, *overrides: str) -> None:
    """A DDP run of run.py in `run_dir` with `overrides`; asserts it exits 0."""
    run_py([*DDP_CPU, f"hydra.run.dir={run_dir}", *overrides], timeout=600)


def test_ddp_grpo_on_two_cpu_processes(tmp_path):
    run_dir = tmp_path / "ddp"
    run_ddp(
        run_dir,
        "trainer.max_steps=3",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
        "data.val_size=8",
        "data.batch_size=4",
        "data.source.size=5",
        "algo.num_generations=4",
        # a callback monitoring a validation metric needs it on every rank, not only on rank zero
        "+callbacks.stop={_target_:lightning.pytorch.callbacks.EarlyStopping,monitor:val/accuracy,mode:max,patience:5}",
    )
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert summary["n"] == len((run_dir / "eval" / "predictions.jsonl").read_text().splitlines()) == 40
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    # validation gathered both ranks' predictions (8 questions, padded repeats removed) before computing
    assert [r["val/accuracy"] for r in rows if r.get("val/accuracy")]
    assert len([r for r in rows if r.get("train/reward")]) == 3


def test_ddp_dynamic_sampling_keeps_the_ranks_in_step(tmp_path):
    """algo.dynamic_sampling on 2 DDP ranks: each rank drops its flat groups and draws more prompts, the
    ranks agree (all-gather) on how many rounds to run and how many prompts to train on, and the run
    ends with every optimiser step taken and the drops logged (the tiny instruct model starts with
    about a quarter of its groups flat)."""
    run_dir = tmp_path / "ddp_dynamic"
    run_ddp(
        run_dir,
        "trainer.max_steps=4",
        "trainer.val_check_interval=100",
        "trainer.log_every_n_steps=1",
        "data.val_size=4",
        "data.batch_size=4",
        "data.source.size=10",
        "algo.num_generations=4",
        "algo.max_completion_length=24",
        "algo.dynamic_sampling=true",
        "algo.max_resample=2",
    )
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    dropped = [float(r["train/dropped_groups"]) for r in rows if r.get("train/dropped_groups")]
    rounds = [float(r["train/resample_rounds"]) for r in rows if r.get("train/resample_rounds")]
    assert len(dropped) == len(rounds) >= 4
    assert sum(dropped) > 0, "no flat group in 4 steps: the test would not exercise the drop"
    assert all(0 <= r <= 2 for r in rounds)
    assert json.loads((run_dir / "eval" / "summary.json").read_text())["n"] > 0


def test_ddp_micro_batches_all_reduce_once_and_give_the_whole_batch_update(tmp_path, tiny_path):
    """2 ranks x 4 prompts, one SGD step (lr 1, no clipping): the weight change is exactly -gradient.
    In micro-batches of 2 prompts the first backward accumulates locally (no_sync) and only the last
    all-reduces, so the update must equal the whole-batch update and cost the same all-reduces."""
    from safetensors.torch import load_file

    finals, counts = {}, {}
    for micro in (0, 2):
        run_dir, probe = tmp_path / f"micro{micro}", tmp_path / f"probe{micro}"
        run_ddp(
            run_dir,
            "trainer.max_steps=1",
            "data.batch_size=4",
            "data.source.size=5",
            "algo.num_generations=4",
            f"algo.micro_batch_size={micro}",
            "algo.beta=0",
            "algo.max_grad_norm=0",
            "algo.optimizer._target_=torch.optim.SGD",
            "~algo.optimizer.betas",
            "~algo.optimizer.eps",
            "algo.optimizer.lr=1.0",
            "+callbacks.probe._target_=tests.helpers.ddp_probe.CountGradientAllReduces",
            f"+callbacks.probe.out={probe}",
        )
        finals[micro] = load_file(run_dir / "checkpoints" / "final" / "model.safetensors")
        counts[micro] = [
            json.loads((probe / f"rank{r}.json").read_text())["bucket_all_reduces"] for r in (0, 1)
        ]
    start = load_file(os.path.join(tiny_path, "model.safetensors"))
    assert (
        counts[0][0] > 0 and counts[2] == counts[0]
    )  # one all-reduce per bucket per update, not per micro-batch
    update = {name: finals[0][name] - start[name] for name in start}
    assert max(float(u.abs().max()) for u in update.values()) > 1e-3  # the step moved the policy
    for name, whole in update.items():
        micro_update = finals[2][name] - start[name]
        torch.testing.assert_close(micro_update, whole, rtol=1e-4, atol=1e-6, msg=name)


def test_ddp_resume_restores_every_rank_s_random_state(tmp_path):
    """2 steps straight == 1 step, stop, resume from its checkpoint, 1 more step: on 2 processes,
    each with its own sampling stream (their prompts differ, so do their completions' lengths)."""
    from safetensors.torch import load_file

    common = [
        "trainer.max_steps=2",
        "data.batch_size=2",
        "data.source.size=5",
        "algo.num_generations=4",
        "algo.beta=0",
        "algo.optimizer.lr=1e-3",
        "checkpoint.every_n_steps=1",
        "checkpoint.keep_all=true",
    ]

    def run(run_dir, *extra):
        run_ddp(run_dir, *common, *extra)

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(straight)
    checkpoint = next((straight / "checkpoints").glob("*step=1.ckpt"))
    states = torch.load(checkpoint, weights_only=True)["medr1_rng"]["per_rank"]
    assert len(states) == 2 and not torch.equal(states[0]["torch"], states[1]["torch"])  # rank 1's own
    run(resumed, f"checkpoint.resume='{checkpoint}'")
    a = load_file(straight / "checkpoints" / "final" / "model.safetensors")
    b = load_file(resumed / "checkpoints" / "final" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("name", ["gpu", "ddp", "fsdp", "deepspeed"])
def test_gpu_trainer_configs_compose_with_bf16_mixed(name):
    cfg = compose_config([f"trainer={name}"])
    assert cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.precision == "bf16-mixed"


def test_fsdp_strategy_wraps_qwen2_vl_layers():
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLDecoderLayer, Qwen2VLVisionBlock

    strategy = instantiate(compose_config(["trainer=fsdp"]).trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert {Qwen2VLDecoderLayer, Qwen2VLVisionBlock} <= set(policy._module_classes)
