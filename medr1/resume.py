"""What a medr1 Lightning checkpoint holds besides Lightning's own state, and the checks before a run
resumes from one or `medr1.export` reads one.

- Reading: `torch.load(weights_only=True)` only (plain tensors and containers); a file holding any other
  Python object is refused, since unpickling it could run code.
- Writing (`CheckpointExtras`, a callback): the run's training config under `medr1_config`, and, in
  runs with frozen parameters (LoRA, a frozen vision tower), only the trainable ones: the frozen
  weights are the base model's, rebuilt from the config on resume and export, so a LoRA checkpoint
  holds the adapters, not a second copy of the model. A fingerprint of the frozen weights
  (`medr1_frozen`) tells whether the base rebuilt later is the one the run trained on.
- Resuming: a checkpoint of a run whose training config differs is refused naming the keys (unless
  `checkpoint.force_resume=true`); keys that do not change the training trajectory (logging,
  evaluation, paths, checkpointing, the step budget) may differ.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy
from omegaconf import DictConfig, OmegaConf

from medr1.builders import redact_secrets

log = logging.getLogger(__name__)

# Config keys (and everything under them) that never change what the next training step computes:
# what is logged and where, evaluation after training, checkpointing, and the step budget (raising
# trainer.max_steps is how a finished run is extended). Validation is not among them: its data loader
# draws from the global random generator, so validating at other steps changes the sampled completions.
TRAJECTORY_FREE_KEYS = (
    "mode",
    "experiment_name",
    "num_threads",
    "budget",  # the budget's name; what it sets is compared key by key
    "paths",
    "logger",
    "eval",
    "predict",
    "check",
    "checkpoint",
    "callbacks",
    "trainer.max_steps",
    "trainer.max_epochs",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "data.num_workers",
    "data.eval_batch_size",
    "data.max_test_per_modality",
)

FINGERPRINT_ELEMENTS = 4096  # per frozen tensor: enough to tell two checkpoints apart, cheap for a 7B model


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message is one line naming the file and the fix."""


# --- reading -------------------------------------------------------------------------------------


def read_checkpoint(path: str | Path, *, mmap: bool = True) -> dict:
    """The checkpoint at `path`, loaded with weights_only=True on the CPU (memory-mapped: reading its
    metadata does not read a 7B model's weights)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is not a checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path} holds a Python object that is not a tensor or a plain container{what}; medr1 loads "
            "checkpoints with torch.load(weights_only=True) because unpickling anything else can run code: "
            "use a checkpoint written by a medr1 run"
        ) from None
    except (RuntimeError, OSError, EOFError) as error:
        if mmap and "mmap" in str(error):  # a checkpoint in torch's legacy format cannot be mapped
            return read_checkpoint(path, mmap=False)
        raise CheckpointError(
            f"{path} cannot be read as a torch checkpoint: {error}".splitlines()[0]
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict)")
    return checkpoint


def is_medr1_checkpoint(checkpoint: dict) -> bool:
    """Written by a medr1 training run: the policy's weights under `model.` and medr1's own entries."""
    keys = list(checkpoint["state_dict"])
    return (
        bool(keys)
        and all(key.startswith("model.") for key in keys)
        and any(entry in checkpoint for entry in ("medr1_config", "medr1_rng"))
    )


# --- the training config ---------------------------------------------------------------------------


def training_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as {dotted key: value}, without the trajectory-free keys and with secret
    values redacted (the checkpoint must not hold an API key a config interpolates)."""
    container = redact_secrets(OmegaConf.to_container(cfg, resolve=True))
    return {
        key: value
        for key, value in _flatten(container).items()
        if not any(key == free or key.startswith(free + ".") for free in TRAJECTORY_FREE_KEYS)
    }


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat = {}
        for key, inner in value.items():
            flat |= _flatten(inner, f"{prefix}{key}.")
        return flat
    return {prefix[:-1]: value}


# Keys added to the config after medr1 began storing it in checkpoints. An older checkpoint's config lacks
# them; it matches when the current config trains as the code that wrote it did (the feature off).
ADDED_KEYS: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    "algo.dynamic_sampling": lambda current: current.get("algo.dynamic_sampling") is False,
    "algo.max_resample": lambda current: not current.get("algo.dynamic_sampling"),
}


