"""Hydra sweeps through run.py as users run them, and the report built on what they wrote."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.helpers.config import TINY_RUN, run_py

TINY_BUDGET = ["trainer.max_steps=2", *TINY_RUN]


def summaries(sweep_dir: Path) -> dict[str, dict]:
    return {
        str(p.parent.parent.relative_to(sweep_dir)): json.loads(p.read_text())
        for p in sorted(sweep_dir.glob("*/eval/summary.json"))
    }


def test_modality_sweep_trains_each_modality_and_evaluates_every_modality(tmp_path):
    sweep = tmp_path / "sweep"
    run_py(["-m", "modality=ct,mri", "reward=strict", f"hydra.sweep.dir={sweep}", *TINY_BUDGET])
    runs = summaries(sweep)
    assert set(runs) == {"0", "1"}
    for name, summary in runs.items():
        overrides = (sweep / name / ".hydra" / "overrides.yaml").read_text()
        assert ("modality=ct" in overrides) != ("modality=mri" in overrides)
        assert len(summary["by_modality"]) == 8  # trained on one, evaluated on all
    from medr1.report import build_report

    build_report(sweep, use_wandb=False)
    with open(sweep / "matrix_modality.csv") as f:
        rows = {row["train"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"ct", "mri"}
    for name, summary in runs.items():
        trained_on = (
            "ct" if "modality=ct" in (sweep / name / ".hydra" / "overrides.yaml").read_text() else "mri"
        )
        row = rows[trained_on]
        for modality, accuracy in summary["by_modality"].items():
            assert float(row[modality]) == pytest.approx(accuracy)  # every cell is the run's own number
        assert float(row["in-domain"]) == pytest.approx(summary["by_modality"][trained_on])
        assert float(row["overall"]) == pytest.approx(summary["accuracy"])
    assert (sweep / "heatmap_modality.png").stat().st_size > 5000


@pytest.mark.slow
def test_sft_vs_rl_study_scaled_down(tmp_path):
    sweep = tmp_path / "sft_vs_rl"
    run_py(
        [
            "-m",
            "experiment=sft_vs_rl",
            "model=tiny",
            "data=synthetic",
            "trainer=cpu",
            "model.path=null",
            f"hydra.sweep.dir={sweep}",
            *TINY_BUDGET,
        ]
    )
    runs = summaries(sweep)
    assert len(runs) == 4  # (eval, train) x (sft, grpo)
    from medr1.report import build_report

    build_report(sweep, use_wandb=False)
    comparison = (sweep / "comparison.md").read_text()
    assert "base" in comparison and "sft" in comparison and "grpo" in comparison
