"""`make bench` (`python -m medr1.bench`): medr1 against TRL's GRPOTrainer, side by side in one run.

Both run the same GRPO settings on the same checkpoint (`model=bench`), records and images, each in its
own process: steady-state samples/s, completion tokens/s, s/step split into rollout / reference /
policy forward+backward / optimiser, peak RSS, achieved FLOP/s against the measured fp32 matmul peak,
and the medr1/TRL ratios; both checked to have trained. The shared-prompt comparisons (rollout vs
`generate()`, shared vs repeated training forward) run too. `--sweep` times G x image size.
Results go to a JSON file (docs/bench.md). Machines here are shared and noisy: read the ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path

from medr1.bench.common import BenchSettings, summarise, write_data_folder
from medr1.profiling import matmul_peak

TARGETS = {"samples_per_s_ratio": 4.0, "rollout_vs_generate": 2.0}  # issue 14, item 2


def run_side(kind: str, settings: BenchSettings, workdir: Path, round_: int = 0) -> dict:
    """One side in a child process; its result, or {"error": ...} with the end of its output."""
    tag = f"{kind}-G{settings.generations}-px{settings.image_size}-r{round_}"
    settings_path, result_path = workdir / f"{tag}.settings.json", workdir / f"{tag}.json"
    settings.save(settings_path)
    started = time.perf_counter()
    print(f"  running {kind} (G={settings.generations}, {settings.image_size}px) ...", end="", flush=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
    child = subprocess.run(
        [sys.executable, "-m", "medr1.bench.worker", kind, str(settings_path), str(result_path)],
        capture_output=True,
        text=True,
        env=env,
    )
    print(f" {time.perf_counter() - started:.0f} s", flush=True)
    if child.returncode != 0:
        tail = "\n".join((child.stderr or child.stdout).strip().splitlines()[-15:])
        print(f"  {kind} failed:\n{tail}", flush=True)
        return {"framework": kind, "error": tail}
    return json.loads(result_path.read_text())


def run_rounds(kinds: list[str], settings: BenchSettings, workdir: Path, rounds: int) -> dict[str, dict]:
    """Each side run `rounds` times, alternately (medr1, TRL, medr1, TRL, ...): on a shared machine a
    burst of load then falls on both sides' rounds rather than on one side. Each side's figures are
    then those of its median timed step over all its rounds (common.summarise); its peak RSS the
    highest, "trained" required of every round."""
    results: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for round_ in range(rounds):
        for kind in kinds:
            results[kind].append(run_side(kind, settings, workdir, round_))
    return {kind: pool_rounds(runs, settings) for kind, runs in results.items()}


def pool_rounds(runs: list[dict], settings: BenchSettings) -> dict:
    """One side's rounds as one result (the first error, if a round failed)."""
    failed = [run for run in runs if "error" in run]
    if failed:
        return failed[0]
    if len(runs) == 1:
        return runs[0]
    steps = [step for run in runs for step in run["steps"]]
    flops = next((run["flops_per_step"] for run in runs if run.get("flops_per_step")), None)
    trained = [run["trained"] for run in runs]
    return {
        **runs[0],
        **summarise(steps, settings, flops),
        "rounds": len(runs),
        "steps": steps,
        "round_step_s": [run["step_s"] for run in runs],
        "peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
        "trained": {
            **trained[0],
            "loss_finite": all(t["loss_finite"] for t in trained),
            "tensors_changed": min(t["tensors_changed"] for t in trained),
        },
    }


def ratios(ours: dict, theirs: dict) -> dict:
    """medr1 / TRL for throughput (higher is better for medr1) and memory and step time (lower is)."""

    def ratio(key):
        return ours[key] / theirs[key] if theirs.get(key) else None

    return {
        "samples_per_s": ratio("samples_per_s"),
        "completion_tokens_per_s": ratio("completion_tokens_per_s"),
        "step_s": ratio("step_s"),
        "peak_rss": ratio("peak_rss_mb"),
        "flop_per_s": ratio("flop_per_s") if ours.get("flop_per_s") and theirs.get("flop_per_s") else None,
        "flops_per_step": ratio("flops_per_step") if ours.get("flops_per_step") else None,
    }


