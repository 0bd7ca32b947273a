"""Dispatch on `mode`: train (then evaluate), evaluate only, predict, or check (pre-flight).

Errors in the user's input are medr1.errors' to report: run.py prints them as one line (exit status 2).
"""

from __future__ import annotations

import logging
import warnings

import lightning  # noqa: F401  (creates Lightning's loggers and handlers before quiet_console adjusts them)
from lightning_utilities.core import rank_zero
from omegaconf import DictConfig

from medr1.errors import ConfigError

# Library chatter that says nothing about the user's run: Lightning's note that checkpoints under
# manual optimisation hold the post-step state (what resuming needs), its CSV logger finding
# Hydra's .hydra/ folder in the run dir, and deprecations inside dependencies.
QUIET = [
    ".*manual optimization and every_n_train_steps.*",
    ".*Experiment logs directory .* exists and is not empty.*",
    ".*treespec.*",
    ".*does not have many workers.*",
    ".*Passing `min_pixels` and `max_pixels`.*",
    ".*The dirpath has changed.*",  # resuming into a new run folder: its checkpoints go there, as meant
    ".*is not resumable.*",  # medr1's EpochSampler resumes exactly (checkpointed position and RNG)
]


# Lightning's loggers: each has its own console handler and also propagates to the root logger.
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


class DropAdvertisingTips(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing litlogger / litmodels" lines: they say nothing about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def quiet_console() -> None:
    """Each message once on the console, and no advertising. Under Hydra the root logger has a handler
    that prints Lightning's lines (and writes them to the run's log file), so Lightning's own console
    handlers, which would print each line a second time, are removed."""
    rank_zero_names = [f"{name}.utilities.rank_zero" for name in LIGHTNING_LOGGERS]
    for logger in {rank_zero.log, *map(logging.getLogger, rank_zero_names)}:  # where rank_zero_info logs
        if not any(isinstance(f, DropAdvertisingTips) for f in logger.filters):
            logger.addFilter(DropAdvertisingTips())
    if not logging.getLogger().handlers:
        return  # no Hydra logging (e.g. train() called directly): Lightning's handlers are the only ones
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
            logger.removeHandler(handler)
        logger.propagate = True


def run(cfg: DictConfig) -> float:
    """Run per cfg.mode; returns test accuracy (Hydra sweepers can optimise it)."""
    for pattern in QUIET:
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("medr1").setLevel(logging.INFO)
    quiet_console()
    if cfg.mode == "train":
        from medr1.train import train

        return train(cfg)["accuracy"]
    if cfg.mode == "eval":
        from medr1.evaluate import evaluate

        return evaluate(cfg)["accuracy"]
    if cfg.mode == "predict":
        from medr1.predict import predict

        predict(cfg)
        return float("nan")
    if cfg.mode == "check":
        from medr1.check import check

        check(cfg)
        return float("nan")
    raise ConfigError(f"mode={cfg.mode!r} is unknown; choose train, eval, predict or check")
