"""Multi-process paths on what a CPU can run: DDP over 2 gloo processes; the GPU strategy configs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from hydra.utils import instantiate

from tests.conftest import REPO, compose_config


def test_ddp_grpo_on_two_cpu_processes(tmp_path):
    run_dir = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "run.py", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
         "trainer.precision=32-true", "logger=csv", f"hydra.run.dir={run_dir}", "trainer.max_steps=3",
         "trainer.val_check_interval=2", "data.val_size=8", "data.batch_size=4", "data.source.size=5",
         "algo.num_generations=4", "eval.before_training=false", "trainer.enable_progress_bar=false"],
        cwd=REPO, capture_output=True, text=True, env=os.environ.copy(), timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert summary["n"] == len((run_dir / "eval" / "predictions.jsonl").read_text().splitlines()) == 40
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    # validation gathered both ranks' predictions (8 questions, padded repeats removed) before computing
    assert [r["val/accuracy"] for r in rows if r.get("val/accuracy")]
    assert len([r for r in rows if r.get("train/reward")]) == 3


@pytest.mark.parametrize("name", ["gpu", "ddp", "fsdp", "deepspeed"])
def test_gpu_trainer_configs_compose_with_bf16(name):
    cfg = compose_config([f"trainer={name}"])
    assert cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.precision == "bf16-true"


def test_fsdp_strategy_wraps_qwen2_vl_layers():
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLDecoderLayer, Qwen2VLVisionBlock

    strategy = instantiate(compose_config(["trainer=fsdp"]).trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert {Qwen2VLDecoderLayer, Qwen2VLVisionBlock} <= set(policy._module_classes)
