"""Helpers for multi-GPU strategies."""

from __future__ import annotations


def decoder_layer_classes() -> set[type]:
    """Layer classes FSDP wraps one by one: Qwen2-VL / Qwen2.5-VL decoder and vision blocks."""
    from transformers.models.qwen2_vl import modeling_qwen2_vl as qwen2_vl

    classes = {qwen2_vl.Qwen2VLDecoderLayer, qwen2_vl.Qwen2VLVisionBlock}
    try:
        from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen2_5_vl

        classes |= {qwen2_5_vl.Qwen2_5_VLDecoderLayer, qwen2_5_vl.Qwen2_5_VLVisionBlock}
    except (ImportError, AttributeError):
        pass
    return classes
