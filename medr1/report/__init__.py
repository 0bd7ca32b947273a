"""Turn a Hydra sweep directory into Med-R1's generalization tables and heatmaps.

`python -m medr1.report multirun/<date>/<time>` finds every run dir below the sweep (a folder with
`.hydra/config.yaml`), reads `eval/summary.json`, and writes into the sweep dir:
matrix_modality.{md,csv} + heatmap_modality.png (train modality x test modality),
matrix_question_type.* when the sweep trains on single question types, and comparison.{md,csv}
(one row per run, accuracy delta over the base model). Optionally logs them to W&B.
`--parser robust|medr1|medvlm_r1` re-reads every run's answers with one evaluation parser (from
`eval/predictions.jsonl`); by default each run's accuracies are those its evaluation recorded.

Departure from the paper: Med-R1 reports the matrix only; the in-domain / out-of-domain columns
and the per-run comparison are added here so sweeps over algo, prompt or reward read at a glance.
"""

from medr1.report.build import ReportResult, build_report
from medr1.report.runs import ReportError

__all__ = ["ReportError", "ReportResult", "build_report"]
