"""Shortcut probes: shuffled options remap answers and are the same in every run, blank-image batches
keep the prompt tokens, a model that ignores the image has image reliance 0 exactly while the tiny
model's answers move with the image, the letter prior by hand, and `mode=eval eval.probes=[...]`
end to end."""

from __future__ import annotations

import json

import pytest
import torch

from medr1.data.batches import BLANK_GREY, PromptCollator
from medr1.data.records import LETTERS, VQARecord
from medr1.grading import Prediction, evaluate_batches, format_summary, logged_metrics
from medr1.models.checkpoints import resolve_model_path
from medr1.models.loading import load_model, load_processor
from medr1.probes import (
    PROBES,
    check_probes,
    follows_content_and_letter,
    letter_prior,
    option_permutation,
    run_probes,
    shuffle_options,
)
from medr1.rollout import Sampler, greedy
from medr1.sft.module import SFTModule
from tests.helpers.config import SUMMARY_KEYS, compose_config


@pytest.fixture(scope="module")
def tiny():
    cfg = compose_config([])
    path = resolve_model_path(cfg.model, cfg.paths.cache_dir)
    return load_model(cfg.model, path).eval(), load_processor(cfg.model, path)


def one_per_modality(records):
    chosen = {}
    for record in records:
        chosen.setdefault(record.modality, record)
    return list(chosen.values())


def record_with(n_options: int, answer: str, record_id: str = "q") -> VQARecord:
    return VQARecord(
        id=record_id,
        images=("x.png",),
        question="q",
        options={letter: f"option {letter}" for letter in LETTERS[:n_options]},
        answer=answer,
        modality="ct",
        question_type="disease_diagnosis",
        source="test",
    )


# --- names -------------------------------------------------------------------------------------------


def test_unknown_probe_names_fail_at_config_time_in_one_line(tmp_path):
    from medr1.evaluate import evaluate

    assert check_probes(["letter_prior", "blank_image", "letter_prior"]) == ["letter_prior", "blank_image"]
    assert check_probes(None) == []
    cfg = compose_config(
        ["mode=eval", "eval.probes=[blank_image,blank_images]", f"model.path={tmp_path / 'no_model'}"],
        tmp_path,
    )
    with pytest.raises(ValueError) as error:
        evaluate(cfg)  # before the (missing) model is looked for
    message = str(error.value)
    assert "\n" not in message and "'blank_images'" in message
    assert all(name in message for name in PROBES)


# --- shuffled options ----------------------------------------------------------------------------------


def test_shuffled_options_remap_the_answer_and_are_deterministic(synthetic_splits):
    records = synthetic_splits.test + [
        record_with(n, answer, f"made_{n}_{answer}") for n in range(2, 11) for answer in LETTERS[:n]
    ]
    for record in records:
        shuffled, permutation = shuffle_options(record)
        assert set(permutation) == set(permutation.values()) == set(record.options)
        assert list(shuffled.options) == list(record.options)  # letters A, B, ... in order
        for new, old in permutation.items():
            assert new != old  # every option moves, the correct one included
            assert shuffled.options[new] == record.options[old]
        assert shuffled.options[shuffled.answer] == record.options[record.answer]
        assert shuffled.answer != record.answer
        assert shuffle_options(record) == (shuffled, permutation)  # the same in every run
        shuffled.check()
        assert (shuffled.id, shuffled.images, shuffled.question) == (
            record.id,
            record.images,
            record.question,
        )
    # seeded by the id: different questions are shuffled differently
    permutations = {tuple(option_permutation(f"question {i}", 4)) for i in range(50)}
    assert len(permutations) == 9  # all 9 derangements of 4 options occur
    assert option_permutation("x", 1) == [0]


