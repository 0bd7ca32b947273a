"""report.html on a fake sweep (tests/helpers/fake_sweep.py): the page is parsed with html.parser and
every value it shows is checked against the run files it came from, formatted independently here."""

from __future__ import annotations

import base64
import io
import json
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from statistics import mean

import numpy as np
import pytest
from PIL import Image

from medr1.report import build_report
from medr1.report.html import write_html
from medr1.report.tables import Table
from tests.helpers import fake_sweep
from tests.helpers.fake_sweep import INJECTION, LABELS, build_fake_sweep, colour_of

EXAMPLES = 2
# Per modality, the first two ids in natural order answered by runs 0, 1 and 2 (run 2 lacks ct-1).
EXPECTED_EXAMPLES = {"ct": ["ct-2", "ct-3"], "mri": ["mri-1", "mri-2"], "xray": ["xray-1", "xray-2"]}

# --------------------------------------------------------------------------------------------------
# A small DOM from html.parser
# --------------------------------------------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    parent: Element | None = None
    children: list = field(default_factory=list)

    def text(self) -> str:
        return "".join(child if isinstance(child, str) else child.text() for child in self.children)

    def iter(self):
        yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.iter()

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Element]:
        wanted = {key.replace("_", "-"): value for key, value in attrs.items()}
        return [
            element
            for element in self.iter()
            if (tag is None or element.tag == tag)
            and all(element.attrs.get(key) == value for key, value in wanted.items())
        ]

    def find(self, tag: str | None = None, **attrs: str) -> Element:
        found = self.find_all(tag, **attrs)
        assert found, f"no <{tag}> with {attrs}"
        return found[0]

    def ancestors(self):
        element = self.parent
        while element is not None:
            yield element
            element = element.parent


class TreeBuilder(HTMLParser):
    """Builds the tree and insists every element is closed where it was opened."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def _add(self, tag, attrs) -> Element:
        element = Element(tag, {key: value or "" for key, value in attrs}, parent=self.stack[-1])
        self.stack[-1].children.append(element)
        return element

    def handle_starttag(self, tag, attrs):
        element = self._add(tag, attrs)
        if tag not in VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag, attrs):
        self._add(tag, attrs)

    def handle_endtag(self, tag):
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse(page: str) -> Element:
    builder = TreeBuilder()
    builder.feed(page)
    builder.close()
    assert builder.stack == [builder.root], "unclosed elements at the end of the page"
    return builder.root


# --------------------------------------------------------------------------------------------------
# The run files, read independently of medr1.report
# --------------------------------------------------------------------------------------------------


def resolve(document, pointer: str):
    """RFC 6901 JSON pointer."""
    assert pointer.startswith("/"), pointer
    for token in pointer[1:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        document = document[int(token)] if isinstance(document, list) else document[token]
    return document


def summary_file(sweep: Path, run: str) -> dict:
    return json.loads((sweep / run / "eval" / "summary.json").read_text())


def prediction_rows(sweep: Path, run: str) -> dict[str, dict]:
    rows = {}
    for line in (sweep / run / "eval" / "predictions.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["id"], row)
    return rows


def medr1_parser(completion: str) -> str | None:
    """Med-R1's evaluation regex, written out."""
    match = re.search(r"<answer>\s*(\w+)\s*</answer>", completion)
    return match.group(1) if match else None


def formatted(value, fmt: str) -> str:
    if fmt == "percent":
        return f"{100 * value:.1f}"
    if fmt == "signed_percent":
        return f"{100 * value:+.1f}"
    if fmt == "points":
        return f"{value:+.1f}"
    if fmt == "float":
        return f"{value:.1f}"
    if fmt == "int":
        return str(int(value))
    if fmt == "letter":
        return "none" if value is None else value
    if fmt == "mark":
        return "✓ right" if value else "✗ wrong"
    raise AssertionError(f"format {fmt!r} not in the documented scheme")


