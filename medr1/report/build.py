"""build_report: sweep directory in, generalization matrices, comparison, pairs, cells.csv, heatmaps
(and W&B) out, every accuracy with its 95% bootstrap interval; report.html shows it all in one file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medr1.cache import write_file_atomically
from medr1.report.cells import build_cells, write_cells
from medr1.report.comparison import build_comparison
from medr1.report.heatmap import plot_heatmap
from medr1.report.html import write_html
from medr1.report.intervals import Estimator
from medr1.report.pairs import build_pairs, no_pairs_markdown
from medr1.report.runs import ReportError, Run, fold_base_runs, group_seeds, load_runs
from medr1.report.stats import DEFAULT_RESAMPLES, DEFAULT_SEED, Bootstrap
from medr1.report.tables import (
    MODALITY_AXIS,
    QUESTION_TYPE_AXIS,
    Table,
    build_matrix,
    to_markdown,
    varies_question_type,
    write_csv,
)
from medr1.report.wandb_log import DEFAULT_PROJECT, log_report


@dataclass
class ReportResult:
    """What build_report computed and wrote."""

    sweep_dir: Path
    out_dir: Path
    experiment: str  # experiment_name of the runs (the sweep folder's name if unset)
    runs: list[Run]  # every run dir found, natural path order
    modality_matrix: Table
    question_type_matrix: Table | None  # None unless some run trains on one question type
    comparison: Table
    paths: dict[str, Path]  # file name -> path written, e.g. "matrix_modality.csv"
    markdown: str  # every table as Markdown, in the order written
    wandb_dir: Path | None = None  # the local W&B run folder, when logged
    parser: str | None = None  # --parser: every accuracy re-read with it; None = each run's own
    pairs: Table | None = None  # rows differing in one setting (pairs.csv); None when there is none
    cells: list[dict] = field(default_factory=list)  # cells.csv rows (cells.CELL_COLUMNS; None = blank)
    resamples: int = DEFAULT_RESAMPLES  # bootstrap resamples per interval (0 = no intervals)
    seed: int = DEFAULT_SEED  # the resampling seed

    @property
    def tables(self) -> list[Table]:
        tables = (self.modality_matrix, self.question_type_matrix, self.comparison, self.pairs)
        return [table for table in tables if table is not None]


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def experiment_of(runs: list[Run], sweep_dir: Path) -> str:
    names = [run.experiment_name for run in sorted(runs, key=lambda run: run.is_base) if run.experiment_name]
    unique = list(dict.fromkeys(names))
    return " + ".join(unique) if unique else sweep_dir.resolve().name


def _wandb_wanted(runs: list[Run], use_wandb: bool | None) -> bool:
    if use_wandb is not None:
        return use_wandb
    return any(run.logger_name == "wandb" for run in runs)


def _wandb_project(runs: list[Run]) -> str:
    projects = [run.logger_project for run in runs if run.logger_name == "wandb" and run.logger_project]
    return projects[0] if projects else DEFAULT_PROJECT


def parser_notes(runs: list[Run], parser: str | None) -> list[str]:
    """Which evaluation parser the accuracies come from, said on every table."""
    if parser is not None:
        return [
            f"accuracies read with the {parser} evaluation parser (recomputed from eval/predictions.jsonl "
            "where a run recorded another); format rate and reasoning length as recorded."
        ]
    used = sorted({run.parser for run in runs if run.parser is not None})
    if len(used) > 1:
        return [
            f"runs were evaluated with different parsers ({', '.join(used)}): their accuracies are not "
            "comparable; pass --parser to read every run with one."
        ]
    return [f"accuracies read with the {used[0]} evaluation parser."] if used else []


def _write_table(table: Table, out_dir: Path, paths: dict[str, Path], appendix: str = "") -> str:
    """Write <name>.md (the table, then `appendix`) and <name>.csv; return the Markdown."""
    markdown = to_markdown(table) + (f"\n{appendix}" if appendix else "")
    md_path = out_dir / f"{table.name}.md"
    write_file_atomically(md_path, markdown)
    paths[md_path.name] = md_path
    csv_path = write_csv(table, out_dir / f"{table.name}.csv")
    paths[csv_path.name] = csv_path
    return markdown


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def build_report(
    sweep_dir: Path,
    out_dir: Path | None = None,
    use_wandb: bool | None = None,
    parser: str | None = None,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> ReportResult:
    """Read every run below `sweep_dir` and write the report files into `out_dir` (default: sweep_dir):
    matrix_<axis>.{md,csv} + heatmap_<axis>.png, comparison.{md,csv} (comparison.md ends with the
    pairs that differ in one setting), pairs.csv (when there are pairs) and cells.csv.

    use_wandb: None = log to W&B when any run logged there (logger.name == "wandb").
    parser: None = each run's accuracies as its evaluation recorded them; robust | medr1 | medvlm_r1 =
    every run's accuracies read with that parser (recomputed from eval/predictions.jsonl).
    resamples, seed: the bootstrap behind every interval (medr1.report.stats); resamples=0 = no
    intervals. Same inputs and arguments => byte-identical Markdown and CSV files.
    Raises ReportError when `sweep_dir` is missing or holds no run directory, `parser` is unknown or
    `resamples` is negative.
    """
    if resamples < 0:
        raise ReportError(f"--resamples must be 0 (no intervals) or more, got {resamples}")
    sweep_dir = Path(sweep_dir)
    runs = load_runs(sweep_dir, parser)
    out_dir = Path(out_dir) if out_dir is not None else sweep_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    experiment = experiment_of(runs, sweep_dir)
    bases = fold_base_runs(runs)
    groups = group_seeds(runs)
    estimator = Estimator(Bootstrap(resamples, seed) if resamples > 0 else None)
    shared = {"groups": groups, "estimator": estimator}

    modality = build_matrix(runs, bases, MODALITY_AXIS, experiment, **shared)
    question_type = None
    if varies_question_type(runs):
        question_type = build_matrix(runs, bases, QUESTION_TYPE_AXIS, experiment, **shared)
    comparison = build_comparison(runs, bases, experiment, **shared)
    pairs = build_pairs(bases, groups, estimator)
    for table in (modality, question_type, comparison, pairs):
        if table is not None:
            table.notes += parser_notes(runs, parser)

    paths: dict[str, Path] = {}
    markdown = []
    images: dict[str, Path] = {}
    for table in (modality, question_type):
        if table is None:
            continue
        markdown.append(_write_table(table, out_dir, paths))
        axis = table.name.removeprefix("matrix_")
        title = f"{experiment}\naccuracy (%), train {axis.replace('_', ' ')} → test"
        image = plot_heatmap(table, out_dir / f"heatmap_{axis}.png", title=title)
        paths[image.name] = images[image.stem] = image
    pairs_markdown = to_markdown(pairs) if pairs is not None else no_pairs_markdown()
    markdown.append(_write_table(comparison, out_dir, paths, appendix=pairs_markdown))
    if pairs is not None:
        paths["pairs.csv"] = write_csv(pairs, out_dir / "pairs.csv")
    cells = build_cells(runs, estimator)
    paths["cells.csv"] = write_cells(cells, out_dir / "cells.csv")

    result = ReportResult(
        sweep_dir,
        out_dir,
        experiment,
        runs,
        modality,
        question_type,
        comparison,
        paths,
        "\n".join(markdown),
        parser=parser,
        pairs=pairs,
        cells=cells,
        resamples=resamples,
        seed=seed,
    )
    paths["report.html"] = write_html(result, out_dir / "report.html")
    if _wandb_wanted(runs, use_wandb):
        result.wandb_dir = log_report(
            result.tables,
            images,
            project=_wandb_project(runs),
            group=experiment,
            run_dir=sweep_dir,
            cells=cells,
        )
    return result
