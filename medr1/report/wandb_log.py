"""Log the report to Weights & Biases as one `job_type="report"` run grouped with the sweep.

wandb is imported here, only when asked for: the report itself needs nothing beyond matplotlib.
Online or offline by the training runs' rule (medr1.builders.wandb_mode): an explicit WANDB_MODE,
else online with credentials (WANDB_API_KEY or a ~/.netrc entry), else offline.
"""

from __future__ import annotations

from pathlib import Path

from medr1.report.cells import CELL_COLUMNS
from medr1.report.tables import Table, csv_table

DEFAULT_PROJECT = "medr1"


def log_report(
    tables: list[Table],
    images: dict[str, Path],
    *,
    project: str,
    group: str,
    run_dir: Path,
    cells: list[dict] | None = None,
) -> Path | None:
    """Log `tables` (with their CSV columns: intervals, seeds) and `cells` (cells.csv) as wandb.Table
    and `images` as wandb.Image; return the local run folder."""
    import wandb  # lazy: slow to import and optional for the report

    from medr1.builders import wandb_mode  # lazy too: it imports Lightning and the training code

    run = wandb.init(
        project=project,
        group=group,
        job_type="report",
        name=f"report {group}",
        mode=wandb_mode(),
        dir=str(run_dir),
        config={"sweep_dir": str(run_dir)},
    )
    try:
        payload = {}
        for table in tables:
            columns, rows = csv_table(table)
            payload[table.name] = wandb.Table(columns=columns, data=rows)
        if cells:
            payload["cells"] = wandb.Table(
                columns=CELL_COLUMNS, data=[[cell[column] for column in CELL_COLUMNS] for cell in cells]
            )
        payload.update({name: wandb.Image(str(path)) for name, path in images.items()})
        run.log(payload)
        local_dir = Path(run.dir).parent if getattr(run, "dir", None) else None
    finally:
        run.finish()
    return local_dir
