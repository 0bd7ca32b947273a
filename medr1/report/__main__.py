"""CLI: `python -m medr1.report <sweep dir> [--out DIR] [--parser NAME] [--resamples N] [--seed S]
[--wandb | --no-wandb]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medr1.answers import PARSERS
from medr1.report.build import build_report
from medr1.report.runs import ReportError
from medr1.report.stats import DEFAULT_RESAMPLES, DEFAULT_SEED


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m medr1.report",
        description="Cross-modality / cross-question-type tables and heatmaps of a Hydra sweep, every "
        "accuracy with a 95% bootstrap interval over test questions (from each run's "
        "eval/predictions.jsonl), seeds of a setting averaged, deltas paired. Writes matrix_*.{md,csv}, "
        "heatmap_*.png, comparison.{md,csv} (ending with the pairs that differ in one setting), pairs.csv "
        "and cells.csv (every accuracy per run and group, with n and interval).",
    )
    parser.add_argument("sweep_dir", type=Path, help="Hydra multirun dir (holds 0/, 1/, ... run dirs)")
    parser.add_argument("--out", type=Path, default=None, help="write the report here (default: sweep_dir)")
    parser.add_argument(
        "--parser",
        choices=list(PARSERS),
        default=None,
        help="read every run's answers with this evaluation parser, recomputing accuracies from "
        "eval/predictions.jsonl (default: each run's own, as recorded in eval/summary.json)",
    )
    parser.add_argument(
        "--resamples",
        type=int,
        default=DEFAULT_RESAMPLES,
        metavar="N",
        help=f"bootstrap resamples per interval (default {DEFAULT_RESAMPLES}; 0 = no intervals)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        metavar="S",
        help=f"resampling seed (default {DEFAULT_SEED}): the same seed gives the same intervals",
    )
    wandb = parser.add_mutually_exclusive_group()
    wandb.add_argument(
        "--wandb",
        dest="use_wandb",
        action="store_true",
        default=None,
        help="log to W&B (default: when any run used logger=wandb)",
    )
    wandb.add_argument("--no-wandb", dest="use_wandb", action="store_false", help="never log to W&B")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = build_report(
            args.sweep_dir, args.out, args.use_wandb, args.parser, resamples=args.resamples, seed=args.seed
        )
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(result.markdown)
    print("written:", *(str(path) for path in result.paths.values()), sep="\n  ")
    if result.wandb_dir is not None:
        print(f"W&B run: {result.wandb_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
