"""CLI: `python -m medr1.report <sweep dir> [--out DIR] [--parser NAME] [--wandb | --no-wandb]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medr1.answers import PARSERS
from medr1.report.build import build_report
from medr1.report.runs import ReportError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m medr1.report",
        description="Cross-modality / cross-question-type tables and heatmaps of a Hydra sweep.",
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
        result = build_report(args.sweep_dir, args.out, args.use_wandb, args.parser)
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
