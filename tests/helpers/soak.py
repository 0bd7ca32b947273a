"""A callback the soak test loads into a long run (`+callbacks.soak=...`): the process's resident memory
and the number of checkpoint files, read after every training step, written as JSON when training ends."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning as L


def resident_bytes() -> int:
    """The process's resident set: psutil's reading when installed, else /proc/self/statm's."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")


class MemoryWatch(L.Callback):
    def __init__(self, out: str, checkpoints: str):
        self.out, self.checkpoints = Path(out), Path(checkpoints)
        self.rss: list[int] = []  # after each step
        self.checkpoint_files: list[int] = []  # .ckpt files in the folder after each step
        self.started = time.perf_counter()

    def on_train_start(self, trainer, pl_module):
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rss.append(resident_bytes())
        self.checkpoint_files.append(len(list(self.checkpoints.glob("*.ckpt"))))

    def on_train_end(self, trainer, pl_module):
        self.out.write_text(
            json.dumps(
                {
                    "rss": self.rss,
                    "checkpoint_files": self.checkpoint_files,
                    "seconds": time.perf_counter() - self.started,
                    "steps": trainer.global_step,
                }
            )
        )
