"""Prompts: the papers' exact templates, the option layout, the model's chat template.

Both papers put the options inside the question text and wrap that in an instruction. A
`PromptFormat` (the `prompt` config group) says which instruction (`template`) and how the options
are laid out (`options.before` / `options.format` / `options.separator`):

- `prompt=think|nothink`: Med-R1's training templates, options as "Q? A) opt, B) opt" (the layout the
  tiny demo model was warm-started on; Med-R1's released split writes "A)opt, B)opt", which is
  `prompt.options.format="{letter}){text}"`).
- `prompt=medvlm_r1`: MedVLM-R1's training template (its triple-quoted string, whitespace and all),
  one option per line.
- `eval.prompt=medr1_eval_think|medr1_eval_nothink|medr1_eval_zero_shot`: Med-R1's evaluation
  templates, which differ from its training ones; evaluation keeps the training option layout.

The chat template of the loaded processor then adds the image placeholder and the turn markers, so
the same code serves the tiny checkpoint and Qwen2-VL-2B-Instruct.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from medr1.data.records import VQARecord
from medr1.errors import ConfigError

# Med-R1 training, r1v/grpo_vqa.py:152 and r1v/grpo_vqa_nothink.py:151
THINK = (
    "{Question} Your task: 1. Think through the question step by step, enclose your reasoning process "
    "in <think>...</think> tags. 2. Then provide the correct single-letter choice (A, B, C, D,...) inside "
    "<answer>...</answer> tags. 3. No extra information or text outside of these tags."
)
NOTHINK = (
    "{Question} Your task: 1. Provide the correct single-letter choice (A, B, C, D,...) inside "
    "<answer>...</answer> tags. 2. No extra information or text outside of this tag."
)
# MedVLM-R1 training, src/open-r1-multimodal/src/open_r1/grpo.py:164-170 (DATASET=Huatuo): a
# triple-quoted string inside an indented block, so 8-space indents and trailing spaces are part of it.
MEDVLM_R1 = (
    "\n        {Question} "
    "\n        Your task: "
    "\n        1. Think through the question step by step, enclose your reasoning process in <think>...</think> tags. "
    "\n        2. Then provide the correct single-letter choice (A, B, C, D,...) inside <answer>...</answer> tags."
    "\n        3. No extra information or text outside of these tags."
    "\n        "
)
# Med-R1 evaluation, src/eval_vqa/test_qwen2vl_vqa.py:43, test_qwen2vl_vqa_nothink.py:44,
# test_qwen2vl_vqa_zero_shot.py:43
MEDR1_EVAL_THINK = (
    "{Question} Think through the question step by step in <think>...</think> tags. Then provide the correct "
    "single-letter choice (A, B, C, D,...) inside <answer>...</answer> tags."
)
MEDR1_EVAL_NOTHINK = (
    "{Question} Provide the correct single-letter choice (A, B, C, D,...) inside <answer>...</answer> tags."
)
MEDR1_EVAL_ZERO_SHOT = "{Question} Provide the correct single-letter choice (A, B, C, D,...)."

# Med-R1's training templates. The tiny model's tokenizer is trained on exactly these
# (medr1.models.build), so adding to this dict would change the tiny checkpoint: add to NAMED_TEMPLATES.
TEMPLATES: dict[str, str] = {"think": THINK, "nothink": NOTHINK}
NAMED_TEMPLATES: dict[str, str] = TEMPLATES | {
    "medvlm_r1": MEDVLM_R1,
    "medr1_eval_think": MEDR1_EVAL_THINK,
    "medr1_eval_nothink": MEDR1_EVAL_NOTHINK,
    "medr1_eval_zero_shot": MEDR1_EVAL_ZERO_SHOT,
}
# Templates that ask for <think> reasoning before the answer (what an SFT target then contains).
THINKING_TEMPLATES = (THINK, MEDVLM_R1, MEDR1_EVAL_THINK)


def resolve_template(template: str, key: str = "prompt.template") -> str:
    """The format string for `template` (a name in NAMED_TEMPLATES or a format string with {Question})."""
    text = NAMED_TEMPLATES.get(template, template)
    if not isinstance(text, str) or "{Question}" not in text:
        raise ConfigError(
            f"{key}={template!r} is neither a template name nor a string with a {{Question}} placeholder; "
            f"use one of {list(NAMED_TEMPLATES)} or a string containing {{Question}}"
        )
    try:
        text.format(Question="")
    except (KeyError, IndexError, ValueError, AttributeError) as error:
        raise ConfigError(
            f"{key}={template!r} has a placeholder other than {{Question}} ({error!r}); write literal braces as {{{{ }}}}"
        ) from error
    return text


@dataclass(frozen=True)
class PromptFormat:
    """How a record becomes the user turn's text: the instruction and the option layout.

    `template` is a name in NAMED_TEMPLATES or a format string with {Question}; {Question} is the
    question, then `option_before`, then the options, each `option_format` (with {letter} and {text}),
    joined by `option_separator`. The defaults are `prompt=think`.
    """

    template: str = "think"
    option_before: str = " "
    option_format: str = "{letter}) {text}"
    option_separator: str = ", "

    def __post_init__(self):
        resolve_template(self.template)
        for key, value in (
            ("before", self.option_before),
            ("format", self.option_format),
            ("separator", self.option_separator),
        ):
            if not isinstance(value, str):
                raise ConfigError(f"prompt.options.{key}={value!r} must be a string")
        try:
            rendered = self.option_format.format(letter="\0L", text="\0T")
        except (KeyError, IndexError, ValueError) as error:
            rendered = repr(error)
        if "\0L" not in rendered or "\0T" not in rendered:
            raise ConfigError(
                f"prompt.options.format={self.option_format!r} must contain {{letter}} and {{text}} and no other "
                "placeholder, e.g. '{letter}) {text}'"
            )

    @classmethod
    def from_config(cls, prompt: PromptFormat | str | Mapping) -> PromptFormat:
        """From a `prompt` config group ({template, options: {before, format, separator}}), or a bare
        template name / format string (the default option layout), or a PromptFormat (returned as is)."""
        if isinstance(prompt, PromptFormat):
            return prompt
        if isinstance(prompt, str):
            return cls(template=prompt)
        if not isinstance(prompt, Mapping) or "template" not in prompt:
            raise ConfigError(
                f"prompt={prompt!r} must be a prompt config group with a `template` key (conf/prompt/*.yaml), "
                "a template name or a format string with {Question}"
            )
        options = dict(prompt.get("options") or {})
        unknown = set(options) - {"before", "format", "separator"}
        if unknown:
            raise ConfigError(
                f"prompt.options has unknown keys {sorted(unknown)}; the keys are before, format, separator"
            )
        default = cls()
        return cls(
            template=prompt["template"],
            option_before=options.get("before", default.option_before),
            option_format=options.get("format", default.option_format),
            option_separator=options.get("separator", default.option_separator),
        )

    def with_template(self, template: str | None, key: str = "eval.prompt") -> PromptFormat:
        """The same option layout under another template (None: this one), e.g. the evaluation prompt;
        `key` names the setting in errors."""
        if template is None:
            return self
        resolve_template(template, key)
        return replace(self, template=template)

    @property
    def text(self) -> str:
        """The template's format string (checked once, in __post_init__)."""
        return NAMED_TEMPLATES.get(self.template, self.template)

    @property
    def asks_for_reasoning(self) -> bool:
        """Whether the template asks for <think> reasoning before the answer."""
        return self.text in THINKING_TEMPLATES


