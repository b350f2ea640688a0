"""The two prompt templates a model is trained with: one for tasks with extra material, one without.

The serving side must format requests the same way, so this module is the single place they live:
the training data is rendered with `PromptTemplates.render`, and the tuned model's tokenizer gets a
chat template (`chat_template`) that renders a conversation into the very same text, so any runtime
that applies the model's chat template (alpaca serve, vLLM, transformers) prompts it as it learned.

Only the placeholders `{instruction}` and `{input}` are replaced, in one pass (an instruction that
itself contains "{input}" stays as written); every other character of a template, braces included,
is kept as it is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

PROMPT_WITH_INPUT = (
    "Here is a task, together with material to work from. "
    "Carry out the task using the material and answer helpfully.\n\n"
    "### Task:\n{instruction}\n\n"
    "### Material:\n{input}\n\n"
    "### Answer:\n"
)

PROMPT_NO_INPUT = (
    "Here is a task. Carry it out and answer helpfully.\n\n"
    "### Task:\n{instruction}\n\n"
    "### Answer:\n"
)

_PLACEHOLDER = re.compile(r"\{(instruction|input)\}")


def fill(template: str, instruction: str, input_text: str = "") -> str:
    values = {"instruction": instruction, "input": input_text}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


@dataclass(frozen=True)
class PromptTemplates:
    with_input: str = PROMPT_WITH_INPUT
    no_input: str = PROMPT_NO_INPUT

    def render(self, instruction: str, input_text: str = "") -> str:
        """The prompt for one example; a blank input selects the shorter template."""
        if input_text.strip():
            return fill(self.with_input, instruction, input_text)
        return fill(self.no_input, instruction)

    @classmethod
    def from_spec(cls, spec: Any) -> PromptTemplates:
        """A FineTune's `promptTemplate` (or None: the project's own templates)."""
        if spec is None:
            return cls()
        return cls(spec.with_input, spec.without_input)


DEFAULT = PromptTemplates()


def format_prompt(instruction: str, input_text: str = "", templates: PromptTemplates = DEFAULT) -> str:
    return templates.render(instruction, input_text)


# Written next to a tuned model: the templates it learned, and whether its chat template renders them.
MARKER_FILE = "alpaca_prompt.json"
# Folders tuned before the chat template was written say "alpaca": their chat template (if any) is
# the base model's, and only this file holds the format the model learned.
CHAT_FORMAT = "chat"


def marker(templates: PromptTemplates = DEFAULT, *, chat_template_written: bool = True) -> dict[str, str]:
    return {
        "format": CHAT_FORMAT if chat_template_written else "alpaca",
        "withInput": templates.with_input,
        "noInput": templates.no_input,
    }


# Name of the user message that carries a task's input, right after the instruction (OpenAI's
# optional `name` field, which vLLM and transformers hand to the template as it is).
INPUT_NAME = "input"


def _literal(text: str) -> str:
    """`text` as a Jinja string literal: Jinja unescapes string literals with Python's unicode-escape,
    which reads every escape JSON writes (non-ASCII is left raw, so no surrogate pairs arise)."""
    return json.dumps(text, ensure_ascii=False)


def _jinja_render(template: str) -> str:
    """Jinja output statements that print `template` with `instruction` and `input` filled in."""
    pieces: list[str] = []
    at = 0
    for match in _PLACEHOLDER.finditer(template):
        if match.start() > at:
            pieces.append("{{- " + _literal(template[at : match.start()]) + " -}}")
        pieces.append("{{- ns.instruction -}}" if match.group(1) == "instruction" else "{{- ns.input -}}")
        at = match.end()
    if at < len(template):
        pieces.append("{{- " + _literal(template[at:]) + " -}}")
    return "".join(pieces)


# The conversation is read the way `alpaca serve` reads it for an instruction model: the last user
# message is the instruction; its input is either the user message named "input" right after it or,
# when the instruction's content is a list of text parts, every part after the first (joined by a
# blank line). Earlier turns and system messages do not reach a single-turn instruction model. An
# assistant message after the instruction is rendered as training saw its target: the answer and EOS.
# Whitespace control (`-`) sits on every tag, and every printed character comes from a string
# literal, so the environment's trim_blocks/lstrip_blocks settings cannot change the text.
_READ_MESSAGES = """\
{#- Written by alpaca train: renders the instruction template this model was tuned with. -#}
{%- set ns = namespace(instruction=none, input='', answer=none, parts=[]) -%}
{%- for message in messages -%}
  {%- set ns.parts = [] -%}
  {%- if message['content'] is string -%}
    {%- set ns.parts = [message['content']] -%}
  {%- elif message['content'] is not none -%}
    {%- for part in message['content'] -%}
      {%- if part['type'] == 'text' -%}{%- set ns.parts = ns.parts + [part['text']] -%}{%- endif -%}
    {%- endfor -%}
  {%- endif -%}
  {%- if message['role'] == 'user' and message['name'] is defined and message['name'] == '__INPUT_NAME__' -%}
    {%- if ns.instruction is none -%}{{- raise_exception('an input message must follow a user message (the instruction)') -}}{%- endif -%}
    {%- set ns.input = ns.parts | join('') -%}
  {%- elif message['role'] == 'user' -%}
    {%- set ns.instruction = ns.parts[0] if ns.parts else '' -%}
    {%- set ns.input = ns.parts[1:] | join('\\n\\n') -%}
    {%- set ns.answer = none -%}
  {%- elif message['role'] == 'assistant' and ns.instruction is not none -%}
    {%- set ns.answer = ns.parts | join('') -%}
  {%- endif -%}
{%- endfor -%}
{%- if ns.instruction is none -%}{{- raise_exception('at least one user message (the instruction) is required') -}}{%- endif -%}
"""


def chat_template(templates: PromptTemplates, *, bos: bool) -> str:
    """A chat template whose rendering of a user turn is exactly the training prompt.

    `bos` says whether the tokenizer puts its BOS token in front of a text it encodes with special
    tokens, as the training prompts were encoded: runtimes encode a rendered chat template without
    special tokens, so the template writes BOS itself. The rendered prompt ends where the answer
    begins, so it is the same whether or not a generation prompt is asked for.
    """
    return (
        _READ_MESSAGES.replace("__INPUT_NAME__", INPUT_NAME)
        + ("{{- bos_token -}}" if bos else "")
        + "{%- if ns.input | trim -%}"
        + _jinja_render(templates.with_input)
        + "{%- else -%}"
        + _jinja_render(templates.no_input)
        + "{%- endif -%}"
        + "{%- if ns.answer is not none -%}{{- ns.answer -}}{{- eos_token -}}{%- endif -%}"
    )


def adds_bos(tokenizer: Any) -> bool:
    """Whether encoding with special tokens puts the BOS token first (the training prompts' case)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return len(ids) == len(plain) + 1 and ids[0] == bos and ids[1:] == plain
