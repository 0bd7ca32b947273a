"""The training progress bar: optimiser steps out of the run's total, with the logged reward and accuracy.

Lightning's own bar counts batches per epoch, which says little when a run is counted in steps
(`max_epochs=-1` reads `Epoch 0/-2`). conf/config.yaml adds this bar under `callbacks.progress_bar`.
"""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf


class StepProgressBar(TQDMProgressBar):
    """One bar for the whole run: `global_step / total steps`, then what the module logs with prog_bar=True."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_progress_bar = Tqdm(
            desc="Training",
            total=convert_inf(total_steps(trainer)),
            initial=trainer.global_step,  # a resumed run starts where it stopped
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        pass  # one bar across epochs: the parent would reset it at every epoch

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        bar = self.train_progress_bar
        if self._should_update(trainer.global_step, bar.total or 0):
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass  # the bar stays open until the run ends

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version number, not a property of the run
        return metrics


def total_steps(trainer: L.Trainer) -> int | float:
    """Optimiser steps the run will take: trainer.max_steps, or Lightning's estimate from the epochs."""
    return trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches


def progress_bar(enabled: bool = True) -> Callback:
    """The step bar, or a callback that does nothing when trainer.enable_progress_bar=false (Lightning
    refuses a progress bar callback with the bar disabled)."""
    return StepProgressBar() if enabled else Callback()
