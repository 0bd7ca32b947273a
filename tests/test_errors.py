"""A wrong input stops `python run.py` with one line on stderr, `error: <what and how to fix it>`, exit
status 2 and no traceback: config typos (unknown option, unknown key, a required value not set, an
override that does not parse), a bad record under on_bad_record=raise, a missing data folder, an unknown
modality. HYDRA_FULL_ERROR=1 still shows the full traceback, and so does a genuine bug."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from medr1.data.records import BadRecordError
from medr1.errors import EXIT_USER_ERROR, closest_keys, one_line, user_message
from tests.helpers.config import REPO, compose_config

FAST = ["logger=none", "eval.reuse=false", "eval.max_new_tokens=4", "eval.before_training=false"]


def run_py(*overrides: str, env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "run.py"), *overrides],
        cwd=cwd,
        env=os.environ | {"MEDR1_CACHE": os.environ["MEDR1_CACHE"]} | (env or {}),
        capture_output=True,
        text=True,
        timeout=600,
    )


def error_line(result: subprocess.CompletedProcess) -> str:
    """The run's error line, after checking it is the only error output and there is no traceback."""
    assert result.returncode == EXIT_USER_ERROR, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Error executing job" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == errors[0]
    return errors[0]


# --- config typos: Hydra's errors as one line with the fix ------------------------------------------


def test_an_unknown_option_lists_the_options_and_the_closest(tmp_path):
    line = error_line(run_py("modality=ctt", f"hydra.run.dir={tmp_path}"))
    assert line.startswith(
        "error: unknown option 'ctt' for modality (did you mean modality=ct?); choose one of all, ct,"
    )
    assert "xray" in line and not (tmp_path / ".hydra").exists()  # stopped before the run started
    line = error_line(run_py("trainer=gpuu"))
    assert "unknown option 'gpuu' for trainer (did you mean trainer=gpu?)" in line and "ddp" in line


def test_an_unknown_key_suggests_the_closest_existing_keys():
    line = error_line(run_py("algo.lerning_rate=1"))
    assert line.startswith("error: unknown config key algo.lerning_rate; did you mean algo.optimizer.lr?")
    assert "+algo.lerning_rate=<value>" in line  # how to add a key on purpose
    assert "did you mean modality?" in error_line(run_py("mdality=ct"))


def test_an_override_that_does_not_parse_names_it():
    line = error_line(run_py("algo.max_prompt_length=[1,2"))
    assert line.startswith("error: cannot read the override 'algo.max_prompt_length=[1,2'")


def stopped_in_process(overrides: list[str], run_dir: Path) -> str:
    """What `python run.py <overrides>` prints, from the task as run.py runs it (no new process: the
    data errors come after the model has loaded, which a new process pays for again)."""
    from medr1.errors import user_errors_exit
    from medr1.main import run

    with pytest.raises(SystemExit) as stopped, user_errors_exit():
        run(compose_config(overrides, run_dir))
    message = stopped.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message
    return message


def test_a_required_value_left_unset_names_the_key_to_set(tmp_path):
    line = stopped_in_process(["mode=eval", "data=omnimedvqa", *FAST], tmp_path)
    assert line == (
        "error: data.root is required and not set (it is ??? in the config): add data.root=<value> to the command line"
    )


