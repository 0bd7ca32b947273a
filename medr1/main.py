"""Dispatch on `mode`: train (then evaluate) or evaluate only."""

from __future__ import annotations

import logging

from omegaconf import DictConfig


def run(cfg: DictConfig) -> float:
    """Run per cfg.mode; returns test accuracy (Hydra sweepers can optimise it)."""
    logging.getLogger("medr1").setLevel(logging.INFO)
    if cfg.mode == "train":
        from medr1.train import train

        return train(cfg)["accuracy"]
    if cfg.mode == "eval":
        from medr1.evaluate import evaluate

        return evaluate(cfg)["accuracy"]
    raise ValueError(f"mode={cfg.mode!r}; choose train or eval")