# --- printing ------------------------------------------------------------------------------------


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_comparison(result: dict) -> None:
    ours, theirs, peak = result["medr1"], result.get("trl"), result["machine"]["matmul_peak"]["flop_per_s"]
    settings = result["settings"]
    sides = [("medr1", ours)] + ([("TRL", theirs)] if theirs and "error" not in theirs else [])
    print(
        f"\nGRPO step, {settings['prompts']} prompts x G={settings['generations']}, "
        f"{ours.get('prompt_tokens')}-token prompts ({settings['image_size']}px images), completions <= "
        f"{settings['completion_tokens']} tokens, {ours.get('threads')} threads; the median of "
        f"{ours.get('timed_steps')} timed steps ({ours.get('rounds', 1)} rounds per side, alternating, each "
        f"after {settings['warmup']} warm-up; shared, noisy machine: read the ratios)"
    )
    header = (
        f"{'':28}" + "".join(f"{name:>12}" for name, _ in sides) + ("   medr1/TRL" if len(sides) > 1 else "")
    )
    print(header)

    def row(label, get, spec=".2f", ratio=True):
        values = [get(side) for _, side in sides]
        text = f"{label:28}" + "".join(f"{_fmt(v, spec):>12}" for v in values)
        if len(values) > 1 and ratio and values[0] is not None and values[1]:
            text += f"{values[0] / values[1]:>11.2f}x"
        print(text)

    row("samples/s (completions)", lambda s: s["samples_per_s"])
    row("completion tokens/s", lambda s: s["completion_tokens_per_s"], ".1f")
    row("completion tokens/step", lambda s: s["completion_tokens_per_step"], ".0f")
    row("s/step", lambda s: s["step_s"], ".3f")
    for phase, label in (
        ("rollout", "  rollout"),
        ("reference", "  reference"),
        ("policy", "  policy fwd+bwd"),
        ("optimizer", "  optimiser"),
        ("other", "  other (data, reward, ...)"),
    ):
        row(label, lambda s, p=phase: s["phases_s"].get(p), ".3f")
    row("  image+prompt fwd in rollout", lambda s: s["prefill_s"].get("rollout_prefill"), ".3f")
    row("peak RSS (MB)", lambda s: s["peak_rss_mb"], ".0f")
    row("GFLOP per step", lambda s: s["flops_per_step"] and s["flops_per_step"] / 1e9, ".1f")
    row("achieved GFLOP/s", lambda s: s["flop_per_s"] and s["flop_per_s"] / 1e9, ".2f")
    row(
        "  % of fp32 matmul peak",
        lambda s: s["flop_per_s"] and 100 * s["flop_per_s"] / peak,
        ".1f",
        ratio=False,
    )
    for name, side in sides:
        trained = side["trained"]
        print(
            f"trained {name:6}: weights moved (max |dw| {trained['max_abs_change']:.2e}, relative "
            f"{trained['relative_l2_change']:.2e}, {trained['tensors_changed']}/{trained['tensors']} tensors), "
            f"loss finite in {trained['updates']} updates: {trained['loss_finite']}"
        )
    print(
        f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s ({result['machine']['matmul_peak']['threads']} threads)"
    )
    if theirs and "error" in theirs:
        print(f"TRL: not run ({theirs['error'].splitlines()[-1] if theirs['error'] else 'error'})")


def print_shared_prompt(shared: dict) -> None:
    rollout, training = shared["rollout"], shared["training"]
    print(
        f"\nshared prompt vs prompt repeated G times (greedy, full length; median of {shared['repeats']}):\n"
        f"  rollout   Sampler.complete {rollout['shared_prefill_s']:6.2f} s | generate() {rollout['generate_repeated_s']:6.2f} s"
        f" | x{rollout['speedup']:.2f} (target >= {TARGETS['rollout_vs_generate']:.0f}x)"
        f" | tokens identical: {rollout['greedy_tokens_identical']}\n"
        f"  training  shared prompt    {training['shared_prompt_s']:6.2f} s | repeated   {training['repeated_prompt_s']:6.2f} s"
        f" | x{training['speedup']:.2f} | max |dlogp| {training['max_abs_logprob_difference']:.1e}"
    )


def print_sweep(rows: list[dict]) -> None:
    print(
        "\nsweep: s/step and its parts (image+prompt = forward calls carrying the image: medr1's prefills in "
        "rollout, reference and policy; TRL's generate() prefill of B*G rows)"
    )
    print(
        f"{'px':>4} {'G':>3} {'framework':>9} {'s/step':>8} {'rollout':>8} {'ref':>7} {'policy':>7} {'optim':>7}"
        f" {'img+prompt':>10} {'samples/s':>9}"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['image_size']:>4} {r['generations']:>3} {r['framework']:>9}  failed")
            continue
        p = r["phases_s"]
        print(
            f"{r['image_size']:>4} {r['generations']:>3} {r['framework']:>9} {r['step_s']:8.2f} {p['rollout']:8.2f}"
            f" {p['reference']:7.2f} {p['policy']:7.2f} {p['optimizer']:7.2f} {sum(r['prefill_s'].values()):10.3f}"
            f" {r['samples_per_s']:9.2f}"
        )
    for size in sorted({r["image_size"] for r in rows}):
        ours = [r for r in rows if r["image_size"] == size and r["framework"] == "medr1" and "error" not in r]
        if len(ours) > 1:
            low, high = ours[0], ours[-1]
            print(
                f"medr1 image+prompt cost at {size}px: G={low['generations']} {sum(low['prefill_s'].values()):.3f} s, "
                f"G={high['generations']} {sum(high['prefill_s'].values()):.3f} s "
                f"(x{sum(high['prefill_s'].values()) / max(sum(low['prefill_s'].values()), 1e-9):.2f} for "
                f"x{high['generations'] / low['generations']:.0f} completions)"
            )


# --- the run -------------------------------------------------------------------------------------


