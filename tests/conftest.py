"""Shared fixtures: the real Hydra config composed with tiny/CPU overrides, and the tiny checkpoint.

Built checkpoints and synthetic data are cached in MEDR1_CACHE (default: <repo>/.cache), so the
first test session builds them once (about half a minute) and later sessions reuse them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("MEDR1_CACHE", str(REPO / ".cache"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# fast settings for end-to-end runs: few steps, short completions, small splits
FAST = [
    "logger=csv",
    "trainer.max_steps=3",
    "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false",
    "data.val_size=8",
    "data.batch_size=4",
    "data.source.size=5",
    "algo.num_generations=4",
    "eval.before_training=false",
    "checkpoint.every_n_steps=2",
]


def compose_config(overrides: list[str], run_dir: Path | None = None):
    """The real config tree (conf/) with `overrides`, as run.py would see it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    if run_dir is not None:
        cfg.paths.output_dir = str(run_dir)
    return cfg


@pytest.fixture(scope="session")
def tiny_path() -> str:
    """Folder of the tiny instruct checkpoint (built on first use)."""
    from medr1.models.loading import resolve_model_path

    cfg = compose_config([])
    return resolve_model_path(cfg.model, cfg.paths.cache_dir)


@pytest.fixture(scope="session")
def tiny_base_path() -> str:
    """Folder of the tiny random (not warm-started) checkpoint."""
    from medr1.models.loading import resolve_model_path

    cfg = compose_config(["model.build.warmstart=null"])
    return resolve_model_path(cfg.model, cfg.paths.cache_dir)


@pytest.fixture(scope="session")
def synthetic_splits():
    from hydra.utils import instantiate

    cfg = compose_config(["data.source.size=5"])
    return instantiate(cfg.data.source).load()
