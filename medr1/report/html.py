"""report.html: the whole report in one file that opens from disk, offline, in any browser.

Sections: what was read; each generalization matrix as a heatmap with intervals; the comparison and
the pairs tables; probes and calibration per run (reliability diagrams as inline SVG); and, per test
modality, a few questions with their image, options, and every run's reasoning, answer and mark.
Nothing is fetched: CSS is inline, fonts are the system's, images are PNG data: URIs, no scripts.

Every number shown sits on its own element that carries its raw value and where it comes from, so
a test (or a reader with the developer tools) can check the page against the run files:

    data-value   the raw value as JSON (0.6125, 300, true, "B", null)
    data-format  how the text shows it: percent (100 x v, 1 decimal), signed_percent (+/-, same),
                 points (v with sign, 1 decimal), float (1 decimal), int, letter ("none" for null),
                 mark ("✓ right" / "✗ wrong"); bar and dot are SVG shapes whose geometry shows it
                 (bar: height = v x data-scale; dot: cx = data-x0 + v x data-scale)
    data-src     summary:    data-run (run dir relative to the sweep) + data-key, a JSON pointer
                             (RFC 6901) into that run's eval/summary.json
                 prediction: data-run + data-id (question id) + data-key, a JSON pointer into that
                             question's row of the run's eval/predictions.jsonl
                 regraded:   as prediction, but `parsed` / `correct` re-read with data-parser (--parser)
                 table:      data-table (Table.name), data-row (row index), data-col (column name) and
                             data-bound: value (the cell, Table.rows), low | high (its interval's ends,
                             Table.intervals), sd (its spread over seeds, Table.spreads) or seeds
                             (Table.row_seeds)
                 sweep:      data-key "runs": the number of run directories found

Text from the runs (completions hold <think> tags and anything a model writes) is always escaped.
The examples section is medr1.report.examples; the markup of shown values is medr1.report.markup.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

from medr1.cache import write_file_atomically
from medr1.data.names import MODALITY_DISPLAY
from medr1.report.examples import examples_section
from medr1.report.heatmap import CMAP
from medr1.report.markup import (
    attributes,
    lookup,
    not_recorded,
    number,
    pointer,
    summary_number,
    text,
    value_attributes,
)
from medr1.report.runs import Run
from medr1.report.tables import MISSING_MD, MODALITY_AXIS, Table

# --------------------------------------------------------------------------------------------------
# Tables: generic, and matrices as heatmaps
# --------------------------------------------------------------------------------------------------


def cell_colour(fraction: float) -> tuple[str, str]:
    """Background and text colour of a heatmap cell: the PNG heatmap's colour map over 0-100 %."""
    red, green, blue, _ = matplotlib.colormaps[CMAP](max(0.0, min(1.0, float(fraction))))
    dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
    return "#" + "".join(f"{round(255 * c):02x}" for c in (red, green, blue)), "#fff" if dark else "#000"


def colour_scale() -> str:
    stops = ", ".join(f"{cell_colour(k / 10)[0]} {10 * k}%" for k in range(11))
    ramp = f'<span class="ramp" style="background: linear-gradient(to right, {stops})"></span>'
    return (
        f'<div class="scale"><span>0 %</span>{ramp}<span>100 %</span><span>outlined: in-domain</span></div>'
    )


def missing_reason(table: Table, i: int, column: str) -> tuple[str, str]:
    """(short visible reason, full reason) why cell (i, column) of `table` is empty."""
    row = table.rows[i]
    if table.columns[-1] == "note" and row[-1]:
        return "missing", str(row[-1]).strip("()")
    if table.name.startswith("matrix_"):
        train_key = table.train_keys[i] if i < len(table.train_keys) else "all"
        if column == "in-domain":
            if train_key == "all":
                return "no train subset", "base model or trained on all: no in-domain column"
            return "not tested", f"not tested on its train subset {train_key}"
        if column == "out-of-domain":
            return "no other column", "no test column other than the train subset"
        return "not tested", f"{column} is not in this run's eval/summary.json"
    if column == "delta_accuracy_pp":
        return "no base", "no base-model evaluation to compare with"
    return "not recorded", f"{column}: not recorded"


def per_cell(table: Table, attribute: str, i: int, j: int):
    """Cell (i, j) of a per-cell list beside the rows (Table.intervals: (low, high) of the 95% interval;
    Table.spreads: sd over a row's seeds); None when the table has none (or a Table from before them)."""
    values = getattr(table, attribute, None) or []
    if i < len(values) and j < len(values[i] or []):
        return values[i][j]
    return None


