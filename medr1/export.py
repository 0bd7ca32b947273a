"""Export a training checkpoint as a standard Hugging Face folder, at any step of a run.

    python -m medr1.export <run dir>/checkpoints/epoch=0-step=200.ckpt <out folder> [--adapters] [--config FILE]

The policy is rebuilt exactly as the run built it (its `.hydra/config.yaml`, found next to the
`checkpoints/` folder, or `--config`), the checkpoint's weights are loaded into it (the frozen base
weights a LoRA checkpoint leaves out come from the rebuilt base, checked by fingerprint), and the
folder is written with the processor: LoRA merged into the weights by default, or with `--adapters`
the PEFT adapters and a reference to the base model. `AutoModelForImageTextToText.from_pretrained`
loads either, and `python run.py mode=eval model.path=<out folder>` evaluates it.

The checkpoint is read with torch.load(weights_only=True): nothing in it can run code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from medr1.cache import write_atomically
from medr1.resume import (
    CheckpointError,
    check_restorable,
    config_differences,
    describe_differences,
    is_medr1_checkpoint,
    read_checkpoint,
    training_config,
)

log = logging.getLogger(__name__)

PREFIX = "model."  # the LightningModule holds the policy as `self.model`


class ExportError(ValueError):
    """A checkpoint or config that cannot be exported as asked; the message is one line."""


def run_config_path(checkpoint: Path) -> Path:
    """Where a run's config is: <run dir>/.hydra/config.yaml, checkpoints being in <run dir>/checkpoints/."""
    return checkpoint.resolve().parent.parent / ".hydra" / "config.yaml"


def load_run_config(checkpoint: Path, config: Path | None) -> DictConfig:
    path = config or run_config_path(checkpoint)
    if not path.is_file():
        if config is not None:
            raise ExportError(f"--config {config} does not exist")
        raise ExportError(
            f"no run config next to {checkpoint} (expected {path}, written by python run.py); pass the "
            "config of the run that wrote it with --config <run dir>/.hydra/config.yaml"
        )
    return OmegaConf.load(path)


def check_config_matches(checkpoint: dict, cfg: DictConfig, config_path: str) -> None:
    """The model and tuning the config builds must be the ones the checkpoint was trained with (a
    --config of another run would build another model, or load adapters into the wrong places)."""
    stored = checkpoint.get("medr1_config")
    if stored is None:
        return  # written before medr1 stored its config: the weight names are still checked
    current = training_config(cfg)
    differences = [k for k in config_differences(stored, current) if k.startswith(("model.", "tuning."))]
    if differences:
        raise ExportError(
            f"the config {config_path} builds another model than the checkpoint's: "
            f"{describe_differences(differences, stored, current)}; "
            "pass the config of the run that wrote the checkpoint with --config"
        )


def export(
    checkpoint_path: str | Path, out: str | Path, *, adapters: bool = False, config: str | Path | None = None
) -> Path:
    """Write the policy of `checkpoint_path` to `out` as a HF folder (see the module docstring)."""
    checkpoint_path, out = Path(checkpoint_path), Path(out)
    if not checkpoint_path.exists():
        raise ExportError(f"{checkpoint_path} does not exist")
    if checkpoint_path.is_dir():
        raise ExportError(
            f"{checkpoint_path} is a sharded checkpoint folder (FSDP or DeepSpeed): consolidate it into one file "
            "first (python -m lightning.pytorch.utilities.consolidate_checkpoint, or for DeepSpeed "
            "lightning.pytorch.utilities.deepspeed.convert_zero_checkpoint_to_fp32_state_dict)"
        )
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not empty; choose a new folder")
    try:
        checkpoint = read_checkpoint(checkpoint_path)  # memory-mapped: the optimiser states are never read
    except CheckpointError as error:
        raise ExportError(str(error)) from None
    if not is_medr1_checkpoint(checkpoint):
        raise ExportError(
            f"{checkpoint_path} is not a medr1 training checkpoint (no policy weights under `model.` and no "
            "medr1 entries); export reads the .ckpt files a medr1 run writes in <run dir>/checkpoints/"
        )
    config_path = Path(config) if config is not None else None
    cfg = load_run_config(checkpoint_path, config_path)
    try:
        check_config_matches(checkpoint, cfg, str(config_path or run_config_path(checkpoint_path)))
    except OmegaConfBaseException as error:  # e.g. an ${oc.env:...} unset in this shell
        raise ExportError(f"cannot resolve the run config: {error}".splitlines()[0]) from None
    if adapters and cfg.tuning.name != "lora":
        raise ExportError(
            f"--adapters needs a LoRA run; this run used tuning={cfg.tuning.name}: export without it"
        )

    policy = rebuild_policy(cfg)
    model = load_policy_weights(policy.model, checkpoint, checkpoint_path).eval()
    if not adapters and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    elif adapters:
        base = Path(policy.path).expanduser()
        # where the adapters' base model is: an absolute folder (the export may be read from elsewhere) or a HF id
        model.peft_config["default"].base_model_name_or_path = (
            str(base.resolve()) if base.exists() else policy.path
        )

    def write(folder: Path) -> None:
        model.save_pretrained(folder)  # safetensors
        policy.processor.save_pretrained(folder)

    write_atomically(out, write, complete=lambda folder: any(folder.glob("*.safetensors")), replace=True)
    log.info("exported step %d of %s to %s", checkpoint["global_step"], checkpoint_path, out)
    return out


def rebuild_policy(cfg: DictConfig):
    """The policy as the run built it for training (its tuning applied), before any step. Gradient
    checkpointing is left off: it changes no weight, and would save `use_cache: false` in the config."""
    from medr1.builders import load_policy

    cfg = cfg.copy()
    cfg.model.gradient_checkpointing = False
    return load_policy(cfg, train=True)


def load_policy_weights(model, checkpoint: dict, path: Path):
    """The checkpoint's policy weights loaded into `model`; the frozen ones an adapters-only checkpoint
    leaves out stay as built, after checking they are the ones it was trained against."""
    from torch import nn

    holder = nn.Module()  # names the policy `model`, as the LightningModule did: the checkpoint's keys match
    holder.model = model
    try:
        check_restorable(
            checkpoint["state_dict"], holder, (checkpoint.get("medr1_frozen") or {}).get("fingerprint"), path
        )
    except CheckpointError as error:
        raise ExportError(str(error)) from None
    holder.load_state_dict(checkpoint["state_dict"], strict=False)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medr1.export",
        description="Export a medr1 training checkpoint as a Hugging Face folder (LoRA merged unless --adapters).",
    )
    parser.add_argument("checkpoint", help="a .ckpt file from <run dir>/checkpoints/")
    parser.add_argument("out", help="the folder to write (must not exist or be empty)")
    parser.add_argument(
        "--adapters",
        action="store_true",
        help="LoRA runs: keep the PEFT adapters and a reference to the base model",
    )
    parser.add_argument(
        "--config", help="the run's config (default: <run dir>/.hydra/config.yaml next to checkpoints/)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = export(args.checkpoint, args.out, adapters=args.adapters, config=args.config)
    except (ExportError, OSError) as error:
        raise SystemExit(f"error: {error}".splitlines()[0]) from None
    print(f"exported to {out}: evaluate it with python run.py mode=eval model.path={out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
