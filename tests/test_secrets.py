"""A run never writes the user's API keys or tokens: a fake key planted in the environment (W&B,
Hugging Face), and interpolated into the config, is searched for, byte by byte, in every file the run wrote (Hydra's config copy and log,
metrics, W&B's offline run, checkpoints, the final model, evaluation) and in what it printed."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers.config import REPO

PLANTED = "medr1-planted-secret-5c1d0e9f7a3b2c4d6e8f"


def test_a_planted_key_appears_in_no_file_the_run_writes(tmp_path):
    env = dict(os.environ)
    for name in ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        env[name] = PLANTED
    env["WANDB_MODE"] = "offline"  # a key would otherwise make the W&B logger go online (no network here)
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "run.py",
            "logger=wandb",
            "trainer.max_steps=2",
            "checkpoint.every_n_steps=1",
            "trainer.val_check_interval=1",
            "data.val_size=4",
            "data.source.size=5",
            "data.max_test_per_modality=1",
            "trainer.enable_progress_bar=false",
            "+notes=${oc.env:HF_TOKEN}",  # a config that interpolates a secret: redacted before W&B sees it
            f"hydra.run.dir={run_dir}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    files = [path for path in run_dir.rglob("*") if path.is_file()]
    written = {path.relative_to(run_dir).parts[0] for path in files}
    assert {".hydra", "wandb", "checkpoints", "eval", "metrics.csv"} <= written  # the search covers them
    assert any(path.suffix == ".ckpt" for path in files)
    leaks = [str(path) for path in files if PLANTED.encode() in path.read_bytes()]
    assert not leaks
    assert PLANTED not in result.stdout + result.stderr