def source_value(element: Element, sweep: Path, result):
    """What the element's data-src / data-* attributes point at, read from the files (or the Table)."""
    attrs = element.attrs
    src = attrs["data-src"]
    if src == "summary":
        return resolve(summary_file(sweep, attrs["data-run"]), attrs["data-key"])
    if src == "prediction":
        return resolve(prediction_rows(sweep, attrs["data-run"])[attrs["data-id"]], attrs["data-key"])
    if src == "regraded":
        assert attrs["data-parser"] == "medr1"
        row = prediction_rows(sweep, attrs["data-run"])[attrs["data-id"]]
        parsed = medr1_parser(row["completion"])
        return {"/parsed": parsed, "/correct": parsed == row["answer"]}[attrs["data-key"]]
    if src == "table":
        tables = {table.name: table for table in [*result.tables, getattr(result, "pairs", None)] if table}
        table = tables[attrs["data-table"]]
        i, j = int(attrs["data-row"]), table.columns.index(attrs["data-col"])
        bound = attrs["data-bound"]
        if bound == "value":
            return table.rows[i][j]
        if bound in ("low", "high"):
            return table.intervals[i][j][bound == "high"]
        return table.spreads[i][j] if bound == "sd" else table.row_seeds[i]
    if src == "sweep":
        assert attrs["data-key"] == "runs"
        return len(list(sweep.glob("*/.hydra/config.yaml")))
    raise AssertionError(f"data-src {src!r} not in the documented scheme")


def check_values(tree: Element, sweep: Path, result) -> dict[str, int]:
    """Every data-value equals its source and every shown value is its data-value formatted;
    returns how many were checked per data-src."""
    counts: dict[str, int] = {}
    for element in tree.iter():
        if "data-value" not in element.attrs:
            continue
        value, fmt = json.loads(element.attrs["data-value"]), element.attrs["data-format"]
        assert value == source_value(element, sweep, result), element.attrs
        if fmt == "bar":
            assert float(element.attrs["height"]) == pytest.approx(
                value * float(element.attrs["data-scale"]), abs=0.006
            )
        elif fmt == "dot":
            x = float(element.attrs["data-x0"]) + value * float(element.attrs["data-scale"])
            assert float(element.attrs["cx"]) == pytest.approx(x, abs=0.006)
        else:
            assert element.text() == formatted(value, fmt), element.attrs
        counts[element.attrs["data-src"]] = counts.get(element.attrs["data-src"], 0) + 1
    return counts


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------


@dataclass
class Page:
    sweep: Path
    result: object
    path: Path
    html: str
    tree: Element


def render(sweep: Path, result, examples: int = EXAMPLES) -> Page:
    path = write_html(result, sweep / "report.html", examples_per_modality=examples)
    page = path.read_text(encoding="utf-8")
    return Page(sweep, result, path, page, parse(page))


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Page:
    sweep = build_fake_sweep(tmp_path_factory.mktemp("html")).root
    return render(sweep, build_report(sweep, use_wandb=False))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    return build_fake_sweep(tmp_path).root


def section(page: Page, name: str) -> Element:
    return page.tree.find("section", id=name)


# --------------------------------------------------------------------------------------------------
# Every value shown equals the run files
# --------------------------------------------------------------------------------------------------


def test_every_value_equals_its_source_and_is_shown_as_formatted(page: Page):
    counts = check_values(page.tree, page.sweep, page.result)
    assert counts["summary"] >= 80 and counts["prediction"] >= 40 and counts["table"] >= 30, counts
    assert counts["sweep"] == 1 and "regraded" not in counts


def test_every_number_on_the_page_carries_its_value(page: Page):
    numeric = re.compile(r"[+\-−]?\d+(\.\d+)?%?")
    body = page.tree.find("body")
    bare = []
    for element in body.iter():
        for child in element.children:
            if isinstance(child, str) and numeric.fullmatch(child.strip()):
                chain = [element, *element.ancestors()]
                exempt = any(
                    "data-value" in e.attrs or e.tag == "code" or e.attrs.get("class") == "tick"
                    for e in chain
                )
                if not exempt:
                    bare.append((element.tag, child))
    assert not bare


