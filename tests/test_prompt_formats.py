"""The prompt group's option layout, MedVLM-R1's and Med-R1's evaluation templates (exact strings),
eval.prompt, data.resize, and PromptBatch under Lightning's precision conversion."""

from __future__ import annotations

import pytest
import torch

from medr1.builders import build_datamodule
from medr1.data.batches import PromptBatch, PromptCollator, check_resize
from medr1.data.prompts import (
    MEDR1_EVAL_NOTHINK,
    MEDR1_EVAL_THINK,
    MEDR1_EVAL_ZERO_SHOT,
    MEDVLM_R1,
    NAMED_TEMPLATES,
    TEMPLATES,
    PromptFormat,
    prompt_text,
    target_text,
)
from medr1.models.loading import load_processor
from tests.helpers.config import compose_config
from tests.test_prompts_and_batches import NOTHINK_TAIL, THINK_TAIL, record

QUESTION = "What is shown? A) CT, B) MRI, T2, C) X-ray"  # the default layout


def prompt_group(*overrides: str):
    return PromptFormat.from_config(compose_config(list(overrides)).prompt)


def test_default_prompt_groups_render_exactly_as_before():
    assert prompt_group("prompt=think") == PromptFormat("think") == PromptFormat()
    assert prompt_group("prompt=nothink") == PromptFormat("nothink")
    assert prompt_text(record(), prompt_group("prompt=think")) == QUESTION + THINK_TAIL
    assert prompt_text(record(), prompt_group("prompt=nothink")) == QUESTION + NOTHINK_TAIL
    assert set(TEMPLATES) == {"think", "nothink"}  # the tiny tokenizer is trained on these: unchanged


def test_med_r1_released_option_layout_from_the_command_line():
    med_r1 = prompt_group("prompt=think", "prompt.options.format='{letter}){text}'")
    assert prompt_text(record(), med_r1) == "What is shown? A)CT, B)MRI, T2, C)X-ray" + THINK_TAIL


def test_medvlm_r1_template_and_option_layout_exactly():
    # grpo.py:164-170 of JZPeterPan/MedVLM-R1 (DATASET=Huatuo), as Python renders the triple-quoted string
    assert MEDVLM_R1 == (
        "\n        {Question} \n        Your task: \n        1. Think through the question step by step, enclose "
        "your reasoning process in <think>...</think> tags. \n        2. Then provide the correct single-letter "
        "choice (A, B, C, D,...) inside <answer>...</answer> tags.\n        3. No extra information or text "
        "outside of these tags.\n        "
    )
    medvlm = prompt_group("prompt=medvlm_r1")
    assert medvlm == PromptFormat("medvlm_r1", "\n", "{letter}) {text}", "\n")
    # grpo.py:263-264: question + "\n" + "\n".join(f"{L}) {opt}")
    assert prompt_text(record(), medvlm) == MEDVLM_R1.format(
        Question="What is shown?\nA) CT\nB) MRI, T2\nC) X-ray"
    )
    with_reasoning = record(reasoning="T2 contrast.")
    assert target_text(with_reasoning, medvlm) == "<think>T2 contrast.</think>\n<answer> B </answer>"


def test_medr1_evaluation_templates_exactly():
    # Yuxiang-Lai117/Med-R1 src/eval_vqa/test_qwen2vl_vqa.py:43, _nothink.py:44, _zero_shot.py:43
    assert MEDR1_EVAL_THINK == (
        "{Question} Think through the question step by step in <think>...</think> tags. Then provide the correct "
        "single-letter choice (A, B, C, D,...) inside <answer>...</answer> tags."
    )
    assert MEDR1_EVAL_NOTHINK == (
        "{Question} Provide the correct single-letter choice (A, B, C, D,...) inside <answer>...</answer> tags."
    )
    assert MEDR1_EVAL_ZERO_SHOT == "{Question} Provide the correct single-letter choice (A, B, C, D,...)."
    assert {"medr1_eval_think", "medr1_eval_nothink", "medr1_eval_zero_shot", "medvlm_r1"} <= set(
        NAMED_TEMPLATES
    )
    assert (
        prompt_text(record(), "medr1_eval_zero_shot")
        == QUESTION + " Provide the correct single-letter choice (A, B, C, D,...)."
    )


def test_bad_prompt_settings_are_errors_naming_the_key():
    with pytest.raises(ValueError, match=r"prompt.options.format=.*\{text\}"):
        PromptFormat(option_format="{letter})")
    with pytest.raises(ValueError, match="prompt.options.format"):
        PromptFormat(option_format="{letter}) {text} {other}")
    with pytest.raises(ValueError, match="unknown keys.*seperator"):
        PromptFormat.from_config({"template": "think", "options": {"seperator": "; "}})
    with pytest.raises(ValueError, match="prompt.template='no placeholder'"):
        PromptFormat.from_config({"template": "no placeholder"})
    with pytest.raises(ValueError, match="prompt.template=.*other than"):
        PromptFormat("{Question} {oops}")
    with pytest.raises(ValueError, match="eval.prompt='medr1_eval'"):
        PromptFormat().with_template("medr1_eval")