def seed_spread(table: Table, i: int, j: int, kind: str, where: dict) -> str:
    """' ± 2.1 (3 seeds)' for a row averaging several seeds; '' otherwise."""
    seeds = getattr(table, "row_seeds", None) or []
    spread = per_cell(table, "spreads", i, j)
    if spread is None or i >= len(seeds) or seeds[i] < 2:
        return ""
    shown = number(spread, "percent" if kind == "percent" else "float", bound="sd", **where)
    return f' <span class="sd">± {shown} ({number(seeds[i], "int", bound="seeds", **where)} seeds)</span>'


def table_cell(table: Table, i: int, j: int, heat: bool) -> str:
    value, kind, column = table.rows[i][j], table.kinds[j], table.columns[j]
    if kind == "text":
        shown = "" if value in (None, "") else text(value)
        return f"<td><code>{shown}</code></td>" if column.endswith("run_dir") else f"<td>{shown}</td>"
    if value is None:
        short, full = missing_reason(table, i, column)
        return f'<td class="missing"{attributes(title=full, data_missing=full)}>{MISSING_MD}<span class="why">{text(short)}</span></td>'
    where = dict(src="table", table=table.name, row=i, col=column)
    parts = [number(value, kind, bound="value", **where), seed_spread(table, i, j, kind, where)]
    interval = per_cell(table, "intervals", i, j)
    if interval is not None:
        low, high = interval
        low_text, high_text = (
            number(low, kind, bound="low", **where),
            number(high, kind, bound="high", **where),
        )
        parts.append(f' <span class="ci">[{low_text}, {high_text}]</span>')
        if kind == "points":  # a difference: does its interval exclude no difference at all?
            excludes = low > 0 or high < 0
            css, mark = ("excl", "* excludes 0") if excludes else ("incl", "includes 0")
            parts.append(f' <span class="{css}" data-excludes-zero="{str(excludes).lower()}">{mark}</span>')
    css, style = ["num"], None
    if heat and kind == "percent":
        style = "background:{};color:{}".format(*cell_colour(value))
    if table.train_keys and column in table.axis and table.train_keys[i] == column:
        css.append("in-domain")
    return f"<td{attributes(class_=' '.join(css), style=style)}>{''.join(parts)}</td>"


def render_table(table: Table, heat: bool = False) -> str:
    head = "".join(f"<th>{text(header)}</th>" for header in table.headers)
    body = []
    for i, row in enumerate(table.rows):
        cells = "".join(table_cell(table, i, j, heat) for j in range(1, len(row)))
        body.append(f'<tr data-label="{text(row[0])}"><th scope="row">{text(row[0])}</th>{cells}</tr>')
    notes = "".join(f"<li>{text(note)}</li>" for note in table.notes)
    return (
        f'<section class="table" data-table="{text(table.name)}"><h3>{text(table.title)}</h3>'
        f'<table class="{"heatmap" if heat else "plain"}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
        + (colour_scale() if heat else "")
        + (f'<ul class="notes">{notes}</ul>' if notes else "")
        + "</section>"
    )


# --------------------------------------------------------------------------------------------------
# What was read
# --------------------------------------------------------------------------------------------------


def shown_runs(result) -> list[tuple[Run, str]]:
    """(run, label) of the runs the comparison shows, in its order (base rows, then trained runs):
    folded duplicates of a base evaluation are left out, as in the tables. A row standing for several
    runs (the seeds of one setting) names them all in its run dir cell; each is shown as
    "<row label> (<run dir>)"."""
    by_relative = {run.relative: run for run in result.runs}
    table = result.comparison
    if "run_dir" not in table.columns:
        return [(run, run.relative) for run in result.runs]
    column = table.columns.index("run_dir")
    shown = []
    for row in table.rows:
        cell = str(row[column] or "")
        names = [cell] if cell in by_relative else [n for n in re.split(r"[,;\s]+", cell) if n in by_relative]
        for name in names:
            shown.append((by_relative[name], str(row[0]) if len(names) == 1 else f"{row[0]} ({name})"))
    return shown or [(run, run.relative) for run in result.runs]


