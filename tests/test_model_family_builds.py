"""Tiny Qwen2.5-VL, Qwen3-VL and LLaVA checkpoints, built offline from `model.build.family`, load
through medr1's loading path (the one real models take) and run a prompt batch end to end; the
real-model configs name HF checkpoints with their pixel budgets."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from medr1.data.batches import PromptCollator
from medr1.models.build import build_random_checkpoint, mrope_section
from medr1.models.checkpoints import resolve_model_path
from medr1.models.families_build import qwen3_vl_mrope_section
from medr1.models.loading import load_model, load_processor
from tests.helpers.config import compose_config

# config -> (model class, processor class, how the chat template renders an image, image tokens
# per 56x56 synthetic image)
FAMILIES = {
    "tiny_qwen2_5_vl": (
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen2_5_VLProcessor",
        "<|vision_start|><|image_pad|><|vision_end|>",
        4,  # 56x56 px = 2x2 merged tokens of 28x28 px
    ),
    "tiny_qwen3_vl": (
        "Qwen3VLForConditionalGeneration",
        "Qwen3VLProcessor",
        "<|vision_start|><|image_pad|><|vision_end|>",
        4,  # rounded to 64x64 px = 2x2 merged tokens of 32x32 px
    ),
    "tiny_llava": (
        "LlavaForConditionalGeneration",
        "LlavaProcessor",
        "<image>\n",
        16,
    ),  # 4x4 patches of 14 px
}
# real-model config -> (HF id, min_pixels, max_pixels)
REAL_MODELS = {
    "qwen2_vl_7b": ("Qwen/Qwen2-VL-7B-Instruct", 3136, 401408),
    "qwen2_5_vl_3b": ("Qwen/Qwen2.5-VL-3B-Instruct", 3136, 401408),
    "qwen2_5_vl_7b": ("Qwen/Qwen2.5-VL-7B-Instruct", 3136, 401408),
    "qwen3_vl_2b": ("Qwen/Qwen3-VL-2B-Instruct", 65536, 401408),
    "qwen3_vl_4b": ("Qwen/Qwen3-VL-4B-Instruct", 65536, 401408),
    "qwen3_vl_8b": ("Qwen/Qwen3-VL-8B-Instruct", 65536, 401408),
    "qwen3_vl_32b": ("Qwen/Qwen3-VL-32B-Instruct", 65536, 401408),
}


@dataclass
class Built:
    config_name: str
    model_cfg: object
    path: str
    processor: object
    model: object

    @property
    def expected(self):
        return FAMILIES[self.config_name]


@pytest.fixture(scope="module", params=list(FAMILIES))
def built(request) -> Built:
    """A family's random checkpoint (built into the test cache on first use), loaded as run.py loads it."""
    cfg = compose_config([f"model={request.param}", "model.build.warmstart=null"])
    path = resolve_model_path(cfg.model, cfg.paths.cache_dir)
    return Built(
        request.param, cfg.model, path, load_processor(cfg.model, path), load_model(cfg.model, path).eval()
    )


@pytest.fixture(scope="module")
def two_records(synthetic_splits):
    """Two synthetic records whose prompts differ in length, so the batch is left-padded."""
    first = synthetic_splits.train[0]
    other = next(r for r in synthetic_splits.train if len(r.question) != len(first.question))
    return [first, other]


def image_feature_counts(model, inputs: dict) -> list[int]:
    """How many feature vectors the vision tower (+ merger/projector) gives each image."""
    inner = model.model
    if "image_grid_thw" in inputs:  # Qwen families
        features = inner.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    else:  # LLaVA
        features = inner.get_image_features(
            inputs["pixel_values"],
            vision_feature_layer=model.config.vision_feature_layer,
            vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        )
    return [len(f) for f in features.pooler_output]


# --- the folder -----------------------------------------------------------------------------