def test_hydra_full_error_still_shows_the_traceback():
    result = run_py("algo.lerning_rate=1", env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode == 1 and "Traceback" in result.stderr and "lerning_rate" in result.stderr


def test_a_genuine_bug_keeps_its_traceback(tmp_path):
    boom = "+callbacks.boom={_target_:operator.truediv,_args_:[1,0]}"  # a callback that divides by zero
    result = run_py("data.source.size=5", "trainer.max_steps=1", *FAST, boom, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ZeroDivisionError" in result.stderr
    assert not any(line.startswith("error: ") for line in result.stderr.splitlines())


# --- data: a missing folder, a bad record, an unknown modality ----------------------------------------


def test_a_missing_data_folder_names_the_layout_expected(tmp_path):
    line = stopped_in_process(
        ["mode=eval", "data=omnimedvqa", f"data.root={tmp_path / 'nowhere'}", *FAST], tmp_path
    )
    assert line.startswith(f"error: no OmniMedVQA question files under {tmp_path / 'nowhere'}: expected ")
    assert "Set data.root to the folder that holds QA_information/" in line


@pytest.fixture(scope="module")
def omnimedvqa_with_bad_records(tmp_path_factory) -> Path:
    """The synthetic set as an OmniMedVQA folder, plus bad.json: a record of an unknown modality whose
    question has a line break, and one whose image is missing."""
    source = Path(instantiate(compose_config(["data.source.size=5"]).data.source).root)
    root = tmp_path_factory.mktemp("bad") / "omnimedvqa"
    shutil.copytree(source, root)
    folder = root / "QA_information" / "Open-access"
    good = json.loads(sorted(folder.glob("*.json"))[0].read_text())[0]
    bad = [
        dict(good, question_id="sonar_1", modality_type="Sonar\nImaging", question="Which?\nTraceback"),
        dict(good, question_id="gone_1", image_path="Images/nowhere.png"),
    ]
    (folder / "bad.json").write_text(json.dumps(bad))
    return root


def test_a_bad_record_under_raise_is_one_line_naming_file_record_and_fix(
    omnimedvqa_with_bad_records, tmp_path
):
    root = omnimedvqa_with_bad_records
    line = error_line(
        run_py(
            "mode=eval",
            "data=omnimedvqa",
            f"data.root={root}",
            "data.access=[Open-access]",
            *FAST,
            f"hydra.run.dir={tmp_path}",
        )
    )
    file = root / "QA_information" / "Open-access" / "bad.json"
    assert line.startswith(f"error: {file}: record 'gone_1': missing image file") or line.startswith(
        f"error: {file}: record 'sonar_1': unknown modality: unknown modality 'Sonar\\nImaging'; known: ct, mri,"
    )
    assert line.endswith("set data.on_bad_record=skip to skip such records (they are counted and logged).")
    assert line in (tmp_path / "run.log").read_text()  # the run folder says why it stopped


def test_the_same_records_are_skipped_and_counted_under_skip(omnimedvqa_with_bad_records, tmp_path):
    cfg = compose_config(
        [
            "data=omnimedvqa",
            f"data.root={omnimedvqa_with_bad_records}",
            "data.access=[Open-access]",
            "data.on_bad_record=skip",
        ]
    )
    splits = instantiate(cfg.data.source).load()
    assert splits.skipped == 2 and len(splits.train) + len(splits.test) == 200


def test_an_unknown_training_modality_is_one_line(tmp_path):
    line = stopped_in_process(["mode=eval", "modality.name=sonar", *FAST], tmp_path)
    assert (
        line
        == "error: modality='sonar' is unknown; choose all or one of ct, mri, xray, ultrasound, dermoscopy, fundus, oct, microscopy"
    )


# --- the pieces, in process ----------------------------------------------------------------------------


def composition_error(overrides: list[str]) -> Exception:
    with pytest.raises(Exception) as raised:
        compose_config(overrides)
    return raised.value


def test_user_messages_of_hydra_errors_and_none_for_bugs():
    assert user_message(composition_error(["question_type=lesion"])).startswith(
        "unknown option 'lesion' for question_type (did you mean question_type=lesion_grading?)"
    )
    assert "did you mean algo.optimizer.weight_decay?" in user_message(
        composition_error(["algo.optimizer.weight_decy=0"])
    )
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    trainer = user_message(MisconfigurationException("No supported gpu backend found!"))
    assert trainer.startswith("No supported gpu backend found! (Lightning, about the trainer settings:")
    assert "trainer=cpu runs without a GPU" in trainer
    assert user_message(ZeroDivisionError("x")) is None and user_message(ValueError("not ours")) is None
    assert user_message(KeyError("a")) is None


def test_closest_keys_prefer_the_same_parent_then_familiar_names():
    keys = [
        "algo.optimizer.lr",
        "algo.beta",
        "model.build.warmstart.lr",
        "trainer.max_steps",
        "data.batch_size",
    ]
    assert closest_keys("algo.optimizer.lrr", keys)[0] == "algo.optimizer.lr"
    assert closest_keys("trainer.max_step", keys) == ["trainer.max_steps"]
    assert closest_keys("per_device_train_batch_size", keys) == ["data.batch_size"]
    assert closest_keys("algo.zzz", keys) == []


def test_one_line_escapes_what_would_break_the_line():
    assert one_line("a\nb\r\n  c") == "a b c"
    assert one_line("nul\x00 and \x1b and \ud800") == "nul\\x00 and \\x1b and \\ud800"
    assert one_line("a\u2028b") == "a b"  # a Unicode line separator is a line break too


def fails_on_a_bad_record(records):
    raise BadRecordError("/data/qa.json", "q'7\n", "missing image file: /data/x.png")


def test_a_bad_record_raised_in_a_dataloader_worker_keeps_its_one_line():
    with pytest.raises(BadRecordError) as raised:
        next(iter(DataLoader([1, 2], batch_size=1, num_workers=1, collate_fn=fails_on_a_bad_record)))
    error = raised.value
    assert (error.source, error.record_id, error.problem) == (
        "/data/qa.json",
        "q'7\n",
        "missing image file: /data/x.png",
    )
    assert str(error) == str(BadRecordError("/data/qa.json", "q'7\n", "missing image file: /data/x.png"))
    assert "\n" not in str(error) and user_message(error) == str(error)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.record_id == error.record_id


@pytest.mark.parametrize("mode", ["eval", "predict"])
def test_a_gpu_trainer_on_a_machine_without_one_is_one_line_before_the_model_loads(mode, tmp_path):
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    extra = []
    if mode == "predict":
        from PIL import Image

        Image.new("RGB", (56, 56)).save(tmp_path / "x.png")
        extra = [f"predict.image={tmp_path / 'x.png'}", "predict.question=q", "predict.options=[a,b]"]
    result = run_py(f"mode={mode}", "trainer=gpu", f"hydra.run.dir={tmp_path}", *extra)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: trainer.accelerator=gpu but this machine has no usable CUDA GPU (torch sees none): run with "
        "trainer=cpu, or on a machine with a GPU and a CUDA build of torch"
    ]
    assert "loading model" not in result.stdout + result.stderr
