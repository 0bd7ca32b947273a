"""`mode=predict`: ask a trained model about your own images.

One question (`predict.image`, `predict.question`, `predict.options`) or a batch file
(`predict.input`: a CSV or JSONL with columns image, question, options and optionally id). Each
question becomes a VQARecord whose options are lettered A, B, ... in order and whose answer is
unknown (None: nothing here reads it, so no made-up answer can reach the output).

Everything after the questions is evaluation's, so a question answered here gets the answer
`mode=eval` would give it: the model from `load_policy` (model.path: a training run's
checkpoints/final/ folder, a HF id, or the offline-built tiny model), the evaluation prompt
(`eval.prompt`, else the training `prompt`, with the training option layout), `data.resize`, the
`Sampler` with greedy decoding of `eval.max_new_tokens` tokens (or algo's temperature/top-p/top-k
with `predict.do_sample=true`) on the Trainer's device under its autocast, and `eval.parser` to read
the chosen letter.

Prints, per question, the question, the options, the reasoning (the <think> block, or the whole
completion when there is none) and the answer (letter and option text, or "no answer found"). A
batch also gets a progress bar and a JSONL, one line per question (id, image, question, options,
completion, reasoning, answer, answer_text), written atomically to `predict.output` (default
<run dir>/predictions.jsonl). Option probabilities are not reported: medr1 has no calibrated
answer probabilities (docs/predict.md).

A wrong input (no image, no question, fewer than 2 options, a missing file, a malformed CSV/JSONL
line, both or neither of predict.image and predict.input) stops the run with one line that names
the input and the fix, and a non-zero exit status.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
from hydra.utils import get_original_cwd
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from medr1.answers import get_parser, think_text
from medr1.builders import Policy, load_policy, run_dir_of
from medr1.cache import write_file_atomically
from medr1.data.batches import PromptBatch, PromptCollator
from medr1.data.lengths import PromptMeter, screen_prompts
from medr1.data.prompts import PromptFormat
from medr1.data.records import LETTERS, BadRecordError, ImageChecker, SkipCounter, VQARecord, clean_text
from medr1.distributed import device_of
from medr1.evaluate import parser_of
from medr1.precision import autocast_for
from medr1.rollout import Sampler, SamplingConfig, greedy

UNKNOWN = "unknown"  # modality and question type of a user's question: nothing in predict reads them
COLUMNS = ("image", "question", "options")  # a batch file's required columns; `id` is optional
SINGLE_USAGE = 'predict.image=<file> predict.question="..." predict.options=[CT,MRI,X-ray]'
ROW_USAGE = 'every line needs image, question and options (a list or "a|b|c"); id is optional'


class PredictInputError(ValueError):
    """A question that cannot be asked; the message names the input (file:line) and the fix."""


# --- questions: the config or a batch file -> VQARecords ------------------------------------------


def user_path(value: object) -> Path:
    """A path the user typed, relative to the folder they ran `python run.py` in (Hydra may chdir)."""
    path = Path(str(value)).expanduser()
    if path.is_absolute():
        return path
    try:
        return Path(get_original_cwd()) / path
    except ValueError:  # not under @hydra.main (tests with compose)
        return Path.cwd() / path


def option_texts(value: object, where: str) -> list[str]:
    """The option texts of a question: a list, or one text "a|b|c" (or a JSON list, as a CSV cell)."""
    if value is None:
        items = []
    elif isinstance(value, str):
        text = value.strip()
        try:
            items = json.loads(text) if text.startswith("[") else text.split("|")
        except json.JSONDecodeError as error:
            raise PredictInputError(
                f'{where}: options {text!r} start like a JSON list but are not one ({error.msg}); write ["a", "b"] or a|b'
            ) from None
    elif isinstance(value, list | tuple):
        items = value
    else:
        raise PredictInputError(
            f"{where}: options must be a list of texts or one text a|b|c, not a {type(value).__name__}"
        )
    texts = [clean_text(item) for item in items]
    for number, text in enumerate(texts, 1):
        if text is None:
            raise PredictInputError(
                f"{where}: option {number} is empty or not a text; give each option a text"
            )
    if len(texts) < 2:
        raise PredictInputError(
            f"{where}: {len(texts)} option(s) given, a question needs at least 2; e.g. options [CT,MRI,X-ray] or CT|MRI|X-ray"
        )
    if len(texts) > len(LETTERS):
        raise PredictInputError(
            f"{where}: {len(texts)} options given; at most {len(LETTERS)} (A-{LETTERS[-1]}) are supported"
        )
    seen = [text.casefold() for text in texts]
    repeated = [text for text, key in zip(texts, seen, strict=True) if seen.count(key) > 1]
    if repeated:
        raise PredictInputError(f"{where}: option {repeated[0]!r} is given twice; each option must differ")
    return texts


def make_record(
    *,
    record_id: str,
    image: object,
    question: object,
    options: object,
    base: Path,
    where: str,
    usage: str,
    source: str,
    checker: ImageChecker,
) -> VQARecord:
    """A VQARecord for one question, checked (its image by `checker`: it exists and its header reads);
    `base` is the folder a relative image path is read from."""
    image_text, question_text = clean_text(image), clean_text(question)
    for key, given in (("image", image_text), ("question", question_text), ("options", options or None)):
        if given is None:
            raise PredictInputError(f"{where}: no {key} given; {usage}")
    texts = option_texts(options, where)
    path = Path(image_text).expanduser()
    relative = not path.is_absolute()
    path = base / path if relative else path
    problem = checker.problem(path)
    if problem is not None:
        raise PredictInputError(
            f"{where}: {problem}" + (f" (relative paths are read from {base})" if relative else "")
        )
    return VQARecord(
        id=record_id,
        images=(str(path.resolve()),),
        question=question_text,
        options=dict(zip(LETTERS, texts, strict=False)),
        answer=None,  # unknown: predict never reads it, and grading is not run
        modality=UNKNOWN,
        question_type=UNKNOWN,
        source=source,
    )


def csv_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """(file:line, row) for each data row of a CSV file with a header line; the line is where the row
    starts (a quoted field may span lines)."""
    with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheets write a BOM
        reader = csv.DictReader(handle, strict=True)  # strict: an unclosed quote is an error, not a field
        line = 1
        try:
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [column for column in COLUMNS if column not in header]
            if missing:
                raise PredictInputError(
                    f"{path}:1: the header has no {', '.join(missing)} column; the first line must name the "
                    f"columns image,question,options (and optionally id), found {header or 'an empty file'}"
                )
            line = reader.line_num + 1
            for row in reader:
                where = f"{path}:{line}"
                if None in row:
                    raise PredictInputError(
                        f"{where}: more fields than the header's {len(header)}; quote a field that holds a comma"
                    )
                yield where, {key.strip(): value for key, value in row.items()}
                line = reader.line_num + 1
        except csv.Error as error:
            raise PredictInputError(
                f"{path}:{line}: malformed CSV ({error}); check the quotes of the row that starts here"
            ) from None


def jsonl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """(file:line, object) for each non-blank line of a JSONL file."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise PredictInputError(
                    f"{where}: malformed JSON ({error.msg}, column {error.colno}); each line must be one object "
                    'such as {"image": "scan.png", "question": "...", "options": ["CT", "MRI"]}'
                ) from None
            if not isinstance(row, dict):
                raise PredictInputError(f"{where}: a JSON {type(row).__name__}, not an object; {ROW_USAGE}")
            yield where, row


