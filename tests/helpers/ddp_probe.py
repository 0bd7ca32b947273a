"""A callback the DDP tests load into `python run.py` (`+callbacks.probe=...`): it counts the
gradient all-reduces of training by wrapping DDP's own all-reduce hook, and writes the count."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel


class CountGradientAllReduces(L.Callback):
    def __init__(self, out: str):
        self.out = Path(out)
        self.buckets = 0

    def on_train_start(self, trainer, pl_module):
        model = trainer.strategy.model
        assert isinstance(model, DistributedDataParallel), type(model)

        def counting_hook(state, bucket):
            self.buckets += 1
            return allreduce_hook(state, bucket)

        model.register_comm_hook(state=None, hook=counting_hook)

    def on_train_end(self, trainer, pl_module):
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(
            json.dumps({"bucket_all_reduces": self.buckets})
        )