def question_with_options(record: VQARecord, prompt: PromptFormat | None = None) -> str:
    """The question followed by its options in `prompt`'s layout (default "Q? A) opt, B) opt")."""
    prompt = prompt or PromptFormat()
    options = prompt.option_separator.join(
        prompt.option_format.format(letter=letter, text=text) for letter, text in record.options.items()
    )
    return f"{record.question}{prompt.option_before}{options}"


def prompt_text(record: VQARecord, prompt: PromptFormat | str | Mapping) -> str:
    """The user turn's text for `record` under `prompt` (a PromptFormat, prompt config or template)."""
    prompt = PromptFormat.from_config(prompt)
    return prompt.text.format(Question=question_with_options(record, prompt))


def chat_messages(
    record: VQARecord, prompt: PromptFormat | str | Mapping, n_images: int | None = None
) -> list[dict]:
    """One user turn: the record's images, then the prompt text. `n_images` is how many images its
    files gave (a volume gives one per slice); default one per file."""
    count = len(record.images) if n_images is None else n_images
    content = [{"type": "image"} for _ in range(count)]
    content.append({"type": "text", "text": prompt_text(record, prompt)})
    return [{"role": "user", "content": content}]


def target_text(record: VQARecord, prompt: PromptFormat | str | Mapping) -> str:
    """The SFT target: think + answer where the data has reasoning and the prompt asks for it."""
    answer = f"<answer> {record.answer} </answer>"
    if PromptFormat.from_config(prompt).asks_for_reasoning and record.reasoning:
        return f"<think>{record.reasoning}</think>\n{answer}"
    return answer