def read_batch_file(path: Path) -> list[VQARecord]:
    """The questions of a CSV or JSONL batch file; relative image paths are read from its folder."""
    if not path.is_file():
        raise PredictInputError(
            f"predict.input={path}: no such file; give a .csv or .jsonl file of questions"
        )
    readers = {".csv": csv_rows, ".jsonl": jsonl_rows}
    if path.suffix.lower() not in readers:
        raise PredictInputError(
            f"predict.input={path}: unknown file type {path.suffix!r}; use a .csv or .jsonl file"
        )
    records, lines, checker = [], {}, ImageChecker()
    try:
        for where, row in readers[path.suffix.lower()](path):
            record = make_record(
                record_id=clean_text(row.get("id")) or str(len(records) + 1),
                image=row.get("image"),
                question=row.get("question"),
                options=row.get("options"),
                base=path.parent.resolve(),
                where=where,
                usage=ROW_USAGE,
                source=str(path),
                checker=checker,
            )
            if record.id in lines:
                raise PredictInputError(
                    f"{where}: id {record.id!r} is also at {lines[record.id]}; ids must differ"
                )
            lines[record.id] = where
            records.append(record)
    except UnicodeDecodeError as error:
        raise PredictInputError(
            f"predict.input={path}: not UTF-8 text ({error.reason}); save it as UTF-8"
        ) from None
    if not records:
        raise PredictInputError(f"predict.input={path}: no questions in the file; {ROW_USAGE}")
    return records


