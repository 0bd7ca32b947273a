"""`mode=predict` end to end on the tiny model: one question, CSV and JSONL batches, a training run's
final/ folder, the same answers as evaluation, and one-line errors for wrong inputs."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

from medr1.evaluate import evaluate
from medr1.main import run
from medr1.predict import predict, sampling_of
from medr1.rollout import greedy
from medr1.train import train
from tests.helpers.config import FAST, REPO, compose_config
from tests.helpers.scans import volume_pattern, write_nifti, write_series

ANSWER_KEYS = {
    "id",
    "image",
    "images",
    "question",
    "options",
    "completion",
    "reasoning",
    "answer",
    "answer_text",
}
SHORT = ["algo.max_completion_length=48"]  # eval.max_new_tokens follows it: short completions, fast tests


def predict_config(run_dir: Path, *overrides: str):
    return compose_config(["mode=predict", *SHORT, *overrides], run_dir)


def options_override(texts) -> str:
    return "predict.options=[" + ",".join(f"'{text}'" for text in texts) + "]"


def one_question(record) -> list[str]:
    """Overrides that ask `record`'s question about its image."""
    return [
        f"predict.image='{record.images[0]}'",
        f"predict.question='{record.question}'",
        options_override(record.options.values()),
    ]


def answer_line(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("answer:"))


def check_answer(row: dict) -> None:
    """A predictions.jsonl line (or Answer) is whole and consistent: the letter is an option's."""
    assert set(row) == ANSWER_KEYS
    assert row["completion"] and row["reasoning"]
    if row["answer"] is None:
        assert row["answer_text"] is None
    else:
        assert row["answer_text"] == row["options"][row["answer"]]


def test_one_question_prints_reasoning_and_an_answer_among_the_options(tmp_path, synthetic_splits, capsys):
    record = synthetic_splits.test[0]
    run(predict_config(tmp_path, *one_question(record)))
    output = capsys.readouterr().out
    assert f"question:  {record.question}" in output
    assert "options:   " + ", ".join(f"{k}) {v}" for k, v in record.options.items()) in output
    reasoning = next(line for line in output.splitlines() if line.startswith("reasoning:"))
    assert reasoning.removeprefix("reasoning:").strip()
    letter, _, text = answer_line(output).removeprefix("answer:").strip().partition(") ")
    assert record.options[letter] == text  # a letter among the options, with its text
    assert not (tmp_path / "predictions.jsonl").exists()  # one question: printed, no file


@pytest.mark.parametrize("scan", ["dicom_series", "nifti"])
def test_a_dicom_series_or_a_nifti_volume_is_asked_about_as_its_slices(tmp_path, scan, capsys):
    """Files written by pydicom / nibabel: the model sees image.slices slices of one prompt."""
    if scan == "dicom_series":
        path = write_series(tmp_path / "series", [-1000, -600, 40, 400, 1000, 60])
    else:
        path = write_nifti(tmp_path / "volume.nii.gz", volume_pattern((16, 16, 9)))
    overrides = [
        f"predict.image='{path}'",
        "predict.question='Which tissue is brightest?'",
        options_override(["Air", "Lung", "Bone"]),
        "image.window=bone",
        "image.slices=3",
        f"predict.output='{tmp_path / 'answers.jsonl'}'",
    ]
    run(predict_config(tmp_path, *overrides))
    output = capsys.readouterr().out
    assert f"{path} (3 slices)" in output
    row = json.loads((tmp_path / "answers.jsonl").read_text())
    check_answer(row)
    assert row["images"] == 3 and row["image"] == str(path)


def test_greedy_predict_gives_evaluations_completions(tmp_path):
    """The same questions through mode=eval and mode=predict (an eval template, same batches): the same
    completions and the same letters."""
    shared = [*SHORT, "data.source.size=5", "data.max_test_per_modality=1", "eval.prompt=medr1_eval_think"]
    eval_cfg = compose_config(["mode=eval", "eval.reuse=false", *shared], tmp_path / "eval_run")
    evaluate(eval_cfg)
    rows = [json.loads(line) for line in (tmp_path / "eval_run" / "eval" / "predictions.jsonl").open()]
    records = {r.id: r for r in instantiate(eval_cfg.data.source).load().test}
    batch = tmp_path / "questions.jsonl"
    with open(batch, "w") as f:
        for row in rows:  # evaluation's order, in one batch (data.eval_batch_size holds all 8): same padding
            record = records[row["id"]]
            question = {"id": row["id"], "image": record.images[0], "question": record.question}
            f.write(json.dumps(question | {"options": list(record.options.values())}) + "\n")
    answers = predict(
        compose_config(
            ["mode=predict", *shared, f"predict.input={batch}", f"predict.batch_size={len(rows)}"],
            tmp_path / "predict_run",
        )
    )
    assert len(rows) == 8
    assert [a.id for a in answers] == [row["id"] for row in rows]
    assert [a.completion for a in answers] == [row["completion"] for row in rows]
    assert [a.answer for a in answers] == [row["parsed"] for row in rows]  # robust reads letters only


