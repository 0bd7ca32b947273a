"""User errors: what medr1 raises when the input is wrong, and how `python run.py` reports them.

A wrong config value, a missing data folder or a bad record is the user's to fix, not a bug: the run
stops with ONE line on stderr, `error: <what is wrong and how to fix it>`, no Python traceback, and
exit status 2 (EXIT_USER_ERROR). Anything else is a bug and keeps its full traceback (exit status 1).
What counts as a user error:

- medr1's own `UserError`s: `ConfigError` (a config value), `DataNotFoundError` (a data folder or
  file), `medr1.data.records.BadRecordError` (a record, under `data.on_bad_record=raise`);
- Hydra's composition errors: an unknown option of a config group (`modality=ctt`: the options are
  listed), an unknown key (`algo.lerning_rate=1`: the closest existing keys are suggested), an
  override that does not parse; and a required value left unset (`???`, e.g. `data.root`);
- Lightning's MisconfigurationException (e.g. trainer=gpu on a machine without a GPU);
- a `SystemExit("error: ...")`, which mode=predict raises for a wrong question.

`HYDRA_FULL_ERROR=1` set by the user turns all of this off: every error then shows Hydra's full
traceback, as Hydra documents. (To see each error first-hand, `run_reporting_errors` sets
HYDRA_FULL_ERROR itself, so that Hydra re-raises instead of printing; MEDR1_REPORTS_ERRORS marks
that it did, so that processes it starts, e.g. DDP workers, still report errors in one line.)
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator

EXIT_USER_ERROR = 2  # `error: ...` printed; exit status 1 stays Python's, for an unexpected exception
FULL_ERROR = "HYDRA_FULL_ERROR"
REPORTING = "MEDR1_REPORTS_ERRORS"  # set by run_reporting_errors: HYDRA_FULL_ERROR=1 is ours, not the user's


class UserError(Exception):
    """Something the user gave is wrong (config, files, data); the message says what and how to fix it."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the key and the values that would."""


class DataNotFoundError(UserError, FileNotFoundError):
    """A data folder or file that is not where the config says; the message names the layout expected."""


# --- messages on one line ------------------------------------------------------------------------


def printable(text: str) -> str:
    """`text` with every non-printable character (line breaks, NUL, lone surrogates, ...) escaped, so a
    message stays one line whatever the data held."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def shorten(text: str, limit: int = 200) -> str:
    """`text` cut to `limit` characters, saying how long it was (a 6,000-word question in an error
    message would hide the message)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def shown(value: object, limit: int = 120) -> str:
    """A value quoted for a message: repr of its (shortened) text, so line breaks show as \\n."""
    return repr(shorten(str(value), limit))


def one_line(text: str) -> str:
    """A possibly multi-line message (Hydra's, Lightning's) as one line: lines joined by spaces."""
    return printable(" ".join(line.strip() for line in str(text).splitlines() if line.strip()))


# --- which exceptions are the user's, and their one line ----------------------------------------


def user_message(error: BaseException) -> str | None:
    """The one-line message for a user error, or None when `error` is a bug (or unknown)."""
    from hydra.errors import (
        CompactHydraException,
        ConfigCompositionException,
        InstantiationException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        InterpolationResolutionError,
        InterpolationToMissingValueError,
        MissingMandatoryValue,
    )

    if isinstance(error, UserError):
        return one_line(str(error))
    inner = error.__cause__ or error.__context__
    if isinstance(error, InterpolationResolutionError) and isinstance(inner, UserError):
        return user_message(inner)  # raised inside a config resolver (medr1.resolvers)
    if isinstance(error, InstantiationException):  # Hydra wraps what a constructor raised
        return user_message(error.__cause__) if error.__cause__ is not None else None
    if isinstance(error, MissingConfigException) and error.options is not None and error.missing_cfg_file:
        return unknown_option_message(error.missing_cfg_file, list(error.options))
    if isinstance(error, ConfigCompositionException) and isinstance(
        error.__cause__, (ConfigAttributeError, ConfigKeyError)
    ):
        return unknown_key_message(error.__cause__)
    if isinstance(error, OverrideParseException):
        return (
            f"cannot read the override {error.override!r}: {one_line(error.message)} (syntax: key=value, "
            "group=option, +new_key=value; quote values with spaces or brackets)"
        )
    if isinstance(error, CompactHydraException):  # other composition errors: Hydra's text, on one line
        return one_line(str(error).split("Config search path:")[0])
    if isinstance(error, (MissingMandatoryValue, InterpolationToMissingValueError)):
        key = missing_key(error)
        return (
            f"{key} is required and not set (it is ??? in the config): add {key}=<value> to the command line"
        )
    if isinstance(error, InterpolationResolutionError) and "oc.env" in str(error):
        return f"{one_line(str(error))}: set that environment variable, or the config value that reads it"
    if type(error).__name__ == "MisconfigurationException":  # Lightning's "the Trainer config is wrong"
        return (
            f"{one_line(str(error))} (Lightning, about the trainer settings: check trainer=<option>, "
            "trainer.accelerator, trainer.devices, trainer.strategy; trainer=cpu runs without a GPU)"
        )
    return None


def unknown_option_message(missing: str, options: list[str]) -> str:
    """`modality=ctt` -> unknown option 'ctt' for modality; choose one of ... (closest first)."""
    group, _, option = missing.rpartition("/")
    close = difflib.get_close_matches(option, options, n=1, cutoff=0.5)
    hint = f" (did you mean {group}={close[0]}?)" if close else ""
    where = "" if group.startswith("hydra/") else f" (the files in conf/{group}/)"  # Hydra's own: plugins
    return f"unknown option {option!r} for {group}{hint}; choose one of {', '.join(options)}{where}"


