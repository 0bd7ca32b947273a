"""Resuming at every awkward point (an epoch boundary, mid-epoch, after the last step), refusing a
checkpoint of a changed config or one holding a pickled object, bounded checkpoint folders
(`checkpoint.keep_last`) with adapters-only LoRA checkpoints, and a long soak run (slow)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medr1.builders import load_policy
from medr1.resume import check_same_training, read_checkpoint
from medr1.train import checkpoints_kept, train
from tests.helpers.config import FAST, REPO, compose_config

# 8 training records in batches of 4: an epoch is 2 steps, so step 2 ends epoch 0 and step 3 is mid-epoch 1
COMMON = FAST + [
    "num_threads=1",
    "trainer.max_steps=4",
    "trainer.val_check_interval=100",
    "checkpoint.every_n_steps=1",
    "data.max_train_samples=8",
    "data.batch_size=4",
    "algo.optimizer.lr=1e-3",
]


def rewards(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv") as f:
        return [float(row["train/reward"]) for row in csv.DictReader(f) if row.get("train/reward")]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / "final" / "model.safetensors")


def assert_same_training(straight: Path, resumed: Path, from_step: int) -> None:
    a, b = final_weights(straight), final_weights(resumed)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert rewards(resumed) == rewards(straight)[from_step:]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """4 steps (2 epochs) in one go, every step checkpointed and kept."""
    run_dir = tmp_path_factory.mktemp("straight")
    train(compose_config(COMMON + ["checkpoint.keep_all=true"], run_dir))
    return run_dir


def step_checkpoint(run_dir: Path, step: int) -> Path:
    (found,) = (run_dir / "checkpoints").glob(f"epoch=*-step={step}.ckpt")
    return found


@pytest.mark.parametrize("step", [2, 3], ids=["at_epoch_boundary", "mid_epoch"])
def test_resume_continues_exactly(straight, tmp_path, step):
    checkpoint = step_checkpoint(straight, step)
    assert checkpoint.name == ("epoch=0-step=2.ckpt" if step == 2 else "epoch=1-step=3.ckpt")
    assert len(rewards(straight)) == 4
    train(
        compose_config(COMMON + ["checkpoint.keep_all=true", f"checkpoint.resume='{checkpoint}'"], tmp_path)
    )
    assert_same_training(straight, tmp_path, step)


def test_resuming_a_finished_run_does_nothing_and_exits_0(straight):
    """`checkpoint.resume=last` on a run that reached max_steps: a message, the stored evaluation, and
    no file written; through run.py, as a requeued job would call it."""
    outputs = [straight / "eval" / "summary.json", straight / "checkpoints" / "final" / "model.safetensors"]
    written = [path.stat().st_mtime_ns for path in outputs]
    result = subprocess.run(
        [sys.executable, "run.py", *COMMON, "checkpoint.keep_all=true", "checkpoint.resume=last"]
        + [f"hydra.run.dir={straight}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"the run already finished: 4 steps of 4; its outputs are in {straight}" in result.stdout
    assert [path.stat().st_mtime_ns for path in outputs] == written
    assert len(rewards(straight)) == 4  # no step trained


def test_resume_refuses_a_changed_training_config(straight, tmp_path, caplog):
    checkpoint = step_checkpoint(straight, 2)
    changed = COMMON + [f"checkpoint.resume='{checkpoint}'", "algo.optimizer.lr=2e-3", "algo.beta=0.5"]
    with pytest.raises(SystemExit) as refused:
        train(compose_config(changed, tmp_path))
    message = str(refused.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert "algo.optimizer.lr (checkpoint: 0.001, now: 0.002)" in message and "algo.beta" in message
    assert "force_resume" in message and "trainer" not in message and "checkpoint.resume" not in message
    assert not (tmp_path / "checkpoints").exists()  # refused before anything was built

    stored = read_checkpoint(checkpoint)
    # what does not change the trajectory may change: the step budget, logging, evaluation, checkpointing
    free = ["trainer.max_steps=10", "logger=none", "eval.parser=medr1", "checkpoint.every_n_steps=5"]
    check_same_training(stored, compose_config(COMMON + free), checkpoint)
    # validation draws from the global random generator: its schedule changes the sampled completions
    with pytest.raises(ValueError, match="trainer.val_check_interval"):
        check_same_training(stored, compose_config(COMMON + ["trainer.val_check_interval=1"]), checkpoint)
    with caplog.at_level("WARNING"):
        check_same_training(stored, compose_config(changed + ["checkpoint.force_resume=true"]), checkpoint)
    assert "algo.optimizer.lr" in caplog.text

    # a checkpoint from before algo.dynamic_sampling existed resumes with it off, not with it on
    older = stored | {
        "medr1_config": {
            k: v for k, v in stored["medr1_config"].items() if "resample" not in k and "dynamic" not in k
        }
    }
    check_same_training(older, compose_config(COMMON), checkpoint)
    with pytest.raises(ValueError, match=r"algo.dynamic_sampling \(checkpoint: unset, now: True\)"):
        check_same_training(older, compose_config(COMMON + ["algo.dynamic_sampling=true"]), checkpoint)


def test_resume_refuses_a_checkpoint_holding_a_pickled_object(straight, tmp_path):
    """Loaded with weights_only: the object's code never runs, and the run stops with one line."""
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    checkpoint = torch.load(step_checkpoint(straight, 2), weights_only=True)
    checkpoint["payload"] = Payload()
    planted = tmp_path / "planted.ckpt"
    torch.save(checkpoint, planted)
    with pytest.raises(SystemExit) as refused:
        train(compose_config(COMMON + [f"checkpoint.resume='{planted}'"], tmp_path / "run"))
    message = str(refused.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert "weights_only" in message and str(planted) in message
    assert not marker.exists()


def test_keep_last_bounds_the_folder_and_lora_checkpoints_hold_adapters_only(tmp_path):
    """keep_last=2: the two newest step checkpoints and last.ckpt; LoRA checkpoints hold the trainable
    parameters only, and resuming from one (base rebuilt from the config) continues exactly."""
    lora = COMMON + ["tuning=lora", "tuning.rank=4", "algo.optimizer.lr=3e-3", "checkpoint.keep_last=2"]
    straight = tmp_path / "straight"
    train(compose_config(lora, straight))
    files = sorted(p.name for p in (straight / "checkpoints").glob("*.ckpt"))
    assert files == ["epoch=1-step=3.ckpt", "epoch=1-step=4.ckpt", "last.ckpt"]

    trainable = {
        f"model.{name}"
        for name, p in load_policy(compose_config(lora), train=True).model.named_parameters()
        if p.requires_grad
    }
    saved = read_checkpoint(straight / "checkpoints" / "last.ckpt")
    assert set(saved["state_dict"]) == trainable and all("lora_" in name for name in trainable)

    resumed = tmp_path / "resumed"
    train(compose_config(lora + [f"checkpoint.resume='{step_checkpoint(straight, 3)}'"], resumed))
    assert_same_training(straight, resumed, 3)

    # the adapters on another base model (the tiny model before its warm start), forced past the config check
    other_base = ["model.build.warmstart=null", "checkpoint.force_resume=true"]
    with pytest.raises(SystemExit, match="frozen base weights .* differ"):
        train(
            compose_config(
                lora + other_base + [f"checkpoint.resume='{step_checkpoint(straight, 3)}'"], tmp_path / "x"
            )
        )


def test_checkpoints_kept_from_keep_last_and_the_older_keep_all():
    def kept(**values):
        return checkpoints_kept(compose_config([f"checkpoint.{k}={v}" for k, v in values.items()]).checkpoint)

    assert kept() == 1  # the default: the newest step checkpoint (and last.ckpt)
    assert kept(keep_all="true") == -1
    assert kept(keep_last=3) == 3 and kept(keep_last=0) == 0
    with pytest.raises(SystemExit, match="keep_last"):
        kept(keep_last=3, keep_all="true")


@pytest.mark.slow
def test_soak_memory_stays_flat_and_the_checkpoint_folder_bounded(tmp_path):
    """2000 tiny GRPO steps (1 prompt x 2 completions of at most 8 tokens, LoRA), a checkpoint every 25
    steps keeping 2, validation every 500: resident memory after warm-up grows by less than 5%."""
    report = tmp_path / "soak.json"
    cfg = compose_config(
        FAST
        + [
            "num_threads=1",
            "tuning=lora",
            "tuning.rank=4",
            "trainer.max_steps=2000",
            "trainer.val_check_interval=500",
            "data.batch_size=1",
            "algo.num_generations=2",
            "algo.max_completion_length=8",
            "checkpoint.every_n_steps=25",
            "checkpoint.keep_last=2",
            f"+callbacks.soak={{_target_:tests.helpers.soak.MemoryWatch,out:'{report}',checkpoints:'{tmp_path / 'checkpoints'}'}}",
        ],
        tmp_path,
    )
    train(cfg)
    watched = json.loads(report.read_text())
    rss, steps = watched["rss"], watched["steps"]
    assert steps == 2000 == len(rss)
    warm, tail = rss[200:400], rss[-200:]  # after 10% warm-up, and the last 10%
    start, end = sum(warm) / len(warm), sum(tail) / len(tail)
    print(
        f"soak: {steps} steps in {watched['seconds']:.0f} s; RSS {start / 2**20:.1f} MiB after warm-up -> "
        f"{end / 2**20:.1f} MiB at the end ({100 * (end / start - 1):+.2f}%), max {max(rss[200:]) / 2**20:.1f} MiB"
    )
    assert end < 1.05 * start
    assert max(watched["checkpoint_files"]) == 3  # 2 step checkpoints + last.ckpt, all run long
    assert len(list((tmp_path / "checkpoints").glob("*.ckpt"))) == 3
