"""The report's uncertainty (issue 16): bootstrap intervals, seeds, paired deltas, cells.csv, pairs.

Sweeps are written to disk with eval/predictions.jsonl whose correctness the test chooses; every
interval the report gives is recomputed here by an independent numpy bootstrap of the documented
scheme (medr1.report.stats): per stratum `default_rng([seed, crc32(key)]).integers(0, n, (R, n))`
over its questions sorted by id, percentiles 2.5 and 97.5.
"""

from __future__ import annotations

import csv
import json
import zlib
from pathlib import Path
from statistics import mean, stdev

import numpy as np
import pytest
from omegaconf import OmegaConf

from medr1.report import build_report
from medr1.report.stats import Bootstrap
from tests.test_report import read_csv, rows_by_label, run_cli, write_run

QUESTION_TYPES = ("disease_diagnosis", "lesion_grading")  # question k of a modality has type k % 2
R = 400  # resamples: enough to tell intervals apart, fast


# --------------------------------------------------------------------------------------------------
# Sweeps with predictions
# --------------------------------------------------------------------------------------------------


def pattern(n: int, right: int, offset: int = 0) -> list[bool]:
    """n answers, `right` of them correct, spread over the questions (shifted by `offset`)."""
    return [((k + offset) * right) % n < right for k in range(n)]


def prediction_rows(answers: dict[str, list[bool]], skip: set[str] = frozenset()) -> list[dict]:
    rows = []
    for modality, oks in answers.items():
        for k, ok in enumerate(oks):
            question = f"{modality}-{k:03d}"
            if question in skip:
                continue
            rows.append(
                {
                    "id": question,
                    "modality": modality,
                    "question_type": QUESTION_TYPES[k % 2],
                    "completion": f"<think>t</think><answer>{'A' if ok else 'B'}</answer>",
                    "parsed": "A" if ok else "B",
                    "answer": "A",
                    "correct": ok,
                    "follows_format": True,
                    "reasoning_tokens": 1,
                    "options": {"A": "yes", "B": "no"},
                }
            )
    return rows


def summary_of(rows: list[dict]) -> dict:
    """eval/summary.json as the evaluation writes it for these rows."""

    def by(key: str) -> dict[str, float]:
        names = sorted({row[key] for row in rows})
        return {name: round(mean(row["correct"] for row in rows if row[key] == name), 6) for name in names}

    return {
        "accuracy": round(mean(row["correct"] for row in rows), 6),
        "n": len(rows),
        "by_modality": by("modality"),
        "by_question_type": by("question_type"),
        "format_rate": 1.0,
        "reasoning_length": 1.0,
        "parser": "robust",
        "accuracy_by_parser": {},
    }