# Names users bring from TRL / transformers' TrainingArguments, and medr1's key for each: an unknown
# key close to one of them is suggested medr1's (lerning_rate -> algo.optimizer.lr).
FAMILIAR_NAMES = {
    "learning_rate": "algo.optimizer.lr",
    "lr": "algo.optimizer.lr",
    "weight_decay": "algo.optimizer.weight_decay",
    "num_train_epochs": "trainer.max_epochs",
    "epochs": "trainer.max_epochs",
    "per_device_train_batch_size": "data.batch_size",
    "batch_size": "data.batch_size",
    "gradient_accumulation_steps": "trainer.accumulate_grad_batches",
    "max_grad_norm": "algo.max_grad_norm",
    "warmup_ratio": "algo.scheduler.warmup_ratio",
    "warmup_steps": "algo.scheduler.warmup_steps",
    "lr_scheduler_type": "algo.scheduler.name",
    "model_name_or_path": "model.path",
    "output_dir": "hydra.run.dir",
}


def config_keys(node, prefix: str = "") -> Iterator[str]:
    """Every key of a config tree as a dotted path (mappings only; list items are not keys)."""
    from omegaconf import DictConfig

    if not isinstance(node, DictConfig):
        return
    for key in node.keys():
        path = f"{prefix}{key}"
        yield path
        try:
            child = node._get_node(key)
        except Exception:  # a node that cannot be read here (e.g. a broken interpolation) has no sub-keys
            continue
        yield from config_keys(child, f"{path}.")


def closest_keys(wrong: str, keys: list[str]) -> list[str]:
    """Up to 3 existing keys closest to the dotted key `wrong`: the same leaf under another parent,
    a near spelling of the leaf or of the whole path, or medr1's key for a familiar name."""
    parent, _, leaf = wrong.rpartition(".")
    leaves: dict[str, list[str]] = {}
    for key in keys:
        leaves.setdefault(key.rpartition(".")[2], []).append(key)
    found: list[str] = []
    for name in difflib.get_close_matches(leaf, list(leaves), n=3, cutoff=0.75):
        # under the same parent first: algo.optimizer.lrr -> algo.optimizer.lr
        found += sorted(leaves[name], key=lambda key: (not key.startswith(parent), len(key)))
    found += difflib.get_close_matches(wrong, keys, n=3, cutoff=0.75)
    for name in difflib.get_close_matches(leaf, list(FAMILIAR_NAMES), n=1, cutoff=0.8):
        found.append(FAMILIAR_NAMES[name])
    unique = list(dict.fromkeys(key for key in found if key != wrong))
    return unique[:3]


def unknown_key_message(cause) -> str:
    """`algo.lerning_rate=1` -> unknown key, the closest existing ones, and how to add a new key."""
    wrong = str(cause.full_key or cause.key)
    root = cause.parent_node._get_root() if cause.parent_node is not None else None
    keys = list(config_keys(root)) if root is not None else []
    close = closest_keys(wrong, keys)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return (
        f"unknown config key {wrong}{hint} (to add a key that is not in the config, write +{wrong}=<value>; "
        "python run.py --cfg job prints every key)"
    )


def missing_key(error) -> str:
    """The key the user must set for a missing value: the error's own, or the key it reads through
    `${...}` (data.source.root is ${data.root}: the user sets data.root)."""
    key = str(error.full_key)
    try:
        root = error.parent_node._get_root()
        for _ in range(10):  # follow a chain of plain ${a.b} references, never a cycle
            node = root
            for part in key.split("."):
                node = node._get_node(part)
            match = re.fullmatch(r"\$\{([\w.]+)\}", str(node._value()))
            if match is None:
                break
            key = match.group(1)
    except Exception:  # a key the walk cannot follow: name the one the error gives
        pass
    return key


# --- the entry point -------------------------------------------------------------------------------


def log_to_files(message: str) -> None:
    """Write `message` to the run's log file(s) only (the console gets it on stderr), so the run folder
    says why the run stopped."""
    record = logging.LogRecord("medr1", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def user_wants_tracebacks() -> bool:
    """Whether the user set HYDRA_FULL_ERROR=1 (rather than run_reporting_errors)."""
    return os.environ.get(FULL_ERROR) == "1" and os.environ.get(REPORTING) != "1"


@contextlib.contextmanager
def user_errors_exit() -> Iterator[None]:
    """Inside the Hydra task: a user error becomes SystemExit("error: <message>"). Hydra lets a
    SystemExit through as it is (an exception would get its "Error executing job" line first), and
    run_reporting_errors prints it."""
    if user_wants_tracebacks():
        yield
        return
    try:
        yield
    except Exception as error:
        message = user_message(error)
        if message is None:
            raise
        raise SystemExit(f"error: {message}") from None


def run_reporting_errors(main: Callable[[], object]) -> None:
    """Run a `@hydra.main` function; a user error ends the process with `error: <one line>` on
    stderr and EXIT_USER_ERROR, any other exception propagates with its traceback."""
    if user_wants_tracebacks():
        main()
        return
    os.environ[FULL_ERROR] = "1"  # Hydra then re-raises errors instead of printing them itself
    os.environ[REPORTING] = "1"
    try:
        main()
    except SystemExit as stop:
        if isinstance(stop.code, str) and stop.code.startswith("error: "):  # mode=predict's input errors
            report(stop.code.removeprefix("error: "))
        raise
    except Exception as error:
        message = user_message(error)
        if message is None:
            raise
        report(message)


def report(message: str) -> None:
    line = f"error: {one_line(message)}"
    log_to_files(line)
    print(line, file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)
