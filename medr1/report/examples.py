"""The HTML report's examples: per test modality, a few questions every evaluated run answered, each
with its image (an inline PNG thumbnail; DICOM and NIfTI read as training reads them), the options,
the correct answer, and every run's reasoning, answer, parsed letter, confidence and right/wrong mark.

Questions are chosen by id in natural order ("ct-2" before "ct-10"), so the same questions are shown
whatever order the evaluation wrote them in. Prediction rows hold no question text (only options), and
the report does not re-read datasets to find it.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from medr1.answers import answer_text, get_parser, think_text
from medr1.data.names import MODALITY_DISPLAY
from medr1.report.markup import attributes, not_recorded, number, pointer, text
from medr1.report.runs import Run, natural_key
from medr1.report.tables import MODALITY_AXIS

THUMBNAIL = 160  # px, the longest side of an inlined image

# --------------------------------------------------------------------------------------------------
# Which questions
# --------------------------------------------------------------------------------------------------


def read_predictions(run: Run) -> tuple[dict[str, dict] | None, str | None]:
    """({question id: row}, None) from eval/predictions.jsonl, or (None, why not)."""
    path = run.path / "eval" / "predictions.jsonl"
    if not path.is_file():
        return None, "no eval/predictions.jsonl"
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return None, f"eval/predictions.jsonl unreadable: {error}"
    by_id: dict[str, dict] = {}
    for row in rows:
        if isinstance(row, dict) and "id" in row:
            by_id.setdefault(str(row["id"]), row)  # an id's first row, the one data-id points at
    return (by_id, None) if by_id else (None, "eval/predictions.jsonl holds no question rows")


def choose_examples(evaluated: list[dict[str, dict]], per_modality: int) -> dict[str, list[str]]:
    """{modality: the first `per_modality` ids, in natural order, that every evaluated run answered}
    for every modality some run was tested on (an empty list when no such question is common to all)."""
    modality_of: dict[str, str] = {}
    for rows in evaluated:
        for question, row in rows.items():
            modality_of.setdefault(question, MODALITY_AXIS.canonical_or_raw(str(row.get("modality"))))
    chosen = {modality: [] for modality in sorted(set(modality_of.values()), key=MODALITY_AXIS.rank)}
    for question in sorted(set.intersection(*(set(rows) for rows in evaluated)), key=natural_key):
        if len(chosen[modality_of[question]]) < per_modality:
            chosen[modality_of[question]].append(question)
    return chosen


# --------------------------------------------------------------------------------------------------
# One question
# --------------------------------------------------------------------------------------------------


def image_path(run: Run, name: str) -> Path:
    """A recorded image path; a relative one that does not exist from here is tried in the run dir."""
    path = Path(name)
    if not path.is_absolute() and not path.exists() and (run.path / path).exists():
        return run.path / path
    return path


def image_html(question: str, rows: list[tuple[Run, dict]]) -> str:
    """The question's first image as an inline PNG thumbnail, or a placeholder saying why not."""
    recorded = next(((run, row["images"]) for run, row in rows if row.get("images")), None)
    if recorded is None:
        return '<div class="placeholder" data-image="none">no image path recorded in eval/predictions.jsonl</div>'
    run, names = recorded
    from medr1.data.images import load_images  # the DICOM / NIfTI readers: only when there are images

    path = image_path(run, str(names[0]))
    try:
        image = load_images(path, question)[0]
    except Exception as error:  # BadRecordError, or whatever a damaged file makes PIL or pydicom raise
        problem = f"image unreadable: {path} ({error})"
        return f'<div class="placeholder"{attributes(data_image="unreadable", title=problem)}>image unreadable: {text(path.name)}</div>'
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    source = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    more = f'<p class="hint">and {len(names) - 1} more image(s)</p>' if len(names) > 1 else ""
    return f"<img{attributes(src=source, alt=path.name, title=str(path))}>{more}"


def completion_cells(completion: str) -> list[str]:
    """The reasoning (inside <think>) and the answer (inside <answer>, else the whole completion)."""
    reasoning, answer = think_text(completion), answer_text(completion)
    if reasoning is None:
        shown_reasoning = '<span class="nr">no &lt;think&gt; block</span>'
    else:
        shown_reasoning = f'<div class="reasoning">{text(reasoning.strip())}</div>'
    if answer is None:
        shown_answer = f'<span class="nr">no &lt;answer&gt; block; completion:</span><div class="reasoning">{text(completion)}</div>'
    else:
        shown_answer = text(answer.strip())
    return [shown_reasoning, shown_answer]


