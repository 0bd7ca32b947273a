"""Dispatch on `mode`: train (then evaluate) or evaluate only."""

from __future__ import annotations

import logging
import warnings

from omegaconf import DictConfig

# Library chatter that says nothing about the user's run: Lightning's note that checkpoints under
# manual optimisation hold the post-step state (what resuming needs), its CSV logger finding
# Hydra's .hydra/ folder in the run dir, and deprecations inside dependencies.
QUIET = [
    ".*manual optimization and every_n_train_steps.*",
    ".*Experiment logs directory .* exists and is not empty.*",
    ".*treespec.*",
    ".*does not have many workers.*",
    ".*Passing `min_pixels` and `max_pixels`.*",
]


def run(cfg: DictConfig) -> float:
    """Run per cfg.mode; returns test accuracy (Hydra sweepers can optimise it)."""
    for pattern in QUIET:
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("medr1").setLevel(logging.INFO)
    if cfg.mode == "train":
        from medr1.train import train

        return train(cfg)["accuracy"]
    if cfg.mode == "eval":
        from medr1.evaluate import evaluate

        return evaluate(cfg)["accuracy"]
    raise ValueError(f"mode={cfg.mode!r}; choose train or eval")