def test_folder_loads_as_the_family_with_medr1s_tokens(built):
    model_class, processor_class, _, _ = built.expected
    assert type(built.model).__name__ == model_class
    assert type(built.processor).__name__ == processor_class
    assert type(AutoModelForImageTextToText.from_pretrained(built.path)).__name__ == model_class
    assert type(AutoProcessor.from_pretrained(built.path)).__name__ == processor_class
    tokenizer = built.processor.tokenizer
    im_end, endoftext = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert built.model.generation_config.eos_token_id == [im_end, endoftext]
    assert built.model.generation_config.pad_token_id == endoftext
    assert built.model.config.image_token_id == built.processor.image_token_id
    assert built.model.get_input_embeddings().num_embeddings == len(tokenizer)
    # tiny: tied embeddings, under a million parameters, the recipe's LM init scale (0.1)
    assert built.model.lm_head.weight.data_ptr() == built.model.get_input_embeddings().weight.data_ptr()
    assert 500_000 < sum(p.numel() for p in built.model.parameters()) < 1_000_000
    q_proj = built.model.model.language_model.layers[0].self_attn.q_proj.weight
    assert abs(q_proj.std().item() - 0.1) < 0.01


def test_chat_template_renders_the_familys_placeholder_in_qwen_turns(built):
    _, _, placeholder, _ = built.expected
    text = built.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{placeholder}Q?<|im_end|>\n<|im_start|>assistant\n"
    )


# --- a prompt batch through the model -------------------------------------------------------


def test_prompt_batch_forward_has_one_placeholder_per_image_feature(built, two_records):
    batch = PromptCollator(built.processor, "think")(two_records)
    inputs = batch.model_inputs
    lengths = inputs["attention_mask"].sum(1)
    assert lengths[0] != lengths[1] and (inputs["attention_mask"][:, 0] == 0).any()  # left padding
    placeholders = (inputs["input_ids"] == built.model.config.image_token_id).sum(1).tolist()
    with torch.no_grad():
        features = image_feature_counts(built.model, inputs)
        logits = built.model(**inputs).logits
    tokens_per_image = built.expected[3]
    assert placeholders == features == [tokens_per_image, tokens_per_image]
    assert logits.shape == (*inputs["input_ids"].shape, len(built.processor.tokenizer))
    assert torch.isfinite(logits).all()
    # the image changes the next-token distribution: another image, other logits
    other = PromptCollator(built.processor, "think")(two_records[::-1]).model_inputs
    with torch.no_grad():
        swapped = built.model(**{**inputs, "pixel_values": other["pixel_values"]}).logits
    assert not torch.allclose(swapped[:, -1], logits[:, -1])


def test_generate_continues_the_prompt_from_the_forwards_argmax(built, two_records):
    inputs = PromptCollator(built.processor, "think")(two_records).model_inputs
    prompt_length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        last = built.model(**inputs).logits[:, -1]
        out = built.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(out[:, :prompt_length], inputs["input_ids"])
    assert 1 <= out.shape[1] - prompt_length <= 4
    first = out[:, prompt_length]
    chosen = last.gather(1, first.unsqueeze(1)).squeeze(1)
    assert torch.allclose(chosen, last.max(-1).values, atol=1e-4)  # greedy picks the forward's argmax


def test_save_and_reload_give_identical_logits(built, two_records, tmp_path):
    inputs = PromptCollator(built.processor, "think")(two_records).model_inputs
    built.processor.save_pretrained(tmp_path)
    built.model.save_pretrained(tmp_path)
    reloaded = load_model(built.model_cfg, str(tmp_path)).eval()
    reloaded_inputs = PromptCollator(load_processor(built.model_cfg, str(tmp_path)), "think")(two_records)
    assert all(torch.equal(v, reloaded_inputs.model_inputs[k]) for k, v in inputs.items())
    with torch.no_grad():
        assert torch.equal(built.model(**inputs).logits, reloaded(**inputs).logits)


