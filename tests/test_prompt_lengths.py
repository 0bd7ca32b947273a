"""Prompt lengths are checked when the data is read, in every mode: the meter counts exactly what the
collator builds, and a prompt over algo.max_prompt_length (or holding a control token) is a bad record
that is skipped and counted, or stops the run in one line, before any batch is built."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel
import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from medr1.data.batches import PromptCollator
from medr1.data.lengths import PromptMeter, screen_prompts
from medr1.data.omnimedvqa import OmniMedVQA
from medr1.data.records import BadRecordError, SkipCounter, VQARecord
from medr1.models.checkpoints import resolve_model_path
from medr1.models.loading import load_processor
from tests.helpers.config import REPO, compose_config

LONG_QUESTION = "word " * 6000 + "Which modality is this?"
FAMILIES = ["tiny", "tiny_qwen2_5_vl", "tiny_qwen3_vl", "tiny_llava"]


def processor_of(model: str):
    cfg = compose_config([f"model={model}"])
    return load_processor(cfg.model, resolve_model_path(cfg.model, cfg.paths.cache_dir))


def record(record_id: str, images: tuple[str, ...], question: str = "Which finding?", **changes) -> VQARecord:
    fields = dict(
        id=record_id,
        images=images,
        question=question,
        options={"A": "Normal", "B": "Tumour {x}\nwith a line break", "C": "Cyst"},
        answer="B",
        modality="ct",
        question_type="disease_diagnosis",
        source="test",
    )
    return VQARecord(**(fields | changes))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("images")
    paths = {}
    for name, size in (("small", (56, 56)), ("wide", (300, 90)), ("large", (900, 700))):
        paths[name] = str(folder / f"{name}.png")
        Image.new("RGB", size, (90, 120, 30)).save(paths[name])
    volume = np.random.default_rng(0).normal(size=(120, 90, 9)).astype(np.float32)
    paths["volume"] = str(folder / "volume.nii.gz")
    nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), paths["volume"])
    return paths


@pytest.mark.parametrize("model", FAMILIES)
def test_the_meter_counts_exactly_the_tokens_the_collator_builds(model, images):
    processor = processor_of(model)
    records = [
        record("one", (images["small"],)),
        record("wide", (images["wide"],), question="Is it {Question}? Ünïcode — ✓ <think>"),
        record("two", (images["large"], images["small"])),
        record("volume", (images["volume"],)),
        record("volume+picture", (images["volume"], images["wide"]), question="x " * 300),
    ]
    for settings in ({}, {"resize": 64}, {"image": {"slices": 3}, "max_pixels": 20_000}):
        for prompt in ("think", "medr1_eval_nothink"):
            batch = PromptCollator(processor, prompt, **settings)(records)
            built = batch.model_inputs["attention_mask"].sum(1).tolist()
            measured = PromptMeter(processor, prompt, **settings).lengths(records)
            assert [length.tokens for length in measured] == built, (settings, prompt)
            assert all(0 < length.image_tokens < length.tokens for length in measured)


def test_a_control_token_in_the_text_is_a_bad_record(images):
    meter = PromptMeter(processor_of("tiny"), "think")
    clean = record("clean", (images["small"],))
    injected = [
        record("pad", (images["small"],), question="What is <|image_pad|> here?"),
        record("end", (images["small"],), options={"A": "Normal<|im_end|>", "B": "Tumour"}, answer="A"),
    ]
    counter = SkipCounter("skip")
    assert screen_prompts([clean, *injected], meter, 1024, counter, "test") == [clean]
    assert counter.skipped == {"special token in text": 2}
    with pytest.raises(
        BadRecordError, match=r"record 'pad': special token in text: the question holds '<\|image_pad\|>'"
    ):
        screen_prompts(injected, meter, 1024, SkipCounter("raise"), "test")


def test_under_raise_the_longest_prompt_over_the_limit_is_named_with_the_limit_that_fits_all(images):
    meter = PromptMeter(processor_of("tiny"), "think")
    records = [
        record(f"q{words}", (images["small"],), question="word " * words) for words in (5, 400, 900, 300)
    ]
    lengths = {r.id: n.tokens for r, n in zip(records, meter.lengths(records), strict=True)}
    limit = lengths["q5"] + 1
    with pytest.raises(BadRecordError) as raised:
        screen_prompts(records, meter, limit, SkipCounter("raise"), "test")
    message = str(raised.value)
    assert raised.value.record_id == "q900" and "\n" not in message
    assert f"prompt too long: {lengths['q900']} tokens" in message
    assert f"above algo.max_prompt_length={limit} (3 test prompt(s) are over" in message
    assert f"raise algo.max_prompt_length to >= {lengths['q900']}" in message
    counter = SkipCounter("skip")
    assert [r.id for r in screen_prompts(records, meter, limit, counter, "test")] == ["q5"]
    assert counter.skipped == {"prompt too long": 3}


# --- an OmniMedVQA-format folder with one 6,000-word question ------------------------------------------


@pytest.fixture(scope="module")
def long_question_root(tmp_path_factory) -> tuple[Path, set[str], set[str]]:
    """The synthetic set as an OmniMedVQA folder plus long.json: copies of CT questions whose question is
    6,000 words; returns the folder, the ids of those the split puts in test, and the other test ids."""
    source = Path(instantiate(compose_config(["data.source.size=5"]).data.source).root)
    root = tmp_path_factory.mktemp("long") / "omnimedvqa"
    shutil.copytree(source, root)
    folder = root / "QA_information" / "Open-access"
    items = [item for path in sorted(folder.glob("*.json")) for item in json.loads(path.read_text())]
    ct = [item for item in items if item["modality_type"].startswith("CT")][:6]
    long_items = [dict(item, question_id=f"long_{i}", question=LONG_QUESTION) for i, item in enumerate(ct)]
    (folder / "long.json").write_text(json.dumps(long_items))
    splits = OmniMedVQA(root=root, access=["Open-access"]).load()
    in_test = {r.id for r in splits.test if r.id.startswith("long_")}
    in_train = {r.id for r in splits.train if r.id.startswith("long_")}
    assert in_test and in_train  # the reader alone lets them through to both splits
    return root, in_test, {r.id for r in splits.test} - in_test


def omnimedvqa_overrides(root: Path, policy: str) -> list[str]:
    return [
        "data=omnimedvqa",
        f"data.root={root}",
        "data.access=[Open-access]",
        "data.num_workers=0",
        f"data.on_bad_record={policy}",
        "logger=none",
        "eval.reuse=false",
        "eval.max_new_tokens=4",
        "eval.before_training=false",
    ]


def test_skip_counts_the_long_question_in_every_split_and_evaluation_never_sees_it(
    long_question_root, tmp_path
):
    from medr1.builders import build_datamodule
    from medr1.evaluate import evaluate

    root, in_test, others = long_question_root
    cfg = compose_config(["mode=eval", *omnimedvqa_overrides(root, "skip")], tmp_path)
    datamodule = build_datamodule(cfg, processor_of("tiny"))
    datamodule.setup("fit")
    kept = {r.id for r in datamodule.train_records + datamodule.test_records + datamodule.val_records}
    assert not any(record_id.startswith("long_") for record_id in kept)
    assert datamodule.splits.skipped == 6  # every copy, train and test

    summary = evaluate(cfg)
    predictions = [
        json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    ]
    assert summary["n"] == len(predictions)
    assert {p["id"] for p in predictions} == others  # the test split, the long questions left out


def test_raise_stops_mode_eval_with_one_line_naming_the_record_its_length_and_the_limit(
    long_question_root, tmp_path
):
    root, in_test, _ = long_question_root
    result = subprocess.run(
        [
            sys.executable,
            "run.py",
            "mode=eval",
            *omnimedvqa_overrides(root, "raise"),
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=REPO,
        env=os.environ | {"MEDR1_CACHE": os.environ["MEDR1_CACHE"]},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {root / 'QA_information' / 'Open-access' / 'long.json'}: record 'long_")
    assert last.split("record '")[1].split("'")[0] in in_test  # the test split is read first in mode=eval
    assert "prompt too long:" in last and "above algo.max_prompt_length=1024" in last
    assert "raise algo.max_prompt_length to >= " in last and "data.on_bad_record=skip" in last
    assert not (tmp_path / "eval").exists()  # stopped before any batch


def test_a_training_prompt_over_the_limit_is_a_bad_record_too(images):
    processor = processor_of("tiny")
    meter = PromptMeter(processor, "think")
    long_one = dataclasses.replace(record("long", (images["small"],)), question=LONG_QUESTION)
    with pytest.raises(
        BadRecordError, match="record 'long': prompt too long: .* above algo.max_prompt_length=1024"
    ):
        screen_prompts(
            [record("short", (images["small"],)), long_one], meter, 1024, SkipCounter("raise"), "training"
        )
