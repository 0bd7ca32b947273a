"""Shared fixtures: the tiny checkpoints and synthetic splits (helpers the tests import: tests/helpers/).

Built checkpoints and synthetic data are cached in MEDR1_CACHE (default: <repo>/.cache), so the
first test session builds them once (about half a minute) and later sessions reuse them.
"""

from __future__ import annotations

import os

import pytest

from tests.helpers.config import REPO, compose_config

os.environ.setdefault("MEDR1_CACHE", str(REPO / ".cache"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_path() -> str:
    """Folder of the tiny instruct checkpoint (built on first use)."""
    from medr1.models.checkpoints import resolve_model_path

    cfg = compose_config([])
    return resolve_model_path(cfg.model, cfg.paths.cache_dir)


@pytest.fixture(scope="session")
def tiny_base_path() -> str:
    """Folder of the tiny random (not warm-started) checkpoint."""
    from medr1.models.checkpoints import resolve_model_path

    cfg = compose_config(["model.build.warmstart=null"])
    return resolve_model_path(cfg.model, cfg.paths.cache_dir)


@pytest.fixture(scope="session")
def synthetic_splits():
    from hydra.utils import instantiate

    cfg = compose_config(["data.source.size=5"])
    return instantiate(cfg.data.source).load()


@pytest.fixture(scope="session")
def instruct_setup(tiny_path, synthetic_splits):
    """The tiny instruct model in eval mode (it stops its completions), its processor, and three prompts
    of different lengths in one left-padded batch (sampling and scoring tests; none of them trains it)."""
    from medr1.models.loading import load_model, load_processor
    from tests.helpers.batches import padded_batch

    cfg = compose_config([])
    processor = load_processor(cfg.model, tiny_path)
    model = load_model(cfg.model, tiny_path).eval()
    return model, processor, padded_batch(processor, synthetic_splits.train)