def config_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The keys whose value differs, or that exist on one side only (a key added since the checkpoint
    was written and left as the older code behaved is not a difference: ADDED_KEYS), sorted."""
    missing = object()

    def same(key: str) -> bool:
        if key not in stored and key in current and key in ADDED_KEYS:
            return ADDED_KEYS[key](current)
        return stored.get(key, missing) == current.get(key, missing)

    return sorted(k for k in set(stored) | set(current) if not same(k))


def describe_differences(keys: list[str], stored: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """Every differing key named on one line; the first few with both values."""

    def shown(values: Mapping[str, Any], key: str) -> str:
        return repr(values[key]) if key in values else "unset"

    described = [f"{k} (checkpoint: {shown(stored, k)}, now: {shown(current, k)})" for k in keys[:6]]
    return "; ".join(described) + (f"; also {', '.join(keys[6:])}" if keys[6:] else "")


def check_same_training(checkpoint: dict, cfg: DictConfig, path: str | Path) -> None:
    """Refuse, naming the keys, a checkpoint whose run trained under another config, unless
    checkpoint.force_resume; a checkpoint written before medr1 stored its config is let through."""
    stored = checkpoint.get("medr1_config")
    if stored is None:
        log.warning(
            "%s holds no training config (written by an older medr1): not compared with this one", path
        )
        return
    current = training_config(cfg)
    differences = config_differences(stored, current)
    if not differences:
        return
    shown = describe_differences(differences, stored, current)
    if cfg.checkpoint.get("force_resume"):
        log.warning("resuming %s under a changed training config (checkpoint.force_resume): %s", path, shown)
        return
    raise CheckpointError(
        f"checkpoint {path} was written by a run with a different training config: {shown}; resume with "
        "the checkpoint's values, or set checkpoint.force_resume=true to continue under the new ones"
    )


# --- frozen parameters: left out of checkpoints, rebuilt from the base model ------------------------


def frozen_parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that do not train, under every name the state dict uses (a tied lm_head too)."""
    return {name: p for name, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}


def fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the names and leading elements of `tensors`: equal for the same base weights, and
    different for another checkpoint, dtype or tuning (which freezes other parameters)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        head = tensors[name].detach().reshape(-1)[:FINGERPRINT_ELEMENTS].cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(head.dtype).encode())
        digest.update(head.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_restorable(
    state_dict: Mapping[str, Any], module: torch.nn.Module, stored_fingerprint: str | None, path
) -> set[str]:
    """The parameters of `module` the checkpoint leaves out (its frozen ones, kept as built); raises
    if the checkpoint holds keys `module` lacks, leaves out a trainable parameter, or was written
    against other frozen weights."""
    expected = module.state_dict().keys()
    unexpected = sorted(set(state_dict) - set(expected))
    missing = set(expected) - set(state_dict)
    frozen = frozen_parameters(module)
    not_frozen = sorted(missing - set(frozen))
    if unexpected or not_frozen:
        names = (unexpected or not_frozen)[:3]
        what = (
            "holds weights the model built from the config lacks" if unexpected else "lacks trainable weights"
        )
        raise CheckpointError(
            f"checkpoint {path} {what} ({', '.join(names)}, ...): it belongs to another model or tuning; "
            "use the config of the run that wrote it"
        )
    if missing and stored_fingerprint is not None and stored_fingerprint != fingerprint(frozen):
        raise CheckpointError(
            f"checkpoint {path} holds only the trained weights, and the frozen base weights rebuilt from the "
            "config differ from the ones it was trained on (model.path changed?): point model.path at the "
            "base model of the run that wrote it"
        )
    return missing


def writes_plain_state_dict(strategy) -> bool:
    """Single-device and DDP checkpoints are the module's state dict in one file: medr1 may leave the
    frozen weights out of it. FSDP and DeepSpeed write their own (sharded) formats: left as they are."""
    return isinstance(strategy, SingleDeviceStrategy | DDPStrategy) and not isinstance(
        strategy, DeepSpeedStrategy
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's single-file checkpoint writer, writing each checkpoint to `<name>.partial` and renaming it
    when whole: a run killed while saving leaves the previous `last.ckpt`, never a truncated one that a
    resume would trip over. (FSDP and DeepSpeed write folders with their own writers.)"""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        super().save_checkpoint(checkpoint, partial, storage_options)
        os.replace(partial, path)


class CheckpointExtras(Callback):
    """Adds the training config and the frozen-weight fingerprint to every checkpoint, and leaves the
    frozen parameters out of it (single-device and DDP runs). When Lightning has loaded a checkpoint
    (checkpoint.resume, or a SLURM requeue's own), checks that what it left out is frozen and the same
    base: the run's module loads checkpoints non-strictly for them (train.py)."""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self._frozen: tuple[set[str], str] | None = None  # names and fingerprint: the same all run long

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["medr1_config"] = self.config
        if not writes_plain_state_dict(trainer.strategy):
            return
        if self._frozen is None:
            frozen = frozen_parameters(pl_module)
            self._frozen = set(frozen), fingerprint(frozen)
        names, frozen_fingerprint = self._frozen
        if names:
            state = checkpoint["state_dict"]
            checkpoint["state_dict"] = {k: v for k, v in state.items() if k not in names}
            checkpoint["medr1_frozen"] = {"fingerprint": frozen_fingerprint, "parameters": len(names)}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if not writes_plain_state_dict(trainer.strategy):
            return
        try:
            stored = (checkpoint.get("medr1_frozen") or {}).get("fingerprint")
            check_restorable(checkpoint["state_dict"], pl_module, stored, trainer.ckpt_path)
        except CheckpointError as error:
            raise SystemExit(f"error: {error}") from None