def copy_images(records, folder: Path) -> list[Path]:
    """Each record's image copied to folder/images/scan <i>.png (a relative path with a space)."""
    (folder / "images").mkdir(parents=True)
    copies = [folder / "images" / f"scan {i}.png" for i in range(len(records))]
    for record, copy in zip(records, copies, strict=True):
        shutil.copy(record.images[0], copy)
    return copies


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_batch_file_writes_one_line_per_question_with_paths_resolved(
    tmp_path, synthetic_splits, kind, capsys
):
    records = synthetic_splits.test[:3]
    folder = tmp_path / "questions"
    images = copy_images(records, folder)
    batch = folder / f"batch.{kind}"
    if kind == "csv":  # no id column (ids are the row numbers), options as "a|b|c", output named
        with open(batch, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "question", "options"])
            for i, record in enumerate(records):
                writer.writerow([f"images/scan {i}.png", record.question, "|".join(record.options.values())])
        ids, output = ["1", "2", "3"], tmp_path / "out" / "answers.jsonl"
        overrides = [f"predict.output={output}"]
    else:  # ids, options as lists, a blank line, output in the run dir
        lines = [
            json.dumps(
                {
                    "id": f"q{i}",
                    "image": f"images/scan {i}.png",
                    "question": r.question,
                    "options": list(r.options.values()),
                }
            )
            for i, r in enumerate(records)
        ]
        batch.write_text("\n".join([lines[0], "", *lines[1:]]) + "\n")
        ids, output = ["q0", "q1", "q2"], tmp_path / "run" / "predictions.jsonl"
        overrides = []
    predict(predict_config(tmp_path / "run", f"predict.input='{batch}'", "predict.batch_size=2", *overrides))
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [row["id"] for row in rows] == ids
    for row, record, image in zip(rows, records, images, strict=True):
        check_answer(row)
        assert row["image"] == str(image.resolve())
        assert row["question"] == record.question
        assert row["options"] == record.options
    assert [
        p.name for p in output.parent.iterdir() if p.name.endswith(".tmp")
    ] == []  # no temporary file left
    captured = capsys.readouterr()
    assert f"wrote 3 answer(s) to {output}" in captured.out
    assert sum(line.startswith("answer:") for line in captured.out.splitlines()) == 3
    assert "3/3" in captured.err  # the progress bar counts questions


def test_sampling_settings_are_evaluations_or_algos():
    cfg = compose_config(["mode=predict", "eval.max_new_tokens=77"])
    assert sampling_of(cfg) == greedy(77)  # evaluation's decoding
    sampled = sampling_of(compose_config(["mode=predict", "predict.do_sample=true", "algo.temperature=0.7"]))
    assert (sampled.do_sample, sampled.temperature, sampled.max_new_tokens) == (
        True,
        0.7,
        cfg.algo.max_completion_length,
    )
    assert (sampled.top_p, sampled.top_k) == (cfg.algo.top_p, cfg.algo.top_k)
    assert (
        sampling_of(compose_config(["mode=predict", "predict.do_sample=true", "algo=sft"])).temperature == 1.0
    )


# --- a training run's final/ folder ----------------------------------------------------------------


@pytest.fixture(scope="module")
def final_folder(tmp_path_factory) -> Path:
    """checkpoints/final of a two-step tiny GRPO run."""
    run_dir = tmp_path_factory.mktemp("train_run")
    train(compose_config([*FAST, *SHORT, "trainer.max_steps=2", "data.max_test_per_modality=1"], run_dir))
    return run_dir / "checkpoints" / "final"


def test_predict_loads_a_training_runs_final_folder(tmp_path, final_folder, synthetic_splits, caplog):
    caplog.set_level(logging.INFO, logger="medr1")
    record = synthetic_splits.test[1]
    answers = predict(predict_config(tmp_path, f"model.path={final_folder}", *one_question(record)))
    assert f"from {final_folder}" in caplog.text
    assert len(answers) == 1 and answers[0].options == record.options
    check_answer(vars(answers[0]))