@pytest.fixture(scope="module")
def processor(tiny_path):
    return load_processor(compose_config([]).model, tiny_path)


def user_turn(processor, batch) -> str:
    ids = batch.model_inputs["input_ids"][0][batch.model_inputs["attention_mask"][0].bool()]
    return processor.tokenizer.decode(ids)


def test_evaluation_uses_eval_prompt_with_the_training_option_layout(processor):
    cfg = compose_config(
        [
            "data.source.size=5",
            "data.val_size=2",
            "data.eval_batch_size=2",
            "prompt=medvlm_r1",
            "eval.prompt=medr1_eval_nothink",
        ]
    )
    datamodule = build_datamodule(cfg, processor)
    datamodule.setup()
    assert datamodule.train_collator.prompt == PromptFormat("medvlm_r1", "\n", "{letter}) {text}", "\n")
    assert datamodule.eval_collator.prompt == PromptFormat(
        "medr1_eval_nothink", "\n", "{letter}) {text}", "\n"
    )
    for loader in (datamodule.val_dataloader(), datamodule.test_dataloader()):
        batch = next(iter(loader))
        expected = prompt_text(batch.records[0], datamodule.eval_collator.prompt)
        assert expected.startswith(batch.records[0].question + "\nA) ") and expected in user_turn(
            processor, batch
        )
    batch = next(iter(datamodule.train_dataloader()))
    assert "Your task: \n        1. Think" in user_turn(processor, batch)
    # eval.prompt: null = the training prompt
    same = build_datamodule(compose_config(["data.source.size=5"]), processor)
    assert same.eval_collator.prompt == same.train_collator.prompt == PromptFormat()


def test_collator_accepts_a_prompt_group_or_a_template_name(processor, synthetic_splits):
    """The warm start passes a bare template name (model.build.warmstart.prompt)."""
    records = synthetic_splits.train[:1]
    by_name = PromptCollator(processor, "think")(records)
    by_group = PromptCollator(processor, compose_config([]).prompt)(records)
    assert torch.equal(by_name.model_inputs["input_ids"], by_group.model_inputs["input_ids"])


def test_resize_reaches_the_processor_as_med_r1s_196_image_tokens(processor):
    """Med-R1's 384x384 images become 392x392 under Qwen2-VL's smart_resize (max_pixels 401408):
    a 28x28 patch grid, 784 patches / (2x2 merge) = 196 image tokens, in every split."""
    cfg = compose_config(
        [
            "data.source.size=5",
            "data.val_size=2",
            "data.eval_batch_size=2",
            "data.batch_size=2",
            "data.resize=384",
        ]
    )
    assert cfg.model.max_pixels == 401408 and cfg.data.source.image_size == 56
    datamodule = build_datamodule(cfg, processor)
    datamodule.setup()
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for loader in (datamodule.train_dataloader(), datamodule.val_dataloader(), datamodule.test_dataloader()):
        batch = next(iter(loader))
        assert batch.model_inputs["image_grid_thw"].tolist() == [[1, 28, 28]] * 2
        assert ((batch.model_inputs["input_ids"] == image_pad).sum(1) == 196).all()
    plain = build_datamodule(compose_config(["data.source.size=5"]), processor)  # data.resize: null
    assert plain.eval_collator(datamodule.test_records[:1]).model_inputs["image_grid_thw"].tolist() == [
        [1, 4, 4]
    ]


@pytest.mark.parametrize("size", [0, -384, 384.0, "384", True])
def test_resize_must_be_a_positive_int(size):
    with pytest.raises(ValueError, match="data.resize="):
        check_resize(size)
    assert check_resize(None) is None and check_resize(384) == 384


def test_prompt_batch_survives_lightning_bf16_conversion_with_records_intact(processor, synthetic_splits):
    from lightning.pytorch.plugins.precision import HalfPrecision
    from lightning_utilities import apply_to_collection

    batch = PromptCollator(processor, "think", with_targets=True)(synthetic_splits.train[:2])
    to_bf16 = lambda t: t.to(torch.bfloat16) if t.is_floating_point() else t  # noqa: E731
    for converted in (
        apply_to_collection(batch, torch.Tensor, to_bf16),
        HalfPrecision("bf16-true").convert_input(batch),
    ):
        assert isinstance(converted, PromptBatch) and converted is not batch
        assert converted.records is batch.records  # the passenger, untouched
        assert converted.model_inputs["pixel_values"].dtype == torch.bfloat16
        assert converted.model_inputs["input_ids"].dtype == torch.long
        assert torch.equal(converted.target_ids, batch.target_ids)
    assert batch.model_inputs["pixel_values"].dtype == torch.float32  # the original is left as it was
