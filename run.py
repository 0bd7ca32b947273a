"""medr1 entry point: `python run.py [group=option ...] [key=value ...]` (see README).

A wrong input (a config typo, a missing data folder, a bad record) stops the run with one line,
`error: ...`, and exit status 2; an unexpected error keeps its traceback (medr1.errors).
"""

import hydra
from omegaconf import DictConfig

from medr1.resolvers import register

register()  # ${count:...} and any other resolver conf/ uses, before Hydra composes the config


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from medr1.errors import user_errors_exit
    from medr1.main import run

    with user_errors_exit():
        return run(cfg)


if __name__ == "__main__":
    from medr1.errors import run_reporting_errors

    run_reporting_errors(main)
