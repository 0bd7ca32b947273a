"""Markup the HTML report is built of: shown numbers that carry their raw value and their source.

The data-attribute scheme (data-value, data-format, data-src, ...) is described in medr1.report.html;
format_value is the one place a value becomes the text shown.
"""

from __future__ import annotations

import html
import json

from medr1.report.runs import Run
from medr1.report.tables import format_cell

NOT_RECORDED = "not recorded"


def format_value(value, fmt: str) -> str:
    """The text a value is shown as (a test formats data-value the same way and compares)."""
    if fmt in ("percent", "points", "float", "int"):
        return format_cell(value, fmt)  # as the Markdown tables show it
    if fmt == "signed_percent":
        return f"{100.0 * float(value):+.1f}"
    if fmt == "letter":
        return "none" if value is None else str(value)
    if fmt == "mark":
        return "✓ right" if value else "✗ wrong"
    raise ValueError(f"unknown number format {fmt!r}")


def pointer(*parts: str | int) -> str:
    """JSON pointer (RFC 6901): pointer("calibration", "bins", 3) -> "/calibration/bins/3"."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in parts)


def text(value) -> str:
    """Any text from the runs, escaped for element content and attribute values alike."""
    return html.escape(str(value), quote=True)


def attributes(**items) -> str:
    """' data-src="summary" ...': data_src -> data-src, class_ -> class; None values left out."""
    return "".join(
        f' {key.rstrip("_").replace("_", "-")}="{text(value)}"'
        for key, value in items.items()
        if value is not None
    )


def value_attributes(value, fmt: str, **source) -> str:
    """data-value (JSON), data-format and data-<source key> attributes of one shown value."""
    data = {f"data_{key}": item for key, item in source.items()}
    return attributes(data_value=json.dumps(value), data_format=fmt, **data)


def number(value, fmt: str, css: str | None = None, **source) -> str:
    """One shown value: its formatted text in a span carrying its raw value and source."""
    return f"<span{attributes(class_=css)}{value_attributes(value, fmt, **source)}>{text(format_value(value, fmt))}</span>"


def summary_number(run: Run, value, fmt: str, *key: str | int) -> str:
    """A value read from `run`'s eval/summary.json at `key`."""
    return number(value, fmt, src="summary", run=run.relative, key=pointer(*key))


def not_recorded(what: str = "") -> str:
    return f'<span class="nr">{text(what + " " if what else "")}{NOT_RECORDED}</span>'


def lookup(data, *keys):
    """data[k1][k2]...; None when any step is missing."""
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data
