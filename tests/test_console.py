"""What `python run.py` prints: each Lightning line once, no advertising tip, a bar counting steps."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_RUN = [
    "logger=csv",
    "trainer.max_steps=2",
    "trainer.val_check_interval=100",
    "data.val_size=8",
    "data.batch_size=4",
    "data.source.size=5",
    "algo.num_generations=4",
    "eval.before_training=false",
]


@pytest.fixture(scope="module")
def console(tmp_path_factory) -> list[str]:
    """The lines of a two-step demo run's stdout and stderr; tqdm's redraws (\\r) count as lines."""
    run_dir = tmp_path_factory.mktemp("console_run")
    env = {**os.environ, "MEDR1_CACHE": os.environ.get("MEDR1_CACHE", str(REPO / ".cache"))}
    result = subprocess.run(
        [sys.executable, str(REPO / "run.py"), *TINY_RUN, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return re.split(r"[\r\n]+", result.stdout + "\n" + result.stderr)


def test_each_lightning_line_is_printed_once(console):
    lightning_lines = [line for line in console if "lightning" in line.lower() or "GPU available" in line]
    messages = [line.split(" - ", 1)[-1].removeprefix("INFO: ").strip() for line in lightning_lines]
    assert "GPU available: False, used: False" in messages
    assert len(messages) == len(set(messages)), "\n".join(lightning_lines)


def test_no_advertising_tip(console):
    assert not [line for line in console if "litlogger" in line or "litmodels" in line or "Tip:" in line]


def test_the_bar_counts_optimiser_steps_and_shows_reward_and_accuracy(console):
    bar = [line for line in console if line.startswith("Training")]
    assert any("2/2" in line and "reward=" in line and "acc=" in line for line in bar), "\n".join(bar)
    assert not any(re.search(r"Epoch \d+/-", line) for line in console)