def header_section(result, runs: list[tuple[Run, str]]) -> str:
    labels = {run.relative: label for run, label in runs}
    rows = []
    for run in result.runs:
        shown = labels.get(run.relative, "(duplicate base evaluation, folded)")
        status = "read" if run.summary is not None else f"missing: {run.problem}"
        cells = [run.mode, shown, status, run.parser or "not recorded"]
        rows.append(
            f"<tr><td><code>{text(run.relative)}</code></td>{''.join(f'<td>{text(c)}</td>' for c in cells)}</tr>"
        )
    count = number(len(result.runs), "int", src="sweep", key="runs")
    parser = (
        f"every accuracy re-read with the {result.parser} evaluation parser (--parser)"
        if result.parser
        else "each run's accuracies as its evaluation recorded them (its own parser)"
    )
    return (
        f"<header><h1>{text(result.experiment)}</h1>"
        f"<p>Sweep <code>{text(result.sweep_dir)}</code>: {count} run directories read. Answers: {text(parser)}.</p>"
        '<table class="plain"><thead><tr><th>run dir</th><th>mode</th><th>shown as</th>'
        f"<th>eval/summary.json</th><th>parser</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        '</header><nav><a href="#tables">tables</a><a href="#probes">probes</a>'
        '<a href="#calibration">calibration</a><a href="#examples">examples</a></nav>'
    )


def run_heading(run: Run, label: str) -> str:
    return f"<h3>{text(label)} <small><code>{text(run.relative)}</code></small></h3>"


# --------------------------------------------------------------------------------------------------
# Probes
# --------------------------------------------------------------------------------------------------

SHUFFLED, BLANK, PRIOR = ("probes", "shuffled_options"), ("probes", "blank_image"), ("probes", "letter_prior")
PROBE_COLUMNS = [  # (header, format, key in eval/summary.json)
    ("shuffled options: accuracy (%)", "percent", (*SHUFFLED, "accuracy")),
    ("follows content (%)", "percent", (*SHUFFLED, "follows_content")),
    ("follows letter (%)", "percent", (*SHUFFLED, "follows_letter")),
    ("n", "int", (*SHUFFLED, "n")),
    ("blank image: accuracy (%)", "percent", (*BLANK, "accuracy")),
    ("n", "int", (*BLANK, "n")),
    ("image reliance (pp)", "signed_percent", ("probes", "image_reliance")),
    ("letter prior", "bars", PRIOR),
    ("no answer (%)", "percent", (*PRIOR, "no_answer")),
    ("total variation (%)", "percent", (*PRIOR, "total_variation")),
]


def probe_value(run: Run, fmt: str, *key: str) -> str:
    """One probe number, or "not recorded" when the summary lacks it."""
    value = lookup(run.summary, *key)
    return not_recorded() if value is None else summary_number(run, value, fmt, *key)


