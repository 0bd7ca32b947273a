"""Per-stratum GRPO telemetry on a constructed rollout, and in the metrics.csv of a real training run."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch
from transformers import AutoTokenizer

from medr1.data.records import VQARecord
from medr1.grading import grade
from medr1.rl.telemetry import stratum_metrics
from medr1.train import train
from tests.helpers.config import FAST, compose_config
from tests.test_train import read_metrics

OPTIONS = {"A": "CT", "B": "MRI", "C": "X-ray", "D": "Ultrasound"}
G = 2


def record(id: str, modality: str, question_type: str, answer: str) -> VQARecord:
    return VQARecord(
        id=id,
        images=("/nowhere.png",),
        question="Which?",
        options=OPTIONS,
        answer=answer,
        modality=modality,
        question_type=question_type,
        source="hand-written",
    )


# 2 modalities x 2 question types, one prompt each, G = 2 completions per prompt:
# prompt, its completions, their total rewards, their completion lengths
ROLLOUT = [
    (
        record("p0", "ct", "disease_diagnosis", "B"),
        ["<think>so (B)</think><answer>B</answer>", "<think>x</think><answer>A</answer>"],
        [2.0, 1.0],
        [3, 5],
    ),
    (record("p1", "ct", "modality_recognition", "A"), ["<answer>A</answer>"] * 2, [1.0, 1.0], [2, 2]),
    (
        record("p2", "mri", "disease_diagnosis", "C"),
        ["<think>so (D)</think><answer>C</answer>", "<think>x</think><answer></answer>"],
        [1.5, 1.5],
        [4, 6],
    ),
    (
        record("p3", "mri", "modality_recognition", "A"),
        ["<think>x</think><answer>E</answer>", "<think>x</think><answer>A or B</answer>"],
        [0.0, 0.0],
        [1, 7],
    ),
]


@pytest.fixture(scope="module")
def tokenizer(tiny_path):
    return AutoTokenizer.from_pretrained(tiny_path)


def rollout_arguments(tokenizer, rollout=ROLLOUT):
    records = [r for r, texts, _, _ in rollout for _ in texts]
    texts = [t for _, texts, _, _ in rollout for t in texts]
    rewards = torch.tensor([x for _, _, rewards, _ in rollout for x in rewards])
    lengths = [n for _, _, _, lengths in rollout for n in lengths]
    mask = torch.tensor([[1] * n + [0] * (8 - n) for n in lengths])  # [B*G, 8]
    return records, texts, grade(records, texts, tokenizer), rewards, mask


def test_stratum_metrics_on_a_known_rollout(tokenizer):
    metrics = stratum_metrics(*rollout_arguments(tokenizer), group=G)
    expected = {
        # ct: p0 (rewards 2, 1; correct, wrong) and p1 (1, 1; both correct, a constant group)
        "train/modality/ct/reward": 1.25,
        "train/modality/ct/accuracy": 0.75,
        "train/modality/ct/completion_length": 3.0,
        "train/modality/ct/zero_variance_groups": 0.5,
        "train/modality/ct/count": 4.0,
        # mri: p2 (1.5, 1.5; correct, empty) and p3 (0, 0; a letter not an option, two letters)
        "train/modality/mri/reward": 0.75,
        "train/modality/mri/accuracy": 0.25,
        "train/modality/mri/completion_length": 4.5,
        "train/modality/mri/zero_variance_groups": 1.0,
        "train/modality/mri/count": 4.0,
        # disease_diagnosis: p0 and p2
        "train/question_type/disease_diagnosis/reward": 1.5,
        "train/question_type/disease_diagnosis/accuracy": 0.5,
        "train/question_type/disease_diagnosis/completion_length": 4.5,
        "train/question_type/disease_diagnosis/zero_variance_groups": 0.5,
        "train/question_type/disease_diagnosis/count": 4.0,
        # modality_recognition: p1 and p3
        "train/question_type/modality_recognition/reward": 0.5,
        "train/question_type/modality_recognition/accuracy": 0.5,
        "train/question_type/modality_recognition/completion_length": 3.0,
        "train/question_type/modality_recognition/zero_variance_groups": 1.0,
        "train/question_type/modality_recognition/count": 4.0,
        # 8 completions: two without <think>, one empty answer, one E, one "A or B"
        "train/sentinel/empty_answer": 0.125,
        "train/sentinel/several_letters": 0.125,
        "train/sentinel/all_options": 0.0,
        "train/sentinel/missing_tags": 0.0,
        "train/sentinel/missing_think": 0.25,
        "train/sentinel/repeated_tags": 0.0,
        "train/sentinel/letter_outside_options": 0.125,
        "train/sentinel/ngram_repetition": 0.0,
        # reasoning concludes B and answers B; concludes D and answers C; the rest conclude nothing
        "train/consistency": 0.5,
    }
    assert metrics == pytest.approx(expected)


def test_consistency_is_absent_when_no_reasoning_concludes(tokenizer):
    rollout = [
        (record("p1", "ct", "modality_recognition", "A"), ["<answer>A</answer>"] * 2, [1.0, 1.0], [2, 2])
    ]
    metrics = stratum_metrics(*rollout_arguments(tokenizer, rollout), group=G, prefix="probe")
    assert "probe/consistency" not in metrics
    assert metrics["probe/modality/ct/zero_variance_groups"] == 1.0


def test_stratum_metrics_reject_misordered_or_mismatched_rows(tokenizer):
    records, texts, graded, rewards, mask = rollout_arguments(tokenizer)
    swapped = [records[0], records[2], records[1], *records[3:]]  # rows of two prompts interleaved
    with pytest.raises(ValueError, match=r"row b\*G \+ g"):
        stratum_metrics(swapped, texts, graded, rewards, mask, group=G)
    with pytest.raises(ValueError, match="one entry per completion"):
        stratum_metrics(records, texts, graded, rewards[:-2], mask, group=G)
    with pytest.raises(ValueError, match="G=3 completions per prompt"):
        stratum_metrics(records, texts, graded, rewards, mask, group=3)


def test_training_logs_strata_and_sentinels_to_csv(tmp_path):
    batch, group = 4, 4
    cfg = compose_config(
        FAST
        + [
            "trainer.max_steps=2",
            "trainer.val_check_interval=100",
            f"data.batch_size={batch}",
            f"algo.num_generations={group}",
        ],
        tmp_path,
    )
    train(cfg)
    steps = [row for row in read_metrics(tmp_path) if row.get("train/accuracy")]
    assert len(steps) == 2
    for row in steps:
        for name in ("empty_answer", "several_letters", "all_options", "missing_tags", "missing_think"):
            assert 0.0 <= float(row[f"train/sentinel/{name}"]) <= 1.0
        for stratum in ("modality", "question_type"):
            values: dict[str, dict[str, float]] = defaultdict(dict)
            for key, value in row.items():
                parts = key.split("/")
                if len(parts) == 4 and parts[:2] == ["train", stratum] and value != "":
                    values[parts[2]][parts[3]] = float(value)
            present = {name: v for name, v in values.items() if v["count"] > 0}
            # a stratum of an earlier step that this batch lacks: count 0 and NaN, not its old numbers
            for name, v in values.items():
                assert set(v) == {"reward", "accuracy", "completion_length", "zero_variance_groups", "count"}
                if name not in present:
                    assert all(math.isnan(x) for key, x in v.items() if key != "count")
            assert sum(v["count"] for v in present.values()) == batch * group
            for metric in ("accuracy", "reward", "completion_length"):
                weighted = sum(v[metric] * v["count"] for v in present.values()) / (batch * group)
                assert weighted == pytest.approx(float(row[f"train/{metric}"]), abs=1e-5)


def test_metrics_are_computed_only_on_the_steps_lightning_writes(tmp_path, monkeypatch):
    """log_step skips the train/* metrics on steps whose logs Lightning would not write: metrics.csv is
    the same as when every step logs them, row for row (every number of every stratum in the batch),
    with rows at every 3rd step only."""
    from medr1.rl.module import GRPOModule

    def run(folder):
        cfg = compose_config(
            FAST + ["trainer.max_steps=7", "trainer.val_check_interval=100", "trainer.log_every_n_steps=3"],
            folder,
        )
        train(cfg)
        return [row for row in read_metrics(folder) if row.get("train/accuracy")]

    skipping = run(tmp_path / "skipping")
    calls = []
    original = GRPOModule._logs_written_this_step

    def always(self):
        calls.append(original(self))
        return True

    monkeypatch.setattr(GRPOModule, "_logs_written_this_step", always)
    every_step = run(tmp_path / "every_step")
    assert calls == [False, False, True, False, False, True, False]  # the 3rd and the 6th batch
    assert [row["step"] for row in skipping] == ["2", "5"]  # Lightning's step column counts from 0
    assert len(skipping[0]) > 40  # the per-stratum telemetry is there
    assert [present(row) for row in skipping] == [present(row) for row in every_step]


def present(row: dict) -> dict:
    """A metrics.csv row without the marks of a stratum absent from the step's batch (blank, NaN, count
    0): a stratum seen only in a skipped step has no column yet, where logging every step wrote NaN."""
    absent = ("", "nan", None)
    return {k: v for k, v in row.items() if v not in absent and not (k.endswith("/count") and v == "0.0")}
