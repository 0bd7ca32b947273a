"""Cluster sweeps through the submitit launcher, for real on this machine (`submitit_local`): a 2-job
sweep, a job pre-empted by submitit's signal (checkpoint, requeue, resume), and the SLURM preset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.config import REPO, TINY_RUN, compose_config, run_py

TINY = [*TINY_RUN, "eval.probes=[]"]


def environment() -> dict:
    # the job process unpickles the test's callback: it must find the tests package
    return os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_a_two_job_sweep_through_submitit_local_evaluates_both_runs(tmp_path):
    sweep = tmp_path / "sweep"
    run_py(
        ["-m", "hydra/launcher=submitit_local", "modality=ct,mri", f"hydra.sweep.dir={sweep}"]
        + TINY
        + ["trainer.max_steps=2"],
        env=environment(),
    )
    for job, modality in (("0", "ct"), ("1", "mri")):
        summary = json.loads((sweep / job / "eval" / "summary.json").read_text())
        assert summary["n"] > 0 and 0.0 <= summary["accuracy"] <= 1.0
        assert f"modality={modality}" in (sweep / job / ".hydra" / "overrides.yaml").read_text()
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2  # two submitit jobs, each finished


def task_process(sweep: Path, deadline: float) -> psutil.Process:
    """The running job's task: submitit_local names each job after its controller's pid, and the task
    (the process that trains) is the controller's child."""
    while time.time() < deadline:
        for folder in (sweep / ".submitit").glob("[0-9]*"):
            if not folder.name.isdigit():  # submitit's pickles pass through the folder too, e.g. 3d39...pkl
                continue
            try:
                children = psutil.Process(int(folder.name)).children()
            except psutil.NoSuchProcess:
                continue
            if children:
                return children[0]
        time.sleep(0.2)
    raise AssertionError("the submitit job never started")


def test_a_preempted_job_saves_requeues_and_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGUSR2 (what SLURM sends before the time limit or at pre-emption) mid-training: the step is
    finished, last.ckpt saved, the job requeued by submitit, and the requeued job resumes from it and
    ends with the same weights and answers as a run that was never interrupted."""
    steps = 8
    marker = tmp_path / "step"
    common = TINY + [
        f"trainer.max_steps={steps}",
        f"+callbacks.marker={{_target_:tests.helpers.step_marker.StepMarker,path:'{marker}',pause:0.4}}",
    ]
    sweep = tmp_path / "sweep"
    command = [sys.executable, "run.py", "-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}"]
    sweep_run = subprocess.Popen(
        command + common,
        cwd=REPO,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 300
        task = task_process(sweep, deadline)
        while not (marker.exists() and marker.read_text() and int(marker.read_text()) >= 2):
            assert time.time() < deadline and sweep_run.poll() is None, "training never reached step 2"
            time.sleep(0.05)
        task.send_signal(signal.SIGUSR2)
        output, _ = sweep_run.communicate(timeout=300)
    finally:
        sweep_run.kill()
    assert sweep_run.returncode == 0, output[-3000:]
    log = "\n".join(p.read_text() for p in sorted((sweep / ".submitit").glob("*/*_log.*")))
    assert "received SIGUSR2" in log and "requeueing" in log, log[-3000:]
    saved_at = int(log.split("at step ")[1].split(";")[0])
    assert 2 <= saved_at < steps
    assert "Requeued job" in log
    assert "Restoring states from the checkpoint path" in log and "last.ckpt" in log
    run = sweep / "0"
    assert json.loads((run / "eval" / "summary.json").read_text())["n"] > 0

    # the same run, never interrupted
    straight = tmp_path / "straight"
    run_py(common + [f"hydra.run.dir={straight}"], env=environment())
    resumed = load_file(run / "checkpoints" / "final" / "model.safetensors")
    uninterrupted = load_file(straight / "checkpoints" / "final" / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    assert (run / "eval" / "predictions.jsonl").read_text() == (
        straight / "eval" / "predictions.jsonl"
    ).read_text()


def test_the_slurm_preset_asks_for_the_trainer_s_nodes_and_gpus():
    """`hydra/launcher=slurm trainer=ddp trainer.num_nodes=2 trainer.devices=8`: 2 nodes of 8 GPUs and 8
    tasks each (one per GPU, as Lightning's SLURM environment expects)."""
    from hydra import compose, initialize_config_dir

    from medr1.resolvers import register

    register()
    overrides = ["hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=2", "trainer.devices=8"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[*overrides, "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 8, 8)
    assert launcher.partition == "gpu" and launcher.max_num_timeout > 0
    assert compose_config(["trainer=ddp"]).trainer.devices == "auto"


def test_the_slurm_preset_refuses_trainer_devices_auto_in_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "run.py",
            "-m",
            "hydra/launcher=slurm",
            "trainer=ddp",
            f"hydra.sweep.dir={tmp_path}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: trainer.devices='auto', but the cluster launcher needs a number here (the GPUs and tasks per "
        "node of each job): set it, e.g. trainer.devices=8"
    ]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "configured, under, expected", [(None, False, None), (None, True, "last"), ("x.ckpt", True, "x.ckpt")]
)
def test_a_submitit_job_resumes_from_its_last_checkpoint_unless_told_otherwise(
    monkeypatch, configured, under, expected
):
    from medr1.cluster import resume_mode

    if under:
        monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    else:
        monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert resume_mode(configured) == expected


def test_lightning_reads_the_ranks_of_a_slurm_job_the_preset_asks_for(tmp_path, monkeypatch):
    """The Trainer medr1 builds for trainer=ddp, inside a SLURM job of 2 nodes x 2 tasks (what
    `hydra/launcher=slurm trainer.num_nodes=2 trainer.devices=2` submits), takes its world size and
    rank from SLURM (on CPU here: the same environment detection a GPU job goes through)."""
    import lightning.fabric.utilities.rank_zero as fabric_rank_zero
    import lightning.pytorch.utilities.rank_zero as pytorch_rank_zero
    import lightning_utilities.core.rank_zero as utilities_rank_zero
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from medr1.builders import build_trainer

    # the Trainer sets this process's global rank (3 here) for every rank_zero_only: put it back afterwards
    for module in (fabric_rank_zero, pytorch_rank_zero, utilities_rank_zero):
        monkeypatch.setattr(module.rank_zero_only, "rank", module.rank_zero_only.rank)

    slurm = {
        "SLURM_JOB_ID": "1234",
        "SLURM_JOB_NAME": "run",
        "SLURM_NTASKS": "4",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_PROCID": "3",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
        "SLURM_NODELIST": "node[1-2]",
    }
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    overrides = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32", "trainer.devices=2"]
    cfg = compose_config([*overrides, "trainer.num_nodes=2", "logger=none"])
    trainer = build_trainer(cfg, tmp_path, [], [])
    assert isinstance(trainer.strategy.cluster_environment, SLURMEnvironment)
    assert (trainer.world_size, trainer.global_rank, trainer.local_rank, trainer.node_rank) == (4, 3, 1, 1)