def questions_of(settings: dict) -> list[VQARecord]:
    """The questions `predict.*` asks: one from image/question/options, or a batch file's."""
    single = [key for key in ("image", "question", "options") if settings.get(key) is not None]
    if settings.get("input") is not None:
        if single:
            raise PredictInputError(
                f"predict.input is set, and so is predict.{single[0]}; ask one question with predict.image, "
                "predict.question and predict.options, or a batch with predict.input, not both"
            )
        return read_batch_file(user_path(settings["input"]))
    if settings.get("image") is None:
        raise PredictInputError(
            f"mode=predict needs a question: {SINGLE_USAGE}, or a batch file: predict.input=<csv or jsonl>"
        )
    record = make_record(
        record_id="1",
        image=settings["image"],
        question=settings.get("question"),
        options=settings.get("options"),
        base=user_path("."),
        where="predict",
        usage=SINGLE_USAGE,
        source="predict",
        checker=ImageChecker(),
    )
    return [record]


# --- answers ----------------------------------------------------------------------------------


@dataclass
class Answer:
    """One question's answer: a line of predictions.jsonl."""

    id: str
    image: str  # absolute path
    images: int  # the images the model saw: 1 for a picture, the slices of a DICOM series or NIfTI volume
    question: str
    options: dict[str, str]  # letter -> option text
    completion: str
    reasoning: str  # the <think> block, or the whole completion when it has none
    answer: str | None  # the letter eval.parser reads, None when it reads no option letter
    answer_text: str | None  # that option's text

    def to_json(self) -> dict:
        return asdict(self)


def read_answer(record: VQARecord, completion: str, parser: str, images: int = 1) -> Answer:
    """The reasoning and the chosen option of `completion`, read as evaluation reads it."""
    thought = think_text(completion)
    parsed = get_parser(parser)(completion, record.options)
    letter = parsed if parsed in record.options else None  # `medr1` may read a word ("CT"): no letter
    return Answer(
        id=record.id,
        image=record.images[0],
        images=images,
        question=record.question,
        options=dict(record.options),
        completion=completion,
        reasoning=(thought if thought is not None else completion).strip(),
        answer=letter,
        answer_text=record.options[letter] if letter else None,
    )


def format_answer(answer: Answer) -> str:
    """The console block of one answer."""
    reasoning = answer.reasoning.replace("\n", "\n" + " " * 11)  # continuation lines under the first
    options = ", ".join(f"{letter}) {text}" for letter, text in answer.options.items())
    chosen = f"{answer.answer}) {answer.answer_text}" if answer.answer else "no answer found"
    return "\n".join(
        [
            f"== {answer.id}: {answer.image}" + (f" ({answer.images} slices)" if answer.images > 1 else ""),
            f"question:  {answer.question}",
            f"options:   {options}",
            f"reasoning: {reasoning}",
            f"answer:    {chosen}",
        ]
    )


