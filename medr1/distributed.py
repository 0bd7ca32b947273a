"""Helpers for multi-process runs: gathering Python objects from every rank, and the layer classes
FSDP wraps one by one. Outside a distributed run every helper acts as the single rank it is."""

from __future__ import annotations

import torch


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


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    return torch.distributed.get_world_size() if is_distributed() else 1


def gather_objects(value) -> list:
    """[value of rank 0, value of rank 1, ...]; [value] outside distributed runs."""
    if not is_distributed():
        return [value]
    gathered = [None] * world_size()
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def gather_predictions(predictions: list) -> list:
    """All ranks' predictions, each question once (a distributed sampler pads with repeats)."""
    unique = {}
    for rank_predictions in gather_objects(predictions):
        for prediction in rank_predictions:
            unique.setdefault(prediction.id, prediction)
    return list(unique.values())