def test_matrix_cells_equal_the_summaries(page: Page):
    summaries = {run: summary_file(page.sweep, run) for run in ("0", "1", "2")}
    run_of = {"base": "0", "ct": "1", "mri": "2"}
    train = {"base": None, "ct": "ct", "mri": "mri"}
    table = section(page, "tables").find("section", data_table="matrix_modality")
    checked = 0
    for element in table.find_all(data_bound="value"):
        label = page.result.modality_matrix.rows[int(element.attrs["data-row"])][0]
        summary, column = summaries[run_of[label]], element.attrs["data-col"]
        by_modality = summary["by_modality"]
        expected = {
            "overall": summary["accuracy"],
            "in-domain": by_modality.get(train[label] or ""),
            "out-of-domain": mean(v for k, v in by_modality.items() if k != train[label]),
        }.get(column, by_modality.get(column))
        assert json.loads(element.attrs["data-value"]) == pytest.approx(expected)
        checked += 1
    assert checked == 3 * 6 - 1  # base has no in-domain cell; xray has none at all


def test_comparison_cells_equal_the_summaries(page: Page):
    table = page.result.comparison
    base_accuracy = summary_file(page.sweep, "0")["accuracy"]
    shown = section(page, "tables").find("section", data_table="comparison")
    checked = 0
    for element in shown.find_all(data_bound="value"):
        row = table.rows[int(element.attrs["data-row"])]
        run = row[table.columns.index("run_dir")]
        summary, column = summary_file(page.sweep, run), element.attrs["data-col"]
        expected = (
            100 * (summary["accuracy"] - base_accuracy) if column == "delta_accuracy_pp" else summary[column]
        )
        assert json.loads(element.attrs["data-value"]) == pytest.approx(expected)
        assert LABELS[run] == row[0]
        checked += 1
    assert checked == 3 * 5 - 1  # base: no delta; run 3: nothing


def test_heatmap_colours_follow_accuracy_and_outline_in_domain(page: Page):
    table = section(page, "tables").find("section", data_table="matrix_modality")
    colours: dict[float, set[str]] = {}
    outlined = []
    for cell in table.find_all("td"):
        values = [e for e in cell.iter() if e.attrs.get("data-bound") == "value"]
        if not values:
            continue
        match = re.fullmatch(r"background:(#[0-9a-f]{6});color:(#fff|#000)", cell.attrs["style"])
        colours.setdefault(json.loads(values[0].attrs["data-value"]), set()).add(match.group(1))
        if "in-domain" in cell.attrs["class"].split():
            outlined.append((values[0].attrs["data-row"], values[0].attrs["data-col"]))
    assert all(len(shades) == 1 for shades in colours.values())  # one value, one colour
    assert len({shade for shades in colours.values() for shade in shades}) == len(colours)
    rows = [row[0] for row in page.result.modality_matrix.rows]
    assert sorted(outlined) == sorted([(str(rows.index("ct")), "ct"), (str(rows.index("mri")), "mri")])


def test_missing_cells_say_why(page: Page):
    table = section(page, "tables").find("section", data_table="matrix_modality")
    xray = table.find("tr", data_label="xray")
    missing = xray.find_all("td", **{"class": "missing"})
    assert len(missing) == 6
    assert all(
        cell.text().startswith("—") and "no eval/summary.json" in cell.attrs["data-missing"]
        for cell in missing
    )
    base = table.find("tr", data_label="base").find("td", **{"class": "missing"})
    assert "no in-domain column" in base.attrs["data-missing"] and "no train subset" in base.text()


def test_probes_show_every_recorded_probe(page: Page):
    probes = section(page, "probes")

    def leaves(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}/{key}")
            else:
                yield f"{prefix}/{key}"

    for run, recorded in fake_sweep.PROBES.items():
        row = probes.find("tr", data_run=run)
        keys = {e.attrs["data-key"] for e in row.iter() if "data-key" in e.attrs}
        assert keys == {f"/probes{leaf}" for leaf in leaves(recorded)} | {"/consistency_rate"}
    assert (
        probes.find("tr", data_run="1").text().count("not recorded") == 3
    )  # blank image: accuracy, n, reliance
    assert "probes not recorded" in probes.find("tr", data_run="2").text()
    assert "missing: no eval/summary.json" in probes.find("tr", data_run="3").text()
    bar = probes.find("tr", data_run="0").find("span", **{"class": "bar chosen"})
    assert bar.attrs["style"] == "width:50.0%"  # letter A chosen half the time