def test_follows_content_and_letter_by_hand():
    record = record_with(3, "A")
    shuffled, permutation = shuffle_options(record)  # a derangement of 3: a cycle
    back = {old: new for new, old in permutation.items()}

    def prediction(rec, parsed):
        return Prediction(
            rec.id, "ct", "x", "", parsed, rec.answer, parsed == rec.answer, True, 0, dict(rec.options)
        )

    main = [
        prediction(record, "B"),
        prediction(record, "B"),
        prediction(record, "C"),
        prediction(record, None),
    ]
    after = [
        prediction(shuffled, back["B"]),  # the same option under its new letter: content
        prediction(shuffled, "B"),  # the same letter, now another option
        prediction(shuffled, None),  # not answered in both: left out
        prediction(shuffled, "A"),  # not answered in both: left out
    ]
    assert follows_content_and_letter(main, after, [permutation] * 4) == (0.5, 0.5)
    assert follows_content_and_letter(main[2:], after[2:], [permutation] * 2) == (None, None)


# --- blank image -------------------------------------------------------------------------------------


def test_blank_image_batches_have_the_same_tokens_and_uniform_pixels(tiny, synthetic_splits):
    _, processor = tiny
    records = one_per_modality(synthetic_splits.test)[:4]
    collator = PromptCollator(processor, "think", resize=84)
    blank = collator.with_blank_images()
    assert not collator.blank_images  # the original collator is unchanged
    real, grey = collator(records), blank(records)
    for key in real.model_inputs:
        assert real.model_inputs[key].shape == grey.model_inputs[key].shape, key
        if key != "pixel_values":
            assert torch.equal(real.model_inputs[key], grey.model_inputs[key]), key
    assert torch.equal(real.images_per_prompt, grey.images_per_prompt)
    # Qwen2-VL patches: [patches, channel x time x 14 x 14]; each channel holds one value (grey, normalised)
    per_channel = grey.model_inputs["pixel_values"].reshape(len(grey.model_inputs["pixel_values"]), 3, -1)
    for channel in range(3):
        assert per_channel[:, channel].unique().numel() == 1
    real_channels = real.model_inputs["pixel_values"].reshape(per_channel.shape)
    assert real_channels[:, 0].unique().numel() > 1  # the real images are not uniform
    for record in records:
        images, greys = collator.record_images(record), blank.record_images(record)
        assert [i.size for i in greys] == [i.size for i in images] == [(84, 84)]  # after the resize
        assert all(i.mode == "RGB" and i.getcolors() == [(84 * 84, BLANK_GREY)] for i in greys)


# --- letter prior -------------------------------------------------------------------------------------


def test_letter_prior_by_hand():
    def prediction(parsed, answer, n_options=4):
        record = record_with(n_options, answer)
        return Prediction("q", "ct", "x", "", parsed, answer, parsed == answer, True, 0, dict(record.options))

    rows = [
        prediction("A", "A"),
        prediction("A", "B"),
        prediction("A", "C"),
        prediction(None, "D"),
        prediction("CT", "A"),
        prediction("E", "B"),
    ]  # "CT": no letter; "E": a letter, not an option
    prior = letter_prior(rows)
    sixth = round(1 / 6, 6)
    assert prior["chosen"] == {"A": 0.5, "B": 0.0, "C": 0.0, "D": 0.0, "E": sixth}
    assert prior["correct"] == {"A": round(2 / 6, 6), "B": round(2 / 6, 6), "C": sixth, "D": sixth, "E": 0.0}
    assert prior["no_answer"] == round(2 / 6, 6)
    # |3-2| + |0-2| + |0-1| + |0-1| + |1-0| over 6, plus no answer 2/6, halved
    assert prior["total_variation"] == round(0.5 * (1 + 2 + 1 + 1 + 1 + 2) / 6, 6)
    assert letter_prior([prediction("B", "B"), prediction("A", "A")])["total_variation"] == 0.0


# --- on the tiny model: an image-blind policy and one that reads ------------------------------------


def image_blind(model):
    """The tiny policy with its vision merger's output weights zeroed: every image token then carries
    the same features (the bias), whatever the image, so the image cannot change an answer."""
    blind = load_model(compose_config([]).model, model.name_or_path).eval()
    with torch.no_grad():
        blind.model.visual.merger.mlp[2].weight.zero_()
    return blind


