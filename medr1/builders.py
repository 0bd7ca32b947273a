"""Build the run's objects from the resolved Hydra config, in one place: model, processor, data,
reward, LightningModule, loggers and Trainer. `train` and `evaluate` both call these."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from medr1.data.datamodule import VQADataModule
from medr1.models.checkpoints import resolve_model_path
from medr1.models.families import family_of
from medr1.models.loading import load_model, load_processor
from medr1.models.tuning import apply_tuning, trainable_summary
from medr1.rl.module import GRPOModule
from medr1.rl.rewards import build_reward
from medr1.sft.module import SFTModule

log = logging.getLogger(__name__)


@dataclass
class Policy:
    model: object
    processor: object
    path: str


def load_policy(cfg: DictConfig, *, train: bool) -> Policy:
    """Policy and processor from model.path (HF id / folder) or the offline-built checkpoint."""
    path = resolve_model_path(cfg.model, cfg.paths.cache_dir)
    log.info("loading model %s from %s", cfg.model.name, path)
    processor = load_processor(cfg.model, path)
    model = load_model(cfg.model, path)
    log.info("model family %s", family_of(model).describe())
    if train:
        model = apply_tuning(model, cfg.tuning).train()
        log.info("tuning=%s: %s", cfg.tuning.name, trainable_summary(model))
    else:
        model.eval()
    return Policy(model, processor, path)


def build_datamodule(cfg: DictConfig, processor, *, with_targets: bool = False) -> VQADataModule:
    return VQADataModule(
        source=instantiate(cfg.data.source),
        processor=processor,
        prompt=cfg.prompt,  # the prompt group: template and option layout (medr1.data.prompts.PromptFormat)
        eval_prompt=cfg.eval.get("prompt"),
        resize=cfg.data.get("resize"),
        image=cfg.get("image"),  # DICOM/NIfTI window, slice axis and count (medr1.data.images.ImageSettings)
        max_pixels=cfg.model.get("max_pixels"),  # a volume's slices share one image's pixel budget
        train_modality=cfg.modality.name,
        train_question_type=cfg.question_type.name,
        batch_size=int(cfg.data.batch_size),
        eval_batch_size=int(cfg.data.eval_batch_size),
        num_workers=int(cfg.data.num_workers),
        max_train_samples=cfg.data.get("max_train_samples"),
        max_test_per_modality=cfg.data.get("max_test_per_modality"),
        val_size=cfg.data.get("val_size"),
        with_targets=with_targets,
        max_prompt_length=cfg.algo.get("max_prompt_length"),
        seed=int(cfg.seed),
        test_seed=int(cfg.data.get("test_seed", 42)),
    )


def build_module(cfg: DictConfig, policy, datamodule):
    common = dict(
        model=policy.model,
        processor=policy.processor,
        optimizer=instantiate(cfg.algo.optimizer),
        scheduler=cfg.algo.scheduler,
        eval_max_new_tokens=int(cfg.eval.max_new_tokens),
        eval_parser=str(cfg.eval.parser),
        eval_calibration=bool(cfg.eval.get("calibration", False)),
        eval_probes=list(cfg.eval.get("probes") or []),  # run after the final test evaluation (train.py)
    )
    if cfg.algo.name == "grpo":
        reference = GRPOModule.reference_for(policy.model, cfg.algo, cfg.tuning.name)
        return GRPOModule(
            reward=build_reward(cfg.reward),
            algo=cfg.algo,
            reference_model=reference,
            sample_table_every=int(cfg.logger.get("sample_table_every", 0) or 0),
            **common,
        )
    if cfg.algo.name == "sft":
        return SFTModule(**common)
    raise ValueError(f"algo={cfg.algo.name!r}; choose grpo or sft")


def wandb_mode(offline: bool | None = None) -> str:
    """W&B's mode for training runs and the report: `offline` when set (logger.offline), else an
    explicit WANDB_MODE, else online when the user has credentials (WANDB_API_KEY or a ~/.netrc entry
    for api.wandb.ai), else offline."""
    if offline is not None:
        return "offline" if offline else "online"
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    netrc = Path("~/.netrc").expanduser()
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (
        netrc.exists() and "api.wandb.ai" in netrc.read_text()
    )
    return "online" if has_key else "offline"


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    """CSV always (run_dir/metrics.csv); W&B too with logger=wandb."""
    from lightning.pytorch.loggers import CSVLogger

    loggers = [] if cfg.logger.name == "none" else [CSVLogger(save_dir=str(run_dir), name="", version="")]
    if cfg.logger.name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        mode = wandb_mode(cfg.logger.get("offline"))
        tags = [
            f"algo:{cfg.algo.name}",
            f"modality:{cfg.modality.name}",
            f"question_type:{cfg.question_type.name}",
            f"reward:{cfg.reward.name}",
            f"prompt:{cfg.prompt.name}",
            f"model:{cfg.model.name}",
        ]
        loggers.append(
            WandbLogger(
                project=cfg.logger.project,
                entity=cfg.logger.get("entity"),
                group=cfg.experiment_name,
                tags=tags,
                save_dir=str(run_dir),
                mode=mode,
                job_type=cfg.mode,
                name=f"{cfg.experiment_name}-{run_dir.name}" if run_dir.name.isdigit() else run_dir.name,
            )
        )
        loggers[-1].log_hyperparams(redact_secrets(OmegaConf.to_container(cfg, resolve=True)))
    return loggers


SECRET_NAME_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD")


def redact_secrets(value, secrets: set[str] | None = None):
    """`value` (a resolved config) with every string that holds the value of a secret environment
    variable (a name containing KEY, TOKEN, SECRET or PASSWORD, e.g. WANDB_API_KEY, HF_TOKEN) replaced by
    "<redacted>": a config that interpolates one (`${oc.env:HF_TOKEN}`) never sends it to W&B."""
    if secrets is None:
        secrets = {
            v
            for k, v in os.environ.items()
            if len(v) >= 8 and any(part in k.upper() for part in SECRET_NAME_PARTS)
        }
    if isinstance(value, dict):
        return {k: redact_secrets(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_secrets(v, secrets) for v in value]
    if isinstance(value, str) and any(secret in value for secret in secrets):
        return "<redacted>"
    return value


def run_dir_of(cfg: DictConfig) -> Path:
    """Hydra's output folder for this run (`hydra.run.dir` / the sweep subfolder)."""
    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # called outside @hydra.main (tests with compose): use paths.output_dir
        return Path(cfg.paths.output_dir)


def build_trainer(cfg: DictConfig, run_dir: Path, loggers: list, callbacks: list) -> L.Trainer:
    return instantiate(
        cfg.trainer, logger=loggers or False, callbacks=callbacks, default_root_dir=str(run_dir)
    )
