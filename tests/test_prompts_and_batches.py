"""Prompts (Med-R1's exact templates), batching through the real processor, and training filters."""

from __future__ import annotations

import pytest
import torch

from medr1.data.batches import PromptCollator
from medr1.data.datamodule import VQADataModule, select_training, stratified_subset
from medr1.data.prompts import chat_messages, prompt_text, target_text
from medr1.data.records import BadRecordError, VQARecord
from medr1.models.loading import load_processor
from tests.helpers.config import compose_config

THINK_TAIL = (
    " Your task: 1. Think through the question step by step, enclose your reasoning process in "
    "<think>...</think> tags. 2. Then provide the correct single-letter choice (A, B, C, D,...) inside "
    "<answer>...</answer> tags. 3. No extra information or text outside of these tags."
)
NOTHINK_TAIL = (
    " Your task: 1. Provide the correct single-letter choice (A, B, C, D,...) inside <answer>...</answer> "
    "tags. 2. No extra information or text outside of this tag."
)


def record(**changes) -> VQARecord:
    fields = dict(
        id="r1",
        images=("/nonexistent.png",),
        question="What is shown?",
        options={"A": "CT", "B": "MRI, T2", "C": "X-ray"},
        answer="B",
        modality="mri",
        question_type="modality_recognition",
        source="test",
    )
    return VQARecord(**(fields | changes))


def test_med_r1_templates_exactly():
    assert prompt_text(record(), "think") == "What is shown? A) CT, B) MRI, T2, C) X-ray" + THINK_TAIL
    assert prompt_text(record(), "nothink") == "What is shown? A) CT, B) MRI, T2, C) X-ray" + NOTHINK_TAIL
    with pytest.raises(ValueError, match="Question"):
        prompt_text(record(), "no placeholder here")
    messages = chat_messages(record(images=("a.png", "b.png")), "think")
    assert [c["type"] for c in messages[0]["content"]] == ["image", "image", "text"]


def test_sft_target_uses_reasoning_only_with_the_think_prompt():
    assert (
        target_text(record(), "think") == "<answer> B </answer>"
    )  # no "None" reasoning (Med-R1's SFT defect)
    with_reasoning = record(reasoning="The scan shows T2 contrast.")
    assert (
        target_text(with_reasoning, "think")
        == "<think>The scan shows T2 contrast.</think>\n<answer> B </answer>"
    )
    assert target_text(with_reasoning, "nothink") == "<answer> B </answer>"


@pytest.fixture(scope="module")
def processor(tiny_path):
    return load_processor(compose_config([]).model, tiny_path)


def test_collator_batches_images_prompts_and_masked_targets(processor, synthetic_splits):
    records = synthetic_splits.train[:3]
    batch = PromptCollator(processor, "think", with_targets=True)(records)
    inputs = batch.model_inputs
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    # every prompt carries its image's tokens: (56/14)^2 patches / 2x2 merge = 4
    assert ((inputs["input_ids"] == image_pad).sum(1) == 4).all()
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]] * 3
    assert (inputs["attention_mask"][:, -1] == 1).all()  # left padding: prompts end together
    decoded = processor.tokenizer.decode(inputs["input_ids"][0][inputs["attention_mask"][0].bool()])
    assert decoded.endswith("<|im_start|>assistant\n") and THINK_TAIL.strip() in decoded
    # targets: the answer then <|im_end|>, right-padded, nothing of the prompt
    end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for i, r in enumerate(records):
        target = batch.target_ids[i][batch.target_mask[i].bool()].tolist()
        assert target[-1] == end
        assert processor.tokenizer.decode(target[:-1]) == f"<answer> {r.answer} </answer>"
    assert batch.fields()["solution"] == [r.answer for r in records]


def test_unreadable_image_names_the_record(processor, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(BadRecordError, match="r1.*cannot be read"):
        PromptCollator(processor, "think")([record(images=(str(broken),))])


def test_too_long_prompt_is_an_error_not_a_truncation(processor, synthetic_splits):
    with pytest.raises(BadRecordError, match="max_prompt_length=10"):
        PromptCollator(processor, "think", max_prompt_length=10)(synthetic_splits.train[:1])


def test_training_filters_select_train_only_and_evaluation_covers_everything(processor, synthetic_splits):
    from hydra.utils import instantiate

    source = instantiate(compose_config(["data.source.size=5"]).data.source)
    datamodule = VQADataModule(
        source=source,
        processor=processor,
        prompt="think",
        train_modality="ct",
        train_question_type="lesion_grading",
        val_size=10,
    )
    datamodule.setup()
    assert datamodule.train_records and all(
        r.modality == "ct" and r.question_type == "lesion_grading" for r in datamodule.train_records
    )
    assert {r.modality for r in datamodule.test_records} == {
        "ct",
        "mri",
        "xray",
        "ultrasound",
        "dermoscopy",
        "fundus",
        "oct",
        "microscopy",
    }
    assert len({r.question_type for r in datamodule.test_records}) == 5
    assert len(datamodule.val_records) == 10
    assert not {r.id for r in datamodule.train_records} & {r.id for r in datamodule.test_records}
    with pytest.raises(ValueError, match="unknown"):
        select_training(synthetic_splits.train, "brain", "all")


def test_stratified_subset_spreads_over_groups(synthetic_splits):
    groups = {(r.modality, r.question_type) for r in synthetic_splits.test}
    assert len(synthetic_splits.test) > len(groups)
    subset = stratified_subset(synthetic_splits.test, len(groups), seed=1)
    assert {(r.modality, r.question_type) for r in subset} == groups  # one from each group
    assert stratified_subset(synthetic_splits.test, len(groups), seed=1) == subset


def test_prompt_batch_moves_tensors_only(processor, synthetic_splits):
    batch = PromptCollator(processor, "think")(synthetic_splits.train[:2])
    moved = batch.to(torch.device("cpu"))
    assert moved.records is batch.records
    assert torch.equal(moved.model_inputs["input_ids"], batch.model_inputs["input_ids"])


# --------------------------------------------------------------------------------------------------
# The training sampler: one seeded order per epoch, sharded across ranks, resumable mid-epoch
# --------------------------------------------------------------------------------------------------


def test_epoch_sampler_shards_each_epoch_across_ranks_and_resumes_mid_epoch():
    from torch.utils.data import DistributedSampler

    from medr1.data.datamodule import EpochSampler

    def sampler(rank=0, world=1, epoch=0, done=0):
        return EpochSampler(11, 2, seed=7, position=lambda: (epoch, done), num_replicas=world, rank=rank)

    whole = list(sampler())
    assert sorted(whole) == list(range(11)) and len(sampler()) == 11
    assert list(sampler(epoch=1)) != whole and sorted(sampler(epoch=1)) == list(range(11))
    rank0, rank1 = list(sampler(rank=0, world=2)), list(sampler(rank=1, world=2))
    assert len(rank0) == len(rank1) == len(sampler(world=2)) == 6  # 11 padded to 12 by one repeat
    assert rank0 == whole[0::2] and rank1 == whole[1::2] + whole[:1]
    # resuming after 2 batches of 2: each rank continues its own share
    assert list(sampler(rank=1, world=2, done=2)) == rank1[4:]
    assert list(sampler(done=3)) == whole[6:]
    assert isinstance(sampler(), DistributedSampler)  # so Lightning keeps it under DDP instead of wrapping it
