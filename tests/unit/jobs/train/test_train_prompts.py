"""The chat template training writes renders exactly the prompts the model was trained on."""

from __future__ import annotations

from typing import Any

import pytest

from alpaca_jobs.train.prompts import DEFAULT, PromptTemplates, adds_bos, chat_template, fill, format_prompt

# Characters a template author may well write: quotes, backslashes, braces that look like Jinja,
# a raw block, non-ASCII (outside the BMP too) and a carriage return.
TRICKY = PromptTemplates(
    with_input='«Task» "{instruction}" \\n {{ not jinja }} {% raw %} {#x#}\r\nInput → {input}\n🦙 Answer:',
    no_input="{% endraw %}'{instruction}'\t{}\\\\ {{ \n🦙 Answer:",
)


def tokenizer(*, bos: bool) -> Any:
    """A small byte-level BPE tokenizer built offline, with or without a BOS it adds itself."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    texts = [format_prompt("Sum the numbers.", "2 and 3"), format_prompt("Name a colour."), TRICKY.with_input]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer)
    if bos:
        core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def render(tok: Any, templates: PromptTemplates, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    tok.chat_template = chat_template(templates, bos=adds_bos(tok))
    return tok.apply_chat_template(messages, tokenize=False, **kwargs)


def test_placeholders_are_filled_in_one_pass() -> None:
    assert fill("{instruction} / {input}", "say {input}", "x") == "say {input} / x"
    assert fill("{other} {instruction}", "a") == "{other} a"


@pytest.mark.parametrize("templates", [DEFAULT, TRICKY], ids=["default", "tricky"])
@pytest.mark.parametrize("bos", [True, False], ids=["bos", "no-bos"])
def test_token_ids_of_the_chat_template_are_the_training_prompt(templates: PromptTemplates, bos: bool) -> None:
    tok = tokenizer(bos=bos)
    assert adds_bos(tok) is bos
    tok.chat_template = chat_template(templates, bos=bos)
    cases = [
        ([{"role": "user", "content": "Sum the numbers."}, {"role": "user", "name": "input", "content": "2 and 3"}], ("Sum the numbers.", "2 and 3")),
        ([{"role": "user", "content": [{"type": "text", "text": "Sum the numbers."}, {"type": "text", "text": "2 and 3"}]}], ("Sum the numbers.", "2 and 3")),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}], ("Name a colour.", "")),
        ([{"role": "user", "content": "Name a colour."}, {"role": "user", "name": "input", "content": "  "}], ("Name a colour.", "")),
    ]
    for messages, (instruction, input_text) in cases:
        expected = tok(templates.render(instruction, input_text), add_special_tokens=True)["input_ids"]
        got = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
        assert got == expected, messages


def test_the_last_instruction_is_answered_and_an_answer_is_rendered_as_its_training_target() -> None:
    tok = tokenizer(bos=True)
    conversation = [
        {"role": "user", "content": "Old task."},
        {"role": "assistant", "content": "Old answer."},
        {"role": "user", "content": "Sum the numbers."},
        {"role": "user", "name": "input", "content": "2 and 3"},
    ]
    assert render(tok, DEFAULT, conversation, add_generation_prompt=True) == "<s>" + format_prompt("Sum the numbers.", "2 and 3")
    answered = [*conversation, {"role": "assistant", "content": "5"}]
    assert render(tok, DEFAULT, answered) == "<s>" + format_prompt("Sum the numbers.", "2 and 3") + "5</s>"


def test_trim_blocks_and_lstrip_blocks_change_nothing() -> None:
    """transformers renders with trim_blocks and lstrip_blocks on; every printed character comes from a literal."""
    from jinja2 import Environment

    source = chat_template(TRICKY, bos=False)
    messages = [{"role": "user", "content": "Do it."}, {"role": "user", "name": "input", "content": "this"}]
    plain = Environment().from_string(source).render(messages=messages, bos_token="<s>", eos_token="</s>")
    trimmed = Environment(trim_blocks=True, lstrip_blocks=True).from_string(source).render(
        messages=messages, bos_token="<s>", eos_token="</s>")
    assert plain == trimmed == TRICKY.render("Do it.", "this")


@pytest.mark.parametrize(
    ("messages", "complaint"),
    [
        ([{"role": "system", "content": "Be brief."}], "at least one user message"),
        ([{"role": "user", "name": "input", "content": "2 and 3"}], "must follow a user message"),
    ],
)
def test_conversations_without_an_instruction_are_refused(messages: list[dict[str, Any]], complaint: str) -> None:
    with pytest.raises(Exception, match=complaint):
        render(tokenizer(bos=False), DEFAULT, messages, add_generation_prompt=True)
