"""A small sweep written to disk as `python run.py -m` and the evaluation leave it, with known contents:
configs, eval/summary.json (with probes and calibration as issue 16's contract has them) and
eval/predictions.jsonl whose rows point at PNG images written beside the sweep.

Runs: 0 = base model (mode=eval), 1 = grpo on ct, both with every new field; 2 = grpo on mri written
before the new fields (no probes, calibration, images, confidence) and missing question ct-1;
3 = grpo on xray that never finished (no eval/ at all).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from PIL import Image

OPTIONS = {"A": "CT", "B": "MRI", "C": "X-ray", "D": "Ultrasound"}
# question ids per modality; natural order ct-1, ct-2, ct-3, ct-10 differs from string order
QUESTIONS = {
    "ct": ["ct-1", "ct-10", "ct-2", "ct-3"],
    "mri": ["mri-1", "mri-2", "mri-3"],
    "xray": ["xray-1", "xray-2", "xray-3"],
}
ANSWERS = {question: "ABCD"[k % 4] for k, question in enumerate(sum(QUESTIONS.values(), []))}
INJECTION = "<script>alert(1)</script>"
BROKEN_IMAGE = "mri-1"  # its recorded image file does not exist
NO_IMAGE = "xray-1"  # no run records an image path for it
PAREN_ANSWER = "mri-2"  # run 1 answers "(X)": robust reads the letter, the medr1 regex reads nothing
LABELS = {"0": "base", "1": "modality=ct", "2": "modality=mri", "3": "modality=xray"}  # comparison rows


def colour_of(question: str) -> tuple[int, int, int]:
    """A distinct solid colour per question, so a test can tell which image was inlined."""
    k = sorted(ANSWERS).index(question)
    return (20 * k % 256, 255 - 15 * k, 90 + 11 * k)


@dataclass
class FakeSweep:
    root: Path  # the sweep directory
    images: dict[str, Path] = field(default_factory=dict)  # question id -> image file recorded


def write_run(sweep: Path, relative: str, *, mode: str, modality: str, overrides: list[str]) -> Path:
    """A run dir's .hydra files as Hydra saves them (interpolations left unresolved)."""
    run_dir = sweep / relative
    (run_dir / ".hydra").mkdir(parents=True)
    config = {
        "mode": mode,
        "experiment_name": "html_report_test",
        "paths": {"out": "${hydra:runtime.output_dir}"},
        "model": {"name": "qwen2_vl_2b", "path": "Qwen/Qwen2-VL-2B-Instruct"},
        "algo": {"name": "grpo"},
        "modality": {"name": modality},
        "question_type": {"name": "all"},
        "prompt": {"name": "think"},
        "reward": {"name": "default"},
        "tuning": {"name": "full"},
        "logger": {"name": "csv"},
    }
    OmegaConf.save(OmegaConf.create(config), run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), run_dir / ".hydra" / "overrides.yaml")
    return run_dir


def choose(run: str, question: str) -> str | None:
    """The letter run `run` answers: run 0 is right on every third question, run 1 on all but two."""
    answer, k = ANSWERS[question], sorted(ANSWERS).index(question)
    wrong = "ABCD"[("ABCD".index(answer) + 1) % 4]
    if run == "0":
        return answer if k % 3 == 0 else (None if k == 4 else wrong)
    if run == "1":
        return wrong if k in (2, 7) else answer
    return answer if k % 2 == 0 else wrong


def completion_of(run: str, question: str, letter: str | None) -> str:
    if letter is None:
        return "I cannot tell from this image."  # no think block, no answer block
    reasoning = f"Run {run} looks at {question}: the contrast suggests option {letter}."
    if run == "1" and question == "ct-2":
        reasoning += f" {INJECTION} & <b>not bold</b>"
    answer = f"({letter})" if run == "1" and question == PAREN_ANSWER else letter
    return f"<think>{reasoning}</think><answer>{answer}</answer>"


def prediction_rows(run: str, sweep: FakeSweep, new_fields: bool) -> list[dict]:
    rows = []
    for modality, questions in QUESTIONS.items():
        for question in questions:
            if run == "2" and question == "ct-1":
                continue
            letter = choose(run, question)
            row = {
                "id": question,
                "modality": modality,
                "question_type": "modality_recognition",
                "completion": completion_of(run, question, letter),
                "parsed": letter,
                "answer": ANSWERS[question],
                "correct": letter == ANSWERS[question],
                "follows_format": letter is not None,
                "reasoning_tokens": 0 if letter is None else 12,
                "options": OPTIONS,
            }
            if new_fields:
                confidence = None if letter is None else round(0.4 + 0.05 * len(rows), 6)
                if question != NO_IMAGE:
                    row["images"] = [str(sweep.images[question])]
                row["option_probs"] = None if letter is None else {"A": confidence}
                row["confidence"] = confidence
                row["consistent"] = None if letter is None else True
            rows.append(row)
    return rows