def answer_row(run: Run, label: str, question: str, row: dict, parser: str | None) -> str:
    """One run's reasoning, answer, parsed letter, confidence and right/wrong mark for a question;
    with `parser` (--parser) the letter is re-read with it, as the tables' accuracies are."""
    completion = str(row.get("completion") or "")
    source = dict(run=run.relative, id=question)
    if parser is not None:
        parsed = get_parser(parser)(completion, row.get("options") or {})
        correct, source = parsed == row.get("answer"), source | dict(src="regraded", parser=parser)
    else:
        parsed, correct, source = row.get("parsed"), row.get("correct"), source | dict(src="prediction")
    if "confidence" not in row:
        confidence = not_recorded()
    elif row["confidence"] is None:
        confidence = '<span class="nr">no answer letter</span>'
    else:
        confidence = number(
            row["confidence"],
            "percent",
            src="prediction",
            key=pointer("confidence"),
            run=run.relative,
            id=question,
        )
    if parser is None and "correct" not in row:
        mark = not_recorded()
    else:
        mark = number(
            bool(correct), "mark", css="right" if correct else "wrong", key=pointer("correct"), **source
        )
    cells = [
        *completion_cells(completion),
        number(parsed, "letter", key=pointer("parsed"), **source),
        confidence,
        mark,
    ]
    return (
        f'<tr data-run="{text(run.relative)}"><th scope="row">{text(label)}</th>'
        + "".join(f"<td>{cell}</td>" for cell in cells)
        + "</tr>"
    )


def example_card(question: str, rows: list[tuple[Run, str, dict]], parser: str | None) -> str:
    """The question (image, options, correct answer) and every evaluated run's answer to it."""
    first_run, _, first = rows[0]
    options, answer = first.get("options") or {}, first.get("answer")
    option_items = "".join(
        f"<li{attributes(data_letter=letter, class_='correct' if letter == answer else None)}>"
        f"<b>{text(letter)}.</b> {text(option)}</li>"
        for letter, option in options.items()
    )
    shown_options = (
        f'<ul class="options">{option_items}</ul>' if options else f"<p>{not_recorded('options')}</p>"
    )
    correct = number(
        answer, "letter", src="prediction", run=first_run.relative, id=question, key=pointer("answer")
    )
    answers = "".join(answer_row(run, label, question, row, parser) for run, label, row in rows)
    return (
        f'<article class="example" data-question="{text(question)}">'
        f'<div class="picture">{image_html(question, [(run, row) for run, _, row in rows])}</div>'
        f'<div class="question"><h4>{text(question)} <small>{text(first.get("question_type", ""))}</small></h4>'
        '<p class="hint">(the question text is not stored in eval/predictions.jsonl)</p>'
        f"{shown_options}<p>correct answer: {correct}</p></div>"
        '<table class="plain answers"><thead><tr><th>run</th><th>reasoning (&lt;think&gt;)</th>'
        "<th>answer</th><th>parsed</th><th>confidence (%)</th><th>mark</th></tr></thead>"
        f"<tbody>{answers}</tbody></table></article>"
    )


# --------------------------------------------------------------------------------------------------
# The section
# --------------------------------------------------------------------------------------------------


def examples_section(runs: list[tuple[Run, str]], per_modality: int, parser: str | None) -> str:
    """Per modality, `per_modality` questions answered by every run in `runs` that has predictions."""
    evaluated, notes = [], []
    for run, label in runs:
        rows, problem = (
            read_predictions(run) if run.summary is not None else (None, f"missing: {run.problem}")
        )
        if rows is None:
            notes.append(f"{label} ({run.relative}): {problem}")
        else:
            evaluated.append((run, label, rows))
    how = f" Answers re-read with the {parser} evaluation parser (--parser)." if parser else ""
    parts = [
        '<section id="examples"><h2>Examples</h2><p class="hint">Per test modality, the first '
        f"{per_modality} question ids (natural order) that every evaluated run answered.{text(how)}</p>",
        *(f'<p class="nr">not shown: {text(note)}</p>' for note in notes),
    ]
    if per_modality < 1:
        return "".join(parts) + '<p class="nr">no examples asked for (examples_per_modality=0)</p></section>'
    if not evaluated:
        parts.append('<p class="nr">no run has readable predictions: examples not recorded</p>')
    chosen = choose_examples([rows for _, _, rows in evaluated], per_modality) if evaluated else {}
    for modality, questions in chosen.items():
        display = MODALITY_DISPLAY.get(modality, modality)
        parts.append(f'<section class="modality" data-modality="{text(modality)}"><h3>{text(display)}</h3>')
        if not questions:
            parts.append('<p class="nr">no question of this modality was answered by every evaluated run</p>')
        for question in questions:
            rows = [(run, label, by_id[question]) for run, label, by_id in evaluated]
            parts.append(example_card(question, rows, parser))
        parts.append("</section>")
    return "".join(parts) + "</section>"
