"""The real Hydra config composed with tiny/CPU overrides, as run.py would see it, and the fast
end-to-end settings most training tests use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# fast settings for end-to-end runs: few steps, short completions, small splits
FAST = [
    "logger=csv",
    "trainer.max_steps=3",
    "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false",
    "data.val_size=8",
    "data.batch_size=4",
    "data.source.size=5",
    "algo.num_generations=4",
    "eval.before_training=false",
    "checkpoint.every_n_steps=2",
    "trainer.log_every_n_steps=1",  # every step's metrics in metrics.csv (the CPU budget writes every 10th)
]

# run.py jobs at the smallest size that still trains and evaluates (sweeps, launchers); add trainer.max_steps
TINY_RUN = [
    "logger=csv",
    "trainer.val_check_interval=100",
    "data.val_size=4",
    "data.batch_size=2",
    "data.source.size=5",
    "++algo.num_generations=2",
    "algo.max_completion_length=24",
    "eval.before_training=false",
    "trainer.enable_progress_bar=false",
    "checkpoint.every_n_steps=100",
    "trainer.log_every_n_steps=1",
]


def run_py(args: list[str], timeout: int = 1200, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python run.py <args>` from the repository, as a user runs it; asserts it exits 0."""
    result = subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ.copy() if env is None else env,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


# the keys of every eval/summary.json
SUMMARY_KEYS = {
    "accuracy",
    "n",
    "by_modality",
    "by_question_type",
    "format_rate",
    "reasoning_length",
    "parser",
    "accuracy_by_parser",
    "consistency_rate",
}
# ... and what the default eval block adds: eval.calibration=true and eval.probes=[letter_prior]
DEFAULT_SUMMARY_KEYS = SUMMARY_KEYS | {"calibration", "probes"}


def compose_config(overrides: list[str], run_dir: Path | None = None):
    """The real config tree (conf/) with `overrides`, as run.py would see it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    if run_dir is not None:
        cfg.paths.output_dir = str(run_dir)
    return cfg