def test_calibration_diagrams_per_run_and_modality(page: Page):
    calibration = section(page, "calibration")
    for run in ("0", "1"):
        block = calibration.find("div", data_run=run)
        recorded = summary_file(page.sweep, run)["calibration"]
        keys = {e.attrs["data-key"] for e in block.iter() if "data-key" in e.attrs}
        parts = [("/calibration", recorded)] + [
            (f"/calibration/by_modality/{m}", b) for m, b in recorded["by_modality"].items()
        ]
        expected = set()
        for prefix, part in parts:
            expected |= {f"{prefix}/ece", f"{prefix}/n"}
            for k, item in enumerate(part["bins"]):
                if item["count"]:
                    expected |= {f"{prefix}/bins/{k}/accuracy", f"{prefix}/bins/{k}/confidence"}
        assert keys == expected
        assert len(block.find_all("svg")) == 1 + len(recorded["by_modality"])
    assert "calibration not recorded" in calibration.find("div", data_run="2").text()
    assert "missing: no eval/summary.json" in calibration.find("div", data_run="3").text()


# --------------------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------------------


def test_examples_are_the_first_common_questions_marked_as_recorded(page: Page):
    examples = section(page, "examples")
    modalities = examples.find_all("section", **{"class": "modality"})
    assert [m.attrs["data-modality"] for m in modalities] == list(EXPECTED_EXAMPLES)
    rows = {run: prediction_rows(page.sweep, run) for run in ("0", "1", "2")}
    for modality in modalities:
        articles = modality.find_all("article")
        assert [a.attrs["data-question"] for a in articles] == EXPECTED_EXAMPLES[
            modality.attrs["data-modality"]
        ]
        for article in articles:
            question = article.attrs["data-question"]
            answers = article.find("table").find("tbody").find_all("tr")
            assert [tr.attrs["data-run"] for tr in answers] == ["0", "1", "2"]
            for tr in answers:
                row = rows[tr.attrs["data-run"]][question]
                mark = tr.find(data_key="/correct")
                assert mark.text() == ("✓ right" if row["correct"] else "✗ wrong")
                assert tr.find(data_key="/parsed").text() == (row["parsed"] or "none")
                think = re.search(r"<think>(.*)</think>", row["completion"], re.S)
                if think:
                    assert tr.find("div", **{"class": "reasoning"}).text() == think.group(1).strip()
                else:
                    assert "no <think> block" in tr.text() and row["completion"] in tr.text()
            correct = article.find("li", **{"class": "correct"})
            assert correct.attrs["data-letter"] == rows["0"][question]["answer"]
    assert "not shown: modality=xray (3): missing: no eval/summary.json" in examples.text()


def test_images_are_inline_pngs_of_their_question(page: Page):
    shown = 0
    for article in section(page, "examples").find_all("article"):
        question = article.attrs["data-question"]
        images = article.find_all("img")
        if question == fake_sweep.BROKEN_IMAGE:
            assert not images
            placeholder = article.find("div", data_image="unreadable")
            assert "image unreadable" in placeholder.text() and "mri-1.png" in placeholder.attrs["title"]
        elif question == fake_sweep.NO_IMAGE:
            assert not images and "no image path recorded" in article.find("div", data_image="none").text()
        else:
            (image,) = images
            prefix = "data:image/png;base64,"
            assert image.attrs["src"].startswith(prefix)
            with Image.open(io.BytesIO(base64.b64decode(image.attrs["src"][len(prefix) :]))) as png:
                assert png.format == "PNG" and png.size == (160, 100)  # 320 x 200 scaled to 160 px
                assert png.convert("RGB").getpixel((80, 50)) == colour_of(question)
            shown += 1
    assert shown == 4