def letter_prior_bars(run: Run) -> str:
    """Per option letter, how often it is chosen and how often it is correct, as bars."""
    prior = lookup(run.summary, *PRIOR)
    if not isinstance(prior, dict):
        return not_recorded()
    rows = []
    for letter in sorted(set(prior.get("chosen") or {}) | set(prior.get("correct") or {})):
        bars = []
        for side in ("chosen", "correct"):
            value = lookup(prior, side, letter)
            if value is None:
                bars.append(f"<td>{not_recorded()}</td>")
                continue
            width = f"{100.0 * max(0.0, min(1.0, float(value))):.1f}%"
            shown = summary_number(run, value, "percent", *PRIOR, side, letter)
            bars.append(f'<td><span class="bar {side}" style="width:{width}"></span>{shown}</td>')
        rows.append(f"<tr><th>{text(letter)}</th>{''.join(bars)}</tr>")
    return (
        '<table class="prior"><thead><tr><th></th><th>chosen (%)</th><th>correct (%)</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def consistency(run: Run) -> str:
    if "consistency_rate" in run.summary and run.summary["consistency_rate"] is None:
        return '<span class="nr">no reasoning named an option</span>'
    return probe_value(run, "percent", "consistency_rate")


def probes_section(runs: list[tuple[Run, str]]) -> str:
    headers = ["run", *(header for header, _, _ in PROBE_COLUMNS), "reasoning/answer consistency (%)"]
    rows = []
    for run, label in runs:
        if run.summary is None:
            cells = f'<td colspan="{len(PROBE_COLUMNS) + 1}" class="nr">missing: {text(run.problem)}</td>'
        elif not isinstance(run.summary.get("probes"), dict):
            cells = (
                f'<td colspan="{len(PROBE_COLUMNS)}">{not_recorded("probes")}</td><td>{consistency(run)}</td>'
            )
        else:
            values = [
                letter_prior_bars(run) if fmt == "bars" else probe_value(run, fmt, *key)
                for _, fmt, key in PROBE_COLUMNS
            ]
            cells = "".join(f'<td class="num">{value}</td>' for value in [*values, consistency(run)])
        rows.append(f'<tr data-run="{text(run.relative)}"><th scope="row">{text(label)}</th>{cells}</tr>')
    head = "".join(f"<th>{text(header)}</th>" for header in headers)
    return (
        '<section id="probes"><h2>Probes</h2><p class="hint">From each run\'s eval/summary.json "probes": '
        "accuracy with the options shuffled (and whether answers follow the option's text or its letter), "
        "with a blank image (image reliance = accuracy minus blank-image accuracy, in points), and how "
        "often each letter is chosen vs correct.</p>"
        f'<table class="plain probes"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></section>'
    )


# --------------------------------------------------------------------------------------------------
# Calibration: ECE and reliability diagrams
# --------------------------------------------------------------------------------------------------

PLOT, LEFT, TOP = 140.0, 30.0, 8.0  # reliability diagram: plot side, left and top margins (px)


def reliability_svg(run: Run, bins: list, *key: str) -> str:
    """Per bin: a bar of its accuracy over the bin's confidence range and a dot at (mean confidence,
    accuracy); the dashed diagonal is perfect calibration. Empty bins draw nothing."""
    shapes = []
    for k, item in enumerate(bins):
        if not isinstance(item, dict) or not item.get("count") or item.get("accuracy") is None:
            continue
        accuracy, low, high = float(item["accuracy"]), float(item["low"]), float(item["high"])
        y = TOP + (1 - accuracy) * PLOT
        source = dict(src="summary", run=run.relative, scale=PLOT)
        data = value_attributes(item["accuracy"], "bar", key=pointer(*key, "bins", k, "accuracy"), **source)
        shapes.append(
            f'<rect class="acc" x="{LEFT + low * PLOT:.2f}" y="{y:.2f}" width="{(high - low) * PLOT:.2f}" '
            f'height="{accuracy * PLOT:.2f}"{data}/>'
        )
        if item.get("confidence") is not None:
            confidence = float(item["confidence"])
            data = value_attributes(
                item["confidence"], "dot", key=pointer(*key, "bins", k, "confidence"), x0=LEFT, **source
            )
            shapes.append(f'<circle cx="{LEFT + confidence * PLOT:.2f}" cy="{y:.2f}" r="2.5"{data}/>')
    bottom, right, middle = TOP + PLOT, LEFT + PLOT, TOP + PLOT / 2 + 20
    return (
        f'<svg class="reliability" width="{right + 8:.0f}" height="{bottom + 30:.0f}" role="img">'
        f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{PLOT}" height="{PLOT}"/>'
        f'<line class="diagonal" x1="{LEFT}" y1="{bottom}" x2="{right}" y2="{TOP}"/>'
        + "".join(shapes)
        + f'<text class="tick" x="{LEFT}" y="{bottom + 12}">0</text>'
        f'<text class="tick" x="{right - 6}" y="{bottom + 12}">1</text>'
        f'<text class="tick" x="{LEFT - 10}" y="{TOP + 8}">1</text>'
        f'<text x="{LEFT + PLOT / 2 - 24}" y="{bottom + 26}">confidence</text>'
        f'<text x="10" y="{middle}" transform="rotate(-90 10 {middle})">accuracy</text></svg>'
    )


def calibration_figure(run: Run, title: str, block: dict, *key: str) -> str:
    ece, n, bins = (
        probe_value(run, "percent", *key, "ece"),
        probe_value(run, "int", *key, "n"),
        block.get("bins"),
    )
    diagram = reliability_svg(run, bins, *key) if isinstance(bins, list) else not_recorded("bins")
    caption = f"<figcaption>{text(title)}: ECE {ece} % (n = {n})</figcaption>"
    return f'<figure class="calibration">{caption}{diagram}</figure>'


def calibration_section(runs: list[tuple[Run, str]]) -> str:
    parts = []
    for run, label in runs:
        calibration = (run.summary or {}).get("calibration")
        if run.summary is None:
            content = f'<p class="nr">missing: {text(run.problem)}</p>'
        elif not isinstance(calibration, dict):
            content = f"<p>{not_recorded('calibration')}</p>"
        else:
            figures = [calibration_figure(run, "all test questions", calibration, "calibration")]
            by_modality = calibration.get("by_modality") or {}
            for name in sorted(
                by_modality, key=lambda name: MODALITY_AXIS.rank(MODALITY_AXIS.canonical_or_raw(name))
            ):
                if isinstance(by_modality[name], dict):
                    display = MODALITY_DISPLAY.get(MODALITY_AXIS.canonical_or_raw(name), name)
                    figures.append(
                        calibration_figure(
                            run, display, by_modality[name], "calibration", "by_modality", name
                        )
                    )
            content = f'<div class="figures">{"".join(figures)}</div>'
        parts.append(
            f'<div class="run" data-run="{text(run.relative)}">{run_heading(run, label)}{content}</div>'
        )
    return (
        '<section id="calibration"><h2>Calibration</h2><p class="hint">Expected calibration error (ECE) '
        "over 10 equal-width confidence bins (confidence: the probability the policy puts on the letter it "
        "answers); bars are each bin's accuracy, dots its mean confidence, the dashed line perfect "
        f"calibration.</p>{''.join(parts)}</section>"
    )


# --------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 2px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .3em .5em; vertical-align: top; }
thead th { background: #f3f3f3; } tbody th { text-align: left; }
td.num { text-align: right; } table.heatmap td { text-align: center; min-width: 5em; }
td.in-domain { outline: 3px solid #d62728; outline-offset: -3px; }
td.missing { background: #e0e0e0; color: #555; text-align: center; }
.why { display: block; font-size: .75em; }
.sd { font-size: .8em; white-space: nowrap; }
.ci { font-size: .8em; opacity: .85; white-space: nowrap; }
.excl { font-size: .75em; font-weight: bold; color: #1a7f37; } .incl { font-size: .75em; color: #777; }
.scale { display: flex; align-items: center; gap: .5em; font-size: .8em; color: #555; }
.ramp { display: inline-block; width: 16em; height: .9em; }
.hint, .notes { color: #555; font-size: .85em; }
.nr { color: #888; font-style: italic; }
table.prior { font-size: .8em; margin: 0; } table.prior td { min-width: 7em; text-align: left; }
.bar { display: inline-block; height: .7em; margin-right: .3em; vertical-align: middle; }
.bar.chosen { background: #1f77b4; } .bar.correct { background: #ff7f0e; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
figure.calibration { margin: 0; font-size: .85em; }
svg.reliability { font-size: 10px; }
svg .frame { fill: none; stroke: #999; } svg .diagonal { stroke: #555; stroke-dasharray: 4 3; }
svg .acc { fill: #1f77b4; fill-opacity: .55; stroke: #1f77b4; } svg circle { fill: #d62728; }
article.example { display: grid; grid-template-columns: 180px 1fr; gap: .5em 1em;
  border: 1px solid #ccc; padding: .8em; margin: 1em 0; }
article.example table.answers { grid-column: 1 / -1; width: 100%; }
.placeholder { width: 160px; height: 120px; background: #eee; color: #666; font-size: .8em;
  display: flex; align-items: center; justify-content: center; text-align: center; overflow: hidden; }
ul.options { list-style: none; padding-left: 0; } ul.options li.correct { font-weight: bold; color: #1a7f37; }
ul.options li.correct::after { content: "  ✓ correct"; }
.reasoning { white-space: pre-wrap; max-height: 12em; overflow: auto; max-width: 50em; font-size: .85em; }
.right { color: #1a7f37; font-weight: bold; } .wrong { color: #c62828; font-weight: bold; }
"""


def write_html(result, path: Path, examples_per_modality: int = 3) -> Path:
    """Write `result` (build_report's ReportResult) as one self-contained HTML file at `path`.

    examples_per_modality: how many test questions each modality's examples show. Returns `path`.
    The page is written to a temporary name beside `path` and renamed when complete, so a browser
    or a copy never sees half a page.
    """
    path = Path(path)
    runs = shown_runs(result)
    tables = list(result.tables)
    pairs = getattr(result, "pairs", None)  # None: no pairs table (or a report from before they existed)
    if pairs is not None and all(pairs is not table for table in tables):
        tables.append(pairs)
    body = [
        header_section(result, runs),
        '<section id="tables"><h2>Tables</h2>',
        *(render_table(table, heat=table.name.startswith("matrix_")) for table in tables),
        ""
        if pairs is not None
        else f'<section class="table" data-table="pairs"><h3>Pairs</h3><p>{not_recorded("pairs")}</p></section>',
        "</section>",
        probes_section(runs),
        calibration_section(runs),
        examples_section(runs, examples_per_modality, result.parser),
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{text(result.experiment)}: report</title><style>{CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
    return write_file_atomically(path, page)
