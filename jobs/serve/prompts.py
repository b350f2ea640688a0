"""From chat messages to the prompt the model was tuned on: its chat template, or the
instruction template of the train workload.

A model tuned by the train workload carries a marker file (alpaca_jobs.train.prompts.MARKER_FILE)
holding the exact templates it learned. When the marker says "chat", training also wrote them into
the model's chat template, and that template is the one source of truth: it is applied here as
vLLM and transformers apply it, so every runtime sends the model the same token ids. Folders tuned
before that ("alpaca" markers) keep the base model's chat template, so their marker's templates
are used instead. A model with no chat template at all is served with the train workload's current
templates, since that is how this project tunes base models.

Instruction prompts are one instruction plus an optional input. A chat request carries the input
as a user message named "input" (OpenAI's optional `name` field), right after the instruction, or
as the second text part of the instruction's content.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from alpaca_jobs.train.prompts import CHAT_FORMAT, INPUT_NAME, MARKER_FILE, PROMPT_NO_INPUT, PROMPT_WITH_INPUT, fill

from .protocol import ChatMessage


class PromptFormat(str, Enum):
    CHAT = "chat"
    ALPACA = "alpaca"


@dataclass(frozen=True)
class PromptStyle:
    format: PromptFormat
    with_input: str = PROMPT_WITH_INPUT
    no_input: str = PROMPT_NO_INPUT
    # The chat template was written by training: it reads instructions and inputs itself.
    trained_template: bool = False

    def instruction_prompt(self, instruction: str, input_text: str = "") -> str:
        if input_text.strip():
            return fill(self.with_input, instruction, input_text)
        return fill(self.no_input, instruction)


class PromptError(ValueError):
    """The messages cannot be turned into a prompt; `param` names the offending field."""

    def __init__(self, message: str, param: str = "messages") -> None:
        super().__init__(message)
        self.param = param


def detect_style(model_folder: Path | None, tokenizer: Any, forced: str = "auto") -> PromptStyle:
    """The marker's templates when the folder has one; else the chat template if the tokenizer has one."""
    marker_path = model_folder / MARKER_FILE if model_folder is not None else None
    style = PromptStyle(PromptFormat.CHAT if getattr(tokenizer, "chat_template", None) else PromptFormat.ALPACA)
    if marker_path is not None and marker_path.is_file():
        try:
            marker = json.loads(marker_path.read_text())
            written = marker.get("format") == CHAT_FORMAT and bool(getattr(tokenizer, "chat_template", None))
            style = PromptStyle(
                PromptFormat.CHAT if written else PromptFormat.ALPACA,
                marker.get("withInput", PROMPT_WITH_INPUT),
                marker.get("noInput", PROMPT_NO_INPUT),
                trained_template=written,
            )
        except (ValueError, AttributeError) as error:
            raise ValueError(f"{marker_path}: not a valid prompt marker: {error}") from error
    if forced != "auto":
        style = PromptStyle(PromptFormat(forced), style.with_input, style.no_input, style.trained_template)
    if style.format is PromptFormat.CHAT and not getattr(tokenizer, "chat_template", None):
        raise ValueError("prompt format 'chat' needs a tokenizer with a chat template; this one has none")
    return style


def _fold_inputs(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """Plain role/content dicts; an "input" message joins the user message before it."""
    folded: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        if message.role == "user" and message.name == INPUT_NAME:
            if not folded or folded[-1]["role"] != "user":
                raise PromptError(f"messages[{i}]: an input message must follow a user message", f"messages[{i}]")
            if message.text().strip():
                folded[-1]["content"] += "\n\n" + message.text()
            continue
        role = "system" if message.role == "developer" else message.role
        folded.append({"role": role, "content": message.text()})
    return folded


def _instruction_from_messages(messages: Sequence[ChatMessage], style: PromptStyle) -> str:
    """Instruction models are single-turn: the last instruction (and its input) is what they answer.

    The same reading as the chat template training writes (alpaca_jobs.train.prompts): an
    instruction given as text parts has its input in the parts after the first.
    """
    at = max((i for i, m in enumerate(messages) if m.role == "user" and m.name != INPUT_NAME), default=None)
    if at is None:
        raise PromptError("messages: at least one user message (the instruction) is required")
    content = messages[at].content
    instruction, input_text = messages[at].text(), ""
    if isinstance(content, list):
        texts = [part.text for part in content]
        instruction, input_text = (texts[0] if texts else ""), "\n\n".join(texts[1:])
    following = messages[at + 1 : at + 2]
    if following and following[0].name == INPUT_NAME:
        input_text = following[0].text()
    return style.instruction_prompt(instruction, input_text)


def _as_template_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """The messages as vLLM and transformers hand them to a chat template: names and text parts kept."""
    _fold_inputs(messages)  # the same refusals as for any chat template
    out: list[dict[str, Any]] = []
    for message in messages:
        content: Any = message.content
        if isinstance(content, list):
            content = [{"type": "text", "text": part.text} for part in content]
        item: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role, "content": content or ""}
        if message.name is not None:
            item["name"] = message.name
        out.append(item)
    return out


def render_chat(messages: Sequence[ChatMessage], style: PromptStyle, tokenizer: Any) -> str:
    if style.format is PromptFormat.ALPACA:
        return _instruction_from_messages(messages, style)
    if style.trained_template:
        if not any(m.role == "user" and m.name != INPUT_NAME for m in messages):
            raise PromptError("messages: at least one user message (the instruction) is required")
        rendered = tokenizer.apply_chat_template(_as_template_messages(messages), tokenize=False, add_generation_prompt=True)
        return str(rendered)
    folded = _fold_inputs(messages)
    if not any(m["role"] == "user" for m in folded):
        raise PromptError("messages: at least one user message is required")
    return str(tokenizer.apply_chat_template(folded, tokenize=False, add_generation_prompt=True))


def encode(text: str, tokenizer: Any, *, chat: bool) -> list[int]:
    """Token ids of a prompt. A rendered chat template already holds its special tokens."""
    return list(tokenizer(text, add_special_tokens=not chat)["input_ids"])