def run_py(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "run.py"), "mode=predict", *SHORT, *overrides],
        cwd=REPO,
        env={**os.environ, "MEDR1_CACHE": os.environ["MEDR1_CACHE"]},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_run_py_answers_a_question_about_an_image_with_a_final_folder(
    tmp_path, final_folder, synthetic_splits
):
    image = copy_images(synthetic_splits.test[:1], tmp_path)[0]
    result = run_py(
        f"model.path={final_folder}",
        f"predict.image={image}",
        "predict.question=Which imaging modality is this?",  # quoted once by the shell, as users type it
        "predict.options=[CT,MRI,X-ray,Ultrasound]",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "question:  Which imaging modality is this?" in result.stdout
    assert "options:   A) CT, B) MRI, C) X-ray, D) Ultrasound" in result.stdout
    assert answer_line(result.stdout)


# --- wrong inputs: one line, non-zero exit ---------------------------------------------------------


# case -> (overrides, what the one-line error says); {dir} is the test's folder of bad files, {image} an image
BAD_INPUTS = {
    "neither": ([], "mode=predict needs a question"),
    "both": (["predict.image={image}", "predict.input={dir}/empty.jsonl"], "not both"),
    "no image": (
        ["predict.image=''", "predict.question=Which?", "predict.options=[CT,MRI]"],
        "no image given",
    ),
    "no question": (["predict.image={image}", "predict.options=[CT,MRI]"], "no question given"),
    "one option": (
        ["predict.image={image}", "predict.question=Which?", "predict.options=[CT]"],
        "1 option(s) given",
    ),
    "empty option": (
        ["predict.image={image}", "predict.question=Which?", "predict.options='CT||MRI'"],
        "option 2 is empty",
    ),
    "missing image": (
        ["predict.image=nowhere.png", "predict.question=Which?", "predict.options=[CT,MRI]"],
        "missing image file",
    ),
    "unreadable image": (
        ["predict.image={dir}/broken.png", "predict.question=Which?", "predict.options=[CT,MRI]"],
        "unreadable image file",
    ),
    "missing input": (["predict.input={dir}/nowhere.csv"], "no such file"),
    "model folder": (
        ["model.path={dir}", "predict.image={image}", "predict.question=Which?", "predict.options=[CT,MRI]"],
        "is a local path without a config.json",
    ),
    "file type": (["predict.input={dir}/questions.txt"], "unknown file type '.txt'"),
    "empty file": (["predict.input={dir}/empty.jsonl"], "no questions in the file"),
    "bad JSONL line": (["predict.input={dir}/bad_json.jsonl"], "bad_json.jsonl:2: malformed JSON"),
    "JSONL image": (["predict.input={dir}/missing_image.jsonl"], "missing_image.jsonl:1: missing image file"),
    "CSV fields": (["predict.input={dir}/extra_field.csv"], "extra_field.csv:3: more fields"),
    "CSV header": (["predict.input={dir}/no_options.csv"], "no_options.csv:1: the header has no options"),
    "CSV options": (["predict.input={dir}/one_option.csv"], "one_option.csv:2: 1 option(s) given"),
    "CSV quote": (["predict.input={dir}/open_quote.csv"], "open_quote.csv:2: malformed CSV"),
}


def bad_input(case: str, folder: Path, image: str) -> tuple[list[str], str]:
    """The overrides and expected message of `case`, its bad files written to `folder`."""
    good = json.dumps({"image": image, "question": "Which?", "options": ["CT", "MRI"]})
    (folder / "bad_json.jsonl").write_text(good + "\n" + '{"image": "x.png", "question": \n')
    (folder / "missing_image.jsonl").write_text(good.replace(image, "nowhere.png") + "\n")
    (folder / "extra_field.csv").write_text(
        f"image,question,options\n{image},Which?,CT|MRI\n{image},A, B?,CT|MRI\n"
    )
    (folder / "no_options.csv").write_text("image,question\n")
    (folder / "one_option.csv").write_text(f"image,question,options\n{image},Which?,CT\n")
    (folder / "open_quote.csv").write_text(f'image,question,options\n{image},"Which?,CT|MRI\n')
    (folder / "questions.txt").write_text("")
    (folder / "broken.png").write_text("not a picture")
    (folder / "empty.jsonl").write_text("\n")
    overrides, expected = BAD_INPUTS[case]
    return [o.format(dir=folder, image=f"'{image}'") for o in overrides], expected


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_a_wrong_input_stops_with_one_line_naming_it(tmp_path, synthetic_splits, case):
    overrides, expected = bad_input(case, tmp_path, synthetic_splits.test[0].images[0])
    with pytest.raises(SystemExit) as stopped:
        run(predict_config(tmp_path, *overrides))
    message = str(stopped.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert expected in message


def test_run_py_prints_the_error_line_without_a_traceback(tmp_path, synthetic_splits):
    """The CLI shows the same line alone on stderr (every case above raises it the same way)."""
    overrides, expected = bad_input("bad JSONL line", tmp_path, synthetic_splits.test[0].images[0])
    result = run_py(*overrides, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr


def test_a_question_over_the_prompt_limit_stops_before_any_batch(tmp_path, synthetic_splits):
    """A 6,000-word question is refused by its measured length, with the limit and the fix."""
    record = synthetic_splits.test[0]
    overrides = one_question(record)
    overrides[1] = "predict.question='" + " ".join(["lesion"] * 6000) + "?'"
    with pytest.raises(SystemExit) as stopped:
        run(predict_config(tmp_path, *overrides, "algo.max_prompt_length=1024"))
    message = str(stopped.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert "prompt too long" in message and "algo.max_prompt_length=1024" in message
    assert not (tmp_path / "predictions.jsonl").exists()
