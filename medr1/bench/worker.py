"""One side of the benchmark in a process of its own, so its peak RSS is its own:

python -m medr1.bench.worker {medr1|trl|shared_prompt} <settings.json> <result.json>
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path

from medr1.bench.common import BenchSettings

RUNNERS = {
    "medr1": "medr1.bench.medr1_side",
    "trl": "medr1.bench.trl_side",
    "shared_prompt": "medr1.bench.shared_prompt",
}


def main(argv: list[str]) -> None:
    if len(argv) != 3 or argv[0] not in RUNNERS:
        raise SystemExit(
            f"usage: python -m medr1.bench.worker {{{'|'.join(RUNNERS)}}} <settings.json> <result.json>"
        )
    kind, settings_path, result_path = argv
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    from importlib import import_module

    result = import_module(RUNNERS[kind]).run(BenchSettings.load(Path(settings_path)))
    Path(result_path).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
