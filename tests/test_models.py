"""Offline checkpoints load through the same HF code as Qwen2-VL-2B; tuning modes set what trains."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from medr1.models.build import SPECIAL_TOKENS
from medr1.models.checkpoints import resolve_model_path
from medr1.models.tuning import apply_tuning
from tests.helpers.config import compose_config


def test_tiny_checkpoint_is_a_qwen2_vl_folder(tiny_path):
    processor = AutoProcessor.from_pretrained(tiny_path)
    model = AutoModelForImageTextToText.from_pretrained(tiny_path)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2VLProcessor"
    vocab = processor.tokenizer.get_vocab()
    assert all(token in vocab for token in SPECIAL_TOKENS)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text.endswith(
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


def test_build_recipe_sets_the_language_model_init_scale():
    """model.build.text.initializer_range reaches the LM's weights; the vision tower keeps 0.02."""
    from medr1.models.build import build_model, build_tokenizer

    tokenizer = build_tokenizer(400)
    text = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        initializer_range=0.1,
    )
    vision = dict(
        depth=1,
        embed_dim=32,
        num_heads=2,
        mlp_ratio=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    model = build_model(tokenizer, text=text, vision=vision, seed=0)
    language = model.model.language_model.layers[0].self_attn.q_proj.weight
    assert abs(language.std().item() - 0.1) < 0.01
    assert abs(model.model.visual.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.003


def test_bench_checkpoint_has_qwen2_vl_2b_proportions_scaled_down(tmp_path):
    cfg = compose_config(["model=bench", f"paths.cache_dir={tmp_path}"])
    path = resolve_model_path(cfg.model, cfg.paths.cache_dir)
    assert path.startswith(str(tmp_path))  # built into the configured cache
    model = AutoModelForImageTextToText.from_pretrained(path)
    text, vision = model.config.text_config, model.config.vision_config
    assert (
        text.hidden_size,
        text.num_hidden_layers,
        text.num_attention_heads,
        text.num_key_value_heads,
        text.intermediate_size,
    ) == (256, 6, 4, 2, 1536)
    assert (vision.depth, vision.embed_dim, vision.num_heads, vision.mlp_ratio) == (8, 192, 4, 4)
    processor = AutoProcessor.from_pretrained(path)
    assert processor.image_processor.size["longest_edge"] == 401408
    batch = processor(
        text=["<|vision_start|><|image_pad|><|vision_end|>x"],
        images=[Image.new("RGB", (392, 392))],
        return_tensors="pt",
    )
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((batch["input_ids"] == image_pad).sum()) == 196
    # a second call reuses the folder instead of building again
    assert resolve_model_path(cfg.model, cfg.paths.cache_dir) == path


def test_local_path_without_config_is_a_clear_error(tmp_path):
    cfg = compose_config([f"model.path={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model_path(cfg.model, cfg.paths.cache_dir)


def test_pickle_only_weights_are_refused_naming_the_fix(tmp_path, tiny_base_path):
    """A folder with pytorch_model.bin and no safetensors: refused before anything is unpickled; the same
    weights as safetensors load."""
    from medr1.models.loading import load_model

    cfg = compose_config([f"model.path={tmp_path}"])
    shutil.copy(Path(tiny_base_path) / "config.json", tmp_path)
    model = load_model(cfg.model, tiny_base_path)
    state = model.state_dict()
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle weights only .*pytorch_model.bin.*save_pretrained"):
        load_model(cfg.model, str(tmp_path))
    model.save_pretrained(tmp_path)  # the fix the message names: model.safetensors
    loaded = load_model(cfg.model, str(tmp_path)).state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)


def test_hf_id_is_passed_through_untouched():
    cfg = compose_config(["model=qwen2_vl_2b"])
    assert resolve_model_path(cfg.model, cfg.paths.cache_dir) == "Qwen/Qwen2-VL-2B-Instruct"
    assert compose_config(["model=qwen2_5_vl_3b"]).model.path == "Qwen/Qwen2.5-VL-3B-Instruct"


def _trainable(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_full_tuning_with_and_without_frozen_vision(tiny_path):
    model = AutoModelForImageTextToText.from_pretrained(tiny_path)
    all_names = {name for name, _ in model.named_parameters()}
    assert _trainable(apply_tuning(model, compose_config(["tuning=full"]).tuning)) == all_names
    frozen = _trainable(
        apply_tuning(model, compose_config(["tuning=full", "tuning.freeze_vision=true"]).tuning)
    )
    assert frozen == {n for n in all_names if ".visual." not in n}


def test_lora_adapts_language_model_only_unless_asked(tiny_path):
    lora = apply_tuning(
        AutoModelForImageTextToText.from_pretrained(tiny_path), compose_config(["tuning=lora"]).tuning
    )
    trainable = _trainable(lora)
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("visual" in n for n in trainable)
    assert any("q_proj" in n for n in trainable) and any("down_proj" in n for n in trainable)
    with_vision = apply_tuning(
        AutoModelForImageTextToText.from_pretrained(tiny_path),
        compose_config(["tuning=lora", "tuning.adapt_vision=true"]).tuning,
    )
    assert any("visual" in n and "lora_" in n for n in _trainable(with_vision))
    # adapters start at zero: the adapted model equals the base model, so the GRPO reference is free
    base = AutoModelForImageTextToText.from_pretrained(tiny_path)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(lora(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-6)


def test_warm_start_targets_every_option_letter_once_and_reasons_from_the_question_type():
    from medr1.data.records import VQARecord
    from medr1.models.warmstart import GENERIC_REASONING, REASONING, with_every_answer

    record = VQARecord(
        id="q1",
        images=("/x.png",),
        question="Which imaging modality is this?",
        options={"A": "CT", "B": "MRI", "C": "X-ray"},
        answer="B",
        modality="ct",
        question_type="modality_recognition",
        source="synthetic",
    )
    other = VQARecord(
        **{**record.__dict__, "id": "q2", "question_type": "other", "options": {"A": "Yes", "B": "No"}}
    )
    copies = with_every_answer([record, other])
    # each letter of each record exactly once: the letter's target is uniform over the options,
    # so there is nothing per record or per image to memorise
    assert [(c.id, c.answer) for c in copies] == [
        ("q1", "A"),
        ("q1", "B"),
        ("q1", "C"),
        ("q2", "A"),
        ("q2", "B"),
    ]
    assert [c.reasoning for c in copies] == [REASONING["modality_recognition"]] * 3 + [GENERIC_REASONING] * 2
    assert record.answer == "B" and record.reasoning is None  # the inputs are left as they were


def test_instruct_model_samples_every_option_letter_about_equally(tiny_path):
    """The tiny instruct model answers at chance: on 4-option modality questions each letter is
    sampled about a quarter of the time (a skewed prior is what GRPO cannot get out of)."""
    from collections import Counter

    from medr1.answers import extract_choice
    from medr1.builders import build_datamodule, load_policy
    from medr1.rollout import Sampler, SamplingConfig

    cfg = compose_config(["question_type=modality_recognition", "data.batch_size=16"])
    torch.manual_seed(0)
    policy = load_policy(cfg, train=False)
    datamodule = build_datamodule(cfg, policy.processor)
    datamodule.setup("fit")
    sampler = Sampler.for_model(policy.model, policy.processor)
    sampling = SamplingConfig(max_new_tokens=40, do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
    letters = Counter()
    for index, batch in enumerate(datamodule.train_dataloader()):
        if index == 2:
            break
        _, _, texts = sampler.complete(policy.model, batch, sampling, 8)
        letters.update(extract_choice(text, batch.records[i // 8].options) for i, text in enumerate(texts))
    total = sum(letters.values())  # 2 x 16 prompts x 8 samples
    assert letters[None] < 0.05 * total, letters  # the format holds
    assert all(0.15 < letters[letter] / total < 0.35 for letter in "ABCD"), letters


def test_instruct_model_is_rebuilt_when_the_synthetic_images_change(monkeypatch, tmp_path):
    """The warm start trains on synthetic images: a new generator version must not reuse the old model."""
    import medr1.data.synthetic as synthetic
    import medr1.models.checkpoints as checkpoints

    monkeypatch.setattr(checkpoints, "build_atomically", lambda target, build: target)  # names only, no build
    cfg = compose_config(["model=tiny", f"paths.cache_dir={tmp_path}"])
    current = resolve_model_path(cfg.model, tmp_path)
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    changed = resolve_model_path(cfg.model, tmp_path)
    assert "instruct" in current and current != changed
    assert resolve_model_path(cfg.model.copy(), tmp_path) == changed  # and stable for the same versions
