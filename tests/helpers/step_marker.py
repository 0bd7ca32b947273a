"""A callback for the cluster tests: after each training step, writes the step number to a file (so a test
knows when to send a signal) and waits `pause` seconds (so a signal lands mid-training)."""

from __future__ import annotations

import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class StepMarker(Callback):
    def __init__(self, path: str, pause: float = 0.0):
        self.path, self.pause = Path(path), pause

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.path.write_text(str(trainer.global_step))
        time.sleep(self.pause)
