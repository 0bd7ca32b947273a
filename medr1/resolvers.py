"""Config resolvers medr1's YAML uses; run.py registers them before Hydra composes the config."""

from __future__ import annotations

from omegaconf import OmegaConf

from medr1.errors import ConfigError


def count(value, key: str) -> int:
    """`${count:${trainer.devices},trainer.devices}`: the value as a whole number of at least 1, for a
    setting that needs one (a SLURM job's GPUs and tasks per node); "auto" and the like are refused."""
    if isinstance(value, bool) or not str(value).isdigit() or int(value) < 1:
        raise ConfigError(
            f"{key}={value!r}, but the cluster launcher needs a number here (the GPUs and tasks per node of "
            f"each job): set it, e.g. {key}=8"
        )
    return int(value)


def register() -> None:
    if not OmegaConf.has_resolver("count"):
        OmegaConf.register_new_resolver("count", count)
