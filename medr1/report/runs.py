"""Find the run directories of a sweep and read what the report needs from each.

A run directory is any directory holding `.hydra/config.yaml`; its results are in
`eval/summary.json`, its per-question answers in `eval/predictions.jsonl` (read for the bootstrap
intervals: medr1.report.questions). With a parser named (`--parser`), a run whose summary was read
with another parser has its accuracies recomputed from the predictions (format rate and reasoning
length are kept as recorded). Configs are read without resolving: Hydra saves them with `${...}`
interpolations (some need Hydra's resolvers), so only the plain keys below are selected one by one.

Runs that differ only in their seed (a `seed=1,2,3` sweep) are one row of the report: `group_seeds`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from medr1.answers import PARSERS
from medr1.data.names import canonical_modality, canonical_question_type
from medr1.report.questions import (
    PREDICTIONS,
    Questions,
    Rows,
    check_against_summary,
    questions_from_rows,
    read_rows,
)

RUN_DIR_HINT = (
    "a run directory is a folder holding `.hydra/config.yaml` (written by `python run.py`) "
    "and, once it finished, `eval/summary.json`"
)
# Folders inside a run that never hold another run; skipped to keep the walk fast.
_SKIP_DIRS = {".hydra", "wandb", "checkpoints", "eval", "__pycache__", ".git"}


class ReportError(RuntimeError):
    """The sweep directory cannot be reported on; the message says why and what to pass instead."""


# --------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """What the report knows about one run directory."""

    path: Path  # the run directory
    relative: str  # its path relative to the sweep dir ("." for the sweep dir itself)
    mode: str  # "train" | "eval" (eval = base model, no training)
    experiment_name: str | None
    model_name: str | None
    model_path: str | None
    algo: str | None
    train_modality: str  # canonical name or "all"
    train_question_type: str  # canonical name or "all"
    prompt: str | None
    reward: str | None
    tuning: str | None
    logger_name: str | None
    logger_project: str | None
    overrides: tuple[str, ...]  # `.hydra/overrides.yaml`, as typed on the command line
    summary: (
        dict | None
    )  # eval/summary.json (accuracies re-read under --parser), None if missing or unreadable
    problem: str | None  # why `summary` is None, e.g. "no eval/summary.json"
    parser: str | None = None  # the evaluation parser behind summary's accuracies; None without a summary
    seed: str | None = None  # the `seed` override, else the config's seed; None when neither is set
    questions: Questions | None = None  # per-question correctness behind summary (None: no intervals)
    questions_problem: str | None = None  # why `questions` is None although `summary` is not

    @property
    def is_base(self) -> bool:
        return self.mode == "eval"


def _select(cfg: DictConfig, key: str) -> str | None:
    """One config value as a string, resolving only that key; None when absent or unresolvable."""
    value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
    if value is None or isinstance(value, DictConfig | ListConfig):
        return None
    return str(value)


def canonical_or_raw(name: str, canonical) -> str:
    """The canonical name of `name`, or `name` as written when `canonical` does not know it."""
    try:
        return canonical(name)
    except KeyError:
        return name


def _training_name(name: str | None, canonical) -> str:
    """ "all" for no restriction, else the canonical name (unknown names are kept as written)."""
    if name is None or name.lower() == "all":
        return "all"
    return canonical_or_raw(name, canonical)


def _read_overrides(run_dir: Path) -> tuple[str, ...]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return ()
    overrides = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return tuple(str(item) for item in overrides or [])


def recorded_parser(summary: dict) -> str:
    """The parser a summary's accuracies were read with; summaries older than the key used robust."""
    return str(summary.get("parser") or "robust")


def _regrade_problem(rows: Rows | None, problem: str | None, parser: str) -> str | None:
    """Why the prediction rows cannot be re-read with `parser` (None when they can)."""
    if rows is None:
        if problem == f"no {PREDICTIONS.as_posix()}":
            return f"no {PREDICTIONS.as_posix()} to recompute accuracy with the {parser} parser"
        return problem
    needed = {"completion", "answer", "modality", "question_type"} | (
        {"options"} if parser == "robust" else set()
    )
    lacking = sorted({key for _, row in rows for key in needed if key not in row})
    if lacking:
        fix = (
            " (written before options were stored: re-evaluate, or use --parser medr1 or medvlm_r1)"
            if lacking == ["options"]
            else ""
        )
        return f"{PREDICTIONS.as_posix()} lacks {lacking}{fix}"
    return None


