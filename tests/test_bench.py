"""`make bench` (medr1.bench): the medr1-vs-TRL harness end to end at tiny sizes, its JSON, the "both
trained" check, the phase split, and that medr1 imports without TRL."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time

import pytest

from medr1.bench.common import (
    BenchSettings,
    character_variety_reward,
    compose_bench_config,
    write_data_folder,
)
from medr1.bench.compare import ratios
from medr1.profiling import PhaseTimer

HAS_TRL = importlib.util.find_spec("trl") is not None
PHASES = ("rollout", "reference", "policy", "optimizer")
# the bench model (random weights: its completions differ, so GRPO has a signal), 56 px images (4 image tokens), 2 prompts x G=2, 6-token completions, 1 warm-up + 1 timed step
TINY = [
    "--model", "bench", "--prompts", "2", "--generations", "2", "--completion-tokens", "6",
    "--image-size", "56", "--warmup", "1", "--steps", "1", "--threads", "1", "--no-shared-prompt",
]  # fmt: skip


@pytest.fixture(scope="module")
def bench_result(tmp_path_factory):
    """Both sides run in this process (the harness runs each in a child process of its own: that path
    is the slow test below), as compare.benchmark puts their results together."""
    import torch

    from medr1.bench import medr1_side

    root = write_data_folder(tmp_path_factory.mktemp("bench-data"), 56)
    # 4 prompts: the 8 training records make 2 batches an epoch, so the third (FLOP-counted) step is in
    # the next epoch: steps are counted across epochs
    settings = BenchSettings(
        data_root=str(root),
        model="bench",
        prompts=4,
        generations=2,
        completion_tokens=6,
        image_size=56,
        steps=1,
        threads=1,
    )
    threads = torch.get_num_threads()
    try:
        result = {"medr1": medr1_side.run(settings)}
        if HAS_TRL:
            from medr1.bench import trl_side

            result["trl"] = trl_side.run(settings)
            result["ratios"] = ratios(result["medr1"], result["trl"])
    finally:
        torch.set_num_threads(threads)
    return result


def sides(result: dict) -> list[dict]:
    return [result["medr1"]] + ([result["trl"]] if HAS_TRL else [])


# --- fast pieces, no model ----------------------------------------------------------------------


def test_phase_timer_books_each_wrapped_call_in_its_step():
    class Work:
        def slow(self, seconds):
            time.sleep(seconds)
            return seconds

    work, timer = Work(), PhaseTimer()
    timer.wrap(work, "slow", lambda args, kwargs: None if args[0] == 0 else "rollout")
    timer.begin()
    assert work.slow(0.02) == 0.02 and work.slow(0) == 0  # the second call is not timed
    timer.end(keep=True)
    timer.begin()
    work.slow(0.01)
    timer.end(keep=False)  # a warm-up step: not kept
    (step,) = timer.steps
    assert 0.02 <= step["rollout"] <= step["step_s"] < 1.0


def test_ratios_are_medr1_over_trl():
    ours = {"samples_per_s": 8.0, "completion_tokens_per_s": 100.0, "step_s": 2.0, "peak_rss_mb": 500.0}
    theirs = {"samples_per_s": 2.0, "completion_tokens_per_s": 50.0, "step_s": 8.0, "peak_rss_mb": 1000.0}
    r = ratios(ours, theirs)
    assert (r["samples_per_s"], r["completion_tokens_per_s"], r["step_s"], r["peak_rss"]) == (
        4.0,
        2.0,
        0.25,
        0.5,
    )


def test_bench_reward_varies_with_the_text():
    assert character_variety_reward(["aaaa", "abcd", ""]) == [0.25, 1.0, 0.0]


def test_data_folder_gives_identical_prompts_through_medr1s_reader(tmp_path):
    from hydra.utils import instantiate

    settings = BenchSettings(data_root=str(write_data_folder(tmp_path, 56)), model="tiny", prompts=2)
    cfg = compose_bench_config(settings)
    splits = instantiate(cfg.data.source).load()
    assert len(splits.train) == 8 and len(splits.test) == 2
    assert {(r.question, tuple(r.options.values()), r.answer) for r in splits.train} == {
        ("Which imaging modality is this?", ("CT", "MRI", "X-ray", "Ultrasound"), "A")
    }
    assert (
        cfg.algo.loss_agg == "seq_mean_token_mean" and cfg.data.batch_size == 2 and cfg.model.name == "tiny"
    )


def test_medr1_imports_without_trl():
    """TRL is a benchmark extra: medr1, its training path and the bench harness import without it."""
    code = (
        "import sys; sys.modules['trl'] = None\n"  # any `import trl` now raises ImportError
        "import medr1.train, medr1.rl.module, medr1.bench.compare, medr1.bench.medr1_side\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.skipif(not HAS_TRL, reason="trl not installed (pip install -e '.[bench]')")
def test_trl_config_matches_medr1_settings(tmp_path):
    from medr1.bench.trl_side import grpo_config

    settings = BenchSettings(
        data_root=str(tmp_path), model="tiny", prompts=2, generations=4, completion_tokens=16
    )
    cfg = compose_bench_config(settings)
    args = grpo_config(cfg, settings, str(tmp_path / "out"), banned_ids=[3, 4])
    assert args.per_device_train_batch_size == 8 and args.num_generations == 4
    assert (args.steps_per_generation, args.gradient_accumulation_steps, args.num_iterations) == (1, 1, 1)
    assert (args.loss_type, args.scale_rewards, args.beta, args.max_completion_length) == (
        "grpo",
        "group",
        0.04,
        16,
    )
    assert (args.learning_rate, args.adam_beta2, args.weight_decay, args.optim) == (
        1e-6,
        0.999,
        0.0,
        "adamw_torch",
    )
    assert (args.top_k, args.gradient_checkpointing, args.use_bias_correction_kl, args.use_vllm) == (
        50,
        False,
        False,
        False,
    )
    assert args.use_cpu and not args.bf16 and args.max_steps == settings.total_steps


# --- both sides at tiny sizes ---------------------------------------------------------------------


def test_both_sides_report_the_figures(bench_result):
    for side in sides(bench_result):
        assert "error" not in side, side.get("error")
        for key in (
            "samples_per_s",
            "completion_tokens_per_s",
            "step_s",
            "phases_s",
            "peak_rss_mb",
            "flop_per_s",
        ):
            assert side[key] is not None, key
        assert side["timed_steps"] == 1 and side["threads"] == 1
        assert side["samples_per_s"] == pytest.approx(8 / side["step_s"])  # B*G = 8 completions per step
        assert 8 <= side["completion_tokens_per_step"] <= 8 * 6
        assert side["peak_rss_mb"] > 100 and side["flops_per_step"] > 0
    if HAS_TRL:
        assert set(bench_result["ratios"]) >= {"samples_per_s", "peak_rss", "step_s"}
        assert bench_result["ratios"]["samples_per_s"] == pytest.approx(
            bench_result["medr1"]["samples_per_s"] / bench_result["trl"]["samples_per_s"]
        )
        assert bench_result["medr1"]["prompt_tokens"] == bench_result["trl"]["prompt_tokens"]  # same prompts
        assert (
            bench_result["trl"]["settings_seen"]["stop_ids"]
            == bench_result["trl"]["settings_seen"]["medr1_stop_ids"]
        )


def test_both_sides_trained(bench_result):
    for side in sides(bench_result):
        trained = side["trained"]
        assert (
            trained["loss_finite"] and trained["updates"] == side["optimizer_steps"] == 3
        )  # warm-up, timed, FLOPs
        assert trained["max_abs_change"] > 0 and trained["tensors_changed"] > trained["tensors"] // 2


def test_phase_times_sum_to_no_more_than_the_step(bench_result):
    for side in sides(bench_result):
        for step in side["steps"]:
            parts = [step.get(phase, 0.0) for phase in PHASES]
            assert all(part > 0 for part in parts), (side["framework"], step)  # beta > 0: a reference pass
            assert sum(parts) <= step["step_s"] + 1e-6
            assert step.get("rollout_prefill", 0.0) <= step["rollout"]
        assert side["phases_s"]["other"] >= -1e-6
    assert bench_result["medr1"]["steps"][0]["rollout_prefill"] > 0


@pytest.mark.slow
def test_make_bench_writes_the_json(tmp_path):
    """The harness end to end: each side in its own process, the shared-prompt comparisons, the JSON."""
    from medr1.bench.compare import main

    path = tmp_path / "result.json"
    args = [a for a in TINY if a != "--no-shared-prompt"]
    main([*args, "--json", str(path)] + ([] if HAS_TRL else ["--no-trl"]))
    result = json.loads(path.read_text())
    assert result["machine"]["matmul_peak"]["flop_per_s"] > 1e8
    assert result["settings"]["generations"] == 2 and result["medr1"]["trained"]["loss_finite"]
    assert result["shared_prompt"]["rollout"]["greedy_tokens_identical"]
    assert "rollout_vs_generate_met" in result["targets"]
    if HAS_TRL:
        assert result["trl"]["trained"]["max_abs_change"] > 0
        assert set(result["ratios"]) >= {"samples_per_s", "peak_rss", "step_s"}
        assert "samples_per_s_ratio_met" in result["targets"]


def test_shared_prompt_comparison_runs_and_agrees(tmp_path):
    from medr1.bench import shared_prompt

    settings = BenchSettings(
        data_root=str(write_data_folder(tmp_path, 56)),
        model="tiny",
        generations=2,
        completion_tokens=6,
        steps=1,
    )
    result = shared_prompt.run(settings)
    assert result["rollout"]["greedy_tokens_identical"]
    assert result["training"]["max_abs_logprob_difference"] < 1e-3
    assert result["rollout"]["speedup"] > 0 and result["training"]["speedup"] > 0


@pytest.mark.slow
def test_sweep_table_has_a_row_per_point(tmp_path):
    from medr1.bench.compare import main

    path = tmp_path / "sweep.json"
    args = [
        *TINY,
        "--sweep-only",
        "--sweep-generations",
        "2,4",
        "--sweep-sizes",
        "56",
        "--no-trl",
        "--json",
        str(path),
    ]
    rows = json.loads(path.read_text())["sweep"] if main(args) else []
    assert [(r["image_size"], r["generations"], r["framework"]) for r in rows] == [
        (56, 2, "medr1"),
        (56, 4, "medr1"),
    ]
    assert all(r["prefill_s"]["rollout_prefill"] > 0 for r in rows)


def test_figures_are_the_median_step_s_and_rounds_pool_their_steps():
    """A step slowed by a burst of load on a shared machine moves nothing: each side's figures are its
    median timed step (and that step's phases), over all its alternating rounds."""
    from medr1.bench.common import BenchSettings, summarise
    from medr1.bench.compare import pool_rounds

    settings = BenchSettings(data_root="", prompts=2, generations=4)

    def step(seconds: float) -> dict:
        return {"step_s": seconds, "rollout": seconds / 2, "policy": seconds / 4, "completion_tokens": 64}

    one = summarise([step(2.0), step(30.0), step(3.0)], settings, flops=8_000)
    assert (one["step_s"], one["step_s_min"], one["step_s_mean"]) == (3.0, 2.0, pytest.approx(35 / 3))
    assert one["samples_per_s"] == 8 / 3.0 and one["completion_tokens_per_s"] == 64 / 3.0
    assert one["phases_s"]["rollout"] == 1.5 and one["phases_s"]["other"] == pytest.approx(0.75)
    assert one["flop_per_s"] == 8_000 / 3.0

    trained = {"loss_finite": True, "tensors_changed": 10, "tensors": 10}
    rounds = [
        {
            "steps": [step(2.0), step(30.0)],
            "step_s": 16.0,
            "peak_rss_mb": 900.0,
            "flops_per_step": None,
            "trained": trained,
        },
        {
            "steps": [step(4.0), step(3.0)],
            "step_s": 3.5,
            "peak_rss_mb": 950.0,
            "flops_per_step": 8_000,
            "trained": trained | {"loss_finite": False},
        },
    ]
    pooled = pool_rounds(rounds, settings)
    assert pooled["rounds"] == 2 and pooled["timed_steps"] == 4 and pooled["step_s"] == 3.0  # of 2, 3, 4, 30
    assert pooled["peak_rss_mb"] == 950.0 and pooled["trained"]["loss_finite"] is False
    assert pool_rounds([rounds[0], {"error": "boom"}], settings) == {"error": "boom"}