# --- the pixel budget -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config_name", "tokens_per_merged_side"),
    [("tiny_qwen2_5_vl", 28), ("tiny_qwen3_vl", 32)],
)
def test_qwen_image_processors_take_the_pixel_budget(config_name, tokens_per_merged_side):
    """A budget of 4 merged tokens (in pixels) shrinks a 224x224 image to 2x2 tokens in both Qwen
    families; Qwen3-VL's video processor keeps its own budget (counted over all frames)."""
    cfg = compose_config([f"model={config_name}", "model.build.warmstart=null"])
    path = resolve_model_path(cfg.model, cfg.paths.cache_dir)
    budget = 4 * tokens_per_merged_side**2
    saved = AutoProcessor.from_pretrained(path)
    processor = load_processor({"min_pixels": budget, "max_pixels": budget}, path)
    assert (processor.image_processor.size.shortest_edge, processor.image_processor.size.longest_edge) == (
        budget,
        budget,
    )
    grid = processor.image_processor(images=[Image.new("RGB", (224, 224))], return_tensors="pt")[
        "image_grid_thw"
    ]
    assert grid.tolist() == [[1, 4, 4]]  # 4x4 patches = 2x2 merged tokens
    if config_name == "tiny_qwen3_vl":
        assert processor.video_processor.size == saved.video_processor.size
    else:
        assert processor.video_processor.size.longest_edge == budget


def test_llava_processor_keeps_the_clip_size_whatever_the_pixel_budget():
    cfg = compose_config(["model=tiny_llava", "model.build.warmstart=null"])
    path = resolve_model_path(cfg.model, cfg.paths.cache_dir)  # a folder written by save_pretrained
    processor = load_processor({"min_pixels": 3136, "max_pixels": 3136}, path)
    image_processor = processor.image_processor
    assert type(image_processor).__name__.startswith("CLIPImageProcessor")
    assert image_processor.size.shortest_edge == 56 and image_processor.size.longest_edge is None
    assert (image_processor.crop_size.height, image_processor.crop_size.width) == (56, 56)
    batch = processor(text=["<image>\nQ?"], images=[Image.new("RGB", (112, 80))], return_tensors="pt")
    assert tuple(batch["pixel_values"].shape) == (1, 3, 56, 56)
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == 16


# --- recipes and real-model configs ---------------------------------------------------------


def test_recipes_without_family_stay_qwen2_vl_and_unknown_families_are_named():
    for name in ("tiny", "bench"):  # a `family` key would change their cache hashes
        assert "family" not in compose_config([f"model={name}"]).model.build
    recipe = dict(compose_config(["model=tiny_llava"]).model.build, family="blip")
    with pytest.raises(ValueError, match=r"family='blip'.*llava.*qwen2_5_vl.*qwen2_vl.*qwen3_vl"):
        build_random_checkpoint("unused", recipe)


def test_rotary_sections_match_the_released_models():
    assert mrope_section(128) == [16, 24, 24]  # Qwen2-VL, Qwen2.5-VL
    assert qwen3_vl_mrope_section(128) == [24, 20, 20]  # Qwen3-VL (interleaved)
    assert sum(qwen3_vl_mrope_section(32)) == sum(mrope_section(32)) == 16  # the tiny heads


@pytest.mark.parametrize("config_name", list(REAL_MODELS))
def test_real_model_configs_name_a_hf_checkpoint(config_name):
    hf_id, min_pixels, max_pixels = REAL_MODELS[config_name]
    cfg = compose_config([f"model={config_name}"])
    assert cfg.model.name == config_name and cfg.model.build is None
    assert resolve_model_path(cfg.model, cfg.paths.cache_dir) == hf_id  # passed through, nothing built
    assert (cfg.model.dtype, cfg.model.attn_implementation, cfg.model.gradient_checkpointing) == (
        "float32",
        "auto",
        True,
    )
    assert (cfg.model.min_pixels, cfg.model.max_pixels) == (min_pixels, max_pixels)
    assert cfg.model.allow_low_precision_weights is False
