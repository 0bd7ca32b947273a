"""Model config -> the folder or HF id to load: `model.path` (an HF id or a local folder), or the
checkpoint that `model.build` describes, built offline into the cache on first use (random weights,
then the optional warm start into a tiny "instruct" model).

Cache folders are keyed by a hash of the recipe (and, for the warm start, of the warm start's and the
synthetic generator's versions), so a changed recipe or generator is built anew.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medr1.cache import json_hash, write_atomically
from medr1.data import synthetic  # the warm start trains on synthetic images: its version keys the cache
from medr1.models.build import build_random_checkpoint
from medr1.models.warmstart import VERSION as WARMSTART_VERSION
from medr1.models.warmstart import warm_start


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def resolve_model_path(model_cfg: DictConfig, cache_dir: str | Path) -> str:
    """The folder or HF id to load: `model.path`, or the offline-built checkpoint for `model.build`."""
    if model_cfg.get("path"):
        path = str(model_cfg.path)
        folder = Path(path).expanduser()
        # a model folder has a config.json; a PEFT adapters folder (medr1.export --adapters) an adapter_config.json
        if (path.startswith((".", "/", "~")) or folder.exists()) and not any(
            (folder / name).exists() for name in ("config.json", "adapter_config.json")
        ):
            raise FileNotFoundError(
                f"model.path={path!r} is a local path without a config.json; point it at a folder "
                "written by save_pretrained (or a HF id such as Qwen/Qwen2-VL-2B-Instruct)"
            )
        return path
    recipe = _plain(model_cfg.get("build"))
    if not recipe:
        raise ValueError(f"model {model_cfg.get('name')!r} has neither `path` nor `build`; set model.path")
    models_dir = Path(cache_dir).expanduser() / "models"
    base = build_atomically(
        models_dir / f"{model_cfg.name}-base-{recipe_hash(recipe | {'warmstart': None})}",
        lambda folder: build_random_checkpoint(folder, recipe),
    )
    warmstart = recipe.get("warmstart")
    if not warmstart:
        return str(base)
    versions = {"warmstart_version": WARMSTART_VERSION, "synthetic_version": synthetic.GENERATOR_VERSION}
    target = models_dir / f"{model_cfg.name}-instruct-{recipe_hash(recipe | versions)}"
    pixels = {k: recipe[k] for k in ("min_pixels", "max_pixels")}
    return str(
        build_atomically(target, lambda folder: warm_start(base, folder, warmstart | pixels, cache_dir))
    )


def recipe_hash(recipe: dict) -> str:
    """Short stable hash of a build recipe: a changed recipe gets a new cache folder."""
    return json_hash(recipe, 10)


def build_atomically(target: Path, write) -> Path:
    """`target` if it holds a checkpoint, else `write(tmp_folder)` moved to `target`; concurrent
    builders do not collide."""
    if (target / "config.json").exists():
        return target
    return write_atomically(target, write, complete=lambda folder: (folder / "config.json").exists())
