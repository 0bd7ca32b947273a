"""A run killed while writing its outputs never leaves a file or folder that looks complete."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from medr1.grading import Prediction, write_eval_outputs
from medr1.train import save_final


def prediction(i: int) -> Prediction:
    return Prediction(
        id=f"q{i}",
        modality="ct",
        question_type="modality_recognition",
        completion="<think>x</think><answer>A</answer>",
        parsed="A",
        answer="A",
        correct=True,
        follows_format=True,
        reasoning_tokens=1,
        options={"A": "CT", "B": "MRI"},
    )


SUMMARY = {"accuracy": 1.0, "n": 2}


def test_eval_outputs_are_whole_and_the_summary_comes_last(tmp_path: Path):
    eval_dir = write_eval_outputs(tmp_path, [prediction(0), prediction(1)], SUMMARY | _tables(), "t")
    assert json.loads((eval_dir / "summary.json").read_text())["n"] == 2
    assert len((eval_dir / "predictions.jsonl").read_text().splitlines()) == 2
    assert sorted(p.name for p in eval_dir.iterdir()) == ["predictions.jsonl", "summary.json"]  # no temp file


def test_a_write_that_fails_midway_leaves_no_summary_even_of_an_earlier_evaluation(tmp_path: Path):
    write_eval_outputs(tmp_path, [prediction(0)], SUMMARY | _tables(), "first")
    broken = SUMMARY | _tables() | {"not json": object()}  # json.dumps fails while writing the summary
    with pytest.raises(TypeError):
        write_eval_outputs(tmp_path, [prediction(0), prediction(1)], broken, "second")
    eval_dir = tmp_path / "eval"
    assert not (eval_dir / "summary.json").exists()  # the first evaluation's summary is not left beside
    assert sorted(p.name for p in eval_dir.iterdir()) == ["predictions.jsonl"]  # new predictions


def test_final_folder_appears_only_when_whole(tmp_path: Path):
    class Model:
        def save_pretrained(self, folder):
            (Path(folder) / "config.json").write_text("{}")
            raise OSError("disk full")  # killed halfway through the weights

    module = SimpleNamespace(model=Model(), processor=SimpleNamespace(save_pretrained=lambda folder: None))
    with pytest.raises(OSError, match="disk full"):
        save_final(module, tmp_path)
    assert list((tmp_path / "checkpoints").iterdir()) == []  # no final/, no temporary folder

    class Whole(Model):
        def save_pretrained(self, folder):
            (Path(folder) / "config.json").write_text("{}")

    module.model = Whole()
    final = save_final(module, tmp_path)
    assert final == tmp_path / "checkpoints" / "final" and (final / "config.json").exists()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["final"]


def _tables() -> dict:
    return {
        "by_modality": {"ct": 1.0},
        "by_question_type": {"modality_recognition": 1.0},
        "format_rate": 1.0,
        "reasoning_length": 1.0,
    }


# --- the real thing: SIGKILL a run at moments spread over its whole length -----------------------------


def _outputs_that_look_complete_are_complete(run_dir: Path) -> dict[str, bool]:
    """Every output that looks complete is: a summary.json comes with all its predictions, a final/ folder
    loads, every .ckpt loads. Returns which outputs were there."""
    import torch
    from safetensors.torch import load_file

    seen = {}
    for name, eval_dir in (("eval_before", run_dir / "eval_before" / "eval"), ("eval", run_dir / "eval")):
        summary_file = eval_dir / "summary.json"
        seen[name] = summary_file.exists()
        if seen[name]:
            summary = json.loads(summary_file.read_text())
            rows = [json.loads(line) for line in (eval_dir / "predictions.jsonl").read_text().splitlines()]
            assert len(rows) == summary["n"], f"{summary_file}: {len(rows)} predictions for n={summary['n']}"
    final = run_dir / "checkpoints" / "final"
    seen["final"] = final.exists()
    if seen["final"]:
        assert json.loads((final / "config.json").read_text())["model_type"]
        assert load_file(final / "model.safetensors")
        assert (final / "tokenizer_config.json").exists()
    checkpoints = (
        sorted((run_dir / "checkpoints").glob("*.ckpt")) if (run_dir / "checkpoints").exists() else []
    )
    seen["ckpt"] = bool(checkpoints)
    for checkpoint in checkpoints:
        assert "global_step" in torch.load(checkpoint, map_location="cpu", weights_only=True), checkpoint
    return seen


@pytest.mark.slow
def test_a_run_killed_at_any_moment_leaves_no_output_that_looks_complete(tmp_path: Path):
    """kill -9 at 10 moments spread over a whole run (loading, the evaluation before training, training
    with a checkpoint every step, the final model, the evaluation): whatever is left either looks
    incomplete or is complete; and the killed run resumes (checkpoint.resume=last) to a whole result."""
    import os
    import subprocess
    import sys
    import time

    from tests.helpers.config import FAST, REPO

    args = [a for a in FAST if not a.startswith(("eval.before_training", "checkpoint.every_n_steps"))]
    args += ["eval.before_training=true", "checkpoint.every_n_steps=1", "trainer.max_steps=4"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}

    def start(run_dir: Path, *extra: str) -> subprocess.Popen:
        command = [sys.executable, "run.py", *args, f"hydra.run.dir={run_dir}", *extra]
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    began = time.perf_counter()
    assert start(tmp_path / "whole").wait(timeout=600) == 0
    duration = time.perf_counter() - began
    assert all(_outputs_that_look_complete_are_complete(tmp_path / "whole").values())

    left = []
    for k in range(10):
        run_dir = tmp_path / f"killed{k}"
        process = start(run_dir)
        time.sleep(duration * (0.25 + 0.08 * k))  # from loading to the very end of the run
        process.kill()
        process.wait()
        left.append(_outputs_that_look_complete_are_complete(run_dir))
    # the kills landed in different phases: some before any checkpoint, some during training, some later
    assert any(not seen.get("ckpt") for seen in left) and any(seen.get("ckpt") for seen in left)
    assert any(not seen.get("eval") for seen in left)

    interrupted = next(
        tmp_path / f"killed{k}" for k, seen in enumerate(left) if seen["ckpt"] and not seen["eval"]
    )
    assert start(interrupted, "checkpoint.resume=last").wait(timeout=600) == 0
    assert all(_outputs_that_look_complete_are_complete(interrupted).values())