def _read_summary(run_dir: Path) -> tuple[dict | None, str | None]:
    """(summary, None) or (None, the reason it cannot be used)."""
    path = run_dir / "eval" / "summary.json"
    if not path.is_file():
        return None, "no eval/summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        return None, f"eval/summary.json unreadable: {error}"
    accuracy = summary.get("accuracy") if isinstance(summary, dict) else None
    if not isinstance(accuracy, int | float) or not 0.0 <= accuracy <= 1.0:
        return None, "eval/summary.json has no 'accuracy' fraction in [0, 1]"
    return summary, None


@dataclass(frozen=True)
class Evaluation:
    """A run's test evaluation as the report reads it (see the Run fields of the same names)."""

    summary: dict | None
    problem: str | None
    questions: Questions | None = None
    questions_problem: str | None = None


def read_evaluation(run_dir: Path, parser: str | None = None) -> Evaluation:
    """The run's summary and per-question correctness. With `parser` set and different from the one
    the summary records, accuracy, n, by_modality and by_question_type are recomputed from
    eval/predictions.jsonl (the summary's `parser` then says `parser`), and so is every question's
    `correct`. Predictions that are missing, malformed or disagree with the summary leave
    `questions` None with the reason in `questions_problem`; the summary still stands."""
    summary, problem = _read_summary(run_dir)
    if summary is None:
        return Evaluation(None, problem)
    rows, rows_problem = read_rows(run_dir)
    regrade_with = parser if parser is not None and parser != recorded_parser(summary) else None
    if regrade_with is not None:
        problem = _regrade_problem(rows, rows_problem, regrade_with)
        if problem is not None:
            return Evaluation(None, problem)
        from medr1.grading import regrade  # imports torch: only when a run is re-graded

        summary = summary | regrade([row for _, row in rows], regrade_with) | {"parser": regrade_with}
    if rows is None:
        return Evaluation(summary, None, None, rows_problem)
    questions, questions_problem = questions_from_rows(rows, regrade_with)
    if questions is not None:
        questions_problem = check_against_summary(questions, summary)
    return Evaluation(summary, None, questions if questions_problem is None else None, questions_problem)


def load_run(run_dir: Path, sweep_dir: Path, parser: str | None = None) -> Run:
    """Read one run directory (config keys, overrides, summary; accuracies under `parser` if given)."""
    config_path = run_dir / ".hydra" / "config.yaml"
    try:
        cfg = OmegaConf.load(config_path)
    except Exception as error:  # yaml's scanner/parser errors have no common public base
        raise ReportError(f"{config_path} is not valid YAML ({error}); fix or remove that run dir") from error
    if not isinstance(cfg, DictConfig):
        raise ReportError(f"{config_path} is not a mapping; {RUN_DIR_HINT}")
    evaluation = read_evaluation(run_dir, parser)
    overrides = _read_overrides(run_dir)
    summary = evaluation.summary
    return Run(
        path=run_dir,
        relative=run_dir.relative_to(sweep_dir).as_posix(),
        mode=_select(cfg, "mode") or "train",
        experiment_name=_select(cfg, "experiment_name"),
        model_name=_select(cfg, "model.name"),
        model_path=_select(cfg, "model.path"),
        algo=_select(cfg, "algo.name"),
        train_modality=_training_name(_select(cfg, "modality.name"), canonical_modality),
        train_question_type=_training_name(_select(cfg, "question_type.name"), canonical_question_type),
        prompt=_select(cfg, "prompt.name"),
        reward=_select(cfg, "reward.name"),
        tuning=_select(cfg, "tuning.name"),
        logger_name=_select(cfg, "logger.name"),
        logger_project=_select(cfg, "logger.project"),
        overrides=overrides,
        summary=summary,
        problem=evaluation.problem,
        parser=recorded_parser(summary) if summary is not None else None,
        seed=_items(overrides).get("seed", _select(cfg, "seed")),
        questions=evaluation.questions,
        questions_problem=evaluation.questions_problem,
    )


