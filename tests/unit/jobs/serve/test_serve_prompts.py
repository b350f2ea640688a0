import json
from pathlib import Path

import pytest

from alpaca_jobs.serve.prompts import PromptError, PromptFormat, detect_style, render_chat
from alpaca_jobs.serve.protocol import ChatMessage
from alpaca_jobs.train.prompts import MARKER_FILE, format_prompt, marker


class ChatTokenizer:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, tokenize: bool, add_generation_prompt: bool) -> str:
        assert not tokenize and add_generation_prompt
        return "|".join(f"{m['role']}:{m['content']}" for m in messages) + "|assistant:"


class PlainTokenizer:
    chat_template = None


def msgs(*items: tuple[str, str] | tuple[str, str, str]) -> list[ChatMessage]:
    return [ChatMessage(role=i[0], content=i[1], name=i[2] if len(i) > 2 else None) for i in items]


def test_a_model_tuned_before_chat_templates_is_served_with_the_templates_in_its_marker(tmp_path: Path) -> None:
    # Such a folder's chat template is still the base model's; its marker holds what it learned.
    (tmp_path / MARKER_FILE).write_text(json.dumps({**marker(chat_template_written=False), "noInput": "Q: {instruction}\nA:"}))
    style = detect_style(tmp_path, ChatTokenizer())
    assert style.format is PromptFormat.ALPACA
    assert render_chat(msgs(("user", "Add 2 and 2.")), style, None) == "Q: Add 2 and 2.\nA:"


def test_instruction_prompts_match_the_train_workload_with_and_without_input(tmp_path: Path) -> None:
    style = detect_style(tmp_path, PlainTokenizer())
    assert style.format is PromptFormat.ALPACA
    assert render_chat(msgs(("user", "Sum."), ("user", "2 and 3", "input")), style, None) == format_prompt("Sum.", "2 and 3")
    # Earlier turns do not reach a single-turn instruction model; the last instruction does.
    conversation = msgs(("system", "be brief"), ("user", "old"), ("assistant", "x"), ("user", "Sum."))
    assert render_chat(conversation, style, None) == format_prompt("Sum.")


def test_chat_models_get_their_template_with_the_input_folded_in(tmp_path: Path) -> None:
    style = detect_style(tmp_path, ChatTokenizer())
    assert style.format is PromptFormat.CHAT
    rendered = render_chat(msgs(("developer", "be brief"), ("user", "Sum."), ("user", "2 and 3", "input")), style, ChatTokenizer())
    assert rendered == "system:be brief|user:Sum.\n\n2 and 3|assistant:"


def test_forcing_a_format_overrides_detection(tmp_path: Path) -> None:
    assert detect_style(tmp_path, ChatTokenizer(), "alpaca").format is PromptFormat.ALPACA
    with pytest.raises(ValueError, match="chat template"):
        detect_style(tmp_path, PlainTokenizer(), "chat")


@pytest.mark.parametrize("tokenizer", [ChatTokenizer(), PlainTokenizer()])
def test_messages_without_a_user_turn_are_refused(tmp_path: Path, tokenizer) -> None:
    style = detect_style(tmp_path, tokenizer)
    with pytest.raises(PromptError, match="user message"):
        render_chat(msgs(("system", "hello")), style, tokenizer)


def test_an_input_message_must_follow_an_instruction(tmp_path: Path) -> None:
    style = detect_style(tmp_path, ChatTokenizer())
    with pytest.raises(PromptError) as error:
        render_chat(msgs(("system", "s"), ("user", "data", "input")), style, ChatTokenizer())
    assert error.value.param == "messages[1]"


def test_a_broken_marker_names_the_file(tmp_path: Path) -> None:
    (tmp_path / MARKER_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=MARKER_FILE):
        detect_style(tmp_path, PlainTokenizer())
