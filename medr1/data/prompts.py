"""Prompts: Med-R1's exact templates, options rendered as "A) opt, B) opt", the model's chat template.

Med-R1 puts the options inside the question text ("Q? A) opt, B) opt, ...") and wraps it in one of
two instructions; `prompt=think|nothink` picks which. The chat template of the loaded processor then
adds the image placeholder and the turn markers, so the same code serves the tiny checkpoint and
Qwen2-VL-2B-Instruct.
"""

from __future__ import annotations

from medr1.data.records import VQARecord

THINK = (
    "{Question} Your task: 1. Think through the question step by step, enclose your reasoning process "
    "in <think>...</think> tags. 2. Then provide the correct single-letter choice (A, B, C, D,...) inside "
    "<answer>...</answer> tags. 3. No extra information or text outside of these tags."
)
NOTHINK = (
    "{Question} Your task: 1. Provide the correct single-letter choice (A, B, C, D,...) inside "
    "<answer>...</answer> tags. 2. No extra information or text outside of this tag."
)
TEMPLATES: dict[str, str] = {"think": THINK, "nothink": NOTHINK}


def question_with_options(record: VQARecord) -> str:
    """The question followed by its options: "Q? A) opt, B) opt"."""
    options = ", ".join(f"{letter}) {text}" for letter, text in record.options.items())
    return f"{record.question} {options}"


def prompt_text(record: VQARecord, template: str) -> str:
    """The user turn's text for `record` under `template` (a name in TEMPLATES or a format string)."""
    template = TEMPLATES.get(template, template)
    if "{Question}" not in template:
        raise ValueError(
            f"prompt template {template!r} has no {{Question}} placeholder; use one of {list(TEMPLATES)} "
            "or a string containing {Question}"
        )
    return template.format(Question=question_with_options(record))


def chat_messages(record: VQARecord, template: str) -> list[dict]:
    """One user turn: the record's images, then the prompt text."""
    content = [{"type": "image"} for _ in record.images]
    content.append({"type": "text", "text": prompt_text(record, template)})
    return [{"role": "user", "content": content}]


def target_text(record: VQARecord, template: str) -> str:
    """The SFT target: think + answer where the data has reasoning and the prompt asks for it."""
    answer = f"<answer> {record.answer} </answer>"
    if TEMPLATES.get(template, template) is THINK and record.reasoning:
        return f"<think>{record.reasoning}</think>\n{answer}"
    return answer