def summary_of(rows: list[dict], extra: dict) -> dict:
    def accuracy(selected: list[dict]) -> float:
        return round(sum(row["correct"] for row in selected) / len(selected), 6)

    return {
        "accuracy": accuracy(rows),
        "n": len(rows),
        "by_modality": {m: accuracy([r for r in rows if r["modality"] == m]) for m in QUESTIONS},
        "by_question_type": {"modality_recognition": accuracy(rows)},
        "format_rate": accuracy([{"correct": row["follows_format"]} for row in rows]),
        "reasoning_length": 10.5,
        "parser": "robust",
        "accuracy_by_parser": {"robust": accuracy(rows)},
    } | extra


def calibration(seed: int) -> dict:
    """Ten equal-width bins, the lower four empty, as the evaluation writes them."""

    def block(shift: float, n: int) -> dict:
        bins = []
        for k in range(10):
            count = 0 if k < 4 else n - k
            bins.append(
                {
                    "low": k / 10,
                    "high": (k + 1) / 10,
                    "count": count,
                    "confidence": 0.0 if count == 0 else round(k / 10 + 0.04 + shift, 6),
                    "accuracy": 0.0 if count == 0 else round(min(1.0, k / 10 - 0.1 + 2 * shift), 6),
                }
            )
        return {"ece": round(0.0731 + shift, 6), "n": n, "bins": bins}

    overall = block(0.01 * seed, 30)
    return overall | {"by_modality": {m: block(0.003 * (k + seed), 12) for k, m in enumerate(QUESTIONS)}}


PROBES = {
    "0": {
        "shuffled_options": {"accuracy": 0.3125, "n": 10, "follows_content": 0.6, "follows_letter": 0.2},
        "blank_image": {"accuracy": 0.28125, "n": 10},
        "letter_prior": {
            "chosen": {"A": 0.5, "B": 0.3, "C": 0.1, "D": 0.0},
            "correct": {"A": 0.3, "B": 0.3, "C": 0.2, "D": 0.2},
            "no_answer": 0.1,
            "total_variation": 0.2,
        },
        "image_reliance": 0.03125,
    },
    "1": {  # blank_image did not run: no blank-image accuracy, no image reliance
        "shuffled_options": {"accuracy": 0.7, "n": 10, "follows_content": 0.9, "follows_letter": 0.05},
        "letter_prior": {
            "chosen": {"A": 0.3, "B": 0.3, "C": 0.2, "D": 0.2},
            "correct": {"A": 0.3, "B": 0.3, "C": 0.2, "D": 0.2},
            "no_answer": 0.0,
            "total_variation": 0.0,
        },
    },
}


def write_png(path: Path, colour: tuple[int, int, int], size=(320, 200)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def build_fake_sweep(root: Path) -> FakeSweep:
    """The sweep described in the module docstring, under root/sweep; images under root/images."""
    sweep = FakeSweep(root / "sweep")
    for question in ANSWERS:
        path = root / "images" / f"{question}.png"
        sweep.images[question] = path if question == BROKEN_IMAGE else write_png(path, colour_of(question))
    specs = [
        ("0", "eval", "all", ["mode=eval"]),
        ("1", "train", "ct", ["modality=ct"]),
        ("2", "train", "mri", ["modality=mri"]),
        ("3", "train", "xray", ["modality=xray"]),
    ]
    for relative, mode, modality, overrides in specs:
        run_dir = write_run(sweep.root, relative, mode=mode, modality=modality, overrides=overrides)
        if relative == "3":
            continue  # never finished
        rows = prediction_rows(relative, sweep, new_fields=relative in PROBES)
        extra = {}
        if relative in PROBES:
            extra = {"probes": PROBES[relative], "calibration": calibration(int(relative))}
            extra["consistency_rate"] = 1.0
            if "image_reliance" in PROBES[relative]:
                extra["image_reliance"] = PROBES[relative]["image_reliance"]
        (run_dir / "eval").mkdir()
        (run_dir / "eval" / "summary.json").write_text(json.dumps(summary_of(rows, extra), indent=2))
        (run_dir / "eval" / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return sweep