# --------------------------------------------------------------------------------------------------
# All runs of a sweep
# --------------------------------------------------------------------------------------------------


def natural_key(text: str) -> list:
    """Sort key that puts "2" before "10" (Hydra numbers its jobs 0, 1, ..., 10, ...)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def find_run_dirs(sweep_dir: Path) -> list[Path]:
    """Every directory at any depth below `sweep_dir` (itself included) holding `.hydra/config.yaml`."""
    found = []
    for root, dirnames, _ in os.walk(sweep_dir):
        if (Path(root) / ".hydra" / "config.yaml").is_file():
            found.append(Path(root))
        dirnames[:] = [name for name in dirnames if name not in _SKIP_DIRS]
    return sorted(found, key=lambda path: natural_key(path.relative_to(sweep_dir).as_posix()))


def load_runs(sweep_dir: Path, parser: str | None = None) -> list[Run]:
    """All runs of the sweep, in natural path order; ReportError when there are none.

    parser: None = each run's accuracies as recorded (with the parser its eval used); a name from
    medr1.answers.PARSERS = every run's accuracies read with that parser.
    """
    if parser is not None and parser not in PARSERS:
        raise ReportError(f"unknown parser {parser!r}; pass --parser one of {sorted(PARSERS)}")
    if not sweep_dir.is_dir():
        raise ReportError(
            f"sweep directory {sweep_dir} does not exist; pass a Hydra multirun directory such as "
            "multirun/2026-11-22/10-00-00 (or a single run directory)"
        )
    run_dirs = find_run_dirs(sweep_dir)
    if not run_dirs:
        raise ReportError(
            f"no run directories found in {sweep_dir}; {RUN_DIR_HINT}. Pass the sweep directory that "
            "Hydra printed for `python run.py -m ...` (it holds multirun.yaml and the folders 0/, 1/, ...)"
        )
    return [load_run(run_dir, sweep_dir, parser) for run_dir in run_dirs]


# --------------------------------------------------------------------------------------------------
# Base-model runs: fold duplicates
# --------------------------------------------------------------------------------------------------


# Top-level config keys a base model's evaluation does not read. Base runs that differ only in these
# are one evaluation repeated by the sweep's product (`mode=eval,train x modality=...`) and are folded.
# A prompt, a model, a data or eval setting makes a different evaluation: its own base row.
TRAIN_ONLY_KEYS = frozenset(
    {
        "mode",
        "modality",
        "question_type",
        "algo",
        "reward",
        "tuning",
        "trainer",
        "logger",
        "experiment_name",
        "hydra",
        "seed",  # evaluation is greedy: a seed sweep's base runs are one evaluation
    }
)


def _items(overrides: tuple[str, ...]) -> dict[str, str]:
    items = {}
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        items[key] = value if not key.startswith("~") else "<deleted>"
    return items


def override_items(run: Run) -> dict[str, str]:
    """`+key=value`, `++key=value`, `key=value`, `~key` -> {key: value}."""
    return _items(run.overrides)


def evaluation_inputs(run: Run) -> tuple:
    """What a base evaluation of `run`'s starting model depends on: model, prompt, other overrides."""
    items = override_items(run)
    skip = TRAIN_ONLY_KEYS | {"prompt"}  # the prompt is read from the config below, as is model.path
    kept = tuple(
        sorted(
            (key, value)
            for key, value in items.items()
            if key.lstrip("~").split(".")[0] not in skip and key.lstrip("~") != "model.path"
        )
    )
    return run.model_path, run.prompt, kept


@dataclass(frozen=True)
class BaseRow:
    """One base-model row standing for one or more identical `mode=eval` runs."""

    label: str  # "base", or "base: <what differs>" when the sweep holds several base evaluations
    run: Run  # the run shown (first by path that has a summary, else first by path)
    folded: tuple[Run, ...]  # the other runs of the same evaluation, not shown
    inputs: tuple = ()  # evaluation_inputs() shared by the group


