"""medr1.report on small hand-written sweep directories with known numbers."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from statistics import mean

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError
from PIL import Image

from medr1.report import ReportError, ReportResult, build_report

BASE_PATH = "Qwen/Qwen2-VL-2B-Instruct"

# --------------------------------------------------------------------------------------------------
# Sweep builders
# --------------------------------------------------------------------------------------------------


def write_run(
    sweep: Path,
    relative: str,
    *,
    mode: str = "train",
    modality: str = "all",
    question_type: str = "all",
    algo: str = "grpo",
    prompt: str = "think",
    model_name: str = "qwen2_vl_2b",
    model_path: str = BASE_PATH,
    logger: str = "csv",
    experiment: str = "med_r1_cross_modality",
    overrides: list[str] | None = None,
    summary: dict | None = None,
) -> Path:
    """One run dir as `python run.py` writes it; the config keeps interpolations Hydra alone resolves."""
    run_dir = sweep / relative
    (run_dir / ".hydra").mkdir(parents=True)
    config = {
        "mode": mode,
        "experiment_name": experiment,
        "paths": {"out": "${hydra:runtime.output_dir}"},  # unresolvable outside Hydra
        "data": {"root": "${paths.out}/data"},
        "model": {"name": model_name, "path": model_path},
        "algo": {"name": algo, "lr": 1.0e-6},
        "modality": {"name": modality},
        "question_type": {"name": question_type},
        "prompt": {"name": prompt},
        "reward": {"name": "default"},
        "tuning": {"name": "full"},
        "logger": {"name": logger, "project": "medr1-tests", "save_dir": "${paths.out}"},
    }
    OmegaConf.save(OmegaConf.create(config), run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides or []), run_dir / ".hydra" / "overrides.yaml")
    if summary is not None:
        (run_dir / "eval").mkdir()
        (run_dir / "eval" / "summary.json").write_text(json.dumps(summary))
    return run_dir


def make_summary(by_modality: dict, by_question_type: dict | None = None, **extra) -> dict:
    summary = {
        "accuracy": round(mean(by_modality.values()), 4),
        "n": 300,
        "by_modality": by_modality,
        "by_question_type": by_question_type or {"disease_diagnosis": 0.5},
        "format_rate": 0.95,
        "reasoning_length": 42.5,
    }
    return summary | extra


BASE = {"ct": 0.30, "mri": 0.40, "xray": 0.50}
TRAINED = {
    "ct": {"ct": 0.80, "mri": 0.45, "xray": 0.55},
    "mri": {"ct": 0.52, "mri": 0.85, "xray": 0.61},
}


@pytest.fixture
def cross_modality(tmp_path: Path) -> Path:
    """`-m mode=eval,train modality=ct,mri,xray`: 3 identical base runs, 3 trained, xray unfinished."""
    sweep = tmp_path / "multirun" / "2026-11-22" / "10-00-00"
    (sweep).mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    for job, modality in enumerate(["ct", "mri", "xray"]):
        base = make_summary(BASE, accuracy=0.41 + 0.01 * job)  # job 0 must be the one shown
        overrides = ["experiment=med_r1_cross_modality", "mode=eval", f"modality={modality}"]
        write_run(sweep, str(job), mode="eval", modality=modality, overrides=overrides, summary=base)
    for job, modality in enumerate(["ct", "mri", "xray"], start=3):
        overrides = ["experiment=med_r1_cross_modality", "mode=train", f"modality={modality}"]
        summary = make_summary(TRAINED[modality]) if modality in TRAINED else None
        write_run(sweep, str(job), modality=modality, overrides=overrides, summary=summary)
    return sweep


def rows_by_label(table) -> dict[str, list]:
    return {row[0]: row for row in table.rows}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------------------------------
# Modality matrix
# --------------------------------------------------------------------------------------------------


def test_matrix_cells_equal_summaries(cross_modality: Path):
    result = build_report(cross_modality)
    table = result.modality_matrix
    assert table.axis == ["ct", "mri", "xray"]
    assert [row[0] for row in table.rows] == ["base", "ct", "mri", "xray"]
    rows = rows_by_label(table)
    for label, by_modality in [("base", BASE), *TRAINED.items()]:
        for column, value in by_modality.items():
            assert rows[label][table.columns.index(column)] == value


def test_in_and_out_of_domain_by_hand(cross_modality: Path):
    table = build_report(cross_modality).modality_matrix
    rows = rows_by_label(table)
    col = table.columns.index
    assert rows["ct"][col("in-domain")] == 0.80
    assert rows["ct"][col("out-of-domain")] == pytest.approx((0.45 + 0.55) / 2)
    assert rows["mri"][col("in-domain")] == 0.85
    assert rows["mri"][col("out-of-domain")] == pytest.approx((0.52 + 0.61) / 2)
    assert rows["base"][col("in-domain")] is None
    assert rows["base"][col("out-of-domain")] == pytest.approx((0.30 + 0.40 + 0.50) / 3)
    assert rows["ct"][col("overall")] == round(mean(TRAINED["ct"].values()), 4)


def test_all_row_out_of_domain_is_mean_over_every_column(tmp_path: Path):
    write_run(tmp_path, "0", modality="all", summary=make_summary({"ct": 0.6, "oct": 0.9}))
    table = build_report(tmp_path).modality_matrix
    row = rows_by_label(table)["all"]
    assert row[table.columns.index("in-domain")] is None
    assert row[table.columns.index("out-of-domain")] == pytest.approx(0.75)


def test_missing_run_is_a_row_with_missing_cells(cross_modality: Path):
    result = build_report(cross_modality)
    table = result.modality_matrix
    row = rows_by_label(table)["xray"]
    assert row[1:-1] == [None] * (len(table.columns) - 2)
    assert row[-1] == "(missing: no eval/summary.json)"
    markdown = (cross_modality / "matrix_modality.md").read_text()
    xray_line = next(line for line in markdown.splitlines() if line.startswith("| xray"))
    assert xray_line.count("—") == 6 and "(missing: no eval/summary.json)" in xray_line
    assert any("run dir 5" in note for note in table.notes)
    comparison = rows_by_label(result.comparison)["modality=xray"]
    assert comparison[1] is None and "missing" in comparison[-1]


def test_unreadable_summary_is_shown_as_missing_with_reason(tmp_path: Path):
    run_dir = write_run(tmp_path, "0", modality="ct", summary=make_summary({"ct": 0.5}))
    (run_dir / "eval" / "summary.json").write_text("{not json")
    row = build_report(tmp_path).modality_matrix.rows[0]
    assert row[0] == "ct" and "unreadable" in row[-1]


def test_markdown_shows_percentages_and_display_names(cross_modality: Path):
    result = build_report(cross_modality)
    markdown = (cross_modality / "matrix_modality.md").read_text()
    assert result.markdown.startswith(markdown)
    assert "| train \\ test | CT | MRI | X-ray | in-domain | out-of-domain | overall |" in markdown
    assert "| ct | 80.0 | 45.0 | 55.0 | 80.0 | 50.0 |" in markdown
    assert "| base | 30.0 | 40.0 | 50.0 | — | 40.0 | 41.0 |" in markdown


def test_config_is_read_without_resolving(cross_modality: Path):
    cfg = OmegaConf.load(cross_modality / "0" / ".hydra" / "config.yaml")
    with pytest.raises(InterpolationResolutionError):
        OmegaConf.to_container(cfg, resolve=True)
    run = build_report(cross_modality).runs[0]
    assert (run.mode, run.model_path, run.logger_project) == ("eval", BASE_PATH, "medr1-tests")


def test_runs_found_at_any_depth_in_natural_order(tmp_path: Path):
    for relative, modality in [("10", "mri"), ("2", "ct"), ("nested/deeper/run", "xray")]:
        write_run(tmp_path, relative, modality=modality, summary=make_summary({modality: 0.7}))
    result = build_report(tmp_path)
    assert [run.relative for run in result.runs] == ["2", "10", "nested/deeper/run"]
    assert [row[0] for row in result.modality_matrix.rows] == ["ct", "mri", "xray"]


# --------------------------------------------------------------------------------------------------
# Base rows, algo labels, question types
# --------------------------------------------------------------------------------------------------


def test_identical_base_runs_fold_into_one_row(cross_modality: Path):
    table = build_report(cross_modality).modality_matrix
    assert [row[0] for row in table.rows].count("base") == 1
    overall = rows_by_label(table)["base"][table.columns.index("overall")]
    assert overall == 0.41  # job 0, the first by path
    assert any("2 duplicate base-model run(s) folded (1, 2)" in note for note in table.notes)


def test_base_runs_of_different_models_are_labelled_by_model(tmp_path: Path):
    write_run(tmp_path, "0", mode="eval", summary=make_summary(BASE))
    write_run(
        tmp_path,
        "1",
        mode="eval",
        model_name="qwen2_5_vl_3b",
        model_path="Qwen/Qwen2.5-VL-3B-Instruct",
        summary=make_summary({"ct": 0.6}),
    )
    labels = [row[0] for row in build_report(tmp_path).modality_matrix.rows]
    assert labels == ["base: qwen2_vl_2b", "base: qwen2_5_vl_3b"]


def test_base_row_prefers_a_duplicate_that_finished(tmp_path: Path):
    write_run(tmp_path, "0", mode="eval")  # crashed: no summary
    write_run(tmp_path, "1", mode="eval", summary=make_summary(BASE))
    table = build_report(tmp_path).modality_matrix
    assert len(table.rows) == 1 and table.rows[0][1:4] == [0.30, 0.40, 0.50]
    assert any("folded (0); showing 1" in note for note in table.notes)


def test_base_runs_with_different_prompts_keep_their_own_rows_and_deltas(tmp_path: Path):
    """think_vs_nothink: `mode=eval,train x prompt=think,nothink` makes two different base evaluations."""
    accuracy = {
        ("eval", "think"): 0.30,
        ("eval", "nothink"): 0.15,
        ("train", "think"): 0.50,
        ("train", "nothink"): 0.35,
    }
    for job, (mode, prompt) in enumerate(accuracy):
        overrides = ["experiment=think_vs_nothink", f"mode={mode}", f"prompt={prompt}", "++algo.beta=0.04"]
        summary = make_summary(BASE, accuracy=accuracy[mode, prompt])
        write_run(tmp_path, str(job), mode=mode, prompt=prompt, overrides=overrides, summary=summary)
    table = build_report(tmp_path).comparison
    rows = rows_by_label(table)
    delta = table.columns.index("delta_accuracy_pp")
    assert list(rows) == ["base: prompt=think", "base: prompt=nothink", "prompt=think", "prompt=nothink"]
    assert rows["prompt=think"][delta] == pytest.approx(20.0)  # over the think base, 0.30
    assert rows["prompt=nothink"][delta] == pytest.approx(20.0)  # over the nothink base, 0.15
    assert not any("folded" in note for note in table.notes)


def test_base_runs_differing_only_in_training_settings_fold(tmp_path: Path):
    """sft_vs_rl: `mode=eval,train x algo=sft,grpo` evaluates the same base model twice."""
    for job, algo in enumerate(["sft", "grpo"]):
        overrides = [
            "experiment=sft_vs_rl",
            "mode=eval",
            f"algo={algo}",
            f"reward=r{job}",
            "trainer.max_steps=5",
        ]
        write_run(tmp_path, str(job), mode="eval", algo=algo, overrides=overrides, summary=make_summary(BASE))
    write_run(
        tmp_path,
        "2",
        mode="eval",
        overrides=["mode=eval", "eval.max_new_tokens=8"],
        summary=make_summary(BASE),
    )
    table = build_report(tmp_path).comparison
    assert [row[0] for row in table.rows] == ["base: experiment=sft_vs_rl", "base: eval.max_new_tokens=8"]
    assert any("1 duplicate base-model run(s) folded (1); showing 0" in note for note in table.notes)


def test_a_trained_run_no_override_tells_apart_is_labelled_by_algo_and_data(tmp_path: Path):
    write_run(tmp_path, "0", mode="eval", summary=make_summary(BASE))
    write_run(tmp_path, "1", modality="mri", summary=make_summary(TRAINED["mri"]))
    write_run(tmp_path, "2", algo="sft", question_type="lesion_grading", summary=make_summary(BASE))
    labels = [row[0] for row in build_report(tmp_path).comparison.rows]
    assert labels == ["base", "grpo on mri", "sft on all/lesion_grading"]


def test_rows_sharing_a_label_are_told_apart_by_their_overrides(tmp_path: Path):
    for job, lr in enumerate(["1e-6", "1e-5"]):
        overrides = ["modality=ct", f"algo.lr={lr}"]
        write_run(tmp_path, str(job), modality="ct", overrides=overrides, summary=make_summary({"ct": 0.5}))
    labels = [row[0] for row in build_report(tmp_path).modality_matrix.rows]
    assert labels == ["ct (algo.lr=1e-6)", "ct (algo.lr=1e-5)"]


def test_rows_carry_algo_when_runs_differ_in_algo(tmp_path: Path):
    write_run(tmp_path, "0", mode="eval", summary=make_summary(BASE))
    job = 1
    for algo in ["sft", "grpo"]:
        for modality in ["mri", "ct"]:
            summary = make_summary(TRAINED[modality])
            write_run(tmp_path, str(job), algo=algo, modality=modality, summary=summary)
            job += 1
    labels = [row[0] for row in build_report(tmp_path).modality_matrix.rows]
    assert labels == ["base", "grpo: ct", "grpo: mri", "sft: ct", "sft: mri"]


def test_question_type_matrix_only_when_sweep_varies_it(cross_modality: Path, tmp_path: Path):
    result = build_report(cross_modality)
    assert result.question_type_matrix is None
    assert not (cross_modality / "matrix_question_type.md").exists()

    sweep = tmp_path / "cross_task"
    by_question_type = {"disease_diagnosis": 0.7, "lesion_grading": 0.3, "modality_recognition": 0.9}
    write_run(sweep, "0", mode="eval", summary=make_summary(BASE, by_question_type))
    write_run(
        sweep,
        "1",
        question_type="lesion_grading",
        summary=make_summary(BASE, {"disease_diagnosis": 0.6, "lesion_grading": 0.8}),
    )
    result = build_report(sweep)
    table = result.question_type_matrix
    assert table.axis == ["modality_recognition", "disease_diagnosis", "lesion_grading"]
    row = rows_by_label(table)["lesion_grading"]
    col = table.columns.index
    assert row[col("lesion_grading")] == 0.8 and row[col("modality_recognition")] is None
    assert row[col("in-domain")] == 0.8 and row[col("out-of-domain")] == 0.6
    for name in ["matrix_question_type.md", "matrix_question_type.csv", "heatmap_question_type.png"]:
        assert (sweep / name).is_file()
    assert "| Lesion Grading |" in (sweep / "matrix_question_type.md").read_text()


# --------------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------------


def test_comparison_labels_from_differing_overrides_and_deltas(tmp_path: Path):
    write_run(tmp_path, "0", mode="eval", overrides=["mode=eval"], summary=make_summary(BASE))
    accuracies = {
        ("sft", "think"): 0.50,
        ("sft", "nothink"): 0.55,
        ("grpo", "think"): 0.62,
        ("grpo", "nothink"): 0.58,
    }
    for job, ((algo, prompt), accuracy) in enumerate(accuracies.items(), start=1):
        overrides = ["experiment=sft_vs_rl", f"algo={algo}", f"prompt={prompt}"]
        summary = make_summary(BASE, accuracy=accuracy)
        write_run(tmp_path, str(job), algo=algo, prompt=prompt, overrides=overrides, summary=summary)
    table = build_report(tmp_path).comparison
    base_accuracy = mean(BASE.values())
    assert table.rows[0][0] == "base"
    assert table.rows[0][table.columns.index("delta_accuracy_pp")] is None
    rows = rows_by_label(table)
    for (algo, prompt), accuracy in accuracies.items():
        row = rows[f"algo={algo} prompt={prompt}"]
        assert row[table.columns.index("accuracy")] == accuracy
        assert row[table.columns.index("delta_accuracy_pp")] == pytest.approx(
            100 * (accuracy - base_accuracy)
        )
        assert row[table.columns.index("format_rate")] == 0.95 and row[table.columns.index("n")] == 300
    markdown = (tmp_path / "comparison.md").read_text()
    assert (
        f"| algo=grpo prompt=think | 62.0 | 95.0 | 42.5 | 300 | {100 * (0.62 - base_accuracy):+.1f} |"
        in markdown
    )


def test_comparison_without_base_has_blank_deltas(tmp_path: Path):
    for job, modality in enumerate(["ct", "mri"]):
        write_run(
            tmp_path,
            str(job),
            modality=modality,
            overrides=[f"modality={modality}"],
            summary=make_summary(TRAINED[modality]),
        )
    table = build_report(tmp_path).comparison
    assert [row[0] for row in table.rows] == ["modality=ct", "modality=mri"]
    assert all(row[table.columns.index("delta_accuracy_pp")] is None for row in table.rows)


# --------------------------------------------------------------------------------------------------
# Files: CSV, PNG, --out
# --------------------------------------------------------------------------------------------------


def test_csv_round_trips_raw_values(cross_modality: Path):
    result = build_report(cross_modality)
    rows = {row["train"]: row for row in read_csv(cross_modality / "matrix_modality.csv")}
    assert list(rows) == [row[0] for row in result.modality_matrix.rows]
    for column, value in TRAINED["mri"].items():
        assert float(rows["mri"][column]) == value
    assert float(rows["ct"]["out-of-domain"]) == rows_by_label(result.modality_matrix)["ct"][-3]
    assert rows["xray"]["ct"] == "" and rows["xray"]["note"] == "(missing: no eval/summary.json)"
    comparison = read_csv(cross_modality / "comparison.csv")
    assert comparison[0]["run"] == "base" and comparison[0]["delta_accuracy_pp"] == ""


def test_heatmaps_are_valid_images(cross_modality: Path):
    result = build_report(cross_modality)
    path = result.paths["heatmap_modality.png"]
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert 300 <= image.width <= 3000 and 200 <= image.height <= 3000


def test_out_dir_receives_every_file(cross_modality: Path, tmp_path: Path):
    out = tmp_path / "report"
    result = build_report(cross_modality, out_dir=out, use_wandb=False)
    expected = {
        "matrix_modality.md",
        "matrix_modality.csv",
        "heatmap_modality.png",
        "comparison.md",
        "comparison.csv",
        "pairs.csv",  # modality=ct vs modality=mri: one setting apart
        "cells.csv",
        "report.html",
    }
    assert set(result.paths) == expected
    assert {path.name for path in out.iterdir()} == expected
    assert not (cross_modality / "matrix_modality.md").exists()
    assert isinstance(result, ReportResult) and result.wandb_dir is None


# --------------------------------------------------------------------------------------------------
# Errors and CLI
# --------------------------------------------------------------------------------------------------


def test_errors_name_the_directory_and_what_a_run_dir_is(tmp_path: Path):
    with pytest.raises(ReportError, match=r"no run directories found .*\.hydra/config\.yaml"):
        build_report(tmp_path)
    with pytest.raises(ReportError, match="does not exist"):
        build_report(tmp_path / "nope")


def test_broken_config_is_named(tmp_path: Path):
    run_dir = write_run(tmp_path, "0", summary=make_summary(BASE))
    (run_dir / ".hydra" / "config.yaml").write_text("mode: [unclosed\n")
    with pytest.raises(ReportError, match=r"0/\.hydra/config\.yaml is not valid YAML"):
        build_report(tmp_path)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB")}
    return subprocess.run(
        [sys.executable, "-m", "medr1.report", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_cli_prints_the_table(cross_modality: Path):
    completed = run_cli(str(cross_modality))
    assert completed.returncode == 0, completed.stderr
    assert "| train \\ test | CT | MRI | X-ray |" in completed.stdout
    assert "| ct | 80.0 | 45.0 | 55.0 |" in completed.stdout
    assert (cross_modality / "heatmap_modality.png").is_file()


def test_cli_fails_on_empty_dir(tmp_path: Path):
    completed = run_cli(str(tmp_path))
    assert completed.returncode != 0
    assert ".hydra/config.yaml" in completed.stderr and "Traceback" not in completed.stderr


# --------------------------------------------------------------------------------------------------
# W&B
# --------------------------------------------------------------------------------------------------


def test_wandb_offline_run_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    sweep = tmp_path / "sweep"
    write_run(sweep, "0", mode="eval", logger="wandb", summary=make_summary(BASE))
    write_run(sweep, "1", modality="ct", logger="wandb", summary=make_summary(TRAINED["ct"]))
    write_run(sweep, "2", modality="mri", logger="wandb")  # missing cells become nulls in the W&B table
    result = build_report(sweep)  # logger.name == "wandb" turns W&B on
    assert result.wandb_dir is not None and result.wandb_dir.is_dir()
    assert result.wandb_dir.name.startswith("offline-run-")
    assert result.wandb_dir.is_relative_to(sweep)
    assert list(result.wandb_dir.glob("*.wandb"))
    media = result.wandb_dir / "files" / "media"
    assert {path.name.split("_0_")[0] for path in (media / "table").iterdir()} == {
        "matrix_modality",
        "comparison",
        "cells",
    }
    assert list((media / "images").glob("heatmap_modality*.png"))
    # a second report on the same sweep ignores the wandb folder it left there
    assert len(build_report(sweep, use_wandb=False).runs) == 3


# --------------------------------------------------------------------------------------------------
# --parser: accuracies re-read from eval/predictions.jsonl
# --------------------------------------------------------------------------------------------------

PARSER_OPTIONS = {"A": "Mammogram", "B": "PET", "C": "CT", "D": "Fluoroscopy"}
# (modality, question type, answer, completion): the parsers disagree on most of these
PREDICTIONS = {
    "base": [
        ("ct", "modality_recognition", "C", "<think>r</think><answer>C</answer>"),
        ("ct", "modality_recognition", "C", "<think>r</think><answer>(C)</answer>"),
        ("ct", "disease_diagnosis", "B", "B"),
        ("mri", "disease_diagnosis", "A", "<answer>a</answer><answer>A</answer>"),
        ("mri", "disease_diagnosis", "D", "<answer>Fluoroscopy</answer>"),
    ],
    "ct": [
        ("ct", "modality_recognition", "C", "<think>r</think><answer> C </answer>"),
        ("ct", "modality_recognition", "C", "<think>r</think><answer>c</answer>"),
        ("ct", "disease_diagnosis", "B", "<answer></answer><answer>B</answer>"),
        ("mri", "disease_diagnosis", "A", "<answer>\nA\n</answer>"),
        ("mri", "disease_diagnosis", "D", "<answer>CT</answer>"),
    ],
}


def read_by_hand(parser: str, row: dict) -> str | None:
    """The parsers written out from the papers' eval scripts (robust: medr1's extract_choice)."""
    from medr1.answers import extract_choice

    if parser == "robust":
        return extract_choice(row["completion"], row["options"])
    pattern = r"<answer>\s*(\w+)\s*</answer>" if parser == "medr1" else r"<answer>\s*([A-Z])\s*</answer>"
    match = re.search(pattern, row["completion"])
    return match.group(1) if match else None


def accuracies_by_hand(rows: list[dict], parser: str) -> tuple[float, dict[str, float]]:
    """(overall accuracy, by modality) of prediction rows read with `parser`."""
    correct = [(row["modality"], read_by_hand(parser, row) == row["answer"]) for row in rows]
    modalities = sorted({modality for modality, _ in correct})
    by_modality = {m: mean(ok for modality, ok in correct if modality == m) for m in modalities}
    return mean(ok for _, ok in correct), by_modality


def read_predictions(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "eval" / "predictions.jsonl").read_text().splitlines()]


def write_evaluated_run(
    sweep: Path, relative: str, key: str, *, parser: str = "robust", options: bool = True, **run
) -> Path:
    """A run whose summary.json is what `parser` makes of its predictions.jsonl, as medr1 writes them."""
    rows = []
    for i, (m, q, a, c) in enumerate(PREDICTIONS[key]):
        parsed = read_by_hand(parser, {"completion": c, "options": PARSER_OPTIONS})
        row = {
            "id": str(i),
            "modality": m,
            "question_type": q,
            "completion": c,
            "answer": a,
            "parsed": parsed,
            "correct": parsed == a,
            "follows_format": False,
            "reasoning_tokens": 0,
        }
        rows.append(row | ({"options": PARSER_OPTIONS} if options else {}))
    full = [row | {"options": PARSER_OPTIONS} for row in rows]
    accuracy, by_modality = accuracies_by_hand(full, parser)
    by_parser = {name: accuracies_by_hand(full, name)[0] for name in ("robust", "medr1", "medvlm_r1")}
    summary = make_summary(
        by_modality, accuracy=accuracy, n=len(rows), parser=parser, accuracy_by_parser=by_parser
    )
    run_dir = write_run(sweep, relative, summary=summary, **run)
    (run_dir / "eval" / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return run_dir


@pytest.fixture
def evaluated(tmp_path: Path) -> Path:
    """A base run evaluated with the medr1 parser and a ct run with robust, both with predictions."""
    write_evaluated_run(tmp_path, "0", "base", parser="medr1", mode="eval", overrides=["mode=eval"])
    write_evaluated_run(tmp_path, "1", "ct", modality="ct", overrides=["modality=ct"])
    return tmp_path


def test_the_cases_tell_the_parsers_apart():
    rows = [
        {"completion": c, "answer": a, "modality": m, "options": PARSER_OPTIONS}
        for key in PREDICTIONS
        for m, _, a, c in PREDICTIONS[key]
    ]
    overall = {parser: accuracies_by_hand(rows, parser)[0] for parser in ("robust", "medr1", "medvlm_r1")}
    assert len(set(overall.values())) == 3, overall


@pytest.mark.parametrize("parser", ["robust", "medr1", "medvlm_r1"])
def test_parser_option_recomputes_every_run(evaluated: Path, parser: str):
    result = build_report(evaluated, use_wandb=False, parser=parser)
    table = result.modality_matrix
    rows = rows_by_label(table)
    for label, run_dir in (("base", "0"), ("ct", "1")):
        accuracy, by_modality = accuracies_by_hand(read_predictions(evaluated / run_dir), parser)
        for modality, value in by_modality.items():
            assert rows[label][table.columns.index(modality)] == pytest.approx(value)
        assert rows[label][table.columns.index("overall")] == pytest.approx(accuracy)
    comparison = rows_by_label(result.comparison)
    assert comparison["grpo on ct"][1] == pytest.approx(rows["ct"][table.columns.index("overall")])
    # the intervals resample the answers as re-read: the cells hold the same accuracies, with intervals
    for run_dir in ("0", "1"):
        accuracy, _ = accuracies_by_hand(read_predictions(evaluated / run_dir), parser)
        overall = next(c for c in result.cells if c["run_dir"] == run_dir and c["group"] == "all")
        assert overall["accuracy"] == pytest.approx(accuracy) and overall["n"] == 5
        assert overall["ci_low"] <= overall["accuracy"] <= overall["ci_high"]
    assert all(run.parser == parser for run in result.runs) and result.parser == parser
    assert any(f"read with the {parser} evaluation parser" in note for note in result.comparison.notes)


def test_default_reads_each_run_as_recorded_and_warns_when_parsers_differ(evaluated: Path):
    result = build_report(evaluated, use_wandb=False)
    assert [run.parser for run in result.runs] == ["medr1", "robust"]
    overall = rows_by_label(result.modality_matrix)
    column = result.modality_matrix.columns.index("overall")
    for label, key, parser in (("base", "base", "medr1"), ("ct", "ct", "robust")):
        rows = [
            {"completion": c, "answer": a, "modality": m, "options": PARSER_OPTIONS}
            for m, _, a, c in PREDICTIONS[key]
        ]
        assert overall[label][column] == pytest.approx(accuracies_by_hand(rows, parser)[0])
    assert any("different parsers (medr1, robust)" in note for note in result.comparison.notes)


def test_old_predictions_without_options_only_rescore_with_the_paper_parsers(tmp_path: Path):
    write_evaluated_run(tmp_path, "0", "ct", parser="medvlm_r1", options=False, modality="ct")
    rows = [{"completion": c, "answer": a, "modality": m} for m, _, a, c in PREDICTIONS["ct"]]
    table = build_report(tmp_path, use_wandb=False, parser="medr1").modality_matrix
    assert table.rows[0][table.columns.index("overall")] == pytest.approx(
        accuracies_by_hand(rows, "medr1")[0]
    )
    row = build_report(tmp_path, use_wandb=False, parser="robust").modality_matrix.rows[0]
    assert row[1] is None and "options" in row[-1] and "--parser medr1 or medvlm_r1" in row[-1]


def test_parser_without_predictions_is_shown_as_missing(cross_modality: Path):
    row = rows_by_label(build_report(cross_modality, use_wandb=False, parser="medr1").modality_matrix)["ct"]
    assert row[1] is None and "no eval/predictions.jsonl" in row[-1]
    # the recorded parser (robust, summaries older than the key) needs no predictions
    row = rows_by_label(build_report(cross_modality, use_wandb=False, parser="robust").modality_matrix)["ct"]
    assert row[1] == TRAINED["ct"]["ct"]


def test_unknown_parser_is_named(evaluated: Path):
    with pytest.raises(ReportError, match=r"unknown parser 'medr2'.*medvlm_r1"):
        build_report(evaluated, use_wandb=False, parser="medr2")
    completed = run_cli(str(evaluated), "--parser", "medr2")
    assert completed.returncode == 2 and "invalid choice: 'medr2'" in completed.stderr


def test_cli_parser_option_prints_recomputed_numbers(evaluated: Path):
    completed = run_cli(str(evaluated), "--parser", "medvlm_r1", "--no-wandb")
    assert completed.returncode == 0, completed.stderr
    accuracy, by_modality = accuracies_by_hand(read_predictions(evaluated / "1"), "medvlm_r1")
    cells = r" \[[0-9., ]+\] \| ".join(re.escape(f"{100 * by_modality[m]:.1f}") for m in ("ct", "mri"))
    assert re.search(rf"\| ct \| {cells} \[", completed.stdout), completed.stdout
    assert "read with the medvlm_r1 evaluation parser" in completed.stdout