def probe(model, processor, records, names):
    collator = PromptCollator(processor, "think")
    sampler, sampling = Sampler.for_model(model, processor), greedy(40)
    predictions, summary = evaluate_batches(
        model, [collator(records)], sampler, sampling, progress=False, calibration=True
    )
    rows, summary = run_probes(
        names,
        model=model,
        sampler=sampler,
        sampling=sampling,
        parser="robust",
        records=records,
        collator=collator,
        batch_size=8,
        predictions=predictions,
        summary=summary,
        calibration=True,
        progress=False,
    )
    return predictions, rows, summary


def test_a_model_that_ignores_the_image_has_image_reliance_zero(tiny, synthetic_splits):
    model, processor = tiny
    records = one_per_modality(synthetic_splits.test)
    main, rows, summary = probe(image_blind(model), processor, records, ["blank_image"])
    assert summary["image_reliance"] == summary["probes"]["image_reliance"] == 0.0
    assert summary["probes"]["blank_image"] == {"accuracy": summary["accuracy"], "n": len(records)}
    assert [r["completion"] for r in rows["blank_image"]] == [p.completion for p in main]
    assert [r["option_probs"] for r in rows["blank_image"]] == [p.option_probs for p in main]
    assert any(p.option_probs for p in main)


def test_the_tiny_model_reads_the_image_and_the_probes_agree_with_their_rows(tiny, synthetic_splits):
    model, processor = tiny
    records = one_per_modality(synthetic_splits.test)
    main, rows, summary = probe(
        model, processor, records, ["shuffled_options", "blank_image", "letter_prior"]
    )
    assert summary["image_reliance"] == round(
        summary["accuracy"] - summary["probes"]["blank_image"]["accuracy"], 6
    )
    moved = [
        max(abs(p.option_probs[k] - r["option_probs"][k]) for k in p.option_probs)
        for p, r in zip(main, rows["blank_image"], strict=True)
        if p.option_probs and r["option_probs"]
    ]
    assert moved and max(moved) > 1e-3  # grey instead of the image changes what the tiny model answers
    assert any(p.completion != r["completion"] for p, r in zip(main, rows["blank_image"], strict=True))

    # shuffled rows: the options and answer shown, the original answer and the permutation
    shuffled = rows["shuffled_options"]
    assert [r["id"] for r in shuffled] == [r.id for r in records]
    for row, record in zip(shuffled, records, strict=True):
        assert row["options"][row["answer"]] == record.options[record.answer]
        assert row["original_answer"] == record.answer
        assert {new: row["options"][new] for new in row["permutation"]} == {
            new: record.options[old] for new, old in row["permutation"].items()
        }
    answered = [
        (p, r)
        for p, r in zip(main, shuffled, strict=True)
        if p.parsed in p.options and r["parsed"] in r["options"]
    ]
    result = summary["probes"]["shuffled_options"]
    assert result["n"] == len(records)
    assert result["accuracy"] == pytest.approx(sum(r["correct"] for r in shuffled) / len(records))
    assert result["follows_content"] == pytest.approx(
        sum(r["permutation"][r["parsed"]] == p.parsed for p, r in answered) / len(answered)
    )
    assert result["follows_letter"] == pytest.approx(
        sum(r["parsed"] == p.parsed for p, r in answered) / len(answered)
    )
    assert summary["probes"]["letter_prior"] == letter_prior(main)