def _base_label(inputs: tuple, groups: dict[tuple, list[Run]]) -> str:
    """ "base", or "base: <model> prompt=<p> key=value" naming only what differs between groups."""
    if len(groups) == 1:
        return "base"
    model_path, prompt, kept = inputs
    parts = []
    if len({key[0] for key in groups}) > 1:
        names = {key: group[0].model_name for key, group in groups.items()}
        unique = len(set(names.values())) == len({key[0] for key in groups})
        parts.append(str(names[inputs] if unique else model_path))
    if len({key[1] for key in groups}) > 1:
        parts.append(f"prompt={prompt}")
    all_items = [dict(key[2]) for key in groups]
    for name, value in kept:
        if name == "model" and len({key[0] for key in groups}) > 1:
            continue  # already named by the model part
        if len({items.get(name) for items in all_items}) > 1:
            parts.append(f"{name}={value}")
    return "base: " + (" ".join(parts) or "(identical inputs)")


def fold_base_runs(runs: list[Run]) -> list[BaseRow]:
    """One row per distinct base evaluation; duplicates from the sweep's product are folded."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        if run.is_base:
            groups.setdefault(evaluation_inputs(run), []).append(run)
    rows = []
    for inputs, group in groups.items():
        shown = next((run for run in group if run.summary is not None), group[0])
        folded = tuple(run for run in group if run is not shown)
        rows.append(BaseRow(_base_label(inputs, groups), shown, folded, inputs))
    return rows


def base_for(run: Run, bases: list[BaseRow]) -> BaseRow | None:
    """The base row a trained run is compared with: the same evaluation inputs, else the only base
    with the same model and prompt, else the only base with the same model, else the only base."""
    inputs = evaluation_inputs(run)
    for matches in (
        lambda base: base.inputs == inputs,
        lambda base: base.inputs[:2] == inputs[:2],
        lambda base: base.inputs[0] == inputs[0],
        lambda base: True,
    ):
        found = [base for base in bases if matches(base)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            return None
    return None


# --------------------------------------------------------------------------------------------------
# Trained runs: one row per setting, its seeds together
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedGroup:
    """A trained row: one run, or the runs of one setting that differ only in `seed` (a seed sweep)."""

    runs: tuple[Run, ...]  # path order; the first names the row (labels, config)

    @property
    def run(self) -> Run:
        return self.runs[0]

    @property
    def evaluated(self) -> tuple[Run, ...]:
        """The seeds whose evaluation can be read: the row's numbers are their mean."""
        return tuple(run for run in self.runs if run.summary is not None)


def setting_of(run: Run) -> tuple:
    """Everything the report knows about a run except its seed: runs with equal settings are seeds."""
    items = {key: value for key, value in override_items(run).items() if key != "seed"}
    return (
        run.mode,
        run.experiment_name,
        run.model_name,
        run.model_path,
        run.algo,
        run.train_modality,
        run.train_question_type,
        run.prompt,
        run.reward,
        run.tuning,
        tuple(sorted(items.items())),
    )


def group_seeds(runs: list[Run]) -> list[SeedGroup]:
    """The trained runs as rows, in order of each row's first run. Runs with the same setting and
    distinct seeds are one row; the same setting with a repeated (or unknown) seed is not a seed
    sweep (a rerun, or runs the overrides do not tell apart): each such run keeps its own row."""
    by_setting: dict[tuple, list[Run]] = {}
    for run in runs:
        if not run.is_base:
            by_setting.setdefault(setting_of(run), []).append(run)
    groups = []
    for members in by_setting.values():
        seeds = [run.seed for run in members]
        if len(members) > 1 and None not in seeds and len(set(seeds)) == len(seeds):
            groups.append(SeedGroup(tuple(members)))
        else:
            groups += [SeedGroup((run,)) for run in members]
    order = {run.path: index for index, run in enumerate(runs)}
    return sorted(groups, key=lambda group: order[group.run.path])
