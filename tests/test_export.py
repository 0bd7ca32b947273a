"""`python -m medr1.export`: a training checkpoint, mid-run or last, as a HF folder that loads with
AutoModelForImageTextToText and evaluates (mode=eval) exactly as the run's own module does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from medr1.evaluate import evaluate
from medr1.export import export, main
from medr1.train import train
from tests.helpers.config import FAST, REPO, compose_config

RUN = FAST + [
    "num_threads=1",
    "trainer.max_steps=3",
    "trainer.val_check_interval=100",
    "checkpoint.every_n_steps=1",
    "checkpoint.keep_all=true",
    "algo.optimizer.lr=1e-3",
]
LORA = ["tuning=lora", "tuning.rank=4", "algo.optimizer.lr=3e-3"]


def run_as_run_py(overrides: list[str], run_dir: Path) -> dict:
    """train() with the run dir laid out as `python run.py` leaves it: the config in .hydra/config.yaml."""
    cfg = compose_config(overrides, run_dir)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return train(cfg)


def evaluate_folder(folder: Path, run_dir: Path) -> tuple[dict, list[dict]]:
    """`mode=eval model.path=<folder>`: the summary and the prediction lines."""
    summary = evaluate(
        compose_config(RUN + ["mode=eval", f"model.path={folder}", "eval.reuse=false"], run_dir)
    )
    return summary, run_predictions(run_dir)[1]


def run_predictions(run_dir: Path) -> tuple[dict, list[dict]]:
    """A run dir's evaluation: eval/summary.json and the eval/predictions.jsonl lines."""
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    lines = (run_dir / "eval" / "predictions.jsonl").read_text().splitlines()
    return summary, [json.loads(line) for line in lines]


def assert_holds_and_answers_as_the_final_model(folder: Path, run: Path, eval_dir: Path) -> None:
    """`folder` holds the run's final weights, and `mode=eval` on it gives the run's own completions
    and accuracy."""
    final = load_file(run / "checkpoints" / "final" / "model.safetensors")
    exported = load_file(folder / "model.safetensors")
    assert set(exported) == set(final) and all(torch.equal(exported[k], final[k]) for k in final)
    assert_answers_as_the_run(folder, run, eval_dir)


def assert_answers_as_the_run(folder: Path, run: Path, eval_dir: Path) -> None:
    """`mode=eval model.path=<folder>` gives the run's own completions and accuracy."""
    expected_summary, expected = run_predictions(run)
    summary, predictions = evaluate_folder(folder, eval_dir)
    assert [p["completion"] for p in predictions] == [p["completion"] for p in expected]
    assert summary["accuracy"] == expected_summary["accuracy"]


def checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)["state_dict"]
    return {name.removeprefix("model."): tensor for name, tensor in state.items()}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("full")
    run_as_run_py(RUN, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("lora")
    run_as_run_py(RUN + LORA, run_dir)
    return run_dir


def test_mid_run_export_holds_the_checkpoint_s_weights_and_evaluates_as_its_module(full_run, tmp_path):
    checkpoint = full_run / "checkpoints" / "epoch=0-step=2.ckpt"
    out = export(checkpoint, tmp_path / "step2")
    assert (out / "model.safetensors").exists() and (out / "processor_config.json").exists()
    exported = dict(AutoModelForImageTextToText.from_pretrained(out).named_parameters())
    saved = checkpoint_weights(checkpoint)
    assert set(exported) <= set(
        saved
    )  # a tied lm_head is one parameter in the model, two keys in the state dict
    assert all(torch.equal(exported[name], saved[name]) for name in exported)
    last = checkpoint_weights(full_run / "checkpoints" / "last.ckpt")
    assert not all(torch.equal(saved[n], last[n]) for n in exported)  # step 2 is not the final model

    # the module restored from the checkpoint, evaluated by train(): resumed with nothing left to train
    restored = tmp_path / "restored"
    train(compose_config(RUN + [f"checkpoint.resume='{checkpoint}'", "trainer.max_steps=2"], restored))
    expected_summary, expected = run_predictions(restored)
    summary, predictions = evaluate_folder(out, tmp_path / "eval")
    assert [p["completion"] for p in predictions] == [p["completion"] for p in expected]
    assert summary["accuracy"] == expected_summary["accuracy"]


def test_export_of_the_last_step_evaluates_as_the_run_did(full_run, tmp_path):
    out = tmp_path / "last"
    assert main([str(full_run / "checkpoints" / "last.ckpt"), str(out)]) == 0
    assert_holds_and_answers_as_the_final_model(out, full_run, tmp_path / "eval")


def test_lora_export_merged_and_as_adapters(lora_run, tmp_path, tiny_path):
    checkpoint = lora_run / "checkpoints" / "last.ckpt"
    saved = checkpoint_weights(checkpoint)
    assert saved and all("lora_" in name for name in saved)  # adapters only: the base is not written

    merged = export(checkpoint, tmp_path / "merged")
    assert_holds_and_answers_as_the_final_model(merged, lora_run, tmp_path / "eval")

    adapters = export(checkpoint, tmp_path / "adapters", adapters=True)
    assert not (adapters / "model.safetensors").exists()  # the base model is referenced, not copied
    base_reference = json.loads((adapters / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(base_reference) == Path(tiny_path).resolve()
    model = AutoModelForImageTextToText.from_pretrained(adapters)
    loaded = dict(model.named_parameters())
    lora = {name.replace("base_model.model.", "", 1): tensor for name, tensor in saved.items()}
    assert set(lora) == {n for n in loaded if "lora_" in n}
    assert all(torch.equal(loaded[n], lora[n]) for n in lora)
    base = dict(AutoModelForImageTextToText.from_pretrained(tiny_path).named_parameters())
    base_names = {n.replace(".base_layer", "") for n in loaded if "lora_" not in n}
    assert base_names == set(base)
    assert all(torch.equal(loaded[n], base[n.replace(".base_layer", "")]) for n in loaded if "lora_" not in n)
    # mode=eval reads the adapters folder (its processor type from the base it names) and answers as merged
    assert_answers_as_the_run(adapters, lora_run, tmp_path / "eval_adapters")


def test_export_refuses_bad_input_with_one_line(full_run, tmp_path, capsys):
    def error_of(*argv: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            main(list(argv))
        message = str(exit_info.value.code)
        assert message.startswith("error: ") and "\n" not in message
        return message

    checkpoint = full_run / "checkpoints" / "last.ckpt"
    assert "does not exist" in error_of(str(tmp_path / "missing.ckpt"), str(tmp_path / "a"))

    elsewhere = tmp_path / "copied" / "checkpoints" / "last.ckpt"  # a checkpoint copied without its run dir
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_bytes(checkpoint.read_bytes())
    assert "--config" in error_of(str(elsewhere), str(tmp_path / "b"))
    config = str(full_run / ".hydra" / "config.yaml")
    assert main([str(elsewhere), str(tmp_path / "b"), "--config", config]) == 0  # ... and with it

    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}, "epoch": 0}, tmp_path / "other.ckpt")
    assert "not a medr1 training checkpoint" in error_of(str(tmp_path / "other.ckpt"), str(tmp_path / "c"))

    assert "--adapters needs a LoRA run" in error_of(str(checkpoint), str(tmp_path / "d"), "--adapters")

    lora_config = compose_config(RUN + LORA)
    OmegaConf.save(lora_config, tmp_path / "lora.yaml")
    message = error_of(str(checkpoint), str(tmp_path / "e"), "--config", str(tmp_path / "lora.yaml"))
    assert "tuning.name" in message  # the config of another run is named as such
    assert not any((tmp_path / name).exists() for name in "acde")


def test_export_cli_refuses_a_pickled_object_without_running_it(full_run, tmp_path):
    """A checkpoint carrying an object whose unpickling runs code: refused with one line on stderr, and
    the code never runs (weights_only)."""
    marker = tmp_path / "code-ran"
    planted = tmp_path / "run" / "checkpoints" / "planted.ckpt"
    planted.parent.mkdir(parents=True)
    script = (
        "import pathlib, torch\n"
        "class Payload:\n"
        "    def __reduce__(self):\n"
        f"        return (pathlib.Path.touch, (pathlib.Path({str(marker)!r}),))\n"
        f"checkpoint = torch.load({str(full_run / 'checkpoints' / 'last.ckpt')!r}, weights_only=True)\n"
        "checkpoint['payload'] = Payload()\n"
        f"torch.save(checkpoint, {str(planted)!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    result = subprocess.run(
        [sys.executable, "-m", "medr1.export", str(planted), str(tmp_path / "out")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=300,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "weights_only" in errors[0] and str(planted) in errors[0], result.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()