def test_module_runs_the_configured_probes_after_its_evaluation(tiny, synthetic_splits):
    """VQAModule.evaluate (calibration) then VQAModule.run_probes, as the final test evaluation runs them."""
    model, processor = tiny
    records = one_per_modality(synthetic_splits.test)[:4]

    class TestData:  # what run_probes reads of the datamodule
        test_records, eval_batch_size, num_workers = records, 4, 0
        eval_collator = PromptCollator(processor, "think")

    module = SFTModule(
        model=model,
        processor=processor,
        optimizer=torch.optim.SGD,
        scheduler={},
        eval_max_new_tokens=40,
        eval_calibration=True,
        eval_probes=["blank_image"],
    )
    predictions, summary = module.evaluate([TestData.eval_collator(records)], progress=False)
    assert "calibration" in summary and "probes" not in summary
    rows, summary = module.run_probes(TestData, predictions, summary, progress=False)
    assert set(rows) == {"blank_image"} and set(summary["probes"]) == {"blank_image", "image_reliance"}
    with pytest.raises(ValueError, match="unknown probe"):
        SFTModule(
            model=model,
            processor=processor,
            optimizer=torch.optim.SGD,
            scheduler={},
            eval_max_new_tokens=40,
            eval_probes=["blank"],
        )


# --- mode=eval end to end --------------------------------------------------------------------------------


def test_mode_eval_with_the_blank_image_probe_writes_the_contract(tmp_path, tiny_path, capsys):
    from medr1.evaluate import evaluate

    run_dir = tmp_path / "run"
    cfg = compose_config(
        [
            "mode=eval",
            "data.source.size=5",
            "data.max_test_per_modality=1",
            "logger=none",
            "eval.reuse=false",
            "eval.probes=[blank_image]",
            f"model.path={tiny_path}",
        ],
        run_dir,
    )
    summary = evaluate(cfg)
    assert summary == json.loads((run_dir / "eval" / "summary.json").read_text())
    assert set(summary) == SUMMARY_KEYS | {"calibration", "probes", "image_reliance"}
    assert set(summary["probes"]) == {"blank_image", "image_reliance"}
    assert set(summary["probes"]["blank_image"]) == {"accuracy", "n"}
    assert set(summary["calibration"]) == {"ece", "n", "bins", "by_modality"}
    assert len(summary["calibration"]["bins"]) == 10
    assert set(summary["calibration"]["bins"][0]) == {"low", "high", "count", "confidence", "accuracy"}
    assert set(summary["calibration"]["by_modality"]) == set(summary["by_modality"])

    lines = [json.loads(line) for line in (run_dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    blank = [
        json.loads(line)
        for line in (run_dir / "eval" / "probes" / "blank_image.jsonl").read_text().splitlines()
    ]
    assert len(lines) == len(blank) == summary["n"] == summary["probes"]["blank_image"]["n"] == 8
    assert [row["id"] for row in blank] == [row["id"] for row in lines]
    assert set(blank[0]) == set(lines[0])
    assert not (run_dir / "eval" / "probes" / "shuffled_options.jsonl").exists()
    assert summary["probes"]["blank_image"]["accuracy"] == pytest.approx(sum(r["correct"] for r in blank) / 8)
    assert (
        summary["image_reliance"]
        == summary["probes"]["image_reliance"]
        == round(summary["accuracy"] - summary["probes"]["blank_image"]["accuracy"], 6)
    )
    for row in lines:
        assert row["images"] and all(path.endswith(".png") for path in row["images"])
        if row["option_probs"] is not None:
            assert list(row["option_probs"]) == list(row["options"])
            assert sum(row["option_probs"].values()) == pytest.approx(1.0, abs=1e-5)
            assert row["confidence"] == row["option_probs"][row["parsed"]]
    assert summary["calibration"]["n"] == sum(row["confidence"] is not None for row in lines)

    printed = capsys.readouterr().out
    assert "probe blank_image" in printed and "image reliance" in printed and "ECE" in printed
    assert format_summary(summary).split("\n", 1)[1] in printed  # the table under its title
    metrics = logged_metrics(summary)
    assert metrics["test/probes/blank_image/accuracy"] == summary["probes"]["blank_image"]["accuracy"]
    assert metrics["test/image_reliance"] == summary["image_reliance"]
    assert metrics["test/ece"] == summary["calibration"]["ece"]
    assert metrics["test/accuracy"] == summary["accuracy"]
