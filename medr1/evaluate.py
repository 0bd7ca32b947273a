"""`mode=eval`: answer every test question with the configured model (zero-shot or a checkpoint).

A sweep repeats the base-model row once per swept value (`mode=eval,train` x `modality=...`); with
`eval.reuse=true` an evaluation whose inputs are identical (model files, data, prompt, generation
settings, eval.parser) is computed once and copied into the other run directories.
`eval.parser` (robust | medr1 | medvlm_r1) chooses how the answer letter is read; the summary also
holds the accuracy under every parser (accuracy_by_parser).
`eval.calibration` adds each answer's option-letter probabilities and the ECE (medr1.calibration);
`eval.probes` runs the shortcut probes after the main evaluation (medr1.probes). Both are part of
what an identical evaluation means for `eval.reuse`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from medr1.answers import get_parser
from medr1.builders import build_datamodule, load_policy, run_dir_of
from medr1.cache import json_hash
from medr1.distributed import device_of
from medr1.grading import evaluate_batches, format_summary, write_eval_outputs
from medr1.models.checkpoints import resolve_model_path
from medr1.precision import autocast_for
from medr1.probes import check_probes, run_probes, test_split_of
from medr1.rollout import Sampler, greedy

log = logging.getLogger(__name__)


def parser_of(cfg: DictConfig) -> str:
    """eval.parser, checked; "robust" for configs saved before the key existed."""
    parser = str(cfg.eval.get("parser") or "robust")
    get_parser(parser)
    return parser


def probes_of(cfg: DictConfig) -> list[str]:
    """eval.probes, checked (an unknown name fails here, before any model loads); none for configs
    saved before the key existed."""
    return check_probes(cfg.eval.get("probes") or [])


def calibration_of(cfg: DictConfig) -> bool:
    """eval.calibration; off for configs saved before the key existed."""
    return bool(cfg.eval.get("calibration", False))


def evaluation_key(cfg: DictConfig, model_path: str) -> str:
    """Hash of everything an evaluation's result depends on (the parser too: it is in the files)."""
    files = {}
    folder = Path(model_path)
    if folder.is_dir():  # a local folder can change in place: key on its files' sizes and times
        files = {
            p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()
        }
    inputs = {
        "model": model_path,
        "files": files,
        "pixels": [cfg.model.min_pixels, cfg.model.max_pixels],
        "dtype": cfg.model.dtype,
        "data": OmegaConf.to_container(cfg.data.source, resolve=True),
        "max_test_per_modality": cfg.data.get("max_test_per_modality"),
        "test_seed": cfg.data.get("test_seed", 42),
        "prompt": OmegaConf.to_container(cfg.prompt, resolve=True),
        "eval_prompt": cfg.eval.get("prompt"),  # a template name or string (interpolation resolved)
        "resize": cfg.data.get("resize"),
        "image": OmegaConf.to_container(cfg.image, resolve=True) if cfg.get("image") is not None else None,
        "parser": parser_of(cfg),
        "max_new_tokens": cfg.eval.max_new_tokens,
        "probes": sorted(probes_of(cfg)),  # their order changes nothing
        "calibration": calibration_of(cfg),
    }  # not the seed: evaluation is greedy, so a seed sweep's base rows are one evaluation
    return json_hash(inputs, 16)


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate cfg.model on the whole test split, answers read by eval.parser; writes <run dir>/eval/
    and returns the summary."""
    parser = parser_of(cfg)  # an unknown parser or probe, or a missing GPU, fails before the model loads
    probes, calibration = probes_of(cfg), calibration_of(cfg)
    device = device_of(cfg.trainer)
    L.seed_everything(int(cfg.seed))
    run_dir = run_dir_of(cfg)
    stored = None
    if cfg.eval.get("reuse"):
        stored = (
            Path(cfg.paths.cache_dir).expanduser()
            / "evaluations"
            / evaluation_key(cfg, resolve_model_path(cfg.model, cfg.paths.cache_dir))
        )
        if (stored / "summary.json").exists():
            shutil.copytree(stored, run_dir / "eval", dirs_exist_ok=True)
            summary = json.loads((stored / "summary.json").read_text())
            print(
                format_summary(summary, f"{cfg.model.name} (identical evaluation reused from {stored})"),
                flush=True,
            )
            return summary

    policy = load_policy(cfg, train=False)
    policy.model.to(device)
    datamodule = build_datamodule(cfg, policy.processor)
    datamodule.setup("test")
    sampler = Sampler.for_model(policy.model, policy.processor)
    sampling = greedy(int(cfg.eval.max_new_tokens))
    with autocast_for(
        str(cfg.trainer.precision), device
    ):  # as the Trainer computes: fp32 weights, bf16 compute
        predictions, summary = evaluate_batches(
            policy.model,
            datamodule.test_dataloader(),
            sampler,
            sampling,
            parser=parser,
            calibration=calibration,
        )
        probe_rows, summary = run_probes(
            probes,
            model=policy.model,
            sampler=sampler,
            sampling=sampling,
            parser=parser,
            **test_split_of(datamodule),
            predictions=predictions,
            summary=summary,
            calibration=calibration,
        )
    title = f"{cfg.model.name} ({policy.path})"
    eval_dir = write_eval_outputs(run_dir, predictions, summary, title, probe_rows)
    if stored is not None:
        stored.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(eval_dir, stored, dirs_exist_ok=True)
    return summary
