"""Turn a Hydra sweep directory into Med-R1's generalization tables and heatmaps, with uncertainty.

`python -m medr1.report multirun/<date>/<time>` finds every run dir below the sweep (a folder with
`.hydra/config.yaml`), reads `eval/summary.json` and `eval/predictions.jsonl`, and writes into the
sweep dir: matrix_modality.{md,csv} + heatmap_modality.png (train modality x test modality),
matrix_question_type.* when the sweep trains on single question types, comparison.{md,csv} (one row
per base evaluation and per trained setting, accuracy delta over the base model; comparison.md ends
with the pairs of rows that differ in one setting, also in pairs.csv) and cells.csv (every run's
accuracy per test group, long form). Optionally logs them to W&B.

Every accuracy has a 95% percentile bootstrap interval over test questions (`--resamples N`, default
2000; `--seed S`, default 0; the same inputs give byte-identical files): a group's cell resamples that
group's questions, overall accuracy resamples within each modality, deltas and pairs resample both
sides on the same questions (paired) and are starred when the interval excludes 0. Runs that differ
only in `seed` are one row: mean ± sample sd over seeds, the interval resampling the same questions
for every seed (medr1.report.stats has the exact scheme, medr1.report.intervals what each cell resamples).
`--parser robust|medr1|medvlm_r1` re-reads every run's answers with one evaluation parser (from
`eval/predictions.jsonl`); by default each run's accuracies are those its evaluation recorded.

Departure from the paper: Med-R1 reports the matrix only, without intervals; the in-domain /
out-of-domain columns, the per-run comparison and the intervals are added here so sweeps over algo,
prompt or reward read at a glance, with how far their differences exceed resampling noise.
"""

from medr1.report.build import ReportResult, build_report
from medr1.report.runs import ReportError

__all__ = ["ReportError", "ReportResult", "build_report"]