def benchmark(args: argparse.Namespace) -> dict:
    import torch

    threads = args.threads or torch.get_num_threads()
    workdir = Path(tempfile.mkdtemp(prefix="medr1-bench-"))
    base = BenchSettings(
        data_root="",
        model=args.model,
        prompts=args.prompts,
        generations=args.generations,
        completion_tokens=args.completion_tokens,
        image_size=args.image_size,
        warmup=args.warmup,
        steps=args.steps,
        threads=threads,
        lr=args.lr,
        seed=args.seed,
    )
    folders: dict[int, str] = {}

    def settings_for(**changes) -> BenchSettings:
        size = changes.get("image_size", base.image_size)
        if size not in folders:
            folders[size] = str(write_data_folder(workdir / f"data-{size}px", size))
        return replace(base, data_root=folders[size], **changes)

    with_trl = not args.no_trl and importlib.util.find_spec("trl") is not None
    if not args.no_trl and not with_trl:
        print('TRL is not installed: pip install -e ".[bench]" (make bench does it); running medr1 only')
    print(f"medr1 bench: results in {args.json}; work folder {workdir}")
    result = {
        "created": datetime.now().isoformat(timespec="seconds"),
        "settings": asdict(settings_for()),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": threads,
            "matmul_peak": matmul_peak(threads),
            "note": "shared and noisy: compare ratios measured in the same run",
        },
    }
    if not args.sweep_only:
        main = settings_for()
        result.update(run_rounds(["medr1", "trl"] if with_trl else ["medr1"], main, workdir, args.rounds))
        if "error" not in result["medr1"] and "error" not in result.get("trl", {"error": ""}):
            result["ratios"] = ratios(result["medr1"], result["trl"])
            result["targets"] = {
                "samples_per_s_ratio_at_least": TARGETS["samples_per_s_ratio"],
                "samples_per_s_ratio_met": result["ratios"]["samples_per_s"]
                >= TARGETS["samples_per_s_ratio"],
                "peak_rss_not_above_trl": result["ratios"]["peak_rss"] <= 1.0,
            }
        if not args.no_shared_prompt:
            shared = run_side("shared_prompt", main, workdir)
            result["shared_prompt"] = shared
            if "error" not in shared:
                result.setdefault("targets", {})["rollout_vs_generate_met"] = (
                    shared["rollout"]["speedup"] >= TARGETS["rollout_vs_generate"]
                )
        if "error" not in result["medr1"]:
            print_comparison(result)
        if "shared_prompt" in result and "error" not in result["shared_prompt"]:
            print_shared_prompt(result["shared_prompt"])
    if args.sweep or args.sweep_only:
        rows = []
        for size in args.sweep_sizes:
            for group in args.sweep_generations:
                settings = settings_for(
                    image_size=size, generations=group, warmup=1, steps=args.sweep_steps, count_flops=False
                )
                sides = run_rounds(["medr1", "trl"] if with_trl else ["medr1"], settings, workdir, 1)
                for kind, side in sides.items():
                    side.pop("steps", None)
                    rows.append({**side, "framework": kind, "image_size": size, "generations": group})
        result["sweep"] = rows
        print_sweep(rows)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"\nresults written to {args.json}")
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m medr1.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="bench", help="conf/model/<name>.yaml (default: bench)")
    parser.add_argument("--prompts", type=int, default=2, help="B: prompts per step")
    parser.add_argument("--generations", type=int, default=8, help="G: completions per prompt")
    parser.add_argument("--completion-tokens", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=392, help="side of the square images in pixels")
    parser.add_argument("--warmup", type=int, default=1, help="steps run before the timed ones")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument(
        "--rounds", type=int, default=2, help="runs of each side, alternating (figures: the median step)"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads on both sides (0: torch's default)"
    )
    parser.add_argument("--lr", type=float, default=1.0e-6)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", default=None, help="results file (default outputs/bench/<timestamp>.json)")
    parser.add_argument("--no-trl", action="store_true", help="medr1 only")
    parser.add_argument(
        "--no-shared-prompt", action="store_true", help="skip the rollout/training shared-prompt comparisons"
    )
    parser.add_argument("--sweep", action="store_true", help="also sweep G x image size (make bench SWEEP=1)")
    parser.add_argument("--sweep-only", action="store_true", help="only the sweep")
    parser.add_argument(
        "--sweep-generations", type=lambda s: [int(x) for x in s.split(",")], default=[2, 4, 8, 16]
    )
    parser.add_argument(
        "--sweep-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[224, 392, 784]
    )
    parser.add_argument(
        "--sweep-steps", type=int, default=1, help="timed steps per sweep point (after 1 warm-up)"
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.sweep_steps < 1 or args.rounds < 1:
        parser.error("--steps, --rounds and --sweep-steps must be >= 1 and --warmup >= 0")
    if args.json is None:
        args.json = f"outputs/bench/{datetime.now():%Y-%m-%d_%H-%M-%S}.json"
    return args


def main(argv: list[str] | None = None) -> dict:
    return benchmark(parse_args(argv))


if __name__ == "__main__":
    main()