def sampling_of(cfg: DictConfig) -> SamplingConfig:
    """Greedy decoding of eval.max_new_tokens tokens, as evaluation; predict.do_sample: algo's sampling."""
    max_new_tokens = int(cfg.eval.max_new_tokens)
    if not cfg.predict.do_sample:
        return greedy(max_new_tokens)
    return SamplingConfig(
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=float(cfg.algo.get("temperature", 1.0)),  # algo=sft has no sampling keys: plain sampling
        top_p=float(cfg.algo.get("top_p", 1.0)),
        top_k=int(cfg.algo.get("top_k", 0)),
    )


def output_path(cfg: DictConfig) -> Path:
    """predict.output, or <run dir>/predictions.jsonl."""
    if cfg.predict.get("output"):
        return user_path(cfg.predict.output)
    return run_dir_of(cfg) / "predictions.jsonl"


def collate(collator: PromptCollator, records: list[VQARecord]) -> PromptBatch:
    """The records' prompt batch; an image that cannot be read is the user's input error."""
    try:
        return collator(records)
    except BadRecordError as error:
        raise PredictInputError(
            f"{error.source}: question {error.record_id!r}: {error.problem}; give a readable image file"
        ) from None


def load(cfg: DictConfig) -> Policy:
    """The policy as evaluation loads it; a model.path that cannot be loaded is an input error."""
    try:
        return load_policy(cfg, train=False)
    except OSError as error:  # a folder without config.json, an unknown HF id, no network
        message = " ".join(str(error).splitlines())  # transformers' messages span lines
        raise PredictInputError(f"model {cfg.model.get('path') or cfg.model.name!r}: {message}") from None


def answer_questions(cfg: DictConfig) -> list[Answer]:
    """Answer the configured questions; print each answer, and write the JSONL for a batch."""
    settings = OmegaConf.to_container(cfg.predict, resolve=True)
    records = questions_of(settings)  # every input is checked before the model loads
    batch_size = settings.get("batch_size") or 0
    if not isinstance(batch_size, int) or batch_size < 1:
        raise PredictInputError(
            f"predict.batch_size={batch_size!r}; give a positive number of questions per batch"
        )
    parser = parser_of(cfg)
    # the evaluation prompt, as VQADataModule builds its evaluation collator's
    prompt = PromptFormat.from_config(cfg.prompt).with_template(cfg.eval.get("prompt"))
    sampling = sampling_of(cfg)
    output = output_path(cfg) if settings.get("input") or settings.get("output") else None

    device = device_of(cfg.trainer)  # a missing GPU fails before the model loads
    L.seed_everything(int(cfg.seed))
    policy = load(cfg)
    policy.model.to(device)
    images = dict(resize=cfg.data.get("resize"), image=cfg.image, max_pixels=cfg.model.max_pixels)
    collator = PromptCollator(policy.processor, prompt, **images)
    # a prompt over algo.max_prompt_length is refused before any batch is built, as in every mode
    meter = PromptMeter(policy.processor, prompt, **images)
    try:
        screen_prompts(records, meter, cfg.algo.get("max_prompt_length"), SkipCounter("raise"), "predict")
    except BadRecordError as error:
        raise PredictInputError(str(error)) from None
    sampler = Sampler.for_model(policy.model, policy.processor)
    answers: list[Answer] = []
    bar = tqdm(total=len(records), desc="answering", unit="question", disable=settings.get("input") is None)
    with bar, autocast_for(str(cfg.trainer.precision), device):  # as the Trainer computes
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            batch = collate(collator, chunk)
            _, _, texts = sampler.complete(policy.model, batch.to(device), sampling)
            counts = batch.images_per_prompt.tolist()
            for record, completion, images in zip(chunk, texts, counts, strict=True):
                answers.append(read_answer(record, completion, parser, images))
                tqdm.write(format_answer(answers[-1]))
            bar.update(len(chunk))
    if output is not None:
        write_file_atomically(output, "".join(json.dumps(answer.to_json()) + "\n" for answer in answers))
        print(f"wrote {len(answers)} answer(s) to {output}", flush=True)
    return answers


def predict(cfg: DictConfig) -> list[Answer]:
    """`mode=predict`: the answers; a wrong input exits with one line naming it and the fix."""
    try:
        return answer_questions(cfg)
    except PredictInputError as error:
        raise SystemExit(f"error: {error}") from None