def test_dicom_images_are_read_as_training_reads_them(sweep: Path):
    from tests.helpers.scans import write_dicom

    stored = np.tile(np.arange(0, 256, 4, dtype=np.uint16), (48, 1))  # 48 x 64, dark left, bright right
    dicom = write_dicom(sweep.parent / "scans" / "ct-2.dcm", stored)
    for run in ("0", "1"):
        path = sweep / run / "eval" / "predictions.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for row in rows:
            if row["id"] == "ct-2":
                row["images"] = [str(dicom)]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    shown = render(sweep, build_report(sweep, use_wandb=False))
    (image,) = shown.tree.find("article", data_question="ct-2").find_all("img")
    with Image.open(io.BytesIO(base64.b64decode(image.attrs["src"].split(",", 1)[1]))) as png:
        grey = np.asarray(png.convert("L"), dtype=float)
    assert png.size == (64, 48) and grey[:, :8].mean() < 40 and grey[:, -8:].mean() > 215


def test_completion_text_is_escaped(page: Page):
    assert "<script" not in page.html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.html
    assert not page.tree.find_all("script")
    article = page.tree.find("article", data_question="ct-2")
    reasoning = article.find("tr", data_run="1").find("div", **{"class": "reasoning"})
    assert INJECTION in reasoning.text() and "<b>not bold</b>" in reasoning.text()
    assert all(isinstance(child, str) for child in reasoning.children)  # no element was made of it


def test_no_external_references(page: Page):
    for tag in ("script", "link", "iframe", "object", "embed", "base", "form"):
        assert not page.tree.find_all(tag), tag
    for element in page.tree.iter():
        for name in ("src", "href", "action", "srcset", "poster", "xlink:href"):
            if name in element.attrs:
                assert element.attrs[name].startswith(("data:image/png;base64,", "#")), element.attrs[name]
        assert "url(" not in element.attrs.get("style", "")
        assert not any("http" in value for name, value in element.attrs.items() if name != "src")
    style = page.tree.find("style").text()
    assert "url(" not in style and "@import" not in style and "@font-face" not in style
    links = {a.attrs["href"][1:] for a in page.tree.find_all("a")}
    assert links == {"tables", "probes", "calibration", "examples"}
    assert all(page.tree.find_all(id=target) for target in links)


def test_missing_pieces_say_so(page: Page):
    examples = section(page, "examples")
    run2 = examples.find("article", data_question="ct-2").find("tr", data_run="2")
    assert "not recorded" in run2.text()  # no confidence in old predictions
    if getattr(page.result, "pairs", None) is None:
        assert "pairs not recorded" in section(page, "tables").find("section", data_table="pairs").text()
    header = page.tree.find("header")
    assert "missing: no eval/summary.json" in header.text()


# --------------------------------------------------------------------------------------------------
# Intervals, seeds, pairs; --parser; sweeps without predictions; writing
# --------------------------------------------------------------------------------------------------