def predicted_run(
    sweep: Path, relative: str, answers: dict[str, list[bool]], skip=frozenset(), **run
) -> Path:
    """A finished run: predictions.jsonl with `answers` per modality, summary.json computed from them."""
    rows = prediction_rows(answers, set(skip))
    run_dir = write_run(sweep, relative, summary=summary_of(rows), **run)
    (run_dir / "eval" / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return run_dir


def base_run(sweep: Path, relative: str, answers, **run) -> Path:
    return predicted_run(sweep, relative, answers, mode="eval", **({"overrides": ["mode=eval"]} | run))


def report(sweep: Path, **kwargs):
    return build_report(sweep, use_wandb=False, resamples=kwargs.pop("resamples", R), **kwargs)


def cell(result, run_dir: str, group: str) -> dict:
    return next(c for c in result.cells if c["run_dir"] == run_dir and c["group"] == group)


# --------------------------------------------------------------------------------------------------
# The scheme, written out independently
# --------------------------------------------------------------------------------------------------


def draws(key: str, n: int, seed: int = 0, resamples: int = R) -> np.ndarray:
    return np.random.default_rng([seed, zlib.crc32(key.encode())]).integers(0, n, size=(resamples, n))


def group_resamples(answers: list[bool], key: str, seed: int = 0) -> np.ndarray:
    values = np.array(answers, dtype=float)
    return values[draws(key, len(values), seed)].mean(axis=1)


def overall_resamples(answers: dict[str, list[bool]], seed: int = 0) -> np.ndarray:
    """Stratified by modality: each modality's own draws, group sizes kept."""
    total = sum(
        np.array(oks, dtype=float)[draws(f"modality={m}", len(oks), seed)].sum(axis=1)
        for m, oks in answers.items()
    )
    return total / sum(len(oks) for oks in answers.values())


def interval(samples: np.ndarray) -> tuple[float, float]:
    low, high = np.quantile(samples, [0.025, 0.975])
    return float(low), float(high)


def assert_interval(actual, expected) -> None:
    assert actual is not None
    assert actual == pytest.approx(expected, abs=1e-12)


ANSWERS = {"ct": pattern(30, 21), "mri": pattern(20, 8), "xray": pattern(25, 15)}


# --------------------------------------------------------------------------------------------------
# Intervals of one run
# --------------------------------------------------------------------------------------------------


def test_cells_csv_rows_and_values_exactly(tmp_path: Path):
    predicted_run(tmp_path, "0", ANSWERS, modality="ct", overrides=["modality=ct", "seed=7"])
    result = report(tmp_path)
    with (tmp_path / "cells.csv").open(newline="") as handle:
        header = next(csv.reader(handle))
    assert header[:6] == ["run_dir", "group", "accuracy", "n", "ci_low", "ci_high"]
    rows = read_csv(tmp_path / "cells.csv")
    assert [(row["group"], row["axis"]) for row in rows] == [
        ("all", "all"),
        ("ct", "modality"),
        ("mri", "modality"),
        ("xray", "modality"),
        ("disease_diagnosis", "question_type"),
        ("lesion_grading", "question_type"),
    ]
    everything = [ok for oks in ANSWERS.values() for ok in oks]
    assert float(rows[0]["accuracy"]) == sum(everything) / 75 and rows[0]["n"] == "75"
    assert rows[0]["correct"] == str(sum(everything)) and rows[0]["seed"] == "7"
    assert (float(rows[0]["ci_low"]), float(rows[0]["ci_high"])) == pytest.approx(
        interval(overall_resamples(ANSWERS)), abs=1e-12
    )
    for row, (modality, oks) in zip(rows[1:4], ANSWERS.items(), strict=True):
        assert float(row["accuracy"]) == mean(oks) and row["n"] == str(len(oks))
        expected = interval(group_resamples(oks, f"modality={modality}"))
        assert (float(row["ci_low"]), float(row["ci_high"])) == pytest.approx(expected, abs=1e-12)
    # a question type gathers questions from every modality: its own ids, sorted
    by_id = sorted(
        (f"{m}-{k:03d}", ok) for m, oks in ANSWERS.items() for k, ok in enumerate(oks) if k % 2 == 1
    )
    lesion = [ok for _, ok in by_id]
    assert float(rows[5]["accuracy"]) == mean(lesion) and rows[5]["n"] == str(len(lesion))
    expected = interval(group_resamples(lesion, "question_type=lesion_grading"))
    assert (float(rows[5]["ci_low"]), float(rows[5]["ci_high"])) == pytest.approx(expected, abs=1e-12)
    assert result.cells[0] == {
        "run_dir": "0",
        "group": "all",
        "accuracy": sum(everything) / 75,
        "n": 75,
        "ci_low": pytest.approx(float(rows[0]["ci_low"])),
        "ci_high": pytest.approx(float(rows[0]["ci_high"])),
        "axis": "all",
        "correct": sum(everything),
        "seed": "7",
        "mode": "train",
        "note": None,
    }


def test_matrix_and_comparison_intervals_recomputed_by_hand(tmp_path: Path):
    predicted_run(tmp_path, "0", ANSWERS, modality="ct", overrides=["modality=ct"])
    result = report(tmp_path)
    table = result.modality_matrix
    row, intervals = table.rows[0], table.intervals[0]
    col = table.columns.index
    for modality, oks in ANSWERS.items():
        assert_interval(intervals[col(modality)], interval(group_resamples(oks, f"modality={modality}")))
    assert intervals[col("in-domain")] == intervals[col("ct")]
    others = np.mean([group_resamples(ANSWERS[m], f"modality={m}") for m in ("mri", "xray")], axis=0)
    assert_interval(intervals[col("out-of-domain")], interval(others))
    assert_interval(intervals[col("overall")], interval(overall_resamples(ANSWERS)))
    assert row[col("out-of-domain")] == pytest.approx((mean(ANSWERS["mri"]) + mean(ANSWERS["xray"])) / 2)
    comparison = result.comparison
    assert comparison.intervals[0][comparison.columns.index("accuracy")] == intervals[col("overall")]
    assert intervals[0] is None and comparison.intervals[0][comparison.columns.index("format_rate")] is None
    low, high = intervals[col("mri")]
    assert (
        f"| ct | 70.0 [{100 * intervals[col('ct')][0]:.1f}, " in (tmp_path / "matrix_modality.md").read_text()
    )
    assert f"40.0 [{100 * low:.1f}, {100 * high:.1f}]" in result.markdown


def test_all_correct_and_all_wrong_give_closed_intervals(tmp_path: Path):
    predicted_run(tmp_path, "0", {"ct": [True] * 12, "mri": [False] * 9})
    result = report(tmp_path)
    assert (cell(result, "0", "ct")["ci_low"], cell(result, "0", "ct")["ci_high"]) == (1.0, 1.0)
    assert (cell(result, "0", "mri")["ci_low"], cell(result, "0", "mri")["ci_high"]) == (0.0, 0.0)
    # stratified: each modality always contributes its own 12 right and 9 wrong answers
    assert (cell(result, "0", "all")["ci_low"], cell(result, "0", "all")["ci_high"]) == (12 / 21, 12 / 21)


def test_overall_resamples_within_each_modality(tmp_path: Path):
    """An unstratified bootstrap mixes the groups and varies; the report's never does."""
    answers = {"ct": [True] * 20, "mri": [False] * 20}
    predicted_run(tmp_path, "0", answers)
    result = report(tmp_path)
    overall = result.comparison.intervals[0][result.comparison.columns.index("accuracy")]
    stratified = interval(overall_resamples(answers))
    pooled = np.array([True] * 20 + [False] * 20, dtype=float)
    unstratified = interval(pooled[draws("all", 40)].mean(axis=1))
    assert stratified == (0.5, 0.5) and unstratified[1] - unstratified[0] > 0.2
    assert overall == stratified != unstratified


def test_intervals_hold_the_estimate_and_shrink_with_n(tmp_path: Path):
    widths = {}
    for n in (20, 200, 2000):
        sweep = tmp_path / str(n)
        predicted_run(sweep, "0", {"ct": pattern(n, 3 * n // 5)})
        found = cell(report(sweep), "0", "ct")
        assert found["ci_low"] < found["accuracy"] == 0.6 < found["ci_high"]
        widths[n] = found["ci_high"] - found["ci_low"]
    assert widths[20] > 2 * widths[200] > 4 * widths[2000]


# --------------------------------------------------------------------------------------------------
# Reproducibility and flags
# --------------------------------------------------------------------------------------------------


def two_arm_sweep(sweep: Path) -> Path:
    """base + algo=sft + algo=grpo, every run with predictions."""
    base_run(sweep, "0", {"ct": pattern(30, 12), "mri": pattern(30, 9)})
    for job, (algo, right) in enumerate([("sft", 15), ("grpo", 21)], start=1):
        answers = {"ct": pattern(30, right), "mri": pattern(30, right - 3)}
        predicted_run(sweep, str(job), answers, algo=algo, overrides=["experiment=sft_vs_rl", f"algo={algo}"])
    return sweep


REPORT_FILES = [
    "matrix_modality.md",
    "matrix_modality.csv",
    "comparison.md",
    "comparison.csv",
    "pairs.csv",
    "cells.csv",
]


def test_same_seed_same_bytes_other_seed_other_bounds(tmp_path: Path):
    sweep = two_arm_sweep(tmp_path / "sweep")
    outputs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        report(sweep, out_dir=tmp_path / name, seed=seed)
        outputs[name] = {file: (tmp_path / name / file).read_bytes() for file in REPORT_FILES}
    assert outputs["a"] == outputs["b"]
    a, c = read_csv(tmp_path / "a" / "cells.csv"), read_csv(tmp_path / "c" / "cells.csv")
    assert [row["accuracy"] for row in a] == [row["accuracy"] for row in c]
    assert [(row["ci_low"], row["ci_high"]) for row in a] != [(row["ci_low"], row["ci_high"]) for row in c]
    by_hand = interval(overall_resamples({"ct": pattern(30, 12), "mri": pattern(30, 9)}, seed=1))
    assert (float(c[0]["ci_low"]), float(c[0]["ci_high"])) == pytest.approx(by_hand, abs=1e-12)


def test_resamples_flag_and_zero_turns_intervals_off(tmp_path: Path):
    sweep = two_arm_sweep(tmp_path)
    small = report(sweep, resamples=50)
    expected = interval(
        np.array(pattern(30, 12), dtype=float)[draws("modality=ct", 30, resamples=50)].mean(axis=1)
    )
    assert (cell(small, "0", "ct")["ci_low"], cell(small, "0", "ct")["ci_high"]) == pytest.approx(expected)
    off = report(sweep, resamples=0)
    assert all(value is None for row in off.comparison.intervals for value in row)
    assert all(c["ci_low"] is None and c["note"] == "no intervals: --resamples 0" for c in off.cells)
    assert "no intervals: --resamples 0." in off.comparison.notes
    assert "[" not in (sweep / "matrix_modality.md").read_text().split("\n\n")[1]


def test_cli_flags(tmp_path: Path):
    sweep = two_arm_sweep(tmp_path)
    completed = run_cli(str(sweep), "--resamples", "300", "--seed", "5", "--no-wandb")
    assert completed.returncode == 0, completed.stderr
    assert "(300 resamples, resampling seed 5;" in completed.stdout
    rows = read_csv(sweep / "cells.csv")
    expected = interval(
        sum(
            np.array(oks, dtype=float)[draws(f"modality={m}", 30, seed=5, resamples=300)].sum(axis=1)
            for m, oks in {"ct": pattern(30, 12), "mri": pattern(30, 9)}.items()
        )
        / 60
    )
    assert (float(rows[0]["ci_low"]), float(rows[0]["ci_high"])) == pytest.approx(expected, abs=1e-12)
    completed = run_cli(str(sweep), "--resamples", "-1", "--no-wandb")
    assert completed.returncode == 2 and "--resamples must be 0" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_draws_in_chunks_equal_one_call(monkeypatch: pytest.MonkeyPatch):
    import medr1.report.stats as stats

    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 7 * 13)  # 7 rows of 13 questions per chunk
    counts = Bootstrap(resamples=50, seed=3).counts("modality=ct", 13)
    whole = draws("modality=ct", 13, seed=3, resamples=50)
    expected = np.stack([np.bincount(row, minlength=13) for row in whole])
    assert np.array_equal(counts, expected) and (counts.sum(axis=1) == 13).all()


# --------------------------------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------------------------------

SEED_ANSWERS = {
    1: {"ct": pattern(24, 15), "mri": pattern(16, 6)},
    2: {"ct": pattern(24, 17, offset=1), "mri": pattern(16, 9)},
    3: {"ct": pattern(24, 12, offset=2), "mri": pattern(16, 8, offset=3)},
}
SEED_BASE = {"ct": pattern(24, 10), "mri": pattern(16, 5)}


def seed_sweep(sweep: Path) -> Path:
    """`-m mode=eval,train seed=1,2,3 modality=ct`: base runs fold, trained runs are one row."""
    for job, seed in enumerate((1, 2, 3)):
        base_run(sweep, str(job), SEED_BASE, overrides=["mode=eval", f"seed={seed}", "modality=ct"])
    for job, seed in enumerate((1, 2, 3), start=3):
        overrides = ["mode=train", f"seed={seed}", "modality=ct"]
        predicted_run(sweep, str(job), SEED_ANSWERS[seed], modality="ct", overrides=overrides)
    return sweep


def test_three_seeds_are_one_row_with_mean_sd_and_joint_interval(tmp_path: Path):
    result = report(seed_sweep(tmp_path))
    comparison = result.comparison
    assert [row[0] for row in comparison.rows] == ["base", "grpo on ct"]
    assert comparison.row_seeds == [1, 3]
    col = comparison.columns.index
    accuracies = [mean(oks for a in SEED_ANSWERS[s].values() for oks in a) for s in (1, 2, 3)]
    trained = comparison.rows[1]
    assert trained[col("accuracy")] == pytest.approx(mean(accuracies), abs=1e-6)
    assert comparison.spreads[1][col("accuracy")] == pytest.approx(stdev(accuracies), abs=1e-6)
    assert trained[col("run_dir")] == "3, 4, 5" and trained[col("n")] == 40
    # the same resampled questions for every seed, then the mean over seeds
    joint = np.mean([overall_resamples(SEED_ANSWERS[s]) for s in (1, 2, 3)], axis=0)
    assert_interval(comparison.intervals[1][col("accuracy")], interval(joint))
    delta = 100 * (joint - overall_resamples(SEED_BASE))
    assert_interval(comparison.intervals[1][col("delta_accuracy_pp")], interval(delta))
    low, high = comparison.intervals[1][col("accuracy")]
    shown = f"{100 * mean(accuracies):.1f} ± {100 * stdev(accuracies):.1f} (3 seeds) [{100 * low:.1f}, {100 * high:.1f}]"
    assert shown in (tmp_path / "comparison.md").read_text()
    matrix = result.modality_matrix
    assert [row[0] for row in matrix.rows] == ["base", "ct"] and matrix.row_seeds == [1, 3]
    ct = matrix.columns.index("ct")
    assert matrix.rows[1][ct] == pytest.approx(mean(mean(SEED_ANSWERS[s]["ct"]) for s in (1, 2, 3)), abs=1e-6)
    joint_ct = np.mean([group_resamples(SEED_ANSWERS[s]["ct"], "modality=ct") for s in (1, 2, 3)], axis=0)
    assert_interval(matrix.intervals[1][ct], interval(joint_ct))
    comparison_csv = read_csv(tmp_path / "comparison.csv")
    assert comparison_csv[1]["seeds"] == "3"
    assert float(comparison_csv[1]["accuracy_sd"]) == pytest.approx(stdev(accuracies), abs=1e-6)
    # cells are single runs: every run dir, folded base duplicates included
    assert sorted({c["run_dir"] for c in result.cells}) == ["0", "1", "2", "3", "4", "5"]
    assert any(note.startswith("a ± s (k seeds): mean over the k seeds") for note in comparison.notes)


def test_seed_in_config_only_groups_too(tmp_path: Path):
    for job, seed in enumerate((11, 12)):
        run_dir = predicted_run(tmp_path, str(job), SEED_ANSWERS[job + 1], modality="ct")
        config_path = run_dir / ".hydra" / "config.yaml"
        config = OmegaConf.load(config_path)
        config.seed = seed
        OmegaConf.save(config, config_path)
    result = report(tmp_path)
    assert result.comparison.row_seeds == [2]
    assert [c["seed"] for c in result.cells if c["group"] == "all"] == ["11", "12"]


def test_runs_with_the_same_seed_are_not_a_seed_sweep(tmp_path: Path):
    for job in range(2):
        predicted_run(tmp_path, str(job), SEED_ANSWERS[job + 1], modality="ct", overrides=["seed=1"])
    result = report(tmp_path)
    assert result.comparison.row_seeds == [1, 1] and len(result.modality_matrix.rows) == 2


def test_a_failed_seed_is_left_out_of_the_mean_and_said(tmp_path: Path):
    for job, seed in enumerate((1, 2)):
        overrides = [f"seed={seed}", "modality=ct"]
        predicted_run(tmp_path, str(job), SEED_ANSWERS[seed], modality="ct", overrides=overrides)
    write_run(tmp_path, "2", modality="ct", overrides=["seed=3", "modality=ct"])  # crashed
    comparison = report(tmp_path).comparison
    assert comparison.row_seeds == [2]
    accuracies = [mean(ok for oks in SEED_ANSWERS[s].values() for ok in oks) for s in (1, 2)]
    assert comparison.rows[0][1] == pytest.approx(mean(accuracies), abs=1e-6)
    assert any("run dir 2 (seed 3)" in note and "over its other seeds" in note for note in comparison.notes)


# --------------------------------------------------------------------------------------------------
# Paired deltas against the base
# --------------------------------------------------------------------------------------------------


def test_paired_delta_is_narrower_than_unpaired_and_starred_when_it_excludes_0(tmp_path: Path):
    base = {"ct": pattern(60, 30), "mri": pattern(60, 24)}
    better = {
        m: [ok or k % 7 == 0 for k, ok in enumerate(oks)] for m, oks in base.items()
    }  # a few more right
    shuffled = {
        m: [ok != (k % 10 < 2) for k, ok in enumerate(oks)] for m, oks in base.items()
    }  # as many flip
    base_run(tmp_path, "0", base)
    predicted_run(tmp_path, "1", better, modality="ct", overrides=["modality=ct"])
    predicted_run(tmp_path, "2", shuffled, modality="mri", overrides=["modality=mri"])
    result = report(tmp_path)
    comparison = result.comparison
    col = comparison.columns.index("delta_accuracy_pp")
    rows = rows_by_label(comparison)
    paired = {label: comparison.intervals[i][col] for i, label in enumerate(rows)}
    by_hand = 100 * (overall_resamples(better) - overall_resamples(base))
    assert_interval(paired["modality=ct"], interval(by_hand))
    # unpaired: the two runs resampled independently (another seed for the base)
    unpaired = interval(100 * (overall_resamples(better) - overall_resamples(base, seed=99)))
    assert paired["modality=ct"][1] - paired["modality=ct"][0] < 0.6 * (unpaired[1] - unpaired[0])
    assert paired["modality=ct"][0] > 0 > unpaired[0]  # only pairing shows the gain is real
    assert paired["modality=mri"][0] < 0 < paired["modality=mri"][1]
    markdown = (tmp_path / "comparison.md").read_text()
    ct_line = next(line for line in markdown.splitlines() if line.startswith("| modality=ct |"))
    mri_line = next(line for line in markdown.splitlines() if line.startswith("| modality=mri |"))
    assert f"{rows['modality=ct'][col]:+.1f}* [" in ct_line and "*" not in mri_line
    csv_rows = {row["run"]: row for row in read_csv(tmp_path / "comparison.csv")}
    assert csv_rows["modality=ct"]["delta_accuracy_pp_excludes_0"] == "True"
    assert csv_rows["modality=mri"]["delta_accuracy_pp_excludes_0"] == "False"
    assert csv_rows["base"]["delta_accuracy_pp_excludes_0"] == ""
    assert float(csv_rows["modality=ct"]["delta_accuracy_pp_ci_low"]) == pytest.approx(
        paired["modality=ct"][0]
    )


def test_different_question_ids_pair_on_the_common_ones_and_say_so(tmp_path: Path):
    base_run(tmp_path, "0", ANSWERS)
    predicted_run(tmp_path, "1", ANSWERS, skip={"ct-000", "ct-001"}, modality="ct", overrides=["modality=ct"])
    result = report(tmp_path)
    comparison = result.comparison
    delta = comparison.intervals[1][comparison.columns.index("delta_accuracy_pp")]
    assert delta == (0.0, 0.0)  # the same answers on the 73 questions both have
    assert any(
        note.startswith("grpo on ct against base: ")
        and "(73, 75 questions)" in note
        and "the 73 they share" in note
        for note in comparison.notes
    )


# --------------------------------------------------------------------------------------------------
# Pairs that differ in one setting
# --------------------------------------------------------------------------------------------------


def test_two_arm_sweep_has_its_pair(tmp_path: Path):
    sweep = two_arm_sweep(tmp_path)
    result = report(sweep)
    pairs = result.pairs
    assert pairs is not None and len(pairs.rows) == 1
    row = dict(zip(pairs.columns, pairs.rows[0], strict=True))
    assert (row["setting"], row["first"], row["second"]) == ("algo", "algo=sft", "algo=grpo")
    sft = {"ct": pattern(30, 15), "mri": pattern(30, 12)}
    grpo = {"ct": pattern(30, 21), "mri": pattern(30, 18)}
    assert row["delta_pp"] == pytest.approx(100 * (39 / 60 - 27 / 60), abs=1e-4)
    assert row["n"] == 60 and (row["first_run_dir"], row["second_run_dir"]) == ("1", "2")
    expected = interval(100 * (overall_resamples(grpo) - overall_resamples(sft)))
    assert_interval(pairs.intervals[0][pairs.columns.index("delta_pp")], expected)
    markdown = (sweep / "comparison.md").read_text()
    assert "## Pairs that differ in one setting" in markdown
    star = "*" if expected[0] > 0 or expected[1] < 0 else ""
    assert (
        "| algo | algo=sft | algo=grpo | 45.0 " in markdown
        and f"| +20.0{star} [{expected[0]:+.1f}, " in markdown
    )
    pairs_csv = read_csv(sweep / "pairs.csv")
    assert len(pairs_csv) == 1 and pairs_csv[0]["setting"] == "algo"
    assert float(pairs_csv[0]["delta_pp_ci_low"]) == pytest.approx(expected[0], abs=1e-9)
    assert pairs_csv[0]["delta_pp_excludes_0"] == str(bool(star))


def test_pairs_differ_in_exactly_one_setting(tmp_path: Path):
    """algo x prompt: four one-setting pairs; sft/think against grpo/nothink is not one."""
    job = 0
    for algo in ("sft", "grpo"):
        for prompt in ("think", "nothink"):
            overrides = [f"algo={algo}", f"prompt={prompt}", f"seed={job}"]
            answers = {"ct": pattern(20, 8 + 3 * job)}
            predicted_run(tmp_path, str(job), answers, algo=algo, prompt=prompt, overrides=overrides)
            job += 1
    result = report(tmp_path)
    pairs = {(row[1], row[2]): row[0] for row in result.pairs.rows}
    assert pairs == {
        ("algo=sft prompt=think", "algo=sft prompt=nothink"): "prompt",
        ("algo=sft prompt=think", "algo=grpo prompt=think"): "algo",
        ("algo=sft prompt=nothink", "algo=grpo prompt=nothink"): "algo",
        ("algo=grpo prompt=think", "algo=grpo prompt=nothink"): "prompt",
    }


def test_base_rows_pair_with_base_rows_and_trained_with_trained(tmp_path: Path):
    """think_vs_nothink: two base evaluations, two trained runs; a base is never paired with a trained row."""
    for job, (mode, prompt) in enumerate(
        [("eval", "think"), ("eval", "nothink"), ("train", "think"), ("train", "nothink")]
    ):
        answers = {"ct": pattern(20, 6 + 2 * job), "mri": pattern(20, 5 + 3 * job)}
        overrides = [f"mode={mode}", f"prompt={prompt}"]
        predicted_run(tmp_path, str(job), answers, mode=mode, prompt=prompt, overrides=overrides)
    pairs = report(tmp_path).pairs
    assert [(row[0], row[1], row[2]) for row in pairs.rows] == [
        ("prompt", "base: prompt=think", "base: prompt=nothink"),
        ("prompt", "prompt=think", "prompt=nothink"),
    ]


def test_no_pairs_is_said(tmp_path: Path):
    predicted_run(tmp_path, "0", ANSWERS, modality="ct", overrides=["modality=ct", "algo=sft"])
    predicted_run(tmp_path, "1", ANSWERS, modality="mri", overrides=["modality=mri", "algo=grpo"])
    result = report(tmp_path)
    assert result.pairs is None and "pairs.csv" not in result.paths
    assert "None: no two rows differ in exactly one override" in (tmp_path / "comparison.md").read_text()


# --------------------------------------------------------------------------------------------------
# Missing or bad predictions
# --------------------------------------------------------------------------------------------------


def test_a_run_without_predictions_keeps_its_points_without_intervals(tmp_path: Path):
    base_run(tmp_path, "0", ANSWERS)
    run_dir = predicted_run(tmp_path, "1", ANSWERS, modality="ct", overrides=["modality=ct"])
    (run_dir / "eval" / "predictions.jsonl").unlink()
    result = report(tmp_path)
    comparison = result.comparison
    assert comparison.rows[1][1] == pytest.approx(
        mean(ok for oks in ANSWERS.values() for ok in oks), abs=1e-6
    )
    assert comparison.intervals[1] == [None] * len(comparison.columns)
    assert comparison.intervals[0][1] is not None  # the base run still has its own
    assert any(
        "run dir 1: no eval/predictions.jsonl; its row has no intervals." == n for n in comparison.notes
    )
    ct = cell(result, "1", "ct")
    assert ct["accuracy"] == pytest.approx(0.7) and ct["n"] is None and ct["ci_low"] is None
    assert ct["note"] == "no eval/predictions.jsonl"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "eval/predictions.jsonl line 3 is not JSON"),
        ('["a list"]', "eval/predictions.jsonl line 3 is not a JSON object"),
        (
            '{"id": "x", "modality": "ct", "question_type": "disease_diagnosis"}',
            "line 3 has no true/false 'correct'",
        ),
    ],
)
def test_a_malformed_line_is_one_note_naming_file_and_line(tmp_path: Path, line: str, problem: str):
    run_dir = predicted_run(tmp_path, "0", ANSWERS, modality="ct", overrides=["modality=ct"])
    path = run_dir / "eval" / "predictions.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:2], line, *lines[3:]]) + "\n")
    result = report(tmp_path)
    notes = [note for note in result.comparison.notes if problem in note]
    assert len(notes) == 1 and notes[0].startswith("run dir 0: ")
    assert result.comparison.rows[0][1] is not None and result.comparison.intervals[0][1] is None
    assert all(problem in c["note"] for c in result.cells)


def test_predictions_that_disagree_with_the_summary_give_no_interval(tmp_path: Path):
    run_dir = predicted_run(tmp_path, "0", ANSWERS, modality="ct", overrides=["modality=ct"])
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    (run_dir / "eval" / "summary.json").write_text(json.dumps(summary | {"accuracy": 0.5}))
    result = report(tmp_path)
    assert result.comparison.intervals[0][1] is None
    assert any("does not match eval/summary.json" in note for note in result.comparison.notes)


def test_cli_on_a_malformed_file_prints_no_traceback(tmp_path: Path):
    run_dir = predicted_run(tmp_path, "0", ANSWERS, modality="ct", overrides=["modality=ct"])
    (run_dir / "eval" / "predictions.jsonl").write_text('{"id": 1}\n{oops\n')
    completed = run_cli(str(tmp_path), "--no-wandb", "--resamples", "100")
    assert completed.returncode == 0, completed.stderr
    assert "Traceback" not in completed.stderr + completed.stdout
    assert "eval/predictions.jsonl line 2 is not JSON" in completed.stdout
