"""End-to-end: GRPO and SFT trainings through the real config, model loading and data path."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText

from medr1.train import train
from tests.helpers.config import DEFAULT_SUMMARY_KEYS, FAST, compose_config, run_py


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def logged(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


def test_grpo_run_writes_metrics_eval_and_checkpoints(tmp_path):
    cfg = compose_config(FAST, tmp_path)
    summary = train(cfg)
    assert set(json.loads((tmp_path / "eval" / "summary.json").read_text())) == DEFAULT_SUMMARY_KEYS
    predictions = (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == summary["n"] > 0
    assert set(summary["by_modality"]) == {
        "ct",
        "mri",
        "xray",
        "ultrasound",
        "dermoscopy",
        "fundus",
        "oct",
        "microscopy",
    }
    rows = read_metrics(tmp_path)
    for key in (
        "train/reward",
        "train/reward_format",
        "train/reward_accuracy",
        "train/accuracy",
        "train/kl",
        "train/clip_fraction",
        "train/entropy",
        "train/zero_variance_groups",
        "train/completion_length",
        "train/reasoning_length",
        "train/lr",
        "val/accuracy",
        "val/accuracy_ct",
        "test/accuracy",
    ):
        assert logged(rows, key), f"{key} was not logged"
    assert len(logged(rows, "train/reward")) == 3
    assert all(v >= 0 for v in logged(rows, "train/kl"))
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    final = AutoModelForImageTextToText.from_pretrained(tmp_path / "checkpoints" / "final")
    assert final.config.model_type == "qwen2_vl"


def _parameters(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_full_tuning_moves_language_model_and_keeps_frozen_vision_tower(tmp_path, tiny_path):
    cfg = compose_config(
        FAST + ["tuning.freeze_vision=true", "algo.optimizer.lr=1e-3", "algo.beta=0.04"], tmp_path
    )
    before = _parameters(AutoModelForImageTextToText.from_pretrained(tiny_path))
    train(cfg)
    after = _parameters(AutoModelForImageTextToText.from_pretrained(tmp_path / "checkpoints" / "final"))
    vision = [n for n in before if ".visual." in n]
    language = [n for n in before if ".language_model." in n and "embed_tokens" not in n]
    assert vision and language
    assert all(torch.equal(before[n], after[n]) for n in vision)
    moved = [n for n in language if not torch.equal(before[n], after[n])]
    assert len(moved) == len(language), f"unchanged: {sorted(set(language) - set(moved))[:5]}"


def test_lora_trains_adapters_only_and_uses_adapter_free_reference(tmp_path, tiny_path):
    from medr1.rl.module import GRPOModule

    cfg = compose_config(
        FAST
        + [
            "tuning=lora",
            "tuning.rank=4",
            "algo.optimizer.lr=3e-3",
            "algo.beta=0.04",
            "algo.num_generations=8",
        ],
        tmp_path,
    )
    assert GRPOModule.reference_for(object(), cfg.algo, "lora") is None  # no second copy
    summary = train(cfg)
    assert summary["n"] > 0
    rows = read_metrics(tmp_path)
    kl = logged(rows, "train/kl")
    assert logged(rows, "train/zero_variance_groups")[0] < 1.0
    assert kl[0] == pytest.approx(0.0, abs=1e-6)  # adapters start at zero: policy == reference
    assert max(kl[1:]) > 0  # after an update the adapted policy differs from the adapter-free one
    merged = _parameters(AutoModelForImageTextToText.from_pretrained(tmp_path / "checkpoints" / "final"))
    base = _parameters(AutoModelForImageTextToText.from_pretrained(tiny_path))
    q_proj = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q_proj], base[q_proj])  # merged adapters changed q_proj
    vision = [n for n in base if ".visual." in n]
    assert all(torch.equal(merged[n], base[n]) for n in vision)


def test_sft_lowers_target_loss(tmp_path):
    cfg = compose_config(
        FAST
        + ["algo=sft", "trainer.max_steps=12", "algo.optimizer.lr=3e-3", "trainer.val_check_interval=12"],
        tmp_path,
    )
    train(cfg)
    losses = logged(read_metrics(tmp_path), "train/loss")
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3


def test_resume_from_checkpoint_continues_exactly(tmp_path):
    """4 steps in one go == 2 steps, stop, resume from the step-2 checkpoint, 2 more steps."""
    common = FAST + [
        "trainer.max_steps=4",
        "trainer.val_check_interval=100",
        "data.batch_size=2",
        "algo.optimizer.lr=1e-3",
        "checkpoint.keep_all=true",
    ]
    straight = tmp_path / "straight"
    train(compose_config(common, straight))
    resumed = tmp_path / "resumed"
    checkpoint = next((straight / "checkpoints").glob("*step=2.ckpt"))
    train(compose_config(common + [f"checkpoint.resume='{checkpoint}'"], resumed))
    a = _parameters(AutoModelForImageTextToText.from_pretrained(straight / "checkpoints" / "final"))
    b = _parameters(AutoModelForImageTextToText.from_pretrained(resumed / "checkpoints" / "final"))
    assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)
    rewards_straight = logged(read_metrics(straight), "train/reward")
    rewards_resumed = logged(read_metrics(resumed), "train/reward")
    assert rewards_resumed == pytest.approx(rewards_straight[2:])


def test_reading_an_offline_run_waits_for_w_b_s_writer(tmp_path, monkeypatch, caplog):
    """run.finish() can return before W&B's writer process has flushed the file: the reader waits for
    the exit record, and reads a run that never finished as far as it was written."""
    import threading

    import wandb

    from tests.helpers.wandb_offline import read_history, run_file

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = wandb.init(dir=tmp_path, project="medr1-tests")
    for step in range(200):
        run.log({"loss": float(step)})
    run.finish()
    assert [row["loss"] for row in read_history(tmp_path / "wandb")] == [float(s) for s in range(200)]
    complete = run_file(tmp_path / "wandb").read_bytes()  # read once the exit record is written

    partial = tmp_path / "partial" / "run-x.wandb"
    partial.parent.mkdir()
    partial.write_bytes(complete[: len(complete) // 2])  # cut mid-record, before the exit record
    with caplog.at_level("WARNING"):
        rows = read_history(partial, wait=0.3)
    assert 0 < len(rows) < 200 and [row["loss"] for row in rows] == [float(s) for s in range(len(rows))]
    assert "no exit record" in caplog.text

    writer = threading.Timer(0.5, partial.write_bytes, args=(complete,))
    writer.start()
    assert len(read_history(partial, wait=20)) == 200  # waited for the rest
    writer.join()


def test_wandb_offline_run_holds_the_logged_metrics(tmp_path, monkeypatch):
    from tests.helpers.wandb_offline import read_history, read_run

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline must come from medr1's own default
    cfg = compose_config(
        [o for o in FAST if not o.startswith("logger=")]
        + ["logger=wandb", "logger.sample_table_every=1", "question_type=lesion_grading"],
        tmp_path,
    )
    train(cfg)
    history = read_history(tmp_path / "wandb")
    rewards = [row["train/reward"] for row in history if "train/reward" in row]
    assert rewards == pytest.approx(logged(read_metrics(tmp_path), "train/reward"))  # W&B and CSV agree
    assert any("val/accuracy" in row for row in history)
    assert any("test/accuracy_ct" in row for row in history)
    assert any(any(key.startswith("samples") for key in row) for row in history)  # sample completion tables
    run = read_run(tmp_path / "wandb")
    assert run["group"] == cfg.experiment_name == "demo"
    assert {"algo:grpo", "modality:all", "question_type:lesion_grading", "reward:default"} <= set(run["tags"])
    assert list((tmp_path / "wandb").glob("offline-run-*"))


@pytest.mark.slow
def test_grpo_raises_reward_and_accuracy_on_a_small_budget(tmp_path):
    """Modality recognition over all 8 modalities: the letter depends on the image, so GRPO must learn to read it."""
    cfg = compose_config(
        FAST
        + [
            "question_type=modality_recognition",
            "trainer.max_steps=80",
            "algo.optimizer.lr=3e-4",
            "algo.beta=0",
            "data.batch_size=16",
            "algo.num_generations=4",
            "data.source.size=40",
            "eval.before_training=true",
            "trainer.val_check_interval=1000",
        ],
        tmp_path,
    )
    summary = train(cfg)
    before = json.loads((tmp_path / "eval_before" / "eval" / "summary.json").read_text())
    rows = read_metrics(tmp_path)
    rewards, accuracy = logged(rows, "train/reward"), logged(rows, "train/accuracy")
    # learning shows as accuracy and reward rising from chance over the run
    assert sum(accuracy[:10]) / 10 < 0.35 < 0.5 < sum(accuracy[-10:]) / 10
    assert sum(rewards[-10:]) / 10 > sum(rewards[:10]) / 10 + 0.25

    def modality_accuracy(eval_dir: Path) -> float:
        rows = [json.loads(line) for line in (eval_dir / "predictions.jsonl").read_text().splitlines()]
        rows = [r for r in rows if r["question_type"] == "modality_recognition"]
        return sum(r["correct"] for r in rows) / len(rows)

    assert summary["n"] == before["n"]  # the test split covers every question type; this one is trained
    start, end = modality_accuracy(tmp_path / "eval_before" / "eval"), modality_accuracy(tmp_path / "eval")
    print(f"modality recognition on the test split: {start:.3f} -> {end:.3f}")
    assert start < 0.35 and end > start + 0.2


@pytest.mark.parametrize("algo", ["grpo", "sft"])
def test_training_with_gradient_checkpointing(tmp_path, algo):
    """Qwen2-VL-2B's config turns gradient checkpointing on; both algorithms must train with it."""
    cfg = compose_config(
        FAST + [f"algo={algo}", "model.gradient_checkpointing=true", "++algo.num_generations=4"], tmp_path
    )
    assert train(cfg)["n"] > 0
    assert logged(read_metrics(tmp_path), "train/reward" if algo == "grpo" else "train/loss")


@pytest.mark.slow
def test_the_demo_as_written_meets_its_accuracy_targets(tmp_path):
    """`python run.py` itself (400 steps, ~3 min on 2 cores): modality recognition from chance (<= 35%)
    to >= 80% and overall test accuracy up by >= 25 points, the targets the demo was built to (issue 3)
    and the ones its shorter run keeps (docs/speed.md)."""
    run_py(["logger=csv", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path}"], timeout=1800)
    before = json.loads((tmp_path / "eval_before" / "eval" / "summary.json").read_text())
    after = json.loads((tmp_path / "eval" / "summary.json").read_text())
    rows = read_metrics(tmp_path)
    assert max(int(r["step"]) for r in rows if r.get("train/reward")) == 399  # the 400 steps ran (0-based)
    assert before["by_question_type"]["modality_recognition"] <= 0.35
    assert after["by_question_type"]["modality_recognition"] >= 0.80
    assert after["accuracy"] >= before["accuracy"] + 0.25