def test_intervals_seeds_and_pairs_are_shown_with_their_values(sweep: Path):
    result = build_report(sweep, use_wandb=False)
    for table in result.tables:
        table.intervals = [
            [
                (value - 0.0125, value + 0.03125)
                if kind in ("percent", "points") and value is not None
                else None
                for value, kind in zip(row, table.kinds, strict=True)
            ]
            for row in table.rows
        ]
        table.spreads = [
            [
                0.015625 if kind == "percent" and value is not None else None
                for value, kind in zip(row, table.kinds, strict=True)
            ]
            for row in table.rows
        ]
        table.row_seeds = [3 if i == 1 else 1 for i in range(len(table.rows))]
    result.pairs = Table(
        name="pairs",
        title="pairs differing in one setting",
        columns=["pair", "setting", "difference_pp"],
        headers=["pair", "setting", "Δ accuracy (pp)"],
        kinds=["text", "text", "points"],
        rows=[["ct vs mri", "modality", 35.5], ["base vs mri", "mode", 4.4]],
    )
    result.pairs.intervals = [[None, None, (20.25, 50.5)], [None, None, (-3.0, 12.75)]]
    shown = render(sweep, result)
    counts = check_values(shown.tree, sweep, result)
    tables = section(shown, "tables")
    matrix = tables.find("section", data_table="matrix_modality")
    values = matrix.find_all(data_bound="value")
    assert (
        len(matrix.find_all(data_bound="low")) == len(matrix.find_all(data_bound="high")) == len(values) == 17
    )
    for interval in matrix.find_all("span", **{"class": "ci"}):
        low, high = (json.loads(e.attrs["data-value"]) for e in interval.iter() if "data-value" in e.attrs)
        assert interval.text() == f"[{100 * low:.1f}, {100 * high:.1f}]"
    row = matrix.find_all("tr")[2]  # the second body row averages three seeds
    assert row.find("span", **{"class": "sd"}).text().startswith("± 1.6 (3 seeds)")
    pairs = tables.find("section", data_table="pairs")
    marks = [e.attrs["data-excludes-zero"] for e in pairs.iter() if "data-excludes-zero" in e.attrs]
    assert marks == ["true", "false"] and "excludes 0" in pairs.text()
    assert counts["table"] >= 90


def test_parser_option_rereads_the_examples(sweep: Path):
    default = render(sweep, build_report(sweep, use_wandb=False))
    question = default.tree.find("article", data_question=fake_sweep.PAREN_ANSWER)
    assert (
        question.find("tr", data_run="1").find(data_key="/correct").text() == "✓ right"
    )  # robust reads "(B)"

    result = build_report(sweep, use_wandb=False, parser="medr1")
    shown = render(sweep, result)
    counts = check_values(shown.tree, sweep, result)
    assert counts["regraded"] == 2 * 3 * sum(len(ids) for ids in EXPECTED_EXAMPLES.values())
    row = shown.tree.find("article", data_question=fake_sweep.PAREN_ANSWER).find("tr", data_run="1")
    assert row.find(data_key="/parsed").text() == "none" and row.find(data_key="/correct").text() == "✗ wrong"
    assert "re-read with the medr1 evaluation parser" in section(shown, "examples").text()


def test_sweep_without_predictions_or_new_fields(sweep: Path):
    for run in ("0", "1", "2"):
        (sweep / run / "eval" / "predictions.jsonl").unlink()
        summary = summary_file(sweep, run)
        for key in ("probes", "calibration", "consistency_rate", "image_reliance"):
            summary.pop(key, None)
        (sweep / run / "eval" / "summary.json").write_text(json.dumps(summary))
    shown = render(sweep, build_report(sweep, use_wandb=False))
    check_values(shown.tree, sweep, shown.result)
    examples = section(shown, "examples")
    assert "no run has readable predictions" in examples.text() and not examples.find_all("article")
    assert "not shown: base (0): no eval/predictions.jsonl" in examples.text()
    assert section(shown, "probes").text().count("probes not recorded") == 3
    assert section(shown, "calibration").text().count("calibration not recorded") == 3


def test_written_whole_and_replaced_atomically(sweep: Path):
    result = build_report(sweep, use_wandb=False)
    path = write_html(result, sweep / "report.html")
    first = path.read_text(encoding="utf-8")
    assert first.startswith("<!DOCTYPE html>") and first.rstrip().endswith("</html>")
    assert len(parse(first).find_all("article")) == 3 * 3  # the default: three questions per modality
    none_asked = parse(write_html(result, sweep / "none.html", examples_per_modality=0).read_text())
    assert not none_asked.find_all("article") and "no examples asked for" in none_asked.text()
    result.comparison.kinds[1] = "fraction"  # not a format the page knows: rendering fails
    with pytest.raises(ValueError, match="unknown number format 'fraction'"):
        write_html(result, path)
    assert path.read_text(encoding="utf-8") == first  # the previous page is untouched
    assert sorted(p.name for p in sweep.iterdir() if p.suffix == ".html" or ".tmp" in p.name) == [
        "none.html",
        "report.html",
    ]
