"""Pre-emption and time limits under a cluster launcher: checkpoint at a step boundary, then requeue.

Under `hydra/launcher=submitit_slurm` (or `slurm`, medr1's preset, or `submitit_local`) each job runs
inside submitit, which binds the pre-emption signal (USR2; SLURM sends it `signal_delay_s` before the
time limit, and at pre-emption) to a handler that requeues the job and exits at once: mid-step, with
nothing saved since the last periodic checkpoint. medr1 wraps that handler (`SaveOnPreemption`):

1. the signal only notes that it came;
2. at the end of the current training step every rank learns of it (one all-reduce of a flag, so the
   ranks stop at the same step), and the run saves `checkpoints/last.ckpt`, written under a temporary
   name and renamed once whole, so a kill during the write leaves the previous one;
3. then submitit's own handler runs: it requeues the job (same config, same run dir) and exits.

The requeued job resumes from that checkpoint: under submitit, `checkpoint.resume=null` means `last`
(`resume_mode`). A signal outside training (loading, evaluation) requeues at once, with nothing to
save: at the end of training the run has saved `last.ckpt` at its last step, so a job requeued during
the final evaluation does not train again, it only evaluates.
Outside submitit nothing here is installed: Lightning's own SLURM requeue (SIGUSR1, `hpc_ckpt_*.ckpt`)
and Ctrl-C handling are as they were.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
from pathlib import Path

from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


def under_submitit() -> bool:
    """Whether this process is a submitit job (submitit sets SUBMITIT_EXECUTOR: local, slurm, ...)."""
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


def resume_mode(configured: str | None) -> str | None:
    """checkpoint.resume as the run should use it: a submitit job that left it unset resumes from its
    run dir's last.ckpt when there is one (a requeued job), and starts afresh otherwise."""
    if configured or not under_submitit():
        return configured
    return "last"


def preemption_signal() -> signal.Signals:
    """The signal submitit binds to "checkpoint and requeue" (USR2 unless SUBMITIT_PREEMPT_SIGNAL says)."""
    from submitit import JobEnvironment

    return JobEnvironment._usr_sig()


class SaveOnPreemption(Callback):
    """Turns submitit's pre-emption signal into: finish this step, save last.ckpt, then requeue (module
    docstring). Installed for the span of `trainer.fit` only."""

    def __init__(self, checkpoint_dir: Path):
        self.path = Path(checkpoint_dir) / "last.ckpt"
        self.signum: signal.Signals | None = None
        self._requeue = None  # submitit's handler: requeues the job and exits
        self._received: tuple | None = None  # (signum, frame) of a signal not acted on yet

    # --- the signal ------------------------------------------------------------------------------

    def _note(self, signum, frame) -> None:
        log.warning(
            "received %s (pre-emption or time limit): saving a checkpoint after this step, then requeueing",
            signal.Signals(signum).name,
        )
        self._received = (signum, frame)

    def on_fit_start(self, trainer, pl_module) -> None:
        if not under_submitit():
            return
        self.signum = preemption_signal()
        self._requeue = signal.getsignal(self.signum)
        signal.signal(self.signum, self._note)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()

    def _restore(self) -> None:
        """Give the signal back to submitit; one that came while training stopped is acted on now."""
        if self.signum is None:
            return
        signal.signal(self.signum, self._requeue)
        self.signum, received, self._received = None, self._received, None
        if received is not None and callable(self._requeue):
            self._requeue(*received)

    # --- the step boundary -----------------------------------------------------------------------

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.signum is None:
            return
        # every rank stops at the same step: a rank that got no signal (yet) follows the others
        if not trainer.strategy.reduce_boolean_decision(self._received is not None, all=False):
            return
        self.save(trainer)
        received = self._received or (self.signum, None)
        self._received = None
        signal.signal(self.signum, self._requeue)
        self.signum = None
        log.warning("saved %s at step %d; requeueing", self.path, trainer.global_step)
        if callable(self._requeue):
            self._requeue(*received)  # submitit: requeue and exit (rank zero); other ranks return
        raise SystemExit(f"pre-empted at step {trainer.global_step}; checkpoint {self.path}")

    def on_train_end(self, trainer, pl_module) -> None:
        """Under submitit, last.ckpt holds the last step: a job requeued during the final evaluation
        then only evaluates (train.py finds nothing left to train)."""
        if self.signum is not None:
            self.save(trainer)

    def save(self, trainer) -> None:
        """trainer.save_checkpoint (every rank calls it: it may be collective) to a temporary name,
        renamed by rank zero once every rank is done."""
        partial = self.path.with_name(self.path.name + ".partial")
        trainer.save_checkpoint(partial)
        trainer.strategy.barrier("medr1-preemption-save")
        if trainer.is_global_zero:
            if self.path.is_dir():  # FSDP and DeepSpeed save a folder: os.replace cannot overwrite one
                shutil.rmtree(self.path)
            os.replace(partial, self.path)
        trainer.strategy.barrier("medr1-preemption-saved")
