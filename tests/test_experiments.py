"""Every experiment file runs, scaled down and otherwise as written: the tiny model on the CPU for two
optimiser steps, on data folders in the papers' released layouts (written from the synthetic set), with
the experiment's own data reader, prompt, option layout, image resize, reward, parser, global batch and
micro-batching. A run of each sweep's training arm, and one base-model evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medr1.main import run
from tests.helpers.config import REPO, compose_config
from tests.released_formats import MEDVLM_TEST_FILE, write_medr1_splits, write_medvlm_r1_folder

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))

# What "scaled down" changes: the model, the device and the budget. Nothing else.
SCALED_DOWN = [
    "model=tiny",
    "trainer=cpu",
    "trainer.max_steps=2",
    "trainer.val_check_interval=100",
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "eval.before_training=false",
    "checkpoint.every_n_steps=100",
    "data.num_workers=0",
    "data.val_size=4",
    "algo.max_completion_length=16",
    "++algo.num_generations=4",
]


@pytest.fixture(scope="module")
def released(tmp_path_factory, synthetic_splits) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("released")
    medr1_root = write_medr1_splits(synthetic_splits, folder / "med_r1")
    medvlm_root, _ = write_medvlm_r1_folder(synthetic_splits, folder / "medvlm_r1")
    return {"medr1_splits": medr1_root, "medvlm_r1": medvlm_root}


def experiment_overrides(name: str, released: dict[str, Path]) -> list[str]:
    cfg = compose_config([f"experiment={name}"])
    data = [] if cfg.data.name == "synthetic" else [f"data.root={released[cfg.data.name]}"]
    return [f"experiment={name}", *data, *SCALED_DOWN]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_file_composes_for_the_real_model(name):
    cfg = compose_config([f"experiment={name}"])
    assert cfg.experiment_name == name
    if name != "demo":
        assert cfg.model.name in ("qwen2_vl_2b",) and cfg.trainer.precision == "bf16-mixed"


ARMS = [
    ("med_r1", ["modality=ct"]),
    ("med_r1_cross_modality", ["modality=mri"]),
    ("med_r1_cross_task", ["question_type=modality_recognition"]),
    ("sft_vs_rl", ["algo=grpo"]),
    ("sft_vs_rl", ["algo=sft"]),
    ("think_vs_nothink", ["prompt=think"]),
    ("think_vs_nothink", ["prompt=nothink"]),
    ("medvlm_r1", []),
]


@pytest.mark.parametrize(("name", "arm"), ARMS, ids=[f"{n}-{'-'.join(a) or 'train'}" for n, a in ARMS])
def test_experiment_trains_scaled_down_as_written(tmp_path, released, name, arm):
    cfg = compose_config(experiment_overrides(name, released) + ["mode=train", *arm], tmp_path)
    assert cfg.algo.name == "sft" or cfg.algo.micro_batch_size == 1  # several micro-batches per update
    accuracy = run(cfg)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["accuracy"] == accuracy
    assert summary["parser"] == cfg.eval.parser
    assert summary["n"] == len((tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()) > 0
    assert (tmp_path / "checkpoints" / "final" / "config.json").exists()


def test_paper_settings_reach_the_run(released):
    medr1 = compose_config(experiment_overrides("med_r1_cross_modality", released))
    assert medr1.data.resize == 384 and medr1.data.global_batch_size == 4
    assert medr1.prompt.options.format == "{letter}){text}" and medr1.eval.parser == "medr1"
    assert medr1.eval.prompt == "medr1_eval_think" and medr1.reward.name == "medr1"
    assert medr1.algo.scheduler.name == "linear" and list(medr1.algo.optimizer.betas) == [0.9, 0.999]
    assert medr1.algo.top_k == 50
    nothink = compose_config(experiment_overrides("think_vs_nothink", released) + ["prompt=nothink"])
    assert nothink.reward.name == "medr1_nothink" and nothink.eval.prompt == "medr1_eval_nothink"
    medvlm = compose_config(experiment_overrides("medvlm_r1", released))
    assert medvlm.eval.parser == "medvlm_r1" and medvlm.prompt.name == "medvlm_r1"
    assert medvlm.data.test_file == MEDVLM_TEST_FILE


def test_base_model_row_evaluates_the_released_medvlm_r1_test_file(tmp_path, released):
    cfg = compose_config(
        experiment_overrides("medvlm_r1", released) + ["mode=eval", "eval.reuse=false"], tmp_path
    )
    run(cfg)
    predictions = [
        json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    ]
    test_items = json.loads((released["medvlm_r1"] / MEDVLM_TEST_FILE).read_text())
    assert len(predictions) == len(test_items)
    assert {p["modality"] for p in predictions} == {"mri", "ct", "xray"}


def test_global_batch_size_is_split_over_the_ranks():
    from omegaconf import OmegaConf

    from medr1.train import per_rank_batch_size

    paper = OmegaConf.create({"batch_size": 16, "global_batch_size": 4})
    assert [per_rank_batch_size(paper, world) for world in (1, 2, 4)] == [4, 2, 1]
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        per_rank_batch_size(paper, 3)
    assert per_rank_batch_size(OmegaConf.create({"batch_size": 16, "global_batch_size": None}), 2) == 16
