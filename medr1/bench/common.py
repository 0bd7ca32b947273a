"""What both sides of the benchmark share: the settings, the data folder, the bench reward, the step
summary and the "did it train" check (the phase timer, FLOP counting and the matmul peak are
medr1.profiling's, shared with `mode=check`).

medr1 and TRL each run in a child process of their own (medr1.bench.worker), so that each peak RSS is
its own; the parent writes the data folder and the settings both read.
"""

from __future__ import annotations

import json
import resource
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
QUESTION = "Which imaging modality is this?"
OPTIONS = ("CT", "MRI", "X-ray", "Ultrasound")
RECORDS = 10  # written to the data folder; the 80/20 split keeps 8 for training, enough for any step count


@dataclass
class BenchSettings:
    """One benchmark configuration: what both frameworks run (issue 14: 2 prompts x G=8, 128 tokens)."""

    data_root: str  # OmniMedVQA-format folder written by write_data_folder
    model: str = "bench"  # conf/model/<name>.yaml: the checkpoint both sides load
    prompts: int = 2  # B: prompts per step
    generations: int = 8  # G: completions per prompt
    completion_tokens: int = 128  # max completion length
    image_size: int = 392  # side of the square images (392 -> 196 image tokens on the bench model)
    warmup: int = 1  # steps run but not timed
    steps: int = 3  # timed steps
    threads: int = 2  # torch CPU threads on both sides
    lr: float = 1.0e-6  # AdamW's; betas, eps and weight decay are conf/algo/grpo.yaml's
    beta: float = 0.04
    seed: int = 42
    count_flops: bool = True  # one extra, untimed step under FlopCounterMode

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps + int(self.count_flops)

    @property
    def flop_step(self) -> int | None:
        """Index (0-based) of the step run under FlopCounterMode: the last one, after the timed ones."""
        return self.total_steps - 1 if self.count_flops else None

    @property
    def max_pixels(self) -> int:
        """The processor's pixel budget: the model's (401408, Med-R1's), raised so a larger image of the
        sweep keeps all its tokens (784x784 -> 784 image tokens) instead of being shrunk."""
        return max(401408, self.image_size * self.image_size)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> BenchSettings:
        return cls(**json.loads(Path(path).read_text()))


def medr1_overrides(settings: BenchSettings) -> list[str]:
    """The Hydra overrides that make medr1's own config the benchmark's settings; TRL's GRPOConfig is
    set from the same composed config (medr1.bench.trl_side), so one place holds every value."""
    return [
        "~experiment",  # no demo / CPU budget: conf/algo/grpo.yaml's GRPO defaults
        f"model={settings.model}",
        f"model.max_pixels={settings.max_pixels}",
        "data=omnimedvqa",
        f"data.root={settings.data_root}",
        "data.access=[Open-access]",
        f"data.batch_size={settings.prompts}",
        "data.num_workers=0",
        "tuning=full",
        "trainer=cpu",
        f"trainer.max_steps={settings.total_steps}",
        "trainer.enable_progress_bar=false",
        "+trainer.enable_checkpointing=false",
        "+trainer.limit_val_batches=0",
        "logger=none",
        f"algo.num_generations={settings.generations}",
        f"algo.max_completion_length={settings.completion_tokens}",
        f"algo.beta={settings.beta}",
        f"algo.optimizer.lr={settings.lr}",
        # random weights never write the answer format, so medr1's reward alone is the same for every
        # completion: no advantage, no gradient, nothing trains. A reward that varies with the text
        # gives both frameworks the same non-zero learning signal.
        "+reward.functions.variety={_target_:medr1.bench.common.character_variety_reward,_partial_:true}",
        "+reward.weights.variety=1.0",
        f"num_threads={settings.threads}",
        f"seed={settings.seed}",
    ]


def compose_bench_config(settings: BenchSettings):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=medr1_overrides(settings))


def character_variety_reward(completions: list[str], **fields) -> list[float]:
    """Share of distinct characters in each completion: a reward that differs between random
    completions, so group advantages are non-zero and both frameworks really update the weights."""
    return [len(set(text)) / max(len(text), 1) for text in completions]


# --- the data folder: the same records for both sides --------------------------------------------


def write_data_folder(root: Path, image_size: int, records: int = RECORDS, seed: int = 0) -> Path:
    """An OmniMedVQA-format folder of `records` questions, each a random-noise image of `image_size`
    squared and the same question and options, so every prompt has the same tokens: both frameworks
    read these files (medr1 through its OmniMedVQA reader, TRL through the same records)."""
    from PIL import Image

    root = Path(root)
    images = root / "Images" / "bench"
    images.mkdir(parents=True, exist_ok=True)
    (root / "QA_information" / "Open-access").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = []
    for i in range(records):
        pixels = rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i}.png")
        items.append(
            {
                "dataset": "bench",
                "question_id": f"bench_{i:03d}",
                "question_type": "Modality Recognition",
                "question": QUESTION,
                "gt_answer": OPTIONS[0],
                "image_path": f"Images/bench/{i}.png",
                "modality_type": "CT(Computed Tomography)",
                **{f"option_{letter}": text for letter, text in zip("ABCD", OPTIONS, strict=True)},
            }
        )
    (root / "QA_information" / "Open-access" / "bench.json").write_text(json.dumps(items, indent=1))
    return root


def summarise(steps: list[dict], settings: BenchSettings, flops: int | None) -> dict:
    """Steady-state figures over the timed steps (of one or several rounds): the median step, whose
    phases are reported, so a step slowed by another process on a shared machine moves nothing;
    throughput from that step's time. The mean is kept beside it."""
    if not steps:
        raise ValueError("no timed step: set steps >= 1")
    ordered = sorted(steps, key=lambda s: s["step_s"])
    typical = ordered[(len(ordered) - 1) // 2]  # the (lower) median step
    samples = settings.prompts * settings.generations
    summary = {
        "timed_steps": len(steps),
        "step_s": typical["step_s"],
        "step_s_mean": sum(s["step_s"] for s in steps) / len(steps),
        "step_s_median": statistics.median(s["step_s"] for s in steps),
        "step_s_min": ordered[0]["step_s"],
        "samples_per_s": samples / typical["step_s"],
        "completion_tokens_per_s": typical.get("completion_tokens", 0) / typical["step_s"],
        "completion_tokens_per_step": typical.get("completion_tokens", 0.0),
        "phases_s": {
            phase: typical.get(phase, 0.0) for phase in ("rollout", "reference", "policy", "optimizer")
        },
        "prefill_s": {k: v for k, v in typical.items() if k.endswith("_prefill")},
    }
    summary["phases_s"]["other"] = summary["step_s"] - sum(summary["phases_s"].values())
    summary["flops_per_step"] = flops
    summary["flop_per_s"] = flops / summary["step_s"] if flops else None
    return summary


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def weight_change(initial: dict[str, torch.Tensor], model) -> dict:
    """How far the weights moved from `initial`: the largest absolute change, the relative L2 change
    and how many parameter tensors changed at all."""
    moved, largest, diff_sq, base_sq = 0, 0.0, 0.0, 0.0
    for name, param in model.named_parameters():
        before = initial[name]
        delta = (param.detach().float() - before.float()).abs()
        largest = max(largest, float(delta.max()))
        diff_sq += float((delta**2).sum())
        base_sq += float((before.float() ** 2).sum())
        moved += bool(delta.max() > 0)
    return {
        "max_abs_change": largest,
        "relative_l2_change": (diff_sq / max(base_sq, 1e-30)) ** 0.5,
        "tensors_changed": moved,
        "tensors": len(initial),
    }


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}
