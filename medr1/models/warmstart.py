"""Warm-start a random tiny checkpoint into a tiny "instruct" model: it writes the think/answer
format but answers at chance.

A short SFT pass on synthetic questions, each with every one of its option letters as a target:
the model learns the output format, a uniform letter over the options, and nothing about the
images, so a GRPO demo starts from chance accuracy with a policy that already gets format reward,
like an instruct model would.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path

import torch
from tqdm.auto import tqdm

from medr1.data.batches import PromptCollator
from medr1.data.synthetic import SyntheticMedVQA
from medr1.models.loading import load_processor
from medr1.models.tuning import vision_tower
from medr1.sft.loss import target_nll

log = logging.getLogger(__name__)

VERSION = 6  # part of the cache key: bump when what warm_start writes changes

# One formulaic reasoning line per question type, read off the question (never the image): the
# instruct model then samples near-deterministic text around a random letter, so GRPO's advantage
# lands on the letter instead of on noise in the wording, and the tokens just before the answer say
# what is asked (a generic line taught the tiny model nothing: docs/notes.md).
REASONING = {
    "modality_recognition": "The question asks for the imaging modality.",
    "disease_diagnosis": "The question asks whether there is a lesion.",
    "lesion_grading": "The question asks for the size of the lesion.",
    "anatomy_identification": "The question asks where the lesion is.",
    "biological_attribute": "The question asks how many blue objects there are.",
}
GENERIC_REASONING = "Look at the image and compare it with each option."


def with_every_answer(records):
    """Each record once per option letter, with its question type's reasoning line.

    The letter's training target is then exactly uniform over the record's options: the expected
    loss of a letter drawn at random, without the draw's noise, so GRPO starts from a uniform
    letter prior (the random-draw variants that skewed it are in docs/notes.md).
    """
    return [
        dataclasses.replace(r, answer=letter, reasoning=REASONING.get(r.question_type, GENERIC_REASONING))
        for r in records
        for letter in r.options
    ]


def warm_start(base_folder: Path, out_folder: Path, cfg: dict, cache_dir: str | Path) -> Path:
    """SFT `base_folder` for cfg['steps'] steps of cfg['batch_size'] questions (each once per option letter)."""
    from transformers import AutoModelForImageTextToText

    data = cfg["data"]
    root = (
        Path(cache_dir).expanduser()
        / "data"
        / f"warmstart_n{data['size']}_px{data['image_size']}_seed{data['seed']}"
    )
    splits = SyntheticMedVQA(
        root=str(root),
        size=int(data["size"]),
        image_size=int(data["image_size"]),
        seed=int(data["seed"]),
        shuffle_options=bool(data.get("shuffle_options", False)),
    ).load()
    records = splits.train + splits.test
    processor = load_processor(
        {"min_pixels": cfg["min_pixels"], "max_pixels": cfg["max_pixels"]}, str(base_folder)
    )
    collate = PromptCollator(processor, cfg.get("prompt", "think"), with_targets=True)
    torch.manual_seed(int(cfg.get("seed", 0)))
    model = AutoModelForImageTextToText.from_pretrained(base_folder, dtype=torch.float32)
    model.train()
    # The vision tower stays as initialised: answers that ignore the image carry no signal for it; left
    # trainable it drifts into one large shared image embedding that drowns what tells images apart.
    vision_tower(model).requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=float(cfg["lr"]))
    rng = random.Random(int(cfg.get("seed", 0)))
    batch_size = int(cfg["batch_size"])
    progress = tqdm(range(int(cfg["steps"])), desc="warm-starting the tiny instruct model", unit="step")
    for _ in progress:
        batch = collate(with_every_answer(rng.sample(records, batch_size)))
        loss, _ = target_nll(model, batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.3f}")
    model.save_pretrained(out_folder)
    processor.save_pretrained(out_folder)
    log.info("warm-started instruct checkpoint written to %s (final SFT loss %.3f)", out_folder, loss.item())
    return out_folder
